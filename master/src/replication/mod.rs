//! Replication from the master to its secondaries: the drivers of the core's links.
//!
//! Each secondary gets one long-lived [`sender`] task that carries out its link's decisions
//! ([`crate::core::link`]: batches, requests in flight, catch-up, heartbeats, backoff) on one
//! stream spoken over HTTP/2 by that task itself ([`stream`]). Everything the master hears
//! from a secondary while it serves, replies and pongs, comes on that stream.

pub mod error;
pub mod sender;
pub mod stream;
pub mod transport;

use crate::config::Config;
use crate::error::InvalidSettings;
use crate::state::Master;
pub use error::LinkError;
use replog_node::metrics::Metrics;
use replog_node::shutdown::Shutdown;
use replog_node::tls::{self, Tls};
use replog_proto::framing::MAX_MESSAGE_BYTES;
use replog_proto::v1::replication_client::ReplicationClient;
use replog_proto::v1::{FetchReply, FetchRequest};
use sender::Sender;
use std::sync::Arc;
use std::time::Duration;
use stream::{KeepAlive, ReplicationStream};
use tonic::transport::{Channel, Endpoint};

/// How long connecting to a secondary may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a `Fetch` or a stream that failed over TLS waits for the secondary's refusal of this
/// master's certificate (an alert comes within a round trip of the handshake).
const TLS_REFUSAL_WAIT: Duration = Duration::from_millis(500);

/// One secondary as the master sees it.
#[derive(Clone)]
pub struct Peer {
    pub address: String,
    /// Only for recovery's `Fetch` calls, before the master serves; replication runs on the
    /// link's own stream ([`Peer::open_stream`]).
    client: ReplicationClient<Channel>,
    token: Option<String>,
    /// With mutual TLS, the node's certificates, read for each new connection (a reload, on
    /// SIGHUP or a change of the files, reaches the next stream while the open one goes on).
    tls: Option<Arc<Tls>>,
    keep_alive: KeepAlive,
}

impl Peer {
    /// `tls`, when it has a replication client configuration (`TLS_CA` set), makes every
    /// connection to the secondary mutual TLS.
    pub fn new(
        address: &str,
        config: &Config,
        tls: Option<&Arc<Tls>>,
    ) -> Result<Self, InvalidSettings> {
        let keep_alive = KeepAlive {
            after: config.heartbeat_interval_ms,
            timeout: config.suspect_after_ms,
        };
        let tls = tls.filter(|tls| tls.mutual()).cloned();
        // Every fetch has a deadline of its own, so the channel needs no keep-alive. The URI
        // stays `http://` over TLS too: the TLS is `tls::Connector`'s, and a tonic built with
        // its own TLS feature refuses an `https://` URI unless that TLS is configured.
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| InvalidSettings::BadSecondary {
                address: address.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = match &tls {
            Some(tls) => {
                endpoint.connect_with_connector_lazy(tls::Connector::replication(tls.clone()))
            }
            None => endpoint.connect_lazy(),
        };
        let client = ReplicationClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            address: address.to_owned(),
            client,
            token: config.auth.token().map(str::to_owned),
            tls,
            keep_alive,
        })
    }

    /// Opens the long-lived replication stream (the `Stream` call). No deadline: the sender
    /// watches for replies that are late instead. A stream whose TLS connection broke without
    /// a reason ([`LinkError::TlsUnexplained`]) asks the secondary for it (`Peer::refusal`),
    /// once, so that health names rustls's reason.
    pub async fn open_stream(&self) -> Result<ReplicationStream, LinkError> {
        let opened = ReplicationStream::open(
            &self.address,
            self.tls.as_ref().and_then(|tls| tls.replication_client()),
            self.token.as_deref(),
            CONNECT_TIMEOUT,
            self.keep_alive,
        )
        .await;
        match opened {
            Err(unexplained @ LinkError::TlsUnexplained(_)) => {
                Err(self.refusal(TLS_REFUSAL_WAIT).await.unwrap_or(unexplained))
            }
            opened => opened,
        }
    }

    /// Reads the secondary's state and entries without changing anything (recovery).
    pub async fn fetch(
        &self,
        request: FetchRequest,
        timeout: Duration,
    ) -> Result<FetchReply, tonic::Status> {
        let request = self.request(request, timeout);
        let failed = match self.client.clone().fetch(request).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) => status,
        };
        // A call that failed underneath may be a refused handshake, which the call's error no
        // longer names: asked, so that health can say so.
        let underneath = matches!(
            failed.code(),
            tonic::Code::Unavailable
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
                | tonic::Code::Internal
        );
        if underneath {
            if let Some(refused) = self.refusal(timeout.min(TLS_REFUSAL_WAIT)).await {
                return Err(tonic::Status::unavailable(refused.to_string()));
            }
        }
        Err(failed)
    }

    /// Why the secondary refuses this master's certificate, if it does, asked of it within
    /// `wait` (`tls::refusal`: a handshake of its own, then a read for the secondary's alert);
    /// `None` without mutual TLS, or when no alert came. For a `Fetch` or a stream that failed
    /// over TLS without saying why, so that both name rustls's reason the same way.
    async fn refusal(&self, wait: Duration) -> Option<LinkError> {
        let config = self.tls.as_ref()?.replication_client()?;
        tls::refusal(config, &self.address, wait)
            .await
            .map(LinkError::Tls)
    }

    /// A unary call's request: the message, its deadline and the token.
    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        replog_node::auth::attach(&mut request, self.token.as_deref());
        request
    }
}

/// One [`Peer`] per configured secondary, in the order of their indexes, over mutual TLS when
/// `tls` has it.
pub fn peers(config: &Config, tls: Option<&Arc<Tls>>) -> Result<Arc<[Peer]>, InvalidSettings> {
    config
        .secondaries
        .iter()
        .map(|address| Peer::new(address, config, tls))
        .collect()
}

/// Starts the sender task of every secondary, each stopped by `shutdown`, counting into
/// `metrics`, and waiting `rpc_timeout` for an answer (`RPC_TIMEOUT_SECONDS`).
pub fn spawn(
    master: &Arc<Master>,
    peers: &[Peer],
    shutdown: &Shutdown,
    metrics: &Arc<Metrics>,
    rpc_timeout: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    peers
        .iter()
        .enumerate()
        .map(|(index, peer)| {
            let sender = Sender {
                master: master.clone(),
                peer: peer.clone(),
                index,
                shutdown: shutdown.clone(),
                metrics: metrics.clone(),
                rpc_timeout,
            };
            tokio::spawn(sender.run())
        })
        .collect()
}
