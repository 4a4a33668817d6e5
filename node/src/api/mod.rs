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
pub mod idle;
pub mod json;
pub mod openapi;
pub mod stream;

pub use error::{ApiError, REPLICATION_FAILED};
pub use health::{Health, Leadership, SecondaryHealth};

use crate::config::LimitArgs;
use crate::log::Message;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::tls::Tls;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::sync::Arc;
use tokio::sync::watch;

/// What a node offers its clients.
#[tonic::async_trait]
pub trait Node: Send + Sync + 'static {
    /// Appends `message` with write concern `w` (default: all nodes). On a secondary this
    /// forwards to the master. With an idempotency `key` (checked by [`check_key`]), a retry
    /// with the same key gets the first attempt's answer instead of appending again.
    async fn append(
        &self,
        message: String,
        w: Option<u64>,
        key: Option<String>,
    ) -> Result<u64, ApiError>;

    /// Visible entries from `from_id` on (0: from the first retained id), at most `limit`.
    /// [`ApiError::Gone`] below the first retained id; [`ApiError::Unavailable`] when the
    /// log's files cannot be read where the page lies (a damaged segment), never a short page.
    fn page(&self, from_id: u64, limit: usize) -> Result<Vec<Message>, ApiError>;

    /// The first retained id: pages from below it answer [`ApiError::Gone`]. The list answer
    /// and `/metrics` name it; a node that knows it without building its whole health view
    /// says so here.
    fn first_id(&self) -> u64 {
        self.health().first_id
    }

    /// Whether this node can list its log now. A master that does not know its log yet (it
    /// recovers it from the secondaries, or its file is older than the cluster's) answers 503
    /// instead of an empty list, which would say the log is empty.
    fn readable(&self) -> Result<(), ApiError> {
        Ok(())
    }

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

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// An idempotency key is 1 to [`MAX_KEY_BYTES`] of `A-Z a-z 0-9 . _ : -`: enough for a UUID or
/// a client's own counter, and plain ASCII so that its length in bytes and in characters (what
/// the OpenAPI schema can say) are the same.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if (1..=MAX_KEY_BYTES).contains(&key.len()) && key.bytes().all(allowed) {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "`key` must be 1 to {MAX_KEY_BYTES} characters of A-Z, a-z, 0-9, `.`, `_`, `:`, `-`"
        )))
    }
}

/// An append through either encoding: the node's verdict, counted in the metrics.
pub async fn append<N: Node>(
    node: &N,
    message: String,
    w: Option<u64>,
    key: Option<String>,
) -> Result<u64, ApiError> {
    let started = std::time::Instant::now();
    let result = match key.as_deref().map(check_key) {
        Some(Err(error)) => Err(error),
        _ => node.append(message, w, key).await,
    };
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
    metrics.first_id.set(health.first_id as i64);
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
/// and CORS for both when `CORS_ORIGINS` allows other origins.
pub fn router<N: Node>(
    node: Arc<N>,
    extra: Router<Arc<N>>,
    shutdown: Shutdown,
    limits: &LimitArgs,
) -> Router {
    let body_limit = body_limit(limits.max_message_bytes);
    let mut app = json::routes(extra)
        .with_state(node.clone())
        .merge(stream::routes(node.clone(), shutdown.clone()))
        .merge(grpc::routes(node, shutdown, body_limit))
        .merge(openapi::docs_page())
        .layer(DefaultBodyLimit::max(body_limit));
    if !limits.request_timeout_seconds.is_zero() {
        app = app.layer(body_timeout::layer(limits.request_timeout_seconds));
    }
    if let Some(cors) = cors::layer(limits.cors_origins.as_ref()) {
        app = app.layer(cors);
    }
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
/// Hostile or broken clients cannot hold the node: at most `MAX_CONNECTIONS` connections are
/// served at once (one more is closed as soon as it is accepted, see [`connections::Refusals`]),
/// and with `REQUEST_TIMEOUT_SECONDS` a connection without a complete request for that long is
/// closed ([`idle`]); an HTTP/1.1 client also has that long to send a request's headers (the
/// body has its own limit, [`body_timeout`]). `axum::serve` has none of these settings,
/// hence this accept loop over hyper-util's connection builder. On `shutdown` no new connection
/// is accepted, idle ones close, and requests in flight finish.
///
/// With `PUBLIC_TLS` (`tls`), each connection first completes a TLS handshake with the
/// certificate in use at that moment (ALPN offers `h2` and `http/1.1`; the builder tells them
/// apart by the HTTP/2 preface as on plain TCP), within `REQUEST_TIMEOUT_SECONDS` (10 s when
/// that is 0); a failed handshake closes the connection. The handshake runs on the
/// connection's thread, not in the accept loop.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
    limits: LimitArgs,
    threads: connections::Threads,
    tls: Option<Arc<Tls>>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    let max_connections = limits.max_connections;
    crate::config::or_exit(connections::check_open_files(max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let idle_timeout = limits.header_timeout();
    if let Some(timeout) = idle_timeout {
        builder.http1().header_read_timeout(timeout);
    }
    // Only a node that serves TLS here looks at its TLS per connection.
    let public_tls = tls.filter(|tls| tls.public_server().is_some());
    let handshake_timeout = idle_timeout.unwrap_or(HANDSHAKE_TIMEOUT);
    // One permit per open connection; all of them back once every connection has ended.
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut refusals = connections::Refusals::new(threads.refused(), max_connections);
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.refuse(tcp);
            continue;
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let activity = Arc::new(idle::Activity::default());
        let service = hyper_util::service::TowerToHyperService::new(idle::Tracked::new(
            router.clone(),
            activity.clone(),
        ));
        // The task owns its copy of the builder, so the connection borrows it there.
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        // Read per connection, so that reloaded certificates reach new ones.
        let tls_config = public_tls.as_ref().and_then(|tls| tls.public_server());
        threads.spawn(tcp, move |tcp| async move {
            let connection = Connection {
                builder,
                service,
                activity,
                idle_timeout,
                shutdown,
            };
            match tls_config {
                None => connection.serve(tcp).await,
                Some(config) => match crate::tls::accept(config, tcp, handshake_timeout).await {
                    Ok(tls) => connection.serve(tls).await,
                    Err(error) => {
                        tracing::debug!(%error, "TLS handshake failed; connection closed")
                    }
                },
            }
            drop(slot);
        });
    }
    drop(listener);
    // Every connection has seen the shutdown and closes once its requests are answered.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    threads.stop().await;
    Ok(())
}

/// How long a client has to finish its TLS handshake: `REQUEST_TIMEOUT_SECONDS`, or
/// [`HANDSHAKE_TIMEOUT`] when that is off (a handshake that never ends must not hold a
/// connection slot forever).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One accepted connection's HTTP serving, over plain TCP or TLS alike.
struct Connection<S> {
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    service: S,
    activity: Arc<idle::Activity>,
    idle_timeout: Option<std::time::Duration>,
    shutdown: Shutdown,
}

impl<S, B> Connection<S>
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Serves `io` until the client closes it, it stays idle too long, or `shutdown` (then
    /// after the requests in flight).
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            builder,
            service,
            activity,
            idle_timeout,
            shutdown,
        } = self;
        let connection =
            builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
        tokio::pin!(connection);
        // Set when the connection was told to close; `hard` when, idle, it is dropped even if
        // it has not closed by itself (an HTTP/2 peer that never ends its header block does
        // not let it).
        let mut closing = false;
        let mut hard: Option<tokio::time::Instant> = None;
        loop {
            let idle = async {
                match idle_timeout {
                    Some(timeout) if hard.is_none() => activity.idle_for(timeout).await,
                    _ => std::future::pending().await,
                }
            };
            let forced = async {
                match hard {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(error) = ended {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    break;
                }
                _ = shutdown.cancelled(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = idle => {
                    tracing::debug!("closing a connection without a request in time (REQUEST_TIMEOUT_SECONDS)");
                    if !closing {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    hard = Some(tokio::time::Instant::now() + idle::CLOSE_GRACE);
                }
                _ = forced => {
                    if activity.in_flight() == 0 {
                        break;
                    }
                    hard = None;
                }
            }
        }
    }
}
