//! The secondary's copy of the log: what the master shipped, in id order, exactly once.
//!
//! Requests may arrive out of order (several are in flight per secondary), so entries beyond the
//! contiguous prefix wait in a buffer until the gap fills. An id is stored once: a repeated
//! delivery (a retry after a lost reply or an injected error) is acknowledged and dropped.

use bytes::{Bytes, BytesMut};
use replog_node::log::{Log, Message};
use replog_node::storage::Record;
use replog_proto::v1::{Decisions, Entry, ReplicaState, ReplicateRequest};
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Replica {
    log: Log,
    /// Entries above the contiguous prefix: id -> (payload, tombstone).
    ahead: BTreeMap<u64, (Bytes, bool)>,
    /// Random per process start, so the master notices a restart.
    instance: u64,
}

/// The request came from a master of another log.
#[derive(Debug, PartialEq, Eq)]
pub struct ForeignLog;

impl Replica {
    pub fn new(log: Log) -> Self {
        Self {
            log,
            ahead: BTreeMap::new(),
            instance: rand::random(),
        }
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn state(&self) -> ReplicaState {
        ReplicaState {
            log_id: self.log.log_id().to_owned(),
            instance: self.instance,
            held: self.log.last_id(),
            decided: self.log.decided(),
        }
    }

    /// Applies one replication request. Returns the records that make the change durable (to
    /// be written before the answer), or `ForeignLog` and changes nothing.
    pub fn receive(&mut self, request: ReplicateRequest) -> Result<Vec<Record>, ForeignLog> {
        let mut records = Vec::new();
        self.admit(&request.log_id, &mut records)?;
        self.store(request.entries, &mut records);
        if let Some(decisions) = &request.decisions {
            self.decide(decisions, &mut records);
        }
        Ok(records)
    }

    /// Checks (and on a fresh replica adopts) the master's log identity.
    fn admit(&mut self, log_id: &str, records: &mut Vec<Record>) -> Result<(), ForeignLog> {
        if self.log.log_id() != log_id && self.log.last_id() == 0 && self.ahead.is_empty() {
            // Nothing held yet: this replica belongs to whichever master reaches it first.
            self.log = Log::new(log_id.to_owned());
            records.push(Record::Meta {
                log_id: log_id.to_owned(),
            });
        }
        if self.log.log_id() == log_id {
            Ok(())
        } else {
            Err(ForeignLog)
        }
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

    /// Applies the master's decisions. The frontier moves only if the tombstones cover
    /// everything between our frontier and the new one.
    fn decide(&mut self, decisions: &Decisions, records: &mut Vec<Record>) {
        for &id in &decisions.tombstones {
            if id == 0 || self.log.is_tombstone(id) {
                continue;
            }
            self.log.tombstone(id);
            records.push(Record::Tombstone { id });
            if let Some(slot) = self.ahead.get_mut(&id) {
                *slot = (Bytes::new(), true);
            }
        }
        if decisions.since <= self.log.decided() && decisions.decided_upto > self.log.decided() {
            self.log.set_decided(decisions.decided_upto);
            records.push(Record::Decided {
                upto: decisions.decided_upto,
            });
        }
    }

    pub fn page(&self, from_id: u64, limit: usize) -> Vec<Message> {
        self.log.visible(from_id, limit).collect()
    }
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

    fn request(entries: Vec<Entry>, decisions: Option<Decisions>) -> ReplicateRequest {
        ReplicateRequest {
            log_id: "L".into(),
            entries,
            decisions,
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
        let again = request(vec![entry(2, "B"), entry(3, "C")], None);
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
        // Built for a previous instance that had decided up to 1: it may omit a tombstone <= 1.
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
        assert_eq!(r.receive(other), Err(ForeignLog));
        assert_eq!(r.state().log_id, "L");
        assert_eq!(r.state().held, 1);
    }
}
