//! One error type for every API call, with its HTTP status, its JSON body and its gRPC status.
//!
//! Errors answer `{"status": "error", "detail": "..."}` over HTTP so that a client can show
//! `detail` whatever went wrong; over gRPC the same detail is the status message. The one
//! exception is an outcome the node cannot know ([`ApiError::OutcomeUnknown`]): it answers
//! `{"status": "unknown", "detail": "..."}`, because it is not an error a client may take as
//! "nothing happened".

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tonic::Code;

/// The detail of an append that was not committed, word for word: clients match on it.
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
    /// The node cannot take appends now (no quorum, shutting down, master unreachable), and
    /// nothing was appended: safe to retry.
    Unavailable(String),
    /// The append may or may not have been appended: the request reached the master but its
    /// answer did not come back, or the master stopped before deciding. Answered 504, never 503
    /// (503 promises nothing was appended); a retry with the same idempotency key finds out.
    OutcomeUnknown(String),
    /// The idempotency key was used for another message; nothing was appended.
    Conflict(String),
    /// Too many appends are waiting; the client should retry after a moment.
    Overloaded(String),
    /// The message or body is larger than the node accepts.
    PayloadTooLarge(String),
    /// The body did not arrive whole within `REQUEST_TIMEOUT_SECONDS`.
    RequestTimeout(String),
    NotFound(String),
    /// A read below the first retained id: retention removed it (or this node was re-seeded
    /// without it). Answers 410 with the first id the node can serve.
    Gone {
        detail: String,
        first_id: u64,
    },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::ReplicationFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone { .. } => StatusCode::GONE,
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
            ApiError::OutcomeUnknown(_) => "unknown",
            ApiError::Conflict(_) => "conflict",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::PayloadTooLarge(_) => "too_large",
            ApiError::RequestTimeout(_) => "timeout",
            ApiError::NotFound(_) => "not_found",
            ApiError::Gone { .. } => "gone",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            ApiError::BadRequest(d)
            | ApiError::UnsupportedMediaType(d)
            | ApiError::Unprocessable(d)
            | ApiError::Unavailable(d)
            | ApiError::OutcomeUnknown(d)
            | ApiError::Conflict(d)
            | ApiError::Overloaded(d)
            | ApiError::PayloadTooLarge(d)
            | ApiError::RequestTimeout(d)
            | ApiError::NotFound(d)
            | ApiError::Gone { detail: d, .. } => d,
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
        let status = match self {
            ApiError::OutcomeUnknown(_) => "unknown",
            _ => "error",
        };
        let body = match &self {
            ApiError::Gone { first_id, .. } => {
                serde_json::json!({ "status": status, "detail": self.detail(), "first_id": first_id })
            }
            _ => serde_json::json!({ "status": status, "detail": self.detail() }),
        };
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

impl From<crate::storage::segments::ReadError> for ApiError {
    /// Below the first retained id: 410 naming it. A damaged segment: 503, naming the files,
    /// so a client reads elsewhere rather than take a short page for the log's end.
    fn from(error: crate::storage::segments::ReadError) -> Self {
        match error {
            crate::storage::segments::ReadError::Gone { first_id, .. } => ApiError::Gone {
                detail: error.to_string(),
                first_id,
            },
            other => ApiError::Unavailable(format!("cannot read the log here: {other}")),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(format!("bad query string: {}", rejection.body_text()))
    }
}

impl From<ApiError> for tonic::Status {
    /// An unknown outcome is `UNKNOWN`: gRPC defines it as an error about which not enough is
    /// known, which is exactly the case, and no other answer of this API uses it. `DATA_LOSS`
    /// would claim data was lost, `DEADLINE_EXCEEDED` already means the request's body timed
    /// out, and `UNAVAILABLE` promises, as the 503 does, that nothing was appended. A conflicting
    /// idempotency key is `ALREADY_EXISTS`: the key names another append.
    fn from(error: ApiError) -> Self {
        let code = match error {
            ApiError::BadRequest(_)
            | ApiError::UnsupportedMediaType(_)
            | ApiError::Unprocessable(_) => Code::InvalidArgument,
            ApiError::ReplicationFailed => Code::Aborted,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::OutcomeUnknown(_) => Code::Unknown,
            ApiError::Conflict(_) => Code::AlreadyExists,
            ApiError::Overloaded(_) => Code::ResourceExhausted,
            ApiError::PayloadTooLarge(_) => Code::OutOfRange,
            ApiError::RequestTimeout(_) => Code::DeadlineExceeded,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::Gone { .. } => Code::OutOfRange,
        };
        tonic::Status::new(code, error.detail())
    }
}

impl From<tonic::Status> for ApiError {
    /// The way back, for a secondary that forwards an append to the master and answers the
    /// master's verdict as its own. Only a status the master answered belongs here: one that
    /// tonic made from a transport error says nothing of what the master did (the forwarder
    /// sorts those out first).
    ///
    /// The codes this API answers map back to their errors, and codes that refuse a call
    /// before it runs mean nothing was appended; any other code (`INTERNAL`, `CANCELLED`, ...)
    /// is an outcome this node cannot know, never "nothing appended".
    fn from(status: tonic::Status) -> Self {
        let detail = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => ApiError::Unprocessable(detail),
            Code::OutOfRange => ApiError::PayloadTooLarge(detail),
            Code::ResourceExhausted => ApiError::Overloaded(detail),
            Code::Aborted => ApiError::ReplicationFailed,
            Code::NotFound => ApiError::NotFound(detail),
            Code::AlreadyExists => ApiError::Conflict(detail),
            Code::DeadlineExceeded => ApiError::RequestTimeout(detail),
            Code::Unavailable => ApiError::Unavailable(detail),
            Code::Unknown => ApiError::OutcomeUnknown(detail),
            // Refused before the handler ran (another build, a proxy's rule): nothing appended.
            code @ (Code::Unimplemented | Code::Unauthenticated | Code::PermissionDenied) => {
                ApiError::Unavailable(format!(
                    "the master refused the append ({code:?}): {detail}; nothing was appended"
                ))
            }
            code => ApiError::OutcomeUnknown(format!(
                "the master's answer was {code:?}: {detail}; the append may or may not be in the log"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_trip_through_grpc() {
        let errors = [
            ApiError::Unprocessable("w".into()),
            ApiError::ReplicationFailed,
            ApiError::Unavailable("no quorum".into()),
            ApiError::OutcomeUnknown("the master stopped".into()),
            ApiError::Conflict("key".into()),
            ApiError::Overloaded("full".into()),
            ApiError::PayloadTooLarge("big".into()),
            ApiError::RequestTimeout("slow".into()),
            ApiError::NotFound("gone".into()),
        ];
        for error in errors {
            let back = ApiError::from(tonic::Status::from(error.clone()));
            assert_eq!(back, error);
        }
    }

    #[test]
    fn an_unknown_outcome_is_a_504_that_says_unknown() {
        let error = ApiError::OutcomeUnknown("the master stopped".into());
        assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(error.outcome(), "unknown");
        assert_eq!(tonic::Status::from(error).code(), Code::Unknown);
    }

    #[test]
    fn a_read_below_the_first_retained_id_is_410_and_out_of_range() {
        use crate::storage::segments::ReadError;
        let error = ApiError::from(ReadError::Gone {
            from_id: 3,
            first_id: 5,
        });
        assert_eq!(error.status(), StatusCode::GONE);
        assert!(
            matches!(error, ApiError::Gone { first_id: 5, .. }),
            "{error:?}"
        );
        assert!(error.detail().contains("first retained id is 5"), "{error}");
        assert_eq!(tonic::Status::from(error).code(), Code::OutOfRange);

        let damaged = ApiError::from(ReadError::Corrupt {
            path: "segments/1.log".into(),
            id: 7,
            offset: 0,
            reason: "checksum mismatch".into(),
        });
        assert_eq!(damaged.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(damaged.detail().contains("segments/1.log"), "{damaged}");
        assert_eq!(tonic::Status::from(damaged).code(), Code::Unavailable);
    }

    #[test]
    fn a_code_this_api_never_answers_is_unknown_not_unavailable() {
        let back = ApiError::from(tonic::Status::internal("h2 protocol error"));
        assert!(matches!(back, ApiError::OutcomeUnknown(_)), "{back:?}");
    }
}
