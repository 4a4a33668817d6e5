//! The ordered stream to one secondary.
//!
//! The sender ships entries in id order from `next`, up to [`PIPELINE`] requests in flight,
//! each a batch of whatever queued up. Replies carry the secondary's contiguous high-water mark;
//! once nothing is in flight, `next` rewinds to just above it. That one rule covers a lost
//! request, an error after storing (the retry is dropped as a duplicate), a restart with an
//! empty log and a long partition: the secondary is caught up from what it holds, in batches.
//! Failures back off exponentially with jitter and never stop, so committed entries reach every
//! secondary in the end, and nothing is kept per message that could leak.

use super::backoff::Backoff;
use crate::state::Master;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::sync::Arc;
use tokio::time::{sleep_until, Instant};

/// Requests in flight per secondary at most.
pub const PIPELINE: usize = 4;
/// Entries that must be waiting before a request is sent while another is still in flight.
///
/// Each request costs both ends a fixed amount of CPU (HTTP/2 frames, syscalls, wake-ups), so on
/// a busy node fewer, larger batches finish sooner than many small ones: while one request is
/// out, new entries collect for the next unless there are enough of them to be worth a
/// request of their own (a long round trip, a burst). An idle stream still sends at once, so
/// a lone append never waits; no timer is involved.
pub const PIPELINE_MIN_ENTRIES: u64 = 32;
/// Entries per request at most.
pub const MAX_BATCH_ENTRIES: usize = 2048;
/// Payload bytes per request at most (one larger entry still goes alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;

pub async fn run(master: Arc<Master>, index: usize) {
    let peer = &master.peers[index];
    let config = &master.config;
    let mut backoff = Backoff::new(config.retry_base_ms, config.retry_max_ms);
    let mut inflight = FuturesUnordered::new();
    // Requests in flight that carry entries (the others only push decisions or ask).
    let mut shipping = 0usize;
    let mut next = master.ledger().follower(index).held + 1;
    // Decided frontier carried by the last request, so new decisions are pushed at once.
    let mut pushed_decided = 0;
    let mut retry_at: Option<Instant> = None;
    let mut failed = false;
    // High-water mark at the last rewind: rewinding twice to the same place without a failure
    // means the secondary is not taking what we send, so the next try waits.
    let mut last_rewind: Option<u64> = None;
    // Failing since the last success: only the first failure of a streak is a warning.
    let mut failing = false;

    loop {
        let (held, known) = {
            let ledger = master.ledger();
            let follower = ledger.follower(index);
            (follower.held, follower.instance.is_some())
        };
        if inflight.is_empty() {
            if known && !failed && held + 1 > next {
                // The secondary already holds more (a restarted master, or its first contact):
                // skip what it has instead of shipping it again.
                next = held + 1;
            }
            if failed || held + 1 < next {
                if !failed && last_rewind == Some(held) && retry_at.is_none() {
                    retry_at = Some(Instant::now() + backoff.next_delay());
                }
                tracing::debug!(secondary = %peer.address, from = held + 1, "resending from the secondary's high-water mark");
                next = held + 1;
                pushed_decided = 0;
                last_rewind = Some(held);
                failed = false;
            }
        }
        if retry_at.is_none_or(|at| at <= Instant::now()) {
            retry_at = None;
            while inflight.len() < PIPELINE {
                if !known {
                    // Until the secondary has answered once, its high-water mark is unknown:
                    // ask first (an empty request), ship after.
                    if inflight.is_empty() {
                        inflight.push(send(
                            &master,
                            index,
                            master.ledger().batch(index, next, 0, 0),
                        ));
                    }
                    break;
                }
                let request = {
                    let ledger = master.ledger();
                    let waiting = (ledger.durable() + 1).saturating_sub(next);
                    if shipping > 0 && waiting < PIPELINE_MIN_ENTRIES {
                        // Decisions and the few entries waiting ride on the next request.
                        break;
                    }
                    ledger.batch(index, next, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES)
                };
                let decided = request.decisions.as_ref().map_or(0, |d| d.decided_upto);
                let Some(last) = request.entries.last().map(|e| e.id) else {
                    if decided > pushed_decided {
                        pushed_decided = decided;
                        inflight.push(send(&master, index, request));
                    }
                    break;
                };
                next = last + 1;
                pushed_decided = pushed_decided.max(decided);
                shipping += 1;
                inflight.push(send(&master, index, request));
            }
        }

        tokio::select! {
            biased;
            _ = master.shutdown.cancelled() => return,
            Some((carried, result)) = inflight.next(), if !inflight.is_empty() => {
                shipping -= usize::from(carried);
                match result {
                Ok(state) => match master.on_reply(index, &state) {
                    Ok(()) => {
                        if master.ledger().follower(index).held >= next.saturating_sub(1) {
                            last_rewind = None;
                        }
                        if failing {
                            tracing::info!(secondary = %peer.address, "replication calls succeed again");
                            failing = false;
                        }
                        backoff.reset();
                    }
                    Err(foreign) => {
                        tracing::warn!(secondary = %peer.address, their_log = %foreign.0, "secondary holds another log; not replicating to it");
                        failed = true;
                        retry_at = Some(Instant::now() + backoff.next_delay());
                    }
                },
                Err(error) => {
                    if !failing {
                        tracing::warn!(secondary = %peer.address, %error, "replication call failed; retrying with backoff");
                        failing = true;
                    } else {
                        tracing::debug!(secondary = %peer.address, %error, "replication call failed again");
                    }
                    master.metrics.retry(&peer.address);
                    master.ledger().on_failure(index, error);
                    failed = true;
                    retry_at = Some(Instant::now() + backoff.next_delay());
                }
            }},
            _ = peer.wake.notified() => {}
            _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
        }
    }
}

/// One replication call with the configured deadline; says whether it carried entries.
async fn send(
    master: &Master,
    index: usize,
    request: ReplicateRequest,
) -> (bool, Result<ReplicaState, String>) {
    let carried = !request.entries.is_empty();
    let result = master.peers[index]
        .call(request, master.config.rpc_timeout_seconds)
        .await
        .map_err(|status| format!("{}: {}", status.code(), status.message()));
    (carried, result)
}
