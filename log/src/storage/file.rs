//! The log file on disk: open and recover, append (group commit), sync.

use super::error::{At, CutReason, InvalidRecord, IoError, NotMeta, Op, OpenError, StorageError};
use super::record::{self, Record, MAX_PAYLOAD};
use crate::log::Log;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the log file inside the data directory.
pub const FILE_NAME: &str = "log.bin";

/// Name of the marker that says the log in the data directory may lack acknowledged entries
/// (it was created new, or a tail was cut) and nobody has completed it since
/// ([`LogFile::mark_complete`]). It outlives a crash, so a master killed while it recovers its
/// log from the secondaries still knows, at its next start, that its file is not the whole log.
pub const INCOMPLETE_MARKER: &str = "log.incomplete";

/// When an append is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` after every append call (the default): an acknowledged write survives kill -9
    /// and power loss. Group commit amortises the cost over the records of one call.
    #[default]
    Always,
    /// Leave flushing to the OS: an acknowledged write survives kill -9 of the process (the data
    /// is in the page cache) but not power loss or a kernel crash.
    Never,
}

/// A name that is no [`FsyncPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fsync policy {0:?}: expected \"always\" or \"never\"")]
pub struct UnknownFsyncPolicy(pub String);

impl std::str::FromStr for FsyncPolicy {
    type Err = UnknownFsyncPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(UnknownFsyncPolicy(s.to_owned())),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}

/// What [`LogFile::open`] found.
#[derive(Debug)]
pub struct Recovered {
    pub log: Log,
    /// Set when a torn or corrupt tail was cut off.
    pub cut: Option<Cut>,
    /// Set when no log was there and this one was just created: why (no file, an empty file).
    pub created: Option<&'static str>,
    /// The incomplete marker was there at open: an earlier start found the log incomplete and
    /// did not complete it.
    pub unfinished: bool,
}

/// A tail removed at recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Where the first bad record started (= the file's length after the cut).
    pub offset: u64,
    /// How many bytes were removed.
    pub bytes_cut: u64,
    /// Why the record at `offset` was rejected.
    pub reason: CutReason,
}

/// One node's log file, open for appending.
#[derive(Debug)]
pub struct LogFile {
    file: File,
    path: PathBuf,
    policy: FsyncPolicy,
    /// Reused across appends so group commit does not allocate per call.
    buf: Vec<u8>,
    /// End of the last record known to be written whole. Appends go here, so a failed write
    /// never leaves later records behind garbage that recovery would cut them off with.
    len: u64,
    /// Where the replayed file stands, to refuse appends that recovery would reject.
    tail: Tail,
    /// Every `MasterStart` record in the file, in order, as `(instance, recovered)`.
    starts: Vec<(u64, u64)>,
    /// Set after a write or sync failed and the file could not be put back in a known state.
    /// After a failed fsync the kernel may have dropped the dirty pages while reporting them
    /// clean, so retrying cannot be trusted: only a restart (recovery from what is on disk) can.
    /// Boxed: a file is moved around whole (a master's recovery hands it on), and this is
    /// almost always empty.
    poisoned: Option<Box<IoError>>,
}

/// Where a log file stands as recovery would replay it: its last entry id and its decided
/// frontier.
#[derive(Debug, Clone, Copy, Default)]
struct Tail {
    last_id: u64,
    decided: u64,
}

impl LogFile {
    /// Opens `dir/log.bin` (creating `dir` and the file if missing) and recovers the log in it.
    ///
    /// A new (or empty) file gets a `Meta` record with `new_log_id()`. An existing one is replayed
    /// record by record: `Meta` sets the identity, `Entry` pushes (its id must be `last_id + 1`),
    /// `Tombstone` aborts an id, `Decided` moves the frontier, `MasterStart` drops
    /// the ids above the new master's recovered one. At the first record that fails to
    /// decode or to replay, the file is truncated to the end of the last good record and synced,
    /// and [`Recovered::cut`] says what was removed; nothing before it is lost. A file whose first
    /// record is not a valid `Meta` is [`OpenError::NotALog`]: it is not ours (or its head is
    /// damaged), and cutting it would throw away the whole log.
    pub fn open(
        dir: &Path,
        policy: FsyncPolicy,
        new_log_id: impl FnOnce() -> String,
    ) -> Result<(LogFile, Recovered), OpenError> {
        fs::create_dir_all(dir).at(Op::CreateDir, dir)?;
        let path = dir.join(FILE_NAME);
        let unfinished = dir.join(INCOMPLETE_MARKER).exists();
        let existing = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(IoError::new(Op::Open, &path, e).into()),
        };
        // The whole file is read at once: recovery replays all of it into memory anyway, and a
        // contiguous slice lets the decoder stay free of I/O.
        let mut bytes = Vec::new();
        let created = match existing {
            Some(mut file) => {
                file.read_to_end(&mut bytes).at(Op::Read, &path)?;
                if bytes.is_empty() {
                    // An empty file (truncated, or a link to /dev/null) holds nothing to
                    // replay: a new file takes its place, and `created` says why, so the master
                    // recovers the log from its secondaries instead of serving a new one as if
                    // nothing had happened.
                    tracing::warn!(path = %path.display(), "the log file is empty; starting a new file");
                    Err("the log file was empty")
                } else {
                    Ok(file)
                }
            }
            None => Err("no log file was there"),
        };
        let file = match created {
            Ok(file) => file,
            Err(why) => {
                mark_incomplete(dir)?;
                let (file, recovered) = Self::create_new(dir, path, policy, new_log_id(), why)?;
                return Ok((
                    file,
                    Recovered {
                        unfinished,
                        ..recovered
                    },
                ));
            }
        };
        let (log, starts, good, reason) = replay(&bytes).map_err(|reason| OpenError::NotALog {
            path: path.clone(),
            reason,
        })?;
        let cut = match reason {
            None => None,
            Some(reason) => {
                let total = bytes.len() as u64;
                mark_incomplete(dir)?;
                file.set_len(good).at(Op::Truncate, &path)?;
                file.sync_all().at(Op::Sync, &path)?;
                tracing::warn!(
                    path = %path.display(),
                    offset = good,
                    bytes_cut = total - good,
                    %reason,
                    "cut a torn or corrupt tail off the log file"
                );
                Some(Cut {
                    offset: good,
                    bytes_cut: total - good,
                    reason,
                })
            }
        };
        let tail = Tail {
            last_id: log.last_id(),
            decided: log.decided(),
        };
        let log_file = LogFile {
            file,
            path,
            policy,
            buf: Vec::new(),
            len: good,
            tail,
            starts,
            poisoned: None,
        };
        Ok((
            log_file,
            Recovered {
                log,
                cut,
                created: None,
                unfinished,
            },
        ))
    }

    /// Starts a new log file holding only its Meta record.
    fn create_new(
        dir: &Path,
        path: PathBuf,
        policy: FsyncPolicy,
        log_id: String,
        why: &'static str,
    ) -> Result<(LogFile, Recovered), IoError> {
        let file = create(dir, &path, log_id.clone())?;
        let len = file.metadata().at(Op::Read, &path)?.len();
        let log_file = LogFile {
            file,
            path,
            policy,
            buf: Vec::new(),
            len,
            tail: Tail::default(),
            starts: Vec::new(),
            poisoned: None,
        };
        let recovered = Recovered {
            log: Log::new(log_id),
            cut: None,
            created: Some(why),
            unfinished: false,
        };
        Ok((log_file, recovered))
    }

    /// Appends `records` as one write (group commit: callers pass many at once), then syncs if
    /// the policy says so. Returns when they are durable per the policy.
    ///
    /// Records that recovery would reject are refused up front ([`StorageError::Refused`]),
    /// nothing written: an `Entry` whose id is not the next one, a `Tombstone` of id 0, a `Meta`
    /// after the first entry (a `Meta` before any entry is how a fresh secondary records the
    /// identity it adopts), a `MasterStart` that would drop ids a `Decided` record before it
    /// decided, or a record over the size cap. Otherwise acknowledging it would lose it (and all
    /// after it) at the next start.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        self.write(records, self.policy == FsyncPolicy::Always)
    }

    /// Appends `records` as one write, like [`append`](Self::append), but never syncs: they
    /// become durable with the next append that syncs, or whenever the OS flushes. Only for
    /// records whose loss in a power failure costs nothing, because someone else sends them
    /// again (a secondary's copy of the master's decisions). A kill -9 loses nothing either way:
    /// the write is in the page cache. Recovery keeps a prefix of the records (it stops at the
    /// first bad one), so a record that survives implies that all before it did.
    pub fn append_unsynced(&mut self, records: &[Record]) -> Result<(), StorageError> {
        self.write(records, false)
    }

    fn write(&mut self, records: &[Record], sync: bool) -> Result<(), StorageError> {
        self.usable()?;
        if records.is_empty() {
            return Ok(());
        }
        let tail = self.check(records)?;
        self.buf.clear();
        for record in records {
            record::encode(record, &mut self.buf);
        }
        if let Err(e) = self.write_buf().at(Op::Write, &self.path) {
            self.roll_back();
            return Err(e.into());
        }
        if sync {
            self.sync_data()?;
        }
        self.len += self.buf.len() as u64;
        self.tail = tail;
        self.starts
            .extend(records.iter().filter_map(Record::master_start));
        // Do not keep a huge buffer around after one large batch.
        if self.buf.capacity() > 4 * 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Says that the log in this file is whole again (a master recovered it from its
    /// secondaries): removes the incomplete marker, durably.
    pub fn mark_complete(&self) -> Result<(), StorageError> {
        let Some(dir) = self.path.parent() else {
            return Ok(());
        };
        remove_incomplete_marker(dir)
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The master process named by the last `MasterStart` record, 0 if there is none: in a
    /// master's file its last process, in a secondary's the one whose entries it holds.
    pub fn master_instance(&self) -> u64 {
        self.starts.last().map_or(0, |&(instance, _)| instance)
    }

    /// Every `MasterStart` record, in order, as `(instance, recovered)`.
    pub fn master_starts(&self) -> &[(u64, u64)] {
        &self.starts
    }

    /// The policy this file was opened with.
    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// Forces everything appended so far to disk, whatever the policy (e.g. at shutdown).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.usable()?;
        self.sync_data()
    }

    /// `fdatasync`; a failure makes the file unusable.
    fn sync_data(&mut self) -> Result<(), StorageError> {
        self.file.sync_data().at(Op::Sync, &self.path).map_err(|e| {
            self.poisoned = Some(Box::new(e.clone()));
            e.into()
        })
    }

    /// `Err` once an earlier failure made the file unusable.
    fn usable(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            None => Ok(()),
            Some(cause) => Err(StorageError::Unusable {
                path: self.path.clone(),
                cause: IoError::clone(cause),
            }),
        }
    }

    /// Validates a batch against what recovery accepts; returns where the file stands after it.
    fn check(&self, records: &[Record]) -> Result<Tail, InvalidRecord> {
        let mut tail = self.tail;
        for record in records {
            let len = record::payload_len(record);
            if len > MAX_PAYLOAD {
                return Err(InvalidRecord::TooLarge { len });
            }
            let Tail { last_id, decided } = tail;
            match *record {
                Record::Entry { id, .. } if id != last_id + 1 => {
                    return Err(InvalidRecord::NotNext {
                        id,
                        expected: last_id + 1,
                    })
                }
                Record::Entry { id, .. } => tail.last_id = id,
                Record::Tombstone { id: 0 } => return Err(InvalidRecord::TombstoneZero),
                Record::Tombstone { .. } => {}
                Record::Meta { .. } if last_id > 0 => {
                    return Err(InvalidRecord::MetaAfterEntries { last_id })
                }
                Record::Meta { .. } => tail = Tail::default(),
                Record::Decided { upto } => tail.decided = decided.max(upto),
                Record::MasterStart { recovered, .. } if recovered < decided => {
                    return Err(InvalidRecord::DropsDecided { recovered, decided })
                }
                Record::MasterStart { recovered, .. } => tail.last_id = last_id.min(recovered),
            }
        }
        Ok(tail)
    }

    fn write_buf(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(&self.buf)
    }

    /// After a failed write, removes whatever part of the batch reached the file, so later
    /// appends follow the last good record. If even that fails, the file is unusable.
    fn roll_back(&mut self) {
        if let Err(e) = self.file.set_len(self.len).at(Op::Truncate, &self.path) {
            self.poisoned = Some(Box::new(e));
        }
    }
}

/// The log, the `MasterStart` records as `(instance, recovered)`, the length of the good
/// prefix and, if a tail is bad, why.
type Replayed = (Log, Vec<(u64, u64)>, u64, Option<CutReason>);

/// Replays a whole file. `Err` if the first record is not a valid Meta.
fn replay(bytes: &[u8]) -> Result<Replayed, NotMeta> {
    let (log_id, mut offset) = match record::decode(bytes)? {
        Some((Record::Meta { log_id }, used)) => (log_id, used),
        Some((other, _)) => return Err(NotMeta::Other(kind(&other))),
        None => {
            return Err(NotMeta::Decode(record::DecodeError::Torn {
                needed: record::HEADER_LEN,
                available: 0,
            }))
        }
    };
    let mut log = Log::new(log_id);
    let mut starts = Vec::new();
    let reason = loop {
        let next = match record::decode(&bytes[offset..]) {
            Ok(None) => break None,
            Ok(Some(next)) => next,
            Err(e) => break Some(e.into()),
        };
        let (record, used) = next;
        let start = record.master_start();
        if let Err(e) = apply(&mut log, record) {
            break Some(e.into());
        }
        starts.extend(start);
        offset += used;
    };
    Ok((log, starts, offset as u64, reason))
}

/// Applies one record after the first; `Err` says why it cannot follow what came before.
fn apply(log: &mut Log, record: Record) -> Result<(), InvalidRecord> {
    match record {
        Record::Meta { log_id } => {
            // A fresh secondary adopts the master's identity before it holds any entry, by
            // starting a new log under that identity; replay does the same.
            if log.last_id() > 0 {
                return Err(InvalidRecord::MetaAfterEntries {
                    last_id: log.last_id(),
                });
            }
            *log = Log::new(log_id);
        }
        Record::Entry {
            id,
            message,
            tombstone,
        } => {
            let expected = log.last_id() + 1;
            if id != expected {
                return Err(InvalidRecord::NotNext { id, expected });
            }
            log.push(message, tombstone);
        }
        Record::Tombstone { id: 0 } => return Err(InvalidRecord::TombstoneZero),
        Record::Tombstone { id } => log.tombstone(id),
        Record::Decided { upto } => log.set_decided(upto),
        Record::MasterStart { recovered, .. } => {
            if recovered < log.decided() {
                return Err(InvalidRecord::DropsDecided {
                    recovered,
                    decided: log.decided(),
                });
            }
            log.truncate(recovered);
        }
    }
    Ok(())
}

/// A record's kind, as error messages name it.
pub(crate) fn kind(record: &Record) -> &'static str {
    match record {
        Record::Meta { .. } => "a Meta record",
        Record::Entry { .. } => "an Entry record",
        Record::Tombstone { .. } => "a Tombstone record",
        Record::Decided { .. } => "a Decided record",
        Record::MasterStart { .. } => "a MasterStart record",
    }
}

/// Creates `path` holding only a Meta record, atomically: written to a temporary file, synced,
/// renamed into place, directory synced. A crash at any point leaves either no log file or one
/// with a complete Meta, never a file with a torn head that `open` would refuse.
fn create(dir: &Path, path: &Path, log_id: String) -> Result<File, IoError> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut buf = Vec::new();
    record::encode(&Record::Meta { log_id }, &mut buf);
    {
        let mut file = File::create(&tmp).at(Op::Create, &tmp)?;
        file.write_all(&buf).at(Op::Write, &tmp)?;
        file.sync_all().at(Op::Sync, &tmp)?;
    }
    fs::rename(&tmp, path).at(Op::Rename, &tmp)?;
    sync_dir(dir)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .at(Op::Open, path)?;
    file.seek(SeekFrom::End(0)).at(Op::Open, path)?;
    Ok(file)
}

/// Creates the incomplete marker in `dir`, durably, before the log there is cut or created.
pub(crate) fn mark_incomplete(dir: &Path) -> Result<(), IoError> {
    let marker = dir.join(INCOMPLETE_MARKER);
    File::create(&marker)
        .and_then(|file| file.sync_all())
        .at(Op::Create, &marker)?;
    sync_dir(dir)
}

/// Removes the incomplete marker in `dir`, durably (nothing if it is not there).
pub(crate) fn remove_incomplete_marker(dir: &Path) -> Result<(), StorageError> {
    let marker = dir.join(INCOMPLETE_MARKER);
    match fs::remove_file(&marker) {
        Ok(()) => Ok(sync_dir(dir)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new(Op::Remove, &marker, e).into()),
    }
}

/// Makes a rename or creation in `dir` durable (POSIX needs the directory itself synced).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), IoError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .at(Op::Sync, dir)?;
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DecodeError;
    use bytes::Bytes;

    type Snapshot = (String, u64, u64, Vec<(u64, Bytes)>, Vec<u64>);

    fn snapshot(log: &Log) -> Snapshot {
        (
            log.log_id().to_owned(),
            log.last_id(),
            log.decided(),
            log.visible(1, usize::MAX)
                .into_iter()
                .map(|m| (m.id, m.message))
                .collect(),
            log.tombstones_in(0, u64::MAX).collect(),
        )
    }

    fn entry(id: u64, text: &str) -> Record {
        Record::Entry {
            id,
            message: Bytes::copy_from_slice(text.as_bytes()),
            tombstone: false,
        }
    }

    fn open(dir: &Path) -> (LogFile, Recovered) {
        LogFile::open(dir, FsyncPolicy::Always, || "log-a".to_owned()).unwrap()
    }

    #[test]
    fn a_created_or_cut_log_stays_incomplete_until_marked_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, recovered) = open(tmp.path());
        assert!(recovered.created.is_some() && !recovered.unfinished);
        drop(file);
        // A crash before anyone completed it: the next open still knows.
        let (file, recovered) = open(tmp.path());
        assert!(recovered.created.is_none() && recovered.unfinished);
        file.mark_complete().unwrap();
        drop(file);
        let (mut file, recovered) = open(tmp.path());
        assert!(!recovered.unfinished);
        file.append(&[entry(1, "a")]).unwrap();
        drop(file);
        let path = tmp.path().join(FILE_NAME);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let (_, recovered) = open(tmp.path());
        assert!(recovered.cut.is_some());
        let (_, recovered) = open(tmp.path());
        assert!(recovered.cut.is_none() && recovered.unfinished);
    }

    fn file_len(dir: &Path) -> u64 {
        fs::metadata(dir.join(FILE_NAME)).unwrap().len()
    }

    /// A file with entries 1..=3 decided, 2 aborted, and entry 4 (undecided) as its last record.
    /// Returns the file length before the last record.
    fn write_sample(dir: &Path) -> u64 {
        let (mut file, _) = open(dir);
        file.append(&[entry(1, "a"), entry(2, "b"), entry(3, "c")])
            .unwrap();
        file.append(&[Record::Tombstone { id: 2 }, Record::Decided { upto: 3 }])
            .unwrap();
        let before = file_len(dir);
        file.append(&[entry(4, "d")]).unwrap();
        before
    }

    fn expected_after_cut() -> Vec<(u64, Bytes)> {
        vec![(1, Bytes::from("a")), (3, Bytes::from("c"))]
    }

    /// Reopening after a cut: the file ends at the good prefix, appends continue there and
    /// survive another reopen.
    fn check_cut(dir: &Path, good: u64) -> Cut {
        let (mut file, recovered) = open(dir);
        let cut = recovered.cut.expect("a cut");
        let reported = cut.clone();
        assert_eq!(cut.offset, good);
        assert!(cut.bytes_cut > 0);
        assert_eq!(file_len(dir), good);
        let log = recovered.log;
        assert_eq!(log.log_id(), "log-a");
        assert_eq!(log.last_id(), 3);
        assert_eq!(log.decided(), 3);
        assert_eq!(snapshot(&log).3, expected_after_cut());

        file.append(&[entry(4, "e"), Record::Decided { upto: 4 }])
            .unwrap();
        drop(file);
        let (_, again) = open(dir);
        assert!(again.cut.is_none());
        let mut expected = expected_after_cut();
        expected.push((4, Bytes::from("e")));
        assert_eq!(snapshot(&again.log).3, expected);
        reported
    }

    #[test]
    fn new_file_then_reopen_gives_the_same_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data"); // created by open
        let mut calls = 0;
        let (mut file, recovered) = LogFile::open(&dir, FsyncPolicy::Always, || {
            calls += 1;
            "log-a".to_owned()
        })
        .unwrap();
        assert_eq!(calls, 1);
        assert!(recovered.cut.is_none());
        assert_eq!(file.path(), dir.join(FILE_NAME));
        let mut log = recovered.log;
        assert_eq!(log.log_id(), "log-a");

        let batches = vec![
            vec![entry(1, "a"), entry(2, "b")],
            vec![
                Record::Entry {
                    id: 3,
                    message: Bytes::new(),
                    tombstone: true,
                },
                entry(4, "d"),
                Record::Tombstone { id: 2 },
                Record::Tombstone { id: 9 },
            ],
            vec![],
            vec![Record::Decided { upto: 4 }, entry(5, "e")],
        ];
        for batch in &batches {
            file.append(batch).unwrap();
            for record in batch.clone() {
                apply(&mut log, record).unwrap();
            }
        }
        drop(file);

        let (_, again) = LogFile::open(&dir, FsyncPolicy::Never, || unreachable!()).unwrap();
        assert!(again.cut.is_none());
        assert_eq!(snapshot(&again.log), snapshot(&log));
        assert_eq!(
            snapshot(&again.log).3,
            vec![(1, Bytes::from("a")), (4, Bytes::from("d"))]
        );
        assert_eq!(again.log.last_id(), 5);
        assert_eq!(again.log.decided(), 4);
        assert!(again.log.is_tombstone(9));
    }

    #[test]
    fn a_torn_tail_is_cut_and_appending_continues() {
        let tmp = tempfile::tempdir().unwrap();
        let good = write_sample(tmp.path());
        let full = file_len(tmp.path());
        for torn in [good + 1, good + 8, full - 1] {
            let dir = tmp.path().join(format!("torn-{torn}"));
            fs::create_dir(&dir).unwrap();
            let bytes = fs::read(tmp.path().join(FILE_NAME)).unwrap();
            fs::write(dir.join(FILE_NAME), &bytes[..torn as usize]).unwrap();
            let cut = check_cut(&dir, good);
            assert_eq!(cut.bytes_cut, torn - good);
            assert!(cut.reason.to_string().contains("torn"), "{}", cut.reason);
        }
    }

    #[test]
    fn a_corrupt_last_record_is_cut_and_appending_continues() {
        let tmp = tempfile::tempdir().unwrap();
        let good = write_sample(tmp.path());
        let path = tmp.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let cut = check_cut(tmp.path(), good);
        assert!(
            matches!(cut.reason, CutReason::Decode(DecodeError::Checksum { .. })),
            "{}",
            cut.reason
        );
    }

    #[test]
    fn a_non_contiguous_entry_is_cut_and_appending_continues() {
        let tmp = tempfile::tempdir().unwrap();
        let good = write_sample(tmp.path());
        let path = tmp.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(good as usize);
        record::encode(&entry(5, "gap"), &mut bytes);
        record::encode(&entry(6, "after"), &mut bytes);
        fs::write(&path, &bytes).unwrap();
        let cut = check_cut(tmp.path(), good);
        assert_eq!(
            cut.reason,
            CutReason::Invalid(InvalidRecord::NotNext { id: 5, expected: 4 })
        );
        assert!(
            cut.reason.to_string().contains("entry id 5"),
            "{}",
            cut.reason
        );
        assert_eq!(cut.bytes_cut, bytes.len() as u64 - good);
    }

    #[test]
    fn a_file_without_meta_is_an_error_and_an_empty_one_is_new() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        let mut bytes = Vec::new();
        record::encode(&entry(1, "a"), &mut bytes);
        fs::write(&path, &bytes).unwrap();
        let err = LogFile::open(tmp.path(), FsyncPolicy::Always, || "x".into()).unwrap_err();
        assert!(
            matches!(&err, OpenError::NotALog { path: at, reason: NotMeta::Other(_) } if *at == path),
            "{err}"
        );
        assert!(err.to_string().contains("Meta"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "left untouched");

        fs::write(&path, b"garbage!garbage!").unwrap();
        let err = LogFile::open(tmp.path(), FsyncPolicy::Always, || "x".into()).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::NotALog {
                    reason: NotMeta::Decode(_),
                    ..
                }
            ),
            "{err}"
        );

        fs::write(&path, b"").unwrap();
        let (_, recovered) = open(tmp.path());
        assert_eq!(recovered.log.log_id(), "log-a");
        let (_, again) = LogFile::open(tmp.path(), FsyncPolicy::Always, || unreachable!()).unwrap();
        assert_eq!(again.log.log_id(), "log-a");
    }

    #[test]
    fn a_failed_open_names_the_call_and_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let not_a_dir = tmp.path().join("file");
        fs::write(&not_a_dir, b"x").unwrap();
        let dir = not_a_dir.join("data");
        let err = LogFile::open(&dir, FsyncPolicy::Always, || "x".into()).unwrap_err();
        let OpenError::Io(io) = &err else {
            panic!("{err}")
        };
        assert_eq!((io.op, &io.path), (Op::CreateDir, &dir));
        let expected = format!("cannot create the directory {}: ", dir.display());
        assert!(err.to_string().starts_with(&expected), "{err}");

        fs::create_dir(tmp.path().join(FILE_NAME)).unwrap();
        let err = LogFile::open(tmp.path(), FsyncPolicy::Always, || "x".into()).unwrap_err();
        let OpenError::Io(io) = &err else {
            panic!("{err}")
        };
        assert_eq!((io.op, &io.path), (Op::Open, &tmp.path().join(FILE_NAME)));
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }

    #[test]
    fn a_fresh_secondary_records_the_adopted_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut file, recovered) =
            LogFile::open(tmp.path(), FsyncPolicy::Always, String::new).unwrap();
        assert_eq!(recovered.log.log_id(), "");
        file.append(&[
            Record::Meta {
                log_id: "master".into(),
            },
            entry(1, "a"),
        ])
        .unwrap();
        let err = file
            .append(&[Record::Meta {
                log_id: "other".into(),
            }])
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Refused(InvalidRecord::MetaAfterEntries { last_id: 1 })
            ),
            "{err}"
        );
        drop(file);
        let (_, again) = open(tmp.path());
        assert!(again.cut.is_none());
        assert_eq!(again.log.log_id(), "master");
        assert_eq!(again.log.last_id(), 1);
    }

    #[test]
    fn append_refuses_what_recovery_would_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut file, _) = open(tmp.path());
        let before = file_len(tmp.path());
        for bad in [
            vec![entry(2, "gap")],
            vec![entry(1, "a"), entry(1, "again")],
            vec![Record::Tombstone { id: 0 }],
        ] {
            let err = file.append(&bad).unwrap_err();
            assert!(matches!(err, StorageError::Refused(_)), "{err}");
            assert_eq!(file_len(tmp.path()), before, "nothing written");
        }
        file.append(&[entry(1, "a")]).unwrap();
        drop(file);
        let (_, again) = open(tmp.path());
        assert!(again.cut.is_none());
        assert_eq!(again.log.last_id(), 1);
    }

    #[test]
    fn a_master_start_that_drops_decided_ids_is_refused_before_and_after_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut file, _) = open(tmp.path());
        let start = |recovered| Record::MasterStart {
            instance: 2,
            recovered,
        };
        file.append(&[entry(1, "a"), entry(2, "b"), entry(3, "c")])
            .unwrap();
        let err = file
            .append(&[Record::Decided { upto: 2 }, start(1)])
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Refused(InvalidRecord::DropsDecided {
                    recovered: 1,
                    decided: 2
                })
            ),
            "{err}"
        );
        file.append(&[Record::Decided { upto: 2 }]).unwrap();
        drop(file);
        let (mut file, recovered) = open(tmp.path());
        assert_eq!(recovered.log.decided(), 2);
        assert!(matches!(
            file.append(&[start(1)]),
            Err(StorageError::Refused(InvalidRecord::DropsDecided { .. }))
        ));
        file.append(&[start(2), entry(3, "new c")]).unwrap();
        drop(file);
        let (file, again) = open(tmp.path());
        assert!(again.cut.is_none());
        assert_eq!((again.log.last_id(), again.log.decided()), (3, 2));
        assert_eq!(file.master_starts(), &[(2, 2)]);
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("Never".parse(), Ok(FsyncPolicy::Never));
        let err = "sometimes".parse::<FsyncPolicy>().unwrap_err().to_string();
        assert!(err.contains("always") && err.contains("never"), "{err}");
        assert_eq!(FsyncPolicy::default(), FsyncPolicy::Always);
        assert_eq!(FsyncPolicy::Never.to_string(), "never");
    }
}
