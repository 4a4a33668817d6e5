//! Answers when the outcome of an append cannot be known: a 503 means nothing was appended, so
//! an append that may have reached the master's log is answered 504 `"status": "unknown"`,
//! never 503 (over gRPC `UNKNOWN`, never `UNAVAILABLE`, and a retry with the same key gets the
//! first attempt's id); and a master stopped with SIGTERM gives its waiting appends their real
//! decision if it comes within `SHUTDOWN_GRACE_SECONDS`.

use cluster_tests::{
    steady_health, wait_until, Cluster, MasterOpts, Node, SecondaryOpts, StatusCode, PROMPTLY,
};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// A master that keeps its log (so a restart shows what it had written), appends that wait
/// without limit, and `grace` seconds of SIGTERM grace.
fn durable_master(grace: &str) -> MasterOpts {
    MasterOpts::new().durable().envs(&steady_health(&[
        ("REPLICATION_TIMEOUT_SECONDS", "0"),
        ("SHUTDOWN_GRACE_SECONDS", grace),
    ]))
}

/// Waits until the master shows at least one append pending.
async fn wait_pending(cluster: &Cluster) {
    wait_until(PROMPTLY, "the master shows the append pending", || async {
        cluster
            .try_health(&cluster.master)
            .await
            .is_some_and(|h| h["pending"].as_u64().is_some_and(|p| p >= 1))
    })
    .await;
}

/// Sends SIGTERM without waiting for the exit.
fn sigterm(node: &Node) {
    nix::sys::signal::kill(node.pid(), nix::sys::signal::Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("cannot send SIGTERM to {}: {e}", node.name));
}

/// Waits for a node that was sent SIGTERM to exit on its own.
async fn wait_exit(node: &mut Node, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = node.exited() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not exit within {timeout:?} of SIGTERM",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many times each node lists `message`, once every running node lists the same log.
async fn converged_count(cluster: &Cluster, message: &str) -> usize {
    wait_until(
        Duration::from_secs(10),
        "every node lists the same log",
        || async {
            let lists = cluster.all_messages().await;
            lists.iter().all(|(_, list)| *list == lists[0].1)
        },
    )
    .await;
    let lists = cluster.all_messages().await;
    let count = lists[0].1.iter().filter(|(_, m)| m == message).count();
    assert!(
        count <= 1,
        "{message:?} shown {count} times: {:?}",
        lists[0]
    );
    count
}

/// Injected: secondary-2 paused, a w=3 append through secondary-1 (forwarded to the master),
/// which secondary-1 already holds; then SIGKILL of the master. The master had written the
/// append to its file, so after its restart it is committed.
/// Checked: secondary-1 answers 504 with `"status": "unknown"` (not 503, which would say nothing
/// was appended); after the master's restart and secondary-2's return every node shows the
/// message exactly once, which the unknown answer allowed.
#[tokio::test]
async fn a_forwarded_append_whose_master_dies_answers_unknown() {
    let mut cluster = Cluster::start_with(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        durable_master("5"),
    )
    .await;
    cluster.secondaries[1].stop();
    let appender = cluster.appender_on(&cluster.secondaries[0]);
    let waiting = tokio::spawn(async move { appender.append("fate unknown", Some(3)).await });
    wait_pending(&cluster).await;
    wait_until(PROMPTLY, "secondary-1 holds the append", || async {
        cluster.held(&cluster.secondaries[0]).await >= 1
    })
    .await;
    cluster.master.kill();

    let (status, body) = tokio::time::timeout(PROMPTLY, waiting)
        .await
        .expect("secondary-1 answered once the master was gone")
        .expect("the append task");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["status"], "unknown", "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );

    cluster.secondaries[1].cont();
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    assert_eq!(converged_count(&cluster, "fate unknown").await, 1);
}

/// Injected: a w=3 append on the master waits for paused secondary-2; SIGTERM of the master
/// (grace 10 s); once the master stops accepting connections, an append sent to it; secondary-2
/// resumed 1 s later.
/// Checked: the waiting append answers 200 (its real decision came within the grace period);
/// the append sent during shutdown is refused or not connected (nothing appended); the master
/// exits 0; after its restart every node shows the committed message once and not the other.
#[tokio::test]
async fn sigterm_gives_a_waiting_append_its_decision_within_the_grace_period() {
    let mut cluster = Cluster::start_with(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        durable_master("10"),
    )
    .await;
    cluster.secondaries[1].stop();
    let appender = cluster.appender();
    let waiting = tokio::spawn(async move { appender.append("decided in grace", Some(3)).await });
    wait_pending(&cluster).await;

    sigterm(&cluster.master);
    // A fresh client: no pooled connection to the master.
    cluster.renew_client();
    wait_until(
        PROMPTLY,
        "the master stops accepting connections",
        || async {
            let health = cluster
                .client
                .get(cluster.master.url("/health"))
                .send()
                .await;
            health.is_err()
        },
    )
    .await;
    let sent = cluster
        .client
        .post(cluster.master.url("/api/messages"))
        .json(&serde_json::json!({"message": "sent during shutdown", "w": 1}))
        .send()
        .await;
    if let Ok(response) = sent {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("shutting down"), "{body}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "the append was answered before its decision"
    );
    cluster.secondaries[1].cont();

    let (status, body) = tokio::time::timeout(PROMPTLY, waiting)
        .await
        .expect("the append was answered once secondary-2 returned")
        .expect("the append task");
    assert_eq!(status, StatusCode::OK, "{body}");
    let status = wait_exit(&mut cluster.master, PROMPTLY).await;
    assert_eq!(status.code(), Some(0), "master after SIGTERM: {status}");

    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    assert_eq!(converged_count(&cluster, "decided in grace").await, 1);
    assert_eq!(converged_count(&cluster, "sent during shutdown").await, 0);
}

/// Injected: a w=3 append on the master waits for paused secondary-2; SIGTERM of the master with
/// a 2 s grace period; secondary-2 stays paused.
/// Checked: the append is answered 504 `"status": "unknown"` (not 503) no sooner than the grace
/// period, and the master exits 0; after its restart the message is shown at most once on every
/// node (either fate agrees with "unknown").
#[tokio::test]
async fn sigterm_answers_unknown_once_the_grace_period_ends() {
    let mut cluster = Cluster::start_with(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        durable_master("2"),
    )
    .await;
    cluster.secondaries[1].stop();
    let appender = cluster.appender();
    let waiting = tokio::spawn(async move { appender.append("undecided", Some(3)).await });
    wait_pending(&cluster).await;

    let signalled = Instant::now();
    sigterm(&cluster.master);
    let (status, body) = tokio::time::timeout(Duration::from_secs(2) + PROMPTLY, waiting)
        .await
        .expect("the append was answered after the grace period")
        .expect("the append task");
    let took = signalled.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["status"], "unknown", "{body}");
    assert!(
        took >= Duration::from_millis(1900),
        "answered after {took:?}"
    );
    let status = wait_exit(&mut cluster.master, PROMPTLY).await;
    assert_eq!(status.code(), Some(0), "master after SIGTERM: {status}");

    cluster.secondaries[1].cont();
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    converged_count(&cluster, "undecided").await;
}

/// Injected: the master paused (SIGSTOP); an append through secondary-1 (grace 1 s), which
/// forwards it and waits; SIGTERM of secondary-1.
/// Checked: secondary-1 answers the append 504 `"status": "unknown"` once its grace period ends
/// and exits 0 right after, instead of waiting for the master for as long as it is paused.
#[tokio::test]
async fn a_secondary_stopped_while_its_forward_waits_answers_unknown_and_exits() {
    let mut cluster = Cluster::start(
        vec![SecondaryOpts::new().env("SHUTDOWN_GRACE_SECONDS", "1")],
        &steady_health(&[]),
    )
    .await;
    cluster.master.stop();
    let appender = cluster.appender_on(&cluster.secondaries[0]);
    let waiting = tokio::spawn(async move { appender.append("forwarded", Some(2)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered with the master paused");

    sigterm(&cluster.secondaries[0]);
    let (status, body) = tokio::time::timeout(Duration::from_secs(1) + PROMPTLY, waiting)
        .await
        .expect("the forwarded append was answered after the grace period")
        .expect("the append task");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["status"], "unknown", "{body}");
    let status = wait_exit(&mut cluster.secondaries[0], PROMPTLY).await;
    assert_eq!(status.code(), Some(0), "secondary after SIGTERM: {status}");
    cluster.master.cont();
}

/// A gRPC client of `node`'s public API (served on its HTTP port).
async fn grpc_client(
    node: &Node,
) -> replog_proto::v1::log_client::LogClient<tonic::transport::Channel> {
    replog_proto::v1::log_client::LogClient::connect(node.url(""))
        .await
        .unwrap_or_else(|e| panic!("a gRPC connection to {}: {e}", node.name))
}

/// A gRPC append with write concern `w` and idempotency key `key`.
fn grpc_append(message: &str, w: u32, key: Option<&str>) -> replog_proto::v1::AppendRequest {
    replog_proto::v1::AppendRequest {
        message: message.to_owned(),
        w: Some(w),
        key: key.map(str::to_owned),
    }
}

/// [`a_forwarded_append_whose_master_dies_answers_unknown`] over gRPC.
/// Injected: secondary-2 paused, a w=3 gRPC `Append` through secondary-1 (forwarded to the
/// master), which secondary-1 already holds; then SIGKILL of the master.
/// Checked: secondary-1 answers gRPC `UNKNOWN` with a message (never `UNAVAILABLE`, which would
/// say nothing was appended); after the master's restart and secondary-2's return every node
/// shows the message exactly once.
#[tokio::test]
async fn a_grpc_append_forwarded_to_a_master_that_dies_answers_unknown() {
    let mut cluster = Cluster::start_with(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        durable_master("5"),
    )
    .await;
    cluster.secondaries[1].stop();
    let mut client = grpc_client(&cluster.secondaries[0]).await;
    let waiting = tokio::spawn(async move {
        client
            .append(grpc_append("grpc fate unknown", 3, None))
            .await
    });
    wait_pending(&cluster).await;
    wait_until(PROMPTLY, "secondary-1 holds the append", || async {
        cluster.held(&cluster.secondaries[0]).await >= 1
    })
    .await;
    cluster.master.kill();

    let answer = tokio::time::timeout(PROMPTLY, waiting)
        .await
        .expect("secondary-1 answered once the master was gone")
        .expect("the append task");
    let status = answer.expect_err("no reply can come from a killed master");
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    assert!(!status.message().is_empty(), "{status:?}");

    cluster.secondaries[1].cont();
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    assert_eq!(converged_count(&cluster, "grpc fate unknown").await, 1);
}

/// Injected: secondary-2 paused; a keyed w=3 gRPC `Append` through secondary-1 (grace 1 s),
/// forwarded to the master, which shows it pending while secondary-1 holds it; the master
/// paused (SIGSTOP), so its answer cannot come; SIGTERM of secondary-1. Then the master and
/// secondary-2 resume, secondary-1 starts again, and the same append (same key) is retried over
/// gRPC through secondary-2.
/// Checked: the first attempt is answered gRPC `UNKNOWN` (never `UNAVAILABLE`); the retry returns
/// the id the first attempt got, and every node shows the message exactly once, at that id (the
/// retry did not append it a second time).
#[tokio::test]
async fn a_keyed_grpc_retry_after_an_unknown_outcome_gets_the_first_id() {
    let mut cluster = Cluster::start_with(
        vec![
            SecondaryOpts::new().env("SHUTDOWN_GRACE_SECONDS", "1"),
            SecondaryOpts::new(),
        ],
        durable_master("5"),
    )
    .await;
    const MESSAGE: &str = "grpc keyed retry";
    const KEY: &str = "grpc-retry-1";
    cluster.secondaries[1].stop();
    let mut client = grpc_client(&cluster.secondaries[0]).await;
    let waiting =
        tokio::spawn(async move { client.append(grpc_append(MESSAGE, 3, Some(KEY))).await });
    wait_pending(&cluster).await;
    wait_until(PROMPTLY, "secondary-1 holds the append", || async {
        cluster.held(&cluster.secondaries[0]).await >= 1
    })
    .await;
    cluster.master.stop();
    sigterm(&cluster.secondaries[0]);

    let answer = tokio::time::timeout(Duration::from_secs(1) + PROMPTLY, waiting)
        .await
        .expect("secondary-1 answered once its grace period ended")
        .expect("the append task");
    let status = answer.expect_err("no reply can come from a paused master");
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    let exit = wait_exit(&mut cluster.secondaries[0], PROMPTLY).await;
    assert_eq!(exit.code(), Some(0), "secondary-1 after SIGTERM: {exit}");

    cluster.master.cont();
    cluster.secondaries[1].cont();
    cluster.secondaries[0].start();
    cluster.wait_ready().await;
    let mut retry_client = grpc_client(&cluster.secondaries[1]).await;
    let retry = tokio::time::timeout(
        Duration::from_secs(10),
        retry_client.append(grpc_append(MESSAGE, 3, Some(KEY))),
    )
    .await
    .expect("the retry was answered")
    .unwrap_or_else(|status| panic!("the keyed retry: {status:?}"))
    .into_inner();

    assert_eq!(converged_count(&cluster, MESSAGE).await, 1);
    let master_log = cluster.messages(&cluster.master).await;
    let shown = master_log
        .iter()
        .find(|(_, m)| m == MESSAGE)
        .map(|(id, _)| *id);
    assert_eq!(
        Some(retry.id),
        shown,
        "the retry's id against the master's log {master_log:?}"
    );
    assert_eq!(master_log.len(), 1, "{master_log:?}");
}
