//! An HTTP/1.1 client on hyper for everything but the closed loop's appends (readiness checks,
//! the memory check's reads): one TCP connection, kept alive, requests one at a time, opened
//! again if the server closed it. The appends use [`crate::wire`].

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub struct Conn {
    addr: SocketAddr,
    host: String,
    sender: SendRequest<Full<Bytes>>,
}

async fn open(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        Ok(Conn {
            addr,
            host: addr.to_string(),
            sender: open(addr).await?,
        })
    }

    async fn ready(&mut self) -> Result<()> {
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            self.sender = open(self.addr).await?;
            self.sender.ready().await?;
        }
        Ok(())
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host);
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        Ok(builder.body(Full::new(body.unwrap_or_default()))?)
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes)> {
        self.ready().await?;
        let request = self.request(method, path, body)?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends a GET and reads the answer as it streams, without keeping it: its status, size in
    /// bytes, and the time to the last byte.
    pub async fn get_streamed(&mut self, path: &str) -> Result<(StatusCode, u64, Duration)> {
        self.ready().await?;
        let t0 = Instant::now();
        let request = self.request(Method::GET, path, None)?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut size = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                size += data.len() as u64;
            }
        }
        Ok((status, size, t0.elapsed()))
    }
}

/// One GET on a fresh connection, for readiness checks: the status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes)> {
    let mut conn = Conn::connect(addr).await?;
    conn.send(Method::GET, path, None).await
}

/// One GET that must answer 200 with JSON.
pub async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (status, body) = get(addr, path).await?;
    if status != StatusCode::OK {
        bail!(
            "GET {path} on {addr}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice(&body)?)
}
