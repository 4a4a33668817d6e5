//! Heartbeats: an empty replication call to one secondary every `HEARTBEAT_INTERVAL_MS`.
//!
//! It is never delayed by a secondary's `DELAY_SECONDS` (that applies to entries only), so it
//! measures liveness, not load. Its reply carries the secondary's identity, instance and
//! high-water mark: a restart is noticed here even while no entries flow, and the sender is
//! woken to catch the secondary up. It also carries the master's decisions.
//!
//! The first secondary's task also keeps the master's pulse: it notes that the master runs,
//! often, so that a stall of the master itself is seen as one ([`super::health::Stalls`]).

use super::health::{Status, Thresholds};
use crate::state::Master;
use std::sync::Arc;
use std::time::Instant;
use tokio::time::MissedTickBehavior;

pub async fn run(master: Arc<Master>, index: usize) {
    if index == 0 {
        tokio::select! {
            _ = heartbeats(&master, index) => {}
            _ = pulse(&master) => {}
        }
        master.stalls.unpulsed();
    } else {
        heartbeats(&master, index).await
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
        master.stalls.observe(Instant::now(), thresholds);
    }
}

async fn heartbeats(master: &Master, index: usize) {
    let peer = &master.peers[index];
    let mut ticker = tokio::time::interval(master.config.heartbeat_interval_ms);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_status: Option<Status> = None;
    loop {
        tokio::select! {
            _ = master.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let request = master.ledger().batch(index, u64::MAX, 0, 0);
        let result = tokio::select! {
            _ = master.shutdown.cancelled() => return,
            // A slow answer is still contact: only silence past UNHEALTHY_AFTER_MS is not.
            result = peer.call(request, master.config.unhealthy_after_ms) => result,
        };
        match result {
            Ok(reply) => {
                if let Err(foreign) = master.on_reply(index, &reply) {
                    tracing::debug!(secondary = %peer.address, their_log = %foreign.0, "heartbeat: secondary holds another log");
                }
            }
            Err(status) => master
                .ledger()
                .on_failure(index, format!("{}: {}", status.code(), status.message())),
        }
        let (last_contact, held) = {
            let ledger = master.ledger();
            let f = ledger.follower(index);
            (f.last_contact, f.held)
        };
        let status = master.status_of(last_contact, Instant::now());
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
