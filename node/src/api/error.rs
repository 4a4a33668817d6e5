//! One error type for every API call, with its HTTP status, its JSON body and its gRPC status.
//!
//! Errors always answer `{"status": "error", "detail": "..."}` over HTTP so that a client can
//! show `detail` whatever went wrong; over gRPC the same detail is the status message.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tonic::Code;

/// The exact detail the seed answers when an append is not committed.
pub const REPLICATION_FAILED: &str = "Replication failed. Message not committed.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Malformed request (JSON syntax, query string).
    BadRequest(String),
    /// Body is not declared as JSON.
    UnsupportedMediaType(String),
    /// Well-formed request with a field that breaks the contract (missing message, bad `w`).
    Unprocessable(String),
    /// The write concern was not met in time; the id became a tombstone.
    ReplicationFailed,
    /// The node cannot take appends now (no quorum, shutting down, master unreachable).
    Unavailable(String),
    /// Too many appends are waiting; the client should retry after a moment.
    Overloaded(String),
    /// The message or body is larger than the node accepts.
    PayloadTooLarge(String),
    /// The body stopped arriving for longer than `REQUEST_TIMEOUT_SECONDS`.
    RequestTimeout(String),
    NotFound(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::ReplicationFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    /// The label of this outcome in the `appends` metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_)
            | ApiError::UnsupportedMediaType(_)
            | ApiError::Unprocessable(_) => "invalid",
            ApiError::ReplicationFailed => "aborted",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::PayloadTooLarge(_) => "too_large",
            ApiError::RequestTimeout(_) => "timeout",
            ApiError::NotFound(_) => "not_found",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            ApiError::BadRequest(d)
            | ApiError::UnsupportedMediaType(d)
            | ApiError::Unprocessable(d)
            | ApiError::Unavailable(d)
            | ApiError::Overloaded(d)
            | ApiError::PayloadTooLarge(d)
            | ApiError::RequestTimeout(d)
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
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::Overloaded(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if let Some(timed_out) = super::body_timeout::timed_out(&rejection) {
            return ApiError::RequestTimeout(timed_out.to_string());
        }
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a JSON body with `Content-Type: application/json`".into(),
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(format!("request body too large: {}", other.body_text()))
            }
            other => ApiError::BadRequest(format!("malformed JSON body: {}", other.body_text())),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(format!("bad query string: {}", rejection.body_text()))
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        let code = match error {
            ApiError::BadRequest(_)
            | ApiError::UnsupportedMediaType(_)
            | ApiError::Unprocessable(_) => Code::InvalidArgument,
            ApiError::ReplicationFailed => Code::Aborted,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Overloaded(_) => Code::ResourceExhausted,
            ApiError::PayloadTooLarge(_) => Code::OutOfRange,
            ApiError::RequestTimeout(_) => Code::DeadlineExceeded,
            ApiError::NotFound(_) => Code::NotFound,
        };
        tonic::Status::new(code, error.detail())
    }
}

impl From<tonic::Status> for ApiError {
    /// The way back, for a secondary that forwards an append to the master and answers the
    /// master's verdict as its own.
    fn from(status: tonic::Status) -> Self {
        let detail = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => ApiError::Unprocessable(detail),
            Code::OutOfRange => ApiError::PayloadTooLarge(detail),
            Code::ResourceExhausted => ApiError::Overloaded(detail),
            Code::Aborted => ApiError::ReplicationFailed,
            Code::NotFound => ApiError::NotFound(detail),
            _ => ApiError::Unavailable(format!("the master did not take the append: {detail}")),
        }
    }
}
