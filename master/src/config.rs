//! The master's settings: environment variables, each also a CLI flag of the same name.
//!
//! The core takes its own plain [`Settings`] and [`Thresholds`], built here, so that it knows
//! nothing of the command line: this module sits above `core` and below every module that
//! reads a setting.

use crate::core::health::Thresholds;
use crate::core::Settings;
use crate::error::InvalidSettings;
use clap::{Args, Parser};
use replog_node::config::{endpoint, millis, seconds, AuthArgs, LimitArgs, StorageArgs};
use replog_node::runtime::RuntimeArgs;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "master",
    version,
    about = "replog master: assigns ids, replicates each append to every secondary, answers once the write concern is met"
)]
pub struct Config {
    /// Address to bind the HTTP API to.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port of the HTTP API.
    #[arg(long, env = "HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,

    /// Comma-separated gRPC endpoints (host:port) of the secondaries' replication service.
    #[arg(long, env = "SECONDARIES", value_delimiter = ',', value_parser = endpoint)]
    pub secondaries: Vec<String>,

    /// Seconds an append may wait for its write concern before it is aborted (0 = no limit).
    #[arg(long, env = "REPLICATION_TIMEOUT_SECONDS", default_value = "10", value_parser = seconds)]
    pub replication_timeout_seconds: Duration,

    /// Silence after which the master asks each secondary for its state on the replication
    /// stream (a heartbeat when idle, a ping while answers are owed), in milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value = "500", value_parser = millis)]
    pub heartbeat_interval_ms: Duration,

    /// Without contact for this long a secondary is Suspected, in milliseconds.
    #[arg(long, env = "SUSPECT_AFTER_MS", default_value = "1500", value_parser = millis)]
    pub suspect_after_ms: Duration,

    /// Without contact for this long a secondary is Unhealthy (and does not count towards the
    /// quorum), in milliseconds.
    #[arg(long, env = "UNHEALTHY_AFTER_MS", default_value = "5000", value_parser = millis)]
    pub unhealthy_after_ms: Duration,

    /// First retry delay after a failed replication call, in milliseconds; doubles per failure.
    #[arg(long, env = "RETRY_BASE_MS", default_value = "20", value_parser = millis)]
    pub retry_base_ms: Duration,

    /// Cap of the retry delay, in milliseconds. Retries never stop.
    #[arg(long, env = "RETRY_MAX_MS", default_value = "2000", value_parser = millis)]
    pub retry_max_ms: Duration,

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

    #[command(flatten)]
    pub keys: KeyArgs,

    /// Longest wait for a secondary's answer to one replication request (a heartbeat too), and
    /// for opening the replication stream, in seconds; later, the stream is dropped and opened
    /// again. Must exceed DELAY_SECONDS.
    #[arg(long, env = "RPC_TIMEOUT_SECONDS", default_value = "30", value_parser = seconds)]
    pub rpc_timeout_seconds: Duration,

    /// Failover mode: the mastership this process holds, given by the node that runs the
    /// role (the `replog` binary); `None` in static mode. Never read from the environment.
    #[arg(skip)]
    pub failover: Option<replog_node::failover::MasterRole>,
}

/// The idempotency settings.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// How long the master remembers an append's idempotency key, in seconds.
    #[arg(long, env = "IDEMPOTENCY_WINDOW_SECONDS", default_value = "300", value_parser = seconds)]
    pub idempotency_window_seconds: Duration,

    /// Most idempotency keys remembered at once; beyond, the oldest is forgotten first.
    #[arg(long, env = "IDEMPOTENCY_MAX_KEYS", default_value_t = 100_000)]
    pub idempotency_max_keys: usize,
}

impl Config {
    /// Checks that settings agree with one another.
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        if self.suspect_after_ms >= self.unhealthy_after_ms {
            return Err(InvalidSettings::SuspectNotBelowUnhealthy);
        }
        if self.retry_base_ms > self.retry_max_ms {
            return Err(InvalidSettings::RetryBaseAboveMax);
        }
        if self.rpc_timeout_seconds.is_zero() {
            return Err(InvalidSettings::ZeroRpcTimeout);
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.secondaries.iter().find(|s| !seen.insert(*s)) {
            return Err(InvalidSettings::DuplicateSecondary(dup.clone()));
        }
        Ok(())
    }

    /// Nodes in the cluster, the master included: the largest valid `w` and its default.
    pub fn nodes(&self) -> usize {
        self.secondaries.len() + 1
    }
}

impl Settings {
    /// The core's settings, as this process was started with them.
    pub fn from_config(config: &Config) -> Self {
        Self {
            secondaries: config.secondaries.clone(),
            thresholds: Thresholds::from_config(config),
            rpc_timeout: config.rpc_timeout_seconds,
            heartbeat_interval: config.heartbeat_interval_ms,
            retry_base: config.retry_base_ms,
            retry_max: config.retry_max_ms,
            replication_timeout: config.replication_timeout_seconds,
            quorum_decisions: config.failover.is_some(),
            cache_bytes: config.storage.cache_budget(),
        }
    }
}

impl Thresholds {
    /// `SUSPECT_AFTER_MS` and `UNHEALTHY_AFTER_MS`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            suspect_after: config.suspect_after_ms,
            unhealthy_after: config.unhealthy_after_ms,
        }
    }
}
