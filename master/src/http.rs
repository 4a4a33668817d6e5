//! The master's HTTP JSON API. Handlers are thin: validation lives in the [`AppendRequest`]
//! extractor, the append's life in [`Master::append`].

use crate::replication::health::Status;
use crate::state::Master;
use axum::extract::{FromRequest, Request, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use replog_node::api::{common_routes, ApiError};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

pub fn router(master: Arc<Master>) -> Router {
    let routes = Router::new()
        .route("/api/messages", post(append))
        .route("/api/health", get(cluster_health));
    common_routes(routes).with_state(master)
}

/// `POST /api/messages`.
async fn append(
    State(master): State<Arc<Master>>,
    request: AppendRequest,
) -> Result<Json<Value>, ApiError> {
    let text = request.message.clone();
    let id = master.append(request.message, request.w).await?;
    Ok(Json(json!({
        "status": "success",
        "id": id,
        "message": std::str::from_utf8(&text).unwrap_or_default(),
    })))
}

/// A validated append: the message and its write concern.
#[derive(Debug)]
pub struct AppendRequest {
    pub message: Bytes,
    pub w: usize,
}

impl FromRequest<Arc<Master>> for AppendRequest {
    type Rejection = ApiError;

    async fn from_request(request: Request, master: &Arc<Master>) -> Result<Self, ApiError> {
        let Json(body) = Json::<Value>::from_request(request, master).await?;
        parse_append(body, master.config.nodes())
    }
}

/// Checks an append body against the contract: `message` a string, `w` an integer in
/// `1..=nodes` (default `nodes`, all of them), nothing else.
pub fn parse_append(body: Value, nodes: usize) -> Result<AppendRequest, ApiError> {
    let invalid = |detail: String| ApiError::Unprocessable(detail);
    let Value::Object(mut fields) = body else {
        return Err(invalid(
            "the body must be a JSON object like {\"message\": \"...\", \"w\": 2}".into(),
        ));
    };
    let message = match fields.remove("message") {
        Some(Value::String(text)) => Bytes::from(text),
        Some(other) => {
            return Err(invalid(format!(
                "`message` must be a string, not {}",
                kind(&other)
            )))
        }
        None => return Err(invalid("`message` is required".into())),
    };
    let w = match fields.remove("w") {
        None | Some(Value::Null) => nodes,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(w) if (1..=nodes as u64).contains(&w) => w as usize,
            Some(_) => {
                return Err(invalid(format!(
                    "`w` must be between 1 and {nodes} (the nodes in the cluster), got {n}"
                )))
            }
            None if n.as_i64().is_some() => {
                return Err(invalid(format!(
                    "`w` must be between 1 and {nodes} (the nodes in the cluster), got {n}"
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
    if let Some(unknown) = fields.keys().next() {
        return Err(invalid(format!(
            "unknown field `{unknown}`; expected `message` and optional `w`"
        )));
    }
    Ok(AppendRequest { message, w })
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

#[derive(Serialize)]
struct ClusterHealth {
    role: &'static str,
    log_id: String,
    last_id: u64,
    decided: u64,
    pending: usize,
    nodes: usize,
    reachable: usize,
    quorum: bool,
    read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only_reason: Option<String>,
    secondaries: Vec<SecondaryHealth>,
}

#[derive(Serialize)]
struct SecondaryHealth {
    address: String,
    status: Status,
    /// Milliseconds since the last reply; `null` if it never answered.
    last_contact_ms_ago: Option<u64>,
    acked_id: u64,
    held: u64,
    lag: u64,
    last_error: Option<String>,
}

/// `GET /api/health`: the master's view of the cluster.
async fn cluster_health(State(master): State<Arc<Master>>) -> Json<ClusterHealth> {
    let quorum = master.quorum();
    let now = Instant::now();
    let ledger = master.ledger();
    let log = ledger.log();
    let secondaries = master
        .peers
        .iter()
        .zip(ledger.followers())
        .map(|(peer, f)| SecondaryHealth {
            address: peer.address.clone(),
            status: master.status_of(f.last_contact, now),
            last_contact_ms_ago: f
                .last_contact
                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
            acked_id: f.acked,
            held: f.held,
            lag: log.last_id().saturating_sub(f.held),
            last_error: f.last_error.clone(),
        })
        .collect();
    Json(ClusterHealth {
        role: "master",
        log_id: log.log_id().to_owned(),
        last_id: log.last_id(),
        decided: log.decided(),
        pending: ledger.pending_count(),
        nodes: quorum.nodes,
        reachable: quorum.reachable,
        quorum: quorum.reachable * 2 > quorum.nodes,
        read_only: quorum.refusal.is_some(),
        read_only_reason: quorum.refusal,
        secondaries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(body: Value) -> String {
        match parse_append(body, 3) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn validates_the_append_contract() {
        assert_eq!(detail(json!({"message": "a"})), "ok");
        assert_eq!(parse_append(json!({"message": "a"}), 3).map(|r| r.w), Ok(3));
        assert_eq!(
            parse_append(json!({"message": "a", "w": 1}), 3).map(|r| r.w),
            Ok(1)
        );
        assert!(detail(json!({"message": "a", "w": 0})).contains("between 1 and 3"));
        assert!(detail(json!({"message": "a", "w": 4})).contains("between 1 and 3"));
        assert!(detail(json!({"message": "a", "w": -1})).contains("between 1 and 3"));
        assert!(detail(json!({"message": "a", "w": 2.5})).contains("integer"));
        assert!(detail(json!({"message": "a", "w": "2"})).contains("integer"));
        assert!(detail(json!({"w": 2})).contains("`message` is required"));
        assert!(detail(json!({"message": 5})).contains("must be a string"));
        assert!(detail(json!(["a"])).contains("JSON object"));
        assert!(detail(json!({"message": "a", "W": 2})).contains("unknown field `W`"));
    }
}
