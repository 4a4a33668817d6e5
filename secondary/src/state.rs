//! The secondary's shared state, one `Arc`'d struct for the replication service and the API.

use crate::config::Config;
use crate::forward::Forwarder;
use crate::replica::Replica;
use replog_node::api::{ApiError, Health, Node};
use replog_node::log::Message;
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Without a call from the master for this long, the secondary calls itself cut off.
const MASTER_SILENCE: Duration = Duration::from_secs(5);

pub struct Secondary {
    pub config: Config,
    replica: Mutex<Replica>,
    last_contact: Mutex<Option<Instant>>,
    visible: watch::Sender<u64>,
    forward: Forwarder,
}

impl Secondary {
    pub fn new(config: Config, replica: Replica, forward: Forwarder) -> Self {
        let (visible, _) = watch::channel(replica.log().visible_upto());
        Self {
            config,
            replica: Mutex::new(replica),
            last_contact: Mutex::new(None),
            visible,
            forward,
        }
    }

    pub fn replica(&self) -> MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last_contact(&self) -> Option<Instant> {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one replication request and answers the resulting state. A request of another
    /// log changes nothing; the answer names our log so the master can say why.
    pub fn receive(&self, request: ReplicateRequest) -> ReplicaState {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let mut replica = self.replica();
        if replica.admit(&request.log_id).is_err() {
            tracing::warn!(
                ours = replica.log().log_id(),
                theirs = %request.log_id,
                "refusing entries of another log identity"
            );
            return replica.state();
        }
        let added = replica.store(request.entries);
        if let Some(decisions) = &request.decisions {
            replica.decide(decisions);
        }
        if added > 0 {
            tracing::debug!(added, held = replica.log().last_id(), "stored entries");
        }
        let upto = replica.log().visible_upto();
        self.visible.send_if_modified(|visible| {
            let moved = *visible != upto;
            *visible = upto;
            moved
        });
        replica.state()
    }
}

#[tonic::async_trait]
impl Node for Secondary {
    async fn append(&self, message: String, w: Option<u64>) -> Result<u64, ApiError> {
        self.forward.append(message, w).await
    }

    fn page(&self, from_id: u64, limit: usize) -> Vec<Message> {
        self.replica().page(from_id, limit)
    }

    fn visible(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    fn health(&self) -> Health {
        let silence = self.last_contact().map(|t| t.elapsed());
        let replica = self.replica();
        let log = replica.log();
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
