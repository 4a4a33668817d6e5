//! One record of the log file: framing, checksum and payload, as pure functions without I/O.
//!
//! Keeping this free of I/O lets recovery decode from a byte slice and lets the decoder be tested
//! (and fuzzed) on arbitrary input: every failure is a [`DecodeError`], never a panic.

use bytes::Bytes;

/// Bytes before the payload: `u32` LE payload length, then `u32` LE CRC-32 of the payload.
pub const HEADER_LEN: usize = 8;

/// Largest payload accepted. A corrupt length field must not make recovery allocate or wait for
/// gigabytes; a real record is far smaller (a message plus a few bytes).
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

const TAG_META: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_TOMBSTONE: u8 = 3;
const TAG_DECIDED: u8 = 4;
const TAG_MASTER_START: u8 = 5;

/// Entry flag bit: the entry was aborted when it was written.
const FLAG_TOMBSTONE: u8 = 1;

/// One thing the log file remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// First record of every file: the log's identity.
    Meta { log_id: String },
    /// An entry at id (ids are contiguous from 1 in the file). tombstone=true means aborted,
    /// message empty.
    Entry {
        id: u64,
        message: Bytes,
        tombstone: bool,
    },
    /// The id was aborted after its entry was written.
    Tombstone { id: u64 },
    /// Every id up to `upto` is decided.
    Decided { upto: u64 },
    /// A secondary heard a new master process, which had recovered ids up to `recovered`:
    /// every held id above that is dropped (it was never committed; see
    /// `ReplicateRequest.starts`), and entries after this record come from that process. A
    /// master records one at each start, with the last id it recovered.
    MasterStart { instance: u64, recovered: u64 },
}

impl Record {
    /// `(instance, recovered)` of a `MasterStart` record.
    pub fn master_start(&self) -> Option<(u64, u64)> {
        match *self {
            Record::MasterStart {
                instance,
                recovered,
            } => Some((instance, recovered)),
            _ => None,
        }
    }
}

/// The master process (term) that wrote the last of ids `1..=held`, by the `MasterStart`
/// records a file holds, as `(instance, recovered)` (0 if none, or `held` is 0).
///
/// Raft's election restriction compares the term of the last entry held, not the term a node
/// follows: a node hears a new master process before it receives that process's entries, and
/// ranking it by that process would let a node still catching up outrank one holding more
/// entries of the same lineage. A process wrote only the ids above its start's `recovered`
/// (those up to it it took from earlier processes), so the last id held is that of the latest
/// process whose start recovered fewer.
pub fn last_term(starts: &[(u64, u64)], held: u64) -> u64 {
    starts
        .iter()
        .filter(|&&(_, recovered)| recovered < held)
        .map(|&(instance, _)| instance)
        .max()
        .unwrap_or(0)
}

/// Why the bytes at some offset are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or the announced payload: a write cut short by a crash.
    #[error("torn record: needs {needed} bytes, only {available} present")]
    Torn { needed: usize, available: usize },
    /// The length field exceeds [`MAX_PAYLOAD`]: a corrupt header.
    #[error("record length {len} exceeds the maximum of {MAX_PAYLOAD} bytes")]
    TooLong { len: usize },
    /// The payload does not match its checksum.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    /// The checksum matched but the first payload byte names no known record kind.
    #[error("unknown record tag {0}")]
    UnknownTag(u8),
    /// The checksum matched but the fields do not parse (short, trailing bytes, bad UTF-8, ...).
    #[error("malformed record payload: {0}")]
    Malformed(&'static str),
}

/// Length of the payload `encode` writes for `record` (without the header).
///
/// Lets a writer refuse a record over [`MAX_PAYLOAD`] *before* writing it: such a record would
/// be cut off as corrupt on the next recovery, losing an acknowledged write.
pub fn payload_len(record: &Record) -> usize {
    1 + match record {
        Record::Meta { log_id } => 4 + log_id.len(),
        Record::Entry { message, .. } => 8 + 1 + 4 + message.len(),
        Record::Tombstone { .. } | Record::Decided { .. } => 8,
        Record::MasterStart { .. } => 16,
    }
}

/// Appends the framed `record` to `out`.
///
/// A record whose payload exceeds [`MAX_PAYLOAD`] is still written, but [`decode`] rejects it;
/// writers check [`payload_len`] first.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    match record {
        Record::Meta { log_id } => {
            out.push(TAG_META);
            put_bytes(out, log_id.as_bytes());
        }
        Record::Entry {
            id,
            message,
            tombstone,
        } => {
            out.push(TAG_ENTRY);
            out.extend_from_slice(&id.to_le_bytes());
            out.push(if *tombstone { FLAG_TOMBSTONE } else { 0 });
            put_bytes(out, message);
        }
        Record::Tombstone { id } => {
            out.push(TAG_TOMBSTONE);
            out.extend_from_slice(&id.to_le_bytes());
        }
        Record::Decided { upto } => {
            out.push(TAG_DECIDED);
            out.extend_from_slice(&upto.to_le_bytes());
        }
        Record::MasterStart {
            instance,
            recovered,
        } => {
            out.push(TAG_MASTER_START);
            out.extend_from_slice(&instance.to_le_bytes());
            out.extend_from_slice(&recovered.to_le_bytes());
        }
    }
    let payload_start = start + HEADER_LEN;
    // Saturate rather than wrap: an oversized payload must fail decoding, not alias a small one.
    let len = u32::try_from(out.len() - payload_start).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(&out[payload_start..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(data);
}

/// Decodes one framed record at the start of `input`.
///
/// Returns `Ok(Some((record, bytes_consumed)))`, `Ok(None)` if `input` is empty, or an error if
/// the record is torn (too short), fails its checksum, announces a length over the cap, has an
/// unknown tag or a malformed payload. Never panics, whatever the input.
pub fn decode(input: &[u8]) -> Result<Option<(Record, usize)>, DecodeError> {
    if input.is_empty() {
        return Ok(None);
    }
    let mut header = Reader::new(input);
    let (Some(len), Some(stored)) = (header.u32(), header.u32()) else {
        return Err(DecodeError::Torn {
            needed: HEADER_LEN,
            available: input.len(),
        });
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD {
        return Err(DecodeError::TooLong { len });
    }
    let total = HEADER_LEN + len;
    let Some(payload) = input.get(HEADER_LEN..total) else {
        return Err(DecodeError::Torn {
            needed: total,
            available: input.len(),
        });
    };
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let record = decode_payload(payload)?;
    Ok(Some((record, total)))
}

fn decode_payload(payload: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader::new(payload);
    let tag = r.u8().ok_or(DecodeError::Malformed("empty payload"))?;
    let record = match tag {
        TAG_META => {
            let raw = r.bytes().ok_or(DecodeError::Malformed("short log id"))?;
            let log_id = std::str::from_utf8(raw)
                .map_err(|_| DecodeError::Malformed("log id is not UTF-8"))?
                .to_owned();
            Record::Meta { log_id }
        }
        TAG_ENTRY => {
            let id = r.u64().ok_or(DecodeError::Malformed("short entry id"))?;
            let flags = r.u8().ok_or(DecodeError::Malformed("short entry flags"))?;
            if flags & !FLAG_TOMBSTONE != 0 {
                return Err(DecodeError::Malformed("unknown entry flags"));
            }
            let message = r.bytes().ok_or(DecodeError::Malformed("short message"))?;
            Record::Entry {
                id,
                message: Bytes::copy_from_slice(message),
                tombstone: flags & FLAG_TOMBSTONE != 0,
            }
        }
        TAG_TOMBSTONE => Record::Tombstone {
            id: r
                .u64()
                .ok_or(DecodeError::Malformed("short tombstone id"))?,
        },
        TAG_DECIDED => Record::Decided {
            upto: r
                .u64()
                .ok_or(DecodeError::Malformed("short decided frontier"))?,
        },
        TAG_MASTER_START => Record::MasterStart {
            instance: r
                .u64()
                .ok_or(DecodeError::Malformed("short master instance"))?,
            recovered: r
                .u64()
                .ok_or(DecodeError::Malformed("short recovered id"))?,
        },
        other => return Err(DecodeError::UnknownTag(other)),
    };
    if !r.rest().is_empty() {
        return Err(DecodeError::Malformed("trailing bytes after the fields"));
    }
    Ok(record)
}

/// Bounds-checked little-endian reads; every read returns `None` instead of panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    fn rest(&self) -> &'a [u8] {
        self.rest
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::Meta {
                log_id: "0123abcd".into(),
            },
            Record::Meta {
                log_id: String::new(),
            },
            Record::Entry {
                id: 1,
                message: Bytes::from_static(b"hello"),
                tombstone: false,
            },
            Record::Entry {
                id: 2,
                message: Bytes::new(),
                tombstone: true,
            },
            Record::Entry {
                id: u64::MAX,
                message: Bytes::from(vec![0u8, 255, 7]),
                tombstone: false,
            },
            Record::Tombstone { id: 7 },
            Record::Decided { upto: 42 },
            Record::Decided { upto: 0 },
            Record::MasterStart {
                instance: u64::MAX,
                recovered: 7,
            },
        ]
    }

    fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        for record in samples() {
            encode(&record, &mut out);
        }
        out
    }

    /// Decodes as far as possible; stops at the first error. Checks progress and bounds.
    fn decode_all(mut input: &[u8]) -> (Vec<Record>, Option<DecodeError>) {
        let mut records = Vec::new();
        loop {
            match decode(input) {
                Ok(None) => return (records, None),
                Ok(Some((record, used))) => {
                    assert!(used >= HEADER_LEN && used <= input.len());
                    records.push(record);
                    input = &input[used..];
                }
                Err(e) => return (records, Some(e)),
            }
        }
    }

    #[test]
    fn the_last_term_is_the_latest_process_that_wrote_an_id_held() {
        let starts = [(1, 0), (2, 5), (4, 9), (6, 3)];
        assert_eq!(last_term(&starts, 0), 0, "nothing held");
        assert_eq!(last_term(&[], 7), 0, "no process known");
        // Process 6 recovered 3: ids up to 3 come from before it, 1 wrote them.
        assert_eq!(last_term(&starts, 3), 1);
        assert_eq!(last_term(&starts, 4), 6);
        assert_eq!(last_term(&starts, 12), 6);
        // A node that heard process 3, which recovered 10, but holds only 6 of those ids: the
        // last one it holds was written by 2, not by the process it follows.
        let behind = [(1, 0), (2, 5), (3, 10)];
        assert_eq!(last_term(&behind, 6), 2);
        assert_eq!(last_term(&behind, 11), 3);
    }

    #[test]
    fn every_kind_round_trips() {
        for record in samples() {
            let mut out = Vec::new();
            encode(&record, &mut out);
            assert_eq!(out.len(), HEADER_LEN + payload_len(&record));
            assert_eq!(decode(&out), Ok(Some((record, out.len()))));
        }
        let (records, error) = decode_all(&stream());
        assert_eq!(records, samples());
        assert_eq!(error, None);
    }

    #[test]
    fn empty_input_is_none() {
        assert_eq!(decode(&[]), Ok(None));
    }

    #[test]
    fn every_prefix_decodes_the_complete_records_and_never_panics() {
        let bytes = stream();
        let mut ends = Vec::new();
        let mut end = 0;
        for record in samples() {
            end += HEADER_LEN + payload_len(&record);
            ends.push(end);
        }
        for cut in 0..=bytes.len() {
            let (records, error) = decode_all(&bytes[..cut]);
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(records, samples()[..complete], "prefix of {cut} bytes");
            let at_boundary = cut == 0 || ends.contains(&cut);
            assert_eq!(error.is_none(), at_boundary, "prefix of {cut} bytes");
            if let Some(error) = error {
                assert!(matches!(error, DecodeError::Torn { .. }), "{error}");
            }
        }
    }

    #[test]
    fn every_single_byte_corruption_is_detected_or_harmless_and_never_panics() {
        let bytes = stream();
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[at] ^= flip;
                let (records, error) = decode_all(&corrupt);
                // CRC-32 detects every single-byte error in the payload, and a changed length
                // moves the checksum window: the corrupt record and everything after is lost,
                // nothing before it.
                assert!(error.is_some(), "flip {flip:#x} at {at} went unnoticed");
                assert!(records.len() < samples().len());
                assert_eq!(records, samples()[..records.len()]);
            }
        }
    }

    #[test]
    fn arbitrary_garbage_never_panics() {
        // A deterministic xorshift stream of junk, with some headers that announce huge lengths.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000 {
            let mut junk = Vec::new();
            for _ in 0..(round % 64) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                junk.push(state as u8);
            }
            let _ = decode_all(&junk);
        }
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 4]);
        assert!(matches!(decode(&huge), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn a_valid_checksum_over_bad_fields_is_malformed() {
        fn framed(payload: &[u8]) -> Vec<u8> {
            let mut out = (payload.len() as u32).to_le_bytes().to_vec();
            out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            out.extend_from_slice(payload);
            out
        }
        assert_eq!(decode(&framed(&[9])), Err(DecodeError::UnknownTag(9)));
        assert!(matches!(
            decode(&framed(&[])),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(&framed(&[TAG_DECIDED, 1, 2])),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(&framed(&[TAG_DECIDED, 0, 0, 0, 0, 0, 0, 0, 0, 1])),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(&framed(&[TAG_META, 1, 0, 0, 0, 0xff])),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(&framed(&[TAG_META, 255, 255, 255, 255])),
            Err(DecodeError::Malformed(_))
        ));
    }
}
