//! The secondary's copy of the log: what the master shipped, in id order, exactly once.
//!
//! Requests may arrive out of order (several are in flight per secondary), so entries beyond the
//! contiguous prefix wait in a buffer until the gap fills. An id is stored once: a repeated
//! delivery (a retry after a lost reply or an injected error) is acknowledged and dropped.
//!
//! The master ships an entry while its own fsync of it is still running, so a master that loses
//! power can come back without ids a secondary holds (never committed ones: a commit waits for
//! the master's fsync), and give those ids to other messages. Every request names the master
//! process; until the secondary has reported following it, a request also lists the starts of
//! the processes after the one it follows, each with the last id it recovered. A secondary that
//! hears a new process first drops what it holds above the lowest of those ids, as a Raft
//! follower drops an uncommitted suffix in a new term; otherwise it would keep the old messages
//! where the master now has new ones.
//!
//! In failover mode master processes run on different nodes in turn, and a process may serve
//! a minority while the next master's majority never hears of it. The master then lists all the
//! starts its file records (its log's lineage), and a secondary that follows a process missing
//! from that list first drops what that process (and any other missing one it followed since
//! the last listed one) gave it: above the `recovered` it recorded when it heard each of them.
//! And in both modes a new master process makes a secondary drop every tombstone above its
//! decided frontier, with everything after it: such a tombstone was never confirmed (the
//! master that sent it answered "unknown"), and the new master may hold the entry and commit it.
//! See [`Replica::receive`].
//!
//! The replication token is the first wall, not the only one: every request is checked against
//! what this secondary knows before anything changes (see [`Refusal`]). Ids and master
//! processes are numbered from 1; an id held with one message takes no other; an id held as
//! decided and committed is never tombstoned; the decided frontier never moves back and is
//! recorded only up to what is held (see `decide`); a new master process must be a plausible
//! successor of the one followed (see [`MAX_INSTANCE_JUMP`]).

use bytes::{Bytes, BytesMut};
use replog_node::log::Log;
use replog_node::storage::record::last_term;
use replog_node::storage::Record;
use replog_proto::v1::{Decisions, Entry, MasterStart, ReplicaState, ReplicateRequest};
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Replica {
    log: Log,
    /// Entries above the contiguous prefix: id -> (payload, tombstone).
    ahead: BTreeMap<u64, (Bytes, bool)>,
    /// Random per process start, so the master notices a restart.
    instance: u64,
    /// The master process whose entries we hold (0: none heard yet).
    master: u64,
    /// Every `MasterStart` this replica's file records, in order, as `(instance, recovered)`,
    /// `master` last: the processes whose entries it took, each with the id above which it
    /// took them from that one.
    starts: Vec<(u64, u64)>,
    /// Failover mode: a new master process lists its whole lineage, and the processes we
    /// followed that it lacks are cut away (see [`Replica::receive`]).
    failover: bool,
    /// Failover mode: whether this replica may lack entries it acknowledged (see
    /// [`Replica::rejoining`]).
    rejoin: Rejoin,
    /// The current master's term as the coordinator names it (see [`Replica::note_leader`]).
    leader_term: u64,
    /// The first id of the last re-seed, if this process was re-seeded (see
    /// [`Replica::receive`]).
    reseeded: Option<u64>,
    /// A re-seed the caller has yet to make durable (see [`Replica::take_restart`]).
    restart: Option<u64>,
}

/// Whether a replica holds every entry it ever acknowledged, which is what its vote in an
/// election vouches for (see [`replog_node::failover::vouches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejoin {
    /// It does.
    Whole,
    /// It started with its log lost, created anew or cut, so it may not: it holds them all
    /// again once it holds `upto`, the end of the current master's log when it first heard it
    /// (`None`: not heard yet). That master holds every entry acknowledged with `w` >= a
    /// majority, and what this replica acknowledged with a smaller `w` may be lost anyway.
    CatchingUp { upto: Option<u64> },
}

/// How a replica moves to a new master process.
#[derive(Debug, PartialEq, Eq)]
struct Switch {
    /// Every id above this is dropped.
    keep: u64,
    /// The `MasterStart` records that say so, in order, the new process last. Replayed, they
    /// drop the ids above the lowest of them, which is `keep`.
    starts: Vec<(u64, u64)>,
}

impl Switch {
    /// The same switch for a log that holds nothing up to `base` (re-seeded there, or
    /// retention removed those ids, all decided): nothing at or below it can be dropped, and
    /// the records say so, as the files require of a start.
    fn at_least(self, base: u64) -> Switch {
        Switch {
            keep: self.keep.max(base),
            starts: self
                .starts
                .into_iter()
                .map(|(instance, recovered)| (instance, recovered.max(base)))
                .collect(),
        }
    }
}

/// Why a request was refused; nothing was changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It came from a master of another log.
    ForeignLog,
    /// A new master process recovered fewer ids than we have seen decided: it lost committed
    /// entries (a master with `FSYNC=never` after a power failure, or a damaged file). Dropping
    /// them here would unshow what clients saw, so this secondary refuses until someone looks.
    MasterLostDecided { recovered: u64, decided: u64 },
    /// Failover mode: we follow master process `follows`, which the new master's lineage lacks,
    /// so only ids up to `cut` are surely the same in its log; but we hold ids up to `decided`
    /// as decided. Dropping them would unshow what clients saw, so this secondary refuses.
    OffLineage {
        follows: u64,
        cut: u64,
        decided: u64,
    },
    /// It came from an earlier master process than one already heard (a request still in
    /// flight from a process that has since restarted).
    StaleMaster { instance: u64, ours: u64 },
    /// A new master process did not list the starts since the one we follow.
    MissingStarts { instance: u64, ours: u64 },
    /// An entry or a tombstone names id 0: ids start at 1.
    ZeroId,
    /// It names master process 0: a master numbers its processes from 1 (each start records
    /// one in its `MasterStart`), so no master sends 0.
    ZeroInstance,
    /// The entries are not in ascending id order (the master ships every batch in id order).
    Unordered { id: u64 },
    /// A tombstone for an id this secondary holds as decided and committed: it may already be
    /// shown, and a list never loses an entry it showed.
    Committed { id: u64 },
    /// An entry at an id held with another message: the master gives an id one message (a
    /// restarted master that gave it another first makes us drop it, see the module doc).
    Divergent { id: u64 },
    /// A master process more than [`MAX_INSTANCE_JUMP`] above the one we follow, or one whose
    /// starts since that one are not in ascending order with its own start last.
    ImplausibleInstance { instance: u64, ours: u64 },
}

/// How far above the master process it follows a secondary believes a new one. A master
/// numbers each start one above both its file's last and the highest process any secondary
/// follows, so a real master is a few above the one we follow (more only after as many restarts
/// while we were not listening): this many is more than any crash loop makes. Beyond it (2^63,
/// say) the request did not come from this log's master: following it would refuse the real one
/// as stale, and push the numbers every later master takes towards overflow.
/// A secondary that follows none yet holds nothing and has no number to compare with: there
/// only the starts' consistency is checked.
pub const MAX_INSTANCE_JUMP: u64 = 1 << 16;

impl Refusal {
    /// The `reason` label of `replog_replication_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ForeignLog => "foreign_log",
            Self::MasterLostDecided { .. } => "master_lost_decided",
            Self::OffLineage { .. } => "off_lineage",
            Self::StaleMaster { .. } => "stale_master",
            Self::MissingStarts { .. } => "missing_starts",
            Self::ZeroId => "zero_id",
            Self::ZeroInstance => "zero_instance",
            Self::Unordered { .. } => "unordered",
            Self::Committed { .. } => "tombstone_of_committed",
            Self::Divergent { .. } => "divergent_entry",
            Self::ImplausibleInstance { .. } => "implausible_instance",
        }
    }

    /// Whether the request is wrong in itself (gRPC `InvalidArgument`), rather than at odds
    /// with what this secondary knows (`FailedPrecondition`).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::ZeroId | Self::ZeroInstance | Self::Unordered { .. }
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ForeignLog => f.write_str("the master's log has another identity"),
            Self::MasterLostDecided { recovered, decided } => write!(
                f,
                "the master restarted with ids up to {recovered}, but this secondary holds ids \
                 up to {decided} as decided: the master lost committed entries"
            ),
            Self::OffLineage {
                follows,
                cut,
                decided,
            } => write!(
                f,
                "this secondary follows master process {follows}, which the new master's log \
                 does not descend from: only ids up to {cut} are the same there, but ids up to \
                 {decided} are decided here"
            ),
            Self::StaleMaster { instance, ours } => write!(
                f,
                "the request comes from master process {instance}, but process {ours} has \
                 already been heard"
            ),
            Self::MissingStarts { instance, ours } => write!(
                f,
                "master process {instance} did not list the starts since process {ours}"
            ),
            Self::ZeroId => f.write_str("id 0 named: ids start at 1"),
            Self::ZeroInstance => {
                f.write_str("master process 0 named: master processes are numbered from 1")
            }
            Self::Unordered { id } => write!(f, "entry {id} is out of id order"),
            Self::Committed { id } => write!(
                f,
                "id {id} is decided and committed here: it cannot become a tombstone"
            ),
            Self::Divergent { id } => write!(
                f,
                "id {id} is held here with another message: an id has one message"
            ),
            Self::ImplausibleInstance { instance, ours } => write!(
                f,
                "master process {instance} is not a plausible successor of process {ours} \
                 (more than {MAX_INSTANCE_JUMP} above it, or its starts since are not in \
                 ascending order with its own last)"
            ),
        }
    }
}

impl Replica {
    pub fn new(log: Log) -> Self {
        Self {
            log,
            ahead: BTreeMap::new(),
            instance: rand::random(),
            master: 0,
            starts: Vec::new(),
            failover: false,
            rejoin: Rejoin::Whole,
            leader_term: 0,
            reseeded: None,
            restart: None,
        }
    }

    /// Failover mode: this replica's log may lack entries it acknowledged before (it started
    /// with its log lost, created anew or cut), so it does not vouch for anyone in an election
    /// until it has caught up with the master (see [`Replica::rejoining`]).
    pub fn rejoining(mut self, rejoining: bool) -> Self {
        self.rejoin = match rejoining {
            true => Rejoin::CatchingUp { upto: None },
            false => Rejoin::Whole,
        };
        self
    }

    /// Whether this replica may still lack entries it acknowledged: it started so, and has not
    /// yet held the end of the current master's log as that master's first request said it.
    pub fn is_rejoining(&self) -> bool {
        self.rejoin != Rejoin::Whole
    }

    /// The term of the master the coordinator names now. A request of an earlier master
    /// process does not say how far to catch up: a deposed master that wakes up may lack what
    /// the current one holds.
    pub fn note_leader(&mut self, term: u64) {
        self.leader_term = self.leader_term.max(term);
    }

    /// The master process whose entries the recovered log holds (see [`Record::MasterStart`]),
    /// when the file's other starts are not known: it counts as one that kept nothing of what
    /// came before it, which cuts the most should the next master not list it (failover mode).
    pub fn with_master(mut self, instance: u64) -> Self {
        self.master = instance;
        self.starts = match instance {
            0 => Vec::new(),
            _ => vec![(instance, 0)],
        };
        self
    }

    /// The `MasterStart` records of the recovered log, in order, as `(instance, recovered)`
    /// ([`replog_node::storage::LogFile::master_starts`]): it follows the last.
    pub fn with_starts(mut self, starts: &[(u64, u64)]) -> Self {
        self.master = starts.last().map_or(0, |&(instance, _)| instance);
        self.starts = starts.to_vec();
        self
    }

    /// Failover mode (see the module's doc), or not.
    pub fn in_failover(mut self, failover: bool) -> Self {
        self.failover = failover;
        self
    }

    /// The master processes this replica took entries from, as its file records them.
    pub fn starts(&self) -> &[(u64, u64)] {
        &self.starts
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Lets the oldest decided payloads go down to `budget` bytes ([`Log::evict`]): everything
    /// held must be in the log's files, where they are read back from.
    pub fn evict(&mut self, budget: usize) {
        self.log.evict(self.log.last_id(), budget);
    }

    /// Forgets the ids below `first_id`, whose segments retention removed.
    pub fn forget_before(&mut self, first_id: u64) {
        self.log.forget_before(first_id);
    }

    /// The id this replica's log was last re-seeded at, if it was since it started.
    pub fn reseeded(&self) -> Option<u64> {
        self.reseeded
    }

    /// The id the log's files must start again at before the records of the last
    /// [`Replica::receive`] are written, if it re-seeded this replica (at most once per call).
    pub fn take_restart(&mut self) -> Option<u64> {
        self.restart.take()
    }

    /// The master process whose entries we hold (0: none heard yet).
    pub fn master(&self) -> u64 {
        self.master
    }

    /// The master process that wrote the last id held (see [`last_term`]): what the election
    /// compares, where [`Replica::master`] may already name a process whose ids are still on
    /// their way.
    pub fn last_term(&self) -> u64 {
        last_term(&self.own_starts(), self.log.last_id())
    }

    pub fn state(&self) -> ReplicaState {
        ReplicaState {
            log_id: self.log.log_id().to_owned(),
            instance: self.instance,
            held: self.log.last_id(),
            decided: self.log.decided(),
            master_instance: self.master,
            last_term: self.last_term(),
            rejoining: self.is_rejoining(),
        }
    }

    /// Applies one replication request. Returns the records that make the change durable (to
    /// be written before the answer), or why it was refused and changes nothing.
    ///
    /// A request of a new master process first drops every id that may differ in its log
    /// (see `Replica::follow`): above the lowest `recovered` among the starts it lists after
    /// the process we follow; in failover mode, if it does not list that one, also above what
    /// we kept when we heard it (and each unlisted one before it); and in both modes from the
    /// first tombstone above our decided frontier on. Never a decided id: such a request is
    /// refused instead.
    ///
    /// A master whose retention removed ids this replica lacks (its `first_id` is above what
    /// we hold after that, plus one) re-seeds it: the log starts again, empty, at the master's
    /// first retained id, and the master's entries from there fill it. The ids below were all
    /// decided at the master; we could not get them anywhere, and a gap would be a lie. The
    /// caller restarts the files there first ([`Replica::take_restart`]).
    pub fn receive(&mut self, request: ReplicateRequest) -> Result<Vec<Record>, Refusal> {
        // Every check comes before the first change, so a refused request changes nothing.
        let adopt = self.admit(&request.log_id)?;
        let decided = match adopt {
            true => 0,
            false => self.log.decided(),
        };
        let switch = self.follow(adopt, decided, request.master_instance, &request.starts)?;
        // What survives the switch to a new master process (nothing, for a log adopted anew).
        let keep = match adopt {
            true => 0,
            false => switch.as_ref().map_or(u64::MAX, |s| s.keep),
        };
        self.check(&request, keep, decided)?;
        let held = self.log.last_id().min(keep);
        let reseed = (request.first_id > held + 1).then_some(request.first_id);
        let mut records = Vec::new();
        if adopt {
            // Nothing held yet: this replica belongs to whichever master reaches it first.
            self.log = self.log.renamed_empty(request.log_id.clone());
            self.master = 0;
            self.starts.clear();
            if reseed.is_none() {
                // A re-seed names the identity as it starts the files again.
                records.push(Record::Meta {
                    log_id: request.log_id,
                });
            }
        }
        let new_master = adopt || switch.is_some();
        if let Some(first_id) = reseed {
            self.reseed(first_id);
        }
        if let Some(switch) = switch {
            let base = self.log.first_id() - 1;
            self.switch_master(request.master_instance, switch.at_least(base), &mut records);
        }
        let (instance, master_end) = (request.master_instance, request.last_id);
        let master_decided = request.decisions.as_ref().map_or(0, |d| d.decided_upto);
        self.store(request.entries, &mut records);
        if let Some(decisions) = &request.decisions {
            self.decide(decisions, &mut records);
        }
        self.catch_up(new_master, instance, master_end.max(master_decided));
        Ok(records)
    }

    /// Starts the log again, empty, at `first_id` (see [`Replica::receive`]).
    fn reseed(&mut self, first_id: u64) {
        tracing::warn!(
            held = self.log.last_id(),
            first_id,
            "the master no longer holds ids this secondary lacks (its retention removed them): \
             re-seeded from the master's first retained id"
        );
        self.log = self.log.restart_at(first_id);
        self.ahead = self.ahead.split_off(&first_id);
        self.reseeded = Some(first_id);
        self.restart = Some(first_id);
    }

    /// Rejoining: the first request of the current master (and of each later master process)
    /// says how far to catch up; holding that much, the replica is whole again.
    fn catch_up(&mut self, new_master: bool, instance: u64, master_end: u64) {
        let Rejoin::CatchingUp { upto } = &mut self.rejoin else {
            return;
        };
        if instance >= self.leader_term && (new_master || upto.is_none()) {
            *upto = Some(upto.unwrap_or(0).max(master_end));
        }
        if upto.is_some_and(|upto| self.log.last_id() >= upto) {
            self.rejoin = Rejoin::Whole;
        }
    }

    /// Checks the master's log identity: `Ok(true)` if this replica, holding nothing yet, is to
    /// adopt it.
    fn admit(&self, log_id: &str) -> Result<bool, Refusal> {
        if self.log.log_id() == log_id {
            Ok(false)
        } else if self.log.last_id() == 0 && self.ahead.is_empty() {
            Ok(true)
        } else {
            Err(Refusal::ForeignLog)
        }
    }

    /// Checks the request's entries and tombstones against what we hold, counting only ids up
    /// to `keep` (the rest is dropped before they are stored) and ids up to `decided` as
    /// decided.
    fn check(&self, request: &ReplicateRequest, keep: u64, decided: u64) -> Result<(), Refusal> {
        let mut previous = 0;
        for entry in &request.entries {
            let id = entry.id;
            if id == 0 {
                return Err(Refusal::ZeroId);
            }
            if id <= previous {
                return Err(Refusal::Unordered { id });
            }
            previous = id;
            if self.aborted(id, keep) {
                // The master's message that raced its own abort, or the tombstone again: the
                // id stays aborted either way.
                continue;
            }
            if entry.tombstone {
                // Aborting an undecided id, held or not, is the master's to do; a decided one
                // that is no tombstone here was committed.
                if id <= decided {
                    return Err(Refusal::Committed { id });
                }
            } else if self
                .held_message(id, keep)
                .is_some_and(|held| *held != entry.message)
            {
                return Err(Refusal::Divergent { id });
            }
        }
        if let Some(decisions) = &request.decisions {
            for &id in &decisions.tombstones {
                if id == 0 {
                    return Err(Refusal::ZeroId);
                }
                if id <= decided && !self.aborted(id, keep) {
                    return Err(Refusal::Committed { id });
                }
            }
        }
        Ok(())
    }

    /// Whether `id` is a tombstone here and stays one after a cut at `keep`.
    fn aborted(&self, id: u64, keep: u64) -> bool {
        id <= keep && (self.log.is_tombstone(id) || self.ahead.get(&id).is_some_and(|&(_, t)| t))
    }

    /// The message held at `id`, in the log or buffered beyond a gap, if it survives a cut at
    /// `keep`.
    fn held_message(&self, id: u64, keep: u64) -> Option<&Bytes> {
        if id > keep {
            None
        } else if id <= self.log.last_id() {
            self.log.get(id)
        } else {
            self.ahead.get(&id).map(|(message, _)| message)
        }
    }

    /// Drops what we hold above `switch.keep` and follows master process `instance` from now
    /// on.
    fn switch_master(&mut self, instance: u64, switch: Switch, records: &mut Vec<Record>) {
        let Switch { keep, starts } = switch;
        let held = self.log.last_id();
        if held > keep {
            tracing::warn!(
                held,
                keep,
                from = self.master,
                to = instance,
                "a new master process may hold other messages above {keep}, or none: dropping ours"
            );
        }
        self.log.truncate(keep);
        self.ahead.split_off(&keep.saturating_add(1));
        self.master = instance;
        for (instance, recovered) in starts {
            self.starts.push((instance, recovered));
            records.push(Record::MasterStart {
                instance,
                recovered,
            });
        }
    }

    /// Whether we take a request of master process `instance` listing `starts`, with ids up to
    /// `decided` decided (and, if `adopt`, nothing held): `Some` if we must first switch to it
    /// (drop what may differ and record that), `None` if we already follow it.
    ///
    /// The starts after the process we follow say where each later one may have given ids
    /// again (the lowest `recovered` among them). In failover mode the master lists its whole
    /// lineage; a process we followed that it lacks served where the new master never heard
    /// it, so what it gave us goes too: ids above the `recovered` we recorded for it, for each
    /// such process back to the last one listed, whose own rule then applies. And a tombstone
    /// above our decided frontier was never confirmed, so it goes with everything after it.
    fn follow(
        &self,
        adopt: bool,
        decided: u64,
        instance: u64,
        starts: &[MasterStart],
    ) -> Result<Option<Switch>, Refusal> {
        let ours = if adopt { 0 } else { self.master };
        let Some(listed) = check_follow(ours, instance, starts)? else {
            return Ok(None);
        };
        // What the master's lineage lets us keep.
        let mut lineage = listed;
        let mut follows_listed = true;
        if self.failover && !adopt {
            let (cut, base) = self.unlisted_cut(starts);
            follows_listed = base == ours;
            if !follows_listed {
                let rule = MasterStart::kept_after(starts, base, instance)
                    .ok_or(Refusal::MissingStarts { instance, ours })?;
                lineage = cut.min(rule);
            }
        }
        if lineage < decided {
            return Err(match follows_listed {
                true => Refusal::MasterLostDecided {
                    recovered: lineage,
                    decided,
                },
                false => Refusal::OffLineage {
                    follows: ours,
                    cut: lineage,
                    decided,
                },
            });
        }
        let keep = match self.first_tombstone_above(decided) {
            Some(tombstone) if !adopt => lineage.min(tombstone - 1),
            _ => lineage,
        };
        Ok(Some(Switch {
            keep,
            starts: self.records_for(ours, instance, starts, lineage, keep),
        }))
    }

    /// Failover mode: walking back from the process we follow, the lowest `recovered` we
    /// recorded for processes `starts` does not list (`u64::MAX` if it lists ours), and the
    /// last process it does list (0: none).
    fn unlisted_cut(&self, starts: &[MasterStart]) -> (u64, u64) {
        let listed = |instance| starts.iter().any(|s| s.instance == instance);
        let mut cut = u64::MAX;
        for &(instance, recovered) in self.own_starts().iter().rev() {
            if listed(instance) {
                return (cut, instance);
            }
            cut = cut.min(recovered);
        }
        (cut, 0)
    }

    /// Our starts, the process we follow last (one we know only by number counts as having
    /// kept nothing before it).
    fn own_starts(&self) -> Vec<(u64, u64)> {
        let mut own = self.starts.clone();
        if self.master > 0 && own.last().map(|&(instance, _)| instance) != Some(self.master) {
            own.push((self.master, 0));
        }
        own
    }

    /// The lowest tombstone above `decided`, in the log or buffered beyond a gap.
    fn first_tombstone_above(&self, decided: u64) -> Option<u64> {
        let logged = self.log.tombstones_in(decided, u64::MAX).next();
        let buffered = self
            .ahead
            .iter()
            .find(|(_, &(_, tombstone))| tombstone)
            .map(|(&id, _)| id);
        logged
            .into_iter()
            .chain(buffered)
            .filter(|&id| id > decided)
            .min()
    }

    /// The `MasterStart` records of a switch from process `ours` to `instance` that keeps ids
    /// up to `keep`, of which the master's lineage alone would keep those up to `lineage`.
    /// Replayed, they drop what the switch drops: every id above the lowest `recovered` among
    /// them, which is `keep`.
    ///
    /// In static mode one record: the new process with `keep`. In failover mode this node may
    /// lead later, and the `recovered` of the starts it lists then tell a secondary what it may
    /// keep, so they are what the new master lists: its starts between the two processes (a
    /// secondary that follows one of them must find it listed), and its own start with its own
    /// `recovered`, unless our lineage cut is lower than all of these (we followed processes
    /// the new master lacks, whose ids must not pass for its own): then with the cut. A lower
    /// `keep` (undecided tombstones) is said by a start of `ours` again first, which drops the
    /// ids and tells a secondary of `ours` or a later process nothing it need act on.
    fn records_for(
        &self,
        ours: u64,
        instance: u64,
        starts: &[MasterStart],
        lineage: u64,
        keep: u64,
    ) -> Vec<(u64, u64)> {
        if !self.failover {
            return vec![(instance, keep)];
        }
        let between = starts
            .iter()
            .filter(|s| s.instance > ours && s.instance <= instance);
        let lowest = between.clone().map(|s| s.recovered).min().unwrap_or(0);
        let own = match starts.iter().find(|s| s.instance == instance) {
            Some(start) if lineage >= lowest => start.recovered,
            _ => lineage,
        };
        // Either way the lowest of these records is `lineage`.
        let mut records = Vec::new();
        let mut own = own;
        if keep < lineage {
            match ours {
                // No earlier process of ours to name: the new one says it.
                0 => own = own.min(keep),
                _ => records.push((ours, keep)),
            }
        }
        records.extend(
            between
                .filter(|s| s.instance < instance)
                .map(|s| (s.instance, s.recovered)),
        );
        records.push((instance, own));
        records
    }

    /// Stores entries: each id once, in order, buffering those beyond a gap.
    fn store(&mut self, entries: Vec<Entry>, records: &mut Vec<Record>) {
        // Decoded payloads are slices of the request's receive buffer: kept as they are, each
        // 100-byte message would pin that whole buffer (8 KiB or more) for the life of the log.
        // The new ones are copied into one allocation of exactly their size instead.
        let held = self.log.last_id();
        let new_bytes = entries
            .iter()
            .filter(|e| e.id > held && !e.tombstone)
            .map(|e| e.message.len())
            .sum();
        let mut arena = BytesMut::with_capacity(new_bytes);
        for entry in entries {
            if entry.id <= self.log.last_id() {
                if entry.tombstone && !self.log.is_tombstone(entry.id) {
                    self.log.tombstone(entry.id);
                    records.push(Record::Tombstone { id: entry.id });
                }
                continue;
            }
            let message = if entry.tombstone {
                Bytes::new()
            } else {
                arena.extend_from_slice(&entry.message);
                arena.split().freeze()
            };
            if entry.id == self.log.last_id() + 1 {
                // In order, the common case: straight into the log.
                self.push(message, entry.tombstone, records);
            } else {
                self.ahead
                    .entry(entry.id)
                    .or_insert((message, entry.tombstone));
            }
        }
        while let Some((message, tombstone)) = self.ahead.remove(&(self.log.last_id() + 1)) {
            self.push(message, tombstone, records);
        }
    }

    fn push(&mut self, message: Bytes, tombstone: bool, records: &mut Vec<Record>) {
        let id = self.log.push(message, tombstone);
        records.push(Record::Entry {
            id,
            message: self.log.get(id).cloned().unwrap_or_default(),
            tombstone: self.log.is_tombstone(id),
        });
    }

    /// Applies the master's decisions (checked by `check`). The frontier moves only if the
    /// tombstones cover everything between our frontier and the new one, and never back.
    ///
    /// It moves at most to what we hold contiguously, whatever `decided_upto` says. The master
    /// legitimately decides beyond that (a lagging secondary, entries still on their way), but
    /// a frontier recorded beyond what we hold would show each later entry the moment it
    /// arrives, before the master has decided it: a forged `decided_upto` of 2^64-1 would show
    /// messages later answered 500. Refusing such a frontier would refuse every lagging
    /// catch-up, so it is clamped instead: what lies beyond is remembered only as its
    /// tombstones, and every request that ships the missing entries carries the master's
    /// decisions again (`since` is the frontier we report), which moves ours over them. (A
    /// frontier within what we hold cannot be told from the master's own: there the token is
    /// the only wall.)
    fn decide(&mut self, decisions: &Decisions, records: &mut Vec<Record>) {
        for &id in &decisions.tombstones {
            if self.log.is_tombstone(id) {
                continue;
            }
            self.log.tombstone(id);
            records.push(Record::Tombstone { id });
            if let Some(slot) = self.ahead.get_mut(&id) {
                *slot = (Bytes::new(), true);
            }
        }
        let upto = decisions.decided_upto.min(self.log.last_id());
        if decisions.since <= self.log.decided() && upto > self.log.decided() {
            self.log.set_decided(upto);
            records.push(Record::Decided { upto });
        }
    }
}

/// Whether a replica that follows master process `ours` takes a request of process
/// `instance` listing `starts`: `Some(recovered)` if it must first drop every id above
/// `recovered` (the lowest among the starts after `ours`) and follow `instance`, `None` if it
/// already follows it.
fn check_follow(ours: u64, instance: u64, starts: &[MasterStart]) -> Result<Option<u64>, Refusal> {
    if instance == 0 {
        return Err(Refusal::ZeroInstance);
    }
    if instance == ours {
        return Ok(None);
    }
    if instance < ours {
        return Err(Refusal::StaleMaster { instance, ours });
    }
    if ours > 0 && instance - ours > MAX_INSTANCE_JUMP {
        return Err(Refusal::ImplausibleInstance { instance, ours });
    }
    let recovered = MasterStart::kept_after(starts, ours, instance)
        .ok_or(Refusal::MissingStarts { instance, ours })?;
    // The master lists the starts since `ours` as its file records them, in ascending order,
    // its own last. (Numbers may be skipped: a master numbers itself above every process a
    // secondary follows.)
    let ascending = starts
        .iter()
        .map(|s| s.instance)
        .filter(|&i| i > ours && i <= instance)
        .try_fold(ours, |last, next| (next > last).then_some(next));
    if ascending != Some(instance) {
        return Err(Refusal::ImplausibleInstance { instance, ours });
    }
    Ok(Some(recovered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, text: &str) -> Entry {
        Entry {
            id,
            message: Bytes::from(text.to_owned()),
            tombstone: false,
        }
    }

    fn shown(r: &Replica) -> Vec<u64> {
        r.log()
            .try_visible(1, usize::MAX)
            .expect("page")
            .iter()
            .map(|m| m.id)
            .collect()
    }

    fn decided(upto: u64, since: u64, tombstones: Vec<u64>) -> Option<Decisions> {
        Some(Decisions {
            decided_upto: upto,
            tombstones,
            since,
        })
    }

    /// A request of log "L" from master process 1, its first: a fresh replica follows it from
    /// the start it lists.
    fn request(entries: Vec<Entry>, decisions: Option<Decisions>) -> ReplicateRequest {
        let last_id = entries.last().map_or(0, |e| e.id);
        ReplicateRequest {
            last_id,
            log_id: "L".into(),
            entries,
            decisions,
            master_instance: 1,
            starts: vec![MasterStart {
                instance: 1,
                recovered: 0,
            }],
            quiet: false,
            first_id: 0,
        }
    }

    /// Applies a request and replays the records it returned into a fresh log, which must then
    /// show the same as the replica: what is written is all that is needed to recover.
    fn apply(r: &mut Replica, replayed: &mut Log, req: ReplicateRequest) {
        for record in r.receive(req).expect("same log") {
            match record {
                Record::Meta { log_id } => *replayed = Log::new(log_id),
                Record::Entry {
                    message, tombstone, ..
                } => {
                    replayed.push(message, tombstone);
                }
                Record::Tombstone { id } => replayed.tombstone(id),
                Record::Decided { upto } => replayed.set_decided(upto),
                Record::MasterStart { recovered, .. } => replayed.truncate(recovered),
            }
        }
        assert_eq!(
            replayed.visible(1, usize::MAX),
            r.log().try_visible(1, usize::MAX).expect("page")
        );
        assert_eq!(replayed.last_id(), r.log().last_id());
    }

    fn entries(ids: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        ids.map(|id| entry(id, &format!("m{id}"))).collect()
    }

    /// `entries` from master process `instance` listing `starts`, whose log ends at `last_id`.
    fn shipping(
        instance: u64,
        starts: &[(u64, u64)],
        entries: Vec<Entry>,
        last_id: u64,
    ) -> ReplicateRequest {
        ReplicateRequest {
            last_id,
            ..from_master(instance, starts, request(entries, None))
        }
    }

    #[test]
    fn a_rejoining_replica_is_whole_once_it_holds_the_log_the_master_had_when_first_heard() {
        assert!(!Replica::new(Log::default()).state().rejoining);
        let mut r = Replica::new(Log::default())
            .in_failover(true)
            .rejoining(true);
        let mut replayed = Log::default();
        assert!(r.state().rejoining);
        apply(
            &mut r,
            &mut replayed,
            shipping(1, &[(1, 0)], entries(1..=2), 4),
        );
        assert!(r.state().rejoining, "holds 2 of the master's 4");
        // The master's log grew meanwhile; what it held when first heard is what counts.
        apply(&mut r, &mut replayed, shipping(1, &[], entries(3..=4), 9));
        assert!(!r.state().rejoining);
        assert_eq!(r.state().held, 4);
    }

    #[test]
    fn a_deposed_master_does_not_say_how_far_a_rejoining_replica_must_catch_up() {
        let mut r = Replica::new(Log::default())
            .in_failover(true)
            .rejoining(true);
        let mut replayed = Log::default();
        r.note_leader(2);
        // Process 1 was deposed by 2, which may hold more than 1 ever had.
        apply(
            &mut r,
            &mut replayed,
            shipping(1, &[(1, 0)], entries(1..=2), 2),
        );
        assert!(r.state().rejoining);
        let lineage = [(1, 0), (2, 2)];
        apply(
            &mut r,
            &mut replayed,
            shipping(2, &lineage, entries(3..=3), 5),
        );
        assert!(r.state().rejoining, "holds 3 of the current master's 5");
        apply(&mut r, &mut replayed, shipping(2, &[], entries(4..=5), 5));
        assert!(!r.state().rejoining);
    }

    #[test]
    fn a_new_master_process_while_catching_up_raises_how_far_to_catch_up() {
        let mut r = Replica::new(Log::default())
            .in_failover(true)
            .rejoining(true);
        let mut replayed = Log::default();
        apply(
            &mut r,
            &mut replayed,
            shipping(1, &[(1, 0)], entries(1..=1), 3),
        );
        let lineage = [(1, 0), (2, 3)];
        apply(
            &mut r,
            &mut replayed,
            shipping(2, &lineage, entries(2..=3), 6),
        );
        assert!(r.state().rejoining, "holds 3 of process 2's 6");
        apply(&mut r, &mut replayed, shipping(2, &[], entries(4..=6), 6));
        assert!(!r.state().rejoining);
    }

    #[test]
    fn out_of_order_and_repeated_deliveries_store_each_id_once() {
        let (mut r, mut replayed) = (Replica::new(Log::default()), Log::default());
        apply(
            &mut r,
            &mut replayed,
            request(vec![entry(3, "c"), entry(4, "d")], None),
        );
        assert_eq!(r.state().held, 0);
        apply(
            &mut r,
            &mut replayed,
            request(vec![entry(1, "a"), entry(2, "b")], None),
        );
        assert_eq!(r.state().held, 4);
        let again = request(vec![entry(2, "b"), entry(3, "c")], None);
        assert_eq!(
            r.receive(again),
            Ok(vec![]),
            "a repeated delivery writes nothing"
        );
        apply(
            &mut r,
            &mut replayed,
            request(vec![], decided(4, 0, vec![])),
        );
        assert_eq!(texts(&r), ["a", "b", "c", "d"]);
    }

    #[test]
    fn never_shows_undecided_or_aborted_ids() {
        let (mut r, mut replayed) = (Replica::new(Log::default()), Log::default());
        let entries = vec![entry(1, "a"), entry(2, "aborted"), entry(3, "c")];
        apply(&mut r, &mut replayed, request(entries, None));
        assert!(shown(&r).is_empty());
        apply(
            &mut r,
            &mut replayed,
            request(vec![], decided(3, 0, vec![2])),
        );
        assert_eq!(shown(&r), vec![1, 3]);
    }

    #[test]
    fn a_frontier_without_its_tombstones_is_not_taken() {
        let (mut r, mut replayed) = (Replica::new(Log::default()), Log::default());
        apply(
            &mut r,
            &mut replayed,
            request(vec![entry(1, "a"), entry(2, "b")], None),
        );
        // Built for a frontier of 1 (`since`), which ours is not: it may omit a tombstone <= 1.
        apply(
            &mut r,
            &mut replayed,
            request(vec![], decided(2, 1, vec![])),
        );
        assert!(shown(&r).is_empty());
        apply(
            &mut r,
            &mut replayed,
            request(vec![], decided(2, 0, vec![1])),
        );
        assert_eq!(shown(&r), vec![2]);
    }

    #[test]
    fn refuses_another_log_identity() {
        let (mut r, mut replayed) = (Replica::new(Log::default()), Log::default());
        apply(&mut r, &mut replayed, request(vec![entry(1, "a")], None));
        let mut other = request(vec![entry(2, "b")], None);
        other.log_id = "L2".into();
        assert_eq!(r.receive(other), Err(Refusal::ForeignLog));
        assert_eq!(r.state().log_id, "L");
        assert_eq!(r.state().held, 1);
    }

    /// `req` from master process `instance`, listing the starts `(instance, recovered)`.
    fn from_master(
        instance: u64,
        starts: &[(u64, u64)],
        req: ReplicateRequest,
    ) -> ReplicateRequest {
        let starts = starts
            .iter()
            .map(|&(instance, recovered)| MasterStart {
                instance,
                recovered,
            })
            .collect();
        ReplicateRequest {
            master_instance: instance,
            starts,
            ..req
        }
    }

    #[test]
    fn a_restarted_master_makes_it_drop_the_undecided_ids_the_master_lost() {
        let (mut r, mut replayed) = (Replica::new(Log::default()), Log::default());
        let first = request(
            vec![entry(1, "a"), entry(2, "b"), entry(3, "c"), entry(5, "e")],
            decided(1, 0, vec![]),
        );
        apply(&mut r, &mut replayed, from_master(1, &[(1, 0)], first));
        assert_eq!((r.state().held, r.master()), (3, 1));
        // Process 2 recovered ids up to 2 (3 and 5 were shipped but never synced) and lost power
        // too; process 3 recovered 3 of its own. We never heard 2: everything above 2 goes, and
        // process 3's id 3 takes the place of the old one.
        let again = request(vec![entry(3, "new c")], decided(3, 1, vec![]));
        apply(
            &mut r,
            &mut replayed,
            from_master(3, &[(2, 2), (3, 3)], again),
        );
        assert_eq!((r.state().held, r.master()), (3, 3));
        assert_eq!(texts(&r), ["a", "b", "new c"]);
        // Id 4 arrives: the old 5 must not follow it from the buffer.
        apply(
            &mut r,
            &mut replayed,
            from_master(3, &[], request(vec![entry(4, "d")], None)),
        );
        assert_eq!(r.state().held, 4);
        // The same process again drops nothing.
        apply(
            &mut r,
            &mut replayed,
            from_master(3, &[], request(vec![], None)),
        );
        assert_eq!(r.state().held, 4);
    }

    #[test]
    fn refuses_an_earlier_master_process_and_one_that_lost_decided_ids() {
        let (mut r, mut replayed) = (Replica::new(Log::default()), Log::default());
        let first = request(vec![entry(1, "a"), entry(2, "b")], decided(2, 0, vec![]));
        apply(&mut r, &mut replayed, from_master(3, &[(3, 0)], first));
        let stale = from_master(2, &[(2, 0)], request(vec![entry(3, "x")], None));
        assert_eq!(
            r.receive(stale),
            Err(Refusal::StaleMaster {
                instance: 2,
                ours: 3
            })
        );
        let missing = from_master(4, &[], request(vec![], None));
        assert_eq!(
            r.receive(missing),
            Err(Refusal::MissingStarts {
                instance: 4,
                ours: 3
            })
        );
        let lost = from_master(4, &[(4, 1)], request(vec![], None));
        assert_eq!(
            r.receive(lost),
            Err(Refusal::MasterLostDecided {
                recovered: 1,
                decided: 2
            })
        );
        assert_eq!((r.state().held, r.master(), shown(&r)), (2, 3, vec![1, 2]));
    }

    /// Asserts `req` is refused with `why` and changes nothing we show, hold or report.
    fn refused(r: &mut Replica, req: ReplicateRequest, why: Refusal) {
        let before = (r.state(), shown(r), r.ahead.clone());
        assert_eq!(r.receive(req), Err(why));
        assert_eq!((r.state(), shown(r), r.ahead.clone()), before);
    }

    fn tombstone(id: u64) -> Entry {
        Entry {
            id,
            message: Bytes::new(),
            tombstone: true,
        }
    }

    /// Ids 1..=3 held, 1 and 2 decided and committed, 3 undecided.
    fn holding_three() -> (Replica, Log) {
        let (mut r, mut replayed) = (Replica::new(Log::default()), Log::default());
        let first = request(
            vec![entry(1, "a"), entry(2, "b"), entry(3, "c")],
            decided(2, 0, vec![]),
        );
        apply(&mut r, &mut replayed, from_master(1, &[(1, 0)], first));
        (r, replayed)
    }

    #[test]
    fn refuses_id_zero() {
        let (mut r, _) = holding_three();
        let zero = Entry {
            id: 0,
            message: Bytes::new(),
            tombstone: true,
        };
        refused(&mut r, request(vec![zero], None), Refusal::ZeroId);
        refused(&mut r, request(vec![entry(0, "x")], None), Refusal::ZeroId);
        let in_decisions = request(vec![entry(4, "d")], decided(2, 2, vec![0]));
        refused(&mut r, in_decisions, Refusal::ZeroId);
        assert!(Refusal::ZeroId.is_malformed());
    }

    #[test]
    fn refuses_master_process_zero() {
        let zero = |req: ReplicateRequest| ReplicateRequest {
            master_instance: 0,
            starts: vec![],
            ..req
        };
        // Nothing held yet: not even the log identity is adopted.
        let mut fresh = Replica::new(Log::default());
        refused(
            &mut fresh,
            zero(request(vec![entry(1, "a")], None)),
            Refusal::ZeroInstance,
        );
        assert_eq!(fresh.state().log_id, "");
        let (mut r, mut replayed) = holding_three();
        refused(
            &mut r,
            zero(request(vec![entry(4, "d")], decided(4, 2, vec![3]))),
            Refusal::ZeroInstance,
        );
        refused(
            &mut r,
            from_master(0, &[(0, 0)], request(vec![], decided(3, 2, vec![]))),
            Refusal::ZeroInstance,
        );
        assert!(Refusal::ZeroInstance.is_malformed());
        assert_eq!(Refusal::ZeroInstance.reason(), "zero_instance");
        // The master it follows is still taken.
        apply(&mut r, &mut replayed, request(vec![entry(4, "d")], None));
        assert_eq!((r.master(), r.state().held), (1, 4));
    }

    #[test]
    fn refuses_entries_out_of_id_order() {
        let (mut r, _) = holding_three();
        let unordered = request(vec![entry(5, "e"), entry(4, "d")], None);
        refused(&mut r, unordered, Refusal::Unordered { id: 4 });
        let twice = request(vec![entry(4, "d"), entry(4, "D")], None);
        refused(&mut r, twice, Refusal::Unordered { id: 4 });
    }

    #[test]
    fn never_tombstones_a_committed_id() {
        let (mut r, mut replayed) = holding_three();
        refused(
            &mut r,
            request(vec![], decided(3, 0, vec![2])),
            Refusal::Committed { id: 2 },
        );
        refused(
            &mut r,
            request(vec![tombstone(1)], None),
            Refusal::Committed { id: 1 },
        );
        // An undecided id, held or not yet, may still be aborted, and a decided tombstone may
        // be named again.
        apply(
            &mut r,
            &mut replayed,
            request(vec![tombstone(3)], decided(4, 2, vec![3, 4])),
        );
        apply(
            &mut r,
            &mut replayed,
            request(
                vec![tombstone(3), entry(4, "late")],
                decided(4, 0, vec![3, 4]),
            ),
        );
        assert_eq!(
            (r.state().held, r.state().decided, shown(&r)),
            (4, 4, vec![1, 2])
        );
    }

    #[test]
    fn refuses_another_message_at_a_held_id() {
        let (mut r, mut replayed) = holding_three();
        apply(&mut r, &mut replayed, request(vec![entry(6, "f")], None));
        refused(
            &mut r,
            request(vec![entry(2, "planted")], None),
            Refusal::Divergent { id: 2 },
        );
        refused(
            &mut r,
            request(vec![entry(3, "planted")], None),
            Refusal::Divergent { id: 3 },
        );
        refused(
            &mut r,
            request(vec![entry(4, "d"), entry(6, "planted")], None),
            Refusal::Divergent { id: 6 },
        );
        // The same messages again are a repeated delivery.
        apply(
            &mut r,
            &mut replayed,
            request(
                vec![entry(3, "c"), entry(4, "d"), entry(5, "e"), entry(6, "f")],
                None,
            ),
        );
        assert_eq!(r.state().held, 6);
    }

    #[test]
    fn records_a_frontier_only_up_to_what_it_holds() {
        let (mut r, mut replayed) = holding_three();
        apply(
            &mut r,
            &mut replayed,
            request(vec![], decided(u64::MAX, 2, vec![])),
        );
        assert_eq!(r.state().decided, 3, "clamped to what is held");
        // Id 4 arrives undecided: it must not show until the master decides it.
        apply(&mut r, &mut replayed, request(vec![entry(4, "d")], None));
        assert_eq!(shown(&r), vec![1, 2, 3]);
        // A lagging secondary: the frontier beyond what it holds moves over each batch.
        apply(
            &mut r,
            &mut replayed,
            request(vec![entry(5, "e")], decided(9, 3, vec![7])),
        );
        assert_eq!((r.state().decided, shown(&r)), (5, vec![1, 2, 3, 4, 5]));
        apply(
            &mut r,
            &mut replayed,
            request(vec![entry(6, "f"), entry(7, "g")], decided(9, 5, vec![7])),
        );
        assert_eq!((r.state().decided, shown(&r)), (7, vec![1, 2, 3, 4, 5, 6]));
        // A decision never moves the frontier back.
        apply(
            &mut r,
            &mut replayed,
            request(vec![], decided(1, 0, vec![])),
        );
        assert_eq!(r.state().decided, 7);
    }

    #[test]
    fn refuses_an_implausible_master_process() {
        let (mut r, mut replayed) = holding_three();
        let far = 1u64 << 63;
        refused(
            &mut r,
            from_master(far, &[(far, 3)], request(vec![], None)),
            Refusal::ImplausibleInstance {
                instance: far,
                ours: 1,
            },
        );
        // Within the bound, but its own start is not the last, or the starts are out of order.
        refused(
            &mut r,
            from_master(4, &[(2, 3), (3, 3)], request(vec![], None)),
            Refusal::ImplausibleInstance {
                instance: 4,
                ours: 1,
            },
        );
        refused(
            &mut r,
            from_master(4, &[(3, 3), (2, 3), (4, 3)], request(vec![], None)),
            Refusal::ImplausibleInstance {
                instance: 4,
                ours: 1,
            },
        );
        // The real master keeps replicating, and its next process is followed.
        apply(
            &mut r,
            &mut replayed,
            from_master(1, &[], request(vec![entry(4, "d")], None)),
        );
        apply(
            &mut r,
            &mut replayed,
            from_master(2, &[(1, 0), (2, 4)], request(vec![entry(5, "e")], None)),
        );
        assert_eq!((r.master(), r.state().held), (2, 5));
        // A master that numbered itself above a process we never heard of.
        apply(
            &mut r,
            &mut replayed,
            from_master(
                7,
                &[(1, 0), (2, 4), (7, 5)],
                request(vec![entry(6, "f")], None),
            ),
        );
        assert_eq!((r.master(), r.state().held), (7, 6));
    }

    /// A replica of failover mode and the log its records replay into.
    fn in_failover() -> (Replica, Log) {
        (
            Replica::new(Log::default()).in_failover(true),
            Log::default(),
        )
    }

    fn texts(r: &Replica) -> Vec<String> {
        r.log()
            .try_visible(1, usize::MAX)
            .expect("page")
            .into_iter()
            .map(|m| String::from_utf8_lossy(&m.message).into_owned())
            .collect()
    }

    /// Process 1 gave ids 1..=3 (2 decided); process 3, which served a minority, gave 4 and 5.
    fn followed_a_minority_term(r: &mut Replica, replayed: &mut Log) {
        let first = request(
            vec![entry(1, "a"), entry(2, "b"), entry(3, "c")],
            decided(2, 0, vec![]),
        );
        apply(r, replayed, from_master(1, &[(1, 0)], first));
        let minority = request(vec![entry(4, "x4"), entry(5, "x5")], None);
        apply(r, replayed, from_master(3, &[(1, 0), (3, 3)], minority));
        assert_eq!((r.master(), r.state().held), (3, 5));
        assert_eq!(r.starts(), &[(1, 0), (3, 3)]);
    }

    #[test]
    fn the_last_term_is_the_process_that_wrote_the_last_id_held_not_the_one_followed() {
        let (mut r, mut replayed) = in_failover();
        assert_eq!(r.state().last_term, 0, "nothing held");
        let first = request(vec![entry(1, "a"), entry(2, "b"), entry(3, "c")], None);
        apply(&mut r, &mut replayed, from_master(1, &[(1, 0)], first));
        assert_eq!((r.master(), r.state().last_term), (1, 1));
        // Process 2 recovered ids up to 10, of which we hold 3: we follow it at once, but the
        // last id we hold was written by process 1.
        let next = request(vec![entry(4, "d")], None);
        apply(
            &mut r,
            &mut replayed,
            from_master(2, &[(1, 0), (2, 10)], next),
        );
        assert_eq!((r.master(), r.state().held), (2, 4));
        assert_eq!(r.state().last_term, 1);
        let rest = (5..=11).map(|id| entry(id, "m")).collect();
        apply(
            &mut r,
            &mut replayed,
            from_master(2, &[], request(rest, None)),
        );
        assert_eq!((r.state().held, r.state().last_term), (11, 2));
    }

    #[test]
    fn in_failover_what_a_process_the_new_master_never_heard_of_gave_is_dropped() {
        let (mut r, mut replayed) = in_failover();
        followed_a_minority_term(&mut r, &mut replayed);
        // Term 4 never heard of term 3: it recovered ids up to 5 from process 1, other
        // messages than term 3's. Its first request ships only what follows.
        let next = request(vec![entry(6, "b6")], None);
        apply(
            &mut r,
            &mut replayed,
            from_master(4, &[(1, 0), (4, 5)], next),
        );
        assert_eq!((r.master(), r.state().held), (4, 3), "term 3's ids went");
        // Below the lineage cut of term 4's list (5): the start says where ours was.
        assert_eq!(r.starts(), &[(1, 0), (3, 3), (4, 3)]);
        let rest = request(
            vec![entry(4, "a4"), entry(5, "a5"), entry(6, "b6")],
            decided(6, 2, vec![]),
        );
        apply(&mut r, &mut replayed, from_master(4, &[], rest));
        assert_eq!(texts(&r), ["a", "b", "c", "a4", "a5", "b6"]);
        // A static replica takes the list as the starts after its own: it would keep term 3's
        // ids under term 4's.
        let mut r = Replica::new(Log::default());
        let mut replayed = Log::default();
        followed_a_minority_term(&mut r, &mut replayed);
        let next = request(vec![entry(6, "b6")], None);
        apply(
            &mut r,
            &mut replayed,
            from_master(4, &[(1, 0), (4, 5)], next),
        );
        assert_eq!(r.state().held, 6);
    }

    #[test]
    fn in_failover_each_unlisted_process_back_to_a_listed_one_is_cut_away() {
        let own = [(1, 0), (2, 2), (3, 4)];
        let held = |r: &mut Replica, replayed: &mut Log| {
            let entries = (1..=6).map(|id| entry(id, &format!("m{id}"))).collect();
            apply(r, replayed, from_master(3, &own, request(entries, None)));
        };
        // Neither 2 nor 3 is listed: above 2 goes. Process 1's own rule (6) cuts less.
        let (mut r, mut replayed) = in_failover();
        held(&mut r, &mut replayed);
        apply(
            &mut r,
            &mut replayed,
            from_master(5, &[(1, 0), (5, 6)], request(vec![], None)),
        );
        assert_eq!(r.state().held, 2);
        // 2 is listed: only what 3 gave goes, and 2's rule (the starts after it) is lower.
        for (recovered, held_after) in [(6, 4), (3, 3)] {
            let (mut r, mut replayed) = in_failover();
            held(&mut r, &mut replayed);
            let starts = [(1, 0), (2, 2), (5, recovered)];
            apply(
                &mut r,
                &mut replayed,
                from_master(5, &starts, request(vec![], None)),
            );
            assert_eq!(
                r.state().held,
                held_after,
                "process 5 recovered {recovered}"
            );
        }
    }

    #[test]
    fn in_failover_a_cut_below_the_decided_frontier_is_refused() {
        let (mut r, mut replayed) = in_failover();
        followed_a_minority_term(&mut r, &mut replayed);
        // Term 3 decided id 4 (so a majority held it): a master whose lineage lacks term 3
        // cannot be the next one. Refused, nothing changed.
        apply(
            &mut r,
            &mut replayed,
            from_master(3, &[], request(vec![], decided(4, 2, vec![]))),
        );
        let lacking = from_master(4, &[(1, 0), (4, 5)], request(vec![], None));
        let why = Refusal::OffLineage {
            follows: 3,
            cut: 3,
            decided: 4,
        };
        assert_eq!(why.reason(), "off_lineage");
        assert!(!why.is_malformed());
        refused(&mut r, lacking, why);
        // A master that lists term 3 is followed.
        let listing = from_master(4, &[(1, 0), (3, 3), (4, 5)], request(vec![], None));
        apply(&mut r, &mut replayed, listing);
        assert_eq!((r.master(), r.state().held), (4, 5));
    }

    #[test]
    fn in_failover_the_starts_between_are_recorded_as_the_master_lists_them() {
        let (mut r, mut replayed) = in_failover();
        apply(
            &mut r,
            &mut replayed,
            from_master(
                4,
                &[(1, 0), (2, 5), (4, 9)],
                request(vec![entry(1, "a")], None),
            ),
        );
        // A fresh replica adopts the whole lineage.
        assert_eq!(r.starts(), &[(1, 0), (2, 5), (4, 9)]);
        let starts = [(1, 0), (2, 5), (4, 9), (6, 3), (7, 8)];
        apply(
            &mut r,
            &mut replayed,
            from_master(7, &starts, request(vec![], None)),
        );
        assert_eq!(r.starts(), &[(1, 0), (2, 5), (4, 9), (6, 3), (7, 8)]);
        // Static mode records only the new process, with what it kept.
        let mut r = Replica::new(Log::default());
        let mut replayed = Log::default();
        apply(
            &mut r,
            &mut replayed,
            from_master(4, &[(1, 0), (2, 5), (4, 9)], request(vec![], None)),
        );
        assert_eq!(r.starts(), &[(4, 0)]);
    }

    /// Ids 1..=5 from process 1, 2 decided; 4 aborted by it but never decided here, 7 too
    /// (beyond a gap).
    fn holding_an_undecided_tombstone(failover: bool) -> (Replica, Log) {
        let mut r = Replica::new(Log::default()).in_failover(failover);
        let mut replayed = Log::default();
        let entries = vec![
            entry(1, "a"),
            entry(2, "b"),
            entry(3, "c"),
            tombstone(4),
            entry(5, "e"),
            tombstone(7),
        ];
        apply(
            &mut r,
            &mut replayed,
            from_master(1, &[(1, 0)], request(entries, decided(2, 0, vec![2]))),
        );
        assert_eq!((r.state().held, r.state().decided), (5, 2));
        (r, replayed)
    }

    #[test]
    fn a_new_master_process_makes_it_drop_every_tombstone_above_its_frontier() {
        for failover in [false, true] {
            let (mut r, mut replayed) = holding_an_undecided_tombstone(failover);
            // Process 2 held id 4 and commits it: the tombstone was never confirmed.
            let next = request(
                vec![entry(4, "d"), entry(5, "e"), entry(6, "f"), entry(7, "g")],
                decided(7, 2, vec![2]),
            );
            apply(
                &mut r,
                &mut replayed,
                from_master(2, &[(1, 0), (2, 7)], next),
            );
            assert_eq!(
                texts(&r),
                ["a", "c", "d", "e", "f", "g"],
                "failover {failover}"
            );
            let starts = match failover {
                // Said by a start of process 1 again, so that the one of process 2 keeps the
                // `recovered` its master lists.
                true => vec![(1, 0), (1, 3), (2, 7)],
                false => vec![(1, 0), (2, 3)],
            };
            assert_eq!(r.starts(), &starts[..], "failover {failover}");
        }
        // A decided tombstone stays, and so does what follows it.
        let (mut r, mut replayed) = holding_an_undecided_tombstone(false);
        apply(
            &mut r,
            &mut replayed,
            from_master(1, &[], request(vec![], decided(5, 2, vec![4]))),
        );
        apply(
            &mut r,
            &mut replayed,
            from_master(2, &[(2, 5)], request(vec![], None)),
        );
        assert_eq!((r.state().held, shown(&r)), (5, vec![1, 3, 5]));
    }
}
