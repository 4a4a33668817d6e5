//! Durable storage of one node's log: an append-only file of checksummed records.
//!
//! # Format
//!
//! `DATA_DIR/log.bin` is a sequence of records, each framed as
//!
//! ```text
//! [u32 LE payload length][u32 LE CRC-32 (IEEE) of the payload][payload]
//! ```
//!
//! and each payload is one tag byte followed by little-endian fields (strings and byte strings
//! as a `u32` length and the data):
//!
//! | tag | record      | fields                                                  |
//! |-----|-------------|---------------------------------------------------------|
//! | 1   | `Meta`      | `log_id: str`                                           |
//! | 2   | `Entry`     | `id: u64`, `flags: u8` (bit 0 = tombstone), `message: bytes` |
//! | 3   | `Tombstone` | `id: u64`                                               |
//! | 4   | `Decided`   | `upto: u64`                                             |
//! | 5   | `MasterStart` | `instance: u64`, `recovered: u64`                     |
//!
//! The first record is always `Meta` (the log's identity); a fresh secondary may append one more
//! `Meta` before its first entry, when it adopts the master's identity. Entries follow with ids
//! contiguous from 1; `Tombstone`, `Decided` and `MasterStart` records are interleaved as the
//! node learns them (a `MasterStart` drops the undecided ids above its `recovered`).
//!
//! # Why this shape
//!
//! - **Append-only**: the log itself only grows at its end (ids, tombstones and the decided
//!   frontier all move forward), so the file never rewrites old bytes. A crash can only damage
//!   the last write, never what was already acknowledged.
//! - **Length prefix**: lets recovery walk the file record by record without a separate index.
//!   The length is capped ([`record::MAX_PAYLOAD`]) so a corrupt length cannot make recovery
//!   allocate gigabytes.
//! - **Checksum**: a write cut short by a crash or power loss (a *torn* record), or bytes damaged
//!   on disk, are recognised instead of being replayed as data. Recovery keeps every record up to
//!   the first bad one and truncates the file there, so appends continue after good data.
//! - **Replayed into a [`crate::log::Log`]**: the file stores the same events the in-memory log
//!   receives (`push`, `tombstone`, `set_decided`), so recovery is replay and the visibility rule
//!   still lives only in [`crate::log`].
//! - **Group commit**: [`LogFile::append`] takes many records, writes them in one `write` and
//!   syncs once, so the cost of `fdatasync` (policy [`FsyncPolicy::Always`]) is shared by every
//!   append waiting at that moment.
//!
//! All I/O here is blocking `std`; callers run it on a dedicated thread or `spawn_blocking`.

mod error;
mod file;
pub mod record;
pub mod segments;

pub use error::{CutReason, InvalidRecord, IoError, NotMeta, Op, OpenError, StorageError};
pub use file::{
    Cut, FsyncPolicy, LogFile, Recovered, UnknownFsyncPolicy, FILE_NAME, INCOMPLETE_MARKER,
};
pub use record::{decode, encode, DecodeError, Record};
pub use segments::{Reader, SegmentLog};
