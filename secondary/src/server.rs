//! Wires the secondary together: the gRPC replication server and the HTTP API, both stopped by
//! one shutdown token.

use crate::config::Config;
use crate::forward::Forwarder;
use crate::replica::Replica;
use crate::service::ReplicationService;
use crate::state::Secondary;
use replog_node::api::connections::Threads;
use replog_node::shutdown::Shutdown;
use replog_node::storage::LogFile;
use replog_proto::framing::MAX_MESSAGE_BYTES;
use replog_proto::v1::replication_server::ReplicationServer;
use std::sync::Arc;
use tokio::net::TcpListener;

/// How long the replication server may take to close the master's connection at shutdown.
const REPLICATION_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn run(
    config: Config,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), String> {
    tracing::info!(
        delay = ?config.delay_seconds,
        error_rate = config.error_rate,
        "secondary starting"
    );
    // A fresh log has no identity yet: it adopts the master's on first contact.
    let replog_node::config::Opened { log, file, .. } = config
        .storage
        .open(String::new)
        .map_err(|e| e.to_string())?;
    // A secondary's log is whole by definition: the master catches it up.
    if let Some(file) = &file {
        file.mark_complete()
            .map_err(|e| format!("DATA_DIR {}: {e}", file.path().display()))?;
    }
    config.auth.warn_if_open();
    let limits = config.limits.clone();
    let forward = Forwarder::new(config.master.as_deref())?;
    let secondary = Arc::new(Secondary::new(
        config,
        Replica::new(log).with_master(file.as_ref().map_or(0, LogFile::master_instance)),
        file,
        forward,
        shutdown.clone(),
    ));

    let token = secondary.config.auth.token().map(str::to_owned);
    let server = ReplicationServer::new(ReplicationService {
        secondary: secondary.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = tonic::service::interceptor::InterceptedService::new(
        server,
        move |request: tonic::Request<()>| {
            replog_node::auth::check(&request, token.as_deref())?;
            Ok(request)
        },
    );
    let grpc_address = grpc_listener.local_addr().map_err(|e| e.to_string())?;
    // Accepted sockets get TCP_NODELAY (the builder's setting covers only listeners it binds
    // itself): an acknowledgement must not wait for Nagle's algorithm.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
        |accepted| {
            accepted.inspect(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
            })
        },
    );
    let grpc_shutdown = shutdown.clone();
    let grpc = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            // The master's batches (up to 4 MiB) arrive on one long-lived stream: windows larger
            // than a batch let each flow in without waiting for window updates.
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, grpc_shutdown.clone().cancelled_owned())
            .await;
        // A secondary that no longer takes replication stops (and exits non-zero, see below)
        // rather than serving an ever older log.
        if served.is_err() {
            grpc_shutdown.cancel();
        }
        served
    });
    tracing::info!(address = %grpc_address, "replication service listening");

    let http_address = http_listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(address = %http_address, "HTTP API listening");
    let secondary_failed = secondary.clone();
    let threads = Threads::start(
        secondary.config.runtime.connection_threads,
        &secondary.metrics,
    )?;
    let served = replog_node::api::serve(
        http_listener,
        replog_node::api::router(secondary, axum::Router::new(), shutdown.clone(), &limits),
        shutdown.clone(),
        limits.clone(),
        threads,
    )
    .await
    .map_err(|e| format!("HTTP server: {e}"));
    shutdown.cancel();
    // A master that does not close its connection (paused, or gone without a FIN) would hold
    // the graceful stop of the replication server open: it gets a moment, then is dropped.
    let mut grpc = grpc;
    match tokio::time::timeout(REPLICATION_LINGER, &mut grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("replication server: {e}")),
        Ok(Err(e)) => return Err(format!("replication server task: {e}")),
        Err(_) => {
            tracing::info!(linger = ?REPLICATION_LINGER, "the master's connection did not close; dropping it");
            grpc.abort();
        }
    }
    if secondary_failed.has_storage_failed() {
        return Err("the log could not be written to DATA_DIR".into());
    }
    tracing::info!("secondary stopped");
    served
}
