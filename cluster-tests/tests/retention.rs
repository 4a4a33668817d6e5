//! Retention with real processes and real segment files: `RETENTION_BYTES` removes whole old
//! segments, reads below the first retained id answer 410 naming it, a secondary that was down
//! while the master removed what it lacked is re-seeded from the master's first retained id
//! (and says so), and `RETENTION_SECONDS` removes segments by age.

use cluster_tests::{fast_health, try_list, wait_for, Cluster, MasterOpts, SecondaryOpts};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(30);

/// Tiny segments, nothing cached, at most about four segments kept.
const SMALL: &[(&str, &str)] = &[
    ("CACHE_BYTES", "0"),
    ("SEGMENT_BYTES", "4KiB"),
    ("RETENTION_BYTES", "16KiB"),
];

fn secondary(env: &[(&str, &str)]) -> SecondaryOpts {
    env.iter()
        .fold(SecondaryOpts::new().durable(), |opts, (k, v)| {
            opts.env(k, v)
        })
}

async fn first_id(cluster: &Cluster, node: &cluster_tests::Node) -> u64 {
    cluster.health(node).await["first_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: health names no first_id", node.name))
}

async fn append_all(cluster: &Cluster, range: std::ops::Range<usize>, w: u64) {
    for n in range {
        let text = format!("message {n} {}", "x".repeat(40 + n % 20));
        let (status, body) = cluster.append(&text, Some(w)).await;
        assert_eq!(status, 200, "append {n}: {body}");
    }
}

#[tokio::test]
async fn a_secondary_down_while_retention_removed_what_it_lacks_is_reseeded_from_the_first_retained_id(
) {
    let mut cluster = Cluster::start_with(
        vec![secondary(SMALL), secondary(SMALL)],
        MasterOpts::new().durable().envs(&fast_health(SMALL)),
    )
    .await;
    append_all(&cluster, 0..40, 3).await;
    let held_when_stopped = cluster.held(&cluster.secondaries[1]).await;
    assert_eq!(held_when_stopped, 40);
    cluster.secondaries[1].kill();
    // Far more than RETENTION_BYTES while secondary-2 is down: the master lets go of ids it
    // lacks once it counts it unhealthy.
    append_all(&cluster, 40..600, 2).await;
    let master = &cluster.master;
    let segments = master.data_dir().expect("durable").join("segments");
    let segment_files = || {
        std::fs::read_dir(&segments)
            .expect("segments")
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .count()
    };
    // Retention runs once a second and may remove one segment a run, so wait for it to
    // settle: ~16 KiB of 4 KiB segments, the start past secondary-2's, and the same start
    // before and after a full retention period. Nothing is appended after that, so the first
    // retained id no longer moves.
    let first = wait_for(
        CONVERGE,
        "the master's retention keeps ~16 KiB of 4 KiB segments, passes what secondary-2 holds \
         and stays put for a retention period",
        || async {
            if segment_files() > 6 {
                return None;
            }
            let first = first_id(&cluster, master).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let still = first_id(&cluster, master).await;
            (first == still && first > held_when_stopped + 1).then_some(first)
        },
    )
    .await;
    // Below the first retained id: 410, naming it; nothing changes.
    let (status, body) = cluster
        .get_json(&master.url("/api/messages?from_id=1&limit=10"))
        .await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["first_id"].as_u64(), Some(first), "{body}");
    let (status, body) = cluster.get_json(&master.url("/api/messages?limit=3")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["first_id"].as_u64(), Some(first), "{body}");
    assert_eq!(body["messages"][0]["id"].as_u64(), Some(first), "{body}");
    let metrics = cluster
        .client
        .get(master.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(&format!("replog_log_first_id {first}")),
        "{metrics}"
    );
    // Back, secondary-2 is re-seeded from the master's first retained id, never left with a gap.
    cluster.secondaries[1].start();
    let reseeded = wait_for(CONVERGE, "secondary-2 says it was re-seeded", || async {
        let health = cluster.try_health(&cluster.secondaries[1]).await?;
        health["reseeded_from"].as_u64()
    })
    .await;
    assert!(reseeded > held_when_stopped + 1, "re-seeded at {reseeded}");
    let expected = cluster.messages(master).await;
    wait_for(
        CONVERGE,
        "secondary-2 lists what the master lists",
        || async {
            let listed = try_list(&cluster.client, &cluster.secondaries[1].url("")).await?;
            (listed == expected).then_some(())
        },
    )
    .await;
    let (status, body) = cluster
        .get_json(
            &cluster.secondaries[1].url(&format!("/api/messages?from_id={held_when_stopped}")),
        )
        .await;
    assert_eq!(
        status, 410,
        "what it held before is gone with the rest: {body}"
    );
    // It takes part again: w=3 appends are acknowledged, and a restart keeps its log.
    append_all(&cluster, 600..610, 3).await;
    cluster.secondaries[1].restart();
    cluster.wait_ready().await;
    append_all(&cluster, 610..615, 3).await;
    let expected = cluster.messages(&cluster.master).await;
    for node in cluster.nodes() {
        let listed = wait_for(CONVERGE, format!("{} lists the log", node.name), || async {
            try_list(&cluster.client, &node.url("")).await
        })
        .await;
        let tail = |l: &[(u64, String)]| l.iter().rev().take(15).cloned().collect::<Vec<_>>();
        assert_eq!(tail(&listed), tail(&expected), "{}", node.name);
    }
}

#[tokio::test]
async fn segments_older_than_retention_seconds_are_removed_and_reads_below_answer_410() {
    const AGED: &[(&str, &str)] = &[
        ("CACHE_BYTES", "0"),
        ("SEGMENT_BYTES", "4KiB"),
        ("RETENTION_SECONDS", "1"),
    ];
    let cluster = Cluster::start_with(
        vec![secondary(AGED), secondary(AGED)],
        MasterOpts::new().durable().envs(AGED),
    )
    .await;
    append_all(&cluster, 0..200, 3).await;
    // The old segments age past a second; the next appends keep the active one young.
    for node in cluster.nodes() {
        let first = wait_for(
            CONVERGE,
            format!("{} removes aged segments", node.name),
            || async {
                append_all(&cluster, 0..1, 3).await;
                let first = cluster.try_health(node).await?["first_id"].as_u64()?;
                (first > 1).then_some(first)
            },
        )
        .await;
        let (status, body) = cluster.get_json(&node.url("/api/messages?from_id=1")).await;
        assert_eq!(status, 410, "{}: {body}", node.name);
        assert!(
            body["first_id"].as_u64().is_some_and(|f| f >= first),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_master_that_lost_its_disk_recovers_from_secondaries_whose_retention_removed_the_start() {
    let mut cluster = Cluster::start_with(
        vec![secondary(SMALL), secondary(SMALL)],
        MasterOpts::new().durable().envs(SMALL),
    )
    .await;
    append_all(&cluster, 0..600, 3).await;
    for node in cluster.secondaries.iter() {
        wait_for(
            CONVERGE,
            format!("{} removes old segments", node.name),
            || async {
                let first = cluster.try_health(node).await?["first_id"].as_u64()?;
                (first > 1).then_some(())
            },
        )
        .await;
    }
    let expected = cluster.messages(&cluster.master).await;
    // The master's disk is lost: it recovers the log from the secondaries, starting where
    // their retention left it, instead of waiting for ids nobody keeps.
    cluster.master.restart_empty();
    cluster.renew_client();
    cluster.wait_ready().await;
    let recovered = wait_for(CONVERGE, "the master lists the recovered log", || async {
        try_list(&cluster.client, &cluster.master.url("")).await
    })
    .await;
    let last = |l: &[(u64, String)]| l.last().cloned();
    assert_eq!(last(&recovered), last(&expected), "the same last entry");
    let first = first_id(&cluster, &cluster.master).await;
    assert!(
        first > 1,
        "the log starts where the secondaries' does: {first}"
    );
    // Each node's retention trims on its own clock, so either log may start first: from the
    // later start on, they are the same.
    let from = recovered.first().max(expected.first()).map(|(id, _)| *id);
    let from_start = |l: &[(u64, String)]| -> Vec<(u64, String)> {
        l.iter()
            .filter(|(id, _)| Some(*id) >= from)
            .cloned()
            .collect()
    };
    assert_eq!(
        from_start(&recovered),
        from_start(&expected),
        "from the later start on, it lists what it listed before"
    );
    append_all(&cluster, 600..605, 3).await;
    let expected = cluster.messages(&cluster.master).await;
    for node in cluster.nodes() {
        wait_for(
            CONVERGE,
            format!("{} lists the log's end", node.name),
            || async {
                let listed = try_list(&cluster.client, &node.url("")).await?;
                (listed.last() == expected.last()).then_some(())
            },
        )
        .await;
    }
}
