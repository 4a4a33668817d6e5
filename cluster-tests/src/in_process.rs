//! The in-process backend: a master's or a secondary's server run as tasks of the test's own
//! runtime, on listeners bound before anything starts.
//!
//! Every port is bound on `127.0.0.1:0` first and only then handed to the nodes (the master's
//! `SECONDARIES` and the secondaries' `MASTER` name ports already held), so there is no race
//! for a port and nothing to start over. A socket listens only once its node starts: a node
//! not started yet refuses connections, as a process that does not run would. The node's settings are the same list a process would
//! get in its environment, parsed by the binary's own `clap` configuration as command-line
//! flags (`HEARTBEAT_INTERVAL_MS=100` is `--heartbeat-interval-ms=100`) with the environment
//! left out, so that the shell running the tests cannot change a node. The server is the
//! binary's own `server::run`, stopped through its shutdown token.
//!
//! What a process gives and this does not: signals (kill, SIGSTOP, SIGTERM), `/proc` figures,
//! `WORKER_THREADS` (the nodes run on the test's runtime, whatever its flavour) and one log per
//! node: the nodes of a process log through one `tracing` subscriber into [`LOG_FILE`] in the
//! test's log directory; lines of a node's own task carry its name (`node{name=...}`), tasks
//! the server spawns log without it.
//!
//! Paused time (`#[tokio::test(start_paused = true)]`) does not suit these nodes, for two
//! reasons. Tokio advances a paused clock to the next timer whenever the runtime has no task to
//! run, and a loopback socket's readiness is only seen inside that same park: every hop of a
//! request between two nodes moves the clock to whichever timer is next (a heartbeat, a
//! deadline, a secondary's `DELAY_SECONDS`), so time no longer follows the traffic. And the
//! master's decisions (deadlines, health) read `std::time::Instant`, which a paused tokio clock
//! does not move: a deadline whose timer fired in paused time has not passed for the master,
//! whose deadline task then wakes again at once until real time catches up. The kit's waits
//! ([`crate::try_wait_for`] and those built on it) follow tokio's clock, so tests without
//! sockets and std clocks can pause it.

use crate::node::Binary;
use crate::StartError;
use clap::{CommandFactory, FromArgMatches};
use futures::FutureExt;
use replog_node::shutdown::Shutdown;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// The log file of a test's in-process nodes, in its log directory.
pub const LOG_FILE: &str = "in-process.log";

/// Settings only a process reads (its logging, from its environment): passed over here.
const PROCESS_ONLY: &[&str] = &["RUST_LOG", "NO_COLOR"];

/// A node's ports, bound: HTTP, and gRPC for a secondary. The sockets listen only once the node
/// starts, so that until then connections to them are refused, as they are to a process that
/// does not run.
pub(crate) struct Listeners {
    http: TcpSocket,
    grpc: Option<TcpSocket>,
}

/// Connections a node's listener queues before it accepts them (tokio's own default).
const BACKLOG: u32 = 1024;

impl Listeners {
    /// Binds `127.0.0.1:<http>` (and `<grpc>`) with `SO_REUSEADDR`, so that a node that stopped
    /// can bind its ports again at once; port 0 takes a free one.
    pub(crate) fn bind(http: u16, grpc: Option<u16>) -> std::io::Result<Listeners> {
        let bind = |port: u16| {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
            Ok::<_, std::io::Error>(socket)
        };
        Ok(Listeners {
            http: bind(http)?,
            grpc: grpc.map(bind).transpose()?,
        })
    }

    /// The ports bound: HTTP, and gRPC if there is one.
    pub(crate) fn ports(&self) -> std::io::Result<(u16, Option<u16>)> {
        let http = self.http.local_addr()?.port();
        let grpc = match &self.grpc {
            Some(grpc) => Some(grpc.local_addr()?.port()),
            None => None,
        };
        Ok((http, grpc))
    }
}

/// A node's server running as a task, and the token that stops it.
pub(crate) struct Task {
    shutdown: Shutdown,
    handle: JoinHandle<Result<String, String>>,
    ended: Option<(ExitStatus, String)>,
}

impl Task {
    /// Parses the node's settings and spawns its server on `listeners`, in the current runtime.
    pub(crate) fn start(
        name: &str,
        binary: Binary,
        env: &[(String, String)],
        listeners: Listeners,
        log_path: &Path,
    ) -> Result<Task, StartError> {
        let refused = |reason: String| StartError::Settings {
            node: name.to_owned(),
            reason,
        };
        let spawn_failed = |error| StartError::Spawn {
            node: name.to_owned(),
            error,
        };
        log_to(log_path).map_err(spawn_failed)?;
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let http = listeners.http.listen(BACKLOG).map_err(spawn_failed)?;
        let served = match binary {
            Binary::Master => {
                let config: replog_master::config::Config =
                    settings(binary, env).map_err(refused)?;
                config.validate().map_err(|e| refused(e.to_string()))?;
                async move {
                    match replog_master::server::run(config, http, stop).await {
                        Ok(ended) => Ok(format!("stopped: {ended:?}")),
                        Err(error) => Err(format!("master failed: {error}")),
                    }
                }
                .boxed()
            }
            Binary::Secondary => {
                let config: replog_secondary::config::Config =
                    settings(binary, env).map_err(refused)?;
                config.validate().map_err(|e| refused(e.to_string()))?;
                let grpc = listeners
                    .grpc
                    .ok_or_else(|| refused("a secondary needs its gRPC listener".into()))?;
                let grpc = grpc.listen(BACKLOG).map_err(spawn_failed)?;
                async move {
                    match replog_secondary::server::run(config, http, grpc, stop).await {
                        Ok(()) => Ok("stopped".to_owned()),
                        Err(error) => Err(format!("secondary failed: {error}")),
                    }
                }
                .boxed()
            }
            Binary::Replog => {
                return Err(refused(
                    "the in-process backend runs masters and secondaries only".into(),
                ))
            }
        };
        let span = tracing::info_span!("node", name = %name);
        let name = name.to_owned();
        let handle = tokio::spawn(
            async move {
                let outcome = served.await;
                if let Err(error) = &outcome {
                    tracing::error!(%error, "{name} ended");
                    eprintln!("{name}: {error}");
                }
                outcome
            }
            .instrument(span),
        );
        Ok(Task {
            shutdown,
            handle,
            ended: None,
        })
    }

    /// How the server ended, if it has: exit code 0 and what it returned for `Ok`, 1 and the
    /// error otherwise (101 if it panicked).
    pub(crate) fn exited(&mut self) -> Option<(ExitStatus, String)> {
        if self.ended.is_none() && self.handle.is_finished() {
            let joined = (&mut self.handle).now_or_never()?;
            self.ended = Some(outcome(joined));
        }
        self.ended.clone()
    }

    /// Cancels the shutdown token and waits up to `grace` for the server to return; `None`
    /// (and the task aborted) if it has not by then.
    pub(crate) async fn shut_down(mut self, grace: Duration) -> Option<(ExitStatus, String)> {
        self.shutdown.cancel();
        if let Some(ended) = self.exited() {
            return Some(ended);
        }
        match tokio::time::timeout(grace, &mut self.handle).await {
            Ok(joined) => Some(outcome(joined)),
            Err(_) => {
                self.handle.abort();
                None
            }
        }
    }
}

impl Drop for Task {
    /// The node stops in the background; whatever is left of it goes with the test's runtime.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn outcome(joined: Result<Result<String, String>, tokio::task::JoinError>) -> (ExitStatus, String) {
    match joined {
        Ok(Ok(said)) => (ExitStatus::from_raw(0), said),
        Ok(Err(error)) => (ExitStatus::from_raw(1 << 8), error),
        Err(error) => (ExitStatus::from_raw(101 << 8), error.to_string()),
    }
}

/// Parses `env` (`KEY=value` settings, later ones winning) as `binary`'s command line: each key
/// becomes its flag (`--key` in lower case, `_` as `-`), and the environment is not read.
pub fn settings<C: CommandFactory + FromArgMatches>(
    binary: Binary,
    env: &[(String, String)],
) -> Result<C, String> {
    let mut latest: Vec<(&str, &str)> = Vec::new();
    for (key, value) in env {
        if PROCESS_ONLY.contains(&key.as_str()) {
            continue;
        }
        latest.retain(|(k, _)| k != key);
        latest.push((key, value));
    }
    let argv = std::iter::once(binary.file_name().to_owned()).chain(
        latest
            .iter()
            .map(|(key, value)| format!("--{}={value}", key.to_lowercase().replace('_', "-"))),
    );
    let command = C::command().mut_args(|arg| arg.env(None));
    command
        .try_get_matches_from(argv)
        .and_then(|matches| C::from_arg_matches(&matches))
        .map_err(|error| {
            let rendered = error.render().to_string();
            rendered
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("invalid settings")
                .to_owned()
        })
}

/// Where the in-process nodes' `tracing` lines go: the log file of the cluster started last.
static LOG: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

/// Sends the in-process nodes' log lines to `path` (appending), setting up the subscriber that
/// writes them on the first call. A process that has a subscriber of its own keeps it.
fn log_to(path: &Path) -> std::io::Result<()> {
    let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    if log.as_ref().is_some_and(|(current, _)| current == path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    *log = Some((path.to_path_buf(), file));
    static SUBSCRIBER: std::sync::Once = std::sync::Once::new();
    SUBSCRIBER.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| CurrentLog)
            .try_init();
    });
    Ok(())
}

/// Writes to the file [`log_to`] chose last.
struct CurrentLog;

impl Write for CurrentLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match LOG.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some((_, file)) => file.write(bytes),
            None => Ok(bytes.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match LOG.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some((_, file)) => file.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Keys become flags, the last value of a key wins, the process-only ones are passed over,
    /// and a key that is no setting is refused with clap's own line.
    #[test]
    fn settings_are_the_binarys_flags() {
        let config: replog_master::config::Config = settings(
            Binary::Master,
            &pairs(&[
                ("RUST_LOG", "debug"),
                ("HTTP_PORT", "1"),
                ("SECONDARIES", "127.0.0.1:2,127.0.0.1:3"),
                ("HEARTBEAT_INTERVAL_MS", "100"),
                ("HTTP_PORT", "4"),
                ("DATA_DIR", "/tmp/x"),
            ]),
        )
        .expect("valid settings");
        assert_eq!(config.http_port, 4);
        assert_eq!(config.secondaries, ["127.0.0.1:2", "127.0.0.1:3"]);
        assert_eq!(config.heartbeat_interval_ms, Duration::from_millis(100));
        assert_eq!(config.storage.data_dir, Some(PathBuf::from("/tmp/x")));

        let refused = settings::<replog_secondary::config::Config>(
            Binary::Secondary,
            &pairs(&[("SECONDARIES", "127.0.0.1:2")]),
        )
        .expect_err("a secondary has no SECONDARIES");
        assert!(refused.contains("--secondaries"), "{refused}");
    }

    /// Unset settings take their defaults, not the test process's environment.
    #[test]
    fn the_environment_is_not_read() {
        std::env::set_var("HTTP_PORT", "9");
        let config = settings::<replog_secondary::config::Config>(Binary::Secondary, &[]);
        std::env::remove_var("HTTP_PORT");
        assert_eq!(config.expect("defaults").http_port, 8001);
    }
}
