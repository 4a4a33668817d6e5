//! A 500 is a promise that outlives the master's disk: the master answers it only once a
//! secondary has reported the abort decided (it holds the tombstone), because a master that
//! loses its disk recovers its log from the secondaries. An abort no secondary confirms in time
//! is answered 504 "unknown", and a retry with the same idempotency key learns the 500 later.

use cluster_tests::{
    steady_health, wait_for, wait_until, Cluster, MasterOpts, SecondaryOpts, StatusCode,
    REPLICATION_FAILED,
};
use serde_json::Value;
use std::time::Duration;
use tokio::task::JoinHandle;

fn settings(timeout: &'static str) -> Vec<(&'static str, &'static str)> {
    steady_health(&[
        ("REPLICATION_TIMEOUT_SECONDS", timeout),
        ("RETRY_BASE_MS", "10"),
        ("RETRY_MAX_MS", "200"),
    ])
}

async fn durable_cluster(timeout: &'static str) -> Cluster {
    Cluster::start_with(
        vec![
            SecondaryOpts::new().durable(),
            SecondaryOpts::new().durable(),
        ],
        MasterOpts::new().durable().envs(&settings(timeout)),
    )
    .await
}

/// Appends "before" with w=3 (id 1, on every node).
async fn append_before(cluster: &Cluster) -> (u64, String) {
    let (status, body) = cluster.append("before", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 1, "{body}");
    (1, "before".to_owned())
}

/// Secondary-2 paused; "raced" appended with w=3 and key `key` (id 2, so it cannot commit);
/// once secondary-1 holds it, secondary-1 paused too, well before the deadline. Returns the
/// append's answer to come.
async fn hold_on_secondary_1_only(cluster: &Cluster, key: &str) -> JoinHandle<(StatusCode, Value)> {
    cluster.secondaries[1].stop();
    let appender = cluster.appender();
    let key = key.to_owned();
    let answer = tokio::spawn(async move { appender.append_keyed("raced", 3, &key).await });
    wait_until(Duration::from_secs(5), "secondary-1 holds id 2", || async {
        cluster.held(&cluster.secondaries[0]).await >= 2
    })
    .await;
    cluster.secondaries[0].stop();
    answer
}

/// Waits until the master has decided id 2 (its tombstone is on the master's disk).
async fn wait_aborted_on_master(cluster: &Cluster) {
    wait_until(
        Duration::from_secs(10),
        "the master decided id 2",
        || async {
            cluster
                .try_health(&cluster.master)
                .await
                .is_some_and(|h| h["decided"].as_u64() >= Some(2))
        },
    )
    .await;
}

/// The master killed, its `DATA_DIR` deleted, every secondary resumed, the master started
/// again: it recovers its log from the secondaries.
async fn lose_the_masters_disk(cluster: &mut Cluster) {
    cluster.master.kill();
    cluster.master.wipe_data();
    for secondary in &cluster.secondaries {
        secondary.cont();
    }
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
}

/// Appends "after" with w=3 and waits until every node lists `expected` and then "after":
/// the lists after recovery, once converged.
async fn converge_after(cluster: &Cluster, mut expected: Vec<(u64, String)>) {
    let (status, body) = cluster.append("after", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 3, "{body}");
    expected.push((3, "after".to_owned()));
    cluster
        .wait_converged(Duration::from_secs(10), &expected)
        .await;
}

/// Injected: a durable cluster with REPLICATION_TIMEOUT_SECONDS=1; secondary-2 paused; an
/// append with w=3; then the master killed, its data deleted, secondary-2 resumed and the
/// master started again.
/// Checked: the append answers 500 (secondary-1 confirms the abort); after the recovery from
/// the secondaries, no node shows the aborted message, also after a new append converged.
#[tokio::test]
async fn a_500_confirmed_by_a_secondary_survives_the_loss_of_the_masters_disk() {
    let mut cluster = durable_cluster("1").await;
    let before = append_before(&cluster).await;
    cluster.secondaries[1].stop();
    let (status, body) = cluster.append("aborted", Some(3)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["detail"], REPLICATION_FAILED, "{body}");

    lose_the_masters_disk(&mut cluster).await;
    assert_eq!(
        cluster.messages(&cluster.master).await,
        vec![before.clone()]
    );
    converge_after(&cluster, vec![before]).await;
}

/// Injected: a durable cluster with REPLICATION_TIMEOUT_SECONDS=1; secondary-2 paused; an
/// append with w=3 and a key; once secondary-1 holds it, secondary-1 paused too (it holds the
/// entry but can confirm no abort); then the master killed, its data deleted, both secondaries
/// resumed and the master started again.
/// Checked: the append answers 504 `"status": "unknown"` with a detail naming the unconfirmed
/// abort and the key's retry (not 500: the master alone holds the tombstone, and a secondary
/// holds the entry); after the recovery every node shows the same list, with or without the
/// message (either is true to "unknown").
#[tokio::test]
async fn an_abort_no_secondary_confirms_is_answered_unknown() {
    let mut cluster = durable_cluster("1").await;
    let before = append_before(&cluster).await;
    let answer = hold_on_secondary_1_only(&cluster, "race-unknown").await;
    let (status, body) = answer.await.expect("the append task");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["status"], "unknown", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("no secondary has confirmed") && detail.contains("idempotency key"),
        "{body}"
    );

    lose_the_masters_disk(&mut cluster).await;
    let recovered = cluster.messages(&cluster.master).await;
    let raced = (2, "raced".to_owned());
    assert!(
        recovered == vec![before.clone()] || recovered == vec![before.clone(), raced.clone()],
        "after the recovery the master lists {recovered:?}"
    );
    converge_after(&cluster, recovered).await;
}

/// Injected: as in the test above, but secondary-1 resumed once the master has decided the
/// abort, before the bound for its confirmation; then the master killed, its data deleted,
/// secondary-2 resumed and the master started again.
/// Checked: while secondary-1 is paused the append has no answer, though the master holds the
/// tombstone; once secondary-1 resumes, it answers 500; after the recovery no node shows the
/// message, also after a new append converged.
#[tokio::test]
async fn an_abort_confirmed_before_the_bound_is_500_and_survives_the_masters_disk() {
    let mut cluster = durable_cluster("2").await;
    let before = append_before(&cluster).await;
    let mut answer = hold_on_secondary_1_only(&cluster, "race-confirmed").await;
    wait_aborted_on_master(&cluster).await;
    let early = tokio::time::timeout(Duration::from_millis(300), &mut answer).await;
    assert!(
        early.is_err(),
        "answered while no secondary could have confirmed the abort: {early:?}"
    );
    cluster.secondaries[0].cont();
    let (status, body) = answer.await.expect("the append task");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["detail"], REPLICATION_FAILED, "{body}");

    lose_the_masters_disk(&mut cluster).await;
    assert_eq!(
        cluster.messages(&cluster.master).await,
        vec![before.clone()]
    );
    converge_after(&cluster, vec![before]).await;
}

/// Injected: as in the unknown case (504), then secondary-1 resumed and the append retried
/// with the same key; then the master killed, its data deleted, secondary-2 resumed and the
/// master started again.
/// Checked: the retry learns the 500 once secondary-1 has confirmed the abort (until then it
/// may hear "unknown" again, never 200); after the recovery no node shows the message.
#[tokio::test]
async fn a_retry_with_the_key_learns_the_500_once_a_secondary_confirms() {
    let mut cluster = durable_cluster("1").await;
    let before = append_before(&cluster).await;
    let answer = hold_on_secondary_1_only(&cluster, "race-retry").await;
    let (status, body) = answer.await.expect("the append task");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    cluster.secondaries[0].cont();
    let appender = cluster.appender();
    let body = wait_for(
        Duration::from_secs(10),
        "a retry with the key answers 500",
        || async {
            let (status, body) = appender.append_keyed("raced", 3, "race-retry").await;
            assert!(
                status == StatusCode::INTERNAL_SERVER_ERROR
                    || status == StatusCode::GATEWAY_TIMEOUT,
                "{status}: {body}"
            );
            (status == StatusCode::INTERNAL_SERVER_ERROR).then_some(body)
        },
    )
    .await;
    assert_eq!(body["detail"], REPLICATION_FAILED, "{body}");

    lose_the_masters_disk(&mut cluster).await;
    assert_eq!(
        cluster.messages(&cluster.master).await,
        vec![before.clone()]
    );
    converge_after(&cluster, vec![before]).await;
}
