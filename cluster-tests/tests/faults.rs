//! Nodes that die, hang and come back: a secondary killed under load and restarted empty is
//! caught up to exactly the master's log; a hung secondary turns Suspected, then Unhealthy,
//! and back to Healthy once it resumes; a slow secondary that answers its stream's keep-alive
//! pings stays Healthy while its acknowledgements are late; a replication stream to a hung
//! secondary is given up once its keep-alive ping goes unanswered; with both secondaries gone
//! the master is read-only until one returns.

use cluster_tests::{
    acknowledged, assert_no_repeats, fast_health, secondary_health, steady_health, wait_until,
    Cluster, Load, SecondaryOpts, StatusCode,
};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// "At once": well under a second, with room for a loaded 2-core machine.
const AT_ONCE: Duration = Duration::from_millis(500);

/// No abort, and short retries, so that a secondary that comes back is found again at once.
const RETRIES: &[(&str, &str)] = &[
    ("REPLICATION_TIMEOUT_SECONDS", "0"),
    ("RETRY_BASE_MS", "10"),
    ("RETRY_MAX_MS", "200"),
];

fn settings() -> Vec<(&'static str, &'static str)> {
    fast_health(RETRIES)
}

/// Injected: kill -9 of secondary-1 while 8 clients append with w=2, then a restart with an
/// empty log (memory mode), the load still running.
/// Checked: every append answers 200; the restarted secondary catches up while appends keep
/// being acknowledged; every list it shows meanwhile is a prefix of the final log (nothing out
/// of order or twice); in the end all three nodes list exactly the acknowledged appends, by id.
#[tokio::test]
async fn secondary_killed_under_load_and_restarted_empty_catches_up_exactly() {
    let mut cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &steady_health(RETRIES),
    )
    .await;
    let load = Load::start(&cluster.appender(), 8, "c", |_| Some(2));
    load.wait_answered(100, Duration::from_secs(10)).await;

    cluster.secondaries[0].kill();
    let killed_at = load.answered();
    load.wait_answered(killed_at + 100, Duration::from_secs(10))
        .await;

    cluster.secondaries[0].restart();
    let restarted_at = load.answered();
    let master_last = cluster.last_id(&cluster.master).await;
    let rejoined = &cluster.secondaries[0];
    // Caught up to where the master was at the restart, while the load goes on; every list it
    // shows on the way is kept to check against the final log.
    let snapshots = RefCell::new(Vec::new());
    wait_until(
        Duration::from_secs(15),
        format!("the restarted secondary holds id {master_last}"),
        || async {
            if let Some(list) = cluster.try_messages(rejoined).await {
                snapshots.borrow_mut().push(list);
            }
            cluster.try_health(rejoined).await.is_some_and(|h| {
                h["last_id"]
                    .as_u64()
                    .is_some_and(|held| held >= master_last)
            })
        },
    )
    .await;
    let snapshots = snapshots.into_inner();
    load.wait_answered(restarted_at + 100, Duration::from_secs(10))
        .await;
    let answers = load.stop(Duration::from_secs(10)).await;

    let expected = acknowledged(&answers);
    let ids: Vec<u64> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (1..=expected.len() as u64).collect::<Vec<_>>(),
        "ids handed out"
    );
    cluster.wait_ready().await;
    cluster
        .wait_converged(Duration::from_secs(15), &expected)
        .await;
    for (node, list) in cluster.all_messages().await {
        assert_no_repeats(&node, &list);
    }
    for snapshot in &snapshots {
        assert!(
            expected.starts_with(snapshot),
            "while catching up, the restarted secondary showed {} entries that are not a \
             prefix of the final log (first difference at {:?})",
            snapshot.len(),
            snapshot.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
    eprintln!(
        "acknowledged {} appends; killed after {killed_at}, restarted after {restarted_at}, \
         {} list snapshots of the rejoining secondary",
        expected.len(),
        snapshots.len()
    );
}

/// Injected: SIGSTOP of secondary-1 for longer than UNHEALTHY_AFTER_MS (1 s), then SIGCONT.
/// Checked: the master's health shows it `suspected`, then `unhealthy` (in that order, no other
/// state between); w=1 and w=2 appends answer 200 at once meanwhile; after SIGCONT it holds the
/// master's last id, lists exactly what the master lists, and is `healthy` again.
#[tokio::test]
async fn stopped_secondary_goes_suspected_then_unhealthy_and_recovers() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &settings(),
    )
    .await;
    let (status, body) = cluster.append("before", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let hung = &cluster.secondaries[0];
    hung.stop();
    let stopped = Instant::now();
    let seen: RefCell<Vec<(String, Duration)>> = RefCell::default();
    let appended = RefCell::new(vec!["before".to_owned()]);
    wait_until(Duration::from_secs(5), "secondary-1 unhealthy", || async {
        let status = cluster.status_of(hung).await;
        if seen.borrow().last().is_none_or(|(s, _)| *s != status) {
            seen.borrow_mut().push((status.clone(), stopped.elapsed()));
        }
        // Appends that do not need the hung secondary answer at once, whatever its state.
        let n = appended.borrow().len();
        let text = format!("while-{status}-{n}");
        let w = n as u64 % 2 + 1;
        let started = Instant::now();
        let (code, body) = cluster.append(&text, Some(w)).await;
        let took = started.elapsed();
        assert_eq!(
            code,
            StatusCode::OK,
            "{text} w={w} with secondary-1 {status}: {body}"
        );
        assert!(took < AT_ONCE, "{text} w={w} took {took:?}");
        appended.borrow_mut().push(text);
        status == "unhealthy"
    })
    .await;
    let (seen, appended) = (seen.into_inner(), appended.into_inner());
    let states: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        states == ["healthy", "suspected", "unhealthy"] || states == ["suspected", "unhealthy"],
        "states of secondary-1 after SIGSTOP, with time since: {seen:?}"
    );
    let (_, suspected_at) = seen[states.len() - 2];
    let (_, unhealthy_at) = seen[states.len() - 1];
    assert!(
        suspected_at >= Duration::from_millis(250) && unhealthy_at >= Duration::from_millis(950),
        "thresholds are 300 ms and 1000 ms of silence, states came at {seen:?}"
    );

    hung.cont();
    let master_last = cluster.last_id(&cluster.master).await;
    wait_until(
        Duration::from_secs(5),
        format!("secondary-1 healthy and holding id {master_last} after SIGCONT"),
        || async {
            cluster.status_of(hung).await == "healthy" && cluster.last_id(hung).await == master_last
        },
    )
    .await;
    let on_master = cluster.messages(&cluster.master).await;
    let texts: Vec<&str> = on_master.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        texts, appended,
        "the master lists every acknowledged append"
    );
    cluster
        .wait_converged(Duration::from_secs(3), &on_master)
        .await;
    eprintln!(
        "states after SIGSTOP: {seen:?}; {} appends while stopped",
        appended.len() - 1
    );
}

/// Injected: `DELAY_SECONDS=4` on secondary-2 (it acknowledges entries 4 s late, beyond the
/// master's SUSPECT_AFTER_MS of 1000 ms and UNHEALTHY_AFTER_MS of 3000 ms), then a w=3 append,
/// which waits for it.
/// Checked: the master's health shows secondary-2 `healthy` at every poll while the append
/// waits (its stream owes an answer, so only the HTTP/2 pings it answers show it alive: health
/// measures liveness, not load); the append answers 200, after the delay.
#[tokio::test]
async fn a_slow_secondary_that_answers_pings_stays_healthy_while_an_append_waits_for_it() {
    // Longer than UNHEALTHY_AFTER_MS: without the pings, the wait alone would make it
    // suspected, then unhealthy. The steady thresholds leave a loaded machine room to answer
    // each ping in time.
    const DELAY: Duration = Duration::from_secs(4);
    let cluster = Cluster::start(
        vec![
            SecondaryOpts::new(),
            SecondaryOpts::new().env("DELAY_SECONDS", "4"),
        ],
        &steady_health(RETRIES),
    )
    .await;
    let slow = cluster.secondaries[1].grpc_endpoint();
    let status_of_slow = || async {
        let health = cluster.health(&cluster.master).await;
        secondary_health(&health, &slow)
            .unwrap_or_else(|| panic!("secondary-2 is not in {health}"))
            .clone()
    };
    wait_until(Duration::from_secs(5), "secondary-2 healthy", || async {
        status_of_slow().await["status"] == "healthy"
    })
    .await;

    let started = Instant::now();
    let append = cluster.append("waits for the slow one", Some(3));
    let mut polls = 0;
    let mut not_healthy = Vec::new();
    let watch = async {
        loop {
            let entry = status_of_slow().await;
            polls += 1;
            if entry["status"] != "healthy" {
                not_healthy.push((started.elapsed(), entry));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (status, body) = tokio::select! {
        answer = append => answer,
        never = watch => never,
    };
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took >= DELAY,
        "answered after {took:?}, before secondary-2's delay"
    );
    assert!(
        polls >= 10,
        "the health was polled {polls} times in {took:?}"
    );
    assert!(
        not_healthy.is_empty(),
        "secondary-2 was not healthy at {} of {polls} polls while the append waited for it; \
         the first (time since the append, its entry): {:?}",
        not_healthy.len(),
        &not_healthy[..not_healthy.len().min(3)]
    );
}

/// Injected: kill -9 of both secondaries; later one restarted (empty, memory mode).
/// Checked: once the master counts them unhealthy, appends (any w) answer 503 with
/// "status":"error" and a detail naming the missing quorum, in under 500 ms, and the master's
/// last_id does not move; /api/health shows read_only true, quorum false; reads are served.
/// With one secondary back: quorum true, read_only false, a w=2 append answers 200 with the
/// next id, and the returned secondary lists exactly what the master lists.
#[tokio::test]
async fn both_secondaries_down_make_the_master_read_only_until_one_returns() {
    let mut cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &settings(),
    )
    .await;
    for text in ["one", "two", "three"] {
        let (status, body) = cluster.append(text, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let before = cluster.messages(&cluster.master).await;

    cluster.secondaries[0].kill();
    cluster.secondaries[1].kill();
    wait_until(
        Duration::from_secs(5),
        "the master reports no quorum",
        || async { cluster.health(&cluster.master).await["quorum"] == false },
    )
    .await;
    let health = cluster.health(&cluster.master).await;
    assert_eq!(health["read_only"], true, "{health}");
    assert_eq!(health["quorum"], false, "{health}");
    assert!(
        health["read_only_reason"]
            .as_str()
            .is_some_and(|r| r.contains("quorum")),
        "{health}"
    );
    for w in [None, Some(1), Some(2)] {
        let started = Instant::now();
        let (status, body) = cluster.append("refused", w).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "w={w:?}: {body}");
        assert_eq!(body["status"], "error", "{body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.to_lowercase().contains("no quorum")),
            "w={w:?}: {body}"
        );
        assert!(took < AT_ONCE, "the refusal (w={w:?}) took {took:?}");
    }
    let health = cluster.health(&cluster.master).await;
    assert_eq!(health["last_id"], 3, "refused appends took ids: {health}");
    assert_eq!(
        cluster.messages(&cluster.master).await,
        before,
        "reads while read-only"
    );

    cluster.secondaries[0].restart();
    cluster.wait_ready().await;
    wait_until(
        Duration::from_secs(5),
        "the master has quorum again",
        || async {
            let health = cluster.health(&cluster.master).await;
            health["quorum"] == true && health["read_only"] == false
        },
    )
    .await;
    let (status, body) = cluster.append("four", Some(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 4, "{body}");
    let mut expected = before.clone();
    expected.push((4, "four".to_owned()));
    cluster
        .wait_converged(Duration::from_secs(5), &expected)
        .await;
    assert_eq!(cluster.last_id(&cluster.secondaries[0]).await, 4);
}

/// Injected: SIGSTOP of secondary-1, then a w=2 append shipped to it, with
/// `RPC_TIMEOUT_SECONDS=60`; then SIGCONT.
/// Checked: the master gives up its replication stream to secondary-1 once the keep-alive ping
/// goes unanswered (the master's log names the ping within 5 s, not after the 60 s timeout);
/// after SIGCONT secondary-1 lists exactly what the master lists.
#[tokio::test]
async fn a_stream_to_a_stopped_secondary_is_given_up_when_its_ping_goes_unanswered() {
    let settings: Vec<_> = RETRIES
        .iter()
        .copied()
        .chain([("RPC_TIMEOUT_SECONDS", "60")])
        .collect();
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &fast_health(&settings),
    )
    .await;
    let (status, body) = cluster.append("before", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let hung = &cluster.secondaries[0];
    hung.stop();
    let (status, body) = cluster.append("while-stopped", Some(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until(
        Duration::from_secs(5),
        "the master's log says the stream's ping went unanswered",
        || async {
            cluster
                .master
                .log_since_start()
                .contains("no answer to a ping")
        },
    )
    .await;

    hung.cont();
    wait_until(
        Duration::from_secs(10),
        "secondary-1 lists what the master lists",
        || async {
            let master = cluster.messages(&cluster.master).await;
            master.len() == 2 && cluster.messages(hung).await == master
        },
    )
    .await;
}
