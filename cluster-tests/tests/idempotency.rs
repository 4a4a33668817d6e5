//! Idempotency keys: an append may carry a client-chosen `key`, and a retry with the same key
//! (through any node) gets the first attempt's answer instead of appending twice.

use cluster_tests::{
    steady_health, wait_until, Cluster, SecondaryOpts, StatusCode, PROMPTLY, REPLICATION_FAILED,
};
use std::time::Duration;

/// How many times `node`'s list shows `message`.
async fn shown(cluster: &Cluster, node: &cluster_tests::Node, message: &str) -> usize {
    cluster
        .messages(node)
        .await
        .iter()
        .filter(|(_, m)| m == message)
        .count()
}

/// Injected: an append with key `k-1`, then the same append again on the master and through
/// secondary-1, then the same key with another message, then another key.
/// Checked: every retry answers 200 with the first id and message; the other message under the
/// same key answers 409 naming the key and appends nothing; the other key gets the next id;
/// every node shows the message once.
#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_first_id() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &steady_health(&[]),
    )
    .await;
    let master = cluster.appender();
    let secondary = cluster.appender_on(&cluster.secondaries[0]);

    let (status, first) = master.append_keyed("once", 3, "k-1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let id = first["id"].as_u64().expect("an id");
    for (via, appender) in [("master", &master), ("secondary-1", &secondary)] {
        let (status, again) = appender.append_keyed("once", 3, "k-1").await;
        assert_eq!(status, StatusCode::OK, "retry via {via}: {again}");
        assert_eq!(again["id"], id, "retry via {via}: {again}");
        assert_eq!(again["message"], "once", "retry via {via}: {again}");
    }

    let (status, conflict) = secondary.append_keyed("another", 3, "k-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert!(
        conflict["detail"]
            .as_str()
            .is_some_and(|d| d.contains("k-1")),
        "{conflict}"
    );

    let (status, next) = master.append_keyed("twice", 3, "k-2").await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["id"], id + 1, "{next}");

    let expected = vec![(id, "once".to_owned()), (id + 1, "twice".to_owned())];
    cluster.wait_converged(PROMPTLY, &expected).await;
}

/// Injected: secondary-2 paused and no replication timeout; a w=3 append with key `slow` on the
/// master, and while it waits the same append through secondary-1; then secondary-2 resumed.
/// Checked: both answer 200 with the same id, and every node shows the message once.
#[tokio::test]
async fn a_retry_while_the_first_attempt_waits_gets_its_outcome() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &steady_health(&[("REPLICATION_TIMEOUT_SECONDS", "0")]),
    )
    .await;
    cluster.secondaries[1].stop();
    let master = cluster.appender();
    let secondary = cluster.appender_on(&cluster.secondaries[0]);
    let first = tokio::spawn(async move { master.append_keyed("slow", 3, "slow").await });
    wait_until(PROMPTLY, "the master shows the append pending", || async {
        cluster.health(&cluster.master).await["pending"].as_u64() == Some(1)
    })
    .await;
    let retry = tokio::spawn(async move { secondary.append_keyed("slow", 3, "slow").await });
    // The retry reaches the master and waits there (a second id would show as pending 2).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cluster.health(&cluster.master).await["pending"].as_u64(),
        Some(1),
        "the retry appended again"
    );
    assert!(
        !retry.is_finished(),
        "the retry was answered before the first attempt"
    );
    cluster.secondaries[1].cont();

    let (status, first) = tokio::time::timeout(PROMPTLY, first)
        .await
        .expect("the first attempt answered")
        .expect("its task");
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, retry) = tokio::time::timeout(PROMPTLY, retry)
        .await
        .expect("the retry answered")
        .expect("its task");
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry["id"], first["id"], "{retry} vs {first}");
    cluster
        .wait_converged(PROMPTLY, &[(1, "slow".to_owned())])
        .await;
}

/// Injected: secondary-2 paused, a 1 s replication timeout; a w=3 append with key `doomed`
/// (aborted), then the same append again on the master and through secondary-1.
/// Checked: every attempt answers 500 "Replication failed" (the first attempt's truth) at once,
/// without a new id; no node shows the message; a new key appends normally.
#[tokio::test]
async fn a_retry_after_an_abort_answers_500_again() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &steady_health(&[("REPLICATION_TIMEOUT_SECONDS", "1")]),
    )
    .await;
    cluster.secondaries[1].stop();
    let master = cluster.appender();
    let secondary = cluster.appender_on(&cluster.secondaries[0]);
    let (status, body) = master.append_keyed("doomed", 3, "doomed").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    for (via, appender) in [("master", &master), ("secondary-1", &secondary)] {
        let started = std::time::Instant::now();
        let (status, body) = appender.append_keyed("doomed", 3, "doomed").await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "via {via}: {body}"
        );
        assert_eq!(body["detail"], REPLICATION_FAILED, "via {via}: {body}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "via {via}: the retry waited {:?}, as a new append would",
            started.elapsed()
        );
    }
    assert_eq!(
        cluster.last_id(&cluster.master).await,
        1,
        "a retry took an id"
    );
    cluster.secondaries[1].cont();

    let (status, body) = master.append_keyed("fine", 3, "fresh").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 2, "{body}");
    for node in cluster.nodes() {
        assert_eq!(shown(&cluster, node, "doomed").await, 0, "{}", node.name);
    }
}
