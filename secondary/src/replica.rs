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
//! The replication token is the first wall, not the only one: every request is checked against
//! what this secondary knows before anything changes (see [`Refusal`]). Ids and master
//! processes are numbered from 1; an id held with one message takes no other; an id held as
//! decided and committed is never tombstoned; the decided frontier never moves back and is
//! recorded only up to what is held (see `decide`); a new master process must be a plausible
//! successor of the one followed (see [`MAX_INSTANCE_JUMP`]).

use bytes::{Bytes, BytesMut};
use replog_node::log::{Log, Message};
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
        }
    }

    /// The master process whose entries the recovered log holds (see [`Record::MasterStart`]).
    pub fn with_master(mut self, instance: u64) -> Self {
        self.master = instance;
        self
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The master process whose entries we hold (0: none heard yet).
    pub fn master(&self) -> u64 {
        self.master
    }

    pub fn state(&self) -> ReplicaState {
        ReplicaState {
            log_id: self.log.log_id().to_owned(),
            instance: self.instance,
            held: self.log.last_id(),
            decided: self.log.decided(),
            master_instance: self.master,
        }
    }

    /// Applies one replication request. Returns the records that make the change durable (to
    /// be written before the answer), or why it was refused and changes nothing.
    pub fn receive(&mut self, request: ReplicateRequest) -> Result<Vec<Record>, Refusal> {
        // Every check comes before the first change, so a refused request changes nothing.
        let adopt = self.admit(&request.log_id)?;
        let (ours, decided) = match adopt {
            true => (0, 0),
            false => (self.master, self.log.decided()),
        };
        let switch = follow(ours, decided, request.master_instance, &request.starts)?;
        // What survives the switch to a new master process (nothing, for a log adopted anew).
        let keep = match adopt {
            true => 0,
            false => switch.unwrap_or(u64::MAX),
        };
        self.check(&request, keep, decided)?;
        let mut records = Vec::new();
        if adopt {
            // Nothing held yet: this replica belongs to whichever master reaches it first.
            self.log = Log::new(request.log_id.clone());
            self.master = 0;
            records.push(Record::Meta {
                log_id: request.log_id,
            });
        }
        if let Some(recovered) = switch {
            self.switch_master(request.master_instance, recovered, &mut records);
        }
        self.store(request.entries, &mut records);
        if let Some(decisions) = &request.decisions {
            self.decide(decisions, &mut records);
        }
        Ok(records)
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

    /// Drops what we hold above `recovered` and follows master process `instance` from now on.
    fn switch_master(&mut self, instance: u64, recovered: u64, records: &mut Vec<Record>) {
        let held = self.log.last_id();
        if held > recovered {
            tracing::warn!(
                held,
                recovered,
                "a restarted master lost ids above {recovered} before they were committed; dropping ours"
            );
        }
        self.log.truncate(recovered);
        self.ahead.split_off(&recovered.saturating_add(1));
        self.master = instance;
        records.push(Record::MasterStart {
            instance,
            recovered,
        });
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

    pub fn page(&self, from_id: u64, limit: usize) -> Vec<Message> {
        self.log.visible(from_id, limit).collect()
    }
}

/// Whether a replica that follows master process `ours`, with ids up to `decided` decided,
/// takes a request of process `instance`: `Some(recovered)` if it must first drop every id above
/// `recovered` and follow `instance`, `None` if it already follows it.
fn follow(
    ours: u64,
    decided: u64,
    instance: u64,
    starts: &[MasterStart],
) -> Result<Option<u64>, Refusal> {
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
    if recovered < decided {
        return Err(Refusal::MasterLostDecided { recovered, decided });
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
        r.page(1, usize::MAX).iter().map(|m| m.id).collect()
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
        ReplicateRequest {
            log_id: "L".into(),
            entries,
            decisions,
            master_instance: 1,
            starts: vec![MasterStart {
                instance: 1,
                recovered: 0,
            }],
            quiet: false,
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
            replayed.visible(1, usize::MAX).collect::<Vec<_>>(),
            r.page(1, usize::MAX)
        );
        assert_eq!(replayed.last_id(), r.log().last_id());
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
        let texts: Vec<_> = r.page(1, 10).into_iter().map(|m| m.message).collect();
        assert_eq!(texts, vec!["a", "b", "c", "d"]);
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
        let texts: Vec<_> = r.page(1, 10).into_iter().map(|m| m.message).collect();
        assert_eq!(texts, ["a", "b", "new c"]);
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
}
