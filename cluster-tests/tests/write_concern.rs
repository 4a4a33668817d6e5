//! Write concern `w` and total order: a low `w` answers without waiting for anyone else, a high
//! one waits for its secondaries, and every node ends with the same sequence either way.

use cluster_tests::{steady_health, wait_for, wait_until, Cluster, SecondaryOpts, StatusCode};
use std::time::{Duration, Instant};

/// "At once": well under a second, with room for a loaded 2-core machine.
const AT_ONCE: Duration = Duration::from_millis(500);

#[tokio::test]
async fn low_w_answers_at_once_while_w3_waits_for_the_missing_secondary() {
    let mut cluster = Cluster::start_in_process(
        vec![SecondaryOpts::new(), SecondaryOpts::new().not_started()],
        &steady_health(&[("REPLICATION_TIMEOUT_SECONDS", "0")]),
    )
    .await;

    for (i, (text, w)) in [("Msg1", 1), ("Msg2", 2)].into_iter().enumerate() {
        let started = Instant::now();
        let (status, body) = cluster.append(text, Some(w)).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::OK, "{text} w={w}: {body}");
        assert_eq!(body["id"], i as u64 + 1, "{body}");
        assert!(took < AT_ONCE, "{text} w={w} took {took:?}");
    }

    let appender = cluster.appender();
    let msg3 = tokio::spawn(async move { appender.append("Msg3", Some(3)).await });
    wait_until(
        Duration::from_secs(2),
        "the master shows Msg3 pending (last_id 3, pending >= 1)",
        || async {
            let health = cluster.health(&cluster.master).await;
            health["last_id"] == 3 && health["pending"].as_u64().is_some_and(|p| p >= 1)
        },
    )
    .await;
    assert!(
        !msg3.is_finished(),
        "Msg3 (w=3) answered with a secondary down"
    );

    let started = Instant::now();
    let (status, body) = cluster.append("Msg4", Some(1)).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "Msg4 w=1: {body}");
    assert_eq!(body["id"], 4, "{body}");
    assert!(
        took < AT_ONCE,
        "Msg4 w=1 took {took:?} behind the waiting Msg3"
    );
    assert!(
        !msg3.is_finished(),
        "Msg3 (w=3) answered with a secondary down"
    );

    // Msg4 is committed but not visible: Msg3 before it is not decided yet.
    for (node, list) in cluster.all_messages().await {
        let texts: Vec<&str> = list.iter().map(|(_, m)| m.as_str()).collect();
        assert!(
            texts == ["Msg1", "Msg2"] || (node != "master" && texts.len() < 2),
            "{node} shows {texts:?} while Msg3 is still pending"
        );
    }

    cluster.secondaries[1].start();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), msg3)
        .await
        .expect("Msg3 answers within 10 s of the secondary starting")
        .expect("the Msg3 task");
    assert_eq!(status, StatusCode::OK, "Msg3 w=3: {body}");
    assert_eq!(body["id"], 3, "{body}");

    cluster
        .wait_all_show(Duration::from_secs(5), &["Msg1", "Msg2", "Msg3", "Msg4"])
        .await;
    for (node, list) in cluster.all_messages().await {
        let ids: Vec<u64> = list.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3, 4], "{node} ids");
    }
}

#[tokio::test]
async fn concurrent_clients_see_one_total_order() {
    const CLIENTS: usize = 3;
    const PER_CLIENT: usize = 20;
    let cluster = Cluster::start_in_process(
        vec![
            SecondaryOpts::new().env("DELAY_SECONDS", "0.2"),
            SecondaryOpts::new(),
        ],
        &steady_health(&[("REPLICATION_TIMEOUT_SECONDS", "0")]),
    )
    .await;

    // Each client appends its messages one after another; the clients run side by side.
    let clients = (0..CLIENTS).map(|c| {
        let appender = cluster.appender();
        async move {
            let mut ids = Vec::new();
            for i in 0..PER_CLIENT {
                let text = format!("c{c}-{i}");
                let (status, body) = appender.append(&text, Some(1)).await;
                assert_eq!(status, StatusCode::OK, "{text}: {body}");
                ids.push((body["id"].as_u64().expect("an id"), text));
            }
            ids
        }
    });
    // Meanwhile, watch every node: each snapshot must be a prefix of what it ends with.
    let stop = tokio::sync::watch::channel(false);
    let watcher = async {
        let mut snapshots = Vec::new();
        let mut done = stop.1.clone();
        while !*done.borrow_and_update() {
            snapshots.extend(cluster.all_messages().await);
            tokio::select! {
                _ = done.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        snapshots
    };
    let clients = async {
        let answered: Vec<Vec<(u64, String)>> = futures::future::join_all(clients).await;
        let _ = stop.0.send(true);
        answered
    };
    let (answered, snapshots) = tokio::join!(clients, watcher);

    for ids in &answered {
        assert!(
            ids.windows(2).all(|w| w[0].0 < w[1].0),
            "one client's sequential appends got ids out of order: {ids:?}"
        );
    }
    let total = CLIENTS * PER_CLIENT;
    let mut expected: Vec<(u64, String)> = answered.into_iter().flatten().collect();
    expected.sort();
    let ids: Vec<u64> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (1..=total as u64).collect::<Vec<_>>(),
        "ids handed out"
    );

    let lists = wait_for(
        Duration::from_secs(10),
        format!("every node shows {total} messages"),
        || async {
            let all = cluster.all_messages().await;
            all.iter()
                .all(|(_, list)| list.len() == total)
                .then_some(all)
        },
    )
    .await;
    for (node, list) in &lists {
        assert_eq!(
            list, &expected,
            "{node} differs from the ids the master answered"
        );
    }
    assert!(!snapshots.is_empty(), "the watcher saw nothing");
    for (node, snapshot) in &snapshots {
        assert!(
            expected.starts_with(snapshot),
            "{node} once showed {snapshot:?}, not a prefix of the final {expected:?}"
        );
    }
}
