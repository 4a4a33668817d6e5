//! The closed loop's connections: one request written, one answer read, on a TCP stream (or
//! TLS over it, for the TLS rows), in the client's own task.
//!
//! Why not hyper's client and redis-rs: both run each connection as a task of its own and hand
//! every request and answer across a channel, and each costs the load generator its own amount
//! of CPU per call (measured at 64 clients: 14 µs per HTTP append, 10-19 µs per Redis call). On
//! a 2-CPU machine the client shares the CPUs with the servers it measures, so a client
//! library's overhead lands on one system's figures and not the other's. Here both systems get
//! the same minimal client: the request is encoded once, then every call is a `write` of those
//! bytes and `read`s until one whole answer is in, with no task, channel or lock between the
//! client and its socket. The servers see what those libraries would send: one keep-alive
//! connection per client, `TCP_NODELAY`, one request at a time (`XADD` and `WAIT` pipelined in
//! one write).

use crate::tls::Conn;
use anyhow::{bail, Context, Result};
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection that answers are read from into one reused buffer.
struct Stream {
    addr: SocketAddr,
    /// TLS to the server, when the row asks for it.
    tls: Option<Arc<ClientConfig>>,
    tcp: Option<Conn>,
    buf: Vec<u8>,
    /// Connections opened after the first one (shared by the clients of one run).
    reconnects: Arc<AtomicU64>,
}

impl Stream {
    async fn connect(
        addr: SocketAddr,
        tls: Option<Arc<ClientConfig>>,
        reconnects: Arc<AtomicU64>,
    ) -> Result<Stream> {
        let mut stream = Stream {
            addr,
            tls,
            tcp: None,
            buf: Vec::with_capacity(4096),
            reconnects,
        };
        stream.tcp = Some(stream.open().await?);
        Ok(stream)
    }

    async fn open(&self) -> Result<Conn> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        crate::tls::open(tcp, self.tls.as_ref()).await
    }

    /// Writes `request` (on a new connection if the server closed the last one).
    async fn send(&mut self, request: &[u8]) -> Result<()> {
        let tcp = match self.tcp.as_mut() {
            Some(tcp) => tcp,
            None => {
                let tcp = self.open().await?;
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                self.buf.clear();
                self.tcp.insert(tcp)
            }
        };
        // TLS may keep part of a record until flushed; on TCP the flush does nothing.
        let sent = match tcp.write_all(request).await {
            Ok(()) => tcp.flush().await,
            Err(error) => Err(error),
        };
        if let Err(error) = sent {
            self.tcp = None;
            return Err(error).context("cannot send the request");
        }
        Ok(())
    }

    /// Reads more of the answer into `buf`.
    async fn fill(&mut self) -> Result<()> {
        let tcp = self.tcp.as_mut().context("not connected")?;
        let read = tcp.read_buf(&mut self.buf).await;
        match read {
            Ok(0) => {
                self.tcp = None;
                bail!("the server closed the connection before answering")
            }
            Ok(_) => Ok(()),
            Err(error) => {
                self.tcp = None;
                Err(error).context("cannot read the answer")
            }
        }
    }

    /// Drops the first `n` bytes of `buf` (an answer that has been read).
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }
}

/// `POST` of one fixed body, again and again, on one keep-alive HTTP/1.1 connection.
pub struct HttpPost {
    stream: Stream,
    request: Vec<u8>,
}

/// The status and body of one HTTP answer.
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpPost {
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<Arc<ClientConfig>>,
        path: &str,
        body: &[u8],
        reconnects: Arc<AtomicU64>,
    ) -> Result<HttpPost> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        Ok(HttpPost {
            stream: Stream::connect(addr, tls, reconnects).await?,
            request,
        })
    }

    /// Sends the request and reads the whole answer (`Content-Length` framed, as every answer
    /// of a replog node to a POST is).
    pub async fn call(&mut self) -> Result<HttpAnswer> {
        self.stream.send(&self.request).await?;
        loop {
            if let Some((head, status, length, close)) = parse_head(&self.stream.buf)? {
                while self.stream.buf.len() < head + length {
                    self.stream.fill().await?;
                }
                let body = self.stream.buf[head..head + length].to_vec();
                self.stream.consume(head + length);
                if close {
                    self.stream.tcp = None;
                }
                return Ok(HttpAnswer { status, body });
            }
            self.stream.fill().await?;
        }
    }
}

/// The head of an HTTP answer, if all of it is in `buf`: its length, the status, the body's
/// length and whether the server closes the connection after it.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, usize, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buf).context("a malformed HTTP answer")? {
        httparse::Status::Complete(head) => head,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.context("an HTTP answer without a status")?;
    let mut length = None;
    let mut close = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).unwrap_or_default();
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .context("a bad Content-Length")?,
            );
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a chunked answer (the bench's client reads Content-Length framed ones only)");
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    let length = length.context("an HTTP answer without Content-Length")?;
    Ok(Some((head, status, length, close)))
}

/// One fixed pipeline of Redis commands, again and again, on one connection.
pub struct RedisPipeline {
    stream: Stream,
    request: Vec<u8>,
    replies: usize,
}

/// One RESP reply that the closed loop needs to tell apart.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// `+OK`, a bulk string (`XADD`'s id) or an array: contents not needed.
    Value,
    Integer(i64),
}

impl RedisPipeline {
    /// `commands`: each a list of arguments, sent together in one write.
    pub async fn connect(
        port: u16,
        tls: Option<Arc<ClientConfig>>,
        commands: &[Vec<&[u8]>],
    ) -> Result<RedisPipeline> {
        let mut request = Vec::new();
        for command in commands {
            request.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
            for arg in command {
                request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                request.extend_from_slice(arg);
                request.extend_from_slice(b"\r\n");
            }
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(RedisPipeline {
            stream: Stream::connect(addr, tls, Arc::default()).await?,
            request,
            replies: commands.len(),
        })
    }

    /// Sends the commands and reads one reply to each, in order; an error reply is an error.
    pub async fn call(&mut self) -> Result<Vec<Reply>> {
        self.stream.send(&self.request).await?;
        let mut replies = Vec::with_capacity(self.replies);
        while replies.len() < self.replies {
            match parse_reply(&self.stream.buf)? {
                Some((used, reply)) => {
                    self.stream.consume(used);
                    replies.push(reply);
                }
                None => self.stream.fill().await?,
            }
        }
        Ok(replies)
    }
}

/// One whole RESP reply at the start of `buf`, if it is all there: the bytes it takes, and
/// what it is.
fn parse_reply(buf: &[u8]) -> Result<Option<(usize, Reply)>> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..line_end]).context("a malformed Redis reply")?;
    let after_line = line_end + 2;
    match buf.first() {
        Some(b'+') => Ok(Some((after_line, Reply::Value))),
        Some(b'-') => bail!("redis answered an error: {line}"),
        Some(b':') => {
            let n = line.parse().context("a malformed Redis integer")?;
            Ok(Some((after_line, Reply::Integer(n))))
        }
        Some(b'$') => {
            let length: i64 = line.parse().context("a malformed Redis bulk length")?;
            let Ok(length) = usize::try_from(length) else {
                return Ok(Some((after_line, Reply::Value))); // $-1: nil
            };
            let end = after_line + length + 2;
            Ok((buf.len() >= end).then_some((end, Reply::Value)))
        }
        Some(b'*') => {
            let count: i64 = line.parse().context("a malformed Redis array length")?;
            let mut used = after_line;
            for _ in 0..count.max(0) {
                match parse_reply(&buf[used..])? {
                    Some((n, _)) => used += n,
                    None => return Ok(None),
                }
            }
            Ok(Some((used, Reply::Value)))
        }
        _ => bail!(
            "a malformed Redis reply: {:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_heads_are_parsed_only_once_complete() {
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let (head, status, length, close) = parse_head(answer).unwrap().unwrap();
        assert_eq!((status, length, close), (200, 2, false));
        assert_eq!(&answer[head..], b"{}");
        assert!(parse_head(&answer[..20]).unwrap().is_none());
        let closing =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\ncontent-length: 0\r\n\r\n";
        let (_, status, length, close) = parse_head(closing).unwrap().unwrap();
        assert_eq!((status, length, close), (503, 0, true));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked).is_err());
    }

    #[test]
    fn redis_replies_are_parsed_only_once_complete() {
        let xadd_and_wait = b"$15\r\n1700000000000-0\r\n:2\r\n";
        let (used, reply) = parse_reply(xadd_and_wait).unwrap().unwrap();
        assert_eq!((used, reply), (22, Reply::Value));
        assert_eq!(
            parse_reply(&xadd_and_wait[used..]).unwrap(),
            Some((4, Reply::Integer(2)))
        );
        assert_eq!(parse_reply(&xadd_and_wait[..10]).unwrap(), None);
        assert_eq!(parse_reply(b":2").unwrap(), None);
        assert_eq!(parse_reply(b"+OK\r\n").unwrap(), Some((5, Reply::Value)));
        assert_eq!(
            parse_reply(b"*2\r\n:1\r\n$1\r\na\r\n").unwrap(),
            Some((15, Reply::Value))
        );
        assert_eq!(parse_reply(b"*2\r\n:1\r\n$1\r\n").unwrap(), None);
        assert!(parse_reply(b"-ERR wrong\r\n").is_err());
    }
}
