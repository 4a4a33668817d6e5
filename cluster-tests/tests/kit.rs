//! The kit itself: the cluster builder's options, on processes and in process, and the waits
//! under paused time.

use cluster_tests::{
    default_bin_dir, fresh_log_dir, in_process, try_wait_for, wait_until, Cluster, MasterOpts,
    SecondaryOpts, StartError, StatusCode, STEADY_HEALTH,
};
use std::path::Path;
use std::time::Duration;

const GRACE: Duration = Duration::from_secs(10);

/// `(id, text)` pairs, as [`Cluster::messages`] lists them.
fn listed(texts: &[&str]) -> Vec<(u64, String)> {
    (1..).zip(texts.iter().map(|t| (*t).to_owned())).collect()
}

/// Whether `dir` holds a segment file.
fn has_segments(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("segments"))
        .is_ok_and(|mut files| files.any(|f| f.is_ok_and(|f| f.path().extension().is_some())))
}

/// In-process nodes serve the same API as processes, through the same helpers: appends on the
/// master and through a secondary, lists, health, convergence. Their log lines go to the
/// test's in-process log, and the node has no process to signal.
#[tokio::test]
async fn in_process_nodes_answer_the_same_helpers_as_processes() {
    let cluster = Cluster::builder()
        .in_process()
        .secondaries(vec![SecondaryOpts::new(), SecondaryOpts::new()])
        .master(MasterOpts::new().envs(&STEADY_HEALTH))
        .start()
        .await;
    let (status, body) = cluster.append("one", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = cluster
        .appender_on(&cluster.secondaries[0])
        .append("two", Some(3))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    cluster
        .wait_converged(Duration::from_secs(5), &listed(&["one", "two"]))
        .await;
    assert_eq!(cluster.last_id(&cluster.master).await, 2);
    for secondary in &cluster.secondaries {
        assert_eq!(cluster.status_of(secondary).await, "healthy");
    }

    let log = cluster.dir.join(in_process::LOG_FILE);
    assert_eq!(cluster.master.log_path(), log);
    wait_until(
        Duration::from_secs(5),
        "the in-process log names the master's HTTP listener",
        || async { cluster.master.log().contains("HTTP API listening") },
    )
    .await;
    let signal = std::panic::catch_unwind(|| cluster.master.pid());
    assert!(signal.is_err(), "an in-process node has no pid");
}

/// An in-process node stops through its shutdown token (and then refuses connections, as a
/// process that does not run) and starts again on the same ports; a durable one keeps its log,
/// under the data root given, across the restart.
#[tokio::test]
async fn in_process_nodes_shut_down_and_start_again_on_their_ports() {
    let data = fresh_log_dir().join("data");
    let mut cluster = Cluster::builder()
        .in_process()
        .secondaries(vec![SecondaryOpts::new(), SecondaryOpts::new()])
        .master(MasterOpts::new().envs(&STEADY_HEALTH))
        .durable()
        .data_root(&data)
        .start()
        .await;
    let (status, body) = cluster.append("before", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let stopped = cluster.secondaries[1].shut_down(GRACE).await;
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    assert!(!cluster.secondaries[1].is_running());
    let refused = cluster
        .client
        .get(cluster.secondaries[1].url("/health"))
        .send()
        .await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_connect()),
        "a stopped node refuses connections: {refused:?}"
    );
    let (status, body) = cluster.append("while one is down", Some(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    cluster.secondaries[1].start();
    let stopped = cluster.master.shut_down(GRACE).await;
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    cluster.master.start();
    cluster.wait_ready().await;
    cluster
        .wait_converged(
            Duration::from_secs(10),
            &listed(&["before", "while one is down"]),
        )
        .await;
    for name in ["master", "secondary-1", "secondary-2"] {
        let dir = data.join(format!("{name}-data"));
        assert!(has_segments(&dir), "no segment file in {}", dir.display());
    }
}

/// An in-process node described but not started holds its ports without listening: it refuses
/// connections until it starts, as a process that does not run yet.
#[tokio::test]
async fn an_in_process_node_not_started_refuses_connections() {
    let mut cluster = Cluster::start_in_process(
        vec![SecondaryOpts::new(), SecondaryOpts::new().not_started()],
        &STEADY_HEALTH,
    )
    .await;
    let late = &cluster.secondaries[1];
    let refused = cluster.client.get(late.url("/health")).send().await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_connect()),
        "{refused:?}"
    );
    cluster.secondaries[1].start();
    cluster.wait_ready().await;
    let (status, body) = cluster.append("all three", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Processes from a given binary directory, logs in a given directory, settings for every
/// node, durable nodes under a given data root; a node shut down (SIGTERM) exits cleanly and
/// comes back with its log.
#[tokio::test]
async fn processes_take_the_bin_dir_log_dir_data_root_and_settings_given() {
    let dir = fresh_log_dir();
    let (logs, data) = (dir.join("logs"), dir.join("data"));
    let mut cluster = Cluster::builder()
        .bin_dir(&default_bin_dir())
        .log_dir(&logs)
        .data_root(&data)
        .durable()
        .env("MAX_MESSAGE_BYTES", "16")
        .secondaries(vec![SecondaryOpts::new()])
        .master(MasterOpts::new().envs(&STEADY_HEALTH))
        .start()
        .await;
    for node in cluster.nodes() {
        assert_eq!(node.env("MAX_MESSAGE_BYTES"), Some("16"), "{}", node.name);
        assert_eq!(node.env("FSYNC"), Some("always"), "{}", node.name);
        assert_eq!(node.log_path(), logs.join(format!("{}.log", node.name)));
    }
    let (status, body) = cluster.append("seventeen bytes!!", None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, body) = cluster.append("fits", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let stopped = cluster.master.shut_down(GRACE).await;
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    cluster
        .wait_converged(Duration::from_secs(10), &listed(&["fits"]))
        .await;
    assert!(has_segments(&data.join("master-data")));
    assert!(has_segments(&data.join("secondary-1-data")));
}

/// A missing binary and settings a node refuses are errors of `try_start`, named, not hangs.
#[tokio::test]
async fn what_cannot_start_is_an_error() {
    let empty = fresh_log_dir().join("no-binaries");
    std::fs::create_dir_all(&empty).expect("a directory");
    let missing = Cluster::builder()
        .bin_dir(&empty)
        .secondaries(vec![SecondaryOpts::new()])
        .try_start()
        .await;
    assert!(
        matches!(&missing, Err(StartError::Missing(path)) if path.starts_with(&empty)),
        "{:?}",
        missing.err()
    );

    let refused = Cluster::builder()
        .in_process()
        .master(
            MasterOpts::new().envs(&[("SUSPECT_AFTER_MS", "5000"), ("UNHEALTHY_AFTER_MS", "1000")]),
        )
        .try_start()
        .await;
    match refused {
        Err(StartError::Settings { node, reason }) => {
            assert_eq!(node, "master");
            assert!(reason.contains("SUSPECT_AFTER_MS"), "{reason}");
        }
        other => panic!("{:?}", other.err()),
    }
}

/// The kit's waits follow tokio's clock: under paused time a wait of a minute that never
/// succeeds fails at once in real time, and one that succeeds does so at the virtual moment
/// its condition holds.
#[tokio::test(start_paused = true)]
async fn waits_take_no_real_time_under_paused_time() {
    let real = std::time::Instant::now();
    let started = tokio::time::Instant::now();
    let never = try_wait_for(Duration::from_secs(60), "never", || async {
        Ok::<Option<()>, String>(None)
    })
    .await;
    assert!(never.is_err());
    assert!(started.elapsed() >= Duration::from_secs(60));

    let at = tokio::time::Instant::now() + Duration::from_secs(30);
    wait_until(
        Duration::from_secs(60),
        "30 virtual seconds",
        || async move { tokio::time::Instant::now() >= at },
    )
    .await;
    assert!(tokio::time::Instant::now() < at + Duration::from_secs(1));
    assert!(
        real.elapsed() < Duration::from_secs(10),
        "90 virtual seconds took {:?}",
        real.elapsed()
    );
}
