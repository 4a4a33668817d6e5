//! Log identity: a master restarted without its data must not hand out ids that the
//! secondaries already hold for other messages. It recovers their log instead (the quorum's log
//! is the truth); restarted later with a file older than what the cluster has served since, it
//! sets that file aside and recovers the log again.

use cluster_tests::{steady_health, Cluster, MasterOpts, SecondaryOpts, StatusCode};
use std::time::Duration;

/// Injected: a durable master (and a durable and a memory secondary) holding 5 messages is
/// killed and started without its data; later killed and started with its old DATA_DIR.
/// Checked: without its data it recovers the secondaries' log (same log_id, the 5 messages) and
/// the next append gets id 6; with its old file (which lacks id 6, given by the process in
/// between) it says its log is older than the cluster's, moves the old segments aside (kept in
/// `DATA_DIR/segments.older-*`), recovers all 6 and the next append gets id 7 everywhere.
#[tokio::test]
async fn a_master_restarted_without_its_data_recovers_and_one_with_an_old_file_sets_it_aside_and_recovers(
) {
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

    // With its old file, which lacks id 6 (another master process served since it was
    // written): it sets the file aside, kept for the operator, and recovers all 6 from the
    // secondaries, as one that lost its disk.
    cluster.master.kill();
    cluster.master.set_env("DATA_DIR", &data_dir);
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    assert_eq!(cluster.messages(&cluster.master).await, expected);
    let aside: Vec<String> = std::fs::read_dir(&data_dir)
        .expect("DATA_DIR")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("segments.older-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old segments are kept aside: {aside:?}");
    assert!(
        cluster
            .master
            .log_since_start()
            .contains("older than the cluster"),
        "the master says why"
    );
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
