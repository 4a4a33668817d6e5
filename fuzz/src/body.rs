//! What `append_body` checks, on any input. Apart from `checks.rs` because it is the one check
//! that needs `replog-node` (the JSON API), which the log's targets must not build. Shared by the
//! cargo-fuzz target (nightly) and the corpus regression test `node/tests/fuzz_corpus.rs`
//! (stable), which includes this file.
//!
//! Every function panics when a property fails; a clean error for bad input is fine.

use replog_node::api::json::AppendBody;
use serde_json::{json, Value};

/// Arbitrary bytes as a JSON body, through `AppendBody::from_json` and `AppendBody::parse`:
/// never panics, and both decide alike; what they accept is an object with a string `message`,
/// an optional non-negative integer `w`, an optional string `key` and nothing else, and parsing its canonical form gives
/// the same; what they refuse is a client error (4xx).
pub fn append_body(data: &[u8]) {
    // The extractor's path (a fast first pass, then `parse`) decides exactly as `parse` does.
    let from_json = AppendBody::from_json(data);
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        assert_eq!(from_json, AppendBody::parse(value.clone()), "{value}");
        check_body(value);
    } else {
        assert!(from_json.is_err_and(|e| e.status().is_client_error()));
    }
    // The bytes as a message: any text is a valid message.
    let text = String::from_utf8_lossy(data).into_owned();
    let parsed = AppendBody::parse(json!({ "message": text.clone() }));
    assert_eq!(
        parsed,
        Ok(AppendBody {
            message: text,
            w: None,
            key: None
        })
    );
}

fn check_body(value: Value) {
    match AppendBody::parse(value.clone()) {
        Ok(body) => {
            let object = value.as_object().expect("only an object is accepted");
            assert!(object
                .keys()
                .all(|k| k == "message" || k == "w" || k == "key"));
            assert_eq!(
                object.get("message").and_then(Value::as_str),
                Some(&*body.message)
            );
            // `w` is a JSON integer: digits, or a number with no fraction (2.0), below 2^64.
            let w = object.get("w").and_then(|w| {
                w.as_u64().or_else(|| {
                    w.as_f64()
                        .filter(|f| {
                            f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(f)
                        })
                        .map(|f| f as u64)
                })
            });
            assert_eq!(w, body.w);
            assert_eq!(
                object.get("key").and_then(Value::as_str),
                body.key.as_deref()
            );
            let canonical =
                json!({ "message": body.message.clone(), "w": body.w, "key": body.key });
            assert_eq!(AppendBody::parse(canonical), Ok(body));
        }
        Err(error) => {
            assert!(
                error.status().is_client_error(),
                "{value} refused with {:?}",
                error.status()
            );
        }
    }
}
