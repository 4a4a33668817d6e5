//! The secondary's shared state, one `Arc`'d struct for the gRPC service and the HTTP API.

use crate::config::Config;
use crate::replica::Replica;
use replog_node::api::LogView;
use replog_node::log::Message;
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

pub struct Secondary {
    pub config: Config,
    replica: Mutex<Replica>,
    last_contact: Mutex<Option<Instant>>,
}

impl Secondary {
    pub fn new(config: Config, replica: Replica) -> Self {
        Self {
            config,
            replica: Mutex::new(replica),
            last_contact: Mutex::new(None),
        }
    }

    pub fn replica(&self) -> MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_contact(&self) -> Option<Instant> {
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
        replica.state()
    }
}

impl LogView for Secondary {
    fn page(&self, from_id: u64, limit: usize) -> Vec<Message> {
        self.replica().page(from_id, limit)
    }
}
