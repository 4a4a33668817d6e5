//! `GET /api/messages/stream`: the log as Server-Sent Events, a live tail for `curl -N` and
//! browsers' `EventSource`, on every node.
//!
//! Each event is one visible message: `id:` its log id, `data:` the message as
//! `GET /api/messages` shows it (`{"id":1,"message":"hello"}`). Events come in id order, each once
//! per connection, first those already visible from the start id on, then each as it becomes
//! visible on this node. A `:` comment every [`KEEP_ALIVE`] keeps proxies from closing a quiet
//! stream.
//!
//! Where it starts: `from_id` (default, and 0: the first retained id) and the `Last-Event-ID`
//! header that a reconnecting `EventSource` sends, whichever is later: the stream starts at
//! `max(from_id, Last-Event-ID + 1)`. A client that reconnects to the same URL therefore resumes
//! right after the last event it saw, and `from_id` stays a floor it can rely on. A start below
//! the first retained id answers 410 with `first_id` before the stream begins: the reader would
//! otherwise miss ids without knowing. A stream that retention overtakes later ends, and its
//! reconnect is told the same 410.
//!
//! A stream ends when the node shuts down, when a page cannot be read (retention removed it, or
//! the log's files cannot be read there) and, in failover mode, when the node changes role (its
//! HTTP server is that of the role). The first thing a stream sends is a comment and `retry:`
//! [`RETRY`], so an `EventSource` reconnects after a second with `Last-Event-ID` and goes on
//! where it was; `curl` ends, and `curl -H 'Last-Event-ID: <last id>'` resumes.
//!
//! A reader that falls behind holds nothing: the stream keeps no backlog, only a cursor (the
//! next id) and at most one page of [`PAGE`] entries read from the log. While the client does not
//! read, the connection's send buffer fills, the body is not polled, and nothing more is read;
//! when it reads again, the stream reads on from the log by id. So a reader's memory is bounded
//! by one page whatever the append rate (its payloads are `Bytes` the in-memory log shares, not
//! copies; at worst [`PAGE`] x `MAX_MESSAGE_BYTES`), and a slow reader never slows appends.

use super::json::MessageBody;
use super::{ApiError, Node};
use crate::log::Message;
use crate::shutdown::Shutdown;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Entries read from the log per step, the most a stream holds at once.
pub const PAGE: usize = 64;

/// Silence after which the stream sends a `: keep-alive` comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How soon an `EventSource` should reconnect when its stream ends (the `retry:` field).
pub const RETRY: Duration = Duration::from_secs(1);

/// The header an `EventSource` sends when it reconnects: the `id:` of the last event it saw.
const LAST_EVENT_ID: &str = "last-event-id";

/// The route, to merge into the node's app; `shutdown` ends every stream (the node drains).
pub fn routes<N: Node>(node: Arc<N>, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/api/messages/stream", get(stream::<N>))
        .with_state(Streams { node, shutdown })
}

struct Streams<N> {
    node: Arc<N>,
    shutdown: Shutdown,
}

impl<N> Clone for Streams<N> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

/// `?from_id=` on `GET /api/messages/stream`; optional.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// First id to send; default (and 0): the first retained id. A `Last-Event-ID` header
    /// moves the start to the id after it when that is later. A start below the first retained
    /// id: 410 with `first_id`.
    #[serde(default)]
    #[param(minimum = 0)]
    pub from_id: Option<i64>,
}

/// One event as an SSE client parses it (the document describes each event of the stream with
/// it, as OpenAPI 3.1 does for `text/event-stream`).
#[derive(Debug, utoipa::ToSchema)]
pub struct StreamEvent {
    /// The message's log id in decimal; a client that sends it back as `Last-Event-ID`
    /// resumes after it.
    #[schema(pattern = "^[0-9]+$")]
    pub id: String,
    /// Always `message`, the SSE default (the stream sends no `event:` field).
    pub event: String,
    /// The message as JSON, as `GET /api/messages` lists it: `{"id":1,"message":"hello"}`.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// The first id to send: `max(from_id, Last-Event-ID + 1)` (0: the first retained id), or what
/// is wrong with either.
pub fn start(from_id: Option<i64>, last_event_id: Option<&[u8]>) -> Result<u64, ApiError> {
    let from_id = match from_id {
        Some(v) => u64::try_from(v)
            .map_err(|_| ApiError::BadRequest(format!("`from_id` must be >= 0, got {v}")))?,
        // From the first retained id.
        None => 0,
    };
    // An empty header is what a client sends after an event with an empty id: no position.
    let after = match last_event_id {
        None | Some(b"") => None,
        Some(raw) => std::str::from_utf8(raw)
            .ok()
            // At most 19 digits, as the document says: every such number fits in a u64.
            .filter(|text| text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "`Last-Event-ID` must be a log id (0 to 19 decimal digits), got {:?}",
                    String::from_utf8_lossy(raw)
                ))
            })
            .map(Some)?,
    };
    Ok(after.map_or(from_id, |after| from_id.max(after.saturating_add(1))))
}

/// `GET /api/messages/stream`: visible messages from `from_id` on as Server-Sent Events, then
/// each as it becomes visible, until the client goes away or the node shuts down.
#[utoipa::path(
    get,
    path = "/api/messages/stream",
    tag = "log",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]{0,19}$", description = "Resume after this id (sent by a reconnecting EventSource): the stream starts at max(from_id, Last-Event-ID + 1); empty means no position"),
    ),
    responses(
        (status = 200, description = "An endless text/event-stream: one event per visible message in id order (`id:` the log id, `data:` the message as JSON, {\"id\":1,\"message\":\"hello\"}), and a `: keep-alive` comment after 15 s of silence", body = StreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "Bad query string or Last-Event-ID", body = super::json::ErrorBody),
        (status = 410, description = "The start (from_id, or Last-Event-ID + 1) is below the first retained id (retention removed it); first_id names where the log starts now", body = super::json::GoneBody),
        (status = 503, description = "The master does not know its log yet (it recovers it from the secondaries), or this node cannot read its log's files where the stream would start (a damaged segment; the detail names it)", body = super::json::ErrorBody),
    )
)]
async fn stream<N: Node>(
    State(streams): State<Streams<N>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let next = start(
        query.from_id,
        headers.get(LAST_EVENT_ID).map(|value| value.as_bytes()),
    )?;
    streams.node.readable()?;
    // Below the first retained id is a 410, answered before the stream begins.
    streams.node.page(next, 1)?;
    // "From the first retained id" becomes that id, so the greeting names where the stream
    // starts. Should retention overtake it before the first page, the stream ends as any
    // overtaken one does.
    let next = if next == 0 {
        streams.node.first_id()
    } else {
        next
    };
    let cursor = Cursor {
        visible: streams.node.visible(),
        node: streams.node,
        shutdown: streams.shutdown,
        next,
        page: VecDeque::new(),
        greeted: false,
    };
    let events = futures::stream::unfold(cursor, |mut cursor| async move {
        let event = cursor.next_event().await?;
        Some((Ok::<_, Infallible>(event), cursor))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

/// One stream's position: the next id to send and the rest of the page read last.
struct Cursor<N> {
    node: Arc<N>,
    visible: watch::Receiver<u64>,
    shutdown: Shutdown,
    next: u64,
    page: VecDeque<Message>,
    greeted: bool,
}

impl<N: Node> Cursor<N> {
    /// The next event, waiting for the log to grow if every visible message was sent; `None`
    /// once the node shuts down.
    async fn next_event(&mut self) -> Option<Event> {
        if !self.greeted {
            // Sent at once, so a client knows the stream is open before any message exists.
            self.greeted = true;
            return Some(
                Event::default()
                    .comment(format!("replog stream from id {}", self.next))
                    .retry(RETRY),
            );
        }
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            if let Some(message) = self.page.pop_front() {
                self.next = message.id + 1;
                return Some(event(message));
            }
            // The frontier before the page: everything up to it is in this page or a later one.
            let upto = *self.visible.borrow_and_update();
            self.page = match self.node.page(self.next, PAGE) {
                Ok(page) => page.into(),
                Err(error) => {
                    // Retention overtook this reader, or the files cannot be read: the stream
                    // ends rather than skip ids; a client reconnecting is told why.
                    tracing::warn!(%error, next = self.next, "a live tail ends");
                    return None;
                }
            };
            if self.page.is_empty() {
                // Ids up to `upto` are all read (the rest were tombstones): wait for a move.
                self.next = self.next.max(upto + 1);
                tokio::select! {
                    changed = self.visible.changed() => changed.ok()?,
                    _ = self.shutdown.cancelled() => return None,
                }
            }
        }
    }
}

fn event(message: Message) -> Event {
    let id = message.id;
    // A `MessageBody` always serialises; the fallback only guards.
    let data = serde_json::to_string(&MessageBody::from(message))
        .unwrap_or_else(|_| format!("{{\"id\":{id}}}"));
    Event::default().id(id.to_string()).data(data)
}

#[cfg(test)]
mod tests {
    use super::start;

    #[test]
    fn starts_at_the_later_of_from_id_and_last_event_id() {
        assert_eq!(start(None, None).ok(), Some(0), "0: the first retained id");
        assert_eq!(start(Some(0), None).ok(), Some(0));
        assert_eq!(start(Some(7), None).ok(), Some(7));
        assert_eq!(start(None, Some(b"7")).ok(), Some(8));
        assert_eq!(start(Some(3), Some(b"7")).ok(), Some(8));
        assert_eq!(start(Some(20), Some(b"7")).ok(), Some(20));
        assert_eq!(start(Some(5), Some(b"")).ok(), Some(5));
        assert_eq!(start(None, Some(b"0")).ok(), Some(1));
    }

    #[test]
    fn refuses_a_bad_start() {
        let detail = |result: Result<u64, super::ApiError>| match result {
            Ok(id) => format!("ok {id}"),
            Err(error) => error.to_string(),
        };
        assert!(detail(start(Some(-1), None)).contains("`from_id` must be >= 0"));
        for bad in [
            &b"-1"[..],
            b"1.5",
            b"abc",
            b" 7",
            b"99999999999999999999999",
        ] {
            assert!(
                detail(start(None, Some(bad))).contains("Last-Event-ID"),
                "{bad:?}"
            );
        }
    }
}
