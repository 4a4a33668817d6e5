//! The master's decisions, without I/O: the [`Ledger`] (ids, acknowledgements, commit and
//! abort), each secondary's replication [`Link`] (what to ship, what is in flight, backoff)
//! and the health and quorum policy ([`health`]).
//!
//! [`Core`] takes events as method calls (an append, a reply, the journal's progress, a link
//! that failed, time passing) and answers with [`Effect`]s for the drivers to carry out (make a
//! record durable, answer a client, wake a link), in the manner of raft-rs's `RawNode` and
//! openraft's `Engine`. The drivers (`crate::state`, `crate::replication`, `crate::journal`,
//! `crate::deadlines`, `crate::pulse`) hold the sockets, files, clocks and channels, and
//! nothing here waits for them;
//! so everything here is tested as plain values, the model test included
//! (`master/tests/replication_model.rs`).

pub mod backoff;
pub mod health;
pub mod ledger;
pub mod link;

use backoff::Backoff;
use bytes::Bytes;
use health::{Stalls, Status, Thresholds};
pub use ledger::{Follower, ForeignLog, Ledger, Outcome, Progress};
use link::{Link, Poll, ReplyError};
use replog_node::log::Log;
use replog_node::storage::segments::Stored;
use replog_node::storage::Record;
use replog_proto::v1::ReplicaState;
use std::time::{Duration, Instant};

/// Something the drivers must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Make a record durable (`DATA_DIR`); the journal reports back with
    /// [`Core::on_written`] and [`Core::on_persisted`].
    Persist(Record),
    /// Tell the client of append `id` what is known of it.
    Answer { id: u64, progress: Progress },
    /// Wake the driver of link `index` (`None`: every link): it has something to send.
    Wake(Option<usize>),
    /// An append with a deadline arrived while none was pending: the timer must look again.
    Timer,
}

/// Whether the master may take appends.
#[derive(Debug, Clone)]
pub struct Quorum {
    pub reachable: usize,
    pub nodes: usize,
    /// Why appends are refused, if they are.
    pub refusal: Option<String>,
}

/// How long an aborted append's client waits for a secondary to confirm the tombstone when
/// `REPLICATION_TIMEOUT_SECONDS` is 0. Nothing is aborted then (no append has a deadline), so
/// this only keeps the bound defined.
pub const CONFIRM_WITHOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an aborted append's client waits for a secondary to confirm its tombstone, for
/// a `REPLICATION_TIMEOUT_SECONDS` of `timeout`: as long again as the append could wait.
pub fn confirm_within(timeout: Duration) -> Duration {
    if timeout.is_zero() {
        CONFIRM_WITHOUT_TIMEOUT
    } else {
        timeout
    }
}

/// Checks `w` against a cluster of `nodes` (the master included): 1..=nodes, default all.
pub fn write_concern(w: Option<u64>, nodes: usize) -> Result<usize, WriteConcernError> {
    match w {
        None => Ok(nodes),
        Some(w) if (1..=nodes as u64).contains(&w) => Ok(w as usize),
        Some(w) => Err(WriteConcernError { w, nodes }),
    }
}

/// What the master's settings say about its decisions.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The secondaries' addresses, in the order of their indexes.
    pub secondaries: Vec<String>,
    pub thresholds: Thresholds,
    /// How long a reply on a stream may take (`RPC_TIMEOUT_SECONDS`).
    pub rpc_timeout: Duration,
    /// How long an idle stream stays silent before a heartbeat (`HEARTBEAT_INTERVAL_MS`).
    pub heartbeat_interval: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long an append may wait for its write concern (`REPLICATION_TIMEOUT_SECONDS`; 0:
    /// forever).
    pub replication_timeout: Duration,
    /// Failover mode: the decided frontier moves only up to what a majority holds, and a 500
    /// waits for majority - 1 secondaries ([`Ledger::with_quorum_decisions`]).
    pub quorum_decisions: bool,
    /// With `DATA_DIR`: the bytes of payloads the log keeps cached (`CACHE_BYTES`); `None`
    /// keeps every one (a log in memory).
    pub cache_bytes: Option<usize>,
}

impl Settings {
    /// See [`confirm_within`].
    pub fn confirm_within(&self) -> Duration {
        confirm_within(self.replication_timeout)
    }

    /// Nodes in the cluster: the master and its secondaries.
    pub fn nodes(&self) -> usize {
        self.secondaries.len() + 1
    }
}

/// The master's decision state.
#[derive(Debug)]
pub struct Core {
    settings: Settings,
    ledger: Ledger,
    links: Vec<Link>,
    /// When the master itself was not running, so that its own stall is not taken for the
    /// secondaries' silence.
    stalls: Stalls,
    /// When the master started: a secondary never heard from is silent since then.
    started: Instant,
    /// Why no append is taken while the log is recovered from the secondaries; `None` once
    /// it serves.
    recovering: Option<String>,
}

impl Core {
    /// A core over `log`; see [`Ledger::new`] for `journal` and `starts`.
    pub fn new(
        settings: Settings,
        log: Log,
        journal: bool,
        starts: &[(u64, u64)],
        now: Instant,
    ) -> Self {
        let ledger = new_ledger(&settings, log, journal, starts);
        let mut core = Self {
            links: Vec::new(),
            ledger,
            stalls: Stalls::default(),
            started: now,
            recovering: None,
            settings,
        };
        core.links = core.new_links();
        core
    }

    fn new_links(&self) -> Vec<Link> {
        let s = &self.settings;
        self.ledger
            .followers()
            .iter()
            .map(|f| {
                Link::new(
                    f.held,
                    Backoff::new(s.retry_base, s.retry_max),
                    s.rpc_timeout,
                    s.heartbeat_interval,
                )
            })
            .collect()
    }

    /// Starts over with `log` (recovery's result, or an empty log while the file is older
    /// than the cluster's): a new ledger and new links.
    pub fn install(&mut self, log: Log, journal: bool, starts: &[(u64, u64)]) {
        let frozen = self.ledger.frozen();
        self.ledger = new_ledger(&self.settings, log, journal, starts);
        if frozen {
            self.ledger.freeze();
        }
        self.links = self.new_links();
        self.ledger.push_effect(Effect::Wake(None));
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn link(&self, index: usize) -> &Link {
        &self.links[index]
    }

    /// What the steps since the last call asked to be done, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.ledger.take_effects()
    }

    /// [`Core::take_effects`] without giving up the buffer: the drivers' path.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.ledger.drain_effects()
    }

    /// This master may no longer decide (its lease lapsed, or it was deposed): see
    /// [`Ledger::freeze`]. Appends are refused from now on.
    pub fn freeze(&mut self) {
        self.ledger.freeze();
    }

    pub fn frozen(&self) -> bool {
        self.ledger.frozen()
    }

    /// Sets or clears why the master is read-only while it recovers its log.
    pub fn set_recovering(&mut self, reason: Option<String>) {
        self.recovering = reason;
    }

    pub fn recovering(&self) -> Option<&str> {
        self.recovering.as_deref()
    }

    /// See [`write_concern`].
    pub fn write_concern(&self, w: Option<u64>) -> Result<usize, WriteConcernError> {
        write_concern(w, self.settings.nodes())
    }

    /// Whether an append may be taken at `now`: see [`Core::quorum`].
    pub fn admit(&mut self, now: Instant) -> Result<(), Refused> {
        match self.quorum(now).refusal {
            Some(reason) => Err(Refused(reason)),
            None => Ok(()),
        }
    }

    /// Takes an append ([`Core::admit`] said yes): its id. See [`Ledger::append`].
    pub fn append(&mut self, message: Bytes, w: usize, deadline: Option<Instant>) -> u64 {
        self.ledger.append(message, w, deadline)
    }

    /// The journal wrote entries up to `upto` (not synced yet): they may be shipped.
    pub fn on_written(&mut self, upto: u64) {
        self.ledger.on_written(upto);
    }

    /// The journal made entries up to `entries_upto` and the tombstones `tombstones` durable.
    pub fn on_persisted(&mut self, entries_upto: Option<u64>, tombstones: &[u64]) {
        self.ledger.on_persisted(entries_upto, tombstones);
    }

    /// Time passed: aborts the appends whose deadline is over, and tells the clients of aborts
    /// no secondary confirmed in [`Settings::confirm_within`] that the outcome is unknown
    /// (forgetting those nobody `listened` to any more). Returns the ids aborted and the ids
    /// told "unknown".
    pub fn tick(&mut self, now: Instant, listened: impl Fn(u64) -> bool) -> (Vec<u64>, Vec<u64>) {
        let within = self.settings.confirm_within();
        let aborted = self.ledger.abort_expired(now, within);
        let unknown = self.ledger.expire_unconfirmed(now, listened);
        (aborted, unknown)
    }

    /// When [`Core::tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.ledger.next_deadline()
    }

    /// A reply from secondary `index` on its link.
    fn on_reply(
        &mut self,
        index: usize,
        state: &ReplicaState,
        now: Instant,
    ) -> Result<(), ForeignLog> {
        let instance = self.ledger.follower(index).instance;
        self.ledger.on_reply(index, state, now)?;
        if instance.is_some_and(|i| i != state.instance) {
            // A restarted secondary: its link starts again from what it holds.
            self.ledger.push_effect(Effect::Wake(Some(index)));
        }
        Ok(())
    }

    /// What link `index`'s driver should do next.
    pub fn poll_link(&mut self, index: usize, now: Instant, hold_decisions: bool) -> Poll {
        self.links[index].poll(&self.ledger, index, now, hold_decisions)
    }

    /// Link `index`'s driver read the cold entries its [`Poll::Read`] from `from` asked for.
    pub fn link_read(&mut self, index: usize, from: u64, read: Vec<Stored>) {
        self.links[index].read_done(from, read);
    }

    /// Link `index`'s driver opened its stream.
    pub fn link_opened(&mut self, index: usize, now: Instant) {
        self.links[index].opened(now);
    }

    /// A reply on link `index`'s stream. A refused one closes the stream (the driver drops
    /// it) and waits for the backoff. `Ok(true)` when calls succeed again after failures.
    pub fn link_reply(
        &mut self,
        index: usize,
        state: &ReplicaState,
        now: Instant,
    ) -> Result<bool, ReplyError> {
        if let Err(error) = self.links[index].answered(now) {
            self.link_failed(index, &error.to_string(), now);
            return Err(error);
        }
        match self.on_reply(index, state, now) {
            Ok(()) => {
                let held = self.ledger.follower(index).held;
                Ok(self.links[index].took(held))
            }
            Err(ForeignLog(theirs)) => {
                self.links[index].failed(now);
                Err(ReplyError::ForeignLog(theirs))
            }
        }
    }

    /// Link `index`'s stream showed the secondary alive without a reply (a pong while answers
    /// are owed): contact for the health view, nothing more.
    pub fn link_alive(&mut self, index: usize, now: Instant) {
        self.ledger.on_alive(index, now);
    }

    /// Link `index`'s stream failed: recorded for the health view; the link closes and backs
    /// off. Returns whether this is the first failure of a streak.
    pub fn link_failed(&mut self, index: usize, error: &str, now: Instant) -> bool {
        self.ledger.on_failure(index, error.to_owned());
        self.links[index].failed(now)
    }

    /// A call to secondary `index` outside replication failed (recovery's questions).
    pub fn contact_failed(&mut self, index: usize, error: String) {
        self.ledger.on_failure(index, error);
    }

    /// The master runs at `now` (its pulse); see [`Stalls`].
    pub fn pulse(&mut self, now: Instant) {
        self.stalls.observe(now, self.settings.thresholds);
    }

    /// The pulse stopped: gaps between health decisions prove nothing any more.
    pub fn unpulsed(&mut self) {
        self.stalls.unpulsed();
    }

    /// The health of secondary `index` as of `now`: silence counts only while the master
    /// itself ran.
    pub fn status(&mut self, index: usize, now: Instant) -> Status {
        let last = self.ledger.follower(index).last_contact;
        self.stalls
            .status(last.unwrap_or(self.started), now, self.settings.thresholds)
    }

    /// The lowest id retention must keep: the next id of each secondary the master hears from
    /// (healthy or suspected), so a secondary that is up never loses the entries it is
    /// catching up on to retention. One that is unhealthy (down, cut off) holds nothing back:
    /// a dead node must not fill the master's disk; when it returns below the first retained
    /// id, it is re-seeded. `u64::MAX` when no secondary counts.
    pub fn retention_floor(&mut self, now: Instant) -> u64 {
        let mut floor = u64::MAX;
        for index in 0..self.links.len() {
            let heard = self.ledger.follower(index).last_contact.is_some();
            if heard && self.status(index, now) != Status::Unhealthy {
                floor = floor.min(self.ledger.follower(index).held.saturating_add(1));
            }
        }
        floor
    }

    /// Retention removed the segments of the ids below `first_id`.
    pub fn forget_before(&mut self, first_id: u64) {
        self.ledger.forget_before(first_id);
    }

    /// A majority of the n+1 nodes must be reachable, no secondary may hold another log, the
    /// log must be recovered, and the master may still decide (not frozen).
    pub fn quorum(&mut self, now: Instant) -> Quorum {
        let nodes = self.settings.nodes();
        let mut reachable = 1;
        let mut refusal = if self.ledger.frozen() {
            Some(NO_LONGER_MASTER.to_owned())
        } else {
            self.recovering.clone()
        };
        for index in 0..self.links.len() {
            let follower = self.ledger.follower(index);
            if let Some(foreign) = &follower.foreign_log {
                if self.ledger.frozen() {
                    continue;
                }
                refusal = Some(format!(
                    "secondary {} holds log {foreign}, not this master's log {}: restart the master with its data, or wipe that secondary",
                    self.settings.secondaries[index],
                    self.ledger.log().log_id()
                ));
            } else if self.status(index, now) != Status::Unhealthy {
                reachable += 1;
            }
        }
        if refusal.is_none() && reachable * 2 <= nodes {
            refusal = Some(format!(
                "no quorum: {reachable} of {nodes} nodes reachable; the master is read-only"
            ));
        }
        Quorum {
            reachable,
            nodes,
            refusal,
        }
    }
}

/// Why a frozen master refuses appends.
pub const NO_LONGER_MASTER: &str = "this node is no longer the master (its lease lapsed)";

/// The ledger `settings` ask for.
fn new_ledger(settings: &Settings, log: Log, journal: bool, starts: &[(u64, u64)]) -> Ledger {
    let secondaries = settings.secondaries.len();
    let ledger = if settings.quorum_decisions {
        Ledger::with_quorum_decisions(log, secondaries, journal, starts)
    } else {
        Ledger::new(log, secondaries, journal, starts)
    };
    match (settings.cache_bytes, journal) {
        (Some(budget), true) => ledger.with_cache(budget),
        _ => ledger,
    }
}

/// A `w` outside 1..=n+1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`w` must be between 1 and {nodes} (the nodes in the cluster), got {w}")]
pub struct WriteConcernError {
    pub w: u64,
    pub nodes: usize,
}

/// The master takes no appends now, and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use replog_node::log::new_log_id;
    use replog_proto::v1::ReplicateRequest;

    fn settings() -> Settings {
        Settings {
            secondaries: vec!["s1:1".into(), "s2:1".into()],
            thresholds: Thresholds {
                suspect_after: Duration::from_secs(1),
                unhealthy_after: Duration::from_secs(4),
            },
            rpc_timeout: Duration::from_secs(30),
            heartbeat_interval: HEARTBEAT,
            retry_base: Duration::from_millis(10),
            retry_max: Duration::from_millis(100),
            replication_timeout: Duration::from_secs(10),
            quorum_decisions: false,
            cache_bytes: None,
        }
    }

    const HEARTBEAT: Duration = Duration::from_millis(500);

    /// The first request link `index` sends at or after `now` (opening its stream when told
    /// to, waiting out a backoff or the heartbeat interval): when it left, and the request.
    fn next_request(c: &mut Core, index: usize, now: Instant) -> (Instant, ReplicateRequest) {
        let mut at = now;
        loop {
            match c.poll_link(index, at, false) {
                Poll::Open => c.link_opened(index, at),
                Poll::Send(mut requests) if !requests.is_empty() => {
                    return (at, requests.remove(0));
                }
                _ => {
                    let wait = c.link(index).wait();
                    at = [wait.retry_at, wait.heartbeat_at]
                        .into_iter()
                        .flatten()
                        .max()
                        .expect("a moment to look again")
                        .max(at);
                }
            }
        }
    }

    /// Secondary `index` answers `state` to its link's next request at or after `now`.
    fn hear(
        c: &mut Core,
        index: usize,
        state: &ReplicaState,
        now: Instant,
    ) -> Result<bool, ReplyError> {
        let (at, _) = next_request(c, index, now);
        c.link_reply(index, state, at)
    }

    fn core(now: Instant) -> Core {
        Core::new(settings(), Log::new(new_log_id()), false, &[(1, 0)], now)
    }

    fn state(core: &Core, instance: u64, held: u64) -> ReplicaState {
        ReplicaState {
            log_id: core.ledger().log().log_id().to_owned(),
            instance,
            held,
            decided: 0,
            master_instance: 1,
            last_term: 0,
            rejoining: false,
        }
    }

    #[test]
    fn the_timer_is_woken_by_the_first_deadline_and_the_links_by_every_append() {
        let now = Instant::now();
        let mut c = core(now);
        c.append(Bytes::from("a"), 3, Some(now));
        let effects = c.take_effects();
        assert!(effects.contains(&Effect::Timer), "{effects:?}");
        assert!(effects.contains(&Effect::Wake(None)), "{effects:?}");
        c.append(Bytes::from("b"), 3, Some(now));
        let effects = c.take_effects();
        assert!(
            !effects.contains(&Effect::Timer),
            "already pending: {effects:?}"
        );
        assert!(effects.contains(&Effect::Wake(None)), "{effects:?}");
    }

    #[test]
    fn the_quorum_needs_a_majority_heard_and_no_foreign_log() {
        let now = Instant::now();
        let mut c = core(now);
        assert!(c.admit(now).is_ok(), "silent for less than UNHEALTHY_AFTER");
        let later = now + Duration::from_secs(5);
        let refused = c.admit(later).expect_err("both unhealthy");
        assert!(refused.0.contains("no quorum: 1 of 3"), "{refused}");
        let heard = state(&c, 7, 0);
        hear(&mut c, 0, &heard, later).expect("same log");
        assert!(c.admit(later).is_ok(), "2 of 3");
        let foreign = ReplicaState {
            log_id: "another".into(),
            ..state(&c, 8, 0)
        };
        assert_eq!(
            hear(&mut c, 1, &foreign, later),
            Err(ReplyError::ForeignLog("another".into()))
        );
        let refused = c.admit(later).expect_err("a foreign log");
        assert!(refused.0.contains("s2:1 holds log another"), "{refused}");
        c.set_recovering(Some("recovering".into()));
        let back = state(&c, 8, 0);
        hear(&mut c, 1, &back, later).expect("its own log again");
        assert_eq!(c.admit(later), Err(Refused("recovering".into())));
    }

    #[test]
    fn retention_keeps_what_a_secondary_it_hears_needs_and_reseeds_one_behind() {
        let now = Instant::now();
        let mut c = core(now);
        for text in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
            c.append(Bytes::from(text), 1, None);
        }
        assert_eq!(c.ledger().log().decided(), 10);
        assert_eq!(c.retention_floor(now), u64::MAX, "nobody heard yet");
        let s1 = state(&c, 7, 4);
        hear(&mut c, 0, &s1, now).expect("same log");
        assert_eq!(c.retention_floor(now), 5, "s1 needs 5 on");
        let later = now + Duration::from_secs(5);
        assert_eq!(
            c.retention_floor(later),
            u64::MAX,
            "an unhealthy one holds nothing back"
        );
        c.forget_before(8);
        let request = c.ledger().batch(1, 3, 100, usize::MAX);
        assert_eq!(request.first_id, 8);
        let ids: Vec<u64> = request.entries.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            [8, 9, 10],
            "from the first retained id, which re-seeds it"
        );
        let (_, ask) = next_request(&mut c, 1, later);
        assert_eq!(ask.first_id, 8, "the first question names it too");
    }

    #[test]
    fn a_restarted_secondary_wakes_its_link_only() {
        let now = Instant::now();
        let mut c = core(now);
        let first = state(&c, 1, 0);
        hear(&mut c, 1, &first, now).expect("same log");
        c.take_effects();
        // The next heartbeat's answer comes from a new instance.
        let restarted = state(&c, 2, 0);
        hear(&mut c, 1, &restarted, now).expect("same log");
        assert_eq!(c.take_effects(), vec![Effect::Wake(Some(1))]);
    }

    #[test]
    fn answers_come_as_effects_and_the_tick_aborts() {
        let now = Instant::now();
        let mut c = core(now);
        let committed = c.append(Bytes::from("a"), 1, None);
        let aborted = c.append(Bytes::from("b"), 2, Some(now));
        let answers: Vec<_> = c
            .take_effects()
            .into_iter()
            .filter(|e| matches!(e, Effect::Answer { .. }))
            .collect();
        assert_eq!(
            answers,
            vec![Effect::Answer {
                id: committed,
                progress: Progress::Decided(Outcome::Committed)
            }]
        );
        assert_eq!(c.tick(now, |_| true), (vec![aborted], vec![]));
        let later = now + c.settings().confirm_within();
        assert_eq!(c.tick(later, |_| true), (vec![], vec![aborted]));
        assert!(c.take_effects().contains(&Effect::Answer {
            id: aborted,
            progress: Progress::AbortUnconfirmed
        }));
    }

    #[test]
    fn a_frozen_core_refuses_appends_and_stays_frozen_over_a_new_log() {
        let now = Instant::now();
        let mut c = core(now);
        c.freeze();
        assert_eq!(c.admit(now), Err(Refused(NO_LONGER_MASTER.into())));
        assert!(c.quorum(now).refusal.is_some());
        c.install(Log::new(new_log_id()), false, &[(2, 0)]);
        assert!(c.frozen());
        assert!(c.admit(now).is_err());
    }

    #[test]
    fn a_write_concern_beyond_the_cluster_is_refused() {
        let c = core(Instant::now());
        assert_eq!(c.write_concern(None), Ok(3));
        assert_eq!(c.write_concern(Some(1)), Ok(1));
        assert_eq!(
            c.write_concern(Some(4)),
            Err(WriteConcernError { w: 4, nodes: 3 })
        );
        assert!(c.write_concern(Some(0)).is_err());
    }
}
