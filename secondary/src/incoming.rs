//! The replication server's connections: accepted (with TLS when mutual TLS is on) and
//! wrapped so that the secondary can cut them when it stops.
//!
//! With mutual TLS, every accepted connection does its handshake on a task of its own, within
//! [`HANDSHAKE_TIMEOUT`], so that a slow or hostile client never holds up the next accept; only
//! what completes the handshake reaches tonic. The configuration is read for each connection:
//! after a reload (SIGHUP, or a change of the files) new connections use the new certificate
//! while open ones go on with theirs. A refused handshake (a plaintext client, no certificate,
//! one of another CA, an expired one) is logged with the peer's address and rustls's reason, at
//! most once per reason per [`REFUSALS_LOGGED_EVERY`], and nothing of it is served.
//!
//! At shutdown the replication server stops accepting and closes each connection gracefully,
//! which takes the master's part: an HTTP/2 peer must acknowledge the server's goodbye. A master
//! that is paused, or gone without a FIN, never does, and tonic serves each connection on a task
//! of its own that nothing else ends. Such a task would keep the secondary (its log, in memory)
//! alive after `server::run` returned; in failover mode, where the node runs the master role
//! next in the same process, every role switch would leak one. So every accepted connection is
//! wrapped: once [`Cutter::cut`] is called, its reads and writes fail, which ends its task.
//!
//! The wrapper costs each read or write one atomic load and a waker registration that is a
//! no-op when the task's waker has not changed.

use futures::task::AtomicWaker;
use replog_node::tls::{self, Tls};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a replication client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A refused handshake's reason is logged at most once in this long.
pub const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(5);

/// Most distinct reasons remembered at once; past that, refusals of a new reason are not
/// logged until old ones are forgotten (a client cannot flood the log by varying its garbage).
const REASONS_KEPT: usize = 64;

/// Accepted connections on their way to tonic, before it takes them.
const QUEUED: usize = 16;

/// The replication port's connections, for `serve_with_incoming`: each accepted one gets
/// TCP_NODELAY (an acknowledgement must not wait for Nagle's algorithm), TLS when `tls` has a
/// replication server configuration at that moment, and the `cutter`'s wrapper. Accepting stops
/// when tonic drops the stream (its shutdown), which closes the listener.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    cutter: Cutter,
) -> ReceiverStream<io::Result<Cuttable>> {
    let (accepted, stream) = mpsc::channel(QUEUED);
    tokio::spawn(accept_loop(listener, tls, cutter, accepted));
    ReceiverStream::new(stream)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    cutter: Cutter,
    accepted: mpsc::Sender<io::Result<Cuttable>>,
) {
    let refusals = Arc::new(Refusals::default());
    loop {
        let (tcp, peer) = tokio::select! {
            _ = accepted.closed() => return,
            next = listener.accept() => match next {
                Ok(next) => next,
                Err(error) => {
                    // Tonic skips it, as it skips a listener stream's errors.
                    if accepted.send(Err(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
            },
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let info = tcp.connect_info();
        let config = tls.as_ref().and_then(|tls| tls.replication_server());
        let Some(config) = config else {
            let wrapped = cutter.wrap(tls::MaybeTls::Plain(tcp), info);
            if accepted.send(Ok(wrapped)).await.is_err() {
                return;
            }
            continue;
        };
        let (cutter, accepted, refusals) = (cutter.clone(), accepted.clone(), refusals.clone());
        tokio::spawn(async move {
            let handshake = tokio::select! {
                _ = accepted.closed() => return,
                handshake = tls::accept(config, tcp, HANDSHAKE_TIMEOUT) => handshake,
            };
            match handshake {
                Ok(stream) => {
                    let _ = accepted
                        .send(Ok(cutter.wrap(tls::MaybeTls::Tls(Box::new(stream)), info)))
                        .await;
                }
                Err(error) => {
                    refusals.refused(peer, &error, Instant::now());
                }
            }
        });
    }
}

/// The refused handshakes' reasons and when each was last logged.
#[derive(Default)]
struct Refusals {
    logged: Mutex<HashMap<String, Instant>>,
}

impl Refusals {
    /// Logs a refused handshake unless one of the same reason was logged less than
    /// [`REFUSALS_LOGGED_EVERY`] ago; returns whether it did.
    fn refused(&self, peer: SocketAddr, error: &io::Error, now: Instant) -> bool {
        let reason = error.to_string();
        // Reasons that differ only in numbers (an expired certificate's dates, a byte's value)
        // are one.
        let key: String = reason.chars().filter(|c| !c.is_ascii_digit()).collect();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        logged.retain(|_, at| now.duration_since(*at) < REFUSALS_LOGGED_EVERY);
        if logged.contains_key(&key) || logged.len() >= REASONS_KEPT {
            return false;
        }
        logged.insert(key, now);
        drop(logged);
        tracing::warn!(
            %peer,
            %reason,
            tls = tls::rustls_error(error).is_some(),
            "refused a replication connection: its TLS handshake failed (nothing from it is applied; the same reason is logged at most once every {REFUSALS_LOGGED_EVERY:?})"
        );
        true
    }
}

/// An accepted connection, plain or TLS.
pub type Io = tls::MaybeTls<tls::Accepted>;

/// Cuts every connection it wrapped that is still open.
#[derive(Clone, Default)]
pub struct Cutter {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    /// The wakers of the connections wrapped (dead ones are pruned as new ones come).
    open: Mutex<Vec<Weak<AtomicWaker>>>,
}

impl Cutter {
    /// Wraps an accepted connection; `info` is its TCP connection's addresses.
    pub fn wrap(&self, io: Io, info: TcpConnectInfo) -> Cuttable {
        let waker = Arc::new(AtomicWaker::new());
        let mut open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|waker| waker.strong_count() > 0);
        open.push(Arc::downgrade(&waker));
        Cuttable {
            io,
            info,
            waker,
            shared: self.inner.clone(),
        }
    }

    /// Fails every wrapped connection's reads and writes from now on, and wakes their tasks to
    /// find out.
    pub fn cut(&self) {
        self.inner.cut.store(true, Ordering::SeqCst);
        let open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        for waker in open.iter().filter_map(Weak::upgrade) {
            waker.wake();
        }
    }
}

/// An accepted replication connection that fails once its [`Cutter`] cuts.
pub struct Cuttable {
    io: Io,
    info: TcpConnectInfo,
    waker: Arc<AtomicWaker>,
    shared: Arc<Shared>,
}

impl Cuttable {
    /// Registers the task for a cut (before looking, so a cut in between still wakes it), and
    /// fails if the cut came.
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.waker.register(cx.waker());
        match self.shared.cut.load(Ordering::SeqCst) {
            false => Ok(()),
            true => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the secondary stopped",
            )),
        }
    }
}

impl AsyncRead for Cuttable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Cuttable {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn a_cut_fails_a_pending_read_and_every_later_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("its address");
        let mut client = TcpStream::connect(address).await.expect("connected");
        let (accepted, _) = listener.accept().await.expect("accepted");
        let cutter = Cutter::default();
        let info = accepted.connect_info();
        let mut server = cutter.wrap(tls::MaybeTls::Plain(accepted), info);
        client.write_all(b"x").await.expect("written");
        let mut byte = [0u8; 1];
        server
            .read_exact(&mut byte)
            .await
            .expect("read before the cut");
        // The peer sends nothing more: only the cut ends this read.
        let mut read = Box::pin(server.read(&mut byte));
        assert!(futures::poll!(&mut read).is_pending());
        cutter.cut();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("the cut ends the read")
            .map_err(|e| e.kind());
        assert_eq!(read, Err(io::ErrorKind::ConnectionAborted));
        let write = server.write_all(b"y").await.map_err(|e| e.kind());
        assert_eq!(write, Err(io::ErrorKind::ConnectionAborted));
    }

    #[test]
    fn a_refusal_is_logged_once_per_reason_per_window() {
        let refusals = Refusals::default();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let expired = |at: u32| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("invalid peer certificate: expired at {at}"),
            )
        };
        let other = io::Error::new(io::ErrorKind::InvalidData, "peer sent no certificates");
        let start = Instant::now();
        assert!(refusals.refused(peer, &expired(1), start));
        // The same reason (numbers aside) within the window: not logged; another one is.
        assert!(!refusals.refused(peer, &expired(2), start + Duration::from_secs(1)));
        assert!(refusals.refused(peer, &other, start + Duration::from_secs(1)));
        // After the window, logged again.
        assert!(refusals.refused(peer, &expired(3), start + REFUSALS_LOGGED_EVERY));
    }
}
