//! What every replog node is made of around its log: configuration, the HTTP read API,
//! authentication of the replication service, metrics, logging, the runtime and shutdown.
//!
//! The master and the secondaries differ in how their log grows (the master assigns ids and
//! decides; a secondary receives both), but they agree on what a log is, what of it may be shown
//! and how it is kept on disk. That part is the `replog-log` crate, re-exported here as [`log`]
//! and [`storage`], so the visibility rule exists once and code that needs only the log does not
//! build the web stack.

pub mod api;
pub mod auth;
pub mod config;
pub mod failover;
pub mod memory;
pub mod metrics;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use replog_log::{log, storage};
