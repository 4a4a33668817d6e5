//! The HTTP JSON API every node serves: `POST/GET /api/messages`, `GET /api/health`,
//! `GET /health`, and a JSON 404 for unknown paths. Handlers are thin; validation of the body
//! lives in the [`AppendBody`] extractor, the append's life in [`Node::append`].

use super::{ApiError, Health, Node};
use crate::log::Message;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};
use std::sync::Arc;

/// The JSON routes, with node-specific `extra` routes merged in.
pub fn routes<N: Node>(extra: Router<Arc<N>>) -> Router<Arc<N>> {
    extra
        .route("/health", get(health))
        .route("/api/messages", get(list::<N>).post(append::<N>))
        .route("/api/health", get(node_health::<N>))
        .route("/metrics", get(metrics::<N>))
        .route("/openapi.json", get(openapi::<N>))
        .fallback(not_found)
}

/// `POST /api/messages`: append a message with write concern `w`.
///
/// Answers once `w` nodes (the master included) hold the message. On a secondary the append is
/// forwarded to the master.
#[utoipa::path(
    post,
    path = "/api/messages",
    tag = "log",
    request_body = AppendBody,
    responses(
        (status = 200, description = "Committed", body = AppendedBody),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 408, description = "The body did not arrive whole within REQUEST_TIMEOUT_SECONDS", body = ErrorBody),
        (status = 413, description = "Message or body too large", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 409, description = "The key was used for another message; nothing appended", body = ErrorBody),
        (status = 422, description = "Invalid message, w or key", body = ErrorBody),
        (status = 500, description = "Replication failed. Message not committed.", body = ErrorBody),
        (status = 503, description = "Nothing appended: no quorum (read-only), overloaded (Retry-After), shutting down, or the master unreachable", body = ErrorBody),
        (status = 504, description = "Outcome unknown (status \"unknown\"): the append may be in the log; retry with the same key to find out", body = ErrorBody),
    )
)]
async fn append<N: Node>(
    State(node): State<Arc<N>>,
    body: AppendBody,
) -> Result<Json<AppendedBody>, ApiError> {
    let id = super::append(&*node, body.message.clone(), body.w, body.key).await?;
    Ok(Json(AppendedBody {
        status: "success".into(),
        id,
        message: body.message,
    }))
}

/// An append as JSON: `message` a string, `w` an optional integer, `key` an optional string,
/// nothing else. The range of `w` depends on the cluster and is checked by the master, the
/// length of `key` by [`super::append`], for JSON and gRPC alike.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"message": "hello", "w": 2}))]
pub struct AppendBody {
    /// The message text.
    pub message: String,
    /// Write concern: nodes (master included) that must hold the message before the answer;
    /// 1..=n+1, default n+1 (all).
    #[schema(minimum = 1)]
    pub w: Option<u64>,
    /// Idempotency key, chosen by the client (1 to 128 characters of `A-Za-z0-9._:-`): a retry with the same key and
    /// message gets the first attempt's answer instead of appending again, for a window of
    /// time on the same master process.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[A-Za-z0-9._:-]{1,128}$"
    )]
    #[serde(default)]
    pub key: Option<String>,
}

/// The answer to a committed append.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppendedBody {
    /// Always "success".
    pub status: String,
    pub id: u64,
    pub message: String,
}

/// Every error: `detail` says what went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// "error", or "unknown" when the append's outcome cannot be known (504).
    pub status: String,
    pub detail: String,
}

/// A read below the first retained id (410): `first_id` is where the node's log starts now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "error", "detail": "id 3 is no longer retained; the first retained id is 100", "first_id": 100}))]
pub struct GoneBody {
    /// Always "error".
    pub status: String,
    pub detail: String,
    /// The first id this node can serve: list or stream from it (or without `from_id`).
    pub first_id: u64,
}

impl<S: Send + Sync> FromRequest<S> for AppendBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(request.headers()) {
            return Err(JsonRejection::MissingJsonContentType(Default::default()).into());
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(JsonRejection::from)?;
        AppendBody::from_json(&bytes)
    }
}

/// `Content-Type: application/json` or `application/<anything>+json`, parameters allowed: the
/// rule of axum's own `Json` extractor, which the first pass above does not go through.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == "application"
                && (mime.subtype() == "json" || mime.suffix().is_some_and(|name| name == "json"))
        })
}

impl AppendBody {
    /// A JSON body's bytes as an append, or what is wrong with them.
    ///
    /// Two passes, the first almost always enough: a body that is exactly what the contract
    /// asks for deserialises straight into the struct (no map, no key strings, no second walk,
    /// on the master's busiest path); anything else, including what the contract still accepts
    /// in another spelling (`"w": 2.0`, a repeated key), goes through [`AppendBody::parse`],
    /// which accepts it or names the problem. Whatever the first pass accepts, `parse` accepts
    /// the same way (the `append_body` fuzz check asserts it).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        if let Ok(body) = serde_json::from_slice::<AppendBody>(bytes) {
            return Ok(body);
        }
        let Json(body) = Json::<Value>::from_bytes(bytes)?;
        Self::parse(body)
    }

    pub fn parse(body: Value) -> Result<Self, ApiError> {
        let invalid = |detail: String| ApiError::Unprocessable(detail);
        let Value::Object(mut fields) = body else {
            return Err(invalid(
                "the body must be a JSON object like {\"message\": \"...\", \"w\": 2}".into(),
            ));
        };
        let message = match fields.remove("message") {
            Some(Value::String(text)) => text,
            Some(other) => {
                return Err(invalid(format!(
                    "`message` must be a string, not {}",
                    kind(&other)
                )))
            }
            None => return Err(invalid("`message` is required".into())),
        };
        let w = match fields.remove("w") {
            None | Some(Value::Null) => None,
            // JSON has one number type: 2.0 is the integer 2 (as in JSON Schema), 2.5 is not.
            Some(Value::Number(n)) => match n.as_u64().or_else(|| whole(n.as_f64())) {
                Some(w) => Some(w),
                None if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f < 0.0) => {
                    return Err(invalid(format!(
                        "`w` must be between 1 and the number of nodes, got {n}"
                    )))
                }
                None => return Err(invalid(format!("`w` must be an integer, got {n}"))),
            },
            Some(other) => {
                return Err(invalid(format!(
                    "`w` must be an integer, not {}",
                    kind(&other)
                )))
            }
        };
        let key = match fields.remove("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(key)) => Some(key),
            Some(other) => {
                return Err(invalid(format!(
                    "`key` must be a string, not {}",
                    kind(&other)
                )))
            }
        };
        if let Some(unknown) = fields.keys().next() {
            return Err(invalid(format!(
                "unknown field `{unknown}`; expected `message`, optional `w` and optional `key`"
            )));
        }
        Ok(AppendBody { message, w, key })
    }
}

/// A float that is a whole, non-negative number in `u64` range.
fn whole(value: Option<f64>) -> Option<u64> {
    let f = value?;
    // `u64::MAX as f64` rounds up to 2^64, which is out of range: strictly below it.
    (f.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&f)).then_some(f as u64)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `?from_id=&limit=` on `GET /api/messages`; both optional.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// First id to list; default (and 0): the first retained id. Below it: 410 with
    /// `first_id`.
    #[serde(default)]
    #[param(minimum = 0)]
    pub from_id: Option<i64>,
    /// Most entries to list (default: all).
    #[serde(default)]
    #[param(minimum = 0)]
    pub limit: Option<i64>,
}

impl ListQuery {
    /// `(from_id, limit)` with their defaults; negative values are a bad request.
    fn bounds(&self) -> Result<(u64, usize), ApiError> {
        let non_negative = |name: &str, value: i64| {
            u64::try_from(value)
                .map_err(|_| ApiError::BadRequest(format!("`{name}` must be >= 0, got {value}")))
        };
        let from_id = match self.from_id {
            Some(v) => non_negative("from_id", v)?,
            // From the first retained id.
            None => 0,
        };
        let limit = match self.limit {
            Some(v) => usize::try_from(non_negative("limit", v)?).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        Ok((from_id, limit))
    }
}

/// The visible log, in id order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagesBody {
    /// The node's first retained id when the list was read: nothing below it can be listed
    /// (1 unless retention removed older entries).
    pub first_id: u64,
    pub messages: Vec<MessageBody>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageBody {
    pub id: u64,
    #[serde(serialize_with = "utf8")]
    #[schema(value_type = String)]
    pub message: bytes::Bytes,
}

impl From<Message> for MessageBody {
    fn from(m: Message) -> Self {
        Self {
            id: m.id,
            message: m.message,
        }
    }
}

/// Payloads are validated as UTF-8 when they enter a node; lossy conversion only guards.
fn utf8<S: Serializer>(bytes: &bytes::Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

/// Entries serialised per chunk of a streamed list.
const STREAM_PAGE: usize = 1024;

/// `GET /api/messages`: the visible log in id order.
#[utoipa::path(
    get,
    path = "/api/messages",
    tag = "log",
    params(ListQuery),
    responses(
        (status = 200, description = "Visible entries in id order, with the node's first retained id", body = MessagesBody),
        (status = 400, description = "Bad query string", body = ErrorBody),
        (status = 410, description = "from_id is below the first retained id (retention removed it); first_id names where the log starts now", body = GoneBody),
        (status = 503, description = "The master does not know its log yet (it recovers it from the secondaries), or this node cannot read its log's files where the page lies (a damaged segment; the detail names it): read from another node", body = ErrorBody),
    )
)]
///
/// Small pages answer as one JSON document. Larger lists stream in chunks of
/// [`STREAM_PAGE`] entries, each read under the log's lock only for that page, so listing a
/// million entries neither holds a second copy of the log nor blocks appends. The list ends at
/// the frontier visible when the request arrived: a consistent prefix, since logs only grow.
/// A start below the first retained id is a 410 before any body; a page that cannot be read
/// once the streamed body has begun breaks the body, so a client never takes a short list for
/// a whole one.
///
/// `first_id` is read before the first page: retention only moves it up, so the list never
/// holds an id below the `first_id` it names.
async fn list<N: Node>(
    State(node): State<Arc<N>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let (from_id, limit) = query.bounds()?;
    node.readable()?;
    let first_id = node.first_id();
    if limit <= STREAM_PAGE {
        let messages = node
            .page(from_id, limit)?
            .into_iter()
            .map(MessageBody::from)
            .collect();
        return Ok(Json(MessagesBody { first_id, messages }).into_response());
    }
    // Below the first retained id is a 410, which must come before the body begins.
    node.page(from_id, 1)?;
    let upto = *node.visible().borrow();
    let chunks = futures::stream::unfold(
        ListCursor {
            next: from_id,
            left: limit,
            started: false,
            done: false,
        },
        move |mut cursor| {
            let node = node.clone();
            async move {
                if cursor.done {
                    return None;
                }
                let mut chunk = Vec::with_capacity(64 * 1024);
                if !cursor.started {
                    // The same keys, in the same order, as `MessagesBody`.
                    chunk.extend_from_slice(b"{\"first_id\":");
                    chunk.extend_from_slice(first_id.to_string().as_bytes());
                    chunk.extend_from_slice(b",\"messages\":[");
                }
                let page = if cursor.next > upto || cursor.left == 0 {
                    Vec::new()
                } else {
                    match node.page(cursor.next, STREAM_PAGE.min(cursor.left)) {
                        Ok(page) => page,
                        // The answer has begun: breaking the body is the one way left to say
                        // the list is not whole.
                        Err(error) => {
                            cursor.done = true;
                            return Some((Err(std::io::Error::other(error)), cursor));
                        }
                    }
                };
                let mut wrote = 0;
                for message in page.into_iter().take_while(|m| m.id <= upto) {
                    if cursor.started || wrote > 0 {
                        chunk.push(b',');
                    }
                    cursor.next = message.id + 1;
                    cursor.left -= 1;
                    wrote += 1;
                    if let Err(error) =
                        serde_json::to_writer(&mut chunk, &MessageBody::from(message))
                    {
                        return Some((Err(std::io::Error::other(error)), cursor));
                    }
                }
                cursor.started = true;
                if wrote == 0 {
                    chunk.extend_from_slice(b"]}");
                    cursor.done = true;
                }
                Some((Ok::<_, std::io::Error>(chunk), cursor))
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response())
}

struct ListCursor {
    next: u64,
    left: usize,
    started: bool,
    done: bool,
}

/// `GET /api/health`: on the master the cluster's view, on a secondary its own.
#[utoipa::path(
    get,
    path = "/api/health",
    tag = "health",
    responses((status = 200, description = "The node's health view", body = Health))
)]
async fn node_health<N: Node>(State(node): State<Arc<N>>) -> Json<Health> {
    Json(node.health())
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Metrics in the OpenMetrics text format", body = String, content_type = "application/openmetrics-text"))
)]
async fn metrics<N: Node>(State(node): State<Arc<N>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        super::render_metrics(&*node),
    )
}

/// `GET /health`: 200 while the node serves.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "The node serves", body = Object, example = json!({"status": "ok"})))
)]
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /openapi.json`: this API's OpenAPI document, generated from the handlers above, with
/// this cluster's largest `w` where the node knows it.
async fn openapi<N: Node>(State(node): State<Arc<N>>) -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi::document(node.nodes()))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(body: Value) -> String {
        match AppendBody::parse(body) {
            Ok(b) => format!("ok {:?}", b.w),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn validates_the_append_body() {
        assert_eq!(detail(json!({"message": "a"})), "ok None");
        assert_eq!(detail(json!({"message": "a", "w": 2})), "ok Some(2)");
        assert_eq!(detail(json!({"message": "a", "w": null})), "ok None");
        assert!(detail(json!({"message": "a", "w": -1})).contains("between 1 and"));
        assert!(detail(json!({"message": "a", "w": 2.5})).contains("integer"));
        assert_eq!(detail(json!({"message": "a", "w": 2.0})), "ok Some(2)");
        assert!(detail(json!({"message": "a", "w": -2.0})).contains("between 1 and"));
        assert!(detail(json!({"message": "a", "w": "2"})).contains("integer"));
        assert!(detail(json!({"w": 2})).contains("`message` is required"));
        assert!(detail(json!({"message": 5})).contains("must be a string"));
        assert!(detail(json!(["a"])).contains("JSON object"));
        assert!(detail(json!({"message": "a", "W": 2})).contains("unknown field `W`"));
        assert!(detail(json!({"message": "a", "key": 5})).contains("`key` must be a string"));
    }

    #[test]
    fn takes_an_optional_key() {
        let body = AppendBody::from_json(br#"{"message": "a", "key": "k-1"}"#);
        assert_eq!(body.map(|b| b.key), Ok(Some("k-1".to_owned())));
        let body = AppendBody::parse(json!({"message": "a", "key": null, "w": 2.0}));
        assert_eq!(body.map(|b| b.key), Ok(None));
    }
}
