//! Aborts appends whose write concern was not met within `REPLICATION_TIMEOUT_SECONDS`.
//!
//! The decision is the master's and must not depend on the client still waiting: a client
//! that hangs up does not leave its id pending forever (which would block visibility of every
//! later id). So one task owns the clock and turns expired appends into tombstones.
//!
//! The same task bounds how long the client of an aborted append waits for a secondary to
//! confirm the tombstone (the 500 waits for that; see [`crate::core::ledger`]): once more
//! `REPLICATION_TIMEOUT_SECONDS` after the abort, then it hears "unknown".

use crate::state::Master;
use replog_node::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Instant;

/// Runs the timer until `shutdown`.
pub async fn run(master: Arc<Master>, shutdown: Shutdown) {
    loop {
        let next = master.read(|core| core.next_deadline());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = master.timer().notified() => continue,
            _ = sleep_until(next) => {
                let (aborted, unconfirmed) = master.tick(Instant::now());
                if !aborted.is_empty() {
                    tracing::warn!(ids = ?aborted, "appends aborted at their deadline");
                }
                if !unconfirmed.is_empty() {
                    tracing::warn!(
                        ids = ?unconfirmed,
                        "aborted appends answered unknown: no secondary has confirmed their tombstones"
                    );
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
