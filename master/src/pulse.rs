//! The master's pulse, and the secondaries' health in the log.
//!
//! One task notes, every [`Thresholds::pulse`], that the master runs, so that a stall of the
//! master itself is seen as one ([`crate::core::health::Stalls`]). At each beat it also looks at
//! every secondary's health and logs each change once: health changes with time passing as much
//! as with what the links hear (a secondary that stopped answering turns suspect, then
//! unhealthy, with nothing arriving), so it is told where time is watched.
//!
//! [`Thresholds::pulse`]: crate::core::health::Thresholds::pulse

use crate::core::health::Status;
use crate::state::Master;
use replog_node::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Instant;
use tokio::time::MissedTickBehavior;

/// Runs the pulse until `shutdown`.
pub async fn run(master: Arc<Master>, shutdown: Shutdown) {
    let (every, secondaries) = master.read(|core| {
        let settings = core.settings();
        (settings.thresholds.pulse(), settings.secondaries.clone())
    });
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut told: Vec<Option<Status>> = vec![None; secondaries.len()];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let seen: Vec<(Status, u64)> = master.update(|core| {
            let now = Instant::now();
            core.pulse(now);
            (0..secondaries.len())
                .map(|index| (core.status(index, now), core.ledger().follower(index).held))
                .collect()
        });
        for ((address, told), (status, held)) in secondaries.iter().zip(&mut told).zip(seen) {
            if *told == Some(status) {
                continue;
            }
            match status {
                Status::Healthy => {
                    tracing::info!(secondary = %address, held, "secondary is healthy")
                }
                _ => {
                    tracing::warn!(secondary = %address, ?status, held, "secondary health changed")
                }
            }
            *told = Some(status);
        }
    }
    // Without the pulse, gaps between health decisions prove nothing any more.
    master.update(|core| core.unpulsed());
}
