//! The writer: open and recover, append (group commit), roll, truncate, retain.

use super::super::error::{At, CutReason, InvalidRecord, IoError, Op, StorageError};
use super::super::file::{mark_incomplete, remove_incomplete_marker, FILE_NAME, INCOMPLETE_MARKER};
use super::super::record::{self, Record, MAX_PAYLOAD};
use super::super::FsyncPolicy;
use super::format::{self, HeaderError, Index, Kind, State};
use super::reader::{read_lock, write_lock, Reader, Segment, Shared};
use super::scan::{Scan, ScanError, RECOVERY_CHUNK};
use super::{
    convert, Config, Damage, Opened, Retention, SegmentCut, SegmentCutReason, SegmentOpenError,
    SEGMENTS_DIR,
};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// A segment as listed by [`SegmentLog::segments`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first_id: u64,
    /// Last id it serves (the next segment's first id minus one; the last id for the active).
    pub last_id: u64,
    pub bytes: u64,
    pub path: PathBuf,
    pub active: bool,
}

/// The segmented log of one node, open for appending.
#[derive(Debug)]
pub struct SegmentLog {
    /// The data directory (home of the incomplete marker).
    dir: PathBuf,
    /// `dir/segments`.
    seg_dir: PathBuf,
    config: Config,
    /// The log as a replay of everything written would give it, apart from the entries.
    state: State,
    active: Active,
    shared: Arc<RwLock<Shared>>,
    /// Reused across appends so group commit does not allocate per call.
    buf: Vec<u8>,
    /// Set after a failure left the files in a state only recovery can be trusted with (see
    /// `LogFile`).
    poisoned: Option<Box<IoError>>,
}

#[derive(Debug)]
struct Active {
    segment: Arc<Segment>,
    /// Handle for appending.
    file: File,
    /// End of the last record written whole.
    len: u64,
}

impl SegmentLog {
    /// Opens the segmented log in `dir` (creating `dir` and a new log if there is none, or
    /// converting `dir/log.bin`), and recovers it by reading the sealed segments' indexes and
    /// replaying only the active segment. A torn or corrupt tail of the active segment is cut
    /// and reported ([`Opened::cut`]), as `LogFile` does for `log.bin`.
    pub fn open(
        dir: &Path,
        config: Config,
        new_log_id: impl FnOnce() -> String,
    ) -> Result<(SegmentLog, Opened), SegmentOpenError> {
        fs::create_dir_all(dir).at(Op::CreateDir, dir)?;
        let seg_dir = dir.join(SEGMENTS_DIR);
        let mut converted = None;
        let mut created = None;
        let mut cut = None;
        let mut new_log_id = Some(new_log_id);
        // Before anything here creates it: whether an earlier start left the log incomplete.
        let unfinished = dir.join(INCOMPLETE_MARKER).exists();
        let mut firsts = if seg_dir.exists() {
            clean_up(&seg_dir)?
        } else {
            Vec::new()
        };
        if firsts.is_empty() {
            // No segment (never a half-converted one: conversion renames a whole directory):
            // `log.bin` is the log if there is one.
            if seg_dir.exists() && dir.join(FILE_NAME).exists() {
                fs::remove_dir_all(&seg_dir).at(Op::Remove, &seg_dir)?;
            }
            if !seg_dir.exists() {
                let conversion = convert::convert(dir, &seg_dir, config, || {
                    new_log_id.take().map_or_else(String::new, |f| f())
                })?;
                match conversion {
                    Some(conversion) => {
                        created = conversion.created;
                        cut = conversion.cut.clone();
                        converted = Some(conversion);
                        firsts = clean_up(&seg_dir)?;
                    }
                    None => {
                        fs::create_dir(&seg_dir).at(Op::CreateDir, &seg_dir)?;
                        format::sync_dir(dir)?;
                    }
                }
            }
        } else {
            // Segments in place and `log.bin` still there: a conversion's last step.
            convert::finish(dir)?;
        }
        // A segment is created whole, header first, so an empty last one was emptied from
        // outside (truncated, or a link to /dev/null): it holds nothing to replay, and the log
        // ends where the one before it ends (or is new), recovered from the others as a cut
        // tail is.
        while let Some(&last) = firsts.last() {
            let path = seg_dir.join(format::name(last, Kind::Log));
            if fs::metadata(&path).at(Op::Read, &path)?.len() > 0 {
                break;
            }
            mark_incomplete(dir)?;
            fs::remove_file(&path).at(Op::Remove, &path)?;
            format::sync_dir(&seg_dir)?;
            firsts.pop();
            tracing::warn!(path = %path.display(), "the last segment of the log was empty; removed it");
            match firsts.last() {
                None => created = Some("the log's only segment was empty"),
                Some(&previous) => {
                    // The one before it is active again: its index is kept in memory.
                    format::remove_if_present(&seg_dir.join(format::name(previous, Kind::Index)))?;
                    cut = Some(SegmentCut {
                        path,
                        offset: 0,
                        bytes_cut: 0,
                        reason: SegmentCutReason::EmptyLastSegment,
                    })
                }
            }
        }
        if firsts.is_empty() {
            let why = created.unwrap_or("no log was there");
            mark_incomplete(dir)?;
            let state = State {
                log_id: new_log_id.take().map_or_else(String::new, |f| f()),
                ..State::default()
            };
            let log = Self::create(dir, &seg_dir, config, state)?;
            let opened = log.opened(Vec::new(), Vec::new(), None, Some(why), unfinished, None);
            return Ok((log, opened));
        }
        let mut segments = BTreeMap::new();
        let mut rebuilt = Vec::new();
        let mut damaged = Vec::new();
        let (&active_first, sealed) = firsts.split_last().unwrap_or((&1, &[]));
        for (i, &first) in sealed.iter().enumerate() {
            let next = firsts.get(i + 1).copied().unwrap_or(active_first);
            let (segment, was_rebuilt, damage) =
                load_sealed(&seg_dir, first, next - 1, config.index_interval)?;
            if was_rebuilt {
                rebuilt.push(segment.path.clone());
            }
            damaged.extend(damage);
            segments.insert(first, Arc::new(segment));
        }
        let path = seg_dir.join(format::name(active_first, Kind::Log));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .at(Op::Open, &path)?;
        let total = file.metadata().at(Op::Read, &path)?.len();
        let (state, index, len, reason) =
            replay_active(&file, &path, total, active_first, config.index_interval)?;
        if let Some(reason) = reason {
            mark_incomplete(dir)?;
            file.set_len(len).at(Op::Truncate, &path)?;
            file.sync_all().at(Op::Sync, &path)?;
            tracing::warn!(path = %path.display(), offset = len, bytes_cut = total - len, %reason, "cut a torn or corrupt tail off the active segment");
            cut = Some(SegmentCut {
                path: path.clone(),
                offset: len,
                bytes_cut: total - len,
                reason,
            });
        }
        let segment = Arc::new(Segment {
            first_id: active_first,
            file: File::open(&path).at(Op::Open, &path)?,
            path,
            index: RwLock::new(index),
            damage_reported: Default::default(),
        });
        segments.insert(active_first, Arc::clone(&segment));
        // Headers written before retention removed a segment still name its tombstones.
        let first_id = segments.keys().next().copied().unwrap_or(active_first);
        let mut state = state;
        state.tombstones = state.tombstones.split_off(&first_id);
        let shared = Shared {
            segments,
            last_id: state.last_id,
            tombstones: state.tombstones.clone(),
        };
        let log = SegmentLog {
            dir: dir.to_owned(),
            seg_dir,
            config,
            state,
            active: Active { segment, file, len },
            shared: Arc::new(RwLock::new(shared)),
            buf: Vec::new(),
            poisoned: None,
        };
        let opened = log.opened(rebuilt, damaged, cut, created, unfinished, converted);
        Ok((log, opened))
    }

    fn opened(
        &self,
        rebuilt_indexes: Vec<PathBuf>,
        damaged: Vec<Damage>,
        cut: Option<SegmentCut>,
        created: Option<&'static str>,
        unfinished: bool,
        converted: Option<super::Conversion>,
    ) -> Opened {
        Opened {
            log_id: self.state.log_id.clone(),
            first_id: self.first_id(),
            last_id: self.state.last_id,
            decided: self.state.decided,
            tombstones: self.state.tombstones.clone(),
            starts: self.state.starts.clone(),
            cut,
            created,
            unfinished,
            converted,
            rebuilt_indexes,
            damaged,
        }
    }

    /// Starts a log in the empty directory `seg_dir` whose first segment's header holds `state`
    /// (its first id is `state.last_id + 1`).
    pub(crate) fn create(
        dir: &Path,
        seg_dir: &Path,
        config: Config,
        state: State,
    ) -> Result<SegmentLog, IoError> {
        let first = state.last_id + 1;
        let active = new_segment(seg_dir, &state)?;
        let shared = Shared {
            segments: BTreeMap::from([(first, Arc::clone(&active.segment))]),
            last_id: state.last_id,
            tombstones: state.tombstones.clone(),
        };
        Ok(SegmentLog {
            dir: dir.to_owned(),
            seg_dir: seg_dir.to_owned(),
            config,
            state,
            active,
            shared: Arc::new(RwLock::new(shared)),
            buf: Vec::new(),
            poisoned: None,
        })
    }

    /// Appends `records` as one write (group commit), then syncs if the policy says so. Takes
    /// and refuses the same records as [`LogFile::append`](super::super::LogFile::append); a
    /// `MasterStart` that drops held ids starts a new segment (see the module doc).
    pub fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        self.write(records, self.config.fsync == FsyncPolicy::Always)
    }

    /// Like [`append`](Self::append) but never syncs (see
    /// [`LogFile::append_unsynced`](super::super::LogFile::append_unsynced)).
    pub fn append_unsynced(&mut self, records: &[Record]) -> Result<(), StorageError> {
        self.write(records, false)
    }

    /// Forces everything appended so far to disk, whatever the policy.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.usable()?;
        self.sync_data()
    }

    /// Says that the log is whole again: removes the incomplete marker, durably.
    pub fn mark_complete(&self) -> Result<(), StorageError> {
        remove_incomplete_marker(&self.dir)
    }

    /// A reader sharing this log's segments; reads run beside appends.
    pub fn reader(&self) -> Reader {
        Reader {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn log_id(&self) -> &str {
        &self.state.log_id
    }

    pub fn last_id(&self) -> u64 {
        self.state.last_id
    }

    pub fn decided(&self) -> u64 {
        self.state.decided
    }

    /// First retained id.
    pub fn first_id(&self) -> u64 {
        read_lock(&self.shared).first_id()
    }

    pub fn is_tombstone(&self, id: u64) -> bool {
        self.state.tombstones.contains(&id)
    }

    /// The master process named by the last `MasterStart`, 0 if none.
    pub fn master_instance(&self) -> u64 {
        self.state
            .starts
            .last()
            .map_or(0, |&(instance, _)| instance)
    }

    /// Every `MasterStart` as `(instance, recovered)`, in order.
    pub fn master_starts(&self) -> &[(u64, u64)] {
        &self.state.starts
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.config.fsync
    }

    /// The segment directory.
    pub fn path(&self) -> &Path {
        &self.seg_dir
    }

    /// Every segment, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let shared = read_lock(&self.shared);
        let mut out: Vec<SegmentInfo> = Vec::new();
        for (&first, segment) in &shared.segments {
            if let Some(previous) = out.last_mut() {
                previous.last_id = first - 1;
            }
            let active = Arc::ptr_eq(segment, &self.active.segment);
            out.push(SegmentInfo {
                first_id: first,
                last_id: shared.last_id,
                bytes: if active {
                    self.active.len
                } else {
                    read_lock(&segment.index).file_len
                },
                path: segment.path.clone(),
                active,
            });
        }
        out
    }

    /// Removes whole sealed segments, oldest first, while the segments' total size is above
    /// `retention.max_bytes` or the oldest was last appended to longer than
    /// `retention.max_age` before `now`. Never the active segment, never one holding `floor`
    /// or a later id: the caller passes the lowest id it still needs, at most one above its
    /// decided frontier (a truncation may still need the segment an undecided id is in; a
    /// master that records no frontier in its files knows it in memory). Returns what it
    /// removed.
    pub fn retain(
        &mut self,
        retention: &Retention,
        floor: u64,
        now: SystemTime,
    ) -> Result<Vec<SegmentInfo>, StorageError> {
        self.usable()?;
        let segments = self.segments();
        let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
        let mut removed = Vec::new();
        for segment in segments {
            if segment.active || segment.last_id >= floor {
                break;
            }
            let over_bytes = retention.max_bytes.is_some_and(|max| total > max);
            let too_old = match retention.max_age {
                Some(max_age) => {
                    let modified = fs::metadata(&segment.path)
                        .and_then(|m| m.modified())
                        .at(Op::Read, &segment.path)?;
                    now.duration_since(modified).unwrap_or(Duration::ZERO) > max_age
                }
                None => false,
            };
            if !(over_bytes || too_old) {
                break;
            }
            self.remove_segment(&segment)?;
            let next = segment.last_id + 1;
            {
                let mut shared = write_lock(&self.shared);
                shared.segments.remove(&segment.first_id);
                shared.tombstones = shared.tombstones.split_off(&next);
            }
            self.state.tombstones = self.state.tombstones.split_off(&next);
            total -= segment.bytes;
            tracing::info!(path = %segment.path.display(), first_id = segment.first_id, last_id = segment.last_id, bytes = segment.bytes, "retention removed a segment");
            removed.push(segment);
        }
        Ok(removed)
    }

    /// Empties the log and starts it again at `first_id` as log `log_id`, keeping its master
    /// starts: every id below `first_id` counts as decided and not retained. A secondary is
    /// re-seeded so when its master no longer holds the ids it lacks.
    ///
    /// Crash-safe by order: the incomplete marker first, then the segments oldest first (as
    /// retention removes them, so a crash leaves a suffix of the old log), then the new
    /// segment, then the marker goes again (unless it was there before). Whatever a crash
    /// leaves is a whole log, or none, marked incomplete, which a secondary takes for one that
    /// lost entries and catches up again. Readers see the new segment as soon as it exists; a
    /// failure midway makes the log unusable until a restart.
    pub fn restart_at(&mut self, first_id: u64, log_id: &str) -> Result<(), StorageError> {
        self.usable()?;
        let was_incomplete = self.dir.join(INCOMPLETE_MARKER).exists();
        mark_incomplete(&self.dir)?;
        let state = State {
            log_id: log_id.to_owned(),
            last_id: first_id.saturating_sub(1),
            decided: first_id.saturating_sub(1),
            tombstones: Default::default(),
            starts: self.state.starts.clone(),
        };
        self.remove_all()
            .and_then(|()| self.start_over(state))
            .map_err(|e| self.poison(e))?;
        tracing::info!(
            first_id,
            "the log starts again at the master's first retained id"
        );
        if !was_incomplete {
            remove_incomplete_marker(&self.dir)?;
        }
        Ok(())
    }

    /// Moves every segment aside, into `DATA_DIR/segments.older-<seconds since 1970>/` (kept:
    /// deleting a log is the operator's decision), and starts an empty, unnamed log in their
    /// place, marked incomplete. Returns where the old segments went. A master whose file the
    /// cluster's log has moved on from (another process served after it was written) does so,
    /// then recovers the log from the secondaries as one that lost its disk.
    ///
    /// Crash-safe: the marker first, then one rename of the directory; a crash after it leaves
    /// no `segments/`, which the next open takes for a new log (marked incomplete).
    pub fn set_aside(&mut self) -> Result<PathBuf, StorageError> {
        self.usable()?;
        mark_incomplete(&self.dir)?;
        let seconds = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let aside = self.dir.join(format!("{SEGMENTS_DIR}.older-{seconds}"));
        let result = fs::rename(&self.seg_dir, &aside)
            .at(Op::Rename, &self.seg_dir)
            .and_then(|()| fs::create_dir(&self.seg_dir).at(Op::CreateDir, &self.seg_dir))
            .and_then(|()| format::sync_dir(&self.dir))
            .and_then(|()| self.start_over(State::default()));
        result.map_err(|e| self.poison(e))?;
        tracing::warn!(aside = %aside.display(), "set the log's segments aside: an empty log takes their place");
        Ok(aside)
    }

    /// Starts the log in the empty segment directory with one segment whose header holds
    /// `state`, and shows it to readers.
    fn start_over(&mut self, state: State) -> Result<(), IoError> {
        let first = state.last_id + 1;
        let active = new_segment(&self.seg_dir, &state)?;
        {
            let mut shared = write_lock(&self.shared);
            shared.segments = BTreeMap::from([(first, Arc::clone(&active.segment))]);
            shared.last_id = state.last_id;
            shared.tombstones.clear();
        }
        self.active = active;
        self.state = state;
        Ok(())
    }

    /// Makes the log unusable after a failure left its files in a state only recovery can be
    /// trusted with.
    fn poison(&mut self, error: IoError) -> StorageError {
        self.poisoned = Some(Box::new(error.clone()));
        error.into()
    }

    /// Removes every segment, oldest first.
    fn remove_all(&self) -> Result<(), IoError> {
        for segment in self.segments() {
            self.remove_segment(&segment)?;
        }
        Ok(())
    }

    /// Removes one segment's file and index, durably: the log first (a lone index is removed
    /// at open, a lone segment would be rebuilt), then the directory synced, one segment at a
    /// time so that removing the oldest first never leaves a hole between two segments.
    fn remove_segment(&self, segment: &SegmentInfo) -> Result<(), IoError> {
        fs::remove_file(&segment.path).at(Op::Remove, &segment.path)?;
        format::remove_if_present(
            &self
                .seg_dir
                .join(format::name(segment.first_id, Kind::Index)),
        )?;
        format::sync_dir(&self.seg_dir)
    }

    fn write(&mut self, records: &[Record], sync: bool) -> Result<(), StorageError> {
        self.usable()?;
        if records.is_empty() {
            return Ok(());
        }
        self.check(records)?;
        let mut rest = records;
        while !rest.is_empty() {
            // Up to the first MasterStart that drops held ids: that one starts a new segment.
            let mut last_id = self.state.last_id;
            let mut split = rest.len();
            for (i, record) in rest.iter().enumerate() {
                match *record {
                    Record::Entry { id, .. } => last_id = id,
                    Record::MasterStart { recovered, .. } if recovered < last_id => {
                        split = i;
                        break;
                    }
                    _ => {}
                }
            }
            let (run, tail) = rest.split_at(split);
            if !run.is_empty() {
                // Only a run with entries rolls: the others are a few bytes, and an entry
                // in every segment keeps the segments few.
                let has_entry = run.iter().any(|r| matches!(r, Record::Entry { .. }));
                if has_entry
                    && self.active.len >= self.config.segment_bytes
                    && self.state.last_id >= self.active.segment.first_id
                {
                    let next = self.state.clone();
                    self.start_segment(next)?;
                }
                self.write_run(run)?;
            }
            rest = match tail.split_first() {
                Some((start, after)) => {
                    if let Some((instance, recovered)) = start.master_start() {
                        self.truncate(instance, recovered)?;
                    }
                    after
                }
                None => &[],
            };
        }
        if sync {
            self.sync_data()?;
        }
        Ok(())
    }

    /// Validates a batch against what recovery accepts, as `LogFile` does, and refuses a
    /// truncation below the first retained id (retention only removes decided ids).
    fn check(&self, records: &[Record]) -> Result<(), InvalidRecord> {
        let (mut last_id, mut decided) = (self.state.last_id, self.state.decided);
        let first_id = self.first_id();
        for record in records {
            let len = record::payload_len(record);
            if len > MAX_PAYLOAD {
                return Err(InvalidRecord::TooLarge { len });
            }
            match *record {
                Record::Entry { id, .. } if id != last_id + 1 => {
                    return Err(InvalidRecord::NotNext {
                        id,
                        expected: last_id + 1,
                    })
                }
                Record::Entry { id, .. } => last_id = id,
                Record::Tombstone { id: 0 } => return Err(InvalidRecord::TombstoneZero),
                Record::Tombstone { .. } => {}
                Record::Meta { .. } if last_id > 0 => {
                    return Err(InvalidRecord::MetaAfterEntries { last_id })
                }
                Record::Meta { .. } => decided = 0,
                Record::Decided { upto } => decided = decided.max(upto),
                Record::MasterStart { recovered, .. } if recovered < decided => {
                    return Err(InvalidRecord::DropsDecided { recovered, decided })
                }
                Record::MasterStart { recovered, .. }
                    if recovered < last_id && recovered + 1 < first_id =>
                {
                    return Err(InvalidRecord::DropsDecided {
                        recovered,
                        decided: first_id - 1,
                    })
                }
                Record::MasterStart { recovered, .. } => last_id = last_id.min(recovered),
            }
        }
        Ok(())
    }

    /// Writes records that stay in the active segment (no truncation among them), in one write.
    fn write_run(&mut self, records: &[Record]) -> Result<(), StorageError> {
        self.buf.clear();
        let mut points = Vec::new();
        let mut last_point = read_lock(&self.active.segment.index)
            .points
            .last()
            .map(|&(_, offset)| offset);
        for record in records {
            if let Record::Entry { id, .. } = *record {
                let offset = self.active.len + self.buf.len() as u64;
                if last_point.is_none_or(|p| offset - p >= self.config.index_interval) {
                    points.push((id, offset));
                    last_point = Some(offset);
                }
            }
            record::encode(record, &mut self.buf);
        }
        let path = &self.active.segment.path;
        let written = self
            .active
            .file
            .seek(SeekFrom::Start(self.active.len))
            .and_then(|_| self.active.file.write_all(&self.buf))
            .at(Op::Write, path);
        if let Err(e) = written {
            // Remove whatever part reached the file, so later appends follow the last good
            // record; if even that fails, only recovery can be trusted.
            if let Err(e) = self
                .active
                .file
                .set_len(self.active.len)
                .at(Op::Truncate, path)
            {
                self.poisoned = Some(Box::new(e));
            }
            return Err(e.into());
        }
        self.active.len += self.buf.len() as u64;
        let mut tombstones = Vec::new();
        let mut reset = false;
        for record in records {
            match record {
                Record::Entry {
                    tombstone: true,
                    id,
                    ..
                }
                | Record::Tombstone { id } => tombstones.push(*id),
                Record::Meta { .. } | Record::MasterStart { .. } => reset = true,
                _ => {}
            }
            // Checked above: replay accepts every record of the run.
            let _ = apply(&mut self.state, record.clone());
        }
        {
            let mut index = write_lock(&self.active.segment.index);
            index.points.extend(points);
            index.file_len = self.active.len;
            if self.state.last_id >= self.active.segment.first_id {
                index.last_id = self.state.last_id;
            }
        }
        let mut shared = write_lock(&self.shared);
        shared.last_id = self.state.last_id;
        if reset {
            shared.tombstones = self.state.tombstones.clone();
        } else {
            shared.tombstones.extend(tombstones);
        }
        drop(shared);
        if self.buf.capacity() > 4 * 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Drops the ids above `recovered` (all undecided: checked) by starting a new segment at
    /// `recovered + 1` whose header records the start.
    fn truncate(&mut self, instance: u64, recovered: u64) -> Result<(), StorageError> {
        let mut next = self.state.clone();
        next.last_id = recovered;
        next.tombstones.split_off(&(recovered + 1));
        next.starts.push((instance, recovered));
        self.start_segment(next)
    }

    /// Seals the active segment and starts one whose header holds `next` (its first id is
    /// `next.last_id + 1`), replacing any segment from that id on. Crash-safe by order (see
    /// the module doc); a failure after the active segment is synced leaves the in-memory view
    /// unreliable, so it makes the log unusable until a restart recovers from the files.
    fn start_segment(&mut self, next: State) -> Result<(), StorageError> {
        self.sync_data()?;
        let result = self.replace_from(&next);
        match result {
            Ok(active) => {
                let first = active.segment.first_id;
                {
                    let mut shared = write_lock(&self.shared);
                    shared.segments.split_off(&first);
                    shared.segments.insert(first, Arc::clone(&active.segment));
                    shared.last_id = next.last_id;
                    shared.tombstones = next.tombstones.clone();
                }
                self.active = active;
                self.state = next;
                Ok(())
            }
            Err(e) => {
                self.poisoned = Some(Box::new(e.clone()));
                Err(e.into())
            }
        }
    }

    fn replace_from(&mut self, next: &State) -> Result<Active, IoError> {
        let first = next.last_id + 1;
        let old = &self.active.segment;
        let index = read_lock(&old.index).clone();
        let index_name = format::name(old.first_id, Kind::Index);
        if let Err(e) = format::write_atomic(
            &self.seg_dir,
            &index_name,
            &format::encode_index(old.first_id, &index),
            false,
        ) {
            // Only costs a scan of the segment at the next open.
            tracing::warn!(error = %e, "cannot write a sealed segment's index; open will rebuild it");
        }
        let replaced: Vec<u64> = read_lock(&self.shared)
            .segments
            .range(first..)
            .map(|(&f, _)| f)
            .collect();
        if replaced.is_empty() {
            return new_segment(&self.seg_dir, next);
        }
        let mut header = Vec::new();
        format::encode_header(next, &mut header);
        format::write_atomic(
            &self.seg_dir,
            &format::name(first, Kind::Trunc),
            &header,
            true,
        )?;
        finish_trunc(&self.seg_dir, first, &replaced)?;
        open_active(&self.seg_dir, first, header.len() as u64)
    }

    fn sync_data(&mut self) -> Result<(), StorageError> {
        let path = &self.active.segment.path;
        self.active
            .file
            .sync_data()
            .at(Op::Sync, path)
            .map_err(|e| {
                self.poisoned = Some(Box::new(e.clone()));
                e.into()
            })
    }

    fn usable(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            None => Ok(()),
            Some(cause) => Err(StorageError::Unusable {
                path: self.active.segment.path.clone(),
                cause: IoError::clone(cause),
            }),
        }
    }
}

/// Writes a new segment whose header holds `state` (its first id is `state.last_id + 1`),
/// durably, and opens it as the active one.
fn new_segment(seg_dir: &Path, state: &State) -> Result<Active, IoError> {
    let first = state.last_id + 1;
    let mut header = Vec::new();
    format::encode_header(state, &mut header);
    format::write_atomic(seg_dir, &format::name(first, Kind::Log), &header, true)?;
    open_active(seg_dir, first, header.len() as u64)
}

/// Opens segment `first` (just created, `len` bytes of header) as the active one.
fn open_active(seg_dir: &Path, first: u64, len: u64) -> Result<Active, IoError> {
    let path = seg_dir.join(format::name(first, Kind::Log));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .at(Op::Open, &path)?;
    let segment = Arc::new(Segment {
        first_id: first,
        file: File::open(&path).at(Op::Open, &path)?,
        path,
        index: RwLock::new(Index {
            points: Vec::new(),
            last_id: 0,
            file_len: len,
        }),
        damage_reported: Default::default(),
    });
    Ok(Active { segment, file, len })
}

/// Completes a truncation: removes the segments `replaced` (all from `first` on), highest
/// first, then renames `<first>.trunc` into place.
fn finish_trunc(seg_dir: &Path, first: u64, replaced: &[u64]) -> Result<(), IoError> {
    for &old in replaced.iter().rev() {
        format::remove_if_present(&seg_dir.join(format::name(old, Kind::Log)))?;
        format::remove_if_present(&seg_dir.join(format::name(old, Kind::Index)))?;
    }
    let trunc = seg_dir.join(format::name(first, Kind::Trunc));
    fs::rename(&trunc, seg_dir.join(format::name(first, Kind::Log))).at(Op::Rename, &trunc)?;
    format::sync_dir(seg_dir)
}

/// Lists the segment directory, finishing what a crash interrupted: removes temporary files
/// and indexes without a segment, completes a truncation. Returns the segments' first ids,
/// ascending.
fn clean_up(seg_dir: &Path) -> Result<Vec<u64>, IoError> {
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    let mut truncs = Vec::new();
    for entry in fs::read_dir(seg_dir).at(Op::Read, seg_dir)? {
        let entry = entry.at(Op::Read, seg_dir)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match format::parse_name(&name) {
            Some((_, Kind::Tmp)) => format::remove_if_present(&entry.path())?,
            Some((first, Kind::Log)) => logs.push(first),
            Some((first, Kind::Index)) => indexes.push(first),
            Some((first, Kind::Trunc)) => truncs.push(first),
            None => {}
        }
    }
    logs.sort_unstable();
    truncs.sort_unstable();
    // One truncation completes before the next can start, so there is at most one.
    if let Some(&first) = truncs.first() {
        let replaced: Vec<u64> = logs.iter().copied().filter(|&f| f >= first).collect();
        tracing::warn!(
            first_id = first,
            "finishing a truncation a crash interrupted"
        );
        finish_trunc(seg_dir, first, &replaced)?;
        logs.retain(|&f| f < first);
        logs.push(first);
    }
    for first in indexes {
        if logs.binary_search(&first).is_err() {
            format::remove_if_present(&seg_dir.join(format::name(first, Kind::Index)))?;
        }
    }
    Ok(logs)
}

/// A sealed segment serving up to `bound`: its index from `.idx`, or rebuilt by reading it
/// (and written back if the segment is whole). Returns it, whether it was rebuilt, and the
/// ids it cannot serve.
fn load_sealed(
    seg_dir: &Path,
    first: u64,
    bound: u64,
    interval: u64,
) -> Result<(Segment, bool, Option<Damage>), IoError> {
    let path = seg_dir.join(format::name(first, Kind::Log));
    let file = File::open(&path).at(Op::Open, &path)?;
    let len = file.metadata().at(Op::Read, &path)?.len();
    let idx_path = seg_dir.join(format::name(first, Kind::Index));
    let stored = fs::read(&idx_path)
        .ok()
        .and_then(|bytes| format::decode_index(&bytes, first))
        .filter(|index| index.file_len == len);
    let (index, rebuilt, mut reason) = match stored {
        Some(index) => (index, false, None),
        None => {
            // A damaged segment's index is not written: the damage is reported instead (the
            // caller says which ids it cannot serve), and the next start reads it again.
            let (index, reason) = scan_sealed(&file, &path, len, first, interval)?;
            if reason.is_none() {
                let encoded = format::encode_index(first, &index);
                format::write_atomic(seg_dir, &format::name(first, Kind::Index), &encoded, false)?;
            }
            let rebuilt = reason.is_none();
            (index, rebuilt, reason)
        }
    };
    let served = if index.points.is_empty() {
        first - 1
    } else {
        index.last_id
    };
    if served < bound && reason.is_none() {
        reason = Some("the segment ends before the next segment starts".to_owned());
    }
    let damage = (served < bound).then(|| Damage {
        path: path.clone(),
        ids: (served + 1, bound),
        reason: reason.unwrap_or_default(),
    });
    let segment = Segment {
        first_id: first,
        path,
        file,
        index: RwLock::new(index),
        damage_reported: Default::default(),
    };
    Ok((segment, rebuilt, damage))
}

/// The index of a sealed segment of `len` bytes, and why it stops early if it does.
fn scan_sealed(
    file: &File,
    path: &Path,
    len: u64,
    first: u64,
    interval: u64,
) -> Result<(Index, Option<String>), IoError> {
    let mut index = Index {
        points: Vec::new(),
        last_id: 0,
        file_len: len,
    };
    let mut scan = Scan::new(file, path, 0, len, RECOVERY_CHUNK);
    match format::read_header(&mut scan, first) {
        Ok(_) => {}
        Err(HeaderError::Io(e)) => return Err(e),
        Err(HeaderError::Bad(e)) => return Ok((index, Some(e.to_string()))),
    }
    let mut expected = first;
    let mut last_point: Option<u64> = None;
    loop {
        let offset = scan.pos();
        match scan.next() {
            Ok(None) => return Ok((index, None)),
            Ok(Some((Record::Entry { id, .. }, _))) => {
                if id != expected {
                    let why =
                        format!("entry id {id} where {expected} was expected at offset {offset}");
                    return Ok((index, Some(why)));
                }
                if last_point.is_none_or(|p| offset - p >= interval) {
                    index.points.push((id, offset));
                    last_point = Some(offset);
                }
                index.last_id = id;
                expected += 1;
            }
            Ok(Some(_)) => {}
            Err(ScanError::Io(e)) => return Err(e),
            Err(ScanError::Decode(e)) => {
                return Ok((index, Some(format!("{e} at offset {offset}"))))
            }
        }
    }
}

/// Replays the active segment `file` of `len` bytes: its header, then its body record by
/// record, a chunk at a time. Returns the state, its index, the length of the good prefix and,
/// if the tail is bad, why.
fn replay_active(
    file: &File,
    path: &Path,
    len: u64,
    first: u64,
    interval: u64,
) -> Result<(State, Index, u64, Option<SegmentCutReason>), SegmentOpenError> {
    let mut scan = Scan::new(file, path, 0, len, RECOVERY_CHUNK);
    let mut state = match format::read_header(&mut scan, first) {
        Ok(state) => state,
        Err(HeaderError::Io(e)) => return Err(e.into()),
        Err(HeaderError::Bad(reason)) => {
            return Err(SegmentOpenError::BadHeader {
                path: path.to_owned(),
                reason,
            })
        }
    };
    let mut index = Index::default();
    let mut last_point: Option<u64> = None;
    // Where the record being replayed starts: after a bad one, the end of the good prefix.
    let mut offset;
    let reason = loop {
        offset = scan.pos();
        let record = match scan.next() {
            Ok(None) => break None,
            Ok(Some((record, _))) => record,
            Err(ScanError::Io(e)) => return Err(e.into()),
            Err(ScanError::Decode(e)) => break Some(CutReason::Decode(e).into()),
        };
        let entry = match record {
            Record::Entry { id, .. } => Some(id),
            _ => None,
        };
        if let Err(reason) = apply(&mut state, record) {
            break Some(reason);
        }
        if let Some(id) = entry {
            if last_point.is_none_or(|p| offset - p >= interval) {
                index.points.push((id, offset));
                last_point = Some(offset);
            }
            index.last_id = id;
        }
    };
    index.file_len = offset;
    Ok((state, index, offset, reason))
}

/// Applies one body record; `Err` says why it cannot follow what came before.
fn apply(state: &mut State, record: Record) -> Result<(), SegmentCutReason> {
    let invalid = |e: InvalidRecord| SegmentCutReason::Record(CutReason::Invalid(e));
    match record {
        Record::Meta { log_id } => {
            if state.last_id > 0 {
                return Err(invalid(InvalidRecord::MetaAfterEntries {
                    last_id: state.last_id,
                }));
            }
            // A fresh secondary adopting the master's identity starts a new log under it.
            state.log_id = log_id;
            state.decided = 0;
            state.tombstones.clear();
        }
        Record::Entry { id, tombstone, .. } => {
            let expected = state.last_id + 1;
            if id != expected {
                return Err(invalid(InvalidRecord::NotNext { id, expected }));
            }
            state.last_id = id;
            if tombstone {
                state.tombstones.insert(id);
            }
        }
        Record::Tombstone { id: 0 } => return Err(invalid(InvalidRecord::TombstoneZero)),
        Record::Tombstone { id } => {
            state.tombstones.insert(id);
        }
        Record::Decided { upto } => state.decided = state.decided.max(upto),
        Record::MasterStart {
            instance,
            recovered,
        } => {
            if recovered < state.decided {
                return Err(invalid(InvalidRecord::DropsDecided {
                    recovered,
                    decided: state.decided,
                }));
            }
            if recovered < state.last_id {
                return Err(SegmentCutReason::TruncationInsideSegment {
                    recovered,
                    last_id: state.last_id,
                });
            }
            // As `Log::truncate` does: a tombstone learned above `recovered` named an id of
            // the old master's lineage, which the new one may reuse.
            state.tombstones.split_off(&recovered.saturating_add(1));
            state.starts.push((instance, recovered));
        }
    }
    Ok(())
}
