//! Failover through etcd: three `replog` nodes and a real etcd. The master is lost (SIGKILL,
//! SIGSTOP longer than its lease, etcd gone) and another node takes over; nothing acknowledged
//! with `w >= 2` is lost, no id shows two messages, a deposed master rejoins as a secondary.

use cluster_tests::failover::{FailoverCluster, TEST_TTL_MS};
use cluster_tests::history::{Append, Outcome};
use cluster_tests::wait_for;
use cluster_tests::workload::{Target, Workload};
use std::time::{Duration, Instant};

/// How long a takeover may take: the lease, the election and recovery, on a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(15);
const CONVERGE: Duration = Duration::from_secs(30);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn ttl() -> Duration {
    Duration::from_millis(TEST_TTL_MS)
}

fn targets(cluster: &FailoverCluster) -> Vec<Target> {
    (0..cluster.nodes.len())
        .map(|i| Target {
            name: cluster.nodes[i].name.clone(),
            appender: cluster.appender_on(i),
            list_url: cluster.nodes[i].url("/api/messages"),
        })
        .collect()
}

/// Stops the workload's clients, waits until every node lists the same log and checks the
/// history against it; returns the log.
async fn converged_history_holds(
    cluster: &FailoverCluster,
    mut workload: Workload,
) -> Vec<(u64, String)> {
    let appends = workload.stop_clients(ANSWER_TIMEOUT * 2).await;
    let list = cluster.wait_converged(CONVERGE).await;
    let finals: Vec<_> = cluster
        .nodes
        .iter()
        .map(|node| (node.name.clone(), Some(list.clone())))
        .collect();
    let (violations, count, _) = workload.check(appends, &finals).await;
    eprintln!("answers: {count:?}");
    assert!(violations.is_empty(), "{violations:#?}");
    list
}

/// Appends `count` messages with `w=2` through node `via`, each answered 200; returns them.
/// With a workload, each is recorded in its history (as client 1000).
async fn append_ok(
    cluster: &FailoverCluster,
    workload: Option<&Workload>,
    via: usize,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let appender = cluster.appender_on(via);
    let mut sent = Vec::new();
    for n in 0..count {
        let message = format!("{prefix}-{n}");
        let at = workload.map(|w| w.start.elapsed());
        let (status, body) = appender.append(&message, Some(2)).await;
        assert_eq!(
            status, 200,
            "{message} through {}: {body}",
            cluster.nodes[via].name
        );
        if let (Some(workload), Some(at)) = (workload, at) {
            workload
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record_append(Append {
                    client: 1000,
                    node: cluster.nodes[via].name.clone(),
                    message: message.clone(),
                    w: 2,
                    sent: at,
                    answered: workload.start.elapsed(),
                    outcome: Outcome::Committed(body["id"].as_u64().expect("an id")),
                });
        }
        sent.push(message);
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_forwards_to_the_master_and_names_it() {
    let cluster = FailoverCluster::start(3, &[]).await;
    let (master, term) = cluster.wait_master(TAKEOVER, None).await;
    assert!(term >= 1);
    let mut sent = Vec::new();
    for via in 0..3 {
        sent.extend(append_ok(&cluster, None, via, &format!("via-{via}"), 3).await);
    }
    let list = cluster.wait_converged(CONVERGE).await;
    let shown: Vec<&str> = list.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(shown, sent);
    let health = cluster.health(master).await.expect("the master's health");
    assert_eq!(health["leadership"]["node"], cluster.nodes[master].name);
    assert!(health["leadership"]["since_unix_ms"]
        .as_u64()
        .is_some_and(|t| t > 0));
    // The first master names the new log, and every node holds it under that name.
    let log_id = health["log_id"].as_str().unwrap_or_default().to_owned();
    assert!(!log_id.is_empty(), "the log has an identity: {health}");
    for i in 0..3 {
        let health = cluster.health(i).await.expect("health");
        assert_eq!(
            health["log_id"],
            log_id.as_str(),
            "{}",
            cluster.nodes[i].name
        );
    }
}

/// The master is killed, another takes over with a higher term, the old one comes back as a
/// secondary and catches up; under load, with the history checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_and_rejoins_as_a_secondary() {
    let mut cluster = FailoverCluster::start(3, &[]).await;
    let targets = targets(&cluster);
    let workload = Workload::start(&targets, 4, 7, 2..=3, ANSWER_TIMEOUT);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (old, term) = cluster.wait_master(TAKEOVER, None).await;
    cluster.nodes[old].kill();
    let killed = Instant::now();
    let (new, new_term) = cluster.wait_master(TAKEOVER, Some(old)).await;
    eprintln!(
        "takeover by {} in {:?}",
        cluster.nodes[new].name,
        killed.elapsed()
    );
    assert_ne!(new, old);
    assert!(new_term > term, "term {new_term} after {term}");
    let after = append_ok(&cluster, Some(&workload), new, "after-kill", 3).await;

    cluster.nodes[old].start();
    let (still, _) = cluster.wait_master(TAKEOVER, None).await;
    assert_eq!(
        still, new,
        "the returning node does not take the mastership back"
    );
    let seen = cluster.seen_by(old).await.expect("the old master answers");
    assert_eq!(seen.role, "secondary");

    let list = converged_history_holds(&cluster, workload).await;
    for message in &after {
        assert!(list.iter().any(|(_, m)| m == message), "{message} is shown");
    }
}

/// A master paused for longer than its lease is replaced; when it wakes it commits nothing
/// (its lease lapsed), answers nothing 200, and rejoins as a secondary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_paused_past_its_lease_commits_nothing_when_it_wakes() {
    let cluster = FailoverCluster::start(3, &[]).await;
    let targets = targets(&cluster);
    let workload = Workload::start(&targets, 4, 11, 2..=3, ANSWER_TIMEOUT);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (old, term) = cluster.wait_master(TAKEOVER, None).await;
    cluster.nodes[old].stop();
    let (new, new_term) = cluster.wait_master(TAKEOVER, Some(old)).await;
    assert!(new_term > term);
    append_ok(&cluster, Some(&workload), new, "while-paused", 3).await;
    cluster.nodes[old].cont();
    wait_for(
        TAKEOVER,
        "the woken master serves as a secondary",
        || async {
            let seen = cluster.seen_by(old).await?;
            (seen.role == "secondary" && seen.term == new_term).then_some(())
        },
    )
    .await;

    converged_history_holds(&cluster, workload).await;
}

/// Without etcd the master cannot renew its lease: it acknowledges nothing once the lease
/// lapsed, and nobody else becomes master. With etcd back, a master serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_nothing_commits_after_the_lease_and_it_resumes_after() {
    let mut cluster = FailoverCluster::start(3, &[]).await;
    let (master, _) = cluster.wait_master(TAKEOVER, None).await;
    let appender = cluster
        .appender_on(master)
        .with_timeout(Duration::from_secs(2));
    append_ok(&cluster, None, master, "before", 2).await;

    cluster.etcd.pause();
    let paused = Instant::now();
    let mut last_ok = None;
    let mut n = 0;
    while paused.elapsed() < ttl() * 3 {
        let message = format!("during-{n}");
        n += 1;
        let sent = paused.elapsed();
        if let Ok((status, _)) = appender.try_append(&message, Some(2)).await {
            if status == 200 {
                last_ok = Some(sent);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(sent) = last_ok {
        assert!(
            sent < ttl(),
            "an append sent {sent:?} after etcd stopped was acknowledged (lease {:?})",
            ttl()
        );
    }
    let health = cluster.health(master).await;
    assert!(
        health
            .as_ref()
            .is_none_or(|h| h["role"] != "master" || h["read_only"] == true),
        "no master without its lease: {health:?}"
    );

    cluster.etcd.resume();
    let (again, _) = cluster.wait_master(TAKEOVER * 2, None).await;
    append_ok(&cluster, None, again, "after", 2).await;
    let list = cluster.wait_converged(CONVERGE).await;
    for message in ["before-0", "before-1", "after-0", "after-1"] {
        assert!(list.iter().any(|(_, m)| m == message), "{message} is shown");
    }
    cluster.etcd.kill();
}

/// Two masters lost one after the other: the first is killed, then its successor; the first
/// comes back and, with the third node, elects a master that holds every acknowledged append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_new_master_too_loses_nothing_acknowledged_by_a_majority() {
    let mut cluster = FailoverCluster::start(3, &[]).await;
    let (first, _) = cluster.wait_master(TAKEOVER, None).await;
    let mut acked = append_ok(&cluster, None, first, "first", 5).await;
    cluster.nodes[first].kill();
    let (second, _) = cluster.wait_master(TAKEOVER, Some(first)).await;
    acked.extend(append_ok(&cluster, None, second, "second", 5).await);
    cluster.nodes[second].kill();
    cluster.nodes[first].start();
    let (third, _) = cluster.wait_master(TAKEOVER, Some(second)).await;
    assert_ne!(third, second);
    acked.extend(append_ok(&cluster, None, third, "third", 5).await);
    cluster.nodes[second].start();
    cluster.wait_master(TAKEOVER, None).await;
    let list = cluster.wait_converged(CONVERGE).await;
    let shown: Vec<&str> = list.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(shown, acked, "every acknowledged append, once, in order");
}

/// A node that lost its disk counts in elections again only once it has caught up. node c is
/// wiped after acknowledging appends with the master while node b was paused; the master is
/// paused while c holds part of the log again. b, which lacks those appends, must not be
/// elected with c's vote; once the master wakes it is elected again and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_catching_up_after_losing_its_disk_does_not_elect_one_that_lacks_appends() {
    let mut cluster = FailoverCluster::start(3, &[]).await;
    let (a, _) = cluster.wait_master(TAKEOVER, None).await;
    let (b, c) = ((a + 1) % 3, (a + 2) % 3);
    // A log long enough that c's catch-up takes many requests: c is caught in the middle.
    const BULK: usize = 6000;
    let filler = "x".repeat(4000);
    let appender = cluster.appender_on(a);
    let mut tasks = Vec::new();
    for client in 0..16 {
        let (appender, filler) = (appender.clone(), filler.clone());
        tasks.push(tokio::spawn(async move {
            for n in (client..BULK).step_by(16) {
                let (status, body) = appender
                    .append(&format!("bulk-{n}-{filler}"), Some(3))
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a bulk client");
    }
    cluster.nodes[b].stop();
    let acked = append_ok(&cluster, None, a, "while-b-paused", 5).await;
    let total = (BULK + acked.len()) as u64;
    cluster.nodes[c].restart_empty();
    // Pause the master as soon as c holds part of the log again.
    let deadline = Instant::now() + TAKEOVER;
    loop {
        let held = cluster.health(c).await.and_then(|h| h["last_id"].as_u64());
        if held.is_some_and(|held| held > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node c never held an entry again"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cluster.nodes[a].stop();
    let health = cluster.health(c).await.expect("node c's health");
    let held = health["last_id"].as_u64().unwrap_or_default();
    assert!(
        held < BULK as u64,
        "node c caught up past b's log before the master could be paused ({held}): the test needs a longer log"
    );
    assert_eq!(health["rejoining"], true, "{health}");
    cluster.nodes[b].cont();
    // b and c are a majority, and b holds more than c: but c may have lost what b lacks.
    let until = Instant::now() + ttl() * 4;
    while Instant::now() < until {
        for i in [b, c] {
            let seen = cluster.seen_by(i).await;
            assert!(
                seen.as_ref().is_none_or(|s| s.role != "master"),
                "{} became master while node c was catching up: {seen:?}",
                cluster.nodes[i].name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.nodes[a].cont();
    cluster.wait_master(TAKEOVER, None).await;
    let list = cluster.wait_converged(CONVERGE).await;
    assert_eq!(list.len() as u64, total);
    let shown: Vec<&str> = list.iter().map(|(_, m)| m.as_str()).collect();
    for message in &acked {
        assert!(shown.contains(&message.as_str()), "{message} was lost");
    }
    let health = cluster.health(c).await.expect("node c's health");
    assert_eq!(health["rejoining"], false, "{health}");
}
