//! The replication server's connections, which the secondary can cut when it stops.
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
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

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
    /// Wraps an accepted connection.
    pub fn wrap(&self, tcp: TcpStream) -> Cuttable {
        let waker = Arc::new(AtomicWaker::new());
        let mut open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|waker| waker.strong_count() > 0);
        open.push(Arc::downgrade(&waker));
        Cuttable {
            tcp,
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
    tcp: TcpStream,
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
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connected for Cuttable {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_fails_a_pending_read_and_every_later_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("its address");
        let mut client = TcpStream::connect(address).await.expect("connected");
        let (accepted, _) = listener.accept().await.expect("accepted");
        let cutter = Cutter::default();
        let mut server = cutter.wrap(accepted);
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
}
