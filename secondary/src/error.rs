//! Why the secondary cannot start or stops with an error: typed here, turned into a line of text
//! only by the binary (or looked at by the failover node that runs the role).

use replog_node::api::connections::ThreadStartError;
use replog_node::config::ConfigError;
use replog_node::storage::StorageError;

/// Why the secondary fails.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The error names the file.
    #[error("DATA_DIR: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Forward(#[from] crate::forward::InvalidMaster),
    #[error("cannot read the address of a listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error(transparent)]
    Threads(#[from] ThreadStartError),
    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),
    #[error("replication server: {0}")]
    Replication(#[from] tonic::transport::Error),
    #[error("replication server task: {0}")]
    ReplicationTask(#[from] tokio::task::JoinError),
    #[error("the log could not be written to DATA_DIR")]
    StorageFailed,
    /// The error names the setting or the file.
    #[error("TLS: {0}")]
    Tls(#[from] replog_node::tls::TlsError),
}
