//! The secondary's settings: environment variables, each also a CLI flag of the same name.

use clap::Parser;
use replog_node::config::{endpoint, rate, seconds, AuthArgs, LimitArgs, StorageArgs};
use replog_node::runtime::RuntimeArgs;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "secondary",
    version,
    about = "replog secondary: holds the master's log, received over the internal replication service"
)]
pub struct Config {
    /// Address to bind both ports to.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port of the HTTP API.
    #[arg(long, env = "HTTP_PORT", default_value_t = 8001)]
    pub http_port: u16,

    /// Port of the internal gRPC replication service (only the master calls it).
    #[arg(long, env = "GRPC_PORT", default_value_t = 50051)]
    pub grpc_port: u16,

    /// The master's HTTP endpoint (host:port), where appends made on this secondary are
    /// forwarded. Unset, appends here answer 503.
    #[arg(long, env = "MASTER", value_parser = endpoint)]
    pub master: Option<String>,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: replog_node::tls::TlsArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(flatten)]
    pub shutdown: replog_node::shutdown::ShutdownArgs,

    /// Seconds to wait before storing and acknowledging each batch of entries (test knob).
    #[arg(long, env = "DELAY_SECONDS", default_value = "0", value_parser = seconds)]
    pub delay_seconds: Duration,

    /// Probability (0..1) of answering an error after storing a batch, to prove exactly-once.
    #[arg(long, env = "ERROR_RATE", default_value = "0", value_parser = rate)]
    pub error_rate: f64,

    /// Failover mode: the role this secondary plays in a node that etcd may make master (the
    /// `replog` binary sets it; `MASTER` is then ignored). `None`: static mode.
    #[arg(skip)]
    pub failover: Option<replog_node::failover::SecondaryRole>,
}

/// Settings that disagree with one another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("HTTP_PORT and GRPC_PORT are both {0}; they must differ")]
    SamePort(u16),
}

impl Config {
    /// Checks that settings agree with one another.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.http_port != 0 && self.http_port == self.grpc_port {
            return Err(ConfigError::SamePort(self.http_port));
        }
        Ok(())
    }
}
