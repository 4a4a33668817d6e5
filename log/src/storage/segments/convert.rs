//! Conversion of today's single-file `log.bin` into segments (see the module doc of
//! [`super`] for the order of steps and why it is crash-safe).

use super::super::error::{At, Op};
use super::super::file::FILE_NAME;
use super::super::record::Record;
use super::super::{FsyncPolicy, LogFile};
use super::format::{self, State};
use super::writer::SegmentLog;
use super::{Config, SegmentCut, SegmentCutReason, SegmentOpenError};
use std::fs;
use std::path::{Path, PathBuf};

/// Where a conversion writes its segments before they are complete; removed and redone if a
/// crash interrupted it.
pub const CONVERTING_DIR: &str = "segments.converting";

/// What `log.bin` is renamed to once its segments are in place.
pub const CONVERTED_NAME: &str = "log.bin.converted";

/// Entries written per group commit while converting.
const BATCH: usize = 4096;

/// A conversion of `log.bin` that an open did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// The file converted.
    pub from: PathBuf,
    /// Where it is kept now (the operator may delete it).
    pub kept_as: PathBuf,
    /// Ids converted (the last id).
    pub entries: u64,
    /// Segment files written.
    pub segments: usize,
    /// A torn or corrupt tail recovery cut off `log.bin` before converting it.
    pub cut: Option<SegmentCut>,
    /// `log.bin` held no log (empty): a new one was created and converted.
    pub created: Option<&'static str>,
}

/// Converts `dir/log.bin` into `seg_dir` if it is there; `None` if there is no `log.bin`.
pub(crate) fn convert(
    dir: &Path,
    seg_dir: &Path,
    config: Config,
    new_log_id: impl FnOnce() -> String,
) -> Result<Option<Conversion>, SegmentOpenError> {
    let from = dir.join(FILE_NAME);
    let converting = dir.join(CONVERTING_DIR);
    if converting.exists() {
        fs::remove_dir_all(&converting).at(Op::Remove, &converting)?;
    }
    if !from.exists() {
        return Ok(None);
    }
    // The same recovery as before the format changed, so nothing is read differently.
    let (file, recovered) = LogFile::open(dir, FsyncPolicy::Never, new_log_id)?;
    let starts = file.master_starts().to_vec();
    drop(file);
    let log = recovered.log;
    fs::create_dir(&converting).at(Op::CreateDir, &converting)?;
    let state = State {
        log_id: log.log_id().to_owned(),
        last_id: 0,
        decided: log.decided(),
        tombstones: log.tombstones_in(0, u64::MAX).collect(),
        starts,
    };
    let mut writer = SegmentLog::create(dir, &converting, config, state)?;
    let last_id = log.last_id();
    let mut id = 1;
    let mut batch = Vec::new();
    while id <= last_id {
        // Batches well below a segment's size, so segments roll near their size as they
        // would have when written one append at a time.
        batch.clear();
        let mut bytes = 0;
        while id <= last_id && batch.len() < BATCH && bytes < config.segment_bytes / 8 {
            let message = log.get(id).cloned().unwrap_or_default();
            bytes += message.len() as u64 + 32;
            batch.push(Record::Entry {
                id,
                message,
                tombstone: log.is_tombstone(id),
            });
            id += 1;
        }
        writer.append_unsynced(&batch)?;
    }
    writer.sync()?;
    let segments = writer.segments().len();
    drop(writer);
    format::sync_dir(&converting)?;
    fs::rename(&converting, seg_dir).at(Op::Rename, &converting)?;
    format::sync_dir(dir)?;
    let kept_as = finish(dir)?.unwrap_or_else(|| dir.join(CONVERTED_NAME));
    tracing::warn!(from = %from.display(), kept_as = %kept_as.display(), entries = last_id, segments, "converted the log file into segments");
    Ok(Some(Conversion {
        from: from.clone(),
        kept_as,
        entries: last_id,
        segments,
        cut: recovered.cut.map(|cut| SegmentCut {
            path: from,
            offset: cut.offset,
            bytes_cut: cut.bytes_cut,
            reason: SegmentCutReason::Record(cut.reason),
        }),
        created: recovered.created,
    }))
}

/// Once the segments are in place, renames a `log.bin` still there (a crash came between the
/// two renames) out of the way. Returns its new path if it renamed it.
///
/// If `log.bin.converted` is there too, this `log.bin` is not the one converted: something
/// wrote it after the conversion (an older version of replog started on this directory), and
/// neither it nor the segments can be chosen without losing what the other holds.
pub(crate) fn finish(dir: &Path) -> Result<Option<PathBuf>, SegmentOpenError> {
    let from = dir.join(FILE_NAME);
    if !from.exists() {
        return Ok(None);
    }
    let to = dir.join(CONVERTED_NAME);
    if to.exists() {
        return Err(SegmentOpenError::BothFormats {
            dir: dir.to_owned(),
        });
    }
    fs::rename(&from, &to).at(Op::Rename, &from)?;
    format::sync_dir(dir)?;
    Ok(Some(to))
}
