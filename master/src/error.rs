//! Why the master cannot start or stops with an error: one type per layer, turned into a line
//! of text only by the binary.

use replog_node::api::connections::ThreadStartError;
use replog_node::config::ConfigError;
use replog_node::storage::StorageError;

/// Settings that contradict one another (see [`crate::config::Config::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSettings {
    #[error("SUSPECT_AFTER_MS must be below UNHEALTHY_AFTER_MS")]
    SuspectNotBelowUnhealthy,
    #[error("RETRY_BASE_MS must not exceed RETRY_MAX_MS")]
    RetryBaseAboveMax,
    #[error("RPC_TIMEOUT_SECONDS must be above 0")]
    ZeroRpcTimeout,
    #[error("SECONDARIES lists {0} twice")]
    DuplicateSecondary(String),
    #[error("secondary `{address}`: {reason}")]
    BadSecondary { address: String, reason: String },
}

/// Why the master process fails.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Settings(#[from] InvalidSettings),
    /// The error names the file.
    #[error("DATA_DIR: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Threads(#[from] ThreadStartError),
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    #[error("the log could not be written to DATA_DIR")]
    StorageFailed,
    /// The error names the setting or the file.
    #[error("TLS: {0}")]
    Tls(#[from] replog_node::tls::TlsError),
    /// Failover mode: the term the coordinator gave is not above every master process this
    /// log knows, so it cannot number a new one.
    #[error("term {term} is not above master process {floor}, which this log already knows")]
    StaleTerm { term: u64, floor: u64 },
}
