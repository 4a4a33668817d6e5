//! Reads by id: the sparse index finds a record near the id, positional reads do the rest.

use super::super::record::Record;
use super::format::Index;
use super::scan::{Scan, ScanError};
use super::ReadError;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Bytes read at once when walking a segment: twice the default index interval, so the walk
/// from an index point to an id and a page of 100 entries after it is usually one read.
const CHUNK: usize = 128 * 1024;

/// One entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: u64,
    /// Empty for a tombstone.
    pub message: Bytes,
    /// Aborted: never to be shown.
    pub tombstone: bool,
}

/// One segment file as readers see it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub first_id: u64,
    pub path: PathBuf,
    /// Read-only handle of its own: positional reads need no seek, so readers share it.
    pub file: File,
    /// Grows while the segment is active (the writer adds points and moves `file_len`).
    pub index: RwLock<Index>,
    /// Whether a read already found damage here and said so in the node's log (once per
    /// segment, so a damaged range read often does not flood it).
    pub damage_reported: AtomicBool,
}

/// What the writer shares with readers.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub segments: BTreeMap<u64, Arc<Segment>>,
    /// Highest id whose entry is written whole.
    pub last_id: u64,
    pub tombstones: BTreeSet<u64>,
}

impl Shared {
    pub fn first_id(&self) -> u64 {
        self.segments.keys().next().copied().unwrap_or(1)
    }
}

pub(crate) fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Reads entries by id, beside the writer. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Reader {
    pub(crate) shared: Arc<RwLock<Shared>>,
}

impl Reader {
    /// First retained id.
    pub fn first_id(&self) -> u64 {
        read_lock(&self.shared).first_id()
    }

    /// Highest id written whole.
    pub fn last_id(&self) -> u64 {
        read_lock(&self.shared).last_id
    }

    /// Entries from `from_id` on (0 reads from the first retained id), in id order, at most
    /// `max_entries` of them and no more message bytes than `max_bytes`, except that one
    /// entry is always returned if there is one (and `max_entries` is not 0). Tombstones are
    /// included, flagged, so a caller can page by id. Empty above the last id;
    /// [`ReadError::Gone`] below the first retained.
    ///
    /// Entries not decided yet are returned too (they may still be dropped by a truncation):
    /// the caller shows only its decided prefix, as with the in-memory log.
    pub fn read(
        &self,
        from_id: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, ReadError> {
        let (from, plan, last_id) = {
            let shared = read_lock(&self.shared);
            let first_id = shared.first_id();
            let from = if from_id == 0 { first_id } else { from_id };
            if from < first_id {
                return Err(ReadError::Gone { from_id, first_id });
            }
            if max_entries == 0 || from > shared.last_id {
                return Ok(Vec::new());
            }
            // From the segment holding `from`, each with the last id it serves: the next one's
            // first id minus one.
            let mut plan = Vec::new();
            let start = shared
                .segments
                .range(..=from)
                .next_back()
                .map_or(from, |(&first, _)| first);
            let mut iter = shared.segments.range(start..).peekable();
            while let Some((_, segment)) = iter.next() {
                let bound = match iter.peek() {
                    Some((&next, _)) => next - 1,
                    None => shared.last_id,
                };
                plan.push((Arc::clone(segment), bound));
            }
            (from, plan, shared.last_id)
        };
        let mut out = Vec::new();
        let mut budget = Budget {
            entries: max_entries,
            bytes: max_bytes,
            used: 0,
        };
        let mut next = from;
        for (segment, bound) in plan {
            let bound = bound.min(last_id);
            if next > bound {
                continue;
            }
            read_segment(&segment, next, bound, &mut budget, &mut out)?;
            if budget.full(out.len()) {
                break;
            }
            next = bound + 1;
        }
        let shared = read_lock(&self.shared);
        for stored in &mut out {
            if !stored.tombstone && shared.tombstones.contains(&stored.id) {
                stored.tombstone = true;
            }
            if stored.tombstone {
                stored.message = Bytes::new();
            }
        }
        Ok(out)
    }
}

struct Budget {
    entries: usize,
    bytes: usize,
    used: usize,
}

impl Budget {
    fn full(&self, taken: usize) -> bool {
        taken >= self.entries || (taken > 0 && self.used >= self.bytes)
    }

    /// Whether one more entry of `len` bytes fits after `taken` ones.
    fn fits(&self, taken: usize, len: usize) -> bool {
        taken == 0 || (taken < self.entries && self.used.saturating_add(len) <= self.bytes)
    }
}

/// Appends to `out` the entries `from..=bound` of `segment` that fit the budget.
fn read_segment(
    segment: &Segment,
    from: u64,
    bound: u64,
    budget: &mut Budget,
    out: &mut Vec<Stored>,
) -> Result<(), ReadError> {
    let (point, end) = {
        let index = read_lock(&segment.index);
        let at = index.points.partition_point(|&(id, _)| id <= from);
        match at.checked_sub(1).and_then(|i| index.points.get(i)) {
            Some(&point) => (point, index.file_len),
            None => {
                return Err(corrupt(
                    segment,
                    from,
                    0,
                    "the segment holds no entry there",
                ));
            }
        }
    };
    let (mut expected, start) = point;
    let mut scan = Scan::new(&segment.file, &segment.path, start, end, CHUNK);
    loop {
        if expected > bound || budget.full(out.len()) {
            return Ok(());
        }
        let pos = scan.pos();
        match scan.next() {
            Ok(Some((
                Record::Entry {
                    id,
                    message,
                    tombstone,
                },
                _,
            ))) => {
                if id != expected {
                    let why = format!("entry id {id} where {expected} was expected");
                    return Err(corrupt(segment, expected, pos, &why));
                }
                if id >= from {
                    if !budget.fits(out.len(), message.len()) {
                        return Ok(());
                    }
                    budget.used += message.len();
                    out.push(Stored {
                        id,
                        message,
                        tombstone,
                    });
                }
                expected += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(corrupt(
                    segment,
                    expected,
                    pos,
                    "the segment ends before it",
                ))
            }
            Err(ScanError::Io(e)) => return Err(e.into()),
            Err(ScanError::Decode(e)) => {
                return Err(corrupt(segment, expected, pos, &e.to_string()))
            }
        }
    }
}

/// The read's error; the first one found in a segment is logged, naming the file and the id,
/// since a sealed segment whose index is intact is not read at start and only a read finds it.
fn corrupt(segment: &Segment, id: u64, offset: u64, reason: &str) -> ReadError {
    if !segment.damage_reported.swap(true, Ordering::Relaxed) {
        tracing::error!(path = %segment.path.display(), id, offset, reason, "a read found a damaged segment: ids from it are not served");
    }
    ReadError::Corrupt {
        path: segment.path.clone(),
        id,
        offset,
        reason: reason.to_owned(),
    }
}
