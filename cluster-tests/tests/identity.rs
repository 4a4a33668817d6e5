//! Log identity: a master restarted without its data must not hand out ids that the
//! secondaries already hold for other messages. It stays read-only and says why, the
//! secondaries keep their log, and both documented recoveries work: restart the master with its
//! data, or wipe the secondaries so that they adopt the new log.

use cluster_tests::{steady_health, wait_until, Cluster, MasterOpts, SecondaryOpts, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};

/// "At once": well under a second, with room for a loaded 2-core machine.
const AT_ONCE: Duration = Duration::from_millis(500);

/// Restarts the master without `DATA_DIR` (an empty log with a new identity) and checks the
/// refusal: read-only with a reason naming the foreign log, appends answered 503 at once with
/// that reason, nothing appended, the secondaries' logs and identities unchanged.
async fn restart_master_empty_and_check_refusal(
    cluster: &mut Cluster,
    data_dir: &str,
    old_log_id: &Value,
    old_list: &[(u64, String)],
) {
    cluster.master.kill();
    cluster.master.remove_env("DATA_DIR");
    cluster.master.start();
    cluster.renew_client();
    let health = cluster_tests::wait_for(
        Duration::from_secs(5),
        "the restarted empty master reports a secondary holding another log",
        || async {
            let health = cluster.try_health(&cluster.master).await?;
            let holds = health["read_only_reason"]
                .as_str()
                .is_some_and(|r| r.contains("holds log"));
            (health["read_only"] == true && holds).then_some(health)
        },
    )
    .await;
    assert_ne!(
        &health["log_id"], old_log_id,
        "a new log has a new identity: {health}"
    );
    assert_eq!(health["last_id"], 0, "{health}");
    for w in [None, Some(1)] {
        let started = Instant::now();
        let (status, body) = cluster.append("must not be appended", w).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "w={w:?}: {body}");
        assert_eq!(body["status"], "error", "{body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("holds log")),
            "w={w:?}: the detail should say a secondary holds another log: {body}"
        );
        assert!(took < AT_ONCE, "the refusal took {took:?}");
    }
    let health = cluster.health(&cluster.master).await;
    assert_eq!(health["last_id"], 0, "refused appends took ids: {health}");
    assert!(cluster.messages(&cluster.master).await.is_empty());
    for secondary in &cluster.secondaries {
        assert_eq!(
            cluster.messages(secondary).await,
            old_list,
            "{} list while the empty master runs",
            secondary.name
        );
        let health = cluster.health(secondary).await;
        assert_eq!(
            &health["log_id"], old_log_id,
            "{}: {health}",
            secondary.name
        );
        assert_eq!(
            health["last_id"],
            old_list.len(),
            "{}: {health}",
            secondary.name
        );
    }
    // Put DATA_DIR back for the next start (the first recovery uses it).
    cluster.master.set_env("DATA_DIR", data_dir);
}

/// Injected: a durable master (and a durable and a memory secondary) holding 5 messages is
/// killed and started without its data, twice.
/// Checked: each time the refusal above. Recovery 1: the master restarted with its DATA_DIR
/// leaves read-only mode and the next append gets id 6 in the old log. Recovery 2: with the
/// master empty again, both secondaries wiped (DATA_DIR deleted / memory restart) adopt the
/// master's new log: the next append gets id 1 and every node lists only it, with the new
/// log_id.
#[tokio::test]
async fn master_restarted_empty_refuses_until_restarted_with_its_data_or_secondaries_wiped() {
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

    restart_master_empty_and_check_refusal(&mut cluster, &data_dir, &old_log_id, &expected).await;

    // Recovery 1: the master with its data.
    cluster.master.restart();
    cluster.renew_client();
    cluster.wait_ready().await;
    wait_until(
        Duration::from_secs(5),
        "the master with its data leaves read-only mode",
        || async { cluster.health(&cluster.master).await["read_only"] == false },
    )
    .await;
    let health = cluster.health(&cluster.master).await;
    assert_eq!(health["log_id"], old_log_id, "{health}");
    let (status, body) = cluster.append("old-6", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 6, "{body}");
    expected.push((6, "old-6".to_owned()));
    cluster
        .wait_converged(Duration::from_secs(5), &expected)
        .await;

    restart_master_empty_and_check_refusal(&mut cluster, &data_dir, &old_log_id, &expected).await;

    // Recovery 2: wipe the secondaries; they adopt the empty master's log.
    let new_log_id = cluster.health(&cluster.master).await["log_id"].clone();
    for secondary in &mut cluster.secondaries {
        secondary.restart_empty();
    }
    cluster.wait_ready().await;
    wait_until(
        Duration::from_secs(5),
        "the master leaves read-only mode once the secondaries are wiped",
        || async { cluster.health(&cluster.master).await["read_only"] == false },
    )
    .await;
    let (status, body) = cluster.append("new-1", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 1, "{body}");
    cluster
        .wait_converged(Duration::from_secs(5), &[(1, "new-1".to_owned())])
        .await;
    for node in cluster.nodes() {
        let health = cluster.health(node).await;
        assert_eq!(health["log_id"], new_log_id, "{}: {health}", node.name);
    }
}
