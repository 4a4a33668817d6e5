//! The public API every node serves on its HTTP port: the JSON API under `/api` and `/health`,
//! and the gRPC service `replog.v1.Log` as gRPC and gRPC-Web, routed by path next to the axum
//! routes.
//!
//! Both encodings call one [`Node`] implementation, so validation, errors and behaviour are the
//! same whichever a client speaks.

pub mod error;
pub mod grpc;
pub mod health;
pub mod json;
pub mod openapi;

pub use error::{ApiError, REPLICATION_FAILED};
pub use health::{Health, SecondaryHealth};

use crate::config::LimitArgs;
use crate::log::Message;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, Method};
use axum::Router;
use std::sync::Arc;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

/// What a node offers its clients.
#[tonic::async_trait]
pub trait Node: Send + Sync + 'static {
    /// Appends `message` with write concern `w` (default: all nodes). On a secondary this
    /// forwards to the master.
    async fn append(&self, message: String, w: Option<u64>) -> Result<u64, ApiError>;

    /// Visible entries from `from_id` on, at most `limit`.
    fn page(&self, from_id: u64, limit: usize) -> Vec<Message>;

    /// The highest visible id, updated whenever it moves (for `Watch`).
    fn visible(&self) -> watch::Receiver<u64>;

    fn health(&self) -> Health;

    fn metrics(&self) -> &Metrics;

    /// Nodes in the cluster (the largest `w`), where this node knows it.
    fn nodes(&self) -> Option<u64> {
        None
    }
}

/// Publishes a node's visible frontier to its `Watch` streams, waking them only when it moved.
pub fn publish_visible(visible: &watch::Sender<u64>, upto: u64) {
    visible.send_if_modified(|current| {
        let moved = *current != upto;
        *current = upto;
        moved
    });
}

/// An append through either encoding: the node's verdict, counted in the metrics.
pub async fn append<N: Node>(node: &N, message: String, w: Option<u64>) -> Result<u64, ApiError> {
    let started = std::time::Instant::now();
    let result = node.append(message, w).await;
    let metrics = node.metrics();
    match &result {
        Ok(_) => {
            metrics.append_outcome("committed");
            metrics
                .commit_latency
                .observe(started.elapsed().as_secs_f64());
        }
        Err(error) => {
            tracing::debug!(%error, outcome = error.outcome(), "append refused");
            metrics.append_outcome(error.outcome());
        }
    }
    result
}

/// Sets the state gauges from the node's health view and renders every metric.
pub fn render_metrics<N: Node>(node: &N) -> String {
    let health = node.health();
    let metrics = node.metrics();
    metrics.last_id.set(health.last_id as i64);
    metrics.decided.set(health.decided as i64);
    metrics.visible.set(health.visible as i64);
    metrics.writable.set(i64::from(!health.read_only));
    for secondary in &health.secondaries {
        metrics.secondary(&secondary.address, secondary.lag, secondary.status);
    }
    metrics.render()
}

/// The node's whole public HTTP app: JSON routes, extra node-specific routes, gRPC + gRPC-Web,
/// and CORS that browsers accept for both.
pub fn router<N: Node>(
    node: Arc<N>,
    extra: Router<Arc<N>>,
    shutdown: Shutdown,
    limits: &LimitArgs,
) -> Router {
    let body_limit = body_limit(limits.max_message_bytes);
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ]);
    let mut app = json::routes(extra)
        .with_state(node.clone())
        .merge(grpc::routes(node, shutdown, body_limit))
        .merge(openapi::docs_page())
        .layer(DefaultBodyLimit::max(body_limit));
    if !limits.request_timeout_seconds.is_zero() {
        app = app.layer(RequestBodyTimeoutLayer::new(limits.request_timeout_seconds));
    }
    let app = app.layer(cors);
    // Per-request spans and events are DEBUG: with them filtered out (the default), the layer
    // would only cost every request clock reads and allocations, so it is left out.
    if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        app.layer(tower_http::trace::TraceLayer::new_for_http())
    } else {
        app
    }
}

/// Largest request body: a message at the limit, even if JSON escaping blows every byte up to
/// six (`\u0000`), plus room for the rest of the body.
pub fn body_limit(max_message_bytes: usize) -> usize {
    max_message_bytes
        .saturating_mul(6)
        .saturating_add(64 * 1024)
}

/// Serves a router until `shutdown` is cancelled. HTTP/1.1 and HTTP/2 (h2c, for native gRPC
/// clients) on the same port.
///
/// Every connection gets `TCP_NODELAY`: small answers (an append's 200, a gRPC frame) must
/// leave at once, not wait up to 40 ms for Nagle's algorithm and the peer's delayed ACK.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
