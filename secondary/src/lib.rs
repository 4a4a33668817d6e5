//! A replog secondary: holds the master's log, received over the internal replication service,
//! and serves it. `server::run` puts the pieces together; the binary in `main.rs` only parses
//! the configuration and binds the ports.
//!
//! The same `server::run` is the secondary role of a failover node (`Config::failover`): it then
//! forwards appends to whoever leads, publishes where it stands for the election, and lets go of
//! its file and ports when stopped, so the node can run the master role next.

pub mod config;
pub mod error;
pub mod fetch;
pub mod forward;
mod incoming;
pub mod replica;
pub mod server;
pub mod service;
pub mod state;
