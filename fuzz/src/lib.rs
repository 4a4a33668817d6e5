//! The properties the fuzz targets check. They live in `checks.rs`, which the stable regression
//! test `node/tests/fuzz_corpus.rs` includes too, so the corpus is replayed against exactly the
//! same checks without nightly.

pub mod checks;
