//! The quorum's log is the truth, not the master's disk: a master whose log may be incomplete (a
//! torn tail cut off, an empty data directory, an empty segment file, a log kept in memory) takes
//! no append before it has heard from every secondary, then recovers what they hold, so no
//! append acknowledged with `w >= 2` is lost and no id ever shows two messages.

use cluster_tests::StatusCode;
use cluster_tests::{steady_health, wait_for, wait_until, Cluster, MasterOpts, SecondaryOpts};
use std::time::{Duration, Instant};

fn settings() -> Vec<(&'static str, &'static str)> {
    steady_health(&[
        ("REPLICATION_TIMEOUT_SECONDS", "5"),
        ("RETRY_BASE_MS", "10"),
        ("RETRY_MAX_MS", "200"),
    ])
}

/// A master and two secondaries, all keeping their logs in `DATA_DIR`.
async fn durable_cluster() -> Cluster {
    Cluster::start_with(
        vec![
            SecondaryOpts::new().durable(),
            SecondaryOpts::new().durable(),
        ],
        MasterOpts::new().durable().envs(&settings()),
    )
    .await
}

/// Appends `texts` with `w` and returns the acknowledged `(id, text)` pairs.
async fn append_all(cluster: &Cluster, texts: &[&str], w: Option<u64>) -> Vec<(u64, String)> {
    let mut acked = Vec::new();
    for text in texts {
        let (status, body) = cluster.append(text, w).await;
        assert_eq!(status, StatusCode::OK, "{text}: {body}");
        acked.push((body["id"].as_u64().expect("an id"), (*text).to_owned()));
    }
    acked
}

/// Waits until the master reports read-only for a reason containing `needle`; returns it.
async fn wait_read_only(cluster: &Cluster, needle: &str) -> String {
    wait_for(
        Duration::from_secs(10),
        format!("the master is read-only because of {needle:?}"),
        || async {
            let health = cluster.try_health(&cluster.master).await?;
            let reason = health["read_only_reason"].as_str()?.to_owned();
            (health["read_only"] == true && reason.contains(needle)).then_some(reason)
        },
    )
    .await
}

/// Injected: a durable cluster; "a" w=3; secondary-2 paused (SIGSTOP); "b" w=2 (so only the
/// master and secondary-1 hold it); secondary-1 paused too and secondary-2 resumed; the master
/// killed, its DATA_DIR deleted, and started again.
/// Checked: the master stays read-only while secondary-1 (the only holder of "b") is silent, its
/// reason names secondary-1, an append meanwhile answers 503 and takes no id; once secondary-1
/// resumes, the master recovers both messages under their ids, with the old log's identity,
/// and the next append gets id 3 on every node.
#[tokio::test]
async fn a_master_that_lost_its_disk_waits_for_every_secondary_and_recovers_their_log() {
    let mut cluster = durable_cluster().await;
    let mut expected = append_all(&cluster, &["a"], Some(3)).await;
    let log_id = cluster.health(&cluster.master).await["log_id"].clone();
    cluster.secondaries[1].stop();
    expected.extend(append_all(&cluster, &["b"], Some(2)).await);
    cluster.secondaries[0].stop();
    cluster.secondaries[1].cont();

    cluster.master.kill();
    cluster.master.wipe_data();
    cluster.master.start();
    cluster.renew_client();
    let s1 = cluster.secondaries[0].grpc_endpoint();
    let reason = wait_read_only(&cluster, &s1).await;
    assert!(
        !reason.contains(&cluster.secondaries[1].grpc_endpoint()),
        "secondary-2 answered, yet the reason names it: {reason}"
    );
    let (status, body) = cluster.append("refused", Some(1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        cluster.list_status(&cluster.master).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "a recovering master does not list an empty log"
    );

    cluster.secondaries[0].cont();
    cluster.wait_ready().await;
    let health = cluster.health(&cluster.master).await;
    assert_eq!(health["log_id"], log_id, "the secondaries' log: {health}");
    assert_eq!(health["last_id"], 2, "{health}");
    expected.extend(append_all(&cluster, &["c"], Some(3)).await);
    assert_eq!(expected.last().map(|(id, _)| *id), Some(3));
    cluster
        .wait_converged(Duration::from_secs(10), &expected)
        .await;
}

/// Injected: a durable cluster with 6 messages (w=3); secondary-2 paused; 2 more with w=2; the
/// master killed and (a) its active segment file (`Node::log_file`, here the log's only one) cut
/// 3 bytes short (a torn last record), (b) in a second round that file emptied (zero length);
/// each time secondary-2 resumed and the master started.
/// Checked, each round: no append is taken while recovering; once serving, the master lists
/// every acknowledged message under its id, w=1 appends right after the restart get new ids
/// after them (never an id a secondary holds with another message), and every node converges.
#[tokio::test]
async fn a_cut_tail_or_an_empty_log_file_is_recovered_from_the_secondaries() {
    let mut cluster = durable_cluster().await;
    let mut expected = append_all(&cluster, &["1", "2", "3", "4", "5", "6"], Some(3)).await;
    for round in ["torn", "empty"] {
        cluster.secondaries[1].stop();
        let texts = [format!("{round}-a"), format!("{round}-b")];
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        expected.extend(append_all(&cluster, &texts, Some(2)).await);
        cluster.master.kill();
        let path = cluster.master.log_file();
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match round {
            "torn" => bytes.truncate(bytes.len() - 3),
            _ => bytes.clear(),
        }
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cluster.secondaries[1].cont();
        cluster.master.start();
        cluster.renew_client();
        cluster.wait_ready().await;
        assert_eq!(
            cluster.messages(&cluster.master).await,
            expected,
            "{round}: the master's list after recovery"
        );
        let after = format!("{round}-after");
        let acked = append_all(&cluster, &[&after], Some(1)).await;
        assert_eq!(
            acked[0].0,
            expected.len() as u64 + 1,
            "{round}: a new id after every recovered one"
        );
        expected.extend(acked);
        cluster
            .wait_converged(Duration::from_secs(10), &expected)
            .await;
    }
}

/// Injected: a master in memory with 3 messages on two durable secondaries; killed and started
/// again (empty), then killed again; then started with a secondary down.
/// Checked: it recovers the 3 messages from the secondaries under the same log identity and
/// continues at id 4; with a secondary down it stays read-only, naming it, and answers 503 at
/// once (it cannot know whether the missing secondary holds more).
#[tokio::test]
async fn a_master_in_memory_recovers_the_log_after_a_restart() {
    let mut cluster = Cluster::start(
        vec![
            SecondaryOpts::new().durable(),
            SecondaryOpts::new().durable(),
        ],
        &settings(),
    )
    .await;
    let mut expected = append_all(&cluster, &["x", "y", "z"], None).await;
    let log_id = cluster.health(&cluster.master).await["log_id"].clone();
    cluster.master.restart();
    cluster.renew_client();
    cluster.wait_ready().await;
    assert_eq!(cluster.health(&cluster.master).await["log_id"], log_id);
    expected.extend(append_all(&cluster, &["after"], None).await);
    assert_eq!(expected[3].0, 4);
    cluster
        .wait_converged(Duration::from_secs(10), &expected)
        .await;

    cluster.secondaries[1].kill();
    cluster.master.restart();
    cluster.renew_client();
    wait_read_only(&cluster, &cluster.secondaries[1].grpc_endpoint()).await;
    let started = Instant::now();
    let (status, body) = cluster.append("refused", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    cluster.secondaries[1].start();
    wait_until(
        Duration::from_secs(10),
        "the master serves once secondary-2 is back",
        || async { cluster.health(&cluster.master).await["read_only"] == false },
    )
    .await;
    assert_eq!(cluster.messages(&cluster.master).await, expected);
}

/// Injected: a durable cluster; "a" w=3; secondary-2 paused; "b" w=2 (held by the master and
/// secondary-1); the master killed and its active segment file (`Node::log_file`) torn (3 bytes
/// cut off "b"'s record);
/// secondary-1 paused, secondary-2 resumed; the master started, killed while it waits, and
/// started again.
/// Checked: the second start still knows its log was cut (the cut itself is on disk since the
/// first start) and waits for secondary-1 instead of serving with a majority that lacks "b";
/// once secondary-1 resumes, "b" is recovered at id 2 and every node converges.
#[tokio::test]
async fn a_master_killed_while_it_recovers_still_recovers_at_its_next_start() {
    let mut cluster = durable_cluster().await;
    let mut expected = append_all(&cluster, &["a"], Some(3)).await;
    cluster.secondaries[1].stop();
    expected.extend(append_all(&cluster, &["b"], Some(2)).await);
    cluster.master.kill();
    let path = cluster.master.log_file();
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cluster.secondaries[0].stop();
    cluster.secondaries[1].cont();

    let s1 = cluster.secondaries[0].grpc_endpoint();
    for start in ["first", "second"] {
        cluster.master.start();
        cluster.renew_client();
        let reason = wait_read_only(&cluster, &s1).await;
        eprintln!("{start} start: {reason}");
        let (status, body) = cluster.append("refused", Some(1)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{start}: {body}");
        cluster.master.kill();
    }
    cluster.master.start();
    cluster.secondaries[0].cont();
    cluster.renew_client();
    cluster.wait_ready().await;
    assert_eq!(cluster.messages(&cluster.master).await, expected);
    expected.extend(append_all(&cluster, &["c"], Some(3)).await);
    cluster
        .wait_converged(Duration::from_secs(10), &expected)
        .await;
}
