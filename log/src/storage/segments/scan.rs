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
            let len = (needed.max(self.chunk) as u64).min(self.end - self.pos);
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
