//! Wires the master together: storage, state, replication tasks, the deadline task, the journal
//! and the HTTP server, stopped in the order of [`Phases`]: SIGTERM stops the taking of appends,
//! the waiting ones get their decision (or "unknown" once the grace period ends), and only
//! then do replication, the journal and the other tasks stop.

use crate::config::Config;
use crate::error::Error;
use crate::replication::Peer;
use crate::state::Master;
use crate::{deadlines, journal, recovery, replication};
use replog_node::api::connections::Threads;
use replog_node::config::Opened;
use replog_node::log::{new_log_id, Log};
use replog_node::shutdown::{Phases, Shutdown};
use replog_node::storage::{LogFile, Record};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    // The signal starts the drain; `phases.stop` is the token every task watches.
    let phases = Phases::after(shutdown, config.shutdown.shutdown_grace_seconds);
    let Opened { log, file, doubt } = config.storage.open(new_log_id)?;
    config.auth.warn_if_open();
    // Until it serves, the master takes nothing. It shows its own log meanwhile only if that is
    // complete: one that may lack entries may also lack the tombstone of a message answered 500.
    let shown = match doubt {
        None => log.clone(),
        Some(_) => Log::new(log.log_id().to_owned()),
    };
    let peers = replication::peers(&config)?;
    let master = Arc::new(Master::new(config, shown, phases.clone()));
    master.set_known(doubt.is_none());
    master.set_recovering(Some(match doubt {
        Some(_) => "recovering: asking the secondaries what they hold".into(),
        None => "starting: asking the secondaries what they hold".into(),
    }));
    let recovering = master.clone();
    let tasks = vec![
        tokio::spawn(deadlines::run(master.clone())),
        tokio::spawn(async move {
            let Some(recovered) = recovery::run(&recovering, &peers, log, file, doubt).await else {
                return;
            };
            let served = serve_log(&recovering, &peers, recovered);
            match served {
                Ok(tasks) => {
                    for task in tasks {
                        let _ = task.await;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start serving");
                    recovering.storage_failed();
                }
            }
        }),
    ];

    let address = listener.local_addr()?;
    tracing::info!(%address, "HTTP API listening");
    let app = replog_node::api::router(
        master.clone(),
        axum::Router::new(),
        phases.draining.clone(),
        &master.config.limits,
    );
    let limits = master.config.limits.clone();
    let threads = Threads::start(master.config.runtime.connection_threads, &master.metrics)?;
    let serving = replog_node::api::serve(listener, app, phases.draining.clone(), limits, threads);
    let served = phases
        .drain(serving)
        .await
        .unwrap_or(Ok(()))
        .map_err(Error::Http);
    for task in tasks {
        let _ = task.await;
    }
    if master.has_storage_failed() {
        return Err(Error::StorageFailed);
    }
    tracing::info!("master stopped");
    served
}

/// Starts serving the recovered log: numbers this master process above the recovered `floor`,
/// installs the log in the core and starts replication and (with `DATA_DIR`) the journal.
pub fn serve_log(
    master: &Arc<Master>,
    peers: &Arc<[Peer]>,
    recovered: recovery::Recovered,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let recovery::Recovered {
        log,
        mut file,
        floor,
    } = recovered;
    let recovered = log.last_id();
    let (starts, journal, records) = match file.as_mut() {
        Some(file) => {
            start_instance(file, recovered, floor)?;
            file.mark_complete()?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (file.master_starts().to_vec(), Some(tx), Some(rx))
        }
        // A master in memory has no earlier start of its own to list.
        None => (vec![(floor + 1, recovered)], None, None),
    };
    let instance = starts.last().map_or(0, |&(instance, _)| instance);
    tracing::info!(
        log_id = log.log_id(),
        last_id = recovered,
        secondaries = ?master.config.secondaries,
        timeout = ?master.config.replication_timeout_seconds,
        durable = file.is_some(),
        instance,
        "master serving"
    );
    master.install(log, journal, &starts);
    master.set_known(true);
    master.set_recovering(None);
    let mut tasks = replication::spawn(master, peers);
    if let (Some(file), Some(records)) = (file, records) {
        tasks.push(tokio::spawn(journal::run(master.clone(), file, records)));
    }
    Ok(tasks)
}

/// Numbers this master process above the last recorded in the file and above `floor`, and
/// records that (synced whatever `FSYNC` says) before anything is shipped. Secondaries compare
/// the number: a higher one is a restarted master, whose lost unsynced ids they drop; a lower
/// one is a request from a process that is gone, which they refuse.
fn start_instance(file: &mut LogFile, recovered: u64, floor: u64) -> Result<(), Error> {
    let instance = file.master_instance().max(floor) + 1;
    file.append(&[Record::MasterStart {
        instance,
        recovered,
    }])
    .and_then(|()| file.sync())
    .map_err(Error::from)
}
