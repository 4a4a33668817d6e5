//! The public API every node serves on its HTTP port: the JSON API under `/api` and `/health`,
//! and the gRPC service `replog.v1.Log` as gRPC and gRPC-Web, routed by path next to the axum
//! routes.
//!
//! Both encodings call one [`Node`] implementation, so validation, errors and behaviour are the
//! same whichever a client speaks.

pub mod body_timeout;
pub mod connections;
pub mod cors;
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
use axum::Router;
use body_timeout::BodyTimeoutLayer;
use std::sync::Arc;
use tokio::sync::watch;

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
///
/// With no stream open the value is still updated but nobody is woken: a wake-up walks all of
/// tokio's notify lists, which on the master's busiest path is a cost per commit for nothing.
/// The count is read while the value is locked for writing, so a stream that subscribes at the
/// same moment either is counted and woken, or subscribes after this and reads the new value.
pub fn publish_visible(visible: &watch::Sender<u64>, upto: u64) {
    visible.send_if_modified(|current| {
        let moved = *current != upto;
        *current = upto;
        moved && visible.receiver_count() > 0
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
    let mut app = json::routes(extra)
        .with_state(node.clone())
        .merge(grpc::routes(node, shutdown, body_limit))
        .merge(openapi::docs_page())
        .layer(DefaultBodyLimit::max(body_limit));
    if !limits.request_timeout_seconds.is_zero() {
        app = app.layer(BodyTimeoutLayer::new(limits.request_timeout_seconds));
    }
    let app = app.layer(cors::layer());
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
/// clients) on the same port; each connection on the thread `threads` picks for it, and the
/// threads stopped once every connection has ended.
///
/// Every connection gets `TCP_NODELAY`: small answers (an append's 200, a gRPC frame) must
/// leave at once, not wait up to 40 ms for Nagle's algorithm and the peer's delayed ACK.
///
/// An HTTP/1.1 client gets `header_timeout` to send a request's headers (the body has its own
/// limit, [`BodyTimeoutLayer`]); a client that trickles headers byte by byte would
/// otherwise hold its connection forever. `axum::serve` has no such setting, hence this
/// accept loop over hyper-util's connection builder, with its graceful shutdown: on `shutdown`
/// no new connection is accepted, idle ones close, and requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
    header_timeout: Option<std::time::Duration>,
    threads: connections::Threads,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    if let Some(timeout) = header_timeout {
        builder.http1().header_read_timeout(timeout);
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Out of file descriptors and the like: the listener itself is fine, so wait a
                // moment (as axum::serve does) instead of spinning or giving up.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        // The task owns its copy of the builder, so the connection borrows it there.
        let builder = builder.clone();
        let watcher = graceful.watcher();
        threads.spawn(tcp, move |tcp| async move {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    threads.stop().await;
    Ok(())
}
