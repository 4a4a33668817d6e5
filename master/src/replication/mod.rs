//! Replication from the master to its secondaries.
//!
//! Each secondary gets one long-lived [`sender`] task that keeps its ordered stream of entries
//! (batched, several requests in flight, cumulative acknowledgements, catch-up from the
//! secondary's high-water mark, backoff on failure) and one [`heartbeat`] task that measures
//! its [`health`] and pushes decisions even when no entries flow.

pub mod backoff;
pub mod health;
pub mod heartbeat;
pub mod sender;

use crate::config::Config;
use crate::state::Master;
use replog_proto::v1::replication_client::ReplicationClient;
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};

/// Largest gRPC message either side accepts; batches stay well below it.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 64 << 20;

/// One secondary as the master sees it.
pub struct Peer {
    pub address: String,
    /// Wakes the sender: new entries, new decisions, or a restart seen by the heartbeat.
    pub wake: Notify,
    client: ReplicationClient<Channel>,
    token: Option<String>,
}

impl Peer {
    pub fn new(address: &str, config: &Config) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("secondary `{address}`: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(config.heartbeat_interval_ms.max(Duration::from_secs(1)))
            .keep_alive_timeout(config.suspect_after_ms)
            .keep_alive_while_idle(true);
        let client = ReplicationClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        Ok(Self {
            address: address.to_owned(),
            wake: Notify::new(),
            client,
            token: config.auth.token().map(str::to_owned),
        })
    }

    /// Opens the long-lived replication stream (the `Stream` call) fed by `requests`. No
    /// deadline: the sender watches for replies that are late instead.
    pub async fn open_stream(
        &self,
        requests: tokio::sync::mpsc::Receiver<ReplicateRequest>,
    ) -> Result<tonic::Streaming<ReplicaState>, tonic::Status> {
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(requests));
        replog_node::auth::attach(&mut request, self.token.as_deref());
        self.client
            .clone()
            .stream(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// One replication call (entries, decisions or a heartbeat) with a deadline and the token.
    pub async fn call(
        &self,
        request: ReplicateRequest,
        timeout: Duration,
    ) -> Result<ReplicaState, tonic::Status> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        replog_node::auth::attach(&mut request, self.token.as_deref());
        self.client
            .clone()
            .replicate(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Starts the sender and heartbeat tasks of every secondary.
pub fn spawn(master: &Arc<Master>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for index in 0..master.peers.len() {
        tasks.push(tokio::spawn(sender::run(master.clone(), index)));
        tasks.push(tokio::spawn(heartbeat::run(master.clone(), index)));
    }
    tasks
}
