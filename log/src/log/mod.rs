//! The log: entries in id order, tombstones, and the decided frontier.
//!
//! Ids start at 1 and have no gaps. An id is *decided* once the master knows its fate:
//! committed (shown) or aborted (a tombstone, never shown). A node shows the committed entries of
//! its longest decided prefix, so every list only grows by appending and all nodes show the same
//! order.

mod segments;

use crate::storage::segments::{ReadError, Reader, Stored};
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
///
/// With a durable log the payloads of old ids need not stay in memory: [`Log::evict`] lets the
/// oldest go once they are on disk and decided (so they never change again), keeping the
/// payloads held within a byte budget; they are then *cold*, read back from the log's files
/// (`crate::storage::segments::Reader`) by whoever needs them, and [`Log::get`] and
/// [`Log::visible`] serve only what is still cached (ids from [`Log::cached_from`] on).
/// Everything else (identity, length, tombstones, decided frontier) stays whole.
///
/// A log need not start at id 1: retention removes the oldest segments
/// ([`Log::forget_before`]), and a secondary re-seeded from a master that no longer holds the
/// ids it lacks starts again at the master's first retained id ([`Log::restart_at`]). Reads
/// below [`Log::first_id`] fail with [`ReadError::Gone`], never with a silent gap.
#[derive(Debug, Default, Clone)]
pub struct Log {
    /// Identity of the log, made when it is created; empty until a secondary adopts one.
    log_id: String,
    /// Ids up to here are not retained (removed by retention, or never held by a re-seeded
    /// node); every one of them was decided.
    base: u64,
    /// Ids up to here are held but cold: their payloads are not in memory.
    cold_upto: u64,
    /// Payload of id `cold_upto + i + 1` at index `i`; a tombstone keeps an empty payload. In
    /// segments, so an append never copies the log (see [`segments`]).
    entries: Segments<Bytes>,
    /// What `entries` holds, by [`cost`].
    cached_bytes: usize,
    /// Aborted ids, including ones beyond `entries` that a secondary learned before the entry.
    tombstones: BTreeSet<u64>,
    /// Every id up to here is decided.
    decided: u64,
    /// Where cold payloads are read back from (`None`: nothing is ever cold).
    files: Option<Reader>,
}

/// What a cached payload costs: its bytes and its handle.
fn cost(message: &Bytes) -> usize {
    message.len() + std::mem::size_of::<Bytes>()
}

impl Log {
    pub fn new(log_id: String) -> Self {
        Self {
            log_id,
            ..Self::default()
        }
    }

    /// A log of the ids from `first_id` to `last_id`, all of them cold (on disk, none cached):
    /// what a node recovers from its files without reading its entries.
    pub fn resume(
        log_id: String,
        first_id: u64,
        last_id: u64,
        decided: u64,
        tombstones: BTreeSet<u64>,
    ) -> Self {
        let base = first_id.saturating_sub(1).min(last_id);
        Self {
            log_id,
            base,
            cold_upto: last_id,
            tombstones,
            decided: decided.max(base),
            ..Self::default()
        }
    }

    /// The first retained id: every id from here to [`Log::last_id`] is held (1 unless
    /// retention removed older ones or the log was re-seeded).
    pub fn first_id(&self) -> u64 {
        self.base + 1
    }

    /// Forgets every id below `first_id` (retention removed their segments). Only decided ids
    /// go; the rest of the log is unchanged.
    pub fn forget_before(&mut self, first_id: u64) {
        let base = first_id
            .saturating_sub(1)
            .min(self.decided)
            .min(self.last_id());
        if base <= self.base {
            return;
        }
        if base > self.cold_upto {
            let count = usize::try_from(base - self.cold_upto).unwrap_or(usize::MAX);
            for index in 0..count.min(self.entries.len()) {
                self.cached_bytes -= self.entries.get(index).map_or(0, cost);
            }
            self.entries.drop_front(count);
            self.cold_upto = base;
        }
        self.base = base;
        self.tombstones = self.tombstones.split_off(&first_id);
    }

    /// The same log emptied to start again at `first_id`: nothing held, every id below it
    /// decided and not retained. A secondary whose master no longer holds the ids it lacks is
    /// re-seeded so, from the master's first retained id.
    pub fn restart_at(&self, first_id: u64) -> Self {
        let base = first_id.saturating_sub(1);
        Self {
            log_id: self.log_id.clone(),
            base,
            cold_upto: base,
            decided: base,
            files: self.files.clone(),
            ..Self::default()
        }
    }

    /// An empty log named `log_id` in the same files as this one (a node that holds nothing
    /// and takes another identity keeps writing where it wrote).
    pub fn renamed_empty(&self, log_id: String) -> Self {
        Self {
            log_id,
            files: self.files.clone(),
            ..Self::default()
        }
    }

    /// Reads cold payloads back through `files` (the log's segments).
    pub fn with_files(mut self, files: Reader) -> Self {
        self.files = Some(files);
        self
    }

    /// Where cold payloads are read back from (`None`: nothing is ever cold).
    pub fn files(&self) -> Option<&Reader> {
        self.files.as_ref()
    }

    /// Entries read from the files without this log's lock, as this log holds them now: only
    /// the cold ones (ids below [`Log::cached_from`], decided, so they cannot have changed),
    /// tombstones flagged with an empty payload.
    pub fn cold_part(&self, mut read: Vec<Stored>) -> Vec<Stored> {
        read.retain(|e| e.id >= self.first_id() && e.id < self.cached_from());
        for entry in &mut read {
            if self.tombstones.contains(&entry.id) {
                entry.tombstone = true;
                entry.message = Bytes::new();
            }
        }
        read
    }

    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// Highest id held (contiguous by construction).
    pub fn last_id(&self) -> u64 {
        self.cold_upto + self.entries.len() as u64
    }

    /// The first id whose payload is in memory; every id below it is cold.
    pub fn cached_from(&self) -> u64 {
        self.cold_upto + 1
    }

    /// Bytes the cached payloads take (with their handles).
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Lets the oldest cached payloads go, oldest first, until they take at most `budget`
    /// bytes, but only ids up to `durable` (on disk, so they can be read back) and decided
    /// (never changed again). Returns how many went.
    pub fn evict(&mut self, durable: u64, budget: usize) -> u64 {
        let limit = durable.min(self.decided).min(self.last_id());
        let mut count = 0usize;
        let mut bytes = self.cached_bytes;
        while bytes > budget && self.cold_upto + (count as u64) < limit {
            bytes -= self.entries.get(count).map_or(0, cost);
            count += 1;
        }
        self.entries.drop_front(count);
        self.cold_upto += count as u64;
        self.cached_bytes = bytes;
        count as u64
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
        }
        let message = match tombstone || self.tombstones.contains(&id) {
            true => Bytes::new(),
            false => message,
        };
        self.cached_bytes += cost(&message);
        self.entries.push(message);
        id
    }

    /// Index in `entries` of a cached id.
    fn index(&self, id: u64) -> Option<usize> {
        usize::try_from(id.checked_sub(self.cached_from())?).ok()
    }

    /// Payload of a held, cached id (empty for a tombstone); `None` for a cold one.
    pub fn get(&self, id: u64) -> Option<&Bytes> {
        self.entries.get(self.index(id)?)
    }

    pub fn is_tombstone(&self, id: u64) -> bool {
        self.tombstones.contains(&id)
    }

    /// Marks an id aborted, held or not, and frees its payload.
    pub fn tombstone(&mut self, id: u64) {
        self.tombstones.insert(id);
        let index = self.index(id);
        if let Some(slot) = index.and_then(|i| self.entries.get_mut(i)) {
            self.cached_bytes -= slot.len();
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
        if keep_upto < self.cold_upto {
            // Only decided ids are cold, so the caller's check rules this out; should it
            // happen, the log still ends at `keep_upto`.
            self.entries.truncate(0);
            self.cached_bytes = 0;
            self.cold_upto = keep_upto;
            self.base = self.base.min(keep_upto);
        }
        let keep = usize::try_from(keep_upto - self.cold_upto).unwrap_or(usize::MAX);
        for index in keep..self.entries.len() {
            self.cached_bytes -= self.entries.get(index).map_or(0, cost);
        }
        self.entries.truncate(keep);
        self.tombstones.split_off(&(keep_upto.saturating_add(1)));
    }

    /// Moves the decided frontier forward (never back).
    pub fn set_decided(&mut self, decided: u64) {
        self.decided = self.decided.max(decided);
    }

    /// `from_id`, or the first retained id for 0; [`ReadError::Gone`] below the first
    /// retained id.
    fn start(&self, from_id: u64) -> Result<u64, ReadError> {
        match from_id {
            0 => Ok(self.first_id()),
            id if id < self.first_id() => Err(ReadError::Gone {
                from_id,
                first_id: self.first_id(),
            }),
            id => Ok(id),
        }
    }

    /// Held entries from `from_id` on (0: from the first retained id; tombstones flagged, with
    /// an empty payload), at most `max_entries` and no more payload bytes than `max_bytes`,
    /// except that one entry is always returned if there is one. Cold ones are read from the
    /// files, with positional reads the page cache mostly serves; cached ones are copied
    /// (their handles). [`ReadError::Gone`] below the first retained id.
    pub fn entries(
        &self,
        from_id: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, ReadError> {
        let from = self.start(from_id)?;
        let max_entries = max_entries.max(1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut start = from;
        if from < self.cached_from() {
            // Without files nothing is cold (a log in memory never lets a payload go).
            if let Some(files) = &self.files {
                out = self.cold_part(files.read(from, max_entries, max_bytes)?);
                bytes = out.iter().map(|e| e.message.len()).sum();
                if out.last().map_or(from, |e| e.id + 1) < self.cached_from() {
                    // A page of cold ones only.
                    return Ok(out);
                }
            }
            start = self.cached_from();
        }
        for id in start..=self.last_id() {
            let Some(message) = self.get(id) else { break };
            if !out.is_empty() && (out.len() >= max_entries || bytes + message.len() > max_bytes) {
                break;
            }
            bytes += message.len();
            out.push(Stored {
                id,
                message: message.clone(),
                tombstone: self.tombstones.contains(&id),
            });
        }
        Ok(out)
    }

    /// Visible entries with `id >= from_id` (0: from the first retained id), at most `limit`
    /// of them, in id order (cold ones read from the files). [`ReadError::Gone`] below the
    /// first retained id; a damaged segment's error where its ids are needed.
    pub fn try_visible(&self, from_id: u64, limit: usize) -> Result<Vec<Message>, ReadError> {
        self.page(from_id, limit)?.read()
    }

    /// A page of [`Log::try_visible`] split where the cache begins: the cached messages are
    /// copied now (their handles), the cold ones are read by [`Page::read`], which a caller
    /// runs after letting go of whatever lock guards this log, so a read from the disk holds up
    /// no append.
    pub fn page(&self, from_id: u64, limit: usize) -> Result<Page, ReadError> {
        let upto = self.visible_upto();
        let from = self.start(from_id)?;
        let cold_upto = self.cached_from().saturating_sub(1).min(upto);
        let cold = match &self.files {
            Some(files) if from <= cold_upto => Some(ColdRange {
                files: files.clone(),
                from,
                upto: cold_upto,
                tombstones: self.tombstones.range(from..=cold_upto).copied().collect(),
            }),
            _ => None,
        };
        let mut cached = Vec::new();
        for id in from.max(self.cached_from())..=upto {
            if cached.len() >= limit {
                break;
            }
            let Some(message) = self.get(id) else { break };
            if !self.tombstones.contains(&id) {
                cached.push(Message {
                    id,
                    message: message.clone(),
                });
            }
        }
        Ok(Page {
            limit,
            cold,
            cached,
        })
    }

    /// [`Log::try_visible`], ending the page where a read of the files fails (logged as an
    /// error: a damaged segment).
    pub fn visible(&self, from_id: u64, limit: usize) -> Vec<Message> {
        self.try_visible(from_id, limit).unwrap_or_else(|error| {
            tracing::error!(%error, from_id, "cannot read the log's files: the page ends early");
            Vec::new()
        })
    }

    /// Number of visible entries retained.
    pub fn visible_count(&self) -> u64 {
        let upto = self.visible_upto();
        upto.saturating_sub(self.base) - self.tombstones_in(self.base, upto).count() as u64
    }
}

/// A page of visible messages as [`Log::page`] split it.
#[derive(Debug)]
pub struct Page {
    limit: usize,
    /// The ids of the page only the files hold, if any: they come first.
    cold: Option<ColdRange>,
    /// The cached messages after them, at most `limit`.
    cached: Vec<Message>,
}

/// Cold ids `from..=upto` (all decided and visible but for `tombstones`), in `files`.
#[derive(Debug)]
struct ColdRange {
    files: Reader,
    from: u64,
    upto: u64,
    tombstones: BTreeSet<u64>,
}

impl Page {
    /// The page's messages: the cold ones read from the files (call this without the log's
    /// lock), then the cached ones, at most `limit` in all.
    pub fn read(self) -> Result<Vec<Message>, ReadError> {
        /// Cold entries read at once while paging.
        const CHUNK_ENTRIES: usize = 1024;
        const CHUNK_BYTES: usize = 1 << 20;
        let mut out = Vec::new();
        if let Some(cold) = self.cold {
            let mut next = cold.from;
            while out.len() < self.limit && next <= cold.upto {
                let chunk = cold.files.read(next, CHUNK_ENTRIES, CHUNK_BYTES)?;
                let Some(last) = chunk.last().map(|e| e.id) else {
                    // The files end before ids they hold by construction: never past a gap.
                    return Ok(out);
                };
                out.extend(
                    chunk
                        .into_iter()
                        .filter(|e| {
                            e.id <= cold.upto && !e.tombstone && !cold.tombstones.contains(&e.id)
                        })
                        .map(|e| Message {
                            id: e.id,
                            message: e.message,
                        })
                        .take(self.limit - out.len()),
                );
                next = last + 1;
            }
        }
        let room = self.limit - out.len();
        out.extend(self.cached.into_iter().take(room));
        Ok(out)
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
            .into_iter()
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
    fn evicts_only_decided_durable_ids_down_to_the_budget() {
        let mut log = Log::new(new_log_id());
        for _ in 0..10 {
            log.push(Bytes::from(vec![b'x'; 100]), false);
        }
        let each = cost(&Bytes::from(vec![b'x'; 100]));
        assert_eq!(log.cached_bytes(), 10 * each);
        assert_eq!(log.evict(10, 0), 0, "nothing decided yet");
        log.set_decided(8);
        assert_eq!(log.evict(5, 0), 5, "only what is on disk");
        assert_eq!((log.cached_from(), log.last_id()), (6, 10));
        assert_eq!(log.evict(10, 3 * each), 2, "down to the budget");
        assert_eq!(log.cached_bytes(), 3 * each);
        assert_eq!(log.get(7), None);
        assert_eq!(log.get(8).map(Bytes::len), Some(100));
        assert_eq!(
            log.visible(1, usize::MAX)
                .into_iter()
                .map(|m| m.id)
                .collect::<Vec<_>>(),
            vec![8],
            "without files, only cached ids are served"
        );
        log.tombstone(9);
        assert_eq!(log.cached_bytes(), 3 * each - 100);
        log.truncate(8);
        assert_eq!((log.last_id(), log.cached_bytes()), (8, each));
        assert_eq!(log.push(Bytes::from("y"), false), 9);
        assert_eq!(log.visible_count(), 8);
    }

    /// Log "L" of 300 entries (`m1` ... `m300`), all cached, and the segment files in `dir`
    /// holding them (small segments and index intervals).
    fn on_files(dir: &std::path::Path) -> (crate::storage::segments::SegmentLog, Log) {
        use crate::storage::segments::{Config, SegmentLog};
        use crate::storage::{FsyncPolicy, Record};
        let config = Config {
            fsync: FsyncPolicy::Never,
            segment_bytes: 1024,
            index_interval: 128,
        };
        let (mut file, _) = SegmentLog::open(dir, config, || "L".into()).expect("open");
        let mut log = Log::new("L".into()).with_files(file.reader());
        let mut records = Vec::new();
        for id in 1..=300u64 {
            let message = Bytes::from(format!("m{id}"));
            log.push(message.clone(), false);
            records.push(Record::Entry {
                id,
                message,
                tombstone: false,
            });
        }
        file.append(&records).expect("write");
        (file, log)
    }

    #[test]
    fn cold_entries_are_read_back_from_the_files() {
        use crate::storage::Record;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut file, mut log) = on_files(dir.path());
        log.tombstone(7);
        log.set_decided(290);
        file.append(&[Record::Tombstone { id: 7 }, Record::Decided { upto: 290 }])
            .expect("write");
        let whole = log.visible(1, usize::MAX);
        assert_eq!(whole.len(), 289);
        assert!(log.evict(300, 0) > 0);
        assert_eq!(log.cached_from(), 291, "down to the undecided ids");
        assert_eq!(
            log.visible(1, usize::MAX),
            whole,
            "the same, read from the files"
        );
        assert_eq!(
            log.visible(5, 3).iter().map(|m| m.id).collect::<Vec<_>>(),
            [5, 6, 8]
        );
        let shipped = log.entries(288, 10, usize::MAX).expect("read");
        let ids: Vec<u64> = shipped.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            (288..=297).collect::<Vec<_>>(),
            "across cold and cached"
        );
        let tombstone = log.entries(7, 1, 0).expect("read");
        assert!(tombstone[0].tombstone && tombstone[0].message.is_empty());
        assert_eq!(
            log.entries(1, 5, 4).expect("read").len(),
            2,
            "within the bytes"
        );
        // Resumed from the files alone, as a node starts: the same log, nothing cached.
        let resumed =
            Log::resume("L".into(), 1, 300, 290, BTreeSet::from([7])).with_files(file.reader());
        assert_eq!(resumed.visible(1, usize::MAX), whole);
    }

    #[test]
    fn a_page_split_at_the_cache_reads_its_cold_part_after_the_log_moved_on() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (_file, mut log) = on_files(dir.path());
        log.tombstone(7);
        log.tombstone(253);
        log.set_decided(290);
        log.evict(250, 0);
        assert_eq!(log.cached_from(), 251);
        let ids = |messages: Vec<Message>| messages.iter().map(|m| m.id).collect::<Vec<_>>();
        let cold = log.page(5, 4).expect("split");
        let across = log.page(248, 6).expect("split");
        // The log moves on before the pages are read (as appends do once the lock is free).
        log.push(Bytes::from("m301"), false);
        log.set_decided(301);
        log.evict(300, 0);
        assert_eq!(ids(cold.read().expect("read")), [5, 6, 8, 9]);
        assert_eq!(
            ids(across.read().expect("read")),
            [248, 249, 250, 251, 252, 254],
            "cold, then cached, the tombstone left out"
        );
    }

    #[test]
    fn a_resumed_log_holds_every_id_cold() {
        let log = Log::resume("L".into(), 1, 5, 4, BTreeSet::from([2]));
        assert_eq!((log.last_id(), log.cached_from(), log.decided()), (5, 6, 4));
        assert_eq!(log.visible_count(), 3);
        assert_eq!(log.get(5), None);
        assert!(log.is_tombstone(2));
    }

    #[test]
    fn ids_before_the_first_retained_are_gone_not_missing() {
        let mut log = Log::new(new_log_id());
        for text in ["a", "b", "c", "d", "e", "f"] {
            log.push(Bytes::from(text), false);
        }
        log.tombstone(2);
        log.tombstone(5);
        log.set_decided(5);
        log.forget_before(4);
        assert_eq!(
            (log.first_id(), log.last_id(), log.cached_from()),
            (4, 6, 4)
        );
        assert_eq!(log.cached_bytes(), 3 * cost(&Bytes::from("d")) - 1);
        assert!(!log.is_tombstone(2), "a forgotten id's tombstone goes too");
        assert_eq!(
            log.visible_count(),
            1,
            "4 only: 5 is a tombstone, 6 undecided"
        );
        assert!(matches!(
            log.try_visible(3, 10),
            Err(ReadError::Gone {
                from_id: 3,
                first_id: 4
            })
        ));
        assert!(matches!(
            log.entries(1, 10, usize::MAX),
            Err(ReadError::Gone { first_id: 4, .. })
        ));
        let from_first: Vec<u64> = log
            .try_visible(0, 10)
            .expect("read")
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(from_first, [4], "0 reads from the first retained id");
        log.forget_before(9);
        assert_eq!(log.first_id(), 6, "never an undecided id");
        log.forget_before(2);
        assert_eq!(log.first_id(), 6, "never back");
    }

    #[test]
    fn a_log_restarted_at_an_id_holds_nothing_before_it() {
        let mut log = Log::new("L".into());
        log.push(Bytes::from("a"), false);
        log.tombstone(7);
        let mut restarted = log.restart_at(10);
        assert_eq!(restarted.log_id(), "L");
        assert_eq!(
            (
                restarted.first_id(),
                restarted.last_id(),
                restarted.decided()
            ),
            (10, 9, 9)
        );
        assert_eq!(restarted.visible_count(), 0);
        assert!(!restarted.is_tombstone(7));
        assert_eq!(restarted.push(Bytes::from("j"), false), 10);
        restarted.set_decided(10);
        assert_eq!(texts_from(&restarted, 10), vec![(10, "j".into())]);
        assert_eq!(restarted.visible_count(), 1);
        let resumed = Log::resume("L".into(), 10, 12, 11, BTreeSet::new());
        assert_eq!((resumed.first_id(), resumed.visible_count()), (10, 2));
    }

    fn texts_from(log: &Log, from_id: u64) -> Vec<(u64, String)> {
        log.try_visible(from_id, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|m| (m.id, String::from_utf8_lossy(&m.message).into_owned()))
            .collect()
    }

    #[test]
    fn decided_beyond_held_shows_only_held() {
        let mut log = Log::new(new_log_id());
        log.push(Bytes::from("a"), false);
        log.set_decided(10);
        assert_eq!(log.visible_upto(), 1);
        assert_eq!(texts(&log), vec![(1, "a".into())]);
        assert!(log.visible(2, 10).is_empty());
    }
}
