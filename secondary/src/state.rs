//! The secondary's shared state, one `Arc`'d struct for the replication service and the API.

use crate::config::Config;
use crate::forward::Forwarder;
use crate::replica::{Refusal, Replica};
use replog_node::api::{ApiError, Health, Node};
use replog_node::log::Message;
use replog_node::metrics::Metrics;
use replog_node::shutdown::Shutdown;
use replog_node::storage::{LogFile, Record};
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Without a call from the master for this long, the secondary calls itself cut off.
const MASTER_SILENCE: Duration = Duration::from_secs(5);

pub struct Secondary {
    pub config: Config,
    store: Mutex<Store>,
    last_contact: Mutex<Option<Instant>>,
    visible: watch::Sender<u64>,
    forward: Forwarder,
    pub shutdown: Shutdown,
    pub metrics: Metrics,
    /// The log file could not be written: the process stops, and exits non-zero.
    storage_failed: AtomicBool,
}

/// The replica and its file under one lock, so records reach the file in the order the
/// replica made them, and nothing is acknowledged before it is written.
pub struct Store {
    pub replica: Replica,
    file: Option<LogFile>,
}

/// Why a request was not taken.
#[derive(Debug)]
pub enum Refused {
    /// Not applied, and our state tells the master why: it names another log identity, or a
    /// master process that the request's starts did not reach back to.
    Unapplied(ReplicaState),
    /// The request contradicts what we hold or follow (see [`Refusal`]).
    Master(String),
    /// The request is wrong in itself (see [`Refusal::is_malformed`]).
    Invalid(String),
    /// The log file could not be written; the secondary is stopping.
    Storage(String),
}

impl Secondary {
    pub fn new(
        config: Config,
        replica: Replica,
        file: Option<LogFile>,
        forward: Forwarder,
        shutdown: Shutdown,
    ) -> Self {
        let (visible, _) = watch::channel(replica.log().visible_upto());
        Self {
            config,
            store: Mutex::new(Store { replica, file }),
            last_contact: Mutex::new(None),
            visible,
            forward,
            shutdown,
            metrics: Metrics::default(),
            storage_failed: AtomicBool::new(false),
        }
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a write of the log file failed (the secondary is then stopping).
    pub fn has_storage_failed(&self) -> bool {
        self.storage_failed.load(Ordering::Relaxed)
    }

    /// Counts and logs a refused replication request.
    pub fn refuse(&self, reason: &'static str, why: &dyn std::fmt::Display) {
        tracing::warn!(reason, %why, "refusing a replication request; nothing changed");
        self.metrics.replication_refused(reason);
    }

    pub fn is_durable(&self) -> bool {
        self.store().file.is_some()
    }

    fn contacted(&self) {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn last_contact(&self) -> Option<Instant> {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one replication request, makes it durable (with `DATA_DIR`) and answers the
    /// resulting state. Blocking: with a file, call it off the async workers.
    pub fn receive(&self, request: ReplicateRequest) -> Result<ReplicaState, Refused> {
        let theirs = request.log_id.clone();
        let mut store = self.store();
        let Store { replica, file } = &mut *store;
        let records = match replica.receive(request) {
            Ok(records) => records,
            Err(refusal @ Refusal::ForeignLog) => {
                tracing::warn!(ours = replica.log().log_id(), %theirs, "refusing entries of another log identity");
                self.metrics.replication_refused(refusal.reason());
                return Err(Refused::Unapplied(replica.state()));
            }
            // The master sent no starts because it thought we follow it (we restarted since):
            // our state says which process we follow, and the next request brings them.
            Err(refusal @ Refusal::MissingStarts { .. }) => {
                tracing::info!(%refusal, "asking the master for its starts");
                self.contacted();
                return Err(Refused::Unapplied(replica.state()));
            }
            Err(refusal) => {
                self.refuse(refusal.reason(), &refusal);
                return Err(match refusal.is_malformed() {
                    true => Refused::Invalid(refusal.to_string()),
                    false => Refused::Master(refusal.to_string()),
                });
            }
        };
        // Only a request we take (or the handshake above) is contact with our master: a refused
        // one changes nothing, our health included.
        self.contacted();
        if let (Some(file), false) = (file.as_mut(), records.is_empty()) {
            let started = Instant::now();
            // What we hold is on disk before we say we hold it. The master's decisions need no
            // fsync of their own: if a power failure takes them, we report an older decided
            // frontier and the master sends them again (tombstones included), so it costs only a
            // moment of showing less.
            let holds_more = records.iter().any(|r| {
                matches!(
                    r,
                    Record::Entry { .. } | Record::Meta { .. } | Record::MasterStart { .. }
                )
            });
            let written = if holds_more {
                file.append(&records)
            } else {
                file.append_unsynced(&records)
            };
            self.metrics.log_write(started.elapsed());
            if let Err(error) = written {
                tracing::error!(%error, "cannot write the log to DATA_DIR; stopping");
                self.storage_failed.store(true, Ordering::Relaxed);
                self.shutdown.cancel();
                return Err(Refused::Storage(error.to_string()));
            }
        }
        if !records.is_empty() {
            tracing::debug!(
                records = records.len(),
                held = replica.log().last_id(),
                "stored"
            );
        }
        let upto = replica.log().visible_upto();
        replog_node::api::publish_visible(&self.visible, upto);
        Ok(replica.state())
    }
}

#[tonic::async_trait]
impl Node for Secondary {
    async fn append(
        &self,
        message: String,
        w: Option<u64>,
        key: Option<String>,
    ) -> Result<u64, ApiError> {
        // After SIGTERM, a forwarded append may wait for the master's answer for the grace
        // period; then this node stops, and the outcome is the master's to know, not ours.
        let grace_over = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(self.config.shutdown.shutdown_grace_seconds).await;
        };
        tokio::select! {
            answer = self.forward.append(message, w, key) => answer,
            _ = grace_over => Err(ApiError::OutcomeUnknown(
                "this secondary is shutting down and the master has not answered the forwarded \
                 append; it may be committed: retry with the same key to find out"
                    .into(),
            )),
        }
    }

    fn page(&self, from_id: u64, limit: usize) -> Vec<Message> {
        self.store().replica.page(from_id, limit)
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn visible(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    fn health(&self) -> Health {
        let silence = self.last_contact().map(|t| t.elapsed());
        let store = self.store();
        let log = store.replica.log();
        let cut_off = silence.is_none_or(|s| s >= MASTER_SILENCE);
        Health {
            role: "secondary",
            log_id: log.log_id().to_owned(),
            last_id: log.last_id(),
            decided: log.decided(),
            visible: log.visible_count(),
            quorum: !cut_off,
            // Appends here are forwarded; they can only work while the master reaches us.
            read_only: cut_off,
            read_only_reason: cut_off
                .then(|| "the master has not reached this secondary lately".to_owned()),
            last_contact_ms_ago: silence.map(|s| s.as_millis() as u64),
            ..Health::default()
        }
    }
}
