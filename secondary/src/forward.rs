//! Appends made on a secondary go to the master: its own log only changes through replication.
//!
//! The forwarder calls the master's public gRPC `Append` and hands back the master's verdict,
//! errors included, so a client sees the same answer whichever node it asked. When no verdict
//! comes back, the answer says only what this node knows: "nothing appended" (503) if the
//! request never left, "outcome unknown" (504) if it may have reached the master.
//!
//! In static mode the master is `MASTER`. In failover mode it is whoever leads, as the node's
//! watch of etcd says: one lazily connected channel per master address, made when the leader
//! moves to a new address and kept for every append until it moves again. While no node leads
//! (an election is under way), or while this node itself is taking over, nothing is forwarded
//! (503). An append forwarded to a master that another one replaces is answered "outcome
//! unknown" at once: the old master lost its lease, so its answer may never come, and whether
//! it committed the append first only the log can tell.

use replog_node::api::ApiError;
use replog_node::failover::Leader;
use replog_node::tls::{self, Tls};
use replog_proto::v1::log_client::LogClient;
use replog_proto::v1::AppendRequest;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

/// What a client is told while no node leads.
pub const NO_MASTER: &str = "no master at the moment (failover in progress); retry shortly";

/// What a client is told while this node is taking over as master.
pub const BECOMING_MASTER: &str =
    "this node is taking over as master (failover in progress); retry shortly";

/// How long the connection to the master may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A master this node cannot forward to.
#[derive(Debug, thiserror::Error)]
pub enum InvalidMaster {
    /// The address is no valid endpoint.
    #[error("master `{address}`: {source}")]
    Address {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The master's public port serves TLS, and nothing says which certificate it must have.
    #[error(
        "PUBLIC_TLS without TLS_CA: this secondary could not verify the master's certificate \
         when it forwards appends to it; set TLS_CA to the CA the nodes' certificates chain to"
    )]
    Unverifiable,
}

pub struct Forwarder {
    target: Target,
    /// TLS to the master's public port, when the nodes serve it over TLS (`PUBLIC_TLS`).
    tls: Option<Arc<Tls>>,
}

enum Target {
    /// Static mode: `MASTER`, or none.
    Fixed(Option<Master>),
    /// Failover mode: whoever leads.
    Leader {
        /// This node's name: a leader of that name is this node taking over.
        me: String,
        leader: watch::Receiver<Option<Leader>>,
        /// The channel to the leader's address, made when it was first needed.
        master: Mutex<Option<Master>>,
    },
}

/// A master's address and its channel (lazily connected; cloning shares it).
#[derive(Clone)]
struct Master {
    address: Arc<str>,
    client: LogClient<Channel>,
}

impl Master {
    /// A channel to `address`, over TLS when `tls` is given: the master's certificate must
    /// chain to `TLS_CA` and name the host of `address`.
    ///
    /// The URI stays `http://` even over TLS: the TLS is [`tls::Connector`]'s, and tonic built
    /// with a TLS feature of its own (another crate of the workspace may turn one on) refuses
    /// an `https://` URI unless its own TLS is configured.
    fn connect_lazy(address: &str, tls: Option<&Arc<Tls>>) -> Result<Self, InvalidMaster> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|source| InvalidMaster::Address {
                address: address.to_owned(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = match tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(tls::Connector::public(tls.clone())),
        };
        Ok(Self {
            address: address.into(),
            client: LogClient::new(channel),
        })
    }
}

impl Forwarder {
    /// Static mode: forwards to `master`, or answers 503 without one.
    pub fn new(master: Option<&str>) -> Result<Self, InvalidMaster> {
        Self::fixed(master, None)
    }

    fn fixed(master: Option<&str>, tls: Option<Arc<Tls>>) -> Result<Self, InvalidMaster> {
        let master = master
            .map(|address| Master::connect_lazy(address, tls.as_ref()))
            .transpose()?;
        Ok(Self {
            target: Target::Fixed(master),
            tls,
        })
    }

    /// Failover mode: forwards to the leader `leader` names, unless it is `me`.
    pub fn following(me: impl Into<String>, leader: watch::Receiver<Option<Leader>>) -> Self {
        Self {
            target: Target::Leader {
                me: me.into(),
                leader,
                master: Mutex::new(None),
            },
            tls: None,
        }
    }

    /// The forwarder a secondary with `config` and the node's `tls` uses: over TLS when the
    /// nodes' public ports serve it (`PUBLIC_TLS`), which needs `TLS_CA` to verify the master
    /// if there is one to forward to.
    pub fn for_config(
        config: &crate::config::Config,
        tls: Option<&Arc<Tls>>,
    ) -> Result<Self, InvalidMaster> {
        let tls = tls.filter(|tls| tls.public_server().is_some()).cloned();
        let forwards = config.failover.is_some() || config.master.is_some();
        if forwards
            && tls
                .as_ref()
                .is_some_and(|tls| tls.public_client().is_none())
        {
            return Err(InvalidMaster::Unverifiable);
        }
        match &config.failover {
            Some(role) => Ok(Self {
                tls,
                ..Self::following(role.name.clone(), role.leader.clone())
            }),
            None => Self::fixed(config.master.as_deref(), tls),
        }
    }

    /// Where an append goes now: the master's channel, or why there is none (nothing sent).
    fn target(&self) -> Result<Master, ApiError> {
        match &self.target {
            Target::Fixed(Some(master)) => Ok(master.clone()),
            Target::Fixed(None) => Err(ApiError::Unavailable(
                "this secondary has no MASTER setting; append on the master".into(),
            )),
            Target::Leader { me, leader, master } => {
                let leader = leader.borrow();
                let address = match leader.as_ref() {
                    None => return Err(ApiError::Unavailable(NO_MASTER.into())),
                    Some(leader) if leader.name == *me => {
                        return Err(ApiError::Unavailable(BECOMING_MASTER.into()))
                    }
                    Some(leader) => leader.http.as_str(),
                };
                let mut master = master.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(current) = master.as_ref().filter(|m| *m.address == *address) {
                    return Ok(current.clone());
                }
                let next = Master::connect_lazy(address, self.tls.as_ref()).map_err(|error| {
                    ApiError::Unavailable(format!(
                        "the master's address is not valid ({error}); nothing was appended"
                    ))
                })?;
                tracing::info!(master = address, "forwarding appends to a new master");
                *master = Some(next.clone());
                Ok(next)
            }
        }
    }

    pub async fn append(
        &self,
        message: String,
        w: Option<u64>,
        key: Option<String>,
    ) -> Result<u64, ApiError> {
        let Master {
            address,
            mut client,
        } = self.target()?;
        let w = match w.map(u32::try_from) {
            None => None,
            Some(Ok(w)) => Some(w),
            Some(Err(_)) => {
                return Err(ApiError::Unprocessable(
                    "`w` must be between 1 and the number of nodes".into(),
                ))
            }
        };
        let call = client.append(AppendRequest { message, w, key });
        let reply = match &self.target {
            Target::Fixed(_) => call.await,
            Target::Leader { leader, .. } => {
                let replaced = replaced(leader.clone(), &address);
                tokio::select! {
                    reply = call => reply,
                    next = replaced => {
                        tracing::debug!(master = %address, next = %next, "the master was replaced while an append was forwarded to it");
                        return Err(ApiError::OutcomeUnknown(format!(
                            "the master changed (to {next}) while the append was forwarded to it; \
                             it may or may not be in the log: retry with the same key to find out"
                        )));
                    }
                }
            }
        };
        let reply = reply.map_err(|status| {
            let error = verdict(status);
            tracing::debug!(master = %address, %error, outcome = error.outcome(), "forwarded append not committed");
            error
        })?;
        Ok(reply.into_inner().id)
    }
}

/// Waits until another node than the one at `address` leads, and names it. A moment without a
/// leader is not enough: the old master may still answer (it answers its undecided appends at
/// once when it is deposed). If the node stops watching, this never returns.
async fn replaced(mut leader: watch::Receiver<Option<Leader>>, address: &str) -> String {
    let moved = leader
        .wait_for(|leader| leader.as_ref().is_some_and(|l| l.http != address))
        .await
        .map(|leader| leader.as_ref().map(|l| l.name.clone()).unwrap_or_default());
    match moved {
        Ok(name) => name,
        Err(_) => std::future::pending().await,
    }
}

/// What a failed forward tells the client.
///
/// A status the master answered carries no source error: it is the master's verdict. One that
/// tonic made from a transport error carries the error as its source, and says nothing of what
/// the master did, except when the connection could not be made at all (the request never
/// left this node). Any other transport failure (the connection reset or closed, a broken
/// stream, a deadline) may have come after the master took the append, so its outcome is
/// unknown: answering 503 there would tell the client nothing was appended, which may be false.
fn verdict(status: tonic::Status) -> ApiError {
    let Some(source) = status.source() else {
        return ApiError::from(status);
    };
    if never_sent(source) {
        ApiError::Unavailable(format!(
            "the master cannot be reached; nothing was appended: {}",
            status.message()
        ))
    } else {
        ApiError::OutcomeUnknown(format!(
            "the master's answer did not come back ({}); the append may or may not be in the log: retry with the same key to find out",
            status.message()
        ))
    }
}

/// Whether a transport error is a failed connect, anywhere in its chain of sources: then no
/// request was sent on it.
fn never_sent(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_master_that_refuses_the_connection_means_nothing_was_appended() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let address = listener.local_addr().expect("its address").to_string();
        drop(listener);
        let forwarder = Forwarder::new(Some(&address)).expect("a forwarder");
        let answer = forwarder.append("hello".into(), None, None).await;
        assert!(
            matches!(answer, Err(ApiError::Unavailable(_))),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_after_the_request_is_an_unknown_outcome() {
        // A "master" that reads the request and hangs up without an answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("its address").to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = vec![0; 64 * 1024];
                // The HTTP/2 preface, SETTINGS and the request's frames: then gone.
                let read = async { while socket.read(&mut buffer).await.is_ok_and(|n| n > 0) {} };
                let _ = tokio::time::timeout(Duration::from_millis(300), read).await;
            }
        });
        let forwarder = Forwarder::new(Some(&address)).expect("a forwarder");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            forwarder.append("hello".into(), None, None),
        )
        .await
        .expect("an answer once the connection closed");
        assert!(
            matches!(answer, Err(ApiError::OutcomeUnknown(_))),
            "{answer:?}"
        );
    }

    /// A master that answers every append with the id `answer`, or never (`None`), telling
    /// `received` of each.
    struct FakeMaster {
        answer: Option<u64>,
        received: Arc<tokio::sync::Notify>,
    }

    #[tonic::async_trait]
    impl replog_proto::v1::log_server::Log for FakeMaster {
        async fn append(
            &self,
            _request: tonic::Request<AppendRequest>,
        ) -> Result<tonic::Response<replog_proto::v1::AppendReply>, tonic::Status> {
            self.received.notify_one();
            match self.answer {
                Some(id) => Ok(tonic::Response::new(replog_proto::v1::AppendReply {
                    id,
                    message: String::new(),
                })),
                None => std::future::pending().await,
            }
        }

        async fn list(
            &self,
            _request: tonic::Request<replog_proto::v1::ListRequest>,
        ) -> Result<tonic::Response<replog_proto::v1::ListReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("a fake master"))
        }

        type WatchStream = tokio_stream::Empty<Result<replog_proto::v1::LogEntry, tonic::Status>>;

        async fn watch(
            &self,
            _request: tonic::Request<replog_proto::v1::WatchRequest>,
        ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("a fake master"))
        }

        async fn health(
            &self,
            _request: tonic::Request<replog_proto::v1::HealthRequest>,
        ) -> Result<tonic::Response<replog_proto::v1::HealthReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("a fake master"))
        }
    }

    /// A running fake master: its address, the connections made to it, and its appends.
    struct Running {
        address: String,
        connections: Arc<std::sync::atomic::AtomicUsize>,
        received: Arc<tokio::sync::Notify>,
    }

    impl Running {
        fn connections(&self) -> usize {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    async fn fake_master(answer: Option<u64>) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("its address").to_string();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let received = Arc::new(tokio::sync::Notify::new());
        let counted = connections.clone();
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            move |accepted| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                accepted
            },
        );
        let service = replog_proto::v1::log_server::LogServer::new(FakeMaster {
            answer,
            received: received.clone(),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        Running {
            address,
            connections,
            received,
        }
    }

    fn leader(name: &str, http: &str) -> Option<Leader> {
        Some(Leader {
            name: name.into(),
            http: http.into(),
            term: 1,
            since_unix_ms: 0,
        })
    }

    #[tokio::test]
    async fn appends_go_to_whoever_leads_over_one_channel_per_master() {
        let (a, b) = (fake_master(Some(1)).await, fake_master(Some(2)).await);
        let (leader_tx, leader_rx) = watch::channel(leader("a", &a.address));
        let forwarder = Forwarder::following("c", leader_rx);
        for _ in 0..3 {
            assert_eq!(forwarder.append("m".into(), None, None).await, Ok(1));
        }
        assert_eq!((a.connections(), b.connections()), (1, 0));
        leader_tx.send_replace(leader("b", &b.address));
        for _ in 0..3 {
            assert_eq!(forwarder.append("m".into(), None, None).await, Ok(2));
        }
        assert_eq!((a.connections(), b.connections()), (1, 1));
        // A new term of the same master at the same address keeps the channel.
        let mut again = leader("b", &b.address);
        if let Some(l) = again.as_mut() {
            l.term = 2;
        }
        leader_tx.send_replace(again);
        assert_eq!(forwarder.append("m".into(), None, None).await, Ok(2));
        assert_eq!(b.connections(), 1);
        // Back to the first: its channel was replaced, so a new one connects.
        leader_tx.send_replace(leader("a", &a.address));
        assert_eq!(forwarder.append("m".into(), None, None).await, Ok(1));
        assert_eq!((a.connections(), b.connections()), (2, 1));
    }

    #[tokio::test]
    async fn without_a_leader_or_while_this_node_takes_over_nothing_is_forwarded() {
        let a = fake_master(Some(1)).await;
        let (leader_tx, leader_rx) = watch::channel(None);
        let forwarder = Forwarder::following("c", leader_rx);
        assert_eq!(
            forwarder.append("m".into(), None, None).await,
            Err(ApiError::Unavailable(NO_MASTER.into()))
        );
        leader_tx.send_replace(leader("c", &a.address));
        assert_eq!(
            forwarder.append("m".into(), None, None).await,
            Err(ApiError::Unavailable(BECOMING_MASTER.into()))
        );
        leader_tx.send_replace(leader("a", "not a host:port/"));
        let answer = forwarder.append("m".into(), None, None).await;
        assert!(
            matches!(&answer, Err(ApiError::Unavailable(why)) if why.contains("not valid")),
            "{answer:?}"
        );
        assert_eq!(a.connections(), 0);
        leader_tx.send_replace(leader("a", &a.address));
        assert_eq!(forwarder.append("m".into(), None, None).await, Ok(1));
    }

    #[tokio::test]
    async fn an_append_forwarded_to_a_master_another_replaces_is_an_unknown_outcome() {
        let (silent, b) = (fake_master(None).await, fake_master(Some(2)).await);
        let (leader_tx, leader_rx) = watch::channel(leader("a", &silent.address));
        let forwarder = Forwarder::following("c", leader_rx);
        let append = forwarder.append("m".into(), None, None);
        tokio::pin!(append);
        let reached = async {
            tokio::select! {
                answer = &mut append => panic!("answered without a master's answer: {answer:?}"),
                _ = silent.received.notified() => {}
            }
        };
        tokio::time::timeout(Duration::from_secs(10), reached)
            .await
            .expect("the append reaches the master");
        // No leader for a moment: the old master may still answer.
        leader_tx.send_replace(None);
        assert!(futures::poll!(&mut append).is_pending());
        leader_tx.send_replace(leader("b", &b.address));
        let answer = tokio::time::timeout(Duration::from_secs(10), append)
            .await
            .expect("answered once another master leads");
        assert!(
            matches!(&answer, Err(ApiError::OutcomeUnknown(why)) if why.contains("(to b)")),
            "{answer:?}"
        );
        assert_eq!(forwarder.append("m".into(), None, None).await, Ok(2));
    }

    #[test]
    fn the_masters_own_answers_keep_their_meaning() {
        let answer = verdict(tonic::Status::unavailable("no quorum"));
        assert_eq!(answer, ApiError::Unavailable("no quorum".into()));
        let answer = verdict(tonic::Status::unknown("the master stopped"));
        assert_eq!(
            answer,
            ApiError::OutcomeUnknown("the master stopped".into())
        );
    }
}
