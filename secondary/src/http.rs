//! The secondary's HTTP JSON API: the shared read routes and its own health view.

use crate::state::Secondary;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use replog_node::api::common_routes;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn router(secondary: Arc<Secondary>) -> Router {
    let routes = Router::new().route("/api/health", get(own_health));
    common_routes(routes).with_state(secondary)
}

/// `GET /api/health`: what this secondary holds and when the master last reached it.
async fn own_health(State(secondary): State<Arc<Secondary>>) -> Json<Value> {
    let last_contact_ms_ago = secondary
        .last_contact()
        .map(|t| t.elapsed().as_millis() as u64);
    let replica = secondary.replica();
    let log = replica.log();
    Json(json!({
        "role": "secondary",
        "log_id": log.log_id(),
        "held": log.last_id(),
        "decided": log.decided(),
        "visible": log.visible_count(),
        "last_contact_ms_ago": last_contact_ms_ago,
    }))
}
