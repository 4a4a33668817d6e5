//! The log on disk in segment files, so that neither start-up nor memory grows with the log.
//!
//! [`LogFile`] keeps one file that start-up reads whole and replays into
//! memory: fine for a million entries, not for a log kept for weeks. Here the same records live
//! in a directory of segments; only the last one is read at start, and entries are read back
//! by id with positional reads (the page cache does the caching), never held in memory.
//!
//! # Format
//!
//! `DATA_DIR/segments/` holds, for each segment, named by its first id in 20 digits (so names
//! sort as ids do):
//!
//! - `<first id>.log`: records framed and encoded exactly as in `log.bin` ([`super::record`]).
//!   A segment starts with a **header** that carries everything about the log except its
//!   entries, as it stood when the segment was started: `Meta` (the log id), every
//!   `MasterStart` so far, one `Tombstone` per aborted id from the first retained id on
//!   (including ids not held yet), then exactly one `Decided`, which ends the header. The
//!   **body** follows: the entries from `<first id>` on, contiguous, with `Tombstone`,
//!   `Decided` and `MasterStart` records interleaved as they come, exactly as in `log.bin`
//!   (a fresh secondary may append one `Meta` before its first entry).
//! - `<first id>.idx`: the sparse index of a *sealed* segment (every segment but the last):
//!   `(id, byte offset)` of the segment's first entry and then of an entry every
//!   [`Config::index_interval`] bytes, with the segment's last id and length, under a CRC-32.
//!   The active (last) segment's index is only in memory: open scans that segment anyway.
//!
//! A sealed segment holds the ids from its first id to the next segment's first id minus one.
//! Entries above that are a dead tail a truncation left behind (below), never read.
//!
//! # Why this shape
//!
//! - **Start-up reads one segment.** The last segment's header holds the whole state as of its
//!   start, and its body the changes since, so replaying that one file recovers the log id, the
//!   last id, the decided frontier, the tombstones and the master starts. Sealed segments
//!   contribute only their index files (16 KiB per 64 MiB segment by default); their entries
//!   are not read, not even checked: a damaged sealed segment is found when a read reaches the
//!   damage, and that read fails naming the file and offset instead of serving a wrong range.
//!   (Only a sealed segment whose index is missing or does not match it is read, once, to
//!   rebuild the index; damage found then, or a segment missing between two others, is
//!   reported by open as [`Opened::damaged`].) Recovery walks the active segment a chunk
//!   (1 MiB) at a time, so open's memory does not grow with the segment size either.
//! - **Tombstones are repeated in every header.** A tombstone may name any id, also one sealed
//!   long ago (an abort decided after a roll) or one not held yet, so no per-segment summary
//!   can hold them without open reading every summary and replaying truncations across them.
//!   Repeating the set in each header keeps open to one file. Aborts are rare (17 bytes each),
//!   so even 100,000 of them cost 1.7 MB per 64 MiB segment. They are also kept in memory
//!   (a set, as [`crate::log::Log`] does today), for the `tombstone` flag of reads.
//! - **Same records, same codec.** Checksums, the size cap, torn-tail recovery and the
//!   [`Record`] stream callers append are those of `log.bin`, so the callers' group commit and
//!   their records do not change, and recovery of the active segment is the same cut-at-the-
//!   first-bad-record replay, per segment.
//! - **Group commit, one segment per write.** [`SegmentLog::append`] encodes a batch into one
//!   buffer, writes it at the end of the active segment in one `write`, and syncs once per the
//!   [`FsyncPolicy`]. A segment rolls when it has reached [`Config::segment_bytes`] *before* a
//!   write, so a batch is never split over two files (a segment may exceed the size by one
//!   batch).
//! - **Rolling is crash-safe by order.** The active segment is synced, its index written
//!   (temp file, sync, rename; a lost index is rebuilt from the segment at open), then the new
//!   segment is created with its header whole (temp file, sync, rename, directory sync). A
//!   crash before the rename leaves the old segment active; after it, the new one, whose header
//!   already holds everything the old one said. A roll always syncs, also with
//!   `FSYNC=never`: it happens once per segment, and it keeps every sealed segment whole.
//! - **Truncation starts a new segment.** A `MasterStart` that recovered fewer ids than held
//!   drops the ids above `recovered` (only undecided ones: the same check as `log.bin`). Here it
//!   starts a new segment at `recovered + 1` whose header records the start and the state after
//!   it. The segment that held `recovered` keeps the dropped entries as a dead tail (the next
//!   segment's name bounds it), so no sealed byte is ever rewritten. If segments at or above
//!   `recovered + 1` exist, the new segment is first renamed to `<first id>.trunc`, which says
//!   "every segment from this id on is replaced by me"; then those are removed, highest first,
//!   and it is renamed to `.log`. Open finishes a `.trunc` it finds, so a crash between any two
//!   steps leaves either the old log or the truncated one, never a mix. Truncation within a
//!   segment's body never happens, and replay refuses it (it cuts there).
//! - **Reads without the writer's lock.** [`Reader`] is a cheap clone that shares the list of
//!   segments (each with its own read-only handle and index) with the writer; a read copies
//!   what it needs under a short read lock and does its I/O (`read_exact_at`) without any lock,
//!   so reads run beside appends. A read sees entries whose write has completed, synced or not:
//!   the caller decides what to show (the decided prefix), as it does with the in-memory log.
//!   A segment removed meanwhile (retention, truncation) stays readable through the open handle.
//! - **Retention removes whole sealed segments, oldest first**, by total bytes and/or by age
//!   (the file's modification time, the time of its last append), never the active one, never
//!   one holding an id at or above the caller's floor, which is at most one above its decided
//!   frontier (a truncation may still need the segment an undecided id is in). The directory is synced after each removal, so a
//!   crash never leaves a hole in the middle. (The segments of a converted `log.bin` all date
//!   from the conversion, so age counts from then.)
//! - **Conversion of `log.bin`.** A data directory with `log.bin` and no `segments/` is
//!   recovered with [`LogFile::open`] (the same replay as before, so nothing is interpreted
//!   differently), written into `segments.converting/`, synced, renamed to `segments/`, and
//!   only then is `log.bin` renamed to `log.bin.converted` (kept: deleting the only copy of a
//!   log is the operator's decision). A crash before the rename of the directory redoes the
//!   conversion; after it, the open finishes the rename of `log.bin`. Conversion holds the
//!   old log in memory once, as starting on it did.
//!
//! All I/O here is blocking `std`; callers run it on a dedicated thread or `spawn_blocking`.
//!
//! # How a node uses it
//!
//! [`SegmentLog::open`] replaces `LogFile::open`: the node takes `log_id`, `last_id`,
//! `decided`, `tombstones` and `starts` from [`Opened`] (instead of a whole [`crate::log::Log`]),
//! logs [`Opened::converted`], [`Opened::cut`] and [`Opened::damaged`] once, and keeps the
//! writer where it keeps its `LogFile` today: [`SegmentLog::append`],
//! [`append_unsynced`](SegmentLog::append_unsynced), [`sync`](SegmentLog::sync),
//! [`mark_complete`](SegmentLog::mark_complete), [`master_starts`](SegmentLog::master_starts)
//! take the same arguments. Pages, `Watch` catch-up and replication catch-up read through a
//! [`Reader`] ([`SegmentLog::reader`]), and the node runs [`SegmentLog::retain`] now and then
//! with the lowest id it still needs.

mod convert;
mod format;
mod reader;
mod scan;
#[cfg(test)]
mod tests;
mod writer;

pub use convert::{Conversion, CONVERTED_NAME, CONVERTING_DIR};
pub use format::BadHeader;
pub use reader::{Reader, Stored};
pub use writer::{SegmentInfo, SegmentLog};

use super::error::{CutReason, IoError, OpenError, StorageError};
#[allow(unused_imports)] // named in the docs
use super::{FsyncPolicy, LogFile, Record};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Name of the segment directory inside the data directory.
pub const SEGMENTS_DIR: &str = "segments";

/// Default size at which the active segment rolls: large enough that a log of ten million
/// 100-byte entries is a couple of dozen files, small enough that retention can free space in
/// useful steps and open replays little.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Default distance between two index points: 64 KiB. Every sealed segment's index is held
/// in memory, so its size must not grow with what is retained beyond a trifle: 16 bytes per
/// 64 KiB of log is 25 MB per 100 GB (at one point per 4 KiB, as Kafka's memory-mapped index
/// has, it would be 400 MB), and open reads that much. A read by id then reads at most 64 KiB
/// before its entry, in the one positional read of [`Reader::read`]'s first chunk, and
/// checksums it at memory speed: on a cold cache the cost is the one read either way.
pub const DEFAULT_INDEX_INTERVAL: u64 = 64 * 1024;

/// How the segments are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub fsync: FsyncPolicy,
    /// The active segment rolls before a write once it has at least this many bytes.
    pub segment_bytes: u64,
    /// Bytes between two index points (at least one entry apart).
    pub index_interval: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            index_interval: DEFAULT_INDEX_INTERVAL,
        }
    }
}

/// What [`SegmentLog::open`] found: the log apart from its entries, and what open had to do.
#[derive(Debug)]
pub struct Opened {
    pub log_id: String,
    /// First id retained (1 until retention removed a segment).
    pub first_id: u64,
    pub last_id: u64,
    pub decided: u64,
    /// Aborted ids from `first_id` on, including ones above `last_id`.
    pub tombstones: BTreeSet<u64>,
    /// Every `MasterStart` as `(instance, recovered)`, in order.
    pub starts: Vec<(u64, u64)>,
    /// Set when a torn or corrupt tail was cut off the active segment (or off `log.bin` while
    /// converting it).
    pub cut: Option<SegmentCut>,
    /// Set when no log was there and this one was just created: why.
    pub created: Option<&'static str>,
    /// The incomplete marker was there at open (see [`LogFile::mark_complete`]).
    pub unfinished: bool,
    /// Set when this open converted `log.bin` into segments: say so once.
    pub converted: Option<Conversion>,
    /// Sealed segments whose index was missing or damaged and was rebuilt by reading them.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Ranges of ids that cannot be read (a sealed segment damaged or cut short, found while
    /// rebuilding its index, or a segment missing between two others). Open still succeeds: the
    /// rest of the log is served, and a read of such a range fails naming the file.
    pub damaged: Vec<Damage>,
}

/// A tail removed at recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCut {
    /// The file it was cut from.
    pub path: PathBuf,
    /// Where the first bad record started (= the file's length after the cut).
    pub offset: u64,
    pub bytes_cut: u64,
    pub reason: SegmentCutReason,
}

/// Why recovery cut the tail of a segment at some record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentCutReason {
    #[error(transparent)]
    Record(#[from] CutReason),
    /// A `MasterStart` in a segment's body dropping ids held in that body: the writer starts a
    /// new segment for that instead, so these bytes are not its.
    #[error(
        "a MasterStart record drops ids above {recovered} within a segment holding up to {last_id}"
    )]
    TruncationInsideSegment { recovered: u64, last_id: u64 },
    /// The last segment was empty (emptied from outside): it was removed, and the log ends
    /// with the one before it.
    #[error("the last segment was empty; the log ends with the one before it")]
    EmptyLastSegment,
}

/// Ids that cannot be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    /// The unreadable ids, inclusive.
    pub ids: (u64, u64),
    pub reason: String,
}

/// Why [`SegmentLog::open`] could not give a log.
#[derive(Debug, thiserror::Error)]
pub enum SegmentOpenError {
    #[error(transparent)]
    Io(#[from] IoError),
    /// The active segment's header is damaged: it holds the log's identity and state, and
    /// nothing else does, so it is left as it is for an operator to look at.
    #[error("{} is not a usable replog segment: {reason}", path.display())]
    BadHeader { path: PathBuf, reason: BadHeader },
    /// Recovering `log.bin` for conversion failed; `log.bin` is untouched.
    #[error("cannot convert the log file: {0}")]
    Convert(#[from] OpenError),
    /// `segments/`, `log.bin` and `log.bin.converted` are all there: `log.bin` was written
    /// after its conversion (by an older version), so either choice would lose entries.
    #[error(
        "{} holds both segments/ and a log.bin written after it was converted ({CONVERTED_NAME} is there too); move one of them away",
        dir.display()
    )]
    BothFormats { dir: PathBuf },
    /// Writing the converted segments failed; `log.bin` is untouched.
    #[error("cannot write the converted log: {0}")]
    ConvertWrite(#[from] StorageError),
}

/// When to remove old segments: either limit alone, or both (a segment goes when either says
/// so).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the segments' total size at most this (`RETENTION_BYTES`), removing the oldest.
    pub max_bytes: Option<u64>,
    /// Remove a sealed segment whose last append is older than this (`RETENTION_SECONDS`).
    pub max_age: Option<Duration>,
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// Below the first retained id (an API answers 410 with `first_id`).
    #[error("id {from_id} is no longer retained; the first retained id is {first_id}")]
    Gone { from_id: u64, first_id: u64 },
    #[error(transparent)]
    Io(#[from] IoError),
    /// The segment holding `id` does not hold it readably: the range is not served.
    #[error("segment {} cannot serve id {id}: {reason} (at offset {offset})", path.display())]
    Corrupt {
        path: PathBuf,
        id: u64,
        offset: u64,
        reason: String,
    },
}
