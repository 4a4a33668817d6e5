//! `MAX_CONNECTIONS` against the process's open-file limit (`node/src/api/connections.rs`,
//! `check_open_files`): a node whose `MAX_CONNECTIONS` needs more open files than the hard limit
//! allows stops at start with one line naming `MAX_CONNECTIONS`, instead of failing `accept` for
//! every client once the limit is reached; one within the hard limit raises its soft limit and
//! serves more connections than the soft limit it was started with.
//!
//! The limits are set with util-linux's `prlimit`, which runs the node with them.

use cluster_tests::{
    free_ports, on_free_ports, run_command_to_exit, Binary, Process, StatusCode, PROMPTLY,
    START_TIMEOUT,
};
use std::process::Command;

/// The soft and the hard open-file limit the nodes start with.
const SOFT: u64 = 256;
const HARD: u64 = 4096;

/// What `check_open_files` adds to `MAX_CONNECTIONS` for the node's other files.
const OTHER_OPEN_FILES: u64 = 64;

/// `binary` under `prlimit --nofile=soft:hard`, with only `env` set.
fn limited(binary: Binary, soft: u64, hard: u64, env: &[(String, String)]) -> Command {
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(binary.path())
        .env_clear()
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// Settings that let `binary` start on its own on fresh loopback ports (a secondary's master
/// need not run), plus `MAX_CONNECTIONS`.
fn settings(binary: Binary, max_connections: u64) -> Vec<(String, String)> {
    let ports = free_ports(3);
    let mut env = vec![
        ("HOST", "127.0.0.1".to_owned()),
        ("HTTP_PORT", ports[0].to_string()),
        ("MAX_CONNECTIONS", max_connections.to_string()),
    ];
    if binary == Binary::Secondary {
        env.push(("GRPC_PORT", ports[1].to_string()));
        env.push(("MASTER", format!("127.0.0.1:{}", ports[2])));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The soft open-file limit of a running process, from `/proc/<pid>/limits`.
fn soft_open_files(process: &Process) -> u64 {
    let path = format!("/proc/{}/limits", process.pid());
    let limits = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .unwrap_or_else(|| panic!("no soft open-file limit in {path}:\n{limits}"))
}

/// Injected: a master and a secondary each started with the open-file limit at 4096 (soft 256)
/// and `MAX_CONNECTIONS=100000`.
/// Checked: each exits at start with a non-zero code, and its standard error is one line that
/// names `MAX_CONNECTIONS` and the limit.
#[test]
fn max_connections_beyond_the_hard_open_file_limit_stops_the_node_with_one_line() {
    cluster_tests::fresh_log_dir();
    for binary in [Binary::Master, Binary::Secondary] {
        let name = format!("{binary:?}").to_lowercase();
        let command = limited(binary, SOFT, HARD, &settings(binary, 100_000));
        let output = run_command_to_exit(
            &name,
            &format!("{name} through prlimit (util-linux)"),
            command,
            PROMPTLY,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            !output.status.success() && output.status.code().is_some(),
            "{name} with MAX_CONNECTIONS beyond the hard limit: {}; stderr {stderr:?}",
            output.status
        );
        assert!(
            lines.len() == 1
                && lines[0].contains("MAX_CONNECTIONS")
                && lines[0].contains(&HARD.to_string()),
            "{name}: want one line naming MAX_CONNECTIONS and the limit {HARD}, got {stderr:?}"
        );
    }
}

/// Injected: a master started with the open-file limit at 4096, soft 256, and
/// `MAX_CONNECTIONS=1000`; then 300 idle client connections, more than the soft limit it was
/// started with leaves room for.
/// Checked: it starts and serves; its soft limit is raised to what `MAX_CONNECTIONS` needs; with
/// the 300 connections open, a new one still gets `GET /health` answered 200.
#[tokio::test]
async fn max_connections_within_the_hard_limit_raises_the_soft_limit() {
    let dir = cluster_tests::fresh_log_dir();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let max_connections = 1000;
    let (process, port) = on_free_ports(|| {
        let env = settings(Binary::Master, max_connections);
        let port = env
            .iter()
            .find(|(k, _)| k == "HTTP_PORT")
            .map(|(_, v)| v.clone())
            .expect("HTTP_PORT");
        let command = limited(Binary::Master, SOFT, HARD, &env);
        let client = &client;
        let dir = &dir;
        async move {
            let mut process = Process::spawn("master", command, &dir.join("master.log"))
                .expect("start the master through prlimit (util-linux)");
            let url = format!("http://127.0.0.1:{port}/health");
            process.wait_answering(client, &url, START_TIMEOUT).await?;
            Ok((process, port))
        }
    })
    .await;

    let soft = soft_open_files(&process);
    assert!(
        soft >= max_connections + OTHER_OPEN_FILES && soft <= HARD,
        "soft open-file limit {soft}: want at least {} and at most {HARD}",
        max_connections + OTHER_OPEN_FILES
    );

    let address = format!("127.0.0.1:{port}");
    let mut idle = Vec::new();
    for i in 0..300 {
        let connection = tokio::net::TcpStream::connect(&address)
            .await
            .unwrap_or_else(|e| panic!("connection {i} to the master: {e}"));
        idle.push(connection);
    }
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let url = format!("http://{address}/health");
    let answer = tokio::time::timeout(PROMPTLY, fresh.get(&url).send())
        .await
        .unwrap_or_else(|_| panic!("GET {url} unanswered with {} connections open", idle.len()))
        .unwrap_or_else(|e| panic!("GET {url} with {} connections open: {e}", idle.len()));
    assert_eq!(answer.status(), StatusCode::OK);
    drop(idle);
    drop(process);
}
