//! One secondary's replication progress: what to ship next, what is in flight, when to try
//! again. Decisions only; the link's driver (`crate::replication::sender`) owns the stream.
//!
//! Entries go out in id order from `next` over one long-lived stream, up to [`PIPELINE`]
//! requests in flight, each a batch of whatever queued up; the secondary answers them one by
//! one, in order. Replies carry the secondary's contiguous high-water mark; once nothing is in
//! flight (after any failure the stream is dropped, so nothing is), `next` rewinds to just
//! above it. That one rule covers a lost request, an error after storing (the resent entry is
//! dropped as a duplicate), a restart with an empty log and a long partition: the secondary is
//! caught up from what it holds, in batches. Failures back off exponentially with jitter and
//! never stop, so committed entries reach every secondary in the end, and nothing is kept per
//! message that could leak.
//!
//! A push of decisions alone is not in flight: once the stream has answered, it goes quiet
//! (`ReplicateRequest.quiet`, unanswered), and a secondary that cannot take it ends the stream,
//! which is a failure like any other.
//!
//! The link always wants its stream open: a closed one opens again once the backoff ends,
//! whether or not anything waits to be sent. An open stream with nothing in flight carries a
//! heartbeat (an empty request that is answered, with the current decisions) once it has been
//! silent for the heartbeat interval since its last answer, and at once on a new stream: its
//! answer is
//! the secondary's identity, instance and high-water mark, so a restart or a secondary that fell
//! behind is noticed while no entries flow, and each answer is contact for the health view.
//! While requests are in flight their answers are contact, and the stream's keep-alive pings
//! (`crate::replication::stream`) are contact too ([`crate::core::Core::link_alive`]), so a
//! secondary that delays its answers still counts as alive.

use super::backoff::Backoff;
use super::ledger::Ledger;
use replog_node::storage::segments::Stored;
use replog_proto::v1::ReplicateRequest;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// What a link's driver should do next.
#[derive(Debug, PartialEq)]
pub enum Poll {
    /// Open a stream, then report [`Link::opened`] or a failure.
    Open,
    /// Send these requests on the open stream, in order (possibly none).
    Send(Vec<ReplicateRequest>),
    /// All there is to send is a push of decisions, which `hold_decisions` kept back.
    DecisionsHeld,
    /// Send `first` (possibly none), then read the next batch, which starts at `from`, an id
    /// only the log's files hold: up to [`MAX_BATCH_ENTRIES`] entries and [`MAX_BATCH_BYTES`]
    /// from there, outside the core's lock (from the files' first retained id if retention
    /// removed `from`); give them to [`Link::read_done`] and poll again. Disk reads never hold
    /// up the core, and a catch-up from the files keeps the pipeline full.
    Read {
        first: Vec<ReplicateRequest>,
        from: u64,
    },
    /// Nothing before [`Link::wait`]'s moments or a wake-up.
    Wait,
}

/// When a link's driver must look again without being woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Requests are in flight: the driver reads replies.
    pub waiting: bool,
    /// The oldest request in flight is late from then on ([`Link::late`]).
    pub late_at: Option<Instant>,
    /// The backoff after a failure ends then.
    pub retry_at: Option<Instant>,
    /// The open stream is idle and its next heartbeat is due then.
    pub heartbeat_at: Option<Instant>,
}

/// Why a reply was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the secondary answered a request it was not sent")]
    Unsolicited,
    #[error("the secondary holds log {0}, not this master's")]
    ForeignLog(String),
}

/// One secondary's progress.
#[derive(Debug)]
pub struct Link {
    /// The next id to ship.
    next: u64,
    /// Decided frontier carried by the last request, so new decisions are pushed at once.
    pushed_decided: u64,
    /// High-water mark at the last rewind: rewinding twice to the same place without a failure
    /// means the secondary is not taking what it is sent, so the next try waits.
    last_rewind: Option<u64>,
    retry: Retry,
    /// The open stream, if any; closed on any failure, which empties what was in flight.
    stream: Option<Stream>,
    /// How long the answer to the oldest request in flight may take (`RPC_TIMEOUT_SECONDS`).
    timeout: Duration,
    /// How long an idle stream stays silent before a heartbeat (`HEARTBEAT_INTERVAL_MS`).
    heartbeat: Duration,
    /// Cold entries the driver read for the next batch, with the id it was asked to read from
    /// ([`Poll::Read`]).
    read: Option<(u64, Vec<Stored>)>,
}

/// One open stream as the link sees it.
#[derive(Debug)]
struct Stream {
    /// Per request sent and not yet answered, in order: whether it carried entries.
    in_flight: VecDeque<bool>,
    /// Last time the stream moved (opened, a request into an idle stream, or an answer): the
    /// answer to the oldest request is late `timeout` after it, and an idle stream's next
    /// heartbeat is due `heartbeat` after it.
    progress: Instant,
    /// The secondary has answered on this stream, so its frontier is known: decision pushes
    /// may go quiet.
    answered: bool,
}

impl Stream {
    fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Requests in flight that carry entries (the others only push decisions or ask).
    fn shipping(&self) -> usize {
        self.in_flight.iter().filter(|carried| **carried).count()
    }

    fn send(&mut self, request: ReplicateRequest, now: Instant, out: &mut Vec<ReplicateRequest>) {
        if self.idle() {
            self.progress = now;
        }
        self.in_flight.push_back(!request.entries.is_empty());
        out.push(request);
    }

    /// When an idle stream's next heartbeat is due: after `heartbeat` of silence since its last
    /// answer, or at once on a stream that has not answered yet (an idle one has not been
    /// asked anything yet, so this is its first question).
    fn heartbeat_at(&self, heartbeat: Duration) -> Instant {
        match self.answered {
            true => self.progress + heartbeat,
            false => self.progress,
        }
    }

    /// Pushes decisions (a request without entries): quiet once the secondary has answered on
    /// this stream, so a commit costs one message to each secondary, not two.
    fn push_decisions(
        &mut self,
        mut request: ReplicateRequest,
        now: Instant,
        out: &mut Vec<ReplicateRequest>,
    ) {
        if !self.answered {
            return self.send(request, now, out);
        }
        request.quiet = true;
        out.push(request);
    }
}

/// Whether the stream failed, when to try again, and the backoff between tries.
#[derive(Debug)]
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
    fn wait(&mut self, now: Instant) {
        self.at = Some(now + self.backoff.next_delay());
    }
}

impl Link {
    /// A link that starts from what the secondary was last known to hold (`held`), waits
    /// `timeout` for an answer and sends a heartbeat on a stream idle for `heartbeat`.
    pub fn new(held: u64, backoff: Backoff, timeout: Duration, heartbeat: Duration) -> Self {
        Self {
            next: held + 1,
            pushed_decided: 0,
            last_rewind: None,
            retry: Retry {
                backoff,
                at: None,
                failed: false,
                failing: false,
            },
            stream: None,
            timeout,
            heartbeat,
            read: None,
        }
    }

    /// The driver read the cold entries a [`Poll::Read`] from `from` asked for; the next poll
    /// ships them if the link still ships from there (a rewind since drops them).
    pub fn read_done(&mut self, from: u64, read: Vec<Stored>) {
        self.read = Some((from, read));
    }

    /// The next id to ship.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Requests in flight on the open stream.
    pub fn in_flight(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.in_flight.len())
    }

    pub fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// What to do next for secondary `index` of `ledger`, as of `now`. With `hold_decisions`,
    /// a push of decisions alone is not sent but reported ([`Poll::DecisionsHeld`]).
    pub fn poll(
        &mut self,
        ledger: &Ledger,
        index: usize,
        now: Instant,
        hold_decisions: bool,
    ) -> Poll {
        let follower = ledger.follower(index);
        let (held, known) = (follower.held, follower.instance.is_some());
        if self.stream.as_ref().is_none_or(Stream::idle) {
            if known && !self.retry.failed && held + 1 > self.next {
                // The secondary already holds more (a restarted master, or its first contact):
                // skip what it has instead of shipping it again.
                self.next = held + 1;
            }
            if self.retry.failed || held + 1 < self.next {
                if !self.retry.failed && self.last_rewind == Some(held) && self.retry.at.is_none() {
                    self.retry.wait(now);
                }
                tracing::debug!(
                    index,
                    from = held + 1,
                    "resending from the secondary's high-water mark"
                );
                self.next = held + 1;
                self.pushed_decided = 0;
                self.last_rewind = Some(held);
                self.retry.failed = false;
            }
        }
        if self.retry.at.is_some_and(|at| at > now) {
            return Poll::Wait;
        }
        self.retry.at = None;
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Open;
        };
        let mut out = Vec::new();
        while stream.in_flight.len() < PIPELINE {
            if !known {
                // Until the secondary has answered once, its high-water mark is unknown: the
                // heartbeat below asks first, entries ship after.
                break;
            }
            let waiting = (ledger.written() + 1).saturating_sub(self.next);
            if stream.shipping() > 0 && waiting < PIPELINE_MIN_ENTRIES {
                // Decisions and the few entries waiting ride on the next request.
                break;
            }
            let request = if ledger.is_cold(self.next) {
                let from = self.next.max(ledger.log().first_id());
                match self.read.take().filter(|(asked, _)| *asked == from) {
                    Some((_, read)) if !read.is_empty() => {
                        ledger.batch_read(index, self.next, read)
                    }
                    // Nothing there after all (the cache moved down to it): as usual.
                    Some(_) => ledger.batch(index, self.next, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES),
                    // What is ready goes out, then the read, outside the lock.
                    None => return Poll::Read { first: out, from },
                }
            } else {
                ledger.batch(index, self.next, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES)
            };
            let decided = request.decisions.as_ref().map_or(0, |d| d.decided_upto);
            let Some(last) = request.entries.last().map(|e| e.id) else {
                if decided > self.pushed_decided {
                    if hold_decisions && out.is_empty() {
                        return Poll::DecisionsHeld;
                    }
                    self.pushed_decided = decided;
                    stream.push_decisions(request, now, &mut out);
                }
                break;
            };
            self.next = last + 1;
            self.pushed_decided = self.pushed_decided.max(decided);
            stream.send(request, now, &mut out);
        }
        if stream.idle() && stream.heartbeat_at(self.heartbeat) <= now {
            // No entries, the current decisions, answered: the first question on a new stream
            // and the heartbeat of an idle one.
            stream.send(ledger.batch(index, self.next, 0, 0), now, &mut out);
        }
        Poll::Send(out)
    }

    /// When the driver must look again without being woken.
    pub fn wait(&self) -> Wait {
        let stream = self.stream.as_ref();
        let waiting = stream.is_some_and(|s| !s.idle());
        Wait {
            waiting,
            late_at: stream
                .filter(|_| waiting)
                .map(|s| s.progress + self.timeout),
            retry_at: self.retry.at,
            // Not before a backoff ends: the link sends nothing until then.
            heartbeat_at: stream.filter(|_| !waiting).map(|s| {
                let at = s.heartbeat_at(self.heartbeat);
                self.retry.at.map_or(at, |retry| at.max(retry))
            }),
        }
    }

    /// Whether the oldest request in flight has waited longer than the timeout at `now`.
    pub fn late(&self, now: Instant) -> bool {
        self.wait().late_at.is_some_and(|at| at <= now)
    }

    /// The driver opened a stream.
    pub fn opened(&mut self, now: Instant) {
        self.stream = Some(Stream {
            in_flight: VecDeque::with_capacity(PIPELINE),
            progress: now,
            answered: false,
        });
    }

    /// A reply arrived on the stream: the answer to the oldest request in flight.
    pub(super) fn answered(&mut self, now: Instant) -> Result<(), ReplyError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(ReplyError::Unsolicited);
        };
        if stream.in_flight.pop_front().is_none() {
            return Err(ReplyError::Unsolicited);
        }
        stream.answered = true;
        stream.progress = now;
        Ok(())
    }

    /// The ledger took the reply; the secondary holds `held`. Returns whether calls succeed
    /// again after a streak of failures.
    pub(super) fn took(&mut self, held: u64) -> bool {
        if held >= self.next.saturating_sub(1) {
            self.last_rewind = None;
        }
        self.retry.backoff.reset();
        std::mem::take(&mut self.retry.failing)
    }

    /// The stream failed (or its reply was refused): it is closed, and the next try waits for
    /// the backoff and resends from the secondary's high-water mark. Returns whether this is
    /// the first failure of a streak.
    pub fn failed(&mut self, now: Instant) -> bool {
        self.stream = None;
        self.retry.failed = true;
        self.retry.wait(now);
        !std::mem::replace(&mut self.retry.failing, true)
    }
}
