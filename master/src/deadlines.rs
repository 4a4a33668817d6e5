//! Aborts appends whose write concern was not met within `REPLICATION_TIMEOUT_SECONDS`.
//!
//! The decision is the master's and must not depend on the client still waiting: a client
//! that hangs up does not leave its id pending forever (which would block visibility of every
//! later id). So one task owns the clock and turns expired appends into tombstones.

use crate::state::Master;
use std::sync::Arc;
use std::time::Instant;

pub async fn run(master: Arc<Master>) {
    loop {
        let next = master.ledger().next_deadline();
        tokio::select! {
            _ = master.shutdown.cancelled() => return,
            _ = master.deadline_wake.notified() => continue,
            _ = sleep_until(next) => {
                let aborted = master.update(|ledger| ledger.abort_expired(Instant::now()));
                if !aborted.is_empty() {
                    tracing::warn!(ids = ?aborted, "appends aborted at their deadline");
                    master.wake_senders();
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
