//! The replication stream to one secondary: gRPC's `Stream` call, spoken over HTTP/2 by the
//! sender's own task.
//!
//! Why not tonic's client: through tonic a batch takes three task
//! hops on the master before it reaches the socket (the sender feeds a channel, hyper's task
//! for the request body encodes it into the HTTP/2 stream, the connection's task writes it),
//! and a reply takes two back (the connection's task reads it and wakes the sender). On the
//! master's one thread every hop waits behind every task already queued; under load that is
//! dozens of HTTP connections, so each hop costs up to a whole turn of the run queue, and a
//! reply that waits a few turns holds up every append of its batch (`docs/bench/README.md`).
//! Here the sender's task owns the HTTP/2 connection and
//! drives it itself: a batch is encoded and written in the turn that decided to send it, and a
//! reply is read and applied in the turn that saw it arrive.
//!
//! What it speaks is plain gRPC (the secondary's tonic server cannot tell the difference):
//! `POST /replog.v1.Replication/Stream`, `content-type: application/grpc`, each message framed
//! by [`replog_proto::framing`], and the outcome in `grpc-status`, in the answer's headers or
//! trailers. The connection is watched as tonic's keep-alive watches one: a stream that stays
//! silent while requests wait is pinged, and one that does not answer the ping in time counts
//! as failed. A pong is reported ([`Heard::Alive`]): a secondary that delays its answers
//! (`DELAY_SECONDS`) is still heard from.

use super::error::LinkError;
use super::transport::Heard;
use bytes::{Bytes, BytesMut};
use replog_node::tls::{self, ClientConfig, MaybeTls};
use replog_proto::framing::{self, Decoder};
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

const PATH: &str = "/replog.v1.Replication/Stream";

/// When to ping a silent stream, and how long its answer may take.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    /// Silence while replies are owed before a ping (`HEARTBEAT_INTERVAL_MS`).
    pub after: Duration,
    /// How long the pong may take (`SUSPECT_AFTER_MS`).
    pub timeout: Duration,
}

/// The connection a stream runs on: TCP, or TLS over it when replication is mutual TLS.
type Io = MaybeTls<tls::Connected>;

/// One open `Stream` call and the HTTP/2 connection it runs on.
pub struct ReplicationStream {
    connection: h2::client::Connection<Io, Bytes>,
    /// Kept so the connection is not closed for want of users.
    _client: h2::client::SendRequest<Bytes>,
    requests: h2::SendStream<Bytes>,
    replies: h2::RecvStream,
    /// Reply bytes received and not yet decoded.
    received: BytesMut,
    /// The connection has ended (it is not polled again).
    ended: bool,
    /// Why it ended, until a reply owed is failed with it; the driver drops a failed stream.
    closed: Option<LinkError>,
    ping_pong: Option<h2::PingPong>,
    keep_alive: KeepAlive,
    /// When the stream last showed the secondary alive: opened, a reply, or a pong.
    heard: Instant,
    /// The unanswered ping, if one is out.
    pinged: Option<Instant>,
}

impl ReplicationStream {
    /// Connects to `address` (with TLS when `tls` is given: the secondary's certificate must
    /// chain to its roots and name the host of `address`) and opens the call; done when the
    /// secondary answered its headers (an unknown token, for one, is refused right there).
    pub async fn open(
        address: &str,
        tls: Option<Arc<ClientConfig>>,
        token: Option<&str>,
        connect_timeout: Duration,
        keep_alive: KeepAlive,
    ) -> Result<Self, LinkError> {
        let connecting = async {
            let tcp = TcpStream::connect(address)
                .await
                .map_err(LinkError::Connect)?;
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            match &tls {
                None => Ok(MaybeTls::Plain(tcp)),
                Some(config) => tls::connect(config.clone(), address, tcp)
                    .await
                    .map(|tls| MaybeTls::Tls(Box::new(tls)))
                    .map_err(|error| LinkError::Tls(error.to_string())),
            }
        };
        let io = tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|_| LinkError::ConnectTimeout(connect_timeout))??;
        let over_tls = tls.is_some();
        let (client, mut connection, answer, requests) = request(address, token, io, over_tls)
            .await
            .map_err(|error| match over_tls {
                true => error.opening_over_tls(),
                false => error,
            })?;
        if answer.status() != http::StatusCode::OK {
            return Err(LinkError::Http(answer.status()));
        }
        if let Some(status) = tonic::Status::from_header_map(answer.headers()) {
            if status.code() != tonic::Code::Ok {
                return Err(LinkError::Refused(status));
            }
        }
        let ping_pong = connection.ping_pong();
        Ok(Self {
            connection,
            _client: client,
            requests,
            replies: answer.into_body(),
            received: BytesMut::new(),
            ended: false,
            closed: None,
            ping_pong,
            keep_alive,
            heard: Instant::now(),
            pinged: None,
        })
    }

    /// Queues one request; it is written when the stream is next driven ([`Self::reply`]).
    pub fn send(&mut self, request: &ReplicateRequest) -> Result<(), LinkError> {
        let frame = framing::encode(request).map_err(LinkError::Encode)?;
        Ok(self.requests.send_data(frame, false)?)
    }

    /// Drives the connection (writes what was queued, answers the secondary's frames) until the
    /// next reply or pong. `waiting` says whether replies are owed: only then is silence
    /// suspicious, and pinged.
    pub async fn reply(&mut self, waiting: bool) -> Result<Heard, LinkError> {
        loop {
            // One deadline at a time: the ping's while none is out, then its answer's.
            let deadline = match self.pinged {
                None => self.heard + self.keep_alive.after,
                Some(sent) => sent + self.keep_alive.timeout,
            };
            tokio::select! {
                biased;
                reply = poll_fn(|cx| self.poll_reply(cx)) => return reply,
                // A pong since this turn began makes the deadline stale: then nothing is due,
                // and the next turn has the new one.
                _ = tokio::time::sleep_until(deadline), if waiting => match self.pinged {
                    Some(sent) if Instant::now() >= sent + self.keep_alive.timeout => {
                        return Err(LinkError::PingTimeout(self.keep_alive.timeout));
                    }
                    None if Instant::now() >= self.heard + self.keep_alive.after => self.ping()?,
                    _ => {}
                },
            }
        }
    }

    fn ping(&mut self) -> Result<(), LinkError> {
        match &mut self.ping_pong {
            Some(ping_pong) => {
                ping_pong.send_ping(h2::Ping::opaque())?;
                self.pinged = Some(Instant::now());
            }
            // Not to be had (it is taken once, at the start): the late answer still counts.
            None => self.heard = Instant::now(),
        }
        Ok(())
    }

    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<Heard, LinkError>> {
        if !self.ended {
            if let Poll::Ready(ended) = Pin::new(&mut self.connection).poll(cx) {
                self.ended = true;
                self.closed = Some(connection_ended(ended));
            }
        }
        if let Some(ping_pong) = &mut self.ping_pong {
            if self.pinged.is_some() {
                if let Poll::Ready(pong) = ping_pong.poll_pong(cx) {
                    pong?;
                    self.pinged = None;
                    self.heard = Instant::now();
                    return Poll::Ready(Ok(Heard::Alive));
                }
            }
        }
        loop {
            if let Some(reply) = decode(&mut self.received)? {
                self.heard = Instant::now();
                return Poll::Ready(Ok(Heard::Reply(reply)));
            }
            match self.replies.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    // Read at once, so the window opens again at once.
                    let _ = self.replies.flow_control().release_capacity(chunk.len());
                    self.received.extend_from_slice(&chunk);
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error.into())),
                Poll::Ready(None) => {
                    return self.replies.poll_trailers(cx).map(|t| Err(ended_stream(t)))
                }
                Poll::Pending => {
                    return match self.ended {
                        true => Poll::Ready(Err(self.closed.take().unwrap_or(LinkError::Closed))),
                        false => Poll::Pending,
                    }
                }
            }
        }
    }
}

/// Opens the HTTP/2 connection on `io` and sends the `Stream` call's headers; done when the
/// secondary answered them.
async fn request(
    address: &str,
    token: Option<&str>,
    io: Io,
    over_tls: bool,
) -> Result<
    (
        h2::client::SendRequest<Bytes>,
        h2::client::Connection<Io, Bytes>,
        http::Response<h2::RecvStream>,
        h2::SendStream<Bytes>,
    ),
    LinkError,
> {
    let scheme = if over_tls { "https" } else { "http" };
    let (client, mut connection) = h2::client::handshake(io).await?;
    let mut request = http::Request::post(format!("{scheme}://{address}{PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(token) = token {
        request = request.header(replog_node::auth::HEADER, format!("Bearer {token}"));
    }
    let request = request.body(()).map_err(LinkError::Request)?;
    // The connection has to be driven while the request goes out and the headers come back.
    let opening = async {
        let mut client = client.ready().await?;
        let (answer, requests) = client.send_request(request, false)?;
        let answer = answer.await?;
        Ok::<_, LinkError>((client, answer, requests))
    };
    let (client, answer, requests) = tokio::select! {
        opened = opening => opened?,
        ended = &mut connection => return Err(connection_ended(ended)),
    };
    Ok((client, connection, answer, requests))
}

/// The next whole reply in `received`, taken off it, if one is there.
fn decode(received: &mut BytesMut) -> Result<Option<ReplicaState>, LinkError> {
    Decoder::grpc()
        .next_message(received)
        .map_err(LinkError::Protocol)
}

/// Why a stream whose replies ended failed: its trailers' status, an error either way (the
/// master never ends the stream, so the secondary only ends it to refuse or to stop).
fn ended_stream(trailers: Result<Option<http::HeaderMap>, h2::Error>) -> LinkError {
    let trailers = match trailers {
        Ok(trailers) => trailers,
        Err(error) => return error.into(),
    };
    match trailers.as_ref().and_then(tonic::Status::from_header_map) {
        Some(status) if status.code() != tonic::Code::Ok => LinkError::Refused(status),
        _ => LinkError::Ended,
    }
}

fn connection_ended(ended: Result<(), h2::Error>) -> LinkError {
    match ended {
        Ok(()) => LinkError::Closed,
        Err(error) => error.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replog_proto::framing::{FrameError, MAX_MESSAGE_BYTES};

    fn state(held: u64) -> ReplicaState {
        ReplicaState {
            held,
            ..ReplicaState::default()
        }
    }

    #[test]
    fn replies_come_out_whole_however_they_arrive() {
        let mut wire = BytesMut::new();
        for id in [7, 8] {
            framing::encode_into(&state(id), &mut wire).unwrap();
        }
        let mut received = BytesMut::new();
        let mut replies = Vec::new();
        // One byte per chunk: every split of the prefix and of the body.
        for byte in wire.iter() {
            received.extend_from_slice(&[*byte]);
            while let Some(reply) = decode(&mut received).unwrap() {
                replies.push(reply);
            }
        }
        assert_eq!(replies, [state(7), state(8)]);
        assert!(received.is_empty());
    }

    #[test]
    fn an_oversized_or_compressed_reply_fails_the_stream() {
        let len = u32::try_from(MAX_MESSAGE_BYTES + 1).unwrap();
        let mut received = BytesMut::from(&[0][..]);
        received.extend_from_slice(&len.to_be_bytes());
        let error = decode(&mut received).unwrap_err();
        assert!(
            matches!(error, LinkError::Protocol(FrameError::TooLarge { .. })),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("the secondary sent a gRPC message of"),
            "{error}"
        );

        let mut received = BytesMut::from(&framing::encode(&state(1)).unwrap()[..]);
        received[0] = framing::COMPRESSED;
        let error = decode(&mut received).unwrap_err();
        assert!(
            matches!(error, LinkError::Protocol(FrameError::Compressed)),
            "{error:?}"
        );
    }

    #[test]
    fn an_ended_stream_reports_the_trailers_status() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("7"));
        trailers.insert(
            "grpc-message",
            http::HeaderValue::from_static("unknown%20token"),
        );
        let error = ended_stream(Ok(Some(trailers)));
        let LinkError::Refused(status) = &error else {
            panic!("{error:?}")
        };
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "unknown token");
        assert_eq!(
            error.to_string(),
            format!("{}: unknown token", tonic::Code::PermissionDenied)
        );

        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        for trailers in [Some(ok), None] {
            let error = ended_stream(Ok(trailers));
            assert!(matches!(error, LinkError::Ended), "{error:?}");
            assert_eq!(
                error.to_string(),
                "the secondary ended the replication stream"
            );
        }
    }
}
