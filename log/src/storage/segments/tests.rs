//! The segmented log against real files, with today's `LogFile` as the reference: the same
//! records written to both must recover to the same log.

use super::*;
use crate::storage::{FsyncPolicy, LogFile, Record, StorageError, FILE_NAME};
use bytes::Bytes;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Small segments and index intervals, so a few hundred entries make many of each.
fn small() -> Config {
    Config {
        fsync: FsyncPolicy::Always,
        segment_bytes: 1024,
        index_interval: 128,
    }
}

fn open(dir: &Path) -> (SegmentLog, Opened) {
    SegmentLog::open(dir, small(), || "log-a".to_owned()).expect("open")
}

fn reopen(dir: &Path) -> (SegmentLog, Opened) {
    SegmentLog::open(dir, small(), || unreachable!("the log exists")).expect("reopen")
}

fn entry(id: u64, text: &str) -> Record {
    Record::Entry {
        id,
        message: Bytes::copy_from_slice(text.as_bytes()),
        tombstone: false,
    }
}

fn text(id: u64) -> String {
    format!("message {id} {}", "x".repeat((id % 50) as usize))
}

fn entries(from: u64, to: u64) -> Vec<Record> {
    (from..=to).map(|id| entry(id, &text(id))).collect()
}

/// Everything a log holds, comparable across the two formats.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    log_id: String,
    last_id: u64,
    decided: u64,
    tombstones: Vec<u64>,
    starts: Vec<(u64, u64)>,
    entries: Vec<(u64, Bytes, bool)>,
}

fn reference(dir: &Path) -> Snapshot {
    let (file, recovered) =
        LogFile::open(dir, FsyncPolicy::Never, || unreachable!("the file exists")).expect("open");
    let log = recovered.log;
    Snapshot {
        log_id: log.log_id().to_owned(),
        last_id: log.last_id(),
        decided: log.decided(),
        tombstones: log.tombstones_in(0, u64::MAX).collect(),
        starts: file.master_starts().to_vec(),
        entries: (1..=log.last_id())
            .map(|id| {
                let message = log.get(id).cloned().unwrap_or_default();
                (id, message, log.is_tombstone(id))
            })
            .collect(),
    }
}

fn read_all(reader: &Reader) -> Vec<(u64, Bytes, bool)> {
    reader
        .read(0, usize::MAX, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|s| (s.id, s.message, s.tombstone))
        .collect()
}

fn live(log: &SegmentLog) -> Snapshot {
    Snapshot {
        log_id: log.log_id().to_owned(),
        last_id: log.last_id(),
        decided: log.decided(),
        tombstones: (0..=log.last_id() + 100)
            .filter(|&id| log.is_tombstone(id))
            .collect(),
        starts: log.master_starts().to_vec(),
        entries: read_all(&log.reader()),
    }
}

fn recovered(log: &SegmentLog, opened: &Opened) -> Snapshot {
    Snapshot {
        log_id: opened.log_id.clone(),
        last_id: opened.last_id,
        decided: opened.decided,
        tombstones: opened.tombstones.iter().copied().collect(),
        starts: opened.starts.clone(),
        entries: read_all(&log.reader()),
    }
}

/// Writes every batch to a `LogFile` in `dir/ref` and a `SegmentLog` in `dir/seg`.
struct Both {
    reference: LogFile,
    segments: SegmentLog,
}

impl Both {
    fn new(dir: &Path) -> Self {
        Self::with(dir, FsyncPolicy::Always)
    }

    fn with(dir: &Path, fsync: FsyncPolicy) -> Self {
        let (reference, _) = LogFile::open(&dir.join("ref"), fsync, || "log-a".into()).unwrap();
        let segment_bytes = if fsync == FsyncPolicy::Never {
            8192
        } else {
            1024
        };
        let config = Config {
            fsync,
            segment_bytes,
            ..small()
        };
        let (segments, _) = SegmentLog::open(&dir.join("seg"), config, || "log-a".into()).unwrap();
        Self {
            reference,
            segments,
        }
    }

    fn segments_config(&self) -> Config {
        Config {
            fsync: self.segments.policy(),
            segment_bytes: 8192,
            ..small()
        }
    }

    fn append(&mut self, records: &[Record]) {
        self.reference.append(records).expect("reference append");
        self.segments.append(records).expect("segment append");
    }
}

fn check_equal(dir: &Path, both: &Both) {
    let expected = reference(&dir.join("ref"));
    assert_eq!(live(&both.segments), expected, "live");
    let (log, opened) = reopen(&dir.join("seg"));
    assert!(opened.cut.is_none() && opened.damaged.is_empty());
    assert_eq!(recovered(&log, &opened), expected, "reopened");
}

fn seg_files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir.join(SEGMENTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

#[test]
fn a_new_log_rolls_into_segments_and_reopens_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut both = Both::new(tmp.path());
    let mut next = 1;
    for round in 0..40u64 {
        let to = next + round % 7;
        let mut batch = entries(next, to);
        if round % 3 == 0 {
            batch.push(Record::Tombstone { id: next });
        }
        if round % 5 == 0 {
            // A tombstone of an id in an old segment, and of one not held yet.
            batch.push(Record::Tombstone { id: 1 + round });
            batch.push(Record::Tombstone { id: to + 3 });
        }
        batch.push(Record::Decided { upto: to - 1 });
        both.append(&batch);
        next = to + 1;
    }
    both.append(&[Record::Entry {
        id: next,
        message: Bytes::new(),
        tombstone: true,
    }]);
    let segments = both.segments.segments();
    assert!(segments.len() > 5, "{} segments", segments.len());
    assert!(segments.iter().filter(|s| s.active).count() == 1);
    assert!(segments.last().unwrap().active);
    for pair in segments.windows(2) {
        assert_eq!(pair[0].last_id + 1, pair[1].first_id);
    }
    check_equal(tmp.path(), &both);
    // Every sealed segment has its index; the active one does not need one.
    let dir = tmp.path().join("seg");
    assert_eq!(seg_files(&dir, "idx").len(), segments.len() - 1);
}

#[test]
fn reads_cross_segments_and_keep_to_their_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for chunk in (1..=300u64).collect::<Vec<_>>().chunks(9) {
        log.append(&entries(chunk[0], chunk[chunk.len() - 1]))
            .unwrap();
    }
    log.append(&[Record::Tombstone { id: 150 }]).unwrap();
    assert!(log.segments().len() > 10);
    let reader = log.reader();
    for from in [1, 2, 57, 149, 150, 151, 299, 300] {
        for max in [1, 7, 64, 1000] {
            let got = reader.read(from, max, usize::MAX).unwrap();
            let expected_len = max.min((300 - from + 1) as usize);
            assert_eq!(got.len(), expected_len, "from {from} max {max}");
            for (i, stored) in got.iter().enumerate() {
                let id = from + i as u64;
                assert_eq!(stored.id, id);
                assert_eq!(stored.tombstone, id == 150);
                let expected = if id == 150 { String::new() } else { text(id) };
                assert_eq!(stored.message, Bytes::from(expected));
            }
        }
    }
    // A byte budget: whole entries up to it, always at least one.
    let got = reader.read(10, usize::MAX, 1).unwrap();
    assert_eq!(got.len(), 1);
    let budget: usize = (10..20).map(|id| text(id).len()).sum();
    let got = reader.read(10, usize::MAX, budget).unwrap();
    assert_eq!(got.len(), 10);
    assert!(reader.read(301, 10, usize::MAX).unwrap().is_empty());
    assert!(reader.read(10, 0, usize::MAX).unwrap().is_empty());
    assert!(reader.read(u64::MAX, 10, usize::MAX).unwrap().is_empty());
}

/// Readers on other threads while the writer appends, rolls, truncates and removes old
/// segments: every read is a contiguous run of the right messages, or `Gone` below the first
/// retained id.
#[test]
fn reads_run_beside_appends_rolls_truncations_and_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3u64)
        .map(|n| {
            let reader = log.reader();
            let done = done.clone();
            std::thread::spawn(move || {
                let (mut reads, mut gone) = (0u64, 0u64);
                while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                    let (first, last) = (reader.first_id(), reader.last_id());
                    let from = first + (reads * 7 + n) % (last + 1 - first).max(1);
                    match reader.read(from, 50, usize::MAX) {
                        Ok(got) => {
                            for (i, stored) in got.iter().enumerate() {
                                assert_eq!(stored.id, from + i as u64);
                                assert_eq!(stored.message, Bytes::from(text(stored.id)));
                            }
                        }
                        // Retention removed it between the two calls.
                        Err(ReadError::Gone { .. }) => gone += 1,
                        Err(e) => panic!("{e}"),
                    }
                    reads += 1;
                }
                (reads, gone)
            })
        })
        .collect();
    let retention = Retention {
        max_bytes: Some(8 * 1024),
        max_age: None,
    };
    let mut next = 1;
    let mut instance = 1;
    while next <= 3000 {
        let to = next + 12;
        log.append_unsynced(&entries(next, to)).unwrap();
        next = to + 1;
        if next % 200 < 13 {
            // Drop the last few (undecided) ids and write them again: same ids, same texts.
            instance += 1;
            let recovered = next - 6;
            log.append(&[
                Record::Decided {
                    upto: recovered - 1,
                },
                Record::MasterStart {
                    instance,
                    recovered,
                },
            ])
            .unwrap();
            log.append_unsynced(&entries(recovered + 1, next - 1))
                .unwrap();
            let floor = next.saturating_sub(300).min(log.decided() + 1);
            log.retain(&retention, floor, SystemTime::now()).unwrap();
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        let (reads, _gone) = reader.join().expect("a reader panicked");
        assert!(reads > 0);
    }
    assert!(log.first_id() > 1000, "retention ran: {}", log.first_id());
    assert_eq!(log.last_id(), next - 1);
}

#[test]
fn open_reads_only_the_active_segment_and_a_damaged_sealed_one_fails_only_its_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for chunk in (1..=400u64).collect::<Vec<_>>().chunks(10) {
        log.append(&entries(chunk[0], chunk[chunk.len() - 1]))
            .unwrap();
    }
    log.append(&[Record::Decided { upto: 400 }]).unwrap();
    let segments = log.segments();
    drop(log);
    // Damage the middle of one sealed segment, and zero every byte of the others but keep
    // their lengths (their indexes stay valid): open must recover the same log, since it reads
    // none of them.
    for (i, segment) in segments[..segments.len() - 1].iter().enumerate() {
        let mut bytes = fs::read(&segment.path).unwrap();
        if i == 3 {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
        } else {
            bytes.fill(0);
        }
        fs::write(&segment.path, &bytes).unwrap();
    }
    let (log, opened) = reopen(tmp.path());
    assert!(opened.cut.is_none());
    assert!(opened.damaged.is_empty() && opened.rebuilt_indexes.is_empty());
    assert_eq!((opened.last_id, opened.decided), (400, 400));
    let reader = log.reader();
    let damaged = &segments[3];
    let err = reader
        .read(damaged.first_id, usize::MAX, usize::MAX)
        .unwrap_err();
    let ReadError::Corrupt { path, id, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(path, &damaged.path);
    assert!((damaged.first_id..=damaged.last_id).contains(id), "{err}");
    assert!(err
        .to_string()
        .contains(&damaged.path.display().to_string()));
    // Up to the damage, the damaged segment still serves.
    let got = reader.read(damaged.first_id, 1, usize::MAX).unwrap();
    assert_eq!(got[0].id, damaged.first_id);
    // The active segment reads whole.
    let active = segments.last().unwrap();
    let got = reader
        .read(active.first_id, usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(got.last().map(|s| s.id), Some(400));
}

#[test]
fn a_torn_tail_of_the_active_segment_is_cut_and_appending_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    log.append(&entries(1, 100)).unwrap();
    log.append(&entries(101, 105)).unwrap();
    let active = log.segments().pop().unwrap();
    let good = active.bytes;
    log.append(&[entry(106, "torn")]).unwrap();
    drop(log);
    let full = fs::metadata(&active.path).unwrap().len();
    for (i, torn) in [good + 1, good + 8, full - 1].into_iter().enumerate() {
        let dir = tmp.path().join(format!("torn-{i}"));
        copy_dir(tmp.path(), &dir);
        let path = dir
            .join(SEGMENTS_DIR)
            .join(active.path.file_name().unwrap());
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(torn)
            .unwrap();
        let (mut log, opened) = reopen(&dir);
        let cut = opened.cut.expect("a cut");
        assert_eq!(
            (cut.path, cut.offset, cut.bytes_cut),
            (path.clone(), good, torn - good)
        );
        assert!(cut.reason.to_string().contains("torn"), "{}", cut.reason);
        assert!(dir.join("log.incomplete").exists());
        assert_eq!(opened.last_id, 105);
        log.append(&[entry(106, "again")]).unwrap();
        drop(log);
        let (log, opened) = reopen(&dir);
        assert!(opened.cut.is_none() && opened.unfinished);
        let last = log.reader().read(106, 1, usize::MAX).unwrap();
        assert_eq!(last[0].message, Bytes::from("again"));
    }
}

#[test]
fn an_emptied_last_segment_is_removed_and_the_log_ends_with_the_one_before() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for from in (1..=100).step_by(10) {
        log.append(&entries(from, from + 9)).unwrap();
    }
    let segments = log.segments();
    assert!(segments.len() > 2, "small segments: many of them");
    let before_last = segments[segments.len() - 2].clone();
    drop(log);
    let last = seg_files(tmp.path(), "log").pop().unwrap();
    fs::write(&last, b"").unwrap();
    let (mut log, opened) = reopen(tmp.path());
    let cut = opened.cut.expect("reported as a cut");
    assert_eq!(cut.reason, SegmentCutReason::EmptyLastSegment);
    assert_eq!(opened.last_id, before_last.last_id);
    assert!(tmp.path().join("log.incomplete").exists());
    assert!(!last.exists());
    // Appending goes on at the end of the one before, which rolls as any active one does.
    let next = before_last.last_id + 1;
    log.append(&entries(next, next + 50)).unwrap();
    drop(log);
    let (log, opened) = reopen(tmp.path());
    assert!(opened.cut.is_none());
    assert_eq!(read_all(&log.reader()).len() as u64, next + 50);
    // The only segment emptied: the log is new, as if none was there.
    let only = tempfile::tempdir().unwrap();
    let (mut log, _) = open(only.path());
    log.append(&entries(1, 3)).unwrap();
    drop(log);
    fs::write(seg_files(only.path(), "log").pop().unwrap(), b"").unwrap();
    let (_, opened) = open(only.path());
    assert_eq!(opened.created, Some("the log's only segment was empty"));
    assert_eq!(opened.last_id, 0);
    assert!(only.path().join("log.incomplete").exists());
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to.join(SEGMENTS_DIR)).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    for entry in fs::read_dir(from.join(SEGMENTS_DIR)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(SEGMENTS_DIR).join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_missing_or_damaged_index_is_rebuilt_from_its_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for chunk in (1..=200u64).collect::<Vec<_>>().chunks(10) {
        log.append(&entries(chunk[0], chunk[chunk.len() - 1]))
            .unwrap();
    }
    let expected = read_all(&log.reader());
    drop(log);
    let indexes = seg_files(tmp.path(), "idx");
    assert!(indexes.len() >= 3);
    fs::remove_file(&indexes[0]).unwrap();
    let mut bytes = fs::read(&indexes[1]).unwrap();
    bytes[12] ^= 1;
    fs::write(&indexes[1], &bytes).unwrap();
    // An index of another length than its segment is another segment's.
    let mut bytes = fs::read(&indexes[2]).unwrap();
    bytes.truncate(bytes.len() - 20);
    fs::write(&indexes[2], &bytes).unwrap();
    let (log, opened) = reopen(tmp.path());
    assert_eq!(
        opened.rebuilt_indexes.len(),
        3,
        "{:?}",
        opened.rebuilt_indexes
    );
    assert!(opened.damaged.is_empty());
    assert_eq!(read_all(&log.reader()), expected);
    drop(log);
    let (_, opened) = reopen(tmp.path());
    assert!(opened.rebuilt_indexes.is_empty(), "written back");
}

#[test]
fn a_missing_sealed_segment_is_reported_and_its_ids_are_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for chunk in (1..=200u64).collect::<Vec<_>>().chunks(10) {
        log.append(&entries(chunk[0], chunk[chunk.len() - 1]))
            .unwrap();
    }
    let segments = log.segments();
    drop(log);
    let gone = &segments[2];
    fs::remove_file(&gone.path).unwrap();
    let (log, opened) = reopen(tmp.path());
    assert_eq!(opened.damaged.len(), 1, "{:?}", opened.damaged);
    assert_eq!(opened.damaged[0].ids, (gone.first_id, gone.last_id));
    assert_eq!(opened.damaged[0].path, segments[1].path);
    let err = log.reader().read(gone.first_id, 5, usize::MAX).unwrap_err();
    assert!(matches!(err, ReadError::Corrupt { .. }), "{err}");
    assert!(log.reader().read(gone.last_id + 1, 5, usize::MAX).is_ok());
}

#[test]
fn a_truncation_within_the_active_segment_starts_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut both = Both::new(tmp.path());
    both.append(&entries(1, 5));
    both.append(&[
        Record::Decided { upto: 2 },
        Record::Tombstone { id: 4 },
        Record::Tombstone { id: 2 },
    ]);
    let before = both.segments.segments().len();
    both.append(&[
        Record::MasterStart {
            instance: 7,
            recovered: 3,
        },
        entry(4, "new 4"),
    ]);
    assert_eq!(both.segments.segments().len(), before + 1);
    check_equal(tmp.path(), &both);
    both.append(&entries(5, 6));
    check_equal(tmp.path(), &both);
}

/// Many segments, then a start recovering an id in an old one: every later segment goes.
fn truncation_setup(dir: &Path) -> (Both, u64) {
    let mut both = Both::new(dir);
    for chunk in (1..=200u64).collect::<Vec<_>>().chunks(10) {
        both.append(&entries(chunk[0], chunk[chunk.len() - 1]));
    }
    both.append(&[
        Record::Decided { upto: 60 },
        Record::Tombstone { id: 30 },
        Record::Tombstone { id: 70 },
        Record::Tombstone { id: 150 },
    ]);
    let segments = both.segments.segments();
    // Recover into the middle of an old segment.
    let target = &segments[segments.len() / 2];
    let recovered = target.first_id + 2;
    assert!(recovered > 60 && recovered < 150);
    (both, recovered)
}

#[test]
fn a_truncation_across_segments_drops_every_later_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut both, recovered) = truncation_setup(tmp.path());
    both.append(&[
        Record::MasterStart {
            instance: 3,
            recovered,
        },
        entry(recovered + 1, "after"),
    ]);
    let segments = both.segments.segments();
    assert!(segments.iter().all(|s| s.first_id <= recovered + 1));
    assert_eq!(segments.last().unwrap().first_id, recovered + 1);
    check_equal(tmp.path(), &both);
    assert!(!both.segments.is_tombstone(150) && both.segments.is_tombstone(70));
    both.append(&entries(recovered + 2, recovered + 50));
    check_equal(tmp.path(), &both);
    // A truncation to nothing (only undecided ids held).
    let tmp = tempfile::tempdir().unwrap();
    let mut both = Both::new(tmp.path());
    for chunk in (1..=100u64).collect::<Vec<_>>().chunks(10) {
        both.append(&entries(chunk[0], chunk[chunk.len() - 1]));
    }
    both.append(&[Record::MasterStart {
        instance: 2,
        recovered: 0,
    }]);
    assert_eq!(both.segments.segments().len(), 1);
    check_equal(tmp.path(), &both);
}

#[test]
fn a_truncation_interrupted_at_any_step_recovers_to_before_or_after() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut both, recovered) = truncation_setup(tmp.path());
    let seg = tmp.path().join("seg");
    let before_dir = tmp.path().join("before");
    copy_dir(&seg, &before_dir);
    let before = reference(&tmp.path().join("ref"));
    let start = Record::MasterStart {
        instance: 3,
        recovered,
    };
    both.append(&[start]);
    let after = reference(&tmp.path().join("ref"));
    let first = recovered + 1;
    let new_segment = seg
        .join(SEGMENTS_DIR)
        .join(format::name(first, format::Kind::Log));
    let later: Vec<_> = fs::read_dir(before_dir.join(SEGMENTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            format::parse_name(name).is_some_and(|(f, k)| f >= first && k == format::Kind::Log)
        })
        .collect();
    assert!(later.len() > 2);
    // Crashed while writing the new segment: a temporary file, the old log.
    let dir = tmp.path().join("crash-tmp");
    copy_dir(&before_dir, &dir);
    fs::write(
        dir.join(SEGMENTS_DIR).join("00000000000000000099.log.tmp"),
        b"junk",
    )
    .unwrap();
    let (log, opened) = reopen(&dir);
    assert_eq!(recovered_snapshot(&log, &opened), before);
    // Crashed after the rename to `.trunc`, with none or some of the later segments removed.
    for removed in [0, 1, later.len() - 1] {
        let dir = tmp.path().join(format!("crash-trunc-{removed}"));
        copy_dir(&before_dir, &dir);
        fs::copy(
            &new_segment,
            dir.join(SEGMENTS_DIR)
                .join(format::name(first, format::Kind::Trunc)),
        )
        .unwrap();
        let mut sorted = later.clone();
        sorted.sort();
        for path in sorted.iter().rev().take(removed) {
            fs::remove_file(dir.join(SEGMENTS_DIR).join(path.file_name().unwrap())).unwrap();
        }
        let (log, opened) = reopen(&dir);
        assert_eq!(
            recovered_snapshot(&log, &opened),
            after,
            "{removed} removed"
        );
        drop(log);
        let (log, opened) = reopen(&dir);
        assert_eq!(recovered_snapshot(&log, &opened), after, "again");
        assert!(fs::read_dir(dir.join(SEGMENTS_DIR)).unwrap().all(|e| !e
            .unwrap()
            .path()
            .to_str()
            .unwrap()
            .ends_with(".trunc")));
    }
}

fn recovered_snapshot(log: &SegmentLog, opened: &Opened) -> Snapshot {
    recovered(log, opened)
}

#[test]
fn a_truncation_of_decided_ids_is_refused_as_by_the_log_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    log.append(&entries(1, 50)).unwrap();
    log.append(&[Record::Decided { upto: 40 }]).unwrap();
    let files = log.segments();
    let err = log
        .append(&[Record::MasterStart {
            instance: 2,
            recovered: 39,
        }])
        .unwrap_err();
    assert!(matches!(err, StorageError::Refused(_)), "{err}");
    assert_eq!(log.segments(), files, "nothing written");
}

#[test]
fn retention_removes_old_sealed_segments_but_not_what_the_floor_or_the_active_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for chunk in (1..=300u64).collect::<Vec<_>>().chunks(10) {
        log.append(&entries(chunk[0], chunk[chunk.len() - 1]))
            .unwrap();
    }
    log.append(&[Record::Decided { upto: 250 }, Record::Tombstone { id: 3 }])
        .unwrap();
    let segments = log.segments();
    let total: u64 = segments.iter().map(|s| s.bytes).sum();
    let by_bytes = Retention {
        max_bytes: Some(total / 2),
        max_age: None,
    };
    // The floor holds back everything from the segment holding id 40 on.
    let removed = log.retain(&by_bytes, 40, SystemTime::now()).unwrap();
    assert!(!removed.is_empty());
    assert!(removed.iter().all(|s| s.last_id < 40));
    let first = log.first_id();
    assert_eq!(first, removed.last().unwrap().last_id + 1);
    assert!(first <= 40);
    assert!(matches!(
        log.reader().read(1, 5, usize::MAX),
        Err(ReadError::Gone { first_id, .. }) if first_id == first
    ));
    assert_eq!(
        log.reader().read(first, 1, usize::MAX).unwrap()[0].id,
        first
    );
    // Without the floor, bytes decide; never past the decided frontier (250) or the active.
    let removed = log.retain(&by_bytes, 251, SystemTime::now()).unwrap();
    assert!(!removed.is_empty());
    let remaining: u64 = log.segments().iter().map(|s| s.bytes).sum();
    assert!(remaining <= total / 2 + segments[0].bytes * 2);
    // By age: everything sealed and decided is old a day from now.
    let by_age = Retention {
        max_bytes: None,
        max_age: Some(Duration::from_secs(3600)),
    };
    log.retain(&by_age, 251, SystemTime::now()).unwrap();
    let unchanged = log.first_id();
    log.retain(
        &by_age,
        251,
        SystemTime::now() + Duration::from_secs(86_400),
    )
    .unwrap();
    let left = log.segments();
    assert!(log.first_id() > unchanged);
    assert!(left.first().unwrap().last_id > 250 || left.first().unwrap().active);
    assert!(left.last().unwrap().active);
    let first = log.first_id();
    drop(log);
    let (log, opened) = reopen(tmp.path());
    assert_eq!(opened.first_id, first);
    assert_eq!(opened.last_id, 300);
    assert!(
        !opened.tombstones.contains(&3),
        "below the first retained id"
    );
    assert_eq!(read_all(&log.reader()).len() as u64, 300 - first + 1);
}

/// A `log.bin` with everything the format has: an adopted identity, entries, tombstones
/// (in and past the log), decided, master starts, a truncation inside the file.
fn write_log_bin(dir: &Path) {
    let (mut file, _) = LogFile::open(dir, FsyncPolicy::Always, String::new).unwrap();
    file.append(&[
        Record::Meta {
            log_id: "adopted".into(),
        },
        Record::MasterStart {
            instance: 1,
            recovered: 0,
        },
    ])
    .unwrap();
    for chunk in (1..=120u64).collect::<Vec<_>>().chunks(7) {
        file.append(&entries(chunk[0], chunk[chunk.len() - 1]))
            .unwrap();
    }
    file.append(&[
        Record::Tombstone { id: 5 },
        Record::Tombstone { id: 130 },
        Record::Decided { upto: 100 },
        Record::MasterStart {
            instance: 2,
            recovered: 110,
        },
        entry(111, "rewritten"),
        Record::Entry {
            id: 112,
            message: Bytes::new(),
            tombstone: true,
        },
    ])
    .unwrap();
}

#[test]
fn a_log_bin_is_converted_without_losing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log_bin(dir);
    let expected = reference(dir);
    assert_eq!(expected.last_id, 112);
    let (log, opened) = open(dir);
    let conversion = opened.converted.clone().expect("converted");
    assert_eq!(conversion.from, dir.join(FILE_NAME));
    assert_eq!(conversion.kept_as, dir.join(CONVERTED_NAME));
    assert_eq!(conversion.entries, 112);
    assert!(conversion.segments > 3);
    assert!(conversion.cut.is_none() && conversion.created.is_none());
    assert!(!dir.join(FILE_NAME).exists() && dir.join(CONVERTED_NAME).exists());
    assert_eq!(recovered(&log, &opened), expected);
    drop(log);
    let (log, opened) = reopen(dir);
    assert!(opened.converted.is_none());
    assert_eq!(recovered(&log, &opened), expected);
}

#[test]
fn a_conversion_interrupted_at_any_step_is_redone_or_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    write_log_bin(&source);
    let expected = reference(&source);
    // Crashed while writing segments.converting: redone.
    let dir = tmp.path().join("mid");
    fs::create_dir_all(dir.join(CONVERTING_DIR)).unwrap();
    fs::copy(source.join(FILE_NAME), dir.join(FILE_NAME)).unwrap();
    fs::write(
        dir.join(CONVERTING_DIR).join("00000000000000000001.log"),
        b"junk",
    )
    .unwrap();
    let (log, opened) = open(&dir);
    assert!(opened.converted.is_some());
    assert_eq!(recovered(&log, &opened), expected);
    assert!(!dir.join(CONVERTING_DIR).exists());
    drop(log);
    // Crashed between renaming segments into place and renaming log.bin: finished.
    fs::rename(dir.join(CONVERTED_NAME), dir.join(FILE_NAME)).unwrap();
    let (log, opened) = reopen(&dir);
    assert_eq!(recovered(&log, &opened), expected);
    assert!(!dir.join(FILE_NAME).exists() && dir.join(CONVERTED_NAME).exists());
    drop(log);
    // A log.bin written after the conversion (log.bin.converted is there): refused.
    fs::copy(source.join(FILE_NAME), dir.join(FILE_NAME)).unwrap();
    let err = SegmentLog::open(&dir, small(), || "x".into()).unwrap_err();
    assert!(matches!(err, SegmentOpenError::BothFormats { .. }), "{err}");
    assert!(dir.join(FILE_NAME).exists() && dir.join(CONVERTED_NAME).exists());
    // A torn tail of log.bin is cut first, and said.
    let dir = tmp.path().join("torn");
    fs::create_dir_all(&dir).unwrap();
    let bytes = fs::read(source.join(FILE_NAME)).unwrap();
    fs::write(dir.join(FILE_NAME), &bytes[..bytes.len() - 3]).unwrap();
    let (log, opened) = open(&dir);
    let cut = opened.cut.expect("cut");
    assert_eq!(cut.path, dir.join(FILE_NAME));
    assert_eq!(opened.last_id, 111);
    assert!(
        !opened.unfinished,
        "the marker is this start's, as with LogFile"
    );
    assert_eq!(opened.converted.unwrap().cut, Some(cut));
    drop(log);
    let (_, opened) = reopen(&dir);
    assert!(opened.unfinished && opened.cut.is_none());
    // An empty segment directory beside log.bin holds no log: log.bin does.
    let dir = tmp.path().join("empty-segments");
    fs::create_dir_all(dir.join(SEGMENTS_DIR)).unwrap();
    fs::copy(source.join(FILE_NAME), dir.join(FILE_NAME)).unwrap();
    let (log, opened) = open(&dir);
    assert!(opened.converted.is_some());
    assert_eq!(recovered(&log, &opened), expected);
}

#[test]
fn a_new_log_is_created_incomplete_and_a_fresh_secondary_adopts_an_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (mut log, opened) = SegmentLog::open(&dir, small(), String::new).unwrap();
    assert!(opened.created.is_some() && !opened.unfinished);
    assert_eq!((opened.first_id, opened.last_id), (1, 0));
    log.append(&[
        Record::Meta {
            log_id: "master".into(),
        },
        entry(1, "a"),
    ])
    .unwrap();
    let err = log
        .append(&[Record::Meta {
            log_id: "other".into(),
        }])
        .unwrap_err();
    assert!(matches!(err, StorageError::Refused(_)), "{err}");
    drop(log);
    let (log, opened) = reopen(&dir);
    assert!(opened.unfinished && opened.created.is_none());
    assert_eq!(opened.log_id, "master");
    log.mark_complete().unwrap();
    drop(log);
    let (_, opened) = reopen(&dir);
    assert!(!opened.unfinished);
}

#[test]
fn a_damaged_active_header_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    log.append(&entries(1, 3)).unwrap();
    let path = log.segments().pop().unwrap().path;
    drop(log);
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = SegmentLog::open(tmp.path(), small(), || "x".into()).unwrap_err();
    assert!(matches!(err, SegmentOpenError::BadHeader { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

/// Random valid batches, reopens in between, against `LogFile` replaying the same records.
#[test]
fn model_random_histories_recover_as_the_log_file_does() {
    let mut segments = 0;
    for seed in 0..10u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let tmp = tempfile::tempdir().unwrap();
        // Without fsync per append (kill -9 safety is all a test process needs); rolls and
        // truncations still sync.
        let mut both = Both::with(tmp.path(), FsyncPolicy::Never);
        let (mut last, mut decided, mut instance) = (0u64, 0u64, 1u64);
        for _ in 0..60 {
            let mut batch = Vec::new();
            for _ in 0..rng.random_range(1..6) {
                match rng.random_range(0..10) {
                    0..=5 => {
                        for _ in 0..rng.random_range(1..12) {
                            last += 1;
                            let len = rng.random_range(0..120);
                            batch.push(Record::Entry {
                                id: last,
                                message: Bytes::from(vec![b'a' + (last % 26) as u8; len]),
                                tombstone: rng.random_bool(0.1),
                            });
                        }
                    }
                    6 => batch.push(Record::Tombstone {
                        id: rng.random_range(1..last + 5),
                    }),
                    7 | 9 => {
                        decided = decided.max(rng.random_range(0..=last));
                        batch.push(Record::Decided { upto: decided });
                    }
                    _ => {
                        instance += 1;
                        let recovered = rng.random_range(decided..=last);
                        last = recovered;
                        batch.push(Record::MasterStart {
                            instance,
                            recovered,
                        });
                    }
                }
            }
            both.append(&batch);
            if rng.random_bool(0.15) {
                let config = both.segments_config();
                drop(both.segments);
                let (segments, opened) = SegmentLog::open(&tmp.path().join("seg"), config, || {
                    unreachable!("the log exists")
                })
                .expect("reopen");
                assert!(opened.cut.is_none(), "seed {seed}");
                both.segments = segments;
            }
        }
        check_equal(tmp.path(), &both);
        segments += both.segments.segments().len();
    }
    assert!(
        segments > 30,
        "the histories span many segments ({segments})"
    );
}

#[test]
fn a_roll_interrupted_at_any_step_recovers_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for chunk in (1..=100u64).collect::<Vec<_>>().chunks(10) {
        log.append(&entries(chunk[0], chunk[chunk.len() - 1]))
            .unwrap();
    }
    log.append(&[Record::Tombstone { id: 7 }, Record::Decided { upto: 90 }])
        .unwrap();
    let expected = live(&log);
    let active = log.segments().pop().unwrap();
    drop(log);
    // Crashed after writing the active segment's index, while writing the next segment.
    let seg_dir = tmp.path().join(SEGMENTS_DIR);
    let index = format::Index {
        points: vec![(active.first_id, 60)],
        last_id: 100,
        file_len: active.bytes,
    };
    fs::write(
        seg_dir.join(format::name(active.first_id, format::Kind::Index)),
        format::encode_index(active.first_id, &index),
    )
    .unwrap();
    fs::write(
        seg_dir.join("00000000000000000101.log.tmp"),
        b"half a header",
    )
    .unwrap();
    let (mut log, opened) = reopen(tmp.path());
    assert!(opened.cut.is_none() && opened.damaged.is_empty());
    assert_eq!(recovered(&log, &opened), expected);
    assert!(!seg_dir.join("00000000000000000101.log.tmp").exists());
    // The next roll writes the real index over the stale one.
    log.append(&entries(101, 140)).unwrap();
    drop(log);
    let (log, opened) = reopen(tmp.path());
    assert!(opened.rebuilt_indexes.is_empty() && opened.damaged.is_empty());
    assert_eq!(read_all(&log.reader()).len(), 140);
}

#[test]
fn the_writer_moves_between_threads_and_readers_are_shared() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync + Clone>() {}
    send::<SegmentLog>();
    send_sync::<Reader>();
}

/// A rough figure, not a benchmark: run by hand with
/// `cargo nextest run -p replog-log --release --run-ignored only -E 'test(rough_figures)' --no-capture`.
#[test]
#[ignore = "writes about 130 MB; run by hand"]
fn rough_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        fsync: FsyncPolicy::Never,
        ..Config::default()
    };
    let (mut log, _) = SegmentLog::open(tmp.path(), config, || "L".into()).unwrap();
    let started = std::time::Instant::now();
    let message = Bytes::from(vec![b'm'; 100]);
    let total = 1_000_000u64;
    let mut id = 1;
    while id <= total {
        let batch: Vec<Record> = (id..id + 1000)
            .map(|id| Record::Entry {
                id,
                message: message.clone(),
                tombstone: false,
            })
            .collect();
        log.append(&batch).unwrap();
        id += 1000;
    }
    log.append(&[Record::Decided { upto: total }]).unwrap();
    log.sync().unwrap();
    eprintln!(
        "append {total}: {:?}, {} segments",
        started.elapsed(),
        log.segments().len()
    );
    drop(log);
    let started = std::time::Instant::now();
    let (log, opened) = SegmentLog::open(tmp.path(), config, || unreachable!()).unwrap();
    eprintln!("open: {:?} (last id {})", started.elapsed(), opened.last_id);
    let reader = log.reader();
    let started = std::time::Instant::now();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..10_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let from = 1 + state % total;
        let got = reader.read(from, 100, usize::MAX).unwrap();
        assert_eq!(got[0].id, from);
    }
    eprintln!(
        "10,000 reads of 100 from random ids: {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let mut from = 1;
    while from <= total {
        let got = reader.read(from, 10_000, 4 << 20).unwrap();
        from = got.last().unwrap().id + 1;
    }
    eprintln!("catch-up read of {total}: {:?}", started.elapsed());
}

#[test]
fn garbage_in_the_segment_directory_never_panics() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut junk = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    log.append(&entries(1, 60)).unwrap();
    log.append(&[Record::MasterStart {
        instance: 2,
        recovered: u64::MAX,
    }])
    .unwrap();
    drop(log);
    let source = tmp.path();
    for round in 0..60 {
        let dir = tmp.path().join(format!("round-{round}"));
        copy_dir(source, &dir);
        let files = seg_files(&dir, "log");
        let (victim, len) = match round % 3 {
            0 => (files.last().unwrap().clone(), 0),
            1 => (files[0].clone(), 0),
            _ => (
                dir.join(SEGMENTS_DIR)
                    .join(format::name(1, format::Kind::Index)),
                0,
            ),
        };
        let mut bytes = fs::read(&victim).unwrap_or_default();
        let keep = (round * 37) % (bytes.len().max(1));
        bytes.truncate(keep.max(len));
        bytes.extend(junk(round * 11 % 300));
        fs::write(&victim, &bytes).unwrap();
        fs::write(
            dir.join(SEGMENTS_DIR).join("00000000000000000000.log"),
            junk(40),
        )
        .unwrap();
        if let Ok((log, opened)) = SegmentLog::open(&dir, small(), || "x".into()) {
            let _ = log.reader().read(0, usize::MAX, usize::MAX);
            let _ = opened.damaged;
        }
    }
}

#[test]
fn a_damaged_sealed_segment_without_its_index_is_reported_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for chunk in (1..=200u64).collect::<Vec<_>>().chunks(10) {
        log.append(&entries(chunk[0], chunk[chunk.len() - 1]))
            .unwrap();
    }
    let segments = log.segments();
    drop(log);
    let victim = &segments[1];
    let mut bytes = fs::read(&victim.path).unwrap();
    let middle = bytes.len() * 3 / 4;
    bytes[middle] ^= 0x40;
    fs::write(&victim.path, &bytes).unwrap();
    let index = victim.path.with_extension("idx");
    fs::remove_file(&index).unwrap();
    // A crash during retention can leave an index whose segment is gone.
    let orphan = tmp
        .path()
        .join(SEGMENTS_DIR)
        .join(format::name(999_999, format::Kind::Index));
    fs::write(&orphan, b"stale").unwrap();
    let (log, opened) = reopen(tmp.path());
    assert!(!orphan.exists());
    assert!(
        opened.rebuilt_indexes.is_empty(),
        "a damaged segment's index is not rebuilt"
    );
    assert_eq!(opened.damaged.len(), 1, "{:?}", opened.damaged);
    let damage = &opened.damaged[0];
    assert_eq!(damage.path, victim.path);
    assert_eq!(damage.ids.1, victim.last_id);
    assert!(damage.ids.0 > victim.first_id, "{damage:?}");
    assert!(!index.exists(), "a damaged segment's index is not written");
    let reader = log.reader();
    let before = reader
        .read(
            victim.first_id,
            (damage.ids.0 - victim.first_id) as usize,
            usize::MAX,
        )
        .unwrap();
    assert_eq!(before.last().unwrap().id, damage.ids.0 - 1);
    assert!(matches!(
        reader.read(damage.ids.0, 1, usize::MAX),
        Err(ReadError::Corrupt { .. })
    ));
    assert_eq!(opened.last_id, 200, "the rest of the log is served");
    assert!(reader.read(victim.last_id + 1, 1, usize::MAX).is_ok());
}

#[test]
fn a_fresh_log_that_adopts_an_identity_reopens_with_it_and_its_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(tmp.path(), small(), String::new).expect("open");
    let mut records = vec![
        Record::Meta {
            log_id: "adopted".into(),
        },
        Record::MasterStart {
            instance: 1,
            recovered: 0,
        },
    ];
    records.extend(entries(1, 40));
    log.append(&records).unwrap();
    log.append(&entries(41, 50)).unwrap();
    drop(log);
    let (log, opened) = reopen(tmp.path());
    assert_eq!((opened.log_id.as_str(), opened.last_id), ("adopted", 50));
    assert_eq!(read_all(&log.reader()).len(), 50);
}

#[test]
fn a_log_restarted_at_a_later_id_holds_only_what_comes_after_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for first in (1..=200u64).step_by(10) {
        log.append(&entries(first, first + 9)).unwrap();
    }
    log.append(&[Record::Decided { upto: 150 }, Record::Tombstone { id: 7 }])
        .unwrap();
    assert!(log.segments().len() > 2);
    let reader = log.reader();
    log.mark_complete().unwrap();
    log.restart_at(500, "log-b").unwrap();
    assert_eq!(
        (log.first_id(), log.last_id(), log.decided()),
        (500, 499, 499)
    );
    assert_eq!(log.log_id(), "log-b");
    assert!(!log.is_tombstone(7));
    assert_eq!(log.segments().len(), 1);
    assert!(
        matches!(
            reader.read(200, 5, usize::MAX),
            Err(ReadError::Gone { first_id: 500, .. })
        ),
        "a reader taken before sees the new log"
    );
    log.append(&entries(500, 510)).unwrap();
    log.append(&[Record::Decided { upto: 505 }]).unwrap();
    let ids: Vec<u64> = reader
        .read(0, 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, (500..=510).collect::<Vec<_>>());
    drop(log);
    let (mut log, opened) = reopen(tmp.path());
    assert!(
        !opened.unfinished,
        "a finished restart leaves the log complete"
    );
    assert_eq!(
        (opened.first_id, opened.last_id, opened.decided),
        (500, 510, 505)
    );
    assert_eq!(opened.log_id, "log-b");
    assert_eq!(
        log.reader().read(504, 1, usize::MAX).unwrap()[0].message,
        text(504)
    );
    // Incomplete before: still so after, until the caller says it caught up.
    fs::write(tmp.path().join(crate::storage::INCOMPLETE_MARKER), b"").unwrap();
    log.restart_at(600, "log-b").unwrap();
    drop(log);
    let (_, opened) = reopen(tmp.path());
    assert!(opened.unfinished);
    assert_eq!((opened.first_id, opened.last_id), (600, 599));
}

#[test]
fn a_log_set_aside_keeps_its_segments_elsewhere_and_starts_empty_and_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path());
    for first in (1..=100u64).step_by(10) {
        log.append(&entries(first, first + 9)).unwrap();
    }
    log.mark_complete().unwrap();
    let reader = log.reader();
    let aside = log.set_aside().unwrap();
    assert!(aside.starts_with(tmp.path()));
    assert!(
        fs::read_dir(&aside).unwrap().count() > 2,
        "the old segments are kept"
    );
    assert_eq!((log.log_id(), log.last_id(), log.first_id()), ("", 0, 1));
    assert!(reader.read(0, 10, usize::MAX).unwrap().is_empty());
    log.append(&[
        Record::Meta {
            log_id: "log-b".into(),
        },
        entry(1, "new"),
    ])
    .unwrap();
    drop(log);
    let (_, opened) = reopen(tmp.path());
    assert!(opened.unfinished, "incomplete until recovered");
    assert_eq!((opened.log_id.as_str(), opened.last_id), ("log-b", 1));
}
