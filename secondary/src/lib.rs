//! A replog secondary: holds the master's log, received over the internal replication service,
//! and serves it. `server::run` puts the pieces together; the binary in `main.rs` only parses
//! the configuration and binds the ports.

pub mod config;
pub mod fetch;
pub mod forward;
pub mod replica;
pub mod server;
pub mod service;
pub mod state;
