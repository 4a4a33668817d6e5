//! The processes themselves: a bad setting stops a node at start with one clear line on stderr,
//! SIGTERM shuts it down gracefully (exit 0, promptly), and every node runs without transparent
//! huge pages.

use cluster_tests::{
    free_ports, run_to_exit, steady_health, wait_until, Binary, Cluster, SecondaryOpts, StatusCode,
    FAST_HEALTH, PROMPTLY,
};
use std::time::Duration;

/// A node with a bad setting must be gone this fast.
const QUICKLY: Duration = Duration::from_secs(3);

/// The binary, the bad setting, other settings that would otherwise let it start.
type Case<'a> = (Binary, (&'a str, &'a str), Vec<(&'a str, &'a str)>);

#[test]
fn a_bad_setting_stops_the_node_with_one_line_naming_it() {
    cluster_tests::fresh_log_dir();
    let ports = free_ports(2);
    let (http, grpc) = (ports[0].to_string(), ports[1].to_string());
    let cases: Vec<Case> = vec![
        (Binary::Master, ("HTTP_PORT", "abc"), vec![]),
        (
            Binary::Master,
            ("SECONDARIES", "nohostport"),
            vec![("HTTP_PORT", &http)],
        ),
        (
            Binary::Master,
            ("SECONDARIES", "127.0.0.1:0"),
            vec![("HTTP_PORT", &http)],
        ),
        (
            Binary::Master,
            ("REPLICATION_TIMEOUT_SECONDS", "-1"),
            vec![("HTTP_PORT", &http)],
        ),
        (
            Binary::Master,
            ("HEARTBEAT_INTERVAL_MS", "0"),
            vec![("HTTP_PORT", &http)],
        ),
        (
            Binary::Master,
            ("CONNECTION_THREADS", "1"),
            vec![("HTTP_PORT", &http)],
        ),
        (
            Binary::Secondary,
            ("CONNECTION_THREADS", "65"),
            vec![
                ("HTTP_PORT", &http),
                ("GRPC_PORT", &grpc),
                ("WORKER_THREADS", "1"),
            ],
        ),
        (
            Binary::Secondary,
            ("HTTP_PORT", "abc"),
            vec![("GRPC_PORT", &grpc)],
        ),
        (
            Binary::Secondary,
            ("GRPC_PORT", "70000"),
            vec![("HTTP_PORT", &http)],
        ),
        (
            Binary::Secondary,
            ("ERROR_RATE", "2"),
            vec![("HTTP_PORT", &http), ("GRPC_PORT", &grpc)],
        ),
        (
            Binary::Secondary,
            ("DELAY_SECONDS", "soon"),
            vec![("HTTP_PORT", &http), ("GRPC_PORT", &grpc)],
        ),
    ];
    let mut failures = Vec::new();
    for (binary, (key, value), others) in cases {
        let mut env = vec![("HOST", "127.0.0.1")];
        env.extend(others);
        env.push((key, value));
        let output = run_to_exit(binary, &env, QUICKLY);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let ok = !output.status.success()
            && output.status.code().is_some()
            && lines.len() == 1
            && lines[0].contains(key);
        if !ok {
            failures.push(format!(
                "{binary:?} {key}={value}: {}, stderr {stderr:?} (want a non-zero exit and one \
                 line naming {key})",
                output.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn sigterm_stops_every_node_with_exit_0() {
    let mut cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &FAST_HEALTH,
    )
    .await;
    let (status, body) = cluster.append("before shutdown", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let status = cluster.secondaries[0].terminate(PROMPTLY);
    assert_eq!(
        status.code(),
        Some(0),
        "secondary-1 after SIGTERM: {status}"
    );
    let status = cluster.master.terminate(PROMPTLY);
    assert_eq!(status.code(), Some(0), "master after SIGTERM: {status}");
    let status = cluster.secondaries[1].terminate(PROMPTLY);
    assert_eq!(
        status.code(),
        Some(0),
        "secondary-2 after SIGTERM: {status}"
    );
}

#[tokio::test]
async fn sigterm_while_an_append_waits_answers_it_and_exits_0() {
    let mut cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &steady_health(&[
            ("REPLICATION_TIMEOUT_SECONDS", "0"),
            ("SHUTDOWN_GRACE_SECONDS", "1"),
        ]),
    )
    .await;
    // A hung secondary: the w=3 append waits for it without limit.
    cluster.secondaries[1].stop();
    let appender = cluster.appender();
    let waiting = tokio::spawn(async move { appender.append("in flight", Some(3)).await });
    wait_until(
        Duration::from_secs(2),
        "the master shows the append pending",
        || async {
            let health = cluster.health(&cluster.master).await;
            health["pending"].as_u64().is_some_and(|p| p >= 1)
        },
    )
    .await;

    let status = cluster.master.terminate(PROMPTLY);
    assert_eq!(status.code(), Some(0), "master after SIGTERM: {status}");
    let (status, body) = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("the waiting client got its answer once the master exited")
        .expect("the append task");
    // Taken but undecided when the grace period ended: it may still commit, so not a 503.
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "answer to the append in flight at shutdown: {body}"
    );
    assert_eq!(body["status"], "unknown", "{body}");

    cluster.secondaries[1].cont();
    let status = cluster.secondaries[1].terminate(PROMPTLY);
    assert_eq!(
        status.code(),
        Some(0),
        "secondary-2 after SIGCONT, SIGTERM: {status}"
    );
}

/// Checked: the kernel's view of every running node (`/proc/<pid>/status`) says transparent
/// huge pages are off for it (node/src/memory.rs says why), after it took appends.
#[tokio::test]
async fn every_node_runs_without_transparent_huge_pages() {
    let cluster = Cluster::start(vec![SecondaryOpts::new()], &FAST_HEALTH).await;
    let (status, body) = cluster.append("hello", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for node in [&cluster.master, &cluster.secondaries[0]] {
        let path = format!("/proc/{}/status", node.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let line = status
            .lines()
            .find(|line| line.starts_with("THP_enabled:"))
            .unwrap_or_else(|| panic!("no THP_enabled line in {path}"));
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{path}: {line}");
    }
}
