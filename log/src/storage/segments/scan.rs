//! Walks the records of a segment file a chunk at a time, with positional reads: recovery,
//! index rebuilds and reads all hold one chunk of a segment in memory, never a whole one.

use super::super::error::{At, IoError, Op};
use super::super::record::{self, DecodeError, Record};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes read at once for recovery and index rebuilds.
pub(crate) const RECOVERY_CHUNK: usize = 1024 * 1024;

/// Why [`Scan::next`] stopped before the end.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// The bytes at the scan's offset are not a record.
    Decode(DecodeError),
    Io(IoError),
}

pub(crate) struct Scan<'a> {
    file: &'a File,
    path: &'a Path,
    /// Where the records end (the file's length, or what the writer has written whole).
    end: u64,
    /// Offset of the next record.
    pos: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_start: u64,
    chunk: usize,
}

impl<'a> Scan<'a> {
    pub fn new(file: &'a File, path: &'a Path, start: u64, end: u64, chunk: usize) -> Self {
        Self {
            file,
            path,
            end,
            pos: start,
            buf: Vec::new(),
            buf_start: start,
            chunk,
        }
    }

    /// Offset of the next record (after an error: of the bad one).
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The next record and its offset; `None` at the end.
    pub fn next(&mut self) -> Result<Option<(Record, u64)>, ScanError> {
        loop {
            let rel = usize::try_from(self.pos - self.buf_start).unwrap_or(usize::MAX);
            let have = self.buf.get(rel..).unwrap_or(&[]);
            let at_end = self.buf_start + self.buf.len() as u64 >= self.end;
            let needed = match record::decode(have) {
                Ok(Some((record, used))) => {
                    let at = self.pos;
                    self.pos += used as u64;
                    return Ok(Some((record, at)));
                }
                Ok(None) if at_end => return Ok(None),
                Ok(None) => record::HEADER_LEN,
                // With every byte up to the end in hand, a short record is torn for good.
                Err(e @ DecodeError::Torn { .. }) if at_end => return Err(ScanError::Decode(e)),
                Err(DecodeError::Torn { needed, .. }) => needed,
                Err(e) => return Err(ScanError::Decode(e)),
            };
            let len = (needed.max(self.chunk) as u64).min(self.end.saturating_sub(self.pos));
            self.buf.clear();
            self.buf
                .resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
            self.buf_start = self.pos;
            self.file
                .read_exact_at(&mut self.buf, self.pos)
                .at(Op::Read, self.path)
                .map_err(ScanError::Io)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Whatever the chunk size, a walk gives the records a decode of the whole file gives, and
    /// stops with the same error at the same offset.
    #[test]
    fn any_chunk_size_walks_like_decoding_the_whole_file() {
        let mut bytes = Vec::new();
        let mut ends = vec![0u64];
        for id in 1..40u64 {
            let record = Record::Entry {
                id,
                message: Bytes::from(vec![b'x'; (id * 7 % 90) as usize]),
                tombstone: false,
            };
            record::encode(&record, &mut bytes);
            ends.push(bytes.len() as u64);
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("segment");
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        for chunk in [1, 7, 64, 1000, 1 << 20] {
            for end in [bytes.len() as u64, bytes.len() as u64 - 3, ends[20] + 9] {
                let mut scan = Scan::new(&file, &path, ends[5], end, chunk);
                let mut ids = Vec::new();
                let outcome = loop {
                    match scan.next() {
                        Ok(Some((Record::Entry { id, .. }, at))) => {
                            assert_eq!(at, ends[id as usize - 1]);
                            ids.push(id);
                        }
                        Ok(Some(other)) => panic!("{other:?}"),
                        Ok(None) => break None,
                        Err(ScanError::Decode(e)) => break Some(e),
                        Err(ScanError::Io(e)) => panic!("{e}"),
                    }
                };
                let whole = ends.iter().filter(|&&e| e <= end).count() as u64 - 1;
                assert_eq!(
                    ids,
                    (6..=whole).collect::<Vec<_>>(),
                    "chunk {chunk} end {end}"
                );
                assert_eq!(scan.pos(), ends[whole as usize]);
                assert_eq!(
                    outcome.is_some(),
                    end != bytes.len() as u64,
                    "chunk {chunk} end {end}"
                );
                if let Some(e) = outcome {
                    assert!(matches!(e, DecodeError::Torn { .. }), "{e}");
                }
            }
        }
        // A corrupt record stops the walk at its offset, whatever the chunk.
        let mut bad = bytes.clone();
        bad[ends[10] as usize + 9] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let file = File::open(&path).unwrap();
        for chunk in [1, 13, 1 << 20] {
            let mut scan = Scan::new(&file, &path, 0, bad.len() as u64, chunk);
            let err = loop {
                match scan.next() {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("went past the damage"),
                    Err(e) => break e,
                }
            };
            assert!(matches!(
                err,
                ScanError::Decode(DecodeError::Checksum { .. })
            ));
            assert_eq!(scan.pos(), ends[10]);
        }
    }
}
