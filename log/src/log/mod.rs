//! The log: entries in id order, tombstones, and the decided frontier.
//!
//! Ids start at 1 and have no gaps. An id is *decided* once the master knows its fate:
//! committed (shown) or aborted (a tombstone, never shown). A node shows the committed entries of
//! its longest decided prefix, so every list only grows by appending and all nodes show the same
//! order.

mod segments;

use bytes::Bytes;
use segments::Segments;
use std::collections::BTreeSet;

/// One visible entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub message: Bytes,
}

/// A contiguous log held by one node. A clone shares the payloads (`Bytes`) and copies only
/// their handles.
#[derive(Debug, Default, Clone)]
pub struct Log {
    /// Identity of the log, made when it is created; empty until a secondary adopts one.
    log_id: String,
    /// Payload of id `i + 1` at index `i`; a tombstone keeps an empty payload. In segments, so
    /// an append never copies the log (see [`segments`]).
    entries: Segments<Bytes>,
    /// Aborted ids, including ones beyond `entries` that a secondary learned before the entry.
    tombstones: BTreeSet<u64>,
    /// Every id up to here is decided.
    decided: u64,
}

impl Log {
    pub fn new(log_id: String) -> Self {
        Self {
            log_id,
            ..Self::default()
        }
    }

    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// Highest id held (contiguous by construction).
    pub fn last_id(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn decided(&self) -> u64 {
        self.decided
    }

    /// Highest id that may be shown: decided and held.
    pub fn visible_upto(&self) -> u64 {
        self.decided.min(self.last_id())
    }

    /// Appends the next id. Returns it.
    pub fn push(&mut self, message: Bytes, tombstone: bool) -> u64 {
        let id = self.last_id() + 1;
        if tombstone {
            self.tombstones.insert(id);
            self.entries.push(Bytes::new());
        } else if self.tombstones.contains(&id) {
            self.entries.push(Bytes::new());
        } else {
            self.entries.push(message);
        }
        id
    }

    /// Payload of a held id (empty for a tombstone).
    pub fn get(&self, id: u64) -> Option<&Bytes> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.entries.get(index)
    }

    pub fn is_tombstone(&self, id: u64) -> bool {
        self.tombstones.contains(&id)
    }

    /// Marks an id aborted, held or not, and frees its payload.
    pub fn tombstone(&mut self, id: u64) {
        self.tombstones.insert(id);
        let index = id.checked_sub(1).and_then(|i| usize::try_from(i).ok());
        if let Some(slot) = index.and_then(|i| self.entries.get_mut(i)) {
            *slot = Bytes::new();
        }
    }

    /// Aborted ids in `(after, upto]`.
    pub fn tombstones_in(&self, after: u64, upto: u64) -> impl Iterator<Item = u64> + '_ {
        let range = if after < upto {
            self.tombstones.range(after + 1..=upto)
        } else {
            self.tombstones.range(0..0)
        };
        range.copied()
    }

    /// Drops every entry and tombstone above `keep_upto`. Only an undecided suffix may go: the
    /// caller checks that `keep_upto >= decided()`, since a decided id may already be shown.
    pub fn truncate(&mut self, keep_upto: u64) {
        let keep = usize::try_from(keep_upto).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
        self.tombstones.split_off(&(keep_upto.saturating_add(1)));
    }

    /// Moves the decided frontier forward (never back).
    pub fn set_decided(&mut self, decided: u64) {
        self.decided = self.decided.max(decided);
    }

    /// Visible entries with `id >= from_id`, at most `limit` of them, in id order.
    pub fn visible(&self, from_id: u64, limit: usize) -> impl Iterator<Item = Message> + '_ {
        let start = from_id.max(1);
        (start..=self.visible_upto())
            .filter(|id| !self.tombstones.contains(id))
            .filter_map(|id| {
                self.get(id).map(|message| Message {
                    id,
                    message: message.clone(),
                })
            })
            .take(limit)
    }

    /// Number of visible entries.
    pub fn visible_count(&self) -> u64 {
        let upto = self.visible_upto();
        upto - self.tombstones_in(0, upto).count() as u64
    }
}

/// A fresh random log identity.
pub fn new_log_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(log: &Log) -> Vec<(u64, String)> {
        log.visible(1, usize::MAX)
            .map(|m| (m.id, String::from_utf8_lossy(&m.message).into_owned()))
            .collect()
    }

    #[test]
    fn shows_only_the_decided_prefix_without_tombstones() {
        let mut log = Log::new(new_log_id());
        for text in ["a", "b", "c", "d"] {
            log.push(Bytes::from(text), false);
        }
        assert!(texts(&log).is_empty());
        log.tombstone(2);
        log.set_decided(3);
        assert_eq!(texts(&log), vec![(1, "a".into()), (3, "c".into())]);
        assert_eq!(log.visible_count(), 2);
        log.set_decided(1);
        assert_eq!(log.decided(), 3, "the frontier never moves back");
    }

    #[test]
    fn a_tombstone_learned_before_the_entry_wins() {
        let mut log = Log::new(new_log_id());
        log.tombstone(2);
        log.set_decided(2);
        log.push(Bytes::from("a"), false);
        log.push(Bytes::from("late"), false);
        assert_eq!(texts(&log), vec![(1, "a".into())]);
        assert_eq!(log.tombstones_in(0, 5).collect::<Vec<_>>(), vec![2]);
        assert_eq!(log.tombstones_in(2, 5).count(), 0);
    }

    #[test]
    fn decided_beyond_held_shows_only_held() {
        let mut log = Log::new(new_log_id());
        log.push(Bytes::from("a"), false);
        log.set_decided(10);
        assert_eq!(log.visible_upto(), 1);
        assert_eq!(texts(&log), vec![(1, "a".into())]);
        assert_eq!(log.visible(2, 10).count(), 0);
    }
}
