//! What the log's fuzz targets check, on any input (`append_body`'s check is in `body.rs`, apart,
//! because it needs `replog-node`). Shared by the cargo-fuzz targets (nightly) and the corpus
//! regression test `node/tests/fuzz_corpus.rs` (stable), which includes this file.
//!
//! Every function panics when a property fails; a clean error for bad input is fine.

use replog_log::storage::record::{payload_len, HEADER_LEN};
use replog_log::storage::{decode, encode, DecodeError, FsyncPolicy, LogFile, OpenError, Record};
use std::cell::RefCell;
use std::path::PathBuf;

/// `decode` on arbitrary bytes: never panics; a decoded record re-encodes to exactly the bytes
/// it came from (the format is canonical), decodes again to itself, and any truncation of it is
/// reported as torn. Walks the whole input record by record, as recovery does.
pub fn record_decode(data: &[u8]) {
    let mut offset = 0;
    while offset < data.len() {
        let rest = &data[offset..];
        match decode(rest) {
            Ok(None) => panic!("Ok(None) for {} bytes", rest.len()),
            Ok(Some((record, used))) => {
                assert!(
                    used > 0 && used <= rest.len(),
                    "used {used} of {}",
                    rest.len()
                );
                assert_eq!(HEADER_LEN + payload_len(&record), used);
                check_record(&record, &rest[..used]);
                offset += used;
            }
            Err(error) => {
                // Errors describe themselves without panicking.
                assert!(!error.to_string().is_empty());
                break;
            }
        }
    }
    assert_eq!(decode(&[]), Ok(None));
}

/// `bytes` is exactly one encoded `record`.
fn check_record(record: &Record, bytes: &[u8]) {
    let mut out = Vec::new();
    encode(record, &mut out);
    assert_eq!(out, bytes, "re-encoding {record:?} differs from its bytes");
    assert_eq!(decode(&out), Ok(Some((record.clone(), out.len()))));
    let cut = &out[..out.len() - 1];
    assert!(
        matches!(decode(cut), Err(DecodeError::Torn { .. })),
        "a truncated {record:?} is not reported as torn: {:?}",
        decode(cut)
    );
}

thread_local! {
    /// One scratch directory per thread, reused across inputs (in memory where possible).
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

fn scratch() -> PathBuf {
    SCRATCH.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| {
                let shm = std::path::Path::new("/dev/shm");
                let dir = if shm.is_dir() {
                    tempfile::Builder::new()
                        .prefix("replog-fuzz")
                        .tempdir_in(shm)
                } else {
                    tempfile::Builder::new().prefix("replog-fuzz").tempdir()
                };
                dir.expect("a scratch directory")
            })
            .path()
            .to_path_buf()
    })
}

const FRESH_ID: &str = "fresh-log-id";

/// Arbitrary bytes as `log.bin`, recovered with `LogFile::open`: never panics. Either a clean
/// `OpenError::NotALog` that leaves the file as it was (its head is not a Meta record: not ours),
/// or a log whose file now ends exactly after the good records; opening it again recovers the
/// same log with nothing cut, and appending the next entry works and survives another reopen.
pub fn log_replay(data: &[u8]) {
    let dir = scratch();
    let path = dir.join(replog_log::storage::FILE_NAME);
    std::fs::write(&path, data).expect("write log.bin");
    let opened = LogFile::open(&dir, FsyncPolicy::Never, || FRESH_ID.to_owned());
    let (file, recovered) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            assert!(matches!(error, OpenError::NotALog { .. }), "{error}");
            assert!(!data.is_empty(), "an empty file is started afresh");
            let after = std::fs::read(&path).expect("read log.bin");
            assert_eq!(after, data, "a file that is not ours must not be changed");
            return;
        }
    };
    drop(file);
    let len = std::fs::metadata(&path).expect("stat log.bin").len();
    if data.is_empty() {
        assert_eq!(recovered.log.log_id(), FRESH_ID);
        assert!(recovered.cut.is_none());
    } else {
        match &recovered.cut {
            None => assert_eq!(len, data.len() as u64, "nothing cut, nothing lost"),
            Some(cut) => {
                assert_eq!(cut.offset, len, "the file ends where the cut was");
                assert_eq!(cut.offset + cut.bytes_cut, data.len() as u64);
                assert!(!cut.reason.to_string().is_empty());
            }
        }
        let kept = std::fs::read(&path).expect("read log.bin");
        assert_eq!(kept, data[..len as usize], "only a tail may be cut");
    }
    let log = &recovered.log;
    assert!(log
        .visible(1, usize::MAX)
        .iter()
        .all(|m| m.id <= log.last_id()));

    // Recovery is idempotent.
    let (mut file, again) =
        LogFile::open(&dir, FsyncPolicy::Never, || unreachable!("the file exists"))
            .expect("reopen");
    assert!(again.cut.is_none(), "a second recovery cut {:?}", again.cut);
    assert_eq!(same(&again.log), same(log));

    // Appends continue after the good records.
    let next = log.last_id() + 1;
    let entry = Record::Entry {
        id: next,
        message: bytes_of("appended"),
        tombstone: false,
    };
    file.append(&[entry]).expect("append the next entry");
    drop(file);
    let (_, last) = LogFile::open(&dir, FsyncPolicy::Never, || unreachable!("the file exists"))
        .expect("reopen");
    assert!(last.cut.is_none());
    assert_eq!(last.log.last_id(), next);
    assert_eq!(last.log.log_id(), log.log_id());
}

fn bytes_of(text: &'static str) -> bytes::Bytes {
    bytes::Bytes::from_static(text.as_bytes())
}

/// What a recovered log shows, to compare two recoveries.
fn same(log: &replog_log::log::Log) -> impl PartialEq + std::fmt::Debug {
    (
        log.log_id().to_owned(),
        log.last_id(),
        log.decided(),
        log.visible(1, usize::MAX),
        log.tombstones_in(0, u64::MAX).collect::<Vec<_>>(),
    )
}
