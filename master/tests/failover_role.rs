//! The master role of failover mode (`Config::failover`), run by `server::run` on real sockets
//! and a real `DATA_DIR`: the role stops at once when deposed or when its lease lapses, its
//! waiting appends answered "unknown", and `run` says why it ended; recovery gives the
//! mastership up to a more up-to-date node; the process is numbered by its term, and a term
//! that is not new is refused; health names the leader.
//!
//! The other nodes are stand-ins for the `Replication` service: each answers `Fetch` with a
//! given state and never answers a replication request, so appends that need them wait.

use clap::Parser;
use replog_master::config::Config;
use replog_master::server::{self, Ended};
use replog_node::failover::{unix_ms, Leader, LeaseGate, MasterRole};
use replog_node::storage::{FsyncPolicy, Record, SegmentLog};
use replog_proto::v1::replication_server::{Replication, ReplicationServer};
use replog_proto::v1::{FetchReply, FetchRequest, ReplicaState, ReplicateRequest};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long anything the tests wait for may take.
const WITHIN: Duration = Duration::from_secs(10);

/// A node that says it holds `state` and never answers a replication request.
struct StandIn {
    state: ReplicaState,
}

#[tonic::async_trait]
impl Replication for StandIn {
    async fn fetch(
        &self,
        _request: tonic::Request<FetchRequest>,
    ) -> Result<tonic::Response<FetchReply>, tonic::Status> {
        Ok(tonic::Response::new(FetchReply {
            state: Some(self.state.clone()),
            entries: Vec::new(),
            tombstones: Vec::new(),
        }))
    }

    type StreamStream =
        Pin<Box<dyn futures::Stream<Item = Result<ReplicaState, tonic::Status>> + Send + 'static>>;

    async fn stream(
        &self,
        _request: tonic::Request<tonic::Streaming<ReplicateRequest>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        Ok(tonic::Response::new(Box::pin(futures::stream::pending())))
    }
}

/// Serves a stand-in holding `state`; returns its address.
async fn stand_in(state: ReplicaState) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ReplicationServer::new(StandIn { state }))
            .serve_with_incoming(incoming),
    );
    address
}

/// A node that holds nothing yet.
fn empty() -> ReplicaState {
    ReplicaState {
        instance: 1,
        ..ReplicaState::default()
    }
}

/// A fresh directory for a `DATA_DIR`, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "replog-failover-role-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
            unix_ms()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The log in `dir`, as a node opening it (`DATA_DIR`) finds it.
fn reopen(dir: &Path) -> (SegmentLog, replog_node::log::Log) {
    let storage = replog_node::config::StorageArgs {
        data_dir: Some(dir.to_owned()),
        fsync: FsyncPolicy::Always,
        cache_bytes: 1 << 20,
        segment_bytes: 1 << 20,
        retention_bytes: None,
        retention_seconds: None,
    };
    let opened = storage.open(|| "unused".into()).expect("open the log");
    (opened.file.expect("files"), opened.log)
}

/// The handles a test keeps of a running master role.
struct Role {
    http: SocketAddr,
    gate: Arc<LeaseGate>,
    depose: CancellationToken,
    shutdown: CancellationToken,
    run: JoinHandle<Result<Ended, replog_master::error::Error>>,
    /// Keeps the leader's watch open.
    _leader: watch::Sender<Option<Leader>>,
}

/// Starts the master role of node "a" for `term` over `dir`, with `others` as the other
/// nodes' replication endpoints and a lease that holds for `lease`.
async fn start(dir: &Path, others: &[SocketAddr], term: u64, lease: Duration) -> Role {
    let mut args = vec![
        "master".to_owned(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--replication-timeout-seconds".into(),
        "30".into(),
        "--shutdown-grace-seconds".into(),
        "30".into(),
    ];
    if !others.is_empty() {
        args.push("--secondaries".into());
        let others: Vec<String> = others.iter().map(SocketAddr::to_string).collect();
        args.push(others.join(","));
    }
    let mut config = Config::try_parse_from(args).expect("valid settings");
    let gate = Arc::new(LeaseGate::default());
    gate.extend_to(Instant::now() + lease);
    let depose = CancellationToken::new();
    let leader = Leader {
        name: "a".into(),
        http: "127.0.0.1:1".into(),
        term,
        since_unix_ms: unix_ms(),
    };
    let (leader_tx, leader_rx) = watch::channel(Some(leader));
    config.failover = Some(MasterRole {
        name: "a".into(),
        term,
        gate: gate.clone(),
        depose: depose.clone(),
        leader: leader_rx,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(server::run(config, listener, shutdown.clone()));
    Role {
        http,
        gate,
        depose,
        shutdown,
        run,
        _leader: leader_tx,
    }
}

/// One HTTP/1.1 request; the status and the body.
async fn http(to: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(to).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

async fn health(to: SocketAddr) -> serde_json::Value {
    let (status, body) = http(to, "GET", "/api/health", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `check` on the master's health until it holds, for at most [`WITHIN`].
async fn wait_for_health(to: SocketAddr, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let now = health(to).await;
        if check(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {what} within {WITHIN:?}: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the role to end; what `run` returned.
async fn ended(role: Role) -> Ended {
    tokio::time::timeout(WITHIN, role.run)
        .await
        .expect("the role ends")
        .expect("the task")
        .expect("no error")
}

fn serving(h: &serde_json::Value) -> bool {
    h["read_only"] == false
}

/// An append of `message` with `w` that waits in the background: its status and body.
fn append(to: SocketAddr, message: &str, w: u64) -> JoinHandle<(u16, String)> {
    let body = format!(r#"{{"message":"{message}","w":{w}}}"#);
    tokio::spawn(async move { http(to, "POST", "/api/messages", &body).await })
}

#[tokio::test]
async fn a_deposed_master_stops_at_once_and_its_waiting_appends_hear_unknown() {
    let other = stand_in(empty()).await;
    let dir = Dir::new();
    let role = start(&dir.0, &[other], 7, Duration::from_secs(60)).await;
    wait_for_health(role.http, "serving", serving).await;
    let h = health(role.http).await;
    assert_eq!(h["leadership"]["node"], "a");
    assert_eq!(h["leadership"]["master"], "a");
    assert_eq!(h["leadership"]["term"], 7);
    // w=1 commits on the master's own disk; w=2 waits for the stand-in, which never answers.
    let (status, body) = append(role.http, "one", 1).await.expect("task");
    assert_eq!(status, 200, "{body}");
    let waiting = append(role.http, "two", 2);
    wait_for_health(role.http, "waiting", |h| h["pending"] == 1).await;
    let started = Instant::now();
    role.depose.cancel();
    let (status, body) = waiting.await.expect("task");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("unknown"), "{body}");
    assert_eq!(ended(role).await, Ended::Deposed);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no grace period: {:?}",
        started.elapsed()
    );
    // The file is closed and holds the process numbered by the term, and both entries.
    let (file, log) = reopen(&dir.0);
    assert_eq!(file.master_starts().last(), Some(&(7, 0)));
    assert_eq!(log.last_id(), 2);
}

#[tokio::test]
async fn a_deposed_master_reads_back_the_frontier_it_showed() {
    // Alone, the node is its own majority: what its disk holds is decided.
    let dir = Dir::new();
    let role = start(&dir.0, &[], 3, Duration::from_secs(60)).await;
    wait_for_health(role.http, "serving", serving).await;
    for message in ["one", "two", "three"] {
        let (status, body) = append(role.http, message, 1).await.expect("task");
        assert_eq!(status, 200, "{body}");
    }
    wait_for_health(role.http, "showing three", |h| h["visible"] == 3).await;
    role.depose.cancel();
    assert_eq!(ended(role).await, Ended::Deposed);
    // The node's next role opens the file: it shows what this one showed.
    let (_, log) = reopen(&dir.0);
    assert_eq!((log.last_id(), log.decided()), (3, 3));
    assert_eq!(log.visible_count(), 3);
}

#[tokio::test]
async fn a_master_whose_lease_lapses_decides_nothing_more_and_stops() {
    let other = stand_in(empty()).await;
    let dir = Dir::new();
    let ttl = Duration::from_secs(1);
    let role = start(&dir.0, &[other], 3, ttl).await;
    // The lease is renewed, as the node does, until the append waits.
    let renewing = CancellationToken::new();
    let gate = role.gate.clone();
    let renewal = renewing.clone();
    tokio::spawn(async move {
        while !renewal.is_cancelled() {
            gate.extend_to(Instant::now() + ttl);
            tokio::time::sleep(ttl / 4).await;
        }
    });
    wait_for_health(role.http, "serving", serving).await;
    let waiting = append(role.http, "late", 2);
    wait_for_health(role.http, "waiting", |h| h["pending"] == 1).await;
    // The renewals stop: once the lease lapses, the role ends by itself.
    renewing.cancel();
    let (status, body) = waiting.await.expect("task");
    assert_eq!(status, 504, "{body}");
    assert_eq!(ended(role).await, Ended::Lapsed);
}

#[tokio::test]
async fn a_master_that_hears_a_more_up_to_date_node_yields_without_serving() {
    let dir = Dir::new();
    // This node's own log: one entry of log L by master process 2.
    {
        let (mut file, log) = reopen(&dir.0);
        file.append(&[
            Record::MasterStart {
                instance: 2,
                recovered: 0,
            },
            Record::Entry {
                id: 1,
                message: "m".into(),
                tombstone: false,
            },
        ])
        .expect("write");
        let ahead = ReplicaState {
            log_id: log.log_id().to_owned(),
            instance: 1,
            held: 1,
            decided: 1,
            master_instance: 3,
            last_term: 3,
            rejoining: false,
        };
        let other = stand_in(ahead).await;
        let role = start(&dir.0, &[other], 4, Duration::from_secs(60)).await;
        assert_eq!(ended(role).await, Ended::Yielded);
    }
    let (file, log) = reopen(&dir.0);
    assert_eq!(file.master_starts(), &[(2, 0)], "no process was started");
    assert_eq!(log.last_id(), 1);
}

#[tokio::test]
async fn a_term_that_is_not_new_is_refused() {
    let dir = Dir::new();
    {
        let (mut file, _) = reopen(&dir.0);
        file.append(&[Record::MasterStart {
            instance: 5,
            recovered: 0,
        }])
        .expect("write");
    }
    // Alone, the node is its own majority: recovery serves, but term 5 is not above process 5.
    let role = start(&dir.0, &[], 5, Duration::from_secs(60)).await;
    assert_eq!(ended(role).await, Ended::Yielded);
    let (file, _) = reopen(&dir.0);
    assert_eq!(file.master_starts(), &[(5, 0)]);
    // Term 6 is new.
    let role = start(&dir.0, &[], 6, Duration::from_secs(60)).await;
    wait_for_health(role.http, "serving", serving).await;
    role.shutdown.cancel();
    assert_eq!(ended(role).await, Ended::Stopped);
    let (file, _) = reopen(&dir.0);
    assert_eq!(file.master_starts(), &[(5, 0), (6, 0)]);
}
