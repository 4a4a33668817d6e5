//! The ordered stream to one secondary.
//!
//! The sender ships entries in id order from `next` over one long-lived gRPC stream (the
//! `Stream` call, a `Session`), up to [`PIPELINE`] requests in flight, each a batch of
//! whatever queued up; the secondary answers them one by one, in order. Replies carry the
//! secondary's contiguous high-water mark; once nothing is in flight (after any failure the
//! stream is dropped, so nothing is), `next` rewinds to just above it. That one rule covers a
//! lost request, an error after storing (the resent entry is dropped as a duplicate), a restart
//! with an empty log and a long partition: the secondary is caught up from what it holds, in
//! batches. Failures back off exponentially with jitter and never stop, so committed entries
//! reach every secondary in the end, and nothing is kept per message that could leak.
//!
//! A push of decisions alone is not in flight: once the stream has answered, it goes quiet
//! (unanswered, `Session::push_decisions`), and a secondary that cannot take it ends the
//! stream, which is a failure like any other. It leaves after the clients' answers to the
//! appends it decides, in the same busy stretch of the master's thread
//! ([`DECISION_DEFERRALS`]).

use super::backoff::Backoff;
use super::stream::ReplicationStream;
use super::Peer;
use crate::state::Master;
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::collections::VecDeque;
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
/// Times a sender yields before a push of decisions alone.
///
/// tokio runs a yielded task again only once every task already queued has run and the
/// sockets have been polled without blocking; on the master's one thread, that puts the
/// clients' answers to the appends a commit decided ahead of the decisions' push to the
/// secondaries. One deferral is enough for an HTTP answer, written by its connection's task;
/// a gRPC answer takes a turn more (hyper's HTTP/2 server writes it from the connection's task
/// after the call's task), and with one deferral `strace` showed the push still went first.
/// The push never waits for an event: a runtime with a yielded task does not sleep, so it
/// leaves before the master's thread next blocks, and if the next append arrived meanwhile it
/// rides on that request instead of costing a message of its own.
pub const DECISION_DEFERRALS: usize = 2;
/// Entries per request at most.
pub const MAX_BATCH_ENTRIES: usize = 2048;
/// Payload bytes per request at most (one larger entry still goes alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;

pub async fn run(master: Arc<Master>, index: usize) {
    let peer = &master.peers[index];
    let config = &master.config;
    let mut retry = Retry::new(Backoff::new(config.retry_base_ms, config.retry_max_ms));
    // The open stream, if any; dropped on any failure, which empties what was in flight.
    let mut session: Option<Session> = None;
    let mut next = master.ledger().follower(index).held + 1;
    // Decided frontier carried by the last request, so new decisions are pushed at once.
    let mut pushed_decided = 0;
    // High-water mark at the last rewind: rewinding twice to the same place without a failure
    // means the secondary is not taking what we send, so the next try waits.
    let mut last_rewind: Option<u64> = None;
    // This turn's decisions-only push has already waited for the answers
    // (`Filled::DecisionsHeld`).
    let mut deferred = false;

    loop {
        let (held, known) = {
            let ledger = master.ledger();
            let follower = ledger.follower(index);
            (follower.held, follower.instance.is_some())
        };
        if session.as_ref().is_none_or(Session::idle) {
            if known && !retry.failed && held + 1 > next {
                // The secondary already holds more (a restarted master, or its first contact):
                // skip what it has instead of shipping it again.
                next = held + 1;
            }
            if retry.failed || held + 1 < next {
                if !retry.failed && last_rewind == Some(held) && retry.at.is_none() {
                    retry.wait();
                }
                tracing::debug!(secondary = %peer.address, from = held + 1, "resending from the secondary's high-water mark");
                next = held + 1;
                pushed_decided = 0;
                last_rewind = Some(held);
                retry.failed = false;
            }
        }
        if retry.at.is_none_or(|at| at <= Instant::now()) {
            retry.at = None;
            if session.is_none() && due(&master, known, next, pushed_decided) {
                let opened = tokio::select! {
                    _ = master.shutdown.cancelled() => return,
                    opened = Session::open(peer, config.rpc_timeout_seconds) => opened,
                };
                match opened {
                    Ok(opened) => session = Some(opened),
                    Err(error) => {
                        retry.fail(&master, index, &error);
                        continue;
                    }
                }
            }
            if let Some(open) = session.as_mut() {
                let filled = fill(
                    &master,
                    index,
                    open,
                    known,
                    &mut next,
                    &mut pushed_decided,
                    !deferred,
                );
                deferred = false;
                match filled {
                    Ok(Filled::All) => {}
                    Ok(Filled::DecisionsHeld) => {
                        // All there is to send is decisions, which nobody waits for, while the
                        // answers to the appends they decide were woken by the same commit:
                        // those go out first (see DECISION_DEFERRALS), then `fill` pushes them.
                        // With entries waiting, the request carries clients' entries too, and
                        // goes at once.
                        deferred = true;
                        for _ in 0..DECISION_DEFERRALS {
                            tokio::task::yield_now().await;
                        }
                        continue;
                    }
                    Err(error) => {
                        session = None;
                        retry.fail(&master, index, &error);
                        continue;
                    }
                }
            }
        }

        let waiting = session.as_ref().is_some_and(|s| !s.idle());
        let late_at = session
            .as_ref()
            .map_or_else(Instant::now, |s| s.progress + config.rpc_timeout_seconds);
        tokio::select! {
            biased;
            _ = master.shutdown.cancelled() => return,
            reply = next_reply(&mut session, waiting), if session.is_some() => match reply {
                Ok(state) => match master.on_reply(index, &state) {
                    Ok(()) => {
                        if master.ledger().follower(index).held >= next.saturating_sub(1) {
                            last_rewind = None;
                        }
                        retry.succeeded(&peer.address);
                    }
                    Err(foreign) => {
                        tracing::warn!(secondary = %peer.address, their_log = %foreign.0, "secondary holds another log; not replicating to it");
                        session = None;
                        retry.failed = true;
                        retry.wait();
                    }
                },
                Err(error) => {
                    session = None;
                    retry.fail(&master, index, &error);
                }
            },
            _ = sleep_until(late_at), if waiting => {
                session = None;
                let error = format!("no answer within RPC_TIMEOUT_SECONDS ({:?})", config.rpc_timeout_seconds);
                retry.fail(&master, index, &error);
            }
            _ = peer.wake.notified() => {}
            _ = sleep_until(retry.at.unwrap_or_else(Instant::now)), if retry.at.is_some() => {}
        }
    }
}

/// What [`fill`] left unsent.
enum Filled {
    /// Nothing: what is due was sent, or rides on the next request.
    All,
    /// A push of decisions alone, which `hold_decisions` asked to keep back.
    DecisionsHeld,
}

/// Sends what is due on the open stream: the first question to a secondary not heard from
/// yet, then batches of entries (see [`PIPELINE_MIN_ENTRIES`]) or a decisions-only push, which
/// `hold_decisions` keeps back (nothing else is sent then).
fn fill(
    master: &Master,
    index: usize,
    session: &mut Session,
    known: bool,
    next: &mut u64,
    pushed_decided: &mut u64,
    hold_decisions: bool,
) -> Result<Filled, String> {
    while session.in_flight.len() < PIPELINE {
        if !known {
            // Until the secondary has answered once, its high-water mark is unknown: ask first
            // (an empty request), ship after.
            if session.idle() {
                session.send(master.ledger().batch(index, *next, 0, 0))?;
            }
            return Ok(Filled::All);
        }
        let request = {
            let ledger = master.ledger();
            let waiting = (ledger.written() + 1).saturating_sub(*next);
            if session.shipping() > 0 && waiting < PIPELINE_MIN_ENTRIES {
                // Decisions and the few entries waiting ride on the next request.
                return Ok(Filled::All);
            }
            ledger.batch(index, *next, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES)
        };
        let decided = request.decisions.as_ref().map_or(0, |d| d.decided_upto);
        let Some(last) = request.entries.last().map(|e| e.id) else {
            if decided > *pushed_decided {
                if hold_decisions {
                    return Ok(Filled::DecisionsHeld);
                }
                *pushed_decided = decided;
                session.push_decisions(request)?;
            }
            return Ok(Filled::All);
        };
        *next = last + 1;
        *pushed_decided = (*pushed_decided).max(decided);
        session.send(request)?;
    }
    Ok(Filled::All)
}

/// Whether anything waits to be sent: then a stream is worth opening (an idle secondary gets
/// none, so one that is down costs nothing but its heartbeats).
fn due(master: &Master, known: bool, next: u64, pushed_decided: u64) -> bool {
    let ledger = master.ledger();
    !known || ledger.written() >= next || ledger.log().decided() > pushed_decided
}

/// Whether the stream failed, when to try again, and the backoff between tries.
struct Retry {
    backoff: Backoff,
    /// No request before this.
    at: Option<Instant>,
    /// Failed since the last rewind: the next one resends from the high-water mark.
    failed: bool,
    /// Failing since the last success: only the first failure of a streak is a warning.
    failing: bool,
}

impl Retry {
    fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            at: None,
            failed: false,
            failing: false,
        }
    }

    /// The next try waits for the backoff.
    fn wait(&mut self) {
        self.at = Some(Instant::now() + self.backoff.next_delay());
    }

    /// A failed call or stream: logged once per streak, counted, recorded for the health view,
    /// and retried after the backoff from the secondary's high-water mark.
    fn fail(&mut self, master: &Master, index: usize, error: &str) {
        let address = &master.peers[index].address;
        if !self.failing {
            tracing::warn!(secondary = %address, %error, "replication failed; retrying with backoff");
            self.failing = true;
        } else {
            tracing::debug!(secondary = %address, %error, "replication failed again");
        }
        master.metrics.retry(address);
        master.ledger().on_failure(index, error.to_owned());
        self.failed = true;
        self.wait();
    }

    fn succeeded(&mut self, address: &str) {
        if self.failing {
            tracing::info!(secondary = %address, "replication calls succeed again");
            self.failing = false;
        }
        self.backoff.reset();
    }
}

/// The next answer on the open stream. Polled whenever a stream is open, so that the stream's
/// connection is driven: requests queued by [`Session::send`] are written, the secondary's
/// frames are answered, and a reply nobody waits for is a broken stream.
async fn next_reply(session: &mut Option<Session>, waiting: bool) -> Result<ReplicaState, String> {
    let Some(open) = session.as_mut() else {
        return std::future::pending().await;
    };
    let reply = open.stream.reply(waiting).await?;
    if open.in_flight.pop_front().is_none() {
        // A secondary from before quiet pushes answers them all: one extra answer per quiet
        // push at most. Its answers are cumulative states like any other, so they are still
        // good (one may have been taken for the answer to a later request, whose own answer
        // is then the extra one); it is sent no more quiet pushes.
        if open.quiet_answered >= open.quiet_sent {
            return Err("the secondary answered a request it was not sent".to_owned());
        }
        if open.quiet_answered == 0 {
            tracing::info!("the secondary answers quiet decision pushes; sending answered ones");
        }
        open.quiet_answered += 1;
    }
    open.answered = true;
    open.progress = Instant::now();
    Ok(reply)
}

/// One open `Stream` call to a secondary.
struct Session {
    stream: ReplicationStream,
    /// Per request sent and not yet answered, in order: whether it carried entries.
    in_flight: VecDeque<bool>,
    /// Last time the stream moved (a request into an idle stream, or an answer): the answer to
    /// the oldest request is late `RPC_TIMEOUT_SECONDS` after it.
    progress: Instant,
    /// The secondary has answered on this stream, so we know what it holds and has decided.
    answered: bool,
    /// Quiet pushes sent on this stream (`ReplicateRequest.quiet`).
    quiet_sent: u64,
    /// Answers beyond the requests that wanted one: only a secondary that answers quiet pushes
    /// gives any, and once it has, it is sent no more of them.
    quiet_answered: u64,
}

impl Session {
    /// Opens the stream; a secondary that does not answer within `timeout` (hung, stopped)
    /// counts as a failure like any other.
    async fn open(peer: &Peer, timeout: std::time::Duration) -> Result<Self, String> {
        let stream = tokio::time::timeout(timeout, peer.open_stream())
            .await
            .map_err(|_| "no answer to opening the replication stream".to_owned())??;
        Ok(Self {
            stream,
            in_flight: VecDeque::with_capacity(PIPELINE),
            progress: Instant::now(),
            answered: false,
            quiet_sent: 0,
            quiet_answered: 0,
        })
    }

    fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Requests in flight that carry entries (the others only push decisions or ask).
    fn shipping(&self) -> usize {
        self.in_flight.iter().filter(|carried| **carried).count()
    }

    fn send(&mut self, request: ReplicateRequest) -> Result<(), String> {
        if self.idle() {
            self.progress = Instant::now();
        }
        self.stream.send(&request)?;
        self.in_flight.push_back(!request.entries.is_empty());
        Ok(())
    }

    /// Pushes decisions (a request without entries). Once the secondary has answered on this
    /// stream, unanswered: at one client, a commit's push and its answer were two of the
    /// master's five writes and reads per append. The secondary ends the stream if it cannot
    /// take them, so nothing is lost by not hearing back; until then, the next answered
    /// request reports its frontier as before.
    fn push_decisions(&mut self, mut request: ReplicateRequest) -> Result<(), String> {
        if !self.answered || self.quiet_answered > 0 {
            return self.send(request);
        }
        request.quiet = true;
        self.stream.send(&request)?;
        self.quiet_sent += 1;
        Ok(())
    }
}
