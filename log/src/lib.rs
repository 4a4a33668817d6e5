//! replog's log, free of any network or async runtime.
//!
//! [`log`] holds a node's log in memory and the rule of what of it may be shown; [`storage`]
//! keeps it in an append-only file of checksummed records and recovers it from that file. The
//! master and the secondaries both build on these, and the fuzz targets and model tests use
//! them without compiling a web stack.

pub mod log;
pub mod storage;
