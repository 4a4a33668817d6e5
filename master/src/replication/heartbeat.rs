//! Heartbeats: an empty replication call to one secondary every `HEARTBEAT_INTERVAL_MS`.
//!
//! It is never delayed by a secondary's `DELAY_SECONDS` (that applies to entries only), so it
//! measures liveness, not load. Its reply carries the secondary's identity, instance and
//! high-water mark: a restart is noticed here even while no entries flow, and the sender is
//! woken to catch the secondary up. It also carries the master's decisions.
//!
//! The first secondary's task also keeps the master's pulse: it notes that the master runs,
//! often, so that a stall of the master itself is seen as one ([`crate::core::health::Stalls`]).

use super::Peer;
use crate::core::health::{Status, Thresholds};
use crate::state::Master;
use std::sync::Arc;
use std::time::Instant;
use tokio::time::MissedTickBehavior;

pub async fn run(master: Arc<Master>, peers: Arc<[Peer]>, index: usize) {
    if index == 0 {
        tokio::select! {
            _ = heartbeats(&master, &peers[index], index) => {}
            _ = pulse(&master) => {}
        }
        master.update(|core| core.unpulsed());
    } else {
        heartbeats(&master, &peers[index], index).await
    }
}

/// Notes every [`Thresholds::pulse`] that the master runs, until shutdown.
async fn pulse(master: &Master) {
    let thresholds = Thresholds::from_config(&master.config);
    let mut ticker = tokio::time::interval(thresholds.pulse());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = master.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        master.update(|core| core.pulse(Instant::now()));
    }
}

async fn heartbeats(master: &Master, peer: &Peer, index: usize) {
    let mut ticker = tokio::time::interval(master.config.heartbeat_interval_ms);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_status: Option<Status> = None;
    loop {
        tokio::select! {
            _ = master.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let request = master.read(|core| core.heartbeat(index));
        let result = tokio::select! {
            _ = master.shutdown.cancelled() => return,
            // A slow answer is still contact: only silence past UNHEALTHY_AFTER_MS is not.
            result = peer.call(request, master.config.unhealthy_after_ms) => result,
        };
        let answer = result.map_err(|status| format!("{}: {}", status.code(), status.message()));
        let (taken, status, held) = master.update(|core| {
            let now = Instant::now();
            let taken = core.heartbeat_answered(index, answer.as_ref().map_err(Clone::clone), now);
            (
                taken,
                core.status(index, now),
                core.ledger().follower(index).held,
            )
        });
        if let Err(foreign) = taken {
            tracing::debug!(secondary = %peer.address, their_log = %foreign.0, "heartbeat: secondary holds another log");
        }
        if last_status != Some(status) {
            match status {
                Status::Healthy => {
                    tracing::info!(secondary = %peer.address, held, "secondary is healthy")
                }
                _ => {
                    tracing::warn!(secondary = %peer.address, ?status, held, "secondary health changed")
                }
            }
            last_status = Some(status);
        }
    }
}
