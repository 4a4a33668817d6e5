//! The properties the fuzz targets check. They live in `checks.rs` (the log's targets) and
//! `body.rs` (`append_body`), which the stable regression test `node/tests/fuzz_corpus.rs`
//! includes too, so the corpus is replayed against exactly the same checks without nightly.
//!
//! `body` needs `replog-node`, the whole JSON API, so it is built only with the `node` feature,
//! which the `append_body` target requires: the log's targets build against `replog-log` alone.

pub mod checks;

#[cfg(feature = "node")]
pub mod body;
