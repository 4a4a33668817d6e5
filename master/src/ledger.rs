//! The master's decision state: its log, the appends still waiting for acknowledgements, and
//! what each secondary has reported.
//!
//! Everything here is synchronous and runs under one short mutex: assigning an id, counting a
//! cumulative acknowledgement, committing, aborting. No lock is held across an `.await`, so
//! appends from many clients proceed in parallel and only serialise for these few steps.
//!
//! With `DATA_DIR`, an entry is shipped once it is written to the master's file, while its fsync
//! runs, so the two disks work at the same time; but nothing commits before the master's own
//! copy is synced, whatever `w` says. So a master that loses power keeps every committed id, and
//! the ids it loses were never committed: secondaries drop them when they hear the restarted
//! master (`master_instance` and `starts` in its requests; see the secondary's `replica`
//! module). An abort becomes visible (tombstone, 500) only once its tombstone is on disk, so a
//! restarted master never commits what it answered 500 for. Records for the journal are queued
//! here, under the lock, so the file receives them in id order.

use bytes::Bytes;
use replog_node::log::{Log, Message};
use replog_node::storage::Record;
use replog_proto::v1::{Decisions, Entry, MasterStart, ReplicaState, ReplicateRequest};
use std::collections::BTreeMap;
use std::time::Instant;
use tokio::sync::oneshot;

/// The fate of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted,
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
    waiter: Option<oneshot::Sender<Outcome>>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignLog(pub String);

/// Where the ledger sends records to make them durable; `None` keeps the log in memory only.
pub type Journal = Option<tokio::sync::mpsc::UnboundedSender<Record>>;

#[derive(Debug)]
pub struct Ledger {
    log: Log,
    pending: BTreeMap<u64, Pending>,
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
    journal: Journal,
}

impl Ledger {
    /// A ledger over `log`. Everything a recovered log holds is durable and decided: an id
    /// without a tombstone on disk was never answered 500 (the tombstone is written first), so
    /// committing it keeps every promise made before the restart.
    ///
    /// `starts` lists every master process's start in this log as `(instance, recovered)`,
    /// this process last (see [`Record::MasterStart`]).
    pub fn new(mut log: Log, secondaries: usize, journal: Journal, starts: &[(u64, u64)]) -> Self {
        let starts: Vec<MasterStart> = starts
            .iter()
            .map(|&(instance, recovered)| MasterStart {
                instance,
                recovered,
            })
            .collect();
        log.set_decided(log.last_id());
        Self {
            durable: log.last_id(),
            written: log.last_id(),
            instance: starts.last().map_or(0, |s| s.instance),
            starts,
            log,
            pending: BTreeMap::new(),
            followers: vec![Follower::default(); secondaries],
            journal,
        }
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

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Assigns the next id to an append with write concern `w` (nodes, the master included);
    /// the returned receiver learns its outcome.
    pub fn append(
        &mut self,
        message: Bytes,
        w: usize,
        deadline: Option<Instant>,
    ) -> (u64, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let id = self.log.push(message.clone(), false);
        self.pending.insert(
            id,
            Pending {
                needed: w.max(1) - 1,
                local: false,
                aborting: false,
                deadline,
                waiter: Some(tx),
            },
        );
        match &self.journal {
            Some(journal) => {
                let record = Record::Entry {
                    id,
                    message,
                    tombstone: false,
                };
                if journal.send(record).is_err() {
                    tracing::error!(id, "the journal is gone; the append cannot become durable");
                }
            }
            None => {
                self.on_written(id);
                self.on_persisted(Some(id), &[]);
            }
        }
        (id, rx)
    }

    /// The journal wrote entries up to `upto` to the file (not synced yet): they may be shipped.
    pub fn on_written(&mut self, upto: u64) {
        self.written = self.written.max(upto);
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
            if let Some(mut pending) = self.pending.remove(&id) {
                self.log.tombstone(id);
                if let Some(waiter) = pending.waiter.take() {
                    let _ = waiter.send(Outcome::Aborted);
                }
            }
        }
        self.advance_decided();
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
        if to <= from {
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
            if let Some(mut pending) = self.pending.remove(&id) {
                if let Some(waiter) = pending.waiter.take() {
                    let _ = waiter.send(Outcome::Committed);
                }
            }
        }
    }

    /// Earliest deadline among pending appends. Ids are given in time order and the timeout is
    /// one setting, so the first pending id with a deadline carries the earliest one.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter(|p| !p.aborting)
            .find_map(|p| p.deadline)
    }

    /// Starts aborting every pending append whose deadline has passed: from now on no
    /// acknowledgement commits it, and once its tombstone is durable it is decided (aborted)
    /// and its client answered. Returns the ids.
    pub fn abort_expired(&mut self, now: Instant) -> Vec<u64> {
        let mut expired = Vec::new();
        for (&id, pending) in self.pending.iter_mut() {
            if !pending.aborting && pending.deadline.is_some_and(|d| d <= now) {
                pending.aborting = true;
                expired.push(id);
            }
        }
        match &self.journal {
            Some(journal) => {
                for &id in &expired {
                    if journal.send(Record::Tombstone { id }).is_err() {
                        tracing::error!(id, "the journal is gone; the abort cannot become durable");
                    }
                }
            }
            None => self.on_persisted(None, &expired),
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
        // lost; only those up to where it will cut count.
        let held = match state.master_instance {
            follows if follows == self.instance => state.held,
            follows => state.held.min(self.kept_after(follows)),
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
        if held <= before {
            return Ok(false);
        }
        follower.acked = held;
        self.acknowledge(before, held, Ack::Secondary);
        Ok(self.advance_decided())
    }

    /// Records a failed call to a secondary.
    pub fn on_failure(&mut self, index: usize, error: String) {
        self.followers[index].last_error = Some(error);
    }

    /// The decided frontier: every id before the first pending one.
    fn advance_decided(&mut self) -> bool {
        let frontier = match self.pending.keys().next() {
            Some(&first) => first - 1,
            None => self.log.last_id(),
        };
        let before = self.log.decided();
        self.log.set_decided(frontier);
        self.log.decided() > before
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
    /// least one entry when any is there), and the current decisions.
    pub fn batch(
        &self,
        index: usize,
        next: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> ReplicateRequest {
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut id = next.max(1);
        while id <= self.written && entries.len() < max_entries {
            let message = self.log.get(id).cloned().unwrap_or_default();
            if !entries.is_empty() && bytes + message.len() > max_bytes {
                break;
            }
            bytes += message.len();
            entries.push(Entry {
                id,
                tombstone: self.log.is_tombstone(id),
                message,
            });
            id += 1;
        }
        ReplicateRequest {
            log_id: self.log.log_id().to_owned(),
            entries,
            decisions: Some(self.decisions_for(index)),
            master_instance: self.instance,
            starts: self.starts_for(index),
            quiet: false,
        }
    }

    /// The starts a secondary needs: none once it follows this process, else those after the
    /// process it follows (all while it has not said).
    fn starts_for(&self, index: usize) -> Vec<MasterStart> {
        let follows = self.followers[index].master_instance;
        if follows == Some(self.instance) {
            return Vec::new();
        }
        self.starts_after(follows.unwrap_or(0)).cloned().collect()
    }

    fn starts_after(&self, instance: u64) -> impl Iterator<Item = &MasterStart> {
        self.starts.iter().filter(move |s| s.instance > instance)
    }

    /// What a secondary that follows process `instance` keeps when it hears this one.
    fn kept_after(&self, instance: u64) -> u64 {
        MasterStart::kept_after(&self.starts, instance, self.instance).unwrap_or(u64::MAX)
    }

    pub fn page(&self, from_id: u64, limit: usize) -> Vec<Message> {
        self.log.visible(from_id, limit).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replog_node::log::new_log_id;
    use std::time::Duration;

    fn ledger(secondaries: usize) -> Ledger {
        Ledger::new(Log::new(new_log_id()), secondaries, None, &[(1, 0)])
    }

    fn reply(ledger: &Ledger, instance: u64, held: u64) -> ReplicaState {
        ReplicaState {
            log_id: ledger.log().log_id().to_owned(),
            instance,
            held,
            decided: 0,
            master_instance: 1,
        }
    }

    fn ids(ledger: &Ledger) -> Vec<u64> {
        ledger.page(1, usize::MAX).iter().map(|m| m.id).collect()
    }

    #[test]
    fn commits_when_enough_secondaries_hold_it() {
        let mut l = ledger(2);
        let (id, mut rx) = l.append(Bytes::from("a"), 3, None);
        assert_eq!(id, 1);
        let state = reply(&l, 7, 1);
        assert_eq!(l.on_reply(0, &state, Instant::now()), Ok(false));
        assert!(rx.try_recv().is_err(), "one of two acknowledgements");
        let state = reply(&l, 8, 1);
        assert_eq!(l.on_reply(1, &state, Instant::now()), Ok(true));
        assert_eq!(rx.try_recv(), Ok(Outcome::Committed));
        assert_eq!(ids(&l), vec![1]);
    }

    #[test]
    fn w1_answers_at_once_but_shows_only_after_earlier_ids_are_decided() {
        let mut l = ledger(2);
        let (_, _rx1) = l.append(Bytes::from("slow"), 3, None);
        let (id2, mut rx2) = l.append(Bytes::from("fast"), 1, None);
        assert_eq!(rx2.try_recv(), Ok(Outcome::Committed));
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
        let (_, mut rx) = l.append(Bytes::from("lost"), 2, Some(now));
        let (_, _rx2) = l.append(Bytes::from("kept"), 1, None);
        assert_eq!(l.abort_expired(now + Duration::from_millis(1)), vec![1]);
        assert_eq!(rx.try_recv(), Ok(Outcome::Aborted));
        assert_eq!(ids(&l), vec![2]);
        // A late acknowledgement does not resurrect it.
        let state = reply(&l, 1, 2);
        l.on_reply(0, &state, Instant::now()).ok();
        assert_eq!(ids(&l), vec![2]);
        let request = l.batch(0, 1, 10, 1 << 20);
        assert!(request.entries[0].tombstone);
        assert!(request.entries[0].message.is_empty());
        assert_eq!(request.decisions.map(|d| d.tombstones), Some(vec![1]));
    }

    #[test]
    fn a_restarted_secondary_is_not_counted_twice() {
        let mut l = ledger(2);
        let (_, _) = l.append(Bytes::from("a"), 1, None);
        let state = reply(&l, 1, 1);
        l.on_reply(0, &state, Instant::now()).ok();
        // Restart: empty again, then it catches up past id 2.
        let (_, mut rx) = l.append(Bytes::from("b"), 3, None);
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
            rx.try_recv().is_err(),
            "id 1 again is no acknowledgement of id 2"
        );
        let state = reply(&l, 2, 2);
        l.on_reply(0, &state, Instant::now()).ok();
        assert!(rx.try_recv().is_err(), "w=3 needs the second secondary too");
        let state = reply(&l, 9, 2);
        l.on_reply(1, &state, Instant::now()).ok();
        assert_eq!(rx.try_recv(), Ok(Outcome::Committed));
    }

    #[test]
    fn a_foreign_log_is_no_acknowledgement() {
        let mut l = ledger(1);
        let (_, mut rx) = l.append(Bytes::from("a"), 2, None);
        let state = ReplicaState {
            log_id: "other".into(),
            instance: 1,
            held: 5,
            decided: 5,
            master_instance: 1,
        };
        assert!(l.on_reply(0, &state, Instant::now()).is_err());
        assert!(rx.try_recv().is_err());
        assert!(l.follower(0).foreign_log.is_some());
    }

    #[test]
    fn with_a_journal_nothing_counts_or_ships_before_it_is_durable() {
        let (tx, mut records) = tokio::sync::mpsc::unbounded_channel();
        let mut l = Ledger::new(Log::new(new_log_id()), 1, Some(tx), &[(1, 0)]);
        let now = Instant::now();
        let (_, mut rx1) = l.append(Bytes::from("a"), 1, None);
        let (_, mut rx2) = l.append(Bytes::from("b"), 2, Some(now));
        assert!(
            rx1.try_recv().is_err(),
            "w=1 waits for the master's own disk"
        );
        assert!(
            l.batch(0, 1, 10, 1 << 20).entries.is_empty(),
            "nothing ships before"
        );
        assert!(matches!(
            records.try_recv(),
            Ok(Record::Entry { id: 1, .. })
        ));
        assert!(matches!(
            records.try_recv(),
            Ok(Record::Entry { id: 2, .. })
        ));
        l.on_persisted(Some(2), &[]);
        assert_eq!(rx1.try_recv(), Ok(Outcome::Committed));
        assert_eq!(l.batch(0, 1, 10, 1 << 20).entries.len(), 2);
        // Id 2 expires: it is aborting, but not aborted before its tombstone is durable, and a
        // late acknowledgement no longer commits it.
        assert_eq!(l.abort_expired(now), vec![2]);
        assert_eq!(records.try_recv(), Ok(Record::Tombstone { id: 2 }));
        let state = reply(&l, 1, 2);
        l.on_reply(0, &state, Instant::now()).ok();
        assert!(rx2.try_recv().is_err());
        assert_eq!(l.log().decided(), 1);
        l.on_persisted(None, &[2]);
        assert_eq!(rx2.try_recv(), Ok(Outcome::Aborted));
        assert_eq!(l.log().decided(), 2);
        assert_eq!(ids(&l), vec![1]);
    }

    #[test]
    fn a_recovered_log_is_durable_and_decided() {
        let mut log = Log::new(new_log_id());
        log.push(Bytes::from("a"), false);
        log.push(Bytes::new(), true);
        let l = Ledger::new(log, 1, None, &[(1, 0)]);
        assert_eq!((l.durable(), l.log().decided()), (2, 2));
        assert_eq!(ids(&l), vec![1]);
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
