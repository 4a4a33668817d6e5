//! Wires the master together: storage, state, replication tasks, the deadline task, the journal
//! and the HTTP server, all stopped by one shutdown token.

use crate::config::Config;
use crate::state::Master;
use crate::{deadlines, journal, replication};
use replog_node::api::connections::Threads;
use replog_node::log::new_log_id;
use replog_node::shutdown::Shutdown;
use replog_node::storage::{LogFile, Record};
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), String> {
    let (log, mut file) = config.storage.open(new_log_id)?;
    let starts = match file.as_mut() {
        Some(file) => {
            start_instance(file, log.last_id())?;
            file.master_starts().to_vec()
        }
        // A master in memory starts a new log every time: its first process is the only one.
        None => vec![(1, 0)],
    };
    let instance = starts.last().map_or(0, |&(instance, _)| instance);
    tracing::info!(
        log_id = log.log_id(),
        secondaries = ?config.secondaries,
        timeout = ?config.replication_timeout_seconds,
        durable = file.is_some(),
        instance,
        "master starting"
    );
    let (journal, records) = match file {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    config.auth.warn_if_open();
    let master = Arc::new(Master::new(
        config,
        log,
        journal,
        &starts,
        shutdown.clone(),
    )?);
    let mut tasks = replication::spawn(&master);
    tasks.push(tokio::spawn(deadlines::run(master.clone())));
    if let (Some(file), Some(records)) = (file, records) {
        tasks.push(tokio::spawn(journal::run(master.clone(), file, records)));
    }

    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%address, "HTTP API listening");
    let app = replog_node::api::router(
        master.clone(),
        axum::Router::new(),
        shutdown.clone(),
        &master.config.limits,
    );
    let limits = master.config.limits.clone();
    let threads = Threads::start(master.config.runtime.connection_threads, &master.metrics)?;
    let served = replog_node::api::serve(listener, app, shutdown.clone(), limits, threads)
        .await
        .map_err(|e| format!("HTTP server: {e}"));
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    if master.has_storage_failed() {
        return Err("the log could not be written to DATA_DIR".into());
    }
    tracing::info!("master stopped");
    served
}

/// Numbers this master process one above the last recorded in the file, and records that
/// (synced whatever `FSYNC` says) before anything is shipped. Secondaries compare the number:
/// a higher one is a restarted master, whose lost unsynced ids they drop; a lower one is a
/// request from a process that is gone, which they refuse.
fn start_instance(file: &mut LogFile, recovered: u64) -> Result<(), String> {
    let instance = file.master_instance() + 1;
    file.append(&[Record::MasterStart {
        instance,
        recovered,
    }])
    .and_then(|()| file.sync())
    .map_err(|e| format!("DATA_DIR {}: {e}", file.path().display()))
}
