//! Connection threads (`CONNECTION_THREADS`, `node/src/api/connections.rs`): a master on one
//! thread hands client connections beyond its first 16 to a thread of their own. Appends on
//! either thread commit and replicate alike, the `replog_connections` gauge shows where the
//! connections are and falls as they close, and SIGTERM still stops the master with exit 0.

use cluster_tests::{fast_health, wait_until, Cluster, SecondaryOpts, StatusCode, PROMPTLY};
use serde_json::{json, Value};
use std::time::Duration;

/// More than the master's own thread keeps (16), so that some must go to the other.
const CLIENTS: usize = 24;

/// The open connections per thread, from the master's `/metrics`: (main, extra-1).
async fn open_connections(cluster: &Cluster) -> (i64, i64) {
    let text = cluster
        .client
        .get(cluster.master.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text");
    let gauge = |thread: &str| {
        let name = format!("replog_connections{{thread=\"{thread}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&name))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    };
    (gauge("main"), gauge("extra-1"))
}

#[tokio::test]
async fn connections_beyond_the_first_sixteen_are_served_by_the_connection_thread() {
    let mut cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &fast_health(&[("WORKER_THREADS", "1"), ("CONNECTION_THREADS", "1")]),
    )
    .await;
    // One client per connection: each keeps its one connection open between its appends.
    let clients: Vec<reqwest::Client> = (0..CLIENTS).map(|_| reqwest::Client::new()).collect();
    let url = cluster.master.url("/api/messages");
    let mut committed = Vec::new();
    for round in 0..2 {
        let answers = futures::future::join_all(clients.iter().enumerate().map(|(i, client)| {
            let request = client
                .post(&url)
                .json(&json!({ "message": format!("round {round} client {i}") }));
            async move {
                let answer = request.send().await.expect("POST /api/messages");
                let status = answer.status();
                (status, answer.json::<Value>().await.expect("a JSON answer"))
            }
        }))
        .await;
        for (status, body) in answers {
            assert_eq!(status, StatusCode::OK, "{body}");
            let id = body["id"].as_u64().expect("an id");
            let message = body["message"].as_str().expect("the message").to_owned();
            committed.push((id, message));
        }
    }

    let (main, extra) = open_connections(&cluster).await;
    assert!(
        main >= 16 && extra >= 1 && main + extra > CLIENTS as i64,
        "open connections: {main} on the master's thread, {extra} on the connection thread; \
         want the first 16 on the master's and some of the other {CLIENTS}+ on the other"
    );

    // Both rounds' appends, from both threads, on every node in the master's order.
    committed.sort();
    cluster
        .wait_converged(Duration::from_secs(10), &committed)
        .await;

    drop(clients);
    wait_until(
        Duration::from_secs(5),
        "the gauges count only the test harness's own connections",
        || async {
            let (main, extra) = open_connections(&cluster).await;
            main + extra < 8
        },
    )
    .await;

    // A connection on each thread, open and idle, while the master shuts down.
    let idle: Vec<reqwest::Client> = (0..CLIENTS).map(|_| reqwest::Client::new()).collect();
    for client in &idle {
        let answer = client.get(&url).send().await.expect("GET /api/messages");
        assert_eq!(answer.status(), StatusCode::OK);
        // Read to the end: a connection whose answer was left unread is closed, not kept.
        answer.bytes().await.expect("the list");
    }
    let (main, extra) = open_connections(&cluster).await;
    assert!(
        extra >= 1,
        "{main} / {extra} open connections before SIGTERM"
    );
    let status = cluster.master.terminate(PROMPTLY);
    assert_eq!(status.code(), Some(0), "master after SIGTERM: {status}");
}
