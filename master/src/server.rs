//! Wires the master together: state, replication tasks, the deadline task and the HTTP server,
//! all stopped by one shutdown token.

use crate::config::Config;
use crate::state::Master;
use crate::{deadlines, replication};
use replog_node::log::{new_log_id, Log};
use replog_node::shutdown::Shutdown;
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), String> {
    let log = Log::new(new_log_id());
    tracing::info!(
        log_id = log.log_id(),
        secondaries = ?config.secondaries,
        timeout = ?config.replication_timeout_seconds,
        "master starting"
    );
    let master = Arc::new(Master::new(config, log, shutdown.clone())?);
    let mut tasks = replication::spawn(&master);
    tasks.push(tokio::spawn(deadlines::run(master.clone())));

    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%address, "HTTP API listening");
    let served = replog_node::api::serve(listener, replog_node::api::router(master.clone(), axum::Router::new(), shutdown.clone()), shutdown.clone())
        .await
        .map_err(|e| format!("HTTP server: {e}"));
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!("master stopped");
    served
}
