//! Log identity: a master restarted without its data must not hand out ids that the
//! secondaries already hold for other messages. It recovers their log instead (the quorum's log
//! is the truth); restarted later with a file older than what the cluster has served since, it
//! stays read-only and says why, and with an empty `DATA_DIR` it recovers again.

use cluster_tests::{steady_health, Cluster, MasterOpts, SecondaryOpts, StatusCode};
use std::time::{Duration, Instant};

/// "At once": well under a second, with room for a loaded 2-core machine.
const AT_ONCE: Duration = Duration::from_millis(500);

/// Injected: a durable master (and a durable and a memory secondary) holding 5 messages is
/// killed and started without its data; later killed and started with its old DATA_DIR; then
/// killed and started with that DATA_DIR deleted.
/// Checked: without its data it recovers the secondaries' log (same log_id, the 5 messages) and
/// the next append gets id 6; with its old file (which lacks id 6, given by the process in
/// between) it is read-only, says its log is older than the cluster's, answers 503 at once and
/// appends nothing, and every secondary keeps its list; with an empty DATA_DIR it recovers all
/// 6 and the next append gets id 7 everywhere.
#[tokio::test]
async fn a_master_restarted_without_its_data_recovers_and_one_with_an_old_file_refuses() {
    let mut cluster = Cluster::start_with(
        vec![SecondaryOpts::new().durable(), SecondaryOpts::new()],
        MasterOpts::new().durable().envs(&steady_health(&[
            ("REPLICATION_TIMEOUT_SECONDS", "5"),
            ("RETRY_MAX_MS", "200"),
        ])),
    )
    .await;
    let data_dir = cluster.master.env("DATA_DIR").expect("DATA_DIR").to_owned();
    let mut expected = Vec::new();
    for i in 1..=5u64 {
        let text = format!("old-{i}");
        let (status, body) = cluster.append(&text, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        expected.push((i, text));
    }
    cluster
        .wait_converged(Duration::from_secs(5), &expected)
        .await;
    let old_log_id = cluster.health(&cluster.master).await["log_id"].clone();

    // Without its data (in memory): it recovers the secondaries' log.
    cluster.master.kill();
    cluster.master.remove_env("DATA_DIR");
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    let health = cluster.health(&cluster.master).await;
    assert_eq!(health["log_id"], old_log_id, "{health}");
    assert_eq!(cluster.messages(&cluster.master).await, expected);
    let (status, body) = cluster.append("old-6", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 6, "{body}");
    expected.push((6, "old-6".to_owned()));
    cluster
        .wait_converged(Duration::from_secs(5), &expected)
        .await;

    // With its old file, which lacks id 6: read-only, nothing appended.
    cluster.master.kill();
    cluster.master.set_env("DATA_DIR", &data_dir);
    cluster.master.start();
    cluster.renew_client();
    let health = cluster_tests::wait_for(
        Duration::from_secs(10),
        "the master with an old file says its log is older than the cluster's",
        || async {
            let health = cluster.try_health(&cluster.master).await?;
            let older = health["read_only_reason"]
                .as_str()
                .is_some_and(|r| r.contains("older than the cluster"));
            (health["read_only"] == true && older).then_some(health)
        },
    )
    .await;
    assert_eq!(&health["log_id"], &old_log_id, "{health}");
    check_refusal(&cluster, "older than the cluster", &expected).await;

    // With an empty DATA_DIR: it recovers all 6.
    cluster.master.kill();
    cluster.master.wipe_data();
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    assert_eq!(cluster.messages(&cluster.master).await, expected);
    let (status, body) = cluster.append("new-7", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 7, "{body}");
    expected.push((7, "new-7".to_owned()));
    cluster
        .wait_converged(Duration::from_secs(5), &expected)
        .await;
    for node in cluster.nodes() {
        let health = cluster.health(node).await;
        assert_eq!(health["log_id"], old_log_id, "{}: {health}", node.name);
    }
}

/// Appends answer 503 at once with `needle` in the detail and change nothing: the master lists
/// nothing and every secondary still lists `expected`.
async fn check_refusal(cluster: &Cluster, needle: &str, expected: &[(u64, String)]) {
    for w in [None, Some(1)] {
        let started = Instant::now();
        let (status, body) = cluster.append("must not be appended", w).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "w={w:?}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(needle)),
            "w={w:?}: {body}"
        );
        assert!(took < AT_ONCE, "the refusal took {took:?}");
    }
    assert_eq!(
        cluster.list_status(&cluster.master).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "a master whose file is older than the cluster does not list it"
    );
    for secondary in &cluster.secondaries {
        assert_eq!(
            cluster.messages(secondary).await,
            expected,
            "{} list while the master refuses",
            secondary.name
        );
    }
}
