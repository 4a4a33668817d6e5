//! Where each client connection runs when the node runs on one thread (`WORKER_THREADS=1`): on
//! that thread, or on an extra connection thread once it serves enough of them
//! (`CONNECTION_THREADS`).
//!
//! On one thread every hop of an append between tasks (connection, replication, commit) is a
//! queue push instead of a cross-thread wake-up, and with few clients those hops are all an
//! append waits for. With many clients the one thread is busy all the time, mostly parsing
//! requests and writing answers: work that belongs to no other connection, so it can run
//! elsewhere without waking anything. So the first [`MAIN_THREAD_CONNECTIONS`] connections run
//! on the node's thread, and beyond that each new one goes to whichever thread has the fewest
//! (the node's thread counting only those beyond its first share, since it also runs
//! replication). A connection stays on its thread for its life: its parsing, its handler and its
//! answer never cross threads; only the append's hand-over to replication and the commit's
//! wake-up of the waiting handler do, and under that much load the other thread is awake anyway.
//!
//! The threads never take work from each other. tokio's multi-thread scheduler does: it moves
//! tasks between its workers, so replication tasks and the handlers they wake can bounce between
//! threads, which costs the few-client case the wake-ups one thread avoids (docs/bench/README.md
//! compares the two).
//!
//! Each thread is a current-thread runtime of its own. A connection accepted on the node's
//! runtime is re-registered with the chosen thread's I/O driver (`into_std`, then `from_std` on
//! that thread), so its socket is polled where it is served. The open connections per thread are
//! the `replog_connections` gauge, and the same gauge decides the placement.

use crate::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// Connections the node's own thread serves before any goes to a connection thread: up to this
/// many clients, one thread with no cross-thread wake-ups serves them best (docs/bench/README.md,
/// "A second thread for many connections").
pub const MAIN_THREAD_CONNECTIONS: i64 = 16;

/// The node's thread and its connection threads, with their open connection counts.
pub struct Threads {
    main: Gauge,
    extra: Vec<Extra>,
    /// Connections refused for `MAX_CONNECTIONS` (see [`Refusals`]).
    refused: Counter,
}

/// A connection thread (its runtime or the thread itself) could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start a connection thread: {0}")]
pub struct ThreadStartError(#[from] std::io::Error);

/// A node's start-up reports its errors as one line of text.
impl From<ThreadStartError> for String {
    fn from(error: ThreadStartError) -> Self {
        error.to_string()
    }
}

/// One connection thread: a current-thread runtime that runs until told to stop.
struct Extra {
    handle: Handle,
    open: Gauge,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Threads {
    /// Starts `extra` connection threads (0: every connection on the node's thread).
    pub fn start(extra: usize, metrics: &Metrics) -> Result<Self, ThreadStartError> {
        let main = metrics.connections("main");
        let extra = (1..=extra)
            .map(|n| Extra::start(n, metrics.connections(&format!("extra-{n}"))))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            main,
            extra,
            refused: metrics.connections_refused.clone(),
        })
    }

    /// The counter of connections refused for `MAX_CONNECTIONS`.
    pub fn refused(&self) -> Counter {
        self.refused.clone()
    }

    /// Runs `serve` over `tcp` on the thread whose turn it is, counting the connection there
    /// while it is open.
    pub fn spawn<S, F>(&self, tcp: TcpStream, serve: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(extra) = self.pick() else {
            let open = Open::count(&self.main);
            tokio::spawn(async move {
                serve(tcp).await;
                drop(open);
            });
            return;
        };
        // Deregistered from this runtime's I/O driver, to be registered with the other's.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::debug!(%error, "cannot hand a connection to a connection thread");
                return;
            }
        };
        let open = Open::count(&extra.open);
        extra.handle.spawn(async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp).await,
                Err(error) => tracing::debug!(%error, "cannot serve a handed-over connection"),
            }
            drop(open);
        });
    }

    /// The connection thread for the next connection, or `None` for the node's own thread.
    fn pick(&self) -> Option<&Extra> {
        let main = self.main.get();
        if main < MAIN_THREAD_CONNECTIONS {
            return None;
        }
        let (open, least) = self
            .extra
            .iter()
            .map(|extra| (extra.open.get(), extra))
            .min_by_key(|&(open, _)| open)?;
        (open <= main - MAIN_THREAD_CONNECTIONS).then_some(least)
    }

    /// Stops the connection threads. Call it once every connection has ended (the graceful
    /// shutdown has waited for them): a task still on a thread is dropped with its runtime.
    pub async fn stop(self) {
        for extra in self.extra {
            let _ = extra.stop.send(());
            let joined = tokio::task::spawn_blocking(move || extra.thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::warn!("a connection thread ended with a panic");
            }
        }
    }
}

impl Extra {
    fn start(n: usize, open: Gauge) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("connections-{n}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            open,
            stop,
            thread,
        })
    }
}

/// One open connection on a thread's gauge, for as long as it lives (also if its task is
/// dropped unfinished).
struct Open(Gauge);

impl Open {
    fn count(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How often at most a node logs that it refuses connections.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections closed as soon as they are accepted because `MAX_CONNECTIONS` are open: each is
/// counted, and a warning is logged at most every 10 s (`REFUSAL_LOG_EVERY`), with the number
/// refused since the last one, so that a flood of connections does not flood the log too.
pub struct Refusals {
    counter: Counter,
    max_connections: usize,
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl Refusals {
    pub fn new(counter: Counter, max_connections: usize) -> Self {
        Self {
            counter,
            max_connections,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Closes `tcp` at once, counts it, and logs if it is time to.
    pub fn refuse(&mut self, tcp: TcpStream) {
        drop(tcp);
        self.counter.inc();
        self.unlogged += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now < last + REFUSAL_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            refused = self.unlogged,
            max_connections = self.max_connections,
            "refusing client connections: MAX_CONNECTIONS are open"
        );
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}

/// Open files a node needs besides its client connections: its log file, listeners,
/// replication and forwarding connections, and some to spare.
const OTHER_OPEN_FILES: u64 = 64;

/// The process may not open the files `MAX_CONNECTIONS` needs (see [`check_open_files`]).
#[derive(Debug, thiserror::Error)]
pub enum OpenFilesError {
    #[error("cannot read the open-file limit: {0}")]
    Read(#[source] std::io::Error),
    #[error("MAX_CONNECTIONS={max_connections} needs {needed} open files, but the limit (ulimit -n) is {hard}: lower MAX_CONNECTIONS or raise the limit")]
    LimitTooLow {
        max_connections: usize,
        needed: u64,
        hard: u64,
    },
    #[error("MAX_CONNECTIONS={max_connections} needs {needed} open files; cannot raise the limit from {soft}: {source}")]
    Raise {
        max_connections: usize,
        needed: u64,
        soft: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Makes sure the process may open `MAX_CONNECTIONS` client connections plus what it needs
/// otherwise, raising its soft open-file limit up to the hard one if that is needed. Beyond the
/// limit, `accept` would fail and every client, not only the newest, would wait.
pub fn check_open_files(max_connections: usize) -> Result<(), OpenFilesError> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let needed = max_connections as u64 + OTHER_OPEN_FILES;
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
            .map_err(|errno| OpenFilesError::Read(errno.into()))?;
        if soft >= needed {
            return Ok(());
        }
        if hard < needed {
            return Err(OpenFilesError::LimitTooLow {
                max_connections,
                needed,
                hard,
            });
        }
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard).map_err(|errno| {
            OpenFilesError::Raise {
                max_connections,
                needed,
                soft,
                source: errno.into(),
            }
        })?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (max_connections, OTHER_OPEN_FILES);
    Ok(())
}
