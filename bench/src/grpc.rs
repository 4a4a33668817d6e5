//! The closed loop's gRPC appends: `replog.v1.Log/Append` on HTTP/2 connections shared by up
//! to [`CLIENTS_PER_CONNECTION`] clients, as a gRPC channel is shared by its callers.
//!
//! Why not tonic's `Channel`, which the bench used first: it hands every call to a buffer task
//! before the connection's task sees it, and runs it through a tower stack on the way; at 64
//! clients that cost the load generator 22 µs of CPU per append, twice what an HTTP append
//! costs it through [`crate::wire`]. On a 2-CPU machine the client shares the CPUs with the
//! servers, so that overhead lands on replog's gRPC figures and on nothing else. Here a call is
//! handed straight to `h2`: the client's task queues its frames on the shared connection and
//! awaits the answer; the connection's own task writes what all its clients queued and reads
//! their answers (one task per connection is what lets 32 clients share it). A client alone on
//! its connection (one client in all) drives the connection from its own task: handing every
//! call to another task and back cost it 37 µs of CPU per append at one client, against 24 µs
//! driven in place (an HTTP client, which owns its connection, costs 12-15 µs).
//!
//! The server sees what it saw with tonic: the same connections, and a whole gRPC call per
//! append (`HEADERS` + `DATA`, answered with `HEADERS`, `DATA` and trailers).

use crate::load::Client;
use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use replog_proto::v1::{AppendReply, AppendRequest};
use std::net::SocketAddr;
use tokio::net::TcpStream;

const PATH: &str = "/replog.v1.Log/Append";
/// A gRPC message's prefix: a compression flag and the length.
const PREFIX: usize = 5;
/// Clients per HTTP/2 connection.
pub const CLIENTS_PER_CONNECTION: usize = 32;
/// HTTP/2 connections at most, whatever the number of clients.
pub const MAX_CONNECTIONS: usize = 8;

/// One client's gRPC appends of one fixed message.
pub struct GrpcAppend {
    connection: h2::client::SendRequest<Bytes>,
    /// The connection itself, when this client is its only one: the client's task then drives
    /// it during its calls, as an HTTP client drives its own connection, instead of waking a
    /// task of the connection's own and being woken by it for every call.
    driver: Option<h2::client::Connection<TcpStream, Bytes>>,
    uri: http::Uri,
    /// The request message, framed (prefix and protobuf), shared by every call.
    body: Bytes,
}

/// `clients` appenders of `message` with write concern `w`, on as many connections as
/// [`CLIENTS_PER_CONNECTION`] and [`MAX_CONNECTIONS`] give. A connection the server closes
/// fails every later call of its clients: the table counts them as errors.
pub async fn appenders(
    addr: SocketAddr,
    clients: usize,
    message: String,
    w: u32,
) -> Result<(Vec<GrpcAppend>, usize)> {
    let request = AppendRequest {
        message,
        w: Some(w),
    };
    let mut body = BytesMut::with_capacity(PREFIX + request.encoded_len());
    body.put_u8(0);
    body.put_u32(u32::try_from(request.encoded_len()).context("a huge message")?);
    request.encode(&mut body)?;
    let body = body.freeze();
    let uri: http::Uri = format!("http://{addr}{PATH}").parse()?;

    let count = clients
        .div_ceil(CLIENTS_PER_CONNECTION)
        .min(MAX_CONNECTIONS);
    let mut connections = Vec::with_capacity(count);
    let mut drivers = Vec::with_capacity(clients);
    for _ in 0..count {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("gRPC connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::handshake(tcp).await?;
        if count == clients {
            drivers.push(Some(connection));
        } else {
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    eprintln!("bench: a gRPC connection ended: {error}");
                }
            });
        }
        connections.push(send);
    }
    drivers.resize_with(clients, || None);
    let appenders = drivers
        .into_iter()
        .enumerate()
        .map(|(i, driver)| GrpcAppend {
            connection: connections[i % count].clone(),
            driver,
            uri: uri.clone(),
            body: body.clone(),
        })
        .collect();
    Ok((appenders, count))
}

impl Client for GrpcAppend {
    /// One `Append` call; an error is any answer but `grpc-status: 0` with a reply.
    async fn call(&mut self) -> Result<()> {
        let call = call(&self.connection, &self.uri, &self.body);
        match &mut self.driver {
            None => call.await,
            // Between calls the connection rests: nothing but its peer's pings can arrive, and
            // those are answered at the next call.
            Some(driver) => tokio::select! {
                result = call => result,
                ended = driver => match ended {
                    Ok(()) => bail!("the server closed the gRPC connection"),
                    Err(error) => Err(error.into()),
                },
            },
        }
    }
}

/// One `Append` call on `connection`, whoever drives it.
async fn call(
    connection: &h2::client::SendRequest<Bytes>,
    uri: &http::Uri,
    body: &Bytes,
) -> Result<()> {
    let request = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(())?;
    let mut connection = connection.clone().ready().await?;
    let (answer, mut send) = connection.send_request(request, false)?;
    send.send_data(body.clone(), true)?;
    let answer = answer.await?;
    if answer.status() != http::StatusCode::OK {
        bail!("HTTP {}", answer.status());
    }
    // A refusal may come as headers alone ("trailers-only").
    check_status(answer.headers())?;
    let mut body = answer.into_body();
    let mut received = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await?
        .context("an answer without trailers")?;
    check_status(&trailers)?;
    let message = received
        .get(PREFIX..)
        .context("an answer without a reply message")?;
    AppendReply::decode(message)?;
    Ok(())
}

/// Fails on a `grpc-status` other than 0, with the code and message the server gave.
fn check_status(headers: &http::HeaderMap) -> Result<()> {
    match tonic::Status::from_header_map(headers) {
        Some(status) if status.code() != tonic::Code::Ok => {
            bail!("{:?}: {}", status.code(), status.message())
        }
        _ => Ok(()),
    }
}
