//! A secondary checks what it is sent: replication requests forged by someone who holds the
//! replication token, sent straight to a secondary's replication port (over `Stream`, the only
//! call that takes them), are refused with a clear gRPC status and change nothing, and the real
//! master keeps replicating.

use cluster_tests::{fast_health, wait_until, Cluster, Node, SecondaryOpts, StatusCode, PROMPTLY};
use replog_proto::v1::replication_client::ReplicationClient;
use replog_proto::v1::{Decisions, Entry, MasterStart, ReplicaState, ReplicateRequest};
use serde_json::Value;
use std::time::Duration;
use tokio_stream::StreamExt as _;
use tonic::Code;

const TOKEN: &str = "forged-requests-token";

/// The in-memory master's one process: every request of the real master names it.
const MASTER_INSTANCE: u64 = 1;

/// A cluster of a master and two secondaries (secondary-1 durable, the target of the forged
/// requests) sharing a replication token, with a 1 s replication timeout. It has committed
/// "one" and "two" (ids 1 and 2) and answered 500 to "aborted" (id 3, appended w=3 while
/// secondary-2 was stopped); every node holds ids 1..=3 and shows only the first two.
async fn cluster_with_a_500() -> Cluster {
    let cluster = Cluster::start(
        vec![
            SecondaryOpts::new()
                .env("REPLICATION_TOKEN", TOKEN)
                .durable(),
            SecondaryOpts::new().env("REPLICATION_TOKEN", TOKEN),
        ],
        &fast_health(&[
            ("REPLICATION_TOKEN", TOKEN),
            ("REPLICATION_TIMEOUT_SECONDS", "1"),
            ("RETRY_MAX_MS", "200"),
        ]),
    )
    .await;
    for message in ["one", "two"] {
        let (status, body) = cluster.append(message, Some(3)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    cluster.secondaries[1].stop();
    let (status, body) = cluster.append("aborted", Some(3)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    cluster.secondaries[1].cont();
    cluster.wait_all_show(PROMPTLY, &["one", "two"]).await;
    wait_until(
        PROMPTLY,
        "every node holds and has decided id 3",
        || async {
            let mut all = true;
            for node in cluster.nodes() {
                let health = cluster.health(node).await;
                all &= health["last_id"] == 3 && health["decided"] == 3;
            }
            all
        },
    )
    .await;
    cluster
}

/// What a forged request must not change: the list and the log's state in `/api/health`.
async fn snapshot(cluster: &Cluster, node: &Node) -> (Vec<(u64, String)>, Vec<Value>) {
    let health = cluster.health(node).await;
    let fields = ["log_id", "last_id", "decided", "visible"]
        .iter()
        .map(|field| health[field].clone())
        .collect();
    (cluster.messages(node).await, fields)
}

/// A request as the real master would send it to a secondary that follows it.
async fn like_the_master(cluster: &Cluster) -> ReplicateRequest {
    let health = cluster.health(&cluster.master).await;
    let log_id = health["log_id"].as_str().expect("a log_id").to_owned();
    ReplicateRequest {
        log_id,
        master_instance: MASTER_INSTANCE,
        ..Default::default()
    }
}

async fn client(node: &Node) -> ReplicationClient<tonic::transport::Channel> {
    let endpoint = node.grpc_endpoint();
    ReplicationClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // The header `replog_node::auth` checks.
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("a header value"),
    );
    request
}

/// Sends `requests` (none of them quiet) on `client` as one `Stream`, kept open after them as the
/// master's is: the answers in order, up to and including the status that ended the stream.
async fn answers(
    client: &mut ReplicationClient<tonic::transport::Channel>,
    requests: Vec<ReplicateRequest>,
) -> Vec<Result<ReplicaState, tonic::Status>> {
    let count = requests.len();
    let requests = tokio_stream::iter(requests).chain(tokio_stream::pending());
    let mut replies = match client.stream(with_token(requests)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return vec![Err(status)],
    };
    let mut answers = Vec::new();
    while answers.len() < count {
        let answer = replies.message().await.and_then(|state| {
            state.ok_or_else(|| tonic::Status::unknown("the stream ended without an answer"))
        });
        let ended = answer.is_err();
        answers.push(answer);
        if ended {
            break;
        }
    }
    answers
}

/// The gRPC code of each answer (`Ok` if taken).
fn codes(answers: &[Result<ReplicaState, tonic::Status>]) -> Vec<Code> {
    answers
        .iter()
        .map(|answer| {
            answer
                .as_ref()
                .map_or_else(tonic::Status::code, |_| Code::Ok)
        })
        .collect()
}

/// Sends `requests` to `node` as one `Stream`: the code of each answer.
async fn stream(node: &Node, requests: Vec<ReplicateRequest>) -> Vec<Code> {
    codes(&answers(&mut client(node).await, requests).await)
}

/// Sends `forged` to secondary-1 over `Stream`, twice: as the first request of a stream, and
/// after a heartbeat like the master's that the secondary takes on the same stream. Checks that
/// it is refused with `code` each time and changes nothing there.
async fn refused_over_the_stream(cluster: &Cluster, forged: ReplicateRequest, code: Code) {
    let target = &cluster.secondaries[0];
    let before = snapshot(cluster, target).await;
    assert_eq!(stream(target, vec![forged.clone()]).await, [code], "first");
    assert_eq!(snapshot(cluster, target).await, before, "after the first");
    let heartbeat = like_the_master(cluster).await;
    assert_eq!(
        stream(target, vec![heartbeat, forged]).await,
        [Code::Ok, code],
        "after a heartbeat"
    );
    assert_eq!(snapshot(cluster, target).await, before, "after the second");
    assert!(
        target
            .log_since_start()
            .contains("refusing a replication request"),
        "the refusal is logged"
    );
    let metrics = cluster
        .client
        .get(target.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("a metrics body");
    assert!(
        metrics.contains("replog_replication_refused_total{"),
        "the refusal is counted: {metrics}"
    );
}

/// The real master still replicates to every node: a w=3 append answers 200 and every node
/// shows it after "one" and "two" (and never "aborted").
async fn master_keeps_replicating(cluster: &Cluster) {
    let (status, body) = cluster.append("after", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    cluster
        .wait_all_show(PROMPTLY, &["one", "two", "after"])
        .await;
}

fn tombstone(id: u64) -> Entry {
    Entry {
        id,
        message: Default::default(),
        tombstone: true,
    }
}

/// Injected: a tombstone of committed id 1, as a decision and as an entry. Checked: refused
/// with FAILED_PRECONDITION, id 1 still shown, the master keeps replicating.
#[tokio::test]
async fn a_forged_tombstone_of_a_committed_id_is_refused() {
    let cluster = cluster_with_a_500().await;
    let as_decision = ReplicateRequest {
        decisions: Some(Decisions {
            decided_upto: 3,
            tombstones: vec![1],
            since: 0,
        }),
        ..like_the_master(&cluster).await
    };
    refused_over_the_stream(&cluster, as_decision, Code::FailedPrecondition).await;
    let as_entry = ReplicateRequest {
        entries: vec![tombstone(1)],
        ..like_the_master(&cluster).await
    };
    refused_over_the_stream(&cluster, as_entry, Code::FailedPrecondition).await;
    master_keeps_replicating(&cluster).await;
}

/// Injected: another message at id 2, which secondary-1 holds as "two". Checked: refused with
/// FAILED_PRECONDITION, "two" still shown, the master keeps replicating.
#[tokio::test]
async fn a_forged_entry_at_a_held_id_is_refused() {
    let cluster = cluster_with_a_500().await;
    let planted = ReplicateRequest {
        entries: vec![Entry {
            id: 2,
            message: "planted".into(),
            tombstone: false,
        }],
        ..like_the_master(&cluster).await
    };
    refused_over_the_stream(&cluster, planted, Code::FailedPrecondition).await;
    master_keeps_replicating(&cluster).await;
}

/// Injected: `master_instance = 2^63` with starts that name it. Checked: refused with
/// FAILED_PRECONDITION, and the real master is not locked out (a later w=3 append answers 200
/// and shows everywhere).
#[tokio::test]
async fn a_forged_master_instance_does_not_lock_the_master_out() {
    let cluster = cluster_with_a_500().await;
    let far = 1u64 << 63;
    let forged = ReplicateRequest {
        master_instance: far,
        starts: vec![MasterStart {
            instance: far,
            recovered: 3,
        }],
        ..like_the_master(&cluster).await
    };
    refused_over_the_stream(&cluster, forged, Code::FailedPrecondition).await;
    master_keeps_replicating(&cluster).await;
}

/// Injected: a request that names master process 0, with a new entry at id 4 and a decision
/// that would show it. Checked: refused with INVALID_ARGUMENT (a master numbers its processes
/// from 1), nothing changes on secondary-1, the master keeps replicating.
#[tokio::test]
async fn a_forged_master_instance_zero_is_refused() {
    let cluster = cluster_with_a_500().await;
    let forged = ReplicateRequest {
        master_instance: 0,
        entries: vec![Entry {
            id: 4,
            message: "from process 0".into(),
            tombstone: false,
        }],
        decisions: Some(Decisions {
            decided_upto: 4,
            tombstones: vec![],
            since: 3,
        }),
        ..like_the_master(&cluster).await
    };
    refused_over_the_stream(&cluster, forged, Code::InvalidArgument).await;
    master_keeps_replicating(&cluster).await;
}

/// Injected: `Entry { id: 0, tombstone: true }` (and an id-0 message) to the durable
/// secondary-1. Checked: refused with INVALID_ARGUMENT, secondary-1 still runs and the master
/// keeps replicating to it.
#[tokio::test]
async fn a_forged_id_zero_does_not_stop_a_durable_secondary() {
    let mut cluster = cluster_with_a_500().await;
    for entry in [
        tombstone(0),
        Entry {
            id: 0,
            message: "zero".into(),
            tombstone: false,
        },
    ] {
        let forged = ReplicateRequest {
            entries: vec![entry],
            ..like_the_master(&cluster).await
        };
        refused_over_the_stream(&cluster, forged, Code::InvalidArgument).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cluster.secondaries[0].exited(), None, "secondary-1 stopped");
    master_keeps_replicating(&cluster).await;
}

/// Injected: `decided_upto = 2^64-1` to secondary-1, then an append w=3 while secondary-2 is
/// stopped, which secondary-1 receives and the master answers 500 a second later. Checked:
/// the forged frontier changes nothing secondary-1 reports, and the message answered 500 is
/// never shown there, neither while secondary-1 holds it undecided nor after.
#[tokio::test]
async fn a_forged_frontier_never_shows_a_message_answered_500() {
    let cluster = cluster_with_a_500().await;
    let target = &cluster.secondaries[0];
    let before = snapshot(&cluster, target).await;
    let forged = ReplicateRequest {
        decisions: Some(Decisions {
            decided_upto: u64::MAX,
            tombstones: vec![],
            since: 0,
        }),
        ..like_the_master(&cluster).await
    };
    // A frontier beyond what the secondary holds is legitimate (a lagging secondary): it is
    // taken only up to what is held, so the answer is OK and nothing changes.
    let heartbeat = like_the_master(&cluster).await;
    assert_eq!(stream(target, vec![forged.clone()]).await, [Code::Ok]);
    assert_eq!(
        stream(target, vec![heartbeat, forged]).await,
        [Code::Ok, Code::Ok]
    );
    assert_eq!(snapshot(&cluster, target).await, before);

    cluster.secondaries[1].stop();
    let appender = cluster.appender();
    let answer = tokio::spawn(async move { appender.append("answered 500", Some(3)).await });
    wait_until(PROMPTLY, "secondary-1 holds id 4", || async {
        cluster.health(target).await["last_id"] == 4
    })
    .await;
    let shows_it = |list: &[(u64, String)]| list.iter().any(|(_, m)| m == "answered 500");
    while !answer.is_finished() {
        let list = cluster.messages(target).await;
        assert!(
            !shows_it(&list),
            "secondary-1 shows an undecided message: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = answer.await.expect("the append task");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    cluster.secondaries[1].cont();
    master_keeps_replicating(&cluster).await;
    let list = cluster.messages(target).await;
    assert!(!shows_it(&list), "{list:?}");
}

/// Injected: a durable secondary whose log file may not grow past 32 KiB (`ulimit -f`, with
/// SIGXFSZ ignored so that the write fails instead of the signal killing it), sent one entry of
/// 64 KiB. Checked: the write fails, and the secondary stops with a non-zero exit code.
#[tokio::test]
async fn a_secondary_that_cannot_write_its_log_exits_non_zero() {
    let dir = cluster_tests::fresh_log_dir();
    let ports = cluster_tests::free_ports(2);
    let log_path = dir.join("secondary.log");
    let log = std::fs::File::create(&log_path).expect("a log file");
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        // 64 blocks of 512 bytes, the unit of POSIX `ulimit -f`.
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\"")
        .arg(cluster_tests::Binary::Secondary.path())
        .env_clear()
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("HOST", "127.0.0.1")
        .env("HTTP_PORT", ports[0].to_string())
        .env("GRPC_PORT", ports[1].to_string())
        .env("DATA_DIR", dir.join("data").display().to_string())
        .stdout(log.try_clone().expect("a second handle"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start the secondary");
    let endpoint = format!("http://127.0.0.1:{}", ports[1]);
    let mut client = cluster_tests::wait_for(PROMPTLY, "the replication port answers", || {
        let endpoint = endpoint.clone();
        async move { ReplicationClient::connect(endpoint).await.ok() }
    })
    .await;
    let big = ReplicateRequest {
        log_id: "a-log".into(),
        master_instance: 1,
        starts: vec![MasterStart {
            instance: 1,
            recovered: 0,
        }],
        entries: vec![Entry {
            id: 1,
            message: "x".repeat(64 << 10).into(),
            tombstone: false,
        }],
        ..Default::default()
    };
    let answer = answers(&mut client, vec![big]).await;
    assert_eq!(codes(&answer), [Code::Internal], "{answer:?}");
    let status = tokio::time::timeout(PROMPTLY, child.wait())
        .await
        .expect("the secondary stops")
        .expect("its exit status");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!status.success(), "exit status {status}; log:\n{log}");
}
