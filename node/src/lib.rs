//! What every replog node is made of.
//!
//! The master and the secondaries differ in how their log grows (the master assigns ids and
//! decides; a secondary receives both), but they agree on what a log is and what of it may be
//! shown. That shared part lives here, so the visibility rule exists once.

pub mod api;
pub mod auth;
pub mod config;
pub mod memory;
pub mod metrics;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;

pub use replog_log::{log, storage};
