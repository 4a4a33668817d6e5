//! Durable storage (`DATA_DIR`, `FSYNC=always`): what was acknowledged survives kill -9 of the
//! master and a secondary; a torn or corrupt tail of `log.bin` is cut off and reported at start,
//! and nothing before it is lost; exactly-once holds across a durable secondary's crash.

use cluster_tests::log_file::{self, Record};
use cluster_tests::{
    acknowledged, assert_no_repeats, secondary_health, steady_health, wait_until, Answer, Appender,
    Cluster, MasterOpts, Node, SecondaryOpts, StatusCode,
};
use futures::StreamExt;
use std::time::Duration;

fn settings() -> Vec<(&'static str, &'static str)> {
    steady_health(&[
        ("REPLICATION_TIMEOUT_SECONDS", "0"),
        ("RETRY_BASE_MS", "10"),
        ("RETRY_MAX_MS", "200"),
    ])
}

/// `n` appends `"{prefix}{i}"`, `in_flight` at a time, with write concern `w(i)`.
async fn append_many(
    appender: Appender,
    prefix: &str,
    n: u64,
    in_flight: usize,
    w: fn(u64) -> Option<u64>,
) -> Vec<Answer> {
    let appends = futures::stream::iter(0..n)
        .map(|i| {
            let appender = appender.clone();
            let text = format!("{prefix}{i}");
            async move {
                let (status, body) = appender.append(&text, w(i)).await;
                Answer {
                    text,
                    w: w(i),
                    status,
                    body,
                }
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>();
    tokio::time::timeout(Duration::from_secs(30), appends)
        .await
        .unwrap_or_else(|_| panic!("{n} appends did not all answer within 30 s"))
}

/// Injected: 1,000 appends acknowledged with w=1 or w=2 (16 at a time) on a cluster where every
/// node has `DATA_DIR` (FSYNC=always, the default); then kill -9 of the master and secondary-1
/// at the same moment, and a restart of both with their data.
/// Checked: the restarted master's last_id is 1000; every node lists exactly the 1,000
/// acknowledged (id, message) pairs, nothing twice; the next append gets id 1001 and reaches
/// every node.
#[tokio::test]
async fn acknowledged_appends_survive_kill_9_of_the_master_and_a_secondary() {
    let mut cluster = Cluster::start_with(
        vec![
            SecondaryOpts::new().durable(),
            SecondaryOpts::new().durable(),
        ],
        MasterOpts::new().durable().envs(&settings()),
    )
    .await;
    let answers = append_many(cluster.appender(), "m", 1000, 16, |i| Some(i % 2 + 1)).await;
    let expected = acknowledged(&answers);
    assert_eq!(expected.len(), 1000);

    // "At the same moment": both SIGKILLs before either is reaped.
    for node in [&cluster.master, &cluster.secondaries[0]] {
        nix::sys::signal::kill(node.pid(), nix::sys::signal::Signal::SIGKILL)
            .unwrap_or_else(|e| panic!("SIGKILL {}: {e}", node.name));
    }
    cluster.master.kill();
    cluster.secondaries[0].kill();
    cluster.master.start();
    cluster.secondaries[0].start();
    cluster.renew_client();
    cluster.wait_ready().await;

    let health = cluster.health(&cluster.master).await;
    assert_eq!(health["last_id"], 1000, "master after restart: {health}");
    cluster
        .wait_converged(Duration::from_secs(15), &expected)
        .await;
    for (node, list) in cluster.all_messages().await {
        assert_no_repeats(&node, &list);
    }

    let (status, body) = cluster.append("after restart", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 1001, "ids continue after the restart: {body}");
    let mut expected = expected;
    expected.push((1001, "after restart".to_owned()));
    cluster
        .wait_converged(Duration::from_secs(5), &expected)
        .await;
}

/// How a test damages the last record of `log.bin`.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cuts the file 3 bytes short: the last record is torn.
    Truncate,
    /// Flips the file's last byte, which belongs to the last record's payload: its checksum
    /// no longer matches.
    FlipLastByte,
    /// Cuts the file 3 bytes before the end of its last entry record (dropping whatever
    /// followed it): a crash while that entry was being written.
    TearLastEntry,
}

/// Damages the last record of `node`'s `log.bin` (the node must not run). Returns the frames
/// that must survive recovery, and the offset and byte count the node must report as cut.
fn damage(node: &Node, how: Damage) -> (Vec<log_file::Frame>, u64, u64) {
    let path = node.log_file();
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut frames = log_file::frames(&bytes);
    assert_eq!(
        frames.last().map(log_file::Frame::end),
        Some(bytes.len()),
        "{} does not end with a whole record before the damage",
        path.display()
    );
    if let Damage::TearLastEntry = how {
        let last_entry = frames
            .iter()
            .rposition(|f| matches!(f.record, Record::Entry { .. }))
            .expect("an entry record");
        frames.truncate(last_entry + 1);
    }
    let last = frames.pop().expect("a record to damage");
    assert!(
        !frames.is_empty(),
        "only the Meta record in {}",
        path.display()
    );
    match how {
        Damage::Truncate => bytes.truncate(bytes.len() - 3),
        Damage::FlipLastByte => *bytes.last_mut().unwrap() ^= 0xff,
        Damage::TearLastEntry => bytes.truncate(last.end() - 3),
    }
    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!(
        "{}: damaged ({how:?}) its last record, {:?} at offset {} ({} bytes)",
        node.name, last.record, last.offset, last.len
    );
    let cut = (bytes.len() - last.offset) as u64;
    (frames, last.offset as u64, cut)
}

/// Panics unless `node`'s output since its latest start reports the cut at `offset`.
fn assert_cut_reported(node: &Node, offset: u64, bytes_cut: u64) {
    let log = node.log_since_start();
    let line = log
        .lines()
        .find(|l| l.contains("cut a torn or corrupt tail"))
        .unwrap_or_else(|| {
            panic!(
                "{} did not report the cut at start (log: {})",
                node.name,
                node.log_path().display()
            )
        });
    assert!(
        line.contains(&format!("offset={offset}"))
            && line.contains(&format!("bytes_cut={bytes_cut}")),
        "{} reported {line:?}, expected offset={offset} bytes_cut={bytes_cut}",
        node.name
    );
    assert!(line.contains("reason"), "no reason in {line:?}");
}

/// Injected: on durable secondary-1, after 10 more appends every node lists: SIGTERM, then (a)
/// its log.bin cut 3 bytes short, (b) in a second round the last byte of log.bin flipped, (c) in
/// a third round the file cut inside its last entry record; each time the secondary is
/// restarted with the master SIGSTOPped, so that only its disk speaks.
/// Checked, each round: it starts, its log reports the cut (offset and bytes_cut exactly those
/// of the damaged record); its held (/api/health last_id) is the last entry before the damaged
/// record, and it lists exactly the acknowledged entries up to its recovered decided frontier.
/// After SIGCONT of the master it is caught up to the master's list again.
#[tokio::test]
async fn secondary_cuts_a_torn_or_corrupt_tail_and_keeps_the_rest() {
    let mut cluster = Cluster::start(
        vec![SecondaryOpts::new().durable(), SecondaryOpts::new()],
        &settings(),
    )
    .await;
    let mut expected = Vec::new();
    let rounds = [
        Damage::Truncate,
        Damage::FlipLastByte,
        Damage::TearLastEntry,
    ];
    for (round, how) in rounds.into_iter().enumerate() {
        for i in 0..10 {
            let text = format!("r{round}-{i}");
            let (status, body) = cluster.append(&text, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            expected.push((body["id"].as_u64().expect("an id"), text));
        }
        cluster
            .wait_converged(Duration::from_secs(5), &expected)
            .await;

        let status = cluster.secondaries[0].terminate(Duration::from_secs(5));
        assert!(status.success(), "secondary-1 after SIGTERM: {status}");
        let (kept, offset, bytes_cut) = damage(&cluster.secondaries[0], how);
        let (held, decided) = log_file::recovered(&kept);
        assert!(
            kept.iter()
                .any(|f| matches!(f.record, Record::Entry { .. })),
            "no entry left before the damaged record"
        );

        cluster.master.stop();
        cluster.secondaries[0].start();
        let secondary = &cluster.secondaries[0];
        let recovered = cluster_tests::wait_for(
            Duration::from_secs(10),
            "secondary-1 answers /api/health after the restart",
            || cluster.try_health(secondary),
        )
        .await;
        assert_cut_reported(secondary, offset, bytes_cut);
        assert_eq!(
            recovered["last_id"], held,
            "{how:?}: held after recovery (the file kept entries 1..={held}): {recovered}"
        );
        let visible = held.min(decided) as usize;
        let list = cluster.messages(secondary).await;
        assert_eq!(
            list,
            expected[..visible],
            "{how:?}: list after recovery (held {held}, decided {decided})"
        );
        eprintln!("{how:?}: recovered held={held} decided={decided}, lists {visible}");
        cluster.master.cont();
        cluster.wait_ready().await;
        cluster
            .wait_converged(Duration::from_secs(5), &expected)
            .await;
    }
}

/// Injected: a durable master without secondaries gets 10 appends; SIGTERM; (a) log.bin cut 3
/// bytes short; restart; 5 more appends; kill -9; (b) the last byte of log.bin flipped; restart.
/// Checked, each round: it starts, reports the cut (offset and bytes_cut of the damaged
/// record), lists everything acknowledged except the damaged last entry, its last_id is that
/// entry's id - 1, and the next append reuses that id (ids stay gapless).
#[tokio::test]
async fn master_cuts_a_torn_or_corrupt_tail_and_keeps_the_rest() {
    let mut cluster =
        Cluster::start_with(vec![], MasterOpts::new().durable().envs(&settings())).await;
    let mut expected: Vec<(u64, String)> = Vec::new();
    for (round, how) in [Damage::Truncate, Damage::FlipLastByte]
        .into_iter()
        .enumerate()
    {
        for i in 0..10 - 5 * round {
            let text = format!("r{round}-{i}");
            let (status, body) = cluster.append(&text, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            expected.push((body["id"].as_u64().expect("an id"), text));
        }
        assert_eq!(cluster.messages(&cluster.master).await, expected);

        match how {
            Damage::Truncate => {
                let status = cluster.master.terminate(Duration::from_secs(5));
                assert!(status.success(), "master after SIGTERM: {status}");
            }
            Damage::FlipLastByte | Damage::TearLastEntry => cluster.master.kill(),
        }
        let (kept, offset, bytes_cut) = damage(&cluster.master, how);
        let (held, _) = log_file::recovered(&kept);
        let (lost_id, lost_text) = expected.pop().expect("an entry");
        assert_eq!(held, lost_id - 1, "the damaged record is the last entry");

        cluster.master.start();
        cluster.renew_client();
        cluster.wait_ready().await;
        assert_cut_reported(&cluster.master, offset, bytes_cut);
        let health = cluster.health(&cluster.master).await;
        assert_eq!(health["last_id"], held, "{how:?}: {health}");
        assert_eq!(
            cluster.messages(&cluster.master).await,
            expected,
            "{how:?}: the master's list after recovery"
        );
        let (status, body) = cluster.append(&lost_text, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["id"], lost_id,
            "ids continue from the recovered log: {body}"
        );
        expected.push((lost_id, lost_text));
    }
    assert_eq!(cluster.messages(&cluster.master).await, expected);
}

/// Injected: the master ships an entry while its own fsync of it runs, so a power failure can
/// take from it an entry a secondary already holds. Here: with secondary-2 hung (SIGSTOP), a w=3
/// append "lost" stays pending while secondary-1 holds it as id 2; then kill -9 of the master,
/// its log.bin cut back to before that entry (what a power failure before the fsync leaves),
/// a restart, SIGCONT of secondary-2, and a w=3 append "kept".
/// Checked: the restarted master is process 2 of its log (a MasterStart record with recovered
/// 1); "kept" gets id 2; every node lists exactly [first, kept] (secondary-1 dropped its "lost");
/// and so does secondary-1 after a kill -9 and restart from its own file.
#[tokio::test]
async fn a_secondary_drops_an_entry_the_master_lost_before_its_fsync() {
    let mut cluster = Cluster::start_with(
        vec![SecondaryOpts::new().durable(), SecondaryOpts::new()],
        MasterOpts::new().durable().envs(&settings()),
    )
    .await;

    let (status, body) = cluster.append("first", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 1, "{body}");

    cluster.secondaries[1].stop();
    let appender = cluster.appender();
    let pending = tokio::spawn(async move { appender.append("lost", Some(3)).await });
    let s1 = &cluster.secondaries[0];
    wait_until(
        Duration::from_secs(10),
        "secondary-1 holds id 2",
        || async { cluster.held(s1).await == 2 },
    )
    .await;

    nix::sys::signal::kill(cluster.master.pid(), nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL the master");
    cluster.master.kill();
    pending.abort();
    let path = cluster.master.log_file();
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let frames = log_file::frames(&bytes);
    let lost = frames
        .iter()
        .find(|f| {
            matches!(
                f.record,
                Record::Entry {
                    id: 2,
                    tombstone: false,
                    ..
                }
            )
        })
        .unwrap_or_else(|| panic!("no entry 2 in {}: {frames:?}", path.display()));
    bytes.truncate(lost.offset);
    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    cluster.master.start();
    cluster.secondaries[1].cont();
    cluster.renew_client();
    cluster.wait_ready().await;
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(10), cluster.append("kept", Some(3)))
            .await
            .expect("the append after the restart answers within 10 s");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["id"], 2,
        "the restarted master gives id 2 again: {body}"
    );
    let restarts: Vec<_> = log_file::frames(&std::fs::read(&path).expect("master log"))
        .into_iter()
        .filter_map(|f| f.record.master_start())
        .collect();
    assert_eq!(
        restarts,
        [(1, 0), (2, 1)],
        "the master's starts in its file"
    );

    let expected = [(1, "first".to_owned()), (2, "kept".to_owned())];
    cluster
        .wait_converged(Duration::from_secs(10), &expected)
        .await;
    cluster.secondaries[0].kill();
    cluster.secondaries[0].start();
    cluster.renew_client();
    cluster.wait_ready().await;
    cluster
        .wait_converged(Duration::from_secs(10), &expected)
        .await;
}

/// Injected: ERROR_RATE=0.3 on both durable secondaries (they store, then answer an error), 200
/// appends with w cycling 1, 2, 3, 8 at a time; after 100 answered, kill -9 of secondary-1 and
/// a restart with its data, the appends going on.
/// Checked: all 200 answer 200 with ids 1..=200; in the end every node lists exactly those
/// 200 (id, message) pairs, none twice.
#[tokio::test]
async fn exactly_once_with_errors_and_a_durable_secondary_killed_midway() {
    let mut cluster = Cluster::start(
        vec![
            SecondaryOpts::new().durable().env("ERROR_RATE", "0.3"),
            SecondaryOpts::new().durable().env("ERROR_RATE", "0.3"),
        ],
        &settings(),
    )
    .await;
    let appends = append_many(cluster.appender(), "m", 200, 8, |i| Some(i % 3 + 1));
    let fault = async {
        wait_until(
            Duration::from_secs(20),
            "the master assigned id 100",
            || async { cluster.last_id(&cluster.master).await >= 100 },
        )
        .await;
        cluster.secondaries[0].kill();
        let address = cluster.secondaries[0].grpc_endpoint();
        wait_until(
            Duration::from_secs(5),
            "the master reports a failed call to the killed secondary-1",
            || async {
                let health = cluster.health(&cluster.master).await;
                secondary_health(&health, &address)
                    .is_some_and(|s| s["last_error"].as_str().is_some_and(|e| !e.is_empty()))
            },
        )
        .await;
        let at_kill = cluster.last_id(&cluster.master).await;
        cluster.secondaries[0].start();
        at_kill
    };
    let (answers, at_kill) = tokio::join!(appends, fault);
    assert!(
        at_kill < 200,
        "the kill came after the last append ({at_kill})"
    );
    let expected = acknowledged(&answers);
    let ids: Vec<u64> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>(), "ids handed out");
    cluster.wait_ready().await;
    cluster
        .wait_converged(Duration::from_secs(20), &expected)
        .await;
    for (node, list) in cluster.all_messages().await {
        assert_no_repeats(&node, &list);
    }
}
