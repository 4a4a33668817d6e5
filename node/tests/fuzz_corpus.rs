//! Replays the fuzz corpus on stable Rust: every file in `fuzz/corpus/<target>/`, plus seeds
//! built here, goes through the same checks as the cargo-fuzz targets (`fuzz/src/checks.rs` and
//! `fuzz/src/body.rs`): no panic, clean errors, round trips. A crash found by fuzzing is fixed and
//! its input added to the corpus, and this test keeps it fixed without nightly.
//!
//! `cargo test -p replog-node --test fuzz_corpus -- --ignored write_seed_corpus` (re)writes the
//! seeds into the corpus folders as `seed-*` files, as starting points for fuzzing.

#[path = "../../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

#[path = "../../fuzz/src/body.rs"]
mod body;

use bytes::Bytes;
use replog_log::storage::{encode, Record};
use std::path::PathBuf;

/// A fuzz target's check: panics when a property fails.
type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 3] = [
    ("record_decode", checks::record_decode),
    ("log_replay", checks::log_replay),
    ("append_body", body::append_body),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("a corpus file"))
        })
        .collect()
}

fn replay(target: &str, check: Check, inputs: Vec<(String, Vec<u8>)>) {
    for (name, input) in inputs {
        let outcome = std::panic::catch_unwind(|| check(&input));
        assert!(
            outcome.is_ok(),
            "{target}: input {name} ({} bytes) fails its check",
            input.len()
        );
    }
}

#[test]
fn corpus_files_pass_their_checks() {
    for (target, check) in TARGETS {
        let inputs = corpus(target);
        assert!(
            !inputs.is_empty(),
            "no corpus for {target} in {}",
            corpus_dir(target).display()
        );
        replay(target, check, inputs);
    }
}

#[test]
fn seeds_pass_their_checks() {
    for (target, check) in TARGETS {
        replay(target, check, seeds(target));
    }
}

/// Writes the seeds into `fuzz/corpus/<target>/seed-*`.
#[test]
#[ignore = "writes into the source tree; run by hand"]
fn write_seed_corpus() {
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds(target) {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "record_decode" => record_seeds(),
        "log_replay" => log_seeds(),
        "append_body" => body_seeds(),
        other => panic!("unknown target {other}"),
    }
}

fn framed(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        encode(record, &mut out);
    }
    out
}

/// A frame around any payload, with a correct checksum.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn entry(id: u64, text: &'static str) -> Record {
    Record::Entry {
        id,
        message: Bytes::from_static(text.as_bytes()),
        tombstone: false,
    }
}

fn samples() -> Vec<(&'static str, Record)> {
    vec![
        (
            "meta",
            Record::Meta {
                log_id: "0123abcd".into(),
            },
        ),
        (
            "meta-empty",
            Record::Meta {
                log_id: String::new(),
            },
        ),
        ("entry", entry(1, "hello")),
        (
            "entry-tombstone",
            Record::Entry {
                id: 2,
                message: Bytes::new(),
                tombstone: true,
            },
        ),
        (
            "entry-max-id",
            Record::Entry {
                id: u64::MAX,
                message: Bytes::from_static(&[0, 255, 7]),
                tombstone: false,
            },
        ),
        ("tombstone", Record::Tombstone { id: 7 }),
        ("decided", Record::Decided { upto: 42 }),
    ]
}

fn record_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = samples()
        .into_iter()
        .map(|(name, record)| (name.to_owned(), framed(&[record])))
        .collect();
    let stream = framed(&samples().into_iter().map(|(_, r)| r).collect::<Vec<_>>());
    seeds.push(("stream".into(), stream.clone()));
    seeds.push(("stream-torn".into(), stream[..stream.len() - 3].to_vec()));
    let mut flipped = stream.clone();
    flipped[20] ^= 0x40;
    seeds.push(("stream-bitflip".into(), flipped));
    seeds.push(("header-only".into(), vec![5, 0, 0, 0, 1, 2, 3, 4]));
    seeds.push(("short-header".into(), vec![1, 0, 0]));
    seeds.push(("too-long".into(), [u32::MAX.to_le_bytes(), [0; 4]].concat()));
    seeds.push(("empty-payload".into(), raw_frame(&[])));
    seeds.push(("unknown-tag".into(), raw_frame(&[9, 1, 2, 3])));
    seeds.push((
        "bad-flags".into(),
        raw_frame(
            &[
                [2].as_slice(),
                &1u64.to_le_bytes(),
                &[2],
                &0u32.to_le_bytes(),
            ]
            .concat(),
        ),
    ));
    seeds.push((
        "meta-not-utf8".into(),
        raw_frame(&[[1].as_slice(), &2u32.to_le_bytes(), &[0xff, 0xfe]].concat()),
    ));
    seeds.push((
        "trailing-bytes".into(),
        raw_frame(&[[4].as_slice(), &3u64.to_le_bytes(), &[0]].concat()),
    ));
    seeds.push((
        "message-length-lies".into(),
        raw_frame(
            &[
                [2].as_slice(),
                &1u64.to_le_bytes(),
                &[0],
                &100u32.to_le_bytes(),
                b"x",
            ]
            .concat(),
        ),
    ));
    seeds
}

fn log_seeds() -> Vec<(String, Vec<u8>)> {
    let meta = Record::Meta { log_id: "L".into() };
    let good = framed(&[
        meta.clone(),
        entry(1, "a"),
        entry(2, "b"),
        Record::Tombstone { id: 2 },
        entry(3, "c"),
        Record::Decided { upto: 3 },
    ]);
    let mut corrupt_middle = good.clone();
    let middle = good.len() / 2;
    corrupt_middle[middle] ^= 1;
    vec![
        ("empty".into(), Vec::new()),
        ("meta-only".into(), framed(std::slice::from_ref(&meta))),
        ("good".into(), good.clone()),
        ("torn-tail".into(), good[..good.len() - 5].to_vec()),
        ("corrupt-middle".into(), corrupt_middle),
        (
            "garbage-tail".into(),
            [good.as_slice(), &[0xde, 0xad]].concat(),
        ),
        ("head-not-meta".into(), framed(&[entry(1, "a")])),
        (
            "head-torn".into(),
            framed(std::slice::from_ref(&meta))[..5].to_vec(),
        ),
        (
            "id-gap".into(),
            framed(&[meta.clone(), entry(1, "a"), entry(3, "c")]),
        ),
        (
            "meta-after-entry".into(),
            framed(&[meta.clone(), entry(1, "a"), meta.clone()]),
        ),
        (
            "adopted-identity".into(),
            framed(&[meta, Record::Meta { log_id: "M".into() }, entry(1, "a")]),
        ),
        (
            "tombstone-zero".into(),
            framed(&[
                Record::Meta { log_id: "L".into() },
                Record::Tombstone { id: 0 },
            ]),
        ),
        (
            "tombstone-ahead".into(),
            framed(&[
                Record::Meta { log_id: "L".into() },
                Record::Tombstone { id: 5 },
                Record::Decided { upto: u64::MAX },
                entry(1, "a"),
            ]),
        ),
    ]
}

fn body_seeds() -> Vec<(String, Vec<u8>)> {
    [
        ("message", r#"{"message":"hello"}"#),
        ("message-w", r#"{"message":"hello","w":2}"#),
        ("w-null", r#"{"message":"x","w":null}"#),
        ("w-zero", r#"{"message":"x","w":0}"#),
        ("w-negative", r#"{"message":"x","w":-1}"#),
        ("w-float", r#"{"message":"x","w":1.5}"#),
        ("w-huge", r#"{"message":"x","w":18446744073709551616}"#),
        ("w-string", r#"{"message":"x","w":"2"}"#),
        ("message-number", r#"{"message":5}"#),
        ("message-null", r#"{"message":null}"#),
        ("missing-message", r#"{"w":1}"#),
        ("unknown-field", r#"{"message":"x","extra":true}"#),
        ("duplicate-key", r#"{"message":"a","message":"b"}"#),
        ("duplicate-w", r#"{"message":"a","w":1,"w":2}"#),
        ("w-whole-float", r#"{"message":"x","w":2.0}"#),
        ("w-exponent", r#"{"message":"x","w":1e2}"#),
        ("w-first", r#"{"w":3,"message":"x"}"#),
        ("whitespace", " { \"message\" : \"x\" , \"w\" : 1 } \n"),
        ("trailing", r#"{"message":"x"} x"#),
        ("array", r#"["message"]"#),
        ("string", r#""message""#),
        ("null", "null"),
        ("unicode", r#"{"message":"h\u00e9llo \ud83d\ude00 \u0000"}"#),
        ("lone-surrogate", r#"{"message":"\ud800"}"#),
        (
            "deep",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        ),
        ("not-json", "message=hello"),
        ("empty", ""),
    ]
    .into_iter()
    .map(|(name, body)| (name.to_owned(), body.as_bytes().to_vec()))
    .collect()
}
