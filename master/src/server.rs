//! Wires the master together: storage, state, replication tasks, the deadline task, the journal
//! and the HTTP server, stopped in the order of [`Phases`]: SIGTERM stops the taking of appends,
//! the waiting ones get their decision (or "unknown" once the grace period ends), and only
//! then do replication, the journal and the other tasks stop.
//!
//! In failover mode (`Config::failover`) the same master is the master role of a `replog`
//! node, which runs it for one term: it serves until the node is deposed, its lease lapses or
//! recovery finds a more up-to-date node, then stops at once (waiting appends hear "unknown")
//! and [`run`] returns why ([`Ended`]), so that the node can run the secondary role on the
//! same `DATA_DIR`.

use crate::config::Config;
use crate::error::Error;
use crate::replication::Peer;
pub use crate::state::Ended;
use crate::state::Master;
use crate::{deadlines, journal, pulse, recovery, replication};
use replog_node::api::connections::Threads;
use replog_node::config::Opened;
use replog_node::failover::MasterRole;
use replog_node::log::{new_log_id, Log};
use replog_node::metrics::Metrics;
use replog_node::shutdown::{Phases, Shutdown};
use replog_node::storage::{Record, SegmentLog};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Runs the master until `shutdown` (then drained, [`Ended::Stopped`]) or, in failover mode,
/// until the role ends ([`Ended::Deposed`], [`Ended::Lapsed`], [`Ended::Yielded`]); by then
/// every task has stopped and the log file is closed.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Ended, Error> {
    // Certificates are read now (a bad file stops the node here) and again on SIGHUP or when
    // their files change.
    let tls = config.tls.load()?;
    // The signal starts the drain; `phases.stop` is the token every task watches.
    let phases = Phases::after(shutdown, config.shutdown.shutdown_grace_seconds);
    if let Some(tls) = &tls {
        tls.reload_on_change(phases.stop.clone());
    }
    let Opened {
        log, file, doubt, ..
    } = config.storage.open(new_log_id)?;
    config.auth.warn_if_open();
    let role = config.failover.clone();
    // Until it serves, the master takes nothing. It shows its own log meanwhile only if that is
    // complete: one that may lack entries may also lack the tombstone of a message answered 500.
    // In failover mode it shows what its file holds as decided (a majority held it).
    let complete = doubt.is_none() || role.is_some();
    let shown = if complete {
        log.clone()
    } else {
        Log::new(log.log_id().to_owned())
    };
    let peers = replication::peers(&config, tls.as_ref())?;
    let metrics = Arc::new(Metrics::default());
    let stop = phases.stop.clone();
    let master = Arc::new(Master::new(
        config.clone(),
        shown,
        phases.clone(),
        metrics.clone(),
    ));
    master.set_known(complete);
    master.set_recovering(Some(match doubt {
        Some(_) => "recovering: asking the secondaries what they hold".into(),
        None => "starting: asking the secondaries what they hold".into(),
    }));
    let asking = recovery::Asking {
        peers: peers.clone(),
        failover: role.is_some(),
        ask_within: config.suspect_after_ms,
        copy_within: config.rpc_timeout_seconds,
    };
    let serving = Serving {
        config: config.clone(),
        peers,
        stop: stop.clone(),
        metrics: metrics.clone(),
    };
    let recovering = master.clone();
    let mut tasks = vec![
        tokio::spawn(deadlines::run(master.clone(), stop.clone())),
        tokio::spawn(async move {
            let recovery = recovery::run(&recovering, &serving.stop, &asking, log, file, doubt);
            let recovered = match recovery.await {
                recovery::Recovery::Serve(recovered) => *recovered,
                recovery::Recovery::Yield(reason) => {
                    tracing::warn!(%reason, "giving up the mastership");
                    recovering.end_role(Ended::Yielded);
                    return;
                }
                recovery::Recovery::Stopped => return,
            };
            match serve_log(&recovering, &serving, recovered) {
                Ok(tasks) => {
                    for task in tasks {
                        let _ = task.await;
                    }
                }
                Err(error @ Error::StaleTerm { .. }) => {
                    tracing::error!(%error, "giving up the mastership");
                    recovering.end_role(Ended::Yielded);
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start serving");
                    recovering.storage_failed();
                }
            }
        }),
    ];
    if let Some(role) = role {
        tasks.push(tokio::spawn(watch_role(master.clone(), role, stop)));
    }

    let address = listener.local_addr()?;
    tracing::info!(%address, "HTTP API listening");
    let app = replog_node::api::router(
        master.clone(),
        axum::Router::new(),
        phases.draining.clone(),
        &config.limits,
    );
    let threads = Threads::start(config.runtime.connection_threads, &metrics)?;
    let limits = config.limits;
    let serving = replog_node::api::serve(
        listener,
        app,
        phases.draining.clone(),
        limits,
        threads,
        tls.clone(),
    );
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
    let ended = master.ended().unwrap_or(Ended::Stopped);
    tracing::info!(?ended, "master stopped");
    served.map(|()| ended)
}

/// Failover mode: ends the role when the node is deposed or, should that news come late, when
/// the lease lapses (the node must then give the mastership up).
async fn watch_role(master: Arc<Master>, role: MasterRole, shutdown: Shutdown) {
    let why = loop {
        let left = role.gate.remaining(Instant::now());
        if left.is_zero() {
            break Ended::Lapsed;
        }
        tokio::select! {
            biased;
            _ = role.depose.cancelled() => break Ended::Deposed,
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(left) => {}
        }
    };
    master.end_role(why);
}

/// What the tasks that start once the log is recovered are given besides the core.
struct Serving {
    config: Config,
    peers: Arc<[Peer]>,
    /// Stops every task.
    stop: Shutdown,
    metrics: Arc<Metrics>,
}

/// Starts serving the recovered log: numbers this master process above the recovered `floor`,
/// installs the log in the core and starts replication, the pulse and (with `DATA_DIR`) the
/// journal.
fn serve_log(
    master: &Arc<Master>,
    serving: &Serving,
    recovered: recovery::Recovered,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let Serving {
        config,
        peers,
        stop,
        metrics,
    } = serving;
    let recovery::Recovered {
        log,
        mut file,
        floor,
    } = recovered;
    let recovered = log.last_id();
    // In failover mode the term is the process's number: new, or the role must not serve.
    let term = config.failover.as_ref().map(|role| role.term);
    let (starts, journal, records) = match file.as_mut() {
        Some(file) => {
            start_instance(file, recovered, floor, term)?;
            file.mark_complete()?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (file.master_starts().to_vec(), Some(tx), Some(rx))
        }
        // A master in memory has no earlier start of its own to list.
        None => (vec![(instance_after(floor, term)?, recovered)], None, None),
    };
    let instance = starts.last().map_or(0, |&(instance, _)| instance);
    tracing::info!(
        log_id = log.log_id(),
        last_id = recovered,
        secondaries = ?config.secondaries,
        timeout = ?config.replication_timeout_seconds,
        durable = file.is_some(),
        instance,
        "master serving"
    );
    master.install(log, journal, &starts);
    master.set_known(true);
    master.set_recovering(None);
    let rpc_timeout = config.rpc_timeout_seconds;
    let mut tasks = replication::spawn(master, peers, stop, metrics, rpc_timeout);
    tasks.push(tokio::spawn(pulse::run(master.clone(), stop.clone())));
    if let (Some(file), Some(records)) = (file, records) {
        tasks.push(tokio::spawn(journal::run(
            master.clone(),
            file,
            records,
            config.storage.retention(),
            stop.clone(),
            metrics.clone(),
        )));
    }
    Ok(tasks)
}

/// Numbers this master process above the last recorded in the file and above `floor` (in
/// failover mode: `term`, which must be above both), and records that (synced whatever `FSYNC`
/// says) before anything is shipped. Secondaries compare the number: a higher one is a
/// restarted master, whose lost unsynced ids they drop; a lower one is a request from a process
/// that is gone, which they refuse.
fn start_instance(
    file: &mut SegmentLog,
    recovered: u64,
    floor: u64,
    term: Option<u64>,
) -> Result<(), Error> {
    let instance = instance_after(file.master_instance().max(floor), term)?;
    file.append(&[Record::MasterStart {
        instance,
        recovered,
    }])
    .and_then(|()| file.sync())
    .map_err(Error::from)
}

/// The number of a master process that starts after process `floor`: the next one, or in
/// failover mode the `term`, if it is above `floor`.
fn instance_after(floor: u64, term: Option<u64>) -> Result<u64, Error> {
    match term {
        None => Ok(floor + 1),
        Some(term) if term > floor => Ok(term),
        Some(term) => Err(Error::StaleTerm { term, floor }),
    }
}
