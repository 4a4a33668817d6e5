//! The HTTP JSON API pieces every node shares: the error type, `GET /api/messages`,
//! `GET /health`, and the JSON fallback for unknown paths.
//!
//! Errors always answer `{"status": "error", "detail": "..."}` so that a client can show
//! `detail` whatever went wrong.

use crate::log::Message;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize, Serializer};
use std::sync::Arc;

/// The exact detail the seed answers when an append is not committed.
pub const REPLICATION_FAILED: &str = "Replication failed. Message not committed.";

/// Every error an API call can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Malformed request (JSON syntax, query string).
    BadRequest(String),
    /// Body is not declared as JSON.
    UnsupportedMediaType(String),
    /// Well-formed JSON with a field that breaks the contract (missing message, bad `w`).
    Unprocessable(String),
    /// The write concern was not met in time; the id became a tombstone.
    ReplicationFailed,
    /// The node cannot take appends now (no quorum, shutting down, master unreachable).
    Unavailable(String),
    NotFound(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::ReplicationFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            ApiError::BadRequest(d)
            | ApiError::UnsupportedMediaType(d)
            | ApiError::Unprocessable(d)
            | ApiError::Unavailable(d)
            | ApiError::NotFound(d) => d,
            ApiError::ReplicationFailed => REPLICATION_FAILED,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "status": "error", "detail": self.detail() });
        (self.status(), Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a JSON body with `Content-Type: application/json`".into(),
            ),
            other => ApiError::BadRequest(format!("malformed JSON body: {}", other.body_text())),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(format!("bad query string: {}", rejection.body_text()))
    }
}

/// Read access to a node's visible log.
pub trait LogView: Send + Sync + 'static {
    /// Visible entries from `from_id` on, at most `limit`.
    fn page(&self, from_id: u64, limit: usize) -> Vec<Message>;
}

/// `?from_id=&limit=` on `GET /api/messages`; both optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub from_id: Option<u64>,
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct MessagesBody {
    pub messages: Vec<MessageBody>,
}

#[derive(Debug, Serialize)]
pub struct MessageBody {
    pub id: u64,
    #[serde(serialize_with = "utf8")]
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
    match std::str::from_utf8(bytes) {
        Ok(text) => serializer.serialize_str(text),
        Err(_) => serializer.serialize_str(&String::from_utf8_lossy(bytes)),
    }
}

/// `GET /api/messages`: the visible log in id order.
pub async fn list_messages<S: LogView>(
    State(view): State<Arc<S>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<MessagesBody>, ApiError> {
    let Query(query) = query?;
    let from_id = query.from_id.unwrap_or(1);
    let limit = query.limit.unwrap_or(usize::MAX);
    let messages = view
        .page(from_id, limit)
        .into_iter()
        .map(MessageBody::from)
        .collect();
    Ok(Json(MessagesBody { messages }))
}

/// `GET /health`: 200 while the node serves.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// Routes every node serves, with request tracing and a JSON 404.
pub fn common_routes<S: LogView>(router: Router<Arc<S>>) -> Router<Arc<S>> {
    router
        .route("/health", get(health))
        .route("/api/messages", get(list_messages::<S>))
        .fallback(not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Serves an axum router until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
