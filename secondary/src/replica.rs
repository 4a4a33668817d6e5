//! The secondary's copy of the log: what the master shipped, in id order, exactly once.
//!
//! Requests may arrive out of order (several are in flight per secondary), so entries beyond the
//! contiguous prefix wait in a buffer until the gap fills. An id is stored once: a repeated
//! delivery (a retry after a lost reply or an injected error) is acknowledged and dropped.

use bytes::Bytes;
use replog_node::log::{Log, Message};
use replog_proto::v1::{Decisions, Entry, ReplicaState};
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

    /// Checks (and on a fresh replica adopts) the master's log identity.
    pub fn admit(&mut self, log_id: &str) -> Result<(), ForeignLog> {
        if self.log.log_id() != log_id && self.log.last_id() == 0 && self.ahead.is_empty() {
            // Nothing held yet: this replica belongs to whichever master reaches it first.
            self.log = Log::new(log_id.to_owned());
        }
        if self.log.log_id() == log_id {
            Ok(())
        } else {
            Err(ForeignLog)
        }
    }

    /// Stores entries; returns how many ids became held (joined the contiguous prefix).
    pub fn store(&mut self, entries: Vec<Entry>) -> u64 {
        let before = self.log.last_id();
        for entry in entries {
            if entry.id <= self.log.last_id() {
                if entry.tombstone {
                    self.log.tombstone(entry.id);
                }
                continue;
            }
            self.ahead
                .entry(entry.id)
                .or_insert((entry.message, entry.tombstone));
        }
        while let Some((message, tombstone)) = self.ahead.remove(&(self.log.last_id() + 1)) {
            self.log.push(message, tombstone);
        }
        self.log.last_id() - before
    }

    /// Applies the master's decisions. The frontier moves only if the tombstones cover
    /// everything between our frontier and the new one.
    pub fn decide(&mut self, decisions: &Decisions) {
        for &id in &decisions.tombstones {
            self.log.tombstone(id);
            if let Some(slot) = self.ahead.get_mut(&id) {
                *slot = (Bytes::new(), true);
            }
        }
        if decisions.since <= self.log.decided() {
            self.log.set_decided(decisions.decided_upto);
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

    fn decided(upto: u64, since: u64, tombstones: Vec<u64>) -> Decisions {
        Decisions {
            decided_upto: upto,
            tombstones,
            since,
        }
    }

    #[test]
    fn out_of_order_and_repeated_deliveries_store_each_id_once() {
        let mut r = Replica::new(Log::default());
        assert_eq!(r.admit("L"), Ok(()));
        assert_eq!(r.store(vec![entry(3, "c"), entry(4, "d")]), 0);
        assert_eq!(r.state().held, 0);
        assert_eq!(r.store(vec![entry(1, "a"), entry(2, "b")]), 4);
        assert_eq!(r.store(vec![entry(2, "B"), entry(3, "C")]), 0);
        r.decide(&decided(4, 0, vec![]));
        let texts: Vec<_> = r.page(1, 10).into_iter().map(|m| m.message).collect();
        assert_eq!(texts, vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn never_shows_undecided_or_aborted_ids() {
        let mut r = Replica::new(Log::default());
        r.admit("L").ok();
        r.store(vec![entry(1, "a"), entry(2, "aborted"), entry(3, "c")]);
        assert!(shown(&r).is_empty());
        r.decide(&decided(3, 0, vec![2]));
        assert_eq!(shown(&r), vec![1, 3]);
    }

    #[test]
    fn a_frontier_without_its_tombstones_is_not_taken() {
        let mut r = Replica::new(Log::default());
        r.admit("L").ok();
        r.store(vec![entry(1, "a"), entry(2, "b")]);
        // Built for a previous instance that had decided up to 1: it may omit a tombstone <= 1.
        r.decide(&decided(2, 1, vec![]));
        assert!(shown(&r).is_empty());
        r.decide(&decided(2, 0, vec![1]));
        assert_eq!(shown(&r), vec![2]);
    }

    #[test]
    fn refuses_another_log_identity() {
        let mut r = Replica::new(Log::default());
        assert_eq!(r.admit("L1"), Ok(()));
        r.store(vec![entry(1, "a")]);
        assert_eq!(r.admit("L2"), Err(ForeignLog));
        assert_eq!(r.state().log_id, "L1");
    }
}
