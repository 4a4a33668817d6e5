//! The replog master: assigns ids, replicates every append to the secondaries, decides commit
//! or abort. `server::run` puts the pieces together; the binary in `main.rs` only parses the
//! configuration and binds the port.

pub mod answers;
pub mod config;
pub mod core;
pub mod deadlines;
pub mod error;
pub mod idempotency;
pub mod journal;
pub mod pulse;
pub mod recovery;
pub mod replication;
pub mod server;
pub mod state;
