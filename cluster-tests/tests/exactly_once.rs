//! Exactly once under injected failures: secondaries that store an entry and then answer an
//! error (`ERROR_RATE`) make the master send it again; no node may show it twice, lose it, or
//! order it differently.

use cluster_tests::{steady_health, wait_for, Cluster, SecondaryOpts, StatusCode};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// 300 appends with `w` cycling 1, 2, 3, at most `in_flight` at a time, against secondaries
/// that fail 30% of their replication calls after storing; then every node must show the same
/// 300 messages in the order of the ids the master answered. `every_node` settings go to all
/// three nodes.
async fn appends_with_errors_end_the_same_on_every_node(
    in_flight: usize,
    every_node: &[(&str, &str)],
) {
    use futures::StreamExt;
    const N: u64 = 300;
    let secondary = every_node.iter().fold(
        SecondaryOpts::new().env("ERROR_RATE", "0.3"),
        |opts, (k, v)| opts.env(k, v),
    );
    let mut master = vec![
        // No abort: every append must commit. Retries capped low to keep the test short.
        ("REPLICATION_TIMEOUT_SECONDS", "0"),
        ("RETRY_MAX_MS", "200"),
    ];
    master.extend_from_slice(every_node);
    let cluster = Cluster::start(vec![secondary.clone(), secondary], &steady_health(&master)).await;

    let appends = futures::stream::iter(0..N)
        .map(|i| {
            let appender = cluster.appender();
            async move {
                let text = format!("m{i:03}");
                let w = i % 3 + 1;
                let (status, body) = appender.append(&text, Some(w)).await;
                (text, w, status, body)
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>();
    let answers = tokio::time::timeout(Duration::from_secs(40), appends)
        .await
        .expect("all 300 appends answer within 40 s");

    let mut by_id: HashMap<u64, String> = HashMap::new();
    for (text, w, status, body) in &answers {
        assert_eq!(status, &StatusCode::OK, "{text} w={w}: {body}");
        let id = body["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no id: {body}"));
        assert!(
            by_id.insert(id, text.clone()).is_none(),
            "id {id} answered twice"
        );
    }
    let mut expected: Vec<(u64, String)> = by_id.into_iter().collect();
    expected.sort();
    let ids: Vec<u64> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "ids are 1..=300");

    let lists = wait_for(
        Duration::from_secs(30),
        "every node shows 300 messages",
        || async {
            let all = cluster.all_messages().await;
            all.iter()
                .all(|(_, list)| list.len() as u64 >= N)
                .then_some(all)
        },
    )
    .await;
    for (node, list) in &lists {
        let texts: HashSet<&str> = list.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(texts.len(), list.len(), "{node} shows a message twice");
        assert_eq!(
            list, &expected,
            "{node} differs from the ids the master answered"
        );
    }
}

/// One burst: a few large batches per secondary.
#[tokio::test]
async fn all_at_once_with_errors_end_the_same_on_every_node() {
    appends_with_errors_end_the_same_on_every_node(300, &[]).await;
}

/// Eight at a time: many small batches, so many injected errors and redeliveries.
#[tokio::test]
async fn eight_at_a_time_with_errors_end_the_same_on_every_node() {
    appends_with_errors_end_the_same_on_every_node(8, &[]).await;
}

/// The benchmark's setting, one thread per node (tokio's current-thread scheduler): the
/// replication sender, the HTTP/2 connections and the HTTP server share that thread.
#[tokio::test]
async fn single_threaded_nodes_end_the_same_on_every_node() {
    appends_with_errors_end_the_same_on_every_node(8, &[("WORKER_THREADS", "1")]).await;
}
