//! The replication link's decisions, through the master's state machine alone: a [`Core`] with
//! one secondary, driven as the link's driver drives it (poll, open, send, reply, fail) with
//! hand-made replies and a clock of its own. No sockets, no tasks.

use bytes::Bytes;
use replog_master::core::health::Thresholds;
use replog_master::core::link::{
    Poll, ReplyError, MAX_BATCH_ENTRIES, PIPELINE, PIPELINE_MIN_ENTRIES,
};
use replog_master::core::{Core, Effect, Settings};
use replog_node::log::{new_log_id, Log};
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::time::{Duration, Instant};

const RPC_TIMEOUT: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(100);
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);

/// A master over `log` with `secondaries` secondaries, in memory (no journal), as process 1.
fn master_with(secondaries: usize, log: Log) -> (Core, Instant) {
    let settings = Settings {
        secondaries: (1..=secondaries).map(|i| format!("s{i}")).collect(),
        thresholds: Thresholds {
            suspect_after: Duration::from_secs(60),
            unhealthy_after: Duration::from_secs(120),
        },
        rpc_timeout: RPC_TIMEOUT,
        heartbeat_interval: HEARTBEAT,
        retry_base: RETRY_BASE,
        retry_max: RETRY_MAX,
        replication_timeout: Duration::ZERO,
        quorum_decisions: false,
        cache_bytes: None,
    };
    let now = Instant::now();
    (Core::new(settings, log, false, &[(1, 0)], now), now)
}

fn master() -> (Core, Instant) {
    master_with(1, Log::new(new_log_id()))
}

/// What secondary `instance` answers when it holds `held`: everything it holds that the master
/// has decided is decided there too.
fn state(core: &Core, instance: u64, held: u64) -> ReplicaState {
    let log = core.ledger().log();
    ReplicaState {
        log_id: log.log_id().to_owned(),
        instance,
        held,
        decided: log.decided().min(held),
        master_instance: 1,
        last_term: 0,
        rejoining: false,
    }
}

fn sent(poll: Poll) -> Vec<ReplicateRequest> {
    match poll {
        Poll::Send(requests) => requests,
        other => panic!("expected requests, got {other:?}"),
    }
}

/// The ids each request carries, as `(first, last)`; `None` for a request without entries.
fn spans(requests: &[ReplicateRequest]) -> Vec<Option<(u64, u64)>> {
    requests
        .iter()
        .map(|r| Some((r.entries.first()?.id, r.entries.last()?.id)))
        .collect()
}

/// Appends `count` messages with write concern `w`.
fn append(core: &mut Core, count: u64, w: usize) {
    for i in 0..count {
        core.append(Bytes::from(format!("m{i}")), w, None);
    }
}

/// Opens the stream to secondary 0 at `now` and answers its first question: secondary
/// `instance` holds `held`.
fn connect(core: &mut Core, now: Instant, instance: u64, held: u64) {
    assert_eq!(core.poll_link(0, now, false), Poll::Open);
    core.link_opened(0, now);
    let ask = sent(core.poll_link(0, now, false));
    assert_eq!(spans(&ask), [None], "the first request only asks");
    assert!(!ask[0].quiet);
    let reply = state(core, instance, held);
    core.link_reply(0, &reply, now)
        .expect("an answer to the question");
}

fn reply(core: &mut Core, instance: u64, held: u64, now: Instant) -> Result<bool, ReplyError> {
    let reply = state(core, instance, held);
    core.link_reply(0, &reply, now)
}

#[test]
fn at_most_pipeline_requests_are_in_flight_and_few_new_entries_wait_for_the_next() {
    let (mut core, now) = master();
    connect(&mut core, now, 7, 0);
    append(&mut core, 1, 1);
    assert_eq!(spans(&sent(core.poll_link(0, now, false))), [Some((1, 1))]);
    // With one request in flight, fewer than PIPELINE_MIN_ENTRIES new entries wait ...
    append(&mut core, PIPELINE_MIN_ENTRIES - 1, 1);
    assert_eq!(sent(core.poll_link(0, now, false)), []);
    assert_eq!(core.link(0).in_flight(), 1);
    // ... and as many go out at once, in one request.
    append(&mut core, 1, 1);
    let mut next = 2;
    assert_eq!(
        spans(&sent(core.poll_link(0, now, false))),
        [Some((next, next + PIPELINE_MIN_ENTRIES - 1))]
    );
    next += PIPELINE_MIN_ENTRIES;
    while core.link(0).in_flight() < PIPELINE {
        append(&mut core, PIPELINE_MIN_ENTRIES, 1);
        let last = next + PIPELINE_MIN_ENTRIES - 1;
        assert_eq!(
            spans(&sent(core.poll_link(0, now, false))),
            [Some((next, last))]
        );
        next = last + 1;
    }
    // The pipeline is full: nothing more goes, however much waits.
    append(&mut core, 3 * PIPELINE_MIN_ENTRIES, 1);
    assert_eq!(sent(core.poll_link(0, now, false)), []);
    assert_eq!(core.link(0).in_flight(), PIPELINE);
    // The oldest answer frees one place, and everything waiting goes in it.
    reply(&mut core, 7, 1, now).unwrap();
    let last = core.ledger().log().last_id();
    assert_eq!(
        spans(&sent(core.poll_link(0, now, false))),
        [Some((next, last))]
    );
    assert_eq!(core.link(0).in_flight(), PIPELINE);
    assert_eq!(core.link(0).next(), last + 1);
}

#[test]
fn a_failed_stream_is_resent_from_the_secondarys_high_water_mark() {
    let (mut core, now) = master();
    connect(&mut core, now, 7, 0);
    append(&mut core, 5, 1);
    assert_eq!(spans(&sent(core.poll_link(0, now, false))), [Some((1, 5))]);
    reply(&mut core, 7, 5, now).unwrap();
    append(&mut core, 5, 1);
    assert_eq!(spans(&sent(core.poll_link(0, now, false))), [Some((6, 10))]);
    assert_eq!(core.link(0).next(), 11);
    // The stream breaks with 6..=10 in flight, stored or not: the link closes it, and the next
    // stream starts again above what the secondary said it holds.
    core.link_failed(0, "connection reset", now);
    assert!(!core.link(0).is_open());
    assert_eq!(core.link(0).in_flight(), 0);
    let at = core.link(0).wait().retry_at.expect("a backoff");
    assert_eq!(core.poll_link(0, at, false), Poll::Open);
    core.link_opened(0, at);
    assert_eq!(core.link(0).next(), 6);
    assert_eq!(spans(&sent(core.poll_link(0, at, false))), [Some((6, 10))]);
    assert_eq!(core.link(0).next(), 11);
}

#[test]
fn after_a_failure_the_link_waits_for_its_backoff_which_grows_and_resets() {
    let (mut core, now) = master();
    connect(&mut core, now, 7, 0);
    append(&mut core, 1, 1);
    sent(core.poll_link(0, now, false));
    reply(&mut core, 7, 1, now).unwrap();
    assert!(
        core.link_failed(0, "connection reset", now),
        "the first of a streak"
    );
    let at = core.link(0).wait().retry_at.expect("a backoff");
    assert!(
        at >= now + RETRY_BASE / 2 && at <= now + RETRY_BASE,
        "{:?}",
        at - now
    );
    assert_eq!(core.poll_link(0, now, false), Poll::Wait);
    assert_eq!(core.poll_link(0, at - MS, false), Poll::Wait);
    assert_eq!(core.poll_link(0, at, false), Poll::Open);
    // Opening fails too: the next wait is twice as long, and no new streak begins.
    assert!(!core.link_failed(0, "connection refused", at));
    let again = core.link(0).wait().retry_at.expect("a backoff");
    assert!(
        again >= at + RETRY_BASE && again <= at + 2 * RETRY_BASE,
        "{:?}",
        again - at
    );
    assert_eq!(core.poll_link(0, again - MS, false), Poll::Wait);
    assert_eq!(core.poll_link(0, again, false), Poll::Open);
    core.link_opened(0, again);
    // The new stream pushes the decisions again (the failure may have lost them), and its
    // answer ends the streak and the backoff's growth.
    let push = sent(core.poll_link(0, again, false));
    assert_eq!(spans(&push), [None]);
    assert_eq!(reply(&mut core, 7, 1, again), Ok(true));
    assert_eq!(core.link(0).wait().retry_at, None);
    assert!(core.link_failed(0, "connection reset", again));
    let reset = core.link(0).wait().retry_at.expect("a backoff");
    assert!(reset <= again + RETRY_BASE, "{:?}", reset - again);
}

#[test]
fn decisions_alone_go_quiet_once_the_stream_has_answered_and_are_not_in_flight() {
    let (mut core, then) = master();
    // The first answer makes the secondary known and commits id 1 (w=2); the stream breaks,
    // so on the next one only a decision is new.
    append(&mut core, 1, 2);
    connect(&mut core, then, 7, 1);
    assert_eq!(core.ledger().log().decided(), 1);
    core.link_failed(0, "connection reset", then);
    let now = core.link(0).wait().retry_at.expect("a backoff");
    assert_eq!(core.poll_link(0, now, false), Poll::Open);
    core.link_opened(0, now);
    // The new stream has not answered yet: the push is answered, and in flight.
    let first = sent(core.poll_link(0, now, false));
    assert_eq!(spans(&first), [None]);
    assert!(!first[0].quiet);
    assert_eq!(first[0].decisions.as_ref().map(|d| d.decided_upto), Some(1));
    assert_eq!(core.link(0).in_flight(), 1);
    reply(&mut core, 7, 1, now).unwrap();
    // Id 2 ships, its answer commits it, and the decision goes alone: quiet, not in flight.
    append(&mut core, 1, 2);
    assert_eq!(spans(&sent(core.poll_link(0, now, false))), [Some((2, 2))]);
    reply(&mut core, 7, 2, now).unwrap();
    assert_eq!(core.ledger().log().decided(), 2);
    let push = sent(core.poll_link(0, now, false));
    assert_eq!(spans(&push), [None]);
    assert!(push[0].quiet);
    assert_eq!(push[0].decisions.as_ref().map(|d| d.decided_upto), Some(2));
    assert_eq!(core.link(0).in_flight(), 0);
    assert!(!core.link(0).wait().waiting, "nothing to wait for");
    assert_eq!(sent(core.poll_link(0, now, false)), [], "pushed once");
    // The driver may hold such a push back; nothing is pushed meanwhile.
    append(&mut core, 1, 2);
    assert_eq!(spans(&sent(core.poll_link(0, now, true))), [Some((3, 3))]);
    reply(&mut core, 7, 3, now).unwrap();
    assert_eq!(core.poll_link(0, now, true), Poll::DecisionsHeld);
    assert!(sent(core.poll_link(0, now, false))[0].quiet);
    // A quiet push has no answer: one arriving is a request the link never sent.
    assert_eq!(reply(&mut core, 7, 3, now), Err(ReplyError::Unsolicited));
    assert!(!core.link(0).is_open());
}

#[test]
fn an_idle_stream_sends_a_heartbeat_every_interval_whose_answer_is_contact() {
    let (mut core, now) = master();
    connect(&mut core, now, 7, 0);
    assert_eq!(core.ledger().follower(0).last_contact, Some(now));
    let wait = core.link(0).wait();
    assert!(!wait.waiting);
    assert_eq!(
        wait.heartbeat_at,
        Some(now + HEARTBEAT),
        "counted from the answer"
    );
    assert_eq!(sent(core.poll_link(0, now + HEARTBEAT - MS, false)), []);
    // Due: no entries, the current decisions, answered.
    let due = now + HEARTBEAT;
    let heartbeat = sent(core.poll_link(0, due, false));
    assert_eq!(spans(&heartbeat), [None]);
    assert!(!heartbeat[0].quiet);
    assert!(heartbeat[0].decisions.is_some());
    assert_eq!(core.link(0).in_flight(), 1);
    assert_eq!(core.link(0).wait().heartbeat_at, None, "one at a time");
    assert_eq!(core.link(0).wait().late_at, Some(due + RPC_TIMEOUT));
    // Its answer is contact, and shows a restart: the secondary came back empty.
    let answered = due + 3 * MS;
    core.take_effects();
    reply(&mut core, 8, 0, answered).unwrap();
    assert_eq!(core.ledger().follower(0).last_contact, Some(answered));
    assert_eq!(core.ledger().follower(0).instance, Some(8));
    assert!(core.take_effects().contains(&Effect::Wake(Some(0))));
    assert_eq!(
        core.link(0).wait().heartbeat_at,
        Some(answered + HEARTBEAT),
        "counted from its answer"
    );
}

#[test]
fn no_heartbeat_goes_while_requests_are_in_flight_and_a_pong_is_contact() {
    let (mut core, now) = master();
    connect(&mut core, now, 7, 0);
    append(&mut core, 1, 1);
    assert_eq!(spans(&sent(core.poll_link(0, now, false))), [Some((1, 1))]);
    let wait = core.link(0).wait();
    assert!(wait.waiting);
    assert_eq!(wait.heartbeat_at, None);
    let later = now + 5 * HEARTBEAT;
    assert_eq!(sent(core.poll_link(0, later, false)), [], "no heartbeat");
    // A pong is contact and nothing else: the answer is still owed, as late as before.
    core.link_alive(0, later);
    assert_eq!(core.ledger().follower(0).last_contact, Some(later));
    assert_eq!(core.link(0).in_flight(), 1);
    assert_eq!(core.link(0).wait(), wait);
    assert_eq!(core.ledger().follower(0).held, 0);
    // Once the answer comes, the stream is idle and silent from then on.
    reply(&mut core, 7, 1, later).unwrap();
    assert_eq!(core.link(0).wait().heartbeat_at, Some(later + HEARTBEAT));
    assert_eq!(sent(core.poll_link(0, later, false)), []);
    let due = later + HEARTBEAT;
    assert_eq!(spans(&sent(core.poll_link(0, due, false))), [None]);
}

#[test]
fn a_closed_idle_link_opens_again_after_its_backoff() {
    let (mut core, now) = master();
    connect(&mut core, now, 7, 0);
    // Nothing to send, and the stream breaks.
    core.link_failed(0, "connection reset", now);
    assert_eq!(
        core.ledger().follower(0).last_error.as_deref(),
        Some("connection reset")
    );
    let wait = core.link(0).wait();
    assert_eq!(wait.heartbeat_at, None);
    let at = wait.retry_at.expect("a backoff");
    assert_eq!(core.poll_link(0, at - MS, false), Poll::Wait);
    assert_eq!(core.poll_link(0, at, false), Poll::Open, "idle or not");
    core.link_opened(0, at);
    // A new stream asks at once.
    assert_eq!(core.link(0).wait().heartbeat_at, Some(at));
    let ask = sent(core.poll_link(0, at, false));
    assert_eq!(spans(&ask), [None]);
    assert!(!ask[0].quiet);
}

#[test]
fn a_secondary_that_restarted_empty_is_caught_up_from_the_start_in_batches() {
    let (mut core, now) = master();
    let total = 2 * MAX_BATCH_ENTRIES as u64 + 10;
    append(&mut core, total, 1);
    connect(&mut core, now, 7, total);
    // It holds everything: only the decisions go, quietly.
    let push = sent(core.poll_link(0, now, false));
    assert_eq!(spans(&push), [None]);
    assert!(push[0].quiet);
    assert_eq!(core.link(0).next(), total + 1);
    // It restarts empty: its connection breaks, and the next stream hears the new instance.
    core.take_effects();
    core.link_failed(0, "connection reset", now);
    let at = core.link(0).wait().retry_at.expect("a backoff");
    assert_eq!(
        core.poll_link(0, at, false),
        Poll::Open,
        "decisions to push"
    );
    core.link_opened(0, at);
    assert_eq!(spans(&sent(core.poll_link(0, at, false))), [None]);
    reply(&mut core, 8, 0, at).unwrap();
    assert!(core.take_effects().contains(&Effect::Wake(Some(0))));
    // From id 1, in batches of MAX_BATCH_ENTRIES; the ten left over wait for a free stream.
    let batch = MAX_BATCH_ENTRIES as u64;
    let requests = sent(core.poll_link(0, at, false));
    assert_eq!(
        spans(&requests),
        [Some((1, batch)), Some((batch + 1, 2 * batch))]
    );
    assert_eq!(sent(core.poll_link(0, at, false)), []);
    reply(&mut core, 8, batch, at).unwrap();
    assert_eq!(sent(core.poll_link(0, at, false)), []);
    reply(&mut core, 8, 2 * batch, at).unwrap();
    assert_eq!(
        spans(&sent(core.poll_link(0, at, false))),
        [Some((2 * batch + 1, total))]
    );
    reply(&mut core, 8, total, at).unwrap();
    assert_eq!(core.ledger().follower(0).held, total);
}

#[test]
fn a_restarted_master_skips_what_the_secondary_already_holds() {
    let mut log = Log::new(new_log_id());
    for i in 0..12 {
        log.push(Bytes::from(format!("m{i}")), false);
    }
    let (mut core, now) = master_with(1, log);
    connect(&mut core, now, 7, 10);
    assert_eq!(
        spans(&sent(core.poll_link(0, now, false))),
        [Some((11, 12))]
    );
}

#[test]
fn a_reply_to_no_request_closes_the_link() {
    let (mut core, now) = master();
    assert_eq!(
        reply(&mut core, 7, 0, now),
        Err(ReplyError::Unsolicited),
        "no stream"
    );
    core.link_failed(0, "reset", now);
    let at = core.link(0).wait().retry_at.expect("a backoff");
    connect(&mut core, at, 7, 0);
    assert!(core.link(0).is_open());
    assert_eq!(reply(&mut core, 7, 0, at), Err(ReplyError::Unsolicited));
    assert!(!core.link(0).is_open());
    assert!(core.link(0).wait().retry_at.is_some_and(|retry| retry > at));
    assert_eq!(core.poll_link(0, at, false), Poll::Wait);
}

#[test]
fn an_answer_is_late_rpc_timeout_after_the_stream_last_moved() {
    let (mut core, now) = master();
    assert_eq!(core.poll_link(0, now, false), Poll::Open);
    core.link_opened(0, now);
    sent(core.poll_link(0, now, false));
    let wait = core.link(0).wait();
    assert!(wait.waiting);
    assert_eq!(wait.late_at, Some(now + RPC_TIMEOUT));
    assert!(!core.link(0).late(now + RPC_TIMEOUT - MS));
    assert!(core.link(0).late(now + RPC_TIMEOUT));
    // An answer moves the stream: the next request in flight has its own time.
    let answered = now + RPC_TIMEOUT / 2;
    reply(&mut core, 7, 0, answered).unwrap();
    assert!(!core.link(0).wait().waiting);
    assert!(
        !core.link(0).late(now + 10 * RPC_TIMEOUT),
        "nothing in flight"
    );
    append(&mut core, 1, 1);
    let later = answered + RPC_TIMEOUT;
    sent(core.poll_link(0, later, false));
    assert_eq!(core.link(0).wait().late_at, Some(later + RPC_TIMEOUT));
    append(&mut core, PIPELINE_MIN_ENTRIES, 1);
    sent(core.poll_link(0, later + MS, false));
    reply(&mut core, 7, 1, later + 3 * MS).unwrap();
    assert_eq!(
        core.link(0).wait().late_at,
        Some(later + 3 * MS + RPC_TIMEOUT),
        "counted from the last answer"
    );
}

#[test]
fn a_secondary_that_takes_nothing_is_resent_to_after_a_backoff_not_at_once() {
    let (mut core, now) = master();
    connect(&mut core, now, 7, 0);
    append(&mut core, 3, 1);
    assert_eq!(spans(&sent(core.poll_link(0, now, false))), [Some((1, 3))]);
    // It answers without having stored anything: sent again from its high-water mark ...
    reply(&mut core, 7, 0, now).unwrap();
    assert_eq!(spans(&sent(core.poll_link(0, now, false))), [Some((1, 3))]);
    // ... but the same again means it does not take what it is sent: the next try waits.
    reply(&mut core, 7, 0, now).unwrap();
    assert_eq!(core.poll_link(0, now, false), Poll::Wait);
    let at = core.link(0).wait().retry_at.expect("a backoff");
    assert!(at > now);
    assert_eq!(spans(&sent(core.poll_link(0, at, false))), [Some((1, 3))]);
    // Once it takes them, it is no longer held back.
    reply(&mut core, 7, 3, at).unwrap();
    append(&mut core, 1, 1);
    assert_eq!(spans(&sent(core.poll_link(0, at, false))), [Some((4, 4))]);
}

/// A log of `count` entries on disk (segment files in a directory of its own), every one
/// decided and evicted from the cache, so all are read back from the files; and its files.
fn cold_log(count: u64) -> (Log, replog_node::storage::SegmentLog, std::path::PathBuf) {
    use replog_node::storage::segments::Config;
    use replog_node::storage::{FsyncPolicy, Record, SegmentLog};
    let dir = std::env::temp_dir().join(format!(
        "replog-link-cold-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let config = Config {
        fsync: FsyncPolicy::Never,
        segment_bytes: 64 << 10,
        ..Default::default()
    };
    let (mut file, _) = SegmentLog::open(&dir, config, new_log_id).expect("open");
    let mut log = Log::new(file.log_id().to_owned()).with_files(file.reader());
    let mut records = Vec::new();
    for id in 1..=count {
        let message = Bytes::from(format!("m{id}"));
        log.push(message.clone(), false);
        records.push(Record::Entry {
            id,
            message,
            tombstone: false,
        });
    }
    file.append(&records).expect("write");
    log.set_decided(count);
    log.evict(count, 0);
    assert_eq!(log.cached_from(), count + 1, "everything cold");
    (log, file, dir)
}

#[test]
fn a_catch_up_from_the_files_reads_them_outside_the_core_and_keeps_the_pipeline_full() {
    use replog_master::core::link::MAX_BATCH_BYTES;
    let batch = MAX_BATCH_ENTRIES as u64;
    let total = (PIPELINE as u64 + 1) * batch;
    let (log, file, dir) = cold_log(total);
    let reader = file.reader();
    let (mut core, now) = master_with(1, log);
    connect(&mut core, now, 7, 0);
    // Each batch is read by the driver, outside the core, then shipped; the link asks for the
    // next read with the batch before it, until PIPELINE requests are in flight.
    let mut shipped = Vec::new();
    let mut asked = match core.poll_link(0, now, false) {
        Poll::Read { first, from } => {
            assert!(first.is_empty());
            from
        }
        other => panic!("expected a read, got {other:?}"),
    };
    assert_eq!(asked, 1);
    loop {
        let read = reader
            .read(asked, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES)
            .expect("read");
        core.link_read(0, asked, read);
        match core.poll_link(0, now, false) {
            Poll::Read { first, from } => {
                shipped.extend(spans(&first));
                asked = from;
            }
            Poll::Send(requests) => {
                shipped.extend(spans(&requests));
                break;
            }
            other => panic!("expected a read or requests, got {other:?}"),
        }
    }
    let expected: Vec<_> = (0..PIPELINE as u64)
        .map(|i| Some((i * batch + 1, (i + 1) * batch)))
        .collect();
    assert_eq!(shipped, expected, "a full pipeline of cold batches");
    assert_eq!(core.link(0).in_flight(), PIPELINE);
    // A read the link no longer wants (its stream failed, so it starts again from what the
    // secondary holds) is not shipped: it reads again from there.
    let stale = reader
        .read(asked, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES)
        .expect("read");
    core.link_failed(0, "connection reset", now);
    core.link_read(0, asked, stale);
    let at = core.link(0).wait().retry_at.expect("a backoff");
    assert_eq!(core.poll_link(0, at, false), Poll::Open);
    core.link_opened(0, at);
    match core.poll_link(0, at, false) {
        Poll::Read { first, from } => assert_eq!((first.len(), from), (0, 1)),
        other => panic!("expected a read from 1, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
