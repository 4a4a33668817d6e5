//! The bytes of the segment directory: file names, a segment's header, its body records, and
//! the sparse index file. Everything here is pure except the small file helpers at the end.

use super::super::error::{At, IoError, NotMeta, Op};
use super::super::record::{self, DecodeError, Record};
use super::scan::{Scan, ScanError};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Digits of a segment's first id in its file name: every `u64` fits, and names sort as ids do.
const DIGITS: usize = 20;

/// What a file in the segment directory is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `<first id>.log`: a segment.
    Log,
    /// `<first id>.idx`: a sealed segment's sparse index.
    Index,
    /// `<first id>.trunc`: a complete new segment that replaces every segment from its first id
    /// on; open finishes the replacement (see [`super`], truncation).
    Trunc,
    /// `*.tmp`: a file being written; never valid, removed at open.
    Tmp,
}

pub(crate) fn name(first_id: u64, kind: Kind) -> String {
    let ext = match kind {
        Kind::Log => "log",
        Kind::Index => "idx",
        Kind::Trunc => "trunc",
        Kind::Tmp => "tmp",
    };
    format!("{first_id:0DIGITS$}.{ext}")
}

/// `(first id, kind)` of a file name of the segment directory; `None` for anything else.
pub(crate) fn parse_name(name: &str) -> Option<(u64, Kind)> {
    if name.ends_with(".tmp") {
        return Some((0, Kind::Tmp));
    }
    let (digits, ext) = name.split_once('.')?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kind = match ext {
        "log" => Kind::Log,
        "idx" => Kind::Index,
        "trunc" => Kind::Trunc,
        _ => return None,
    };
    // Ids start at 1: a segment named 0 is not one of ours.
    let first: u64 = digits.parse().ok()?;
    (first > 0).then_some((first, kind))
}

/// What a node knows about its log apart from the entries themselves: what a segment's header
/// carries, and what open recovers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub log_id: String,
    pub last_id: u64,
    pub decided: u64,
    /// Aborted ids from the first retained id on, including ones above `last_id`.
    pub tombstones: BTreeSet<u64>,
    /// Every `MasterStart` as `(instance, recovered)`, in order.
    pub starts: Vec<(u64, u64)>,
}

/// The header of a new segment holding `state`: `Meta`, every `MasterStart`, every tombstone,
/// then exactly one `Decided`, which ends the header.
pub(crate) fn encode_header(state: &State, out: &mut Vec<u8>) {
    record::encode(
        &Record::Meta {
            log_id: state.log_id.clone(),
        },
        out,
    );
    for &(instance, recovered) in &state.starts {
        record::encode(
            &Record::MasterStart {
                instance,
                recovered,
            },
            out,
        );
    }
    for &id in &state.tombstones {
        record::encode(&Record::Tombstone { id }, out);
    }
    record::encode(
        &Record::Decided {
            upto: state.decided,
        },
        out,
    );
}

/// Why a segment's header cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHeader {
    #[error("its first record is not a valid Meta record ({0})")]
    NotMeta(#[from] NotMeta),
    #[error("its header is damaged at offset {offset}: {reason}")]
    Decode { offset: u64, reason: DecodeError },
    #[error("its header holds {0} where only MasterStart, Tombstone and Decided may be")]
    Unexpected(&'static str),
}

/// Why a segment's header could not be read: bad bytes, or the read itself failed.
#[derive(Debug)]
pub(crate) enum HeaderError {
    Bad(BadHeader),
    Io(IoError),
}

/// Reads the header at the start of segment `first_id` from `scan` (at offset 0). Returns the
/// state it says, with `last_id = first_id - 1`; `scan` is left at the body.
pub(crate) fn read_header(scan: &mut Scan<'_>, first_id: u64) -> Result<State, HeaderError> {
    let mut state = State {
        last_id: first_id.saturating_sub(1),
        ..State::default()
    };
    let mut first = true;
    loop {
        let offset = scan.pos();
        let record = match scan.next() {
            Ok(Some((record, _))) => record,
            Ok(None) => {
                let torn = DecodeError::Torn {
                    needed: record::HEADER_LEN,
                    available: 0,
                };
                return Err(HeaderError::Bad(if first {
                    NotMeta::Decode(torn).into()
                } else {
                    BadHeader::Decode {
                        offset,
                        reason: torn,
                    }
                }));
            }
            Err(ScanError::Io(e)) => return Err(HeaderError::Io(e)),
            Err(ScanError::Decode(reason)) if first => {
                return Err(HeaderError::Bad(NotMeta::Decode(reason).into()))
            }
            Err(ScanError::Decode(reason)) => {
                return Err(HeaderError::Bad(BadHeader::Decode { offset, reason }))
            }
        };
        if first {
            first = false;
            match record {
                Record::Meta { log_id } => state.log_id = log_id,
                other => return Err(HeaderError::Bad(NotMeta::Other(kind(&other)).into())),
            }
            continue;
        }
        match record {
            Record::MasterStart {
                instance,
                recovered,
            } => state.starts.push((instance, recovered)),
            Record::Tombstone { id } => {
                state.tombstones.insert(id);
            }
            Record::Decided { upto } => {
                state.decided = upto;
                return Ok(state);
            }
            other => return Err(HeaderError::Bad(BadHeader::Unexpected(kind(&other)))),
        }
    }
}

pub(crate) use super::super::file::{kind, sync_dir};

/// The sparse index of one sealed segment, as kept in memory and in `<first id>.idx`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Index {
    /// `(id, offset of its Entry record)`, ascending; the first entry of the segment is always
    /// a point, later ones every `index_interval` bytes or so.
    pub points: Vec<(u64, u64)>,
    /// Last entry id in the segment file (0 if none). Ids above the next segment's first id
    /// minus one are a dead tail left by a truncation, never read.
    pub last_id: u64,
    /// Length of the segment file this index describes: a file of another length is not the
    /// one indexed, and the index is rebuilt.
    pub file_len: u64,
}

const INDEX_MAGIC: &[u8; 8] = b"RLOGIDX1";

/// `magic, first_id, last_id, file_len, count: u32, count x (id, offset), crc32` (LE).
pub(crate) fn encode_index(first_id: u64, index: &Index) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + index.points.len() * 16);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&first_id.to_le_bytes());
    out.extend_from_slice(&index.last_id.to_le_bytes());
    out.extend_from_slice(&index.file_len.to_le_bytes());
    let count = u32::try_from(index.points.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for &(id, offset) in index.points.iter().take(count as usize) {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes an index file of segment `first_id`; `None` if it is damaged, of another segment,
/// or not sorted. Never panics.
pub(crate) fn decode_index(bytes: &[u8], first_id: u64) -> Option<Index> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let (magic, rest) = body.split_at_checked(8)?;
    if magic != INDEX_MAGIC {
        return None;
    }
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(rest.get(at..at + 8)?.try_into().ok()?))
    };
    if u64_at(0)? != first_id {
        return None;
    }
    let last_id = u64_at(8)?;
    let file_len = u64_at(16)?;
    let count = u32::from_le_bytes(rest.get(24..28)?.try_into().ok()?) as usize;
    if rest.len() != 28 + count.checked_mul(16)? {
        return None;
    }
    let mut points = Vec::with_capacity(count);
    for i in 0..count {
        points.push((u64_at(28 + 16 * i)?, u64_at(36 + 16 * i)?));
    }
    let sorted = points
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
    let in_range = points
        .iter()
        .all(|&(id, offset)| id >= first_id && id <= last_id && offset < file_len);
    (sorted && in_range).then_some(Index {
        points,
        last_id,
        file_len,
    })
}

/// Writes `bytes` to `dir/<tmp name>`, syncs it, and renames it to `dir/final_name`; the
/// directory is synced only when `sync_dir` says so (a lost rename of an index only costs a
/// rebuild).
pub(crate) fn write_atomic(
    dir: &Path,
    final_name: &str,
    bytes: &[u8],
    sync_directory: bool,
) -> Result<PathBuf, IoError> {
    let tmp = dir.join(format!("{final_name}.tmp"));
    let path = dir.join(final_name);
    {
        let mut file = File::create(&tmp).at(Op::Create, &tmp)?;
        file.write_all(bytes).at(Op::Write, &tmp)?;
        file.sync_all().at(Op::Sync, &tmp)?;
    }
    fs::rename(&tmp, &path).at(Op::Rename, &tmp)?;
    if sync_directory {
        sync_dir(dir)?;
    }
    Ok(path)
}

/// Removes `path` if it is there.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), IoError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(IoError::new(Op::Remove, path, e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_as_ids() {
        assert_eq!(name(1, Kind::Log), "00000000000000000001.log");
        assert_eq!(
            parse_name(&name(u64::MAX, Kind::Index)),
            Some((u64::MAX, Kind::Index))
        );
        assert_eq!(parse_name(&name(42, Kind::Trunc)), Some((42, Kind::Trunc)));
        assert_eq!(
            parse_name("00000000000000000001.log.tmp"),
            Some((0, Kind::Tmp))
        );
        for other in [
            "1.log",
            "x0000000000000000001.log",
            "00000000000000000001.bin",
            "log.bin",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert!(name(9, Kind::Log) < name(10, Kind::Log));
    }

    #[test]
    fn a_header_round_trips() {
        let state = State {
            log_id: "L".into(),
            last_id: 41,
            decided: 40,
            tombstones: [3, 41, 50].into(),
            starts: vec![(1, 0), (2, 30)],
        };
        let mut bytes = Vec::new();
        encode_header(&state, &mut bytes);
        let end = bytes.len() as u64;
        record::encode(&Record::Decided { upto: 41 }, &mut bytes);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("segment");
        fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut scan = Scan::new(&file, &path, 0, bytes.len() as u64, 7);
        assert_eq!(read_header(&mut scan, 42).unwrap(), state);
        assert_eq!(scan.pos(), end);
        for cut in [0, 5, end - 1] {
            let mut scan = Scan::new(&file, &path, 0, cut, 7);
            assert!(
                matches!(read_header(&mut scan, 42), Err(HeaderError::Bad(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_index_round_trips_and_any_damage_is_noticed() {
        let index = Index {
            points: vec![(5, 60), (9, 4200), (14, 8400)],
            last_id: 20,
            file_len: 9000,
        };
        let bytes = encode_index(5, &index);
        assert_eq!(decode_index(&bytes, 5), Some(index));
        assert_eq!(decode_index(&bytes, 6), None, "another segment's index");
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert_eq!(decode_index(&bad, 5), None, "flip at {at}");
        }
        for len in 0..bytes.len() {
            assert_eq!(decode_index(&bytes[..len], 5), None, "cut at {len}");
        }
    }
}
