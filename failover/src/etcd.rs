//! The [`Coordinator`] on etcd (v3 API, etcd-client).
//!
//! Keys under the prefix `P` (`ETCD_PREFIX`):
//! - `P/leader`: the master, JSON [`Leader`], attached to the master's lease;
//! - `P/term`: the last term handed out, decimal, on no lease (it outlives every master, so
//!   terms only grow);
//! - `P/nodes/<name>`: where a node stands, JSON [`Standing`], attached to its lease.
//!
//! Each node holds one lease, renewed over etcd's keep-alive stream. Every call is bounded by
//! the operation timeout: etcd's answer or an error within it, never a hang, so that the node
//! can tell that its lease is lapsing while etcd is unreachable or hung.
//!
//! With `https://` endpoints the connection is TLS ([`EtcdTls`]): etcd's certificate must chain
//! to `ETCD_CA`, and the node presents `ETCD_CERT` when etcd asks for a client certificate
//! (`--client-cert-auth`).

use crate::coordinator::{Coordinator, CoordinatorError};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp,
};
use replog_node::failover::{Leader, Standing};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What etcd says of a lease it does not have (expired or revoked): in the gRPC status of a
/// put or revoke, and in etcd-client's error when a keep-alive stream opens on such a lease.
const LEASE_NOT_FOUND: &str = "lease not found";

/// TLS to etcd: the CA etcd's certificate must chain to (`ETCD_CA`) and, for an etcd that asks
/// for client certificates, this node's certificate and key (`ETCD_CERT`, `ETCD_KEY`), all PEM
/// files.
///
/// The files are read at every connection to etcd ([`EtcdTls::load`]), not once at start: the
/// coordinator connects again after a call timed out or could not reach etcd, so certificates
/// renewed on disk are used from the next connection on, without a restart. A connection that
/// works keeps the certificates it was opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    /// The client certificate and its key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Why [`EtcdTls`]'s files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdTlsError {
    #[error("{setting} {}: {source}", path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{setting} {}: {reason}", path.display())]
    Pem {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl EtcdTls {
    /// Reads the files into etcd-client's TLS options, after checking that each holds what
    /// its setting names (a certificate, a private key), so that a wrong file is named here
    /// rather than showing up as a failed handshake.
    pub fn load(&self) -> Result<TlsOptions, EtcdTlsError> {
        let ca = read("ETCD_CA", &self.ca)?;
        certificates("ETCD_CA", &self.ca, &ca)?;
        let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert_path, key_path)) = &self.identity {
            let cert = read("ETCD_CERT", cert_path)?;
            certificates("ETCD_CERT", cert_path, &cert)?;
            let key = read("ETCD_KEY", key_path)?;
            PrivateKeyDer::from_pem_slice(&key).map_err(|error| EtcdTlsError::Pem {
                setting: "ETCD_KEY",
                path: key_path.clone(),
                reason: format!("no private key: {error}"),
            })?;
            options = options.identity(Identity::from_pem(cert, key));
        }
        Ok(options)
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, EtcdTlsError> {
    std::fs::read(path).map_err(|source| EtcdTlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// Checks that `pem` (the file `path`) holds at least one certificate and nothing unreadable.
fn certificates(setting: &'static str, path: &Path, pem: &[u8]) -> Result<(), EtcdTlsError> {
    let bad = |reason: String| EtcdTlsError::Pem {
        setting,
        path: path.to_owned(),
        reason,
    };
    let mut found = 0;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificate.map_err(|error| bad(error.to_string()))?;
        found += 1;
    }
    if found == 0 {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(())
}

/// The lease this node holds.
struct Lease {
    id: i64,
    /// The TTL etcd granted: a keep-alive renews to it.
    ttl: Duration,
    /// The keep-alive stream, opened at the first renewal and again after it broke. Dropped
    /// whenever a renewal is not answered in time, so that a late answer is never taken for a
    /// later renewal's (that would count the lease from a send time etcd never saw).
    keepalive: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

/// A node's coordinator on etcd.
pub struct EtcdCoordinator {
    /// `None` until the first call, and again after a call timed out: the next call opens a
    /// new connection, so that one that stopped answering (half-open after a network
    /// partition) is not waited on again.
    client: Option<Client>,
    endpoints: Vec<String>,
    options: ConnectOptions,
    /// For `https://` endpoints: read at each connection.
    tls: Option<EtcdTls>,
    op_timeout: Duration,
    leader_key: String,
    term_key: String,
    nodes_prefix: String,
    node_key: String,
    lease: Option<Lease>,
}

impl EtcdCoordinator {
    /// A coordinator for node `name` on the etcd at `endpoints` (`http://host:port`, or
    /// `https://host:port` with [`EtcdCoordinator::with_tls`]), under `prefix`, every call
    /// bounded by `op_timeout`. It connects at its first call: an etcd that is down or
    /// unreachable is an error of a call, within `op_timeout`, never of this.
    pub fn new(endpoints: &[String], prefix: &str, name: &str, op_timeout: Duration) -> Self {
        let options = ConnectOptions::new()
            .with_connect_timeout(op_timeout)
            .with_timeout(op_timeout)
            // A member cut off from its cluster's leader answers at once rather than holding
            // the request until a leader appears.
            .with_require_leader(true);
        let prefix = prefix.trim_end_matches('/');
        EtcdCoordinator {
            client: None,
            endpoints: endpoints.to_vec(),
            options,
            tls: None,
            op_timeout,
            leader_key: format!("{prefix}/leader"),
            term_key: format!("{prefix}/term"),
            nodes_prefix: format!("{prefix}/nodes/"),
            node_key: format!("{prefix}/nodes/{name}"),
            lease: None,
        }
    }

    /// Connects over TLS with `tls` (the endpoints must be `https://`).
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The leader key (`P/leader`).
    pub fn leader_key(&self) -> &str {
        &self.leader_key
    }

    /// The last-term key (`P/term`).
    pub fn term_key(&self) -> &str {
        &self.term_key
    }

    /// This node's standing key (`P/nodes/<name>`).
    pub fn node_key(&self) -> &str {
        &self.node_key
    }

    /// The client (a handle on the shared connection), connected first if there is none
    /// (the keep-alive stream went with the old connection), with the TLS files as they are
    /// now.
    async fn client(&mut self) -> Result<Client, CoordinatorError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        if let Some(lease) = &mut self.lease {
            lease.keepalive = None;
        }
        let mut options = self.options.clone();
        if let Some(tls) = &self.tls {
            let loaded = tls.load().map_err(|e| CoordinatorError::Store(e.into()))?;
            options = options.with_tls(loaded);
        }
        let connect = Client::connect(&self.endpoints, Some(options));
        let client = connect.await.map_err(from_etcd)?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// What a call's result means for this coordinator: after a timeout, or when etcd could
    /// not be reached (which covers a refused TLS handshake), the next call opens a new
    /// connection; an expired lease is no longer held.
    ///
    /// Over TLS, a connection etcd closed without saying why is reported as a possibly refused
    /// client certificate ([`ClosedOverTls`]).
    fn note<T>(&mut self, result: Result<T, CoordinatorError>) -> Result<T, CoordinatorError> {
        match &result {
            Err(error) if reconnect_after(error) => {
                self.client = None;
                if let Some(lease) = &mut self.lease {
                    lease.keepalive = None;
                }
            }
            Err(CoordinatorError::Expired) => self.lease = None,
            _ => {}
        }
        match result {
            Err(CoordinatorError::Store(error))
                if self.tls.is_some() && closed_by_etcd(&*error) =>
            {
                Err(CoordinatorError::Store(Box::new(ClosedOverTls(error))))
            }
            result => result,
        }
    }

    fn lease_id(&self) -> Result<i64, CoordinatorError> {
        self.lease
            .as_ref()
            .map(|lease| lease.id)
            .ok_or(CoordinatorError::NoLease)
    }

    /// The last term handed out and the revision that wrote it (0, 0 if none was).
    async fn term(&self, client: &mut Client) -> Result<(u64, i64), CoordinatorError> {
        let response = client
            .get(self.term_key.as_str(), None)
            .await
            .map_err(from_etcd)?;
        let Some(kv) = response.kvs().first() else {
            return Ok((0, 0));
        };
        let term = std::str::from_utf8(kv.value())
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| CoordinatorError::Malformed {
                key: self.term_key.clone(),
                reason: format!("not a term: {:?}", String::from_utf8_lossy(kv.value())),
            })?;
        Ok((term, kv.mod_revision()))
    }

    async fn try_lead_once(
        &mut self,
        mut leader: Leader,
        floor: u64,
    ) -> Result<Option<Leader>, CoordinatorError> {
        let lease = self.lease_id()?;
        let mut client = self.client().await?;
        let (term, revision) = self.term(&mut client).await?;
        leader.term =
            term.max(floor)
                .checked_add(1)
                .ok_or_else(|| CoordinatorError::Malformed {
                    key: self.term_key.clone(),
                    reason: "no term after it".into(),
                })?;
        let txn = Txn::new()
            .when([
                // No leader key (a key that does not exist has create revision 0).
                Compare::create_revision(self.leader_key.as_str(), CompareOp::Equal, 0),
                // The term is the one read (mod revision 0 when there is none).
                Compare::mod_revision(self.term_key.as_str(), CompareOp::Equal, revision),
            ])
            .and_then([
                TxnOp::put(
                    self.leader_key.as_str(),
                    encode(&leader)?,
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(self.term_key.as_str(), leader.term.to_string(), None),
            ]);
        let response = client.txn(txn).await.map_err(from_etcd)?;
        Ok(response.succeeded().then_some(leader))
    }

    async fn renew_once(&mut self) -> Result<Duration, CoordinatorError> {
        let mut client = self.client().await?;
        let lease = self.lease.as_mut().ok_or(CoordinatorError::NoLease)?;
        if let Some((keeper, stream)) = &mut lease.keepalive {
            let answer = match keeper.keep_alive().await {
                Ok(()) => stream.message().await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(Some(answer)) if answer.ttl() > 0 => return Ok(seconds(answer.ttl())),
                Ok(Some(_)) => return Err(CoordinatorError::Expired),
                Ok(None) => tracing::debug!("the keep-alive stream ended; opening another"),
                Err(error) => {
                    tracing::debug!(%error, "the keep-alive stream broke; opening another")
                }
            }
            lease.keepalive = None;
        }
        // Opening the stream sends a keep-alive and reads its answer: a renewal.
        let opened = client.lease_keep_alive(lease.id).await.map_err(from_etcd)?;
        lease.keepalive = Some(opened);
        Ok(lease.ttl)
    }

    async fn publish_once(&mut self, standing: &Standing) -> Result<(), CoordinatorError> {
        let lease = self.lease_id()?;
        let mut client = self.client().await?;
        let put = client.put(
            self.node_key.as_str(),
            encode(standing)?,
            Some(PutOptions::new().with_lease(lease)),
        );
        put.await.map_err(from_etcd).map(drop)
    }

    async fn withdraw_once(&mut self) -> Result<(), CoordinatorError> {
        let mut client = self.client().await?;
        let delete = client.delete(self.node_key.as_str(), None);
        delete.await.map_err(from_etcd).map(drop)
    }

    async fn standings_once(&mut self) -> Result<Vec<Standing>, CoordinatorError> {
        let mut client = self.client().await?;
        let get = client.get(
            self.nodes_prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        );
        let response = get.await.map_err(from_etcd)?;
        let standings = response
            .kvs()
            .iter()
            .filter_map(|kv| match serde_json::from_slice::<Standing>(kv.value()) {
                Ok(standing) => Some(standing),
                Err(error) => {
                    let key = String::from_utf8_lossy(kv.key());
                    tracing::warn!(%key, %error, "an unreadable standing: not counted");
                    None
                }
            })
            .collect();
        Ok(standings)
    }

    async fn leader_once(&mut self) -> Result<Option<Leader>, CoordinatorError> {
        let mut client = self.client().await?;
        let get = client.get(self.leader_key.as_str(), None);
        let response = get.await.map_err(from_etcd)?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|error| CoordinatorError::Malformed {
                key: self.leader_key.clone(),
                reason: error.to_string(),
            })
    }

    async fn resign_once(&mut self, leader: &Leader) -> Result<(), CoordinatorError> {
        let mut client = self.client().await?;
        // `try_lead` wrote this same encoding of the same `Leader`.
        let txn = Txn::new()
            .when([Compare::value(
                self.leader_key.as_str(),
                CompareOp::Equal,
                encode(leader)?,
            )])
            .and_then([TxnOp::delete(self.leader_key.as_str(), None)]);
        client.txn(txn).await.map_err(from_etcd).map(drop)
    }

    async fn start_once(&mut self, ttl: Duration) -> Result<Duration, CoordinatorError> {
        let mut client = self.client().await?;
        let asked =
            i64::try_from(ttl.as_nanos().div_ceil(1_000_000_000).max(1)).unwrap_or(i64::MAX);
        let granted = client.lease_grant(asked, None).await.map_err(from_etcd)?;
        if !granted.error().is_empty() || granted.ttl() <= 0 {
            return Err(CoordinatorError::Store(
                format!("lease not granted: {:?}", granted.error()).into(),
            ));
        }
        let ttl = seconds(granted.ttl());
        self.lease = Some(Lease {
            id: granted.id(),
            ttl,
            keepalive: None,
        });
        Ok(ttl)
    }

    async fn revoke_once(&mut self) -> Result<(), CoordinatorError> {
        let Ok(id) = self.lease_id() else {
            return Ok(());
        };
        let mut client = self.client().await?;
        match client.lease_revoke(id).await.map_err(from_etcd) {
            Ok(_) | Err(CoordinatorError::Expired) => {
                self.lease = None;
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// Each call is bounded by the operation timeout and goes through `note`, which keeps the
/// connection and the lease in step with what the call found.
impl Coordinator for EtcdCoordinator {
    async fn start(&mut self, ttl: Duration) -> Result<Duration, CoordinatorError> {
        let started = within(self.op_timeout, self.start_once(ttl)).await;
        self.note(started)
    }

    async fn renew(&mut self) -> Result<Duration, CoordinatorError> {
        let renewed = within(self.op_timeout, self.renew_once()).await;
        self.note(renewed)
    }

    async fn publish(&mut self, standing: &Standing) -> Result<(), CoordinatorError> {
        let published = within(self.op_timeout, self.publish_once(standing)).await;
        self.note(published)
    }

    async fn withdraw(&mut self) -> Result<(), CoordinatorError> {
        let withdrawn = within(self.op_timeout, self.withdraw_once()).await;
        self.note(withdrawn)
    }

    async fn standings(&mut self) -> Result<Vec<Standing>, CoordinatorError> {
        let standings = within(self.op_timeout, self.standings_once()).await;
        self.note(standings)
    }

    async fn leader(&mut self) -> Result<Option<Leader>, CoordinatorError> {
        let leader = within(self.op_timeout, self.leader_once()).await;
        self.note(leader)
    }

    async fn try_lead(
        &mut self,
        leader: Leader,
        floor: u64,
    ) -> Result<Option<Leader>, CoordinatorError> {
        let led = within(self.op_timeout, self.try_lead_once(leader, floor)).await;
        self.note(led)
    }

    async fn resign(&mut self, leader: &Leader) -> Result<(), CoordinatorError> {
        let resigned = within(self.op_timeout, self.resign_once(leader)).await;
        self.note(resigned)
    }

    async fn revoke(&mut self) -> Result<(), CoordinatorError> {
        let revoked = within(self.op_timeout, self.revoke_once()).await;
        self.note(revoked)
    }
}

/// A value as stored: JSON.
fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CoordinatorError> {
    serde_json::to_vec(value).map_err(|error| CoordinatorError::Store(error.into()))
}

/// `call`'s answer within `timeout`: the bound of every call of the coordinator.
async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, CoordinatorError>>,
) -> Result<T, CoordinatorError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(CoordinatorError::Timeout(timeout)))
}

/// etcd's "lease not found" is [`CoordinatorError::Expired`]; anything else a store error.
fn from_etcd(error: etcd_client::Error) -> CoordinatorError {
    let lease_gone = match &error {
        etcd_client::Error::GRpcStatus(status) => status.message().contains(LEASE_NOT_FOUND),
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains(LEASE_NOT_FOUND),
        _ => false,
    };
    if lease_gone {
        CoordinatorError::Expired
    } else {
        CoordinatorError::Store(Box::new(error))
    }
}

/// Whether the connection is worth replacing after `error`: the call timed out, or etcd could
/// not be reached over it (a transport failure, a refused handshake, gRPC's `Unavailable`).
/// tonic would retry the same connection with the TLS configuration it was built with; a new
/// one reads the certificate files again.
fn reconnect_after(error: &CoordinatorError) -> bool {
    match error {
        CoordinatorError::Timeout(_) => true,
        CoordinatorError::Store(error) => match error.downcast_ref::<etcd_client::Error>() {
            Some(etcd_client::Error::TransportError(_)) => true,
            Some(etcd_client::Error::GRpcStatus(status)) => {
                status.code() == tonic::Code::Unavailable
                    || std::error::Error::source(status)
                        .is_some_and(|source| source.is::<tonic::transport::Error>())
            }
            _ => false,
        },
        _ => false,
    }
}

/// A connection etcd closed (or reset) without a TLS alert having reached this node.
///
/// An etcd with `--client-cert-auth` that refuses this node's certificate (none, or one its
/// `--trusted-ca-file` did not sign) closes the connection with an alert. Under TLS 1.3 the
/// client's side of the handshake is over before etcd checks the certificate, the request is
/// already on its way, and the alert is then often lost with the reset connection: all that
/// arrives is the close. This says what it most likely means.
#[derive(Debug, thiserror::Error)]
#[error(
    "etcd closed the TLS connection; if it asks for client certificates (--client-cert-auth), \
     it may have refused this node's: check that ETCD_CERT is set and signed by etcd's \
     --trusted-ca-file ({0})"
)]
struct ClosedOverTls(#[source] Box<dyn std::error::Error + Send + Sync>);

/// Whether `error`'s causes say that etcd closed or reset the connection (or broke the pipe),
/// and none names a certificate or an alert (rustls' own errors are clear as they are).
fn closed_by_etcd(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut closed = false;
    let mut cause = Some(error);
    while let Some(error) = cause {
        let text = error.to_string().to_lowercase();
        if text.contains("certificate") || text.contains("alert") {
            return false;
        }
        let reset = error.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        });
        closed |= reset || text.contains("connection closed");
        // etcd-client's errors do not give their gRPC status or transport error as a source.
        cause = match error.downcast_ref::<etcd_client::Error>() {
            Some(etcd_client::Error::GRpcStatus(status)) => std::error::Error::source(status),
            Some(etcd_client::Error::TransportError(transport)) => Some(transport),
            _ => error.source(),
        };
    }
    closed
}

/// A TTL in etcd's whole seconds.
fn seconds(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}
