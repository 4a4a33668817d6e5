//! The decision log: the master's log, the appends still waiting for acknowledgements, and
//! what each secondary has reported.
//!
//! Assigning an id, counting a cumulative acknowledgement, committing, aborting: each is a
//! short synchronous step that records what must happen outside in [`Effect`]s (a record to
//! make durable, a client to answer, a link to wake), which the caller takes with
//! [`Ledger::take_effects`] and carries out.
//!
//! With `DATA_DIR`, an entry is shipped once it is written to the master's file, while its fsync
//! runs, so the two disks work at the same time; but nothing commits before the master's own
//! copy is synced, whatever `w` says. So a master that loses power keeps every committed id, and
//! the ids it loses were never committed: secondaries drop them when they hear the restarted
//! master (`master_instance` and `starts` in its requests; see the secondary's `replica`
//! module). An abort is decided (tombstone) only once its tombstone is on disk, so a restarted
//! master never commits what it answered 500 for. Its client hears 500 only once a secondary has
//! also reported a decided frontier at or past the id: a master that loses its disk recovers
//! its log from the secondaries ([`crate::recovery`]), and must find the tombstone there.
//! Records are queued in id order, so the file receives them in that order.
//!
//! In failover mode two more rules hold ([`Ledger::with_quorum_decisions`], [`Ledger::freeze`]).
//! The decided frontier, which makes entries visible here and on the secondaries, moves only up
//! to what a majority of the nodes holds, so that nothing shown can be lost with one node: the
//! next master, elected from any majority, holds it. And a 500 waits for a majority (the master
//! and majority - 1 secondaries) to hold the tombstone. A master whose lease lapsed freezes: it
//! decides nothing any more, since another may already be elected.

use super::Effect;
use bytes::Bytes;
use replog_node::log::Log;
use replog_node::storage::segments::{ReadError, Stored};
use replog_node::storage::Record;
use replog_proto::v1::{Decisions, Entry, MasterStart, ReplicaState, ReplicateRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use std::time::Instant;

/// The fate of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted,
}

/// What the client of one append may be told, as it becomes known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing yet.
    Waiting,
    /// Aborted on the master's disk, but no secondary has confirmed the tombstone within the
    /// bound: the client hears "unknown", since a master that lost its disk now would recover
    /// the entry from a secondary that holds it. [`Outcome::Aborted`] follows once a secondary
    /// confirms.
    AbortUnconfirmed,
    Decided(Outcome),
}

/// An append that has not reached its write concern yet.
#[derive(Debug)]
struct Pending {
    /// Secondaries' acknowledgements still needed (w - 1 at the start).
    needed: usize,
    /// The master's own copy is synced to its disk (in memory mode: held). Every commit waits
    /// for it, even when w - 1 secondaries answer first: a restarted master keeps only synced
    /// ids, and a committed id must never be one it could give out again.
    local: bool,
    /// Its deadline passed and its tombstone is on the way to disk: no acknowledgement
    /// commits it any more.
    aborting: bool,
    /// When it is aborted if still pending; `None` waits forever (timeout 0).
    deadline: Option<Instant>,
    /// Set when it starts aborting: until when its client waits for a secondary to confirm
    /// the tombstone before it hears "unknown".
    confirm_by: Option<Instant>,
}

/// An aborted append whose tombstone is on the master's disk but no secondary has reported
/// deciding yet: its client is not told 500 before one has.
#[derive(Debug)]
struct Unconfirmed {
    /// When the client hears "unknown" instead; `None` once it has.
    answer_by: Option<Instant>,
}

/// Who acknowledged: the master's own disk, or a secondary.
#[derive(Debug, Clone, Copy)]
enum Ack {
    Master,
    Secondary,
}

/// What the master knows of one secondary.
#[derive(Debug, Clone, Default)]
pub struct Follower {
    /// Process instance of the secondary that sent the last reply.
    pub instance: Option<u64>,
    /// Contiguous high-water mark of that instance.
    pub held: u64,
    /// The secondary's decided frontier, as last reported.
    pub decided: u64,
    /// The master process whose entries it holds, as last reported.
    pub master_instance: Option<u64>,
    /// Highest id ever acknowledged under this log: counts towards write concerns, never
    /// moves back (an id acknowledged once was held when it counted).
    pub acked: u64,
    pub last_contact: Option<Instant>,
    /// Why the last call failed, until one succeeds.
    pub last_error: Option<String>,
    /// Set while the secondary holds another log identity.
    pub foreign_log: Option<String>,
}

/// Why a reply was not taken as an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the secondary holds log {0}, not the master's")]
pub struct ForeignLog(pub String);

#[derive(Debug)]
pub struct Ledger {
    log: Log,
    pending: BTreeMap<u64, Pending>,
    /// Aborted ids no secondary has confirmed yet.
    unconfirmed: BTreeMap<u64, Unconfirmed>,
    followers: Vec<Follower>,
    /// Every id up to here is synced to the master's disk (in memory mode: held).
    durable: u64,
    /// Every id up to here is written to the master's file, maybe not yet synced, and may be
    /// shipped (in memory mode: held).
    written: u64,
    /// This master process's number; sent in every request (`master_instance`).
    instance: u64,
    /// Every master process's start in this log, this one last: sent to a secondary until it
    /// reports following this process, so it can drop ids a power failure took from us.
    starts: Vec<MasterStart>,
    /// Records go to a file (`DATA_DIR`), which reports back; without one, the log is in
    /// memory only and everything held is durable at once.
    journal: bool,
    /// Failover mode: the decided frontier and the confirmation of aborts wait for a majority
    /// of the nodes (see the module's doc).
    quorum_decisions: bool,
    /// Set once this master may no longer decide (its lease lapsed, or it was deposed): no
    /// commit, abort, confirmation or frontier move happens any more.
    frozen: bool,
    /// With quorum decisions and a journal: the decided frontier last asked to be recorded in
    /// the file ([`Record::Decided`]).
    recorded: u64,
    /// With quorum decisions and a journal: ids this process aborted that a majority is not
    /// known to hold as tombstones yet (not forgotten when their client is). The frontier
    /// recorded in the file stays below them (see [`Ledger::record_frontier`]).
    unsettled: BTreeSet<u64>,
    /// With a journal: the bytes of payloads the log keeps cached; older durable, decided ones
    /// are read back from the files ([`Log::evict`]).
    cache_bytes: usize,
    effects: Vec<Effect>,
}

impl Ledger {
    /// A ledger over `log`. Everything a recovered log holds is durable and decided: an id
    /// without a tombstone on disk was never answered 500 (the tombstone is written first), so
    /// committing it keeps every promise made before the restart.
    ///
    /// `starts` lists every master process's start in this log as `(instance, recovered)`,
    /// this process last (see [`Record::MasterStart`]).
    ///
    /// `journal` says whether records go to a file ([`Effect::Persist`]), which reports back
    /// through [`Ledger::on_written`] and [`Ledger::on_persisted`].
    pub fn new(log: Log, secondaries: usize, journal: bool, starts: &[(u64, u64)]) -> Self {
        Self::build(log, secondaries, journal, starts, false)
    }

    /// Keeps at most `bytes` of payloads cached: the oldest go once durable and decided, and
    /// are read back from the log's files when shipped or shown. Only with a journal (the
    /// files are where they are read back from).
    pub fn with_cache(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// A ledger of failover mode: as [`Ledger::new`], but the decided frontier moves only up
    /// to what a majority holds, and a 500 waits for majority - 1 secondaries to report the
    /// tombstone decided. The recovered log is not taken as decided: it stays decided up to
    /// `log.decided()` (what earlier masters are known to have decided) until a majority is
    /// heard to hold more, since the ids above may be held by this node alone.
    pub fn with_quorum_decisions(
        log: Log,
        secondaries: usize,
        journal: bool,
        starts: &[(u64, u64)],
    ) -> Self {
        Self::build(log, secondaries, journal, starts, true)
    }

    fn build(
        mut log: Log,
        secondaries: usize,
        journal: bool,
        starts: &[(u64, u64)],
        quorum_decisions: bool,
    ) -> Self {
        // A process named twice in a file (a secondary's file in failover mode may name the one
        // it follows again to drop undecided tombstones) is listed once, with the lower
        // `recovered`: the cut rule takes the lowest anyway, and a secondary wants the list
        // ascending.
        let mut list: Vec<MasterStart> = Vec::with_capacity(starts.len());
        for &(instance, recovered) in starts {
            match list.iter_mut().find(|s| s.instance == instance) {
                Some(named) => named.recovered = named.recovered.min(recovered),
                None => list.push(MasterStart {
                    instance,
                    recovered,
                }),
            }
        }
        let starts = list;
        if !quorum_decisions {
            log.set_decided(log.last_id());
        }
        let mut effects = Vec::new();
        if quorum_decisions && journal && log.decided() > 0 {
            // Recovery may have learned a frontier from the nodes it heard that the file does
            // not hold yet; this process shows it from now on.
            effects.push(Effect::Persist(Record::Decided {
                upto: log.decided(),
            }));
        }
        let recorded = log.decided();
        Self {
            durable: log.last_id(),
            written: log.last_id(),
            instance: starts.last().map_or(0, |s| s.instance),
            starts,
            log,
            pending: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
            followers: vec![Follower::default(); secondaries],
            journal,
            quorum_decisions,
            frozen: false,
            recorded,
            unsettled: BTreeSet::new(),
            cache_bytes: usize::MAX,
            effects,
        }
    }

    /// Stops deciding for good: this master's lease lapsed or it was deposed, so another
    /// master may already decide. Acknowledgements, syncs and deadlines still update what is
    /// known, but nothing commits, aborts, is confirmed or becomes decided any more; the
    /// waiting clients hear "unknown" when the role stops.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// Whether the frontier and the 500s wait for a majority (failover mode).
    pub fn quorum_decisions(&self) -> bool {
        self.quorum_decisions
    }

    /// What the steps since the last call asked to be done, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The effects asked for since the last call, in order, taken as they are iterated; the
    /// buffer keeps its room for the next step.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// Asks for `effect` to be carried out; a wake-up of every link already asked for since
    /// the last drain is not asked for twice.
    pub(super) fn push_effect(&mut self, effect: Effect) {
        if effect == Effect::Wake(None) && self.effects.contains(&Effect::Wake(None)) {
            return;
        }
        self.effects.push(effect);
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn followers(&self) -> &[Follower] {
        &self.followers
    }

    pub fn follower(&self, index: usize) -> &Follower {
        &self.followers[index]
    }

    /// Forgets the ids below `first_id`, whose segments retention removed (all decided).
    pub fn forget_before(&mut self, first_id: u64) {
        self.log.forget_before(first_id);
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Assigns the next id to an append with write concern `w` (nodes, the master included);
    /// its client learns the outcome through [`Effect::Answer`]s for this id.
    pub fn append(&mut self, message: Bytes, w: usize, deadline: Option<Instant>) -> u64 {
        let id = self.log.push(message.clone(), false);
        if deadline.is_some() && self.pending.is_empty() {
            self.effects.push(Effect::Timer);
        }
        self.pending.insert(
            id,
            Pending {
                needed: w.max(1) - 1,
                local: false,
                aborting: false,
                deadline,
                confirm_by: None,
            },
        );
        if self.journal {
            self.effects.push(Effect::Persist(Record::Entry {
                id,
                message,
                tombstone: false,
            }));
        } else {
            self.on_written(id);
            self.on_persisted(Some(id), &[]);
        }
        self.push_effect(Effect::Wake(None));
        id
    }

    /// The journal wrote entries up to `upto` to the file (not synced yet): they may be shipped.
    pub fn on_written(&mut self, upto: u64) {
        if upto > self.written {
            self.written = upto;
            self.push_effect(Effect::Wake(None));
        }
    }

    /// The journal made entries up to `entries_upto` and the tombstones `tombstones` durable.
    pub fn on_persisted(&mut self, entries_upto: Option<u64>, tombstones: &[u64]) {
        if let Some(upto) = entries_upto.filter(|&upto| upto > self.durable) {
            let from = self.durable;
            self.durable = upto;
            self.written = self.written.max(upto);
            self.acknowledge(from, upto, Ack::Master);
        }
        for &id in tombstones {
            if self.frozen {
                break;
            }
            if let Some(pending) = self.pending.remove(&id) {
                self.log.tombstone(id);
                if self.quorum_decisions && self.journal {
                    self.unsettled.insert(id);
                }
                self.unconfirmed.insert(
                    id,
                    Unconfirmed {
                        answer_by: pending.confirm_by,
                    },
                );
            }
        }
        if self.advance_decided() {
            self.push_effect(Effect::Wake(None));
        }
        self.confirm_aborts();
        self.record_frontier();
        self.log.evict(self.durable, self.cache_bytes);
    }

    /// Answers 500 to the clients of aborted ids a secondary has decided (it holds the
    /// tombstone), or every one when there is no secondary (the master's disk is the log). With
    /// quorum decisions, majority - 1 secondaries must have decided them: with the master, a
    /// majority holds the tombstone, so every majority a next master hears includes one.
    fn confirm_aborts(&mut self) {
        if self.frozen {
            return;
        }
        let Some(&first) = self.unconfirmed.keys().next() else {
            return;
        };
        let upto = if self.quorum_decisions {
            let needed = self.majority() - 1;
            kth_highest(self.followers.iter().map(|f| f.decided), needed)
        } else {
            self.followers
                .iter()
                .map(|f| f.decided)
                .max()
                .unwrap_or(u64::MAX)
        };
        if upto < first {
            return;
        }
        let rest = match upto.checked_add(1) {
            Some(next) => self.unconfirmed.split_off(&next),
            None => BTreeMap::new(),
        };
        for id in std::mem::replace(&mut self.unconfirmed, rest).into_keys() {
            self.effects.push(Effect::Answer {
                id,
                progress: Progress::Decided(Outcome::Aborted),
            });
        }
    }

    /// Tells the clients of aborted ids still unconfirmed at their bound that the outcome is
    /// unknown; they stay listed while `listened(id)` (an idempotency key's record may still
    /// learn the 500 from a later confirmation), and are forgotten after. Returns the ids told.
    /// An abort whose tombstone is not even synced by then is unknown to its client as well.
    pub fn expire_unconfirmed(&mut self, now: Instant, listened: impl Fn(u64) -> bool) -> Vec<u64> {
        let mut expired = Vec::new();
        for (&id, pending) in self.pending.iter_mut() {
            if pending.confirm_by.is_some_and(|at| at <= now) {
                pending.confirm_by = None;
                expired.push(id);
            }
        }
        self.unconfirmed.retain(|&id, unconfirmed| {
            if unconfirmed.answer_by.is_some_and(|at| at <= now) {
                unconfirmed.answer_by = None;
                expired.push(id);
            }
            unconfirmed.answer_by.is_some() || listened(id)
        });
        for &id in &expired {
            self.effects.push(Effect::Answer {
                id,
                progress: Progress::AbortUnconfirmed,
            });
        }
        expired
    }

    /// Aborted ids whose clients still wait for a secondary to confirm the tombstone, or were
    /// told "unknown" and may still learn the 500.
    pub fn unconfirmed_count(&self) -> usize {
        self.unconfirmed.len()
    }

    /// Ids synced to the master's disk (all held ids in memory mode).
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Ids written to the master's file, which may be shipped (all held ids in memory mode).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// One acknowledgement, by the master's disk or by a secondary, for every pending id in
    /// `(from, to]`; commits those that reach their write concern.
    fn acknowledge(&mut self, from: u64, to: u64, by: Ack) {
        if to <= from || self.frozen {
            return;
        }
        let mut committed = Vec::new();
        for (&id, pending) in self.pending.range_mut(from + 1..=to) {
            if pending.aborting {
                continue;
            }
            match by {
                Ack::Master => pending.local = true,
                Ack::Secondary => pending.needed = pending.needed.saturating_sub(1),
            }
            if pending.local && pending.needed == 0 {
                committed.push(id);
            }
        }
        for id in committed {
            self.pending.remove(&id);
            self.effects.push(Effect::Answer {
                id,
                progress: Progress::Decided(Outcome::Committed),
            });
        }
    }

    /// Earliest deadline among pending appends and aborted ones waiting for confirmation. Ids
    /// are given in time order and the timeout is one setting, so the first pending id with a
    /// deadline carries the earliest one.
    pub fn next_deadline(&self) -> Option<Instant> {
        let abort = self
            .pending
            .values()
            .filter(|p| !p.aborting)
            .find_map(|p| p.deadline);
        let syncing = self
            .pending
            .values()
            .filter(|p| p.aborting)
            .find_map(|p| p.confirm_by);
        let answer = self.unconfirmed.values().filter_map(|u| u.answer_by).min();
        abort.into_iter().chain(syncing).chain(answer).min()
    }

    /// Starts aborting every pending append whose deadline has passed: from now on no
    /// acknowledgement commits it, and once its tombstone is durable it is decided (aborted).
    /// Its client hears 500 once a secondary confirms the tombstone too, or "unknown" if none
    /// has within `confirm_within` from now ([`Ledger::expire_unconfirmed`]). Returns the ids.
    pub fn abort_expired(&mut self, now: Instant, confirm_within: Duration) -> Vec<u64> {
        let mut expired = Vec::new();
        if self.frozen {
            return expired;
        }
        for (&id, pending) in self.pending.iter_mut() {
            if !pending.aborting && pending.deadline.is_some_and(|d| d <= now) {
                pending.aborting = true;
                pending.confirm_by = Some(now + confirm_within);
                expired.push(id);
            }
        }
        if self.journal {
            for &id in &expired {
                self.effects.push(Effect::Persist(Record::Tombstone { id }));
            }
        } else {
            self.on_persisted(None, &expired);
        }
        if !expired.is_empty() {
            self.push_effect(Effect::Wake(None));
        }
        expired
    }

    /// Takes a secondary's reply. Returns whether the decided frontier moved (so decisions are
    /// pushed and watchers woken), or the foreign identity it reported.
    pub fn on_reply(
        &mut self,
        index: usize,
        state: &ReplicaState,
        now: Instant,
    ) -> Result<bool, ForeignLog> {
        // A secondary that does not follow this process yet may hold ids that an earlier one
        // lost, or a process this one never heard of gave it, and it drops them when it hears
        // this one, with any tombstone above its decided frontier: only ids up to where it
        // surely keeps count.
        let held = match state.master_instance {
            follows if follows == self.instance => state.held,
            follows => state.held.min(self.kept_after(follows)).min(state.decided),
        }
        .min(self.written);
        let log_id = self.log.log_id().to_owned();
        let follower = &mut self.followers[index];
        follower.last_contact = Some(now);
        if !state.log_id.is_empty() && state.log_id != log_id {
            follower.foreign_log = Some(state.log_id.clone());
            follower.last_error = Some(format!(
                "holds log {} but the master's log is {log_id}",
                state.log_id
            ));
            return Err(ForeignLog(state.log_id.clone()));
        }
        follower.foreign_log = None;
        follower.last_error = None;
        if follower.instance != Some(state.instance) {
            follower.instance = Some(state.instance);
            follower.held = state.held;
        } else {
            follower.held = follower.held.max(state.held);
        }
        follower.decided = state.decided;
        follower.master_instance = Some(state.master_instance);
        let before = follower.acked;
        follower.acked = follower.acked.max(held);
        self.confirm_aborts();
        let moved = held > before && {
            self.acknowledge(before, held, Ack::Secondary);
            self.advance_decided()
        };
        if moved {
            self.push_effect(Effect::Wake(None));
        }
        self.record_frontier();
        Ok(moved)
    }

    /// The secondary was heard alive without a reply (a pong on its stream): contact, nothing
    /// more.
    pub fn on_alive(&mut self, index: usize, now: Instant) {
        self.followers[index].last_contact = Some(now);
    }

    /// Records a failed call to a secondary.
    pub fn on_failure(&mut self, index: usize, error: String) {
        self.followers[index].last_error = Some(error);
    }

    /// The decided frontier: every id before the first pending one (with quorum decisions,
    /// only as far as a majority holds). See [`Ledger::record_frontier`] for the file's.
    fn advance_decided(&mut self) -> bool {
        if self.frozen {
            return false;
        }
        let mut frontier = match self.pending.keys().next() {
            Some(&first) => first - 1,
            None => self.log.last_id(),
        };
        if self.quorum_decisions {
            frontier = frontier.min(self.majority_held());
        }
        let before = self.log.decided();
        self.log.set_decided(frontier);
        self.log.decided() > before
    }

    /// With quorum decisions and a journal, asks for the decided frontier to be recorded in
    /// the master's file as far as it is settled (a [`Record::Decided`] when that moved; the
    /// journal writes the latest of a group, without a sync of its own). Without it, a node
    /// that stops being master reads back the frontier its file had and shows less than it
    /// showed. What a majority holds is safe to record as decided; a power failure may take
    /// the last of these records back, as it may a secondary's.
    ///
    /// The frontier may pass an id this process aborted before a majority holds the tombstone
    /// (its client heard "unknown", not 500): the next master may hold the entry and commit
    /// it. Such an id must stay above what this node's file calls decided, so that, should this
    /// node follow another master, it drops the tombstone and takes what that master holds
    /// there. So the recorded frontier stops below the first such id until majority - 1
    /// secondaries report a decided frontier past it. In static mode the recovered log is
    /// decided as a whole, so the file needs none.
    fn record_frontier(&mut self) {
        if !self.quorum_decisions || !self.journal || self.frozen {
            return;
        }
        let needed = self.majority() - 1;
        let confirmed = kth_highest(self.followers.iter().map(|f| f.decided), needed);
        while self.unsettled.first().is_some_and(|&id| id <= confirmed) {
            self.unsettled.pop_first();
        }
        let mut upto = self.log.decided();
        if let Some(&first) = self.unsettled.first() {
            upto = upto.min(first - 1);
        }
        if upto > self.recorded {
            self.recorded = upto;
            self.effects.push(Effect::Persist(Record::Decided { upto }));
        }
    }

    /// Nodes that make a majority: of the master and its secondaries.
    fn majority(&self) -> usize {
        let nodes = self.followers.len() + 1;
        nodes / 2 + 1
    }

    /// The highest id a majority of the nodes holds: the master up to its durable id, each
    /// secondary up to what it acknowledged.
    pub fn majority_held(&self) -> u64 {
        let held = std::iter::once(self.durable).chain(self.followers.iter().map(|f| f.acked));
        kth_highest(held, self.majority())
    }

    /// The master's decisions as one secondary needs them: tombstones since its reported
    /// frontier.
    pub fn decisions_for(&self, index: usize) -> Decisions {
        let since = self.followers[index].decided.min(self.log.decided());
        Decisions {
            decided_upto: self.log.decided(),
            tombstones: self.log.tombstones_in(since, self.log.decided()).collect(),
            since,
        }
    }

    /// A replication request for one secondary: entries from `next` on, within the limits (at
    /// least one entry when any is there), and the current decisions. Retention may have
    /// removed the ids from `next` on: the entries then start at the first retained id, which
    /// the request names, and the secondary is re-seeded from there.
    ///
    /// Cold entries are read from the log's files here, under the caller's lock; the link reads
    /// them outside it instead and ships them with [`Ledger::batch_read`].
    pub fn batch(
        &self,
        index: usize,
        next: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> ReplicateRequest {
        let mut first_id = self.log.first_id();
        let next = next.max(first_id);
        let wanted = max_entries > 0 && next.max(1) <= self.written;
        let mut read = match wanted {
            true => self.log.entries(next, max_entries, max_bytes),
            false => Ok(Vec::new()),
        };
        if let Err(ReadError::Gone { first_id: kept, .. }) = read {
            // Retention removed the files' oldest segments and the log has not forgotten them
            // yet: the files' first retained id is the master's.
            first_id = kept;
            read = self.log.entries(kept, max_entries, max_bytes);
        }
        // Entries not cached are read from the log's files; one that cannot be read (a damaged
        // segment) is not shipped, and the link asks again later.
        let read = read.unwrap_or_else(|error| {
            tracing::error!(%error, from = next, "cannot read entries to ship from the log's files");
            Vec::new()
        });
        self.request(index, read, first_id)
    }

    /// A replication request shipping `read`, entries of ids from `next` on that the caller
    /// read from the log's files without holding the ledger (only its cold part is shipped:
    /// see [`Log::cold_part`]). A read that starts above `next` found the files' first
    /// retained id there (retention removed the rest), which the request names.
    pub fn batch_read(&self, index: usize, next: u64, read: Vec<Stored>) -> ReplicateRequest {
        let first_id = match read.first() {
            Some(first) if first.id > next.max(self.log.first_id()) => first.id,
            _ => self.log.first_id(),
        };
        self.request(index, self.log.cold_part(read), first_id)
    }

    fn request(&self, index: usize, read: Vec<Stored>, first_id: u64) -> ReplicateRequest {
        let entries = read
            .into_iter()
            .take_while(|e| e.id <= self.written)
            .map(|e| Entry {
                id: e.id,
                tombstone: e.tombstone,
                message: e.message,
            })
            .collect();
        ReplicateRequest {
            log_id: self.log.log_id().to_owned(),
            entries,
            decisions: Some(self.decisions_for(index)),
            master_instance: self.instance,
            starts: self.starts_for(index),
            quiet: false,
            last_id: self.log.last_id(),
            first_id,
        }
    }

    /// Whether a batch from `next` starts at ids only the log's files hold (evicted from the
    /// cache), which the link then reads outside the ledger's lock.
    pub fn is_cold(&self, next: u64) -> bool {
        self.log.files().is_some() && next < self.log.cached_from() && next <= self.written
    }

    /// The starts a secondary needs: none once it follows this process, else those after the
    /// process it follows (all while it has not said). With quorum decisions (failover mode)
    /// all of them, this log's lineage: the process the secondary follows may have served on
    /// another node without this one hearing of it, and the secondary must be able to tell.
    fn starts_for(&self, index: usize) -> Vec<MasterStart> {
        let follows = self.followers[index].master_instance;
        if follows == Some(self.instance) {
            return Vec::new();
        }
        if self.quorum_decisions {
            return self.starts.clone();
        }
        self.starts_after(follows.unwrap_or(0)).cloned().collect()
    }

    fn starts_after(&self, instance: u64) -> impl Iterator<Item = &MasterStart> {
        self.starts.iter().filter(move |s| s.instance > instance)
    }

    /// What a secondary that follows process `instance` keeps when it hears this one, by this
    /// log's starts. With quorum decisions, one that follows a process this log does not name
    /// cuts by what its own file says, which this master does not know: nothing is counted
    /// before it reports following this process.
    fn kept_after(&self, instance: u64) -> u64 {
        if self.quorum_decisions
            && instance != 0
            && !self.starts.iter().any(|s| s.instance == instance)
        {
            return 0;
        }
        MasterStart::kept_after(&self.starts, instance, self.instance).unwrap_or(u64::MAX)
    }
}

/// The `k`-th highest of `values` (counting repeats): the highest value that at least `k` of
/// them reach; `u64::MAX` for `k = 0`, 0 when there are fewer than `k`. Quadratic, without
/// allocating: a cluster has a handful of nodes.
fn kth_highest(values: impl Iterator<Item = u64> + Clone, k: usize) -> u64 {
    if k == 0 {
        return u64::MAX;
    }
    values
        .clone()
        .filter(|&v| values.clone().filter(|&w| w >= v).count() >= k)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use replog_node::log::new_log_id;
    use std::time::Duration;

    fn ledger(secondaries: usize) -> Ledger {
        Ledger::new(Log::new(new_log_id()), secondaries, false, &[(1, 0)])
    }

    /// What the client of append `id` was last told.
    fn told(ledger: &Ledger, id: u64) -> Progress {
        ledger
            .effects
            .iter()
            .rev()
            .find_map(|e| match e {
                Effect::Answer { id: told, progress } if *told == id => Some(*progress),
                _ => None,
            })
            .unwrap_or(Progress::Waiting)
    }

    /// The records the ledger asked to make durable, oldest first, taken.
    fn records(ledger: &mut Ledger) -> Vec<Record> {
        let (records, rest) = ledger
            .take_effects()
            .into_iter()
            .partition::<Vec<_>, _>(|e| matches!(e, Effect::Persist(_)));
        ledger.effects = rest;
        records
            .into_iter()
            .filter_map(|e| match e {
                Effect::Persist(record) => Some(record),
                _ => None,
            })
            .collect()
    }

    fn reply(ledger: &Ledger, instance: u64, held: u64) -> ReplicaState {
        ReplicaState {
            log_id: ledger.log().log_id().to_owned(),
            instance,
            held,
            decided: 0,
            master_instance: 1,
            last_term: 0,
            rejoining: false,
        }
    }

    /// A reply that also reports the secondary's decided frontier.
    fn decided(ledger: &Ledger, instance: u64, held: u64, decided: u64) -> ReplicaState {
        ReplicaState {
            decided,
            ..reply(ledger, instance, held)
        }
    }

    const BOUND: Duration = Duration::from_secs(1);

    fn ids(ledger: &Ledger) -> Vec<u64> {
        ledger
            .log()
            .try_visible(1, usize::MAX)
            .expect("page")
            .iter()
            .map(|m| m.id)
            .collect()
    }

    #[test]
    fn commits_when_enough_secondaries_hold_it() {
        let mut l = ledger(2);
        let id = l.append(Bytes::from("a"), 3, None);
        assert_eq!(id, 1);
        let state = reply(&l, 7, 1);
        assert_eq!(l.on_reply(0, &state, Instant::now()), Ok(false));
        assert!(
            told(&l, id) == Progress::Waiting,
            "one of two acknowledgements"
        );
        let state = reply(&l, 8, 1);
        assert_eq!(l.on_reply(1, &state, Instant::now()), Ok(true));
        assert_eq!(told(&l, id), Progress::Decided(Outcome::Committed));
        assert_eq!(ids(&l), vec![1]);
    }

    #[test]
    fn w1_answers_at_once_but_shows_only_after_earlier_ids_are_decided() {
        let mut l = ledger(2);
        let _rx1 = l.append(Bytes::from("slow"), 3, None);
        let id2 = l.append(Bytes::from("fast"), 1, None);
        assert_eq!(told(&l, id2), Progress::Decided(Outcome::Committed));
        assert!(ids(&l).is_empty(), "id 1 is still pending");
        let state = reply(&l, 1, id2);
        l.on_reply(0, &state, Instant::now()).ok();
        let state = reply(&l, 2, id2);
        l.on_reply(1, &state, Instant::now()).ok();
        assert_eq!(ids(&l), vec![1, 2]);
    }

    #[test]
    fn expired_appends_become_tombstones_and_are_never_shown() {
        let mut l = ledger(1);
        let now = Instant::now();
        let rx = l.append(Bytes::from("lost"), 2, Some(now));
        let _rx2 = l.append(Bytes::from("kept"), 1, None);
        assert_eq!(
            l.abort_expired(now + Duration::from_millis(1), BOUND),
            vec![1]
        );
        assert_eq!(ids(&l), vec![2]);
        assert_eq!(l.log().decided(), 2, "decided at once");
        // A late acknowledgement does not resurrect it.
        let state = reply(&l, 1, 2);
        l.on_reply(0, &state, Instant::now()).ok();
        assert_eq!(ids(&l), vec![2]);
        let request = l.batch(0, 1, 10, 1 << 20);
        assert!(request.entries[0].tombstone);
        assert!(request.entries[0].message.is_empty());
        assert_eq!(request.decisions.map(|d| d.tombstones), Some(vec![1]));
        assert_eq!(
            told(&l, rx),
            Progress::Waiting,
            "no secondary decided it yet"
        );
        let state = decided(&l, 1, 2, 2);
        l.on_reply(0, &state, Instant::now()).ok();
        assert_eq!(told(&l, rx), Progress::Decided(Outcome::Aborted));
        assert_eq!(l.unconfirmed_count(), 0);
    }

    #[test]
    fn an_abort_is_answered_500_only_once_a_secondary_reports_it_decided() {
        let mut l = ledger(2);
        let now = Instant::now();
        let rx1 = l.append(Bytes::from("one"), 3, Some(now));
        let rx2 = l.append(Bytes::from("two"), 3, Some(now));
        // Secondary 0 holds both entries, secondary 1 nothing; both abort.
        let state = reply(&l, 1, 2);
        l.on_reply(0, &state, now).ok();
        assert_eq!(l.abort_expired(now, BOUND), vec![1, 2]);
        assert!(ids(&l).is_empty());
        assert_eq!(l.next_deadline(), Some(now + BOUND));
        // A reply that decided less than an id confirms nothing past it.
        let state = decided(&l, 1, 2, 0);
        l.on_reply(0, &state, now).ok();
        assert_eq!(told(&l, rx1), Progress::Waiting);
        let state = decided(&l, 2, 0, 1);
        l.on_reply(1, &state, now).ok();
        assert_eq!(told(&l, rx1), Progress::Decided(Outcome::Aborted));
        assert_eq!(
            told(&l, rx2),
            Progress::Waiting,
            "id 2 is not decided there"
        );
        // A heartbeat's reply (held unchanged) confirms as well.
        let state = decided(&l, 1, 2, 2);
        l.on_reply(0, &state, now).ok();
        assert_eq!(told(&l, rx2), Progress::Decided(Outcome::Aborted));
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn an_unconfirmed_abort_is_unknown_at_its_bound_and_500_once_confirmed() {
        let mut l = ledger(2);
        let now = Instant::now();
        let rx = l.append(Bytes::from("held"), 3, Some(now));
        let state = reply(&l, 1, 1);
        l.on_reply(0, &state, now).ok();
        l.abort_expired(now, BOUND);
        assert!(l.expire_unconfirmed(now + BOUND / 2, |_| true).is_empty());
        assert_eq!(told(&l, rx), Progress::Waiting);
        assert_eq!(l.expire_unconfirmed(now + BOUND, |_| true), vec![1]);
        assert_eq!(told(&l, rx), Progress::AbortUnconfirmed);
        assert_eq!(l.next_deadline(), None, "told once");
        // Still listened to (an idempotency key's record): a later confirmation is the 500.
        let state = decided(&l, 1, 1, 1);
        l.on_reply(0, &state, now + BOUND * 3).ok();
        assert_eq!(told(&l, rx), Progress::Decided(Outcome::Aborted));
    }

    #[test]
    fn an_unconfirmed_abort_nobody_listens_to_is_forgotten() {
        let mut l = ledger(1);
        let now = Instant::now();
        let rx = l.append(Bytes::from("gone"), 2, Some(now));
        l.abort_expired(now, BOUND);
        assert_eq!(l.expire_unconfirmed(now + BOUND, |_| true), vec![1]);
        assert_eq!(l.unconfirmed_count(), 1);
        assert_eq!(told(&l, rx), Progress::AbortUnconfirmed);
        // Its client hung up.
        assert!(l.expire_unconfirmed(now + BOUND, |_| false).is_empty());
        assert_eq!(l.unconfirmed_count(), 0);
    }

    #[test]
    fn without_secondaries_the_masters_disk_suffices_for_the_500() {
        let mut l = Ledger::new(Log::new(new_log_id()), 0, true, &[(1, 0)]);
        let now = Instant::now();
        let rx = l.append(Bytes::from("a"), 1, Some(now));
        assert_eq!(l.abort_expired(now, BOUND), vec![1]);
        assert_eq!(
            told(&l, rx),
            Progress::Waiting,
            "the tombstone is not synced"
        );
        l.on_persisted(None, &[1]);
        assert_eq!(told(&l, rx), Progress::Decided(Outcome::Aborted));
    }

    #[test]
    fn an_abort_not_synced_by_its_bound_is_unknown_and_the_clock_moves_on() {
        let mut l = Ledger::new(Log::new(new_log_id()), 1, true, &[(1, 0)]);
        let now = Instant::now();
        let rx = l.append(Bytes::from("a"), 2, Some(now));
        l.on_persisted(Some(1), &[]);
        l.abort_expired(now, BOUND);
        assert_eq!(l.next_deadline(), Some(now + BOUND));
        assert_eq!(l.expire_unconfirmed(now + BOUND, |_| true), vec![1]);
        assert_eq!(told(&l, rx), Progress::AbortUnconfirmed);
        assert_eq!(l.next_deadline(), None, "no deadline left in the past");
        l.on_persisted(None, &[1]);
        assert_eq!(told(&l, rx), Progress::AbortUnconfirmed);
        assert_eq!(l.next_deadline(), None);
        let state = decided(&l, 1, 1, 1);
        l.on_reply(0, &state, now).ok();
        assert_eq!(told(&l, rx), Progress::Decided(Outcome::Aborted));
    }

    #[test]
    fn a_restarted_secondary_is_not_counted_twice() {
        let mut l = ledger(2);
        l.append(Bytes::from("a"), 1, None);
        let state = reply(&l, 1, 1);
        l.on_reply(0, &state, Instant::now()).ok();
        // Restart: empty again, then it catches up past id 2.
        let rx = l.append(Bytes::from("b"), 3, None);
        let state = reply(&l, 2, 0);
        l.on_reply(0, &state, Instant::now()).ok();
        assert_eq!(
            l.follower(0).held,
            0,
            "a new instance resets the send position"
        );
        let state = reply(&l, 2, 1);
        l.on_reply(0, &state, Instant::now()).ok();
        assert!(
            told(&l, rx) == Progress::Waiting,
            "id 1 again is no acknowledgement of id 2"
        );
        let state = reply(&l, 2, 2);
        l.on_reply(0, &state, Instant::now()).ok();
        assert!(
            told(&l, rx) == Progress::Waiting,
            "w=3 needs the second secondary too"
        );
        let state = reply(&l, 9, 2);
        l.on_reply(1, &state, Instant::now()).ok();
        assert_eq!(told(&l, rx), Progress::Decided(Outcome::Committed));
    }

    #[test]
    fn a_foreign_log_is_no_acknowledgement() {
        let mut l = ledger(1);
        let rx = l.append(Bytes::from("a"), 2, None);
        let state = ReplicaState {
            log_id: "other".into(),
            instance: 1,
            held: 5,
            decided: 5,
            master_instance: 1,
            last_term: 0,
            rejoining: false,
        };
        assert!(l.on_reply(0, &state, Instant::now()).is_err());
        assert!(told(&l, rx) == Progress::Waiting);
        assert!(l.follower(0).foreign_log.is_some());
    }

    #[test]
    fn with_a_journal_nothing_counts_or_ships_before_it_is_durable() {
        let mut l = Ledger::new(Log::new(new_log_id()), 1, true, &[(1, 0)]);
        let now = Instant::now();
        let rx1 = l.append(Bytes::from("a"), 1, None);
        let rx2 = l.append(Bytes::from("b"), 2, Some(now));
        assert!(
            told(&l, rx1) == Progress::Waiting,
            "w=1 waits for the master's own disk"
        );
        assert!(
            l.batch(0, 1, 10, 1 << 20).entries.is_empty(),
            "nothing ships before"
        );
        assert!(matches!(
            records(&mut l)[..],
            [Record::Entry { id: 1, .. }, Record::Entry { id: 2, .. }]
        ));
        l.on_persisted(Some(2), &[]);
        assert_eq!(told(&l, rx1), Progress::Decided(Outcome::Committed));
        assert_eq!(l.batch(0, 1, 10, 1 << 20).entries.len(), 2);
        // Id 2 expires: it is aborting, but not aborted before its tombstone is durable, and a
        // late acknowledgement no longer commits it.
        assert_eq!(l.abort_expired(now, BOUND), vec![2]);
        assert_eq!(records(&mut l), vec![Record::Tombstone { id: 2 }]);
        let state = reply(&l, 1, 2);
        l.on_reply(0, &state, Instant::now()).ok();
        assert!(told(&l, rx2) == Progress::Waiting);
        assert_eq!(l.log().decided(), 1);
        l.on_persisted(None, &[2]);
        assert_eq!(l.log().decided(), 2);
        assert_eq!(ids(&l), vec![1]);
        assert_eq!(
            told(&l, rx2),
            Progress::Waiting,
            "no secondary decided it yet"
        );
        let state = decided(&l, 1, 2, 2);
        l.on_reply(0, &state, Instant::now()).ok();
        assert_eq!(told(&l, rx2), Progress::Decided(Outcome::Aborted));
    }

    #[test]
    fn a_recovered_log_is_durable_and_decided() {
        let mut log = Log::new(new_log_id());
        log.push(Bytes::from("a"), false);
        log.push(Bytes::new(), true);
        let l = Ledger::new(log, 1, false, &[(1, 0)]);
        assert_eq!((l.durable(), l.log().decided()), (2, 2));
        assert_eq!(ids(&l), vec![1]);
    }

    fn quorum_ledger(secondaries: usize) -> Ledger {
        Ledger::with_quorum_decisions(Log::new(new_log_id()), secondaries, false, &[(1, 0)])
    }

    #[test]
    fn with_quorum_decisions_a_w1_append_answers_at_once_but_shows_once_a_majority_holds_it() {
        let mut l = quorum_ledger(2);
        let id = l.append(Bytes::from("a"), 1, None);
        assert_eq!(told(&l, id), Progress::Decided(Outcome::Committed));
        assert_eq!(l.log().decided(), 0, "only the master holds it");
        assert!(ids(&l).is_empty());
        assert_eq!(
            l.decisions_for(0).decided_upto,
            0,
            "nor is it pushed as decided"
        );
        let state = reply(&l, 1, 1);
        assert_eq!(l.on_reply(0, &state, Instant::now()), Ok(true));
        assert_eq!((l.log().decided(), ids(&l)), (1, vec![1]), "two of three");
        // Without the flag, the master's own copy decides it.
        let mut l = ledger(2);
        l.append(Bytes::from("a"), 1, None);
        assert_eq!(ids(&l), vec![1]);
    }

    #[test]
    fn with_quorum_decisions_the_frontier_is_the_majoritys_and_waits_for_the_masters_disk() {
        let mut l = Ledger::with_quorum_decisions(Log::new(new_log_id()), 4, true, &[(1, 0)]);
        for _ in 0..3 {
            l.append(Bytes::from("x"), 1, None);
        }
        l.on_written(3);
        let now = Instant::now();
        // Two secondaries hold all three, a third one: with the master's disk not synced, no
        // majority of five holds anything beyond id 1.
        l.on_reply(0, &reply(&l, 1, 3), now).ok();
        l.on_reply(1, &reply(&l, 1, 3), now).ok();
        l.on_reply(2, &reply(&l, 1, 1), now).ok();
        assert_eq!(
            l.log().decided(),
            0,
            "nothing is committed before the master's sync"
        );
        l.on_persisted(Some(3), &[]);
        assert_eq!(l.majority_held(), 3);
        assert_eq!(l.log().decided(), 3);
    }

    #[test]
    fn with_quorum_decisions_and_a_journal_the_frontier_goes_to_the_file_as_it_moves() {
        let now = Instant::now();
        let mut l = Ledger::with_quorum_decisions(Log::new(new_log_id()), 2, true, &[(1, 0)]);
        for _ in 0..3 {
            l.append(Bytes::from("x"), 1, None);
        }
        l.on_written(3);
        l.on_persisted(Some(3), &[]);
        assert_eq!(records(&mut l).len(), 3, "the entries, no frontier yet");
        l.on_reply(0, &reply(&l, 1, 2), now).ok();
        l.on_reply(1, &reply(&l, 1, 3), now).ok();
        l.on_reply(0, &reply(&l, 1, 3), now).ok();
        assert_eq!(l.log().decided(), 3);
        assert_eq!(
            records(&mut l),
            vec![Record::Decided { upto: 2 }, Record::Decided { upto: 3 }],
            "one per move; the journal keeps the latest of a group"
        );
        // A frontier recovery learned from the nodes it heard is the file's from the start.
        let mut log = Log::new(new_log_id());
        log.push(Bytes::from("a"), false);
        log.set_decided(1);
        let mut l = Ledger::with_quorum_decisions(log.clone(), 2, true, &[(1, 0)]);
        assert_eq!(records(&mut l), vec![Record::Decided { upto: 1 }]);
        // Static mode decides the recovered log whole, and its file needs no frontier; nor
        // does a log in memory.
        for mut l in [
            Ledger::new(log.clone(), 1, true, &[(1, 0)]),
            Ledger::with_quorum_decisions(log, 1, false, &[(1, 0)]),
        ] {
            l.append(Bytes::from("b"), 1, None);
            l.on_written(2);
            l.on_persisted(Some(2), &[]);
            let state = reply(&l, 1, 2);
            l.on_reply(0, &state, now).ok();
            assert_eq!(l.log().decided(), 2);
            assert!(!records(&mut l)
                .iter()
                .any(|r| matches!(r, Record::Decided { .. })));
        }
    }

    #[test]
    fn the_file_s_frontier_stays_below_an_abort_a_majority_does_not_hold_yet() {
        let now = Instant::now();
        let mut l = Ledger::with_quorum_decisions(Log::new(new_log_id()), 2, true, &[(1, 0)]);
        let a = l.append(Bytes::from("a"), 1, None);
        let b = l.append(Bytes::from("b"), 3, Some(now));
        let c = l.append(Bytes::from("c"), 1, None);
        l.on_written(c);
        l.on_persisted(Some(c), &[]);
        l.on_reply(0, &reply(&l, 1, c), now).ok();
        assert_eq!(l.log().decided(), a, "b waits for the second secondary");
        assert_eq!(l.abort_expired(now, BOUND), vec![b]);
        l.on_persisted(None, &[b]);
        // The master and secondary 0 hold all three, so the frontier passes the tombstone,
        // which only the master holds.
        assert_eq!(l.log().decided(), c);
        let recorded = |l: &mut Ledger| {
            records(l)
                .into_iter()
                .filter_map(|r| match r {
                    Record::Decided { upto } => Some(upto),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(recorded(&mut l), vec![a], "not past b");
        // Secondary 1 decided past it (it holds the tombstone): with the master, a majority.
        l.on_reply(1, &decided(&l, 1, c, b), now).ok();
        assert_eq!(recorded(&mut l), vec![c]);
    }

    #[test]
    fn a_recovered_log_of_failover_mode_is_decided_only_as_far_as_it_was() {
        let mut log = Log::new(new_log_id());
        for _ in 0..3 {
            log.push(Bytes::from("a"), false);
        }
        log.set_decided(1);
        let mut l = Ledger::with_quorum_decisions(log, 2, false, &[(1, 0), (2, 3)]);
        assert_eq!((l.durable(), l.log().decided()), (3, 1));
        let state = ReplicaState {
            master_instance: 2,
            ..reply(&l, 1, 3)
        };
        l.on_reply(1, &state, Instant::now()).ok();
        assert_eq!(l.log().decided(), 3, "a secondary holds the rest");
    }

    #[test]
    fn with_quorum_decisions_a_500_waits_for_a_majority_to_hold_the_tombstone() {
        let now = Instant::now();
        for quorum in [false, true] {
            let mut l = if quorum { quorum_ledger(4) } else { ledger(4) };
            let id = l.append(Bytes::from("lost"), 5, Some(now));
            assert_eq!(l.abort_expired(now, BOUND), vec![id]);
            l.on_reply(0, &decided(&l, 1, 1, 1), now).ok();
            if quorum {
                assert_eq!(
                    told(&l, id),
                    Progress::Waiting,
                    "the master and one of five"
                );
                l.on_reply(3, &decided(&l, 1, 1, 1), now).ok();
            }
            assert_eq!(told(&l, id), Progress::Decided(Outcome::Aborted));
        }
        // Alone, the master's disk is a majority.
        let mut l = Ledger::with_quorum_decisions(Log::new(new_log_id()), 0, true, &[(1, 0)]);
        let id = l.append(Bytes::from("a"), 1, Some(now));
        l.abort_expired(now, BOUND);
        l.on_persisted(None, &[id]);
        assert_eq!(told(&l, id), Progress::Decided(Outcome::Aborted));
    }

    #[test]
    fn with_quorum_decisions_a_secondary_hears_the_whole_lineage_until_it_follows() {
        let starts = [(1, 0), (3, 4), (3, 2), (5, 6)];
        let listed = |l: &Ledger| {
            l.batch(0, 1, 10, 1 << 20)
                .starts
                .iter()
                .map(|s| (s.instance, s.recovered))
                .collect::<Vec<_>>()
        };
        let mut l = Ledger::with_quorum_decisions(Log::new(new_log_id()), 1, false, &starts);
        let now = Instant::now();
        // Named twice in the file: listed once, with the lower, ascending.
        assert_eq!(listed(&l), [(1, 0), (3, 2), (5, 6)]);
        let state = ReplicaState {
            master_instance: 3,
            ..reply(&l, 1, 0)
        };
        l.on_reply(0, &state, now).ok();
        assert_eq!(
            listed(&l),
            [(1, 0), (3, 2), (5, 6)],
            "not only the later ones"
        );
        let state = ReplicaState {
            master_instance: 5,
            ..reply(&l, 1, 0)
        };
        l.on_reply(0, &state, now).ok();
        assert!(listed(&l).is_empty(), "it follows this process");
        // Static mode: the starts after the one it follows.
        let mut l = Ledger::new(Log::new(new_log_id()), 1, false, &starts);
        let state = ReplicaState {
            master_instance: 3,
            ..reply(&l, 1, 0)
        };
        l.on_reply(0, &state, now).ok();
        assert_eq!(listed(&l), [(5, 6)]);
    }

    #[test]
    fn a_secondary_that_does_not_follow_yet_counts_only_what_it_surely_keeps() {
        let now = Instant::now();
        let held = |l: &mut Ledger, follows: u64, decided: u64| {
            let state = ReplicaState {
                master_instance: follows,
                decided,
                ..reply(l, 1, 6)
            };
            l.on_reply(0, &state, now).ok();
            l.follower(0).acked
        };
        let mut log = Log::new(new_log_id());
        for _ in 0..6 {
            log.push(Bytes::from("x"), false);
        }
        let starts = [(1, 0), (2, 5), (4, 6)];
        let failover = |log: &Log| Ledger::with_quorum_decisions(log.clone(), 1, false, &starts);
        // A listed process: up to where the starts after it cut, and no further than its
        // decided frontier (it drops its undecided tombstones, which this master cannot see).
        assert_eq!(held(&mut failover(&log), 2, 6), 6);
        assert_eq!(held(&mut failover(&log), 1, 6), 5);
        assert_eq!(held(&mut failover(&log), 2, 3), 3);
        // One this lineage does not name cuts by its own file: nothing counts yet.
        assert_eq!(held(&mut failover(&log), 3, 6), 0);
        // Static mode names every process of its log.
        let mut l = Ledger::new(log, 1, false, &starts);
        assert_eq!(held(&mut l, 3, 6), 6);
    }

    #[test]
    fn a_frozen_ledger_decides_nothing_and_an_admission_is_refused() {
        let now = Instant::now();
        let mut l = Ledger::new(Log::new(new_log_id()), 2, true, &[(1, 0)]);
        let a = l.append(Bytes::from("a"), 2, Some(now));
        let b = l.append(Bytes::from("b"), 2, Some(now));
        l.on_persisted(Some(2), &[]);
        l.on_reply(0, &reply(&l, 1, 1), now).ok();
        assert_eq!(told(&l, a), Progress::Decided(Outcome::Committed));
        assert_eq!(l.log().decided(), 1);
        l.take_effects();
        l.freeze();
        // An acknowledgement, a deadline and a confirmation: none decides anything.
        l.on_reply(0, &decided(&l, 1, 2, 1), now).ok();
        assert_eq!(l.abort_expired(now, BOUND), Vec::<u64>::new());
        l.on_persisted(None, &[b]);
        assert_eq!(told(&l, b), Progress::Waiting);
        assert_eq!((l.log().decided(), l.pending_count()), (1, 1));
        assert!(!l.log().is_tombstone(b));
        assert!(l
            .take_effects()
            .iter()
            .all(|e| !matches!(e, Effect::Answer { .. } | Effect::Persist(_))));
    }

    #[test]
    fn the_kth_highest_counts_repeats() {
        let v = [3u64, 9, 3, 1];
        assert_eq!(kth_highest(v.iter().copied(), 0), u64::MAX);
        assert_eq!(kth_highest(v.iter().copied(), 1), 9);
        assert_eq!(kth_highest(v.iter().copied(), 2), 3);
        assert_eq!(kth_highest(v.iter().copied(), 3), 3);
        assert_eq!(kth_highest(v.iter().copied(), 4), 1);
        assert_eq!(kth_highest(v.iter().copied(), 5), 0);
    }

    #[test]
    fn a_batch_from_ids_retention_just_removed_starts_at_the_files_first_retained_id() {
        use replog_node::storage::segments::{Config, Retention, SegmentLog};
        use replog_node::storage::FsyncPolicy;
        let dir = std::env::temp_dir().join(format!(
            "replog-ledger-retention-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let config = Config {
            fsync: FsyncPolicy::Never,
            segment_bytes: 1024,
            index_interval: 128,
        };
        let (mut file, _) = SegmentLog::open(&dir, config, || "L".into()).expect("open");
        let mut log = Log::new("L".into()).with_files(file.reader());
        for first in (1..=100u64).step_by(10) {
            let records: Vec<Record> = (first..first + 10)
                .map(|id| {
                    let message = Bytes::from(format!("m{id}"));
                    log.push(message.clone(), false);
                    Record::Entry {
                        id,
                        message,
                        tombstone: false,
                    }
                })
                .collect();
            file.append(&records).expect("write");
        }
        log.set_decided(100);
        log.evict(100, 0);
        let l = Ledger::new(log, 1, true, &[(1, 0)]);
        let everything_old = Retention {
            max_bytes: Some(1),
            max_age: None,
        };
        file.retain(&everything_old, 101, std::time::SystemTime::now())
            .expect("retain");
        let kept = file.first_id();
        assert!(kept > 1, "segments removed");
        assert_eq!(l.log().first_id(), 1, "the log has not forgotten them yet");
        let request = l.batch(0, 1, 10, 1 << 20);
        assert_eq!(request.first_id, kept, "the files' first retained id");
        assert_eq!(request.entries.first().map(|e| e.id), Some(kept));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn batches_respect_limits_and_always_carry_one_entry() {
        let mut l = ledger(1);
        for _ in 0..5 {
            l.append(Bytes::from(vec![b'x'; 100]), 1, None);
        }
        assert_eq!(l.batch(0, 1, 3, 1 << 20).entries.len(), 3);
        assert_eq!(l.batch(0, 1, 10, 250).entries.len(), 2);
        assert_eq!(l.batch(0, 1, 10, 10).entries.len(), 1);
        assert!(l.batch(0, 6, 10, 1000).entries.is_empty());
    }
}
