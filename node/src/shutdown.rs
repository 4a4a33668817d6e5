//! One shutdown path: SIGTERM or Ctrl-C cancels a token, and a node stops in order from there.
//!
//! A node that answers waiting clients "shutting down" the moment it hears SIGTERM tells them
//! something false when it had already taken their appends: they may commit all the same. So
//! the stop has phases ([`Phases`]): first the node takes no new work (new appends are refused,
//! which is true: nothing of theirs is appended), while replication and the journal keep
//! running so that waiting appends get their real decision; when the grace period
//! (`SHUTDOWN_GRACE_SECONDS`) ends, what still waits is answered "unknown"; only then does
//! everything stop.

use crate::config::seconds;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use tokio_util::sync::CancellationToken as Shutdown;

/// How long the answers given at the end of the grace period get to reach their clients before
/// the node stops whatever connections are still open.
const LINGER: Duration = Duration::from_secs(1);

/// The shutdown settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ShutdownArgs {
    /// After SIGTERM, how long appends already taken may wait for their decision before they
    /// are answered "outcome unknown", in seconds. Keep it below the time the supervisor
    /// allows before SIGKILL (compose's `stop_grace_period`, 10 s).
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value = "5", value_parser = seconds)]
    pub shutdown_grace_seconds: Duration,
}

/// Returns a token that is cancelled on the first SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received, draining");
        trigger.cancel();
    });
    token
}

/// The phases of a node's stop. Each token is cancelled no later than the one before it, so a
/// task watching a later phase never outlives an earlier one's: cancelling `stop` (a fatal
/// error) ends the grace period and the draining at once.
#[derive(Debug, Clone)]
pub struct Phases {
    /// Take no new work: stop accepting connections, refuse new appends, end `Watch` streams.
    pub draining: CancellationToken,
    /// The grace period is over: whatever still waits for a decision is answered "unknown".
    pub grace_over: CancellationToken,
    /// Every task stops: replication, heartbeats, deadlines, the journal.
    pub stop: CancellationToken,
}

impl Phases {
    /// Phases that begin when `signal` is cancelled, with `grace` between draining and the end
    /// of the grace period. `stop` is the caller's to cancel, once the node has drained.
    pub fn after(signal: CancellationToken, grace: Duration) -> Self {
        let stop = CancellationToken::new();
        let grace_over = stop.child_token();
        let draining = grace_over.child_token();
        let phases = Self {
            draining: draining.clone(),
            grace_over: grace_over.clone(),
            stop,
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = signal.cancelled() => draining.cancel(),
                _ = draining.cancelled() => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(grace) => {
                    tracing::info!(?grace, "shutdown grace period over");
                    grace_over.cancel();
                }
                _ = grace_over.cancelled() => {}
            }
        });
        phases
    }

    /// Runs `serving` (a server that stops accepting on `draining` and returns once its
    /// connections have ended) until it returns, or until shortly after the grace period if a
    /// connection outlives it; `None` then. Then cancels `stop`: the node stops only after
    /// every waiting client has had its answer.
    pub async fn drain<F: Future>(&self, serving: F) -> Option<F::Output> {
        let served = tokio::select! {
            served = serving => Some(served),
            _ = async {
                self.grace_over.cancelled().await;
                tokio::time::sleep(LINGER).await;
            } => {
                tracing::warn!("connections still open after the grace period; stopping");
                None
            }
        };
        self.stop.cancel();
        served
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_phases_follow_the_signal_in_order() {
        let signal = CancellationToken::new();
        let grace = Duration::from_millis(200);
        let phases = Phases::after(signal.clone(), grace);
        tokio::task::yield_now().await;
        assert!(!phases.draining.is_cancelled());
        signal.cancel();
        let signalled = std::time::Instant::now();
        phases.draining.cancelled().await;
        assert!(!phases.grace_over.is_cancelled());
        phases.grace_over.cancelled().await;
        assert!(signalled.elapsed() >= grace);
        assert!(!phases.stop.is_cancelled());
        assert_eq!(phases.drain(std::future::ready(1)).await, Some(1));
        assert!(phases.stop.is_cancelled());
    }

    #[tokio::test]
    async fn a_fatal_stop_ends_every_phase() {
        let phases = Phases::after(CancellationToken::new(), Duration::from_secs(60));
        phases.stop.cancel();
        assert!(phases.grace_over.is_cancelled());
        assert!(phases.draining.is_cancelled());
    }
}
