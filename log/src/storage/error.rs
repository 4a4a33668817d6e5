//! What can go wrong with the log file: opening it ([`OpenError`]), writing to it
//! ([`StorageError`]), a record that cannot follow what came before ([`InvalidRecord`]), and why
//! recovery cut a tail ([`CutReason`]). Every message names the file and the problem.

use super::record::{DecodeError, MAX_PAYLOAD};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file-system call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    CreateDir,
    Open,
    Read,
    Create,
    Write,
    Sync,
    Truncate,
    Rename,
    Remove,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CreateDir => "create the directory",
            Self::Open => "open",
            Self::Read => "read",
            Self::Create => "create",
            Self::Write => "write",
            Self::Sync => "sync",
            Self::Truncate => "truncate",
            Self::Rename => "rename",
            Self::Remove => "remove",
        })
    }
}

/// A file-system call in the data directory failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct IoError {
    pub op: Op,
    pub path: PathBuf,
    /// Shared, so that a log file made unusable by this failure can name it again later.
    pub source: Arc<io::Error>,
}

impl IoError {
    pub(crate) fn new(op: Op, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// Names the call and the path of a failed `std::io` result.
pub(crate) trait At<T> {
    fn at(self, op: Op, path: &Path) -> Result<T, IoError>;
}

impl<T> At<T> for io::Result<T> {
    fn at(self, op: Op, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(op, path, source))
    }
}

/// Why [`LogFile::open`](super::LogFile::open) could not give a log.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Io(#[from] IoError),
    /// The file's first record is not a valid `Meta`: it is not a replog log file, or its head
    /// is damaged. It is left as it is, since cutting it would throw away the whole log.
    #[error(
        "{} is not a replog log file: its first record is not a valid Meta record ({reason})",
        path.display()
    )]
    NotALog { path: PathBuf, reason: NotMeta },
}

/// What stands where a log file's `Meta` record should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotMeta {
    /// A valid record of another kind (named with its article: "an Entry record").
    #[error("found {0}")]
    Other(&'static str),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A record that cannot follow the ones before it: recovery stops before it, and
/// [`LogFile::append`](super::LogFile::append) refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    #[error("record of {len} bytes exceeds the maximum of {MAX_PAYLOAD}")]
    TooLarge { len: usize },
    #[error("entry id {id} is not the next id {expected}")]
    NotNext { id: u64, expected: u64 },
    #[error("tombstone of id 0")]
    TombstoneZero,
    #[error("a Meta record follows entry {last_id}")]
    MetaAfterEntries { last_id: u64 },
    #[error(
        "a MasterStart record drops ids above {recovered}, but ids up to {decided} are decided"
    )]
    DropsDecided { recovered: u64, decided: u64 },
}

/// Why recovery cut the tail of a log file at some record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CutReason {
    /// The bytes there are not a record (torn, corrupt).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The record there cannot follow the ones before it.
    #[error(transparent)]
    Invalid(#[from] InvalidRecord),
}

/// Why an append or sync of the log file failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// Nothing was written: recovery would cut the record off, with every one after it.
    #[error("record refused: {0}")]
    Refused(#[from] InvalidRecord),
    #[error(transparent)]
    Io(#[from] IoError),
    /// An earlier write or sync failed and the file could not be put back in a known state.
    #[error(
        "log file {} is unusable after an earlier failure ({cause}); restart to recover",
        path.display()
    )]
    Unusable { path: PathBuf, cause: IoError },
}
