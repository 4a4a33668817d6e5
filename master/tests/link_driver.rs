//! The link driver (`replication::sender`) against an in-memory secondary: a real
//! [`Replica`] behind the [`Transport`] trait, no sockets. Checked: appends commit through
//! the driver and reach the replica in order, decisions arrive by quiet pushes, and a stream
//! that breaks or cannot be opened is reopened after the backoff and resent from the
//! replica's high-water mark, so nothing is lost or shown twice. On a paused clock: an idle link
//! heartbeats (the master sees a restart without any append), a stream that stops answering is
//! failed and reopened, and a secondary that delays its answers stays in contact through its
//! pongs.

use clap::Parser;
use replog_master::config::Config;
use replog_master::core::health::Status;
use replog_master::replication::sender::Sender;
use replog_master::replication::transport::{Heard, Stream, Transport};
use replog_master::replication::LinkError;
use replog_master::state::Master;
use replog_node::api::Node;
use replog_node::log::{new_log_id, Log};
use replog_node::metrics::Metrics;
use replog_node::shutdown::Phases;
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use replog_secondary::replica::{Refusal, Replica};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The in-memory secondary and the faults to inject.
#[derive(Clone, Default)]
struct Memory {
    replica: Arc<Mutex<Option<Replica>>>,
    /// Opens to refuse before one succeeds.
    refuse_opens: Arc<AtomicUsize>,
    /// Requests with entries a stream takes before it breaks (0: never).
    break_after: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    quiet_taken: Arc<AtomicUsize>,
    /// Requests without entries that were answered: first questions and heartbeats.
    asked: Arc<AtomicUsize>,
    /// The secondary stops answering: requests arrive, nothing comes back.
    silent: Arc<AtomicBool>,
    /// The secondary holds its answers back (as `DELAY_SECONDS` does), but its connection
    /// answers pings: every [`PONG_EVERY`] of silence with answers owed, the stream is alive.
    delayed: Arc<AtomicBool>,
}

/// How often a stream whose answers are held back shows the secondary alive (its pongs).
const PONG_EVERY: Duration = Duration::from_millis(100);

struct MemoryStream {
    memory: Memory,
    replies: VecDeque<Result<ReplicaState, LinkError>>,
    arrived: Arc<Notify>,
    shipped: usize,
}

impl Memory {
    fn state(&self) -> ReplicaState {
        self.replica.lock().unwrap().as_ref().unwrap().state()
    }
}

impl Transport for Memory {
    type Stream = MemoryStream;

    fn address(&self) -> &str {
        "memory"
    }

    async fn open(&self) -> Result<MemoryStream, LinkError> {
        let refuse = self.refuse_opens.load(Ordering::SeqCst);
        if refuse > 0 {
            self.refuse_opens.store(refuse - 1, Ordering::SeqCst);
            return Err(LinkError::Refused(tonic::Status::unavailable("refused")));
        }
        self.opened.fetch_add(1, Ordering::SeqCst);
        Ok(MemoryStream {
            memory: self.clone(),
            replies: VecDeque::new(),
            arrived: Arc::new(Notify::new()),
            shipped: 0,
        })
    }
}

impl Stream for MemoryStream {
    fn send(&mut self, request: &ReplicateRequest) -> Result<(), LinkError> {
        if self.memory.silent.load(Ordering::SeqCst) {
            return Ok(());
        }
        if !request.entries.is_empty() {
            self.shipped += 1;
            let limit = self.memory.break_after.load(Ordering::SeqCst);
            if limit > 0 && self.shipped > limit {
                // The connection broke: this request never arrives.
                self.memory.break_after.store(0, Ordering::SeqCst);
                self.replies.push_back(Err(LinkError::Closed));
                self.arrived.notify_one();
                return Ok(());
            }
        }
        let mut replica = self.memory.replica.lock().unwrap();
        let replica = replica.as_mut().unwrap();
        let quiet = request.quiet && request.entries.is_empty();
        let taken = replica.receive(request.clone());
        let reply = match (taken, quiet) {
            (Ok(_), true) => {
                self.memory.quiet_taken.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            (Ok(_), false) => {
                if request.entries.is_empty() {
                    self.memory.asked.fetch_add(1, Ordering::SeqCst);
                }
                Ok(replica.state())
            }
            // As the service does: the state tells the master which process and log it follows.
            (Err(Refusal::MissingStarts { .. } | Refusal::ForeignLog), false) => {
                Ok(replica.state())
            }
            (Err(refusal), _) => Err(LinkError::Refused(tonic::Status::failed_precondition(
                refusal.to_string(),
            ))),
        };
        self.replies.push_back(reply);
        self.arrived.notify_one();
        Ok(())
    }

    async fn reply(&mut self, waiting: bool) -> Result<Heard, LinkError> {
        loop {
            if self.memory.delayed.load(Ordering::SeqCst) {
                if waiting {
                    tokio::time::sleep(PONG_EVERY).await;
                    return Ok(Heard::Alive);
                }
            } else if let Some(reply) = self.replies.pop_front() {
                return reply.map(Heard::Reply);
            }
            let arrived = self.arrived.clone();
            tokio::select! {
                _ = arrived.notified() => {}
                // Looks again now and then: the faults change from outside.
                _ = tokio::time::sleep(PONG_EVERY) => {}
            }
        }
    }
}

/// A master with one in-memory secondary, serving a new log, its link driven by the real
/// sender task; with its metrics, and the token that stops the sender.
async fn master(memory: &Memory) -> (Arc<Master>, Arc<Metrics>, CancellationToken) {
    master_with(memory, &[]).await
}

/// [`master`] with `extra` settings.
async fn master_with(
    memory: &Memory,
    extra: &[&str],
) -> (Arc<Master>, Arc<Metrics>, CancellationToken) {
    let mut args = vec![
        "master",
        "--secondaries",
        "memory:1",
        "--retry-base-ms",
        "5",
        "--retry-max-ms",
        "20",
        "--replication-timeout-seconds",
        "5",
    ];
    args.extend(extra);
    let config = Config::try_parse_from(args).expect("valid settings");
    let log_id = new_log_id();
    *memory.replica.lock().unwrap() = Some(Replica::new(Log::new(log_id.clone())));
    let rpc_timeout = config.rpc_timeout_seconds;
    let stop = CancellationToken::new();
    let phases = Phases::after(stop.clone(), Duration::from_millis(100));
    let metrics = Arc::new(Metrics::default());
    let master = Arc::new(Master::new(
        config,
        Log::new(log_id.clone()),
        phases,
        metrics.clone(),
    ));
    master.install(Log::new(log_id), None, &[(1, 0)]);
    master.set_recovering(None);
    let sender = Sender {
        master: master.clone(),
        peer: memory.clone(),
        index: 0,
        shutdown: stop.clone(),
        metrics: metrics.clone(),
        rpc_timeout,
    };
    tokio::spawn(sender.run());
    (master, metrics, stop)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn appends_commit_through_the_driver_and_decisions_go_quiet() {
    let memory = Memory::default();
    let (master, _, stop) = master(&memory).await;
    for i in 1..=20u64 {
        let id = master
            .append(format!("m{i}"), Some(2), None)
            .await
            .expect("committed");
        assert_eq!(id, i);
    }
    wait_for("the replica decided all 20", || {
        memory.state().decided == 20
    })
    .await;
    assert_eq!(memory.state().held, 20);
    assert!(
        memory.quiet_taken.load(Ordering::SeqCst) > 0,
        "decisions alone went as quiet pushes"
    );
    assert_eq!(
        memory.opened.load(Ordering::SeqCst),
        1,
        "one stream did it all"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_broken_stream_is_reopened_and_resent_from_the_high_water_mark() {
    let memory = Memory::default();
    memory.break_after.store(2, Ordering::SeqCst);
    memory.refuse_opens.store(2, Ordering::SeqCst);
    let (master, _, stop) = master(&memory).await;
    for i in 1..=10u64 {
        let id = master.append(format!("m{i}"), Some(2), None).await;
        assert_eq!(id.expect("committed"), i);
    }
    wait_for("the replica decided all 10", || {
        memory.state().decided == 10
    })
    .await;
    let replica = memory.replica.lock().unwrap();
    let shown: Vec<bytes::Bytes> = replica
        .as_ref()
        .unwrap()
        .log()
        .try_visible(1, 100)
        .expect("page")
        .into_iter()
        .map(|m| m.message)
        .collect();
    let mut expected: Vec<bytes::Bytes> = master
        .page(1, 100)
        .expect("page")
        .into_iter()
        .map(|m| m.message)
        .collect();
    assert_eq!(shown, expected, "the replica shows the master's log");
    expected.dedup();
    assert_eq!(expected.len(), 10, "nothing twice");
    assert!(
        memory.opened.load(Ordering::SeqCst) >= 2,
        "the broken stream was replaced"
    );
    assert_eq!(
        memory.refuse_opens.load(Ordering::SeqCst),
        0,
        "refused opens were retried"
    );
    stop.cancel();
}

/// The master's view of the secondary: its instance, when it was last heard, why it last
/// failed.
fn seen(master: &Master) -> (Option<u64>, Option<std::time::Instant>, Option<String>) {
    master.read(|core| {
        let f = core.ledger().follower(0);
        (f.instance, f.last_contact, f.last_error.clone())
    })
}

fn status(master: &Master) -> Status {
    master.update(|core| core.status(0, Instant::now().into_std()))
}

const FAST_HEALTH: [&str; 8] = [
    "--heartbeat-interval-ms",
    "100",
    "--suspect-after-ms",
    "300",
    "--unhealthy-after-ms",
    "1000",
    "--rpc-timeout-seconds",
    "1",
];

#[tokio::test(start_paused = true)]
async fn an_idle_link_heartbeats_and_a_stream_that_stops_answering_is_reopened() {
    let memory = Memory::default();
    let (master, metrics, stop) = master_with(&memory, &FAST_HEALTH).await;
    wait_for("the first question answered", || seen(&master).0.is_some()).await;
    // The secondary restarts empty: with no append, the next heartbeat shows it.
    let log_id = master.read(|core| core.ledger().log().log_id().to_owned());
    let restarted = Replica::new(Log::new(log_id));
    let instance = restarted.state().instance;
    *memory.replica.lock().unwrap() = Some(restarted);
    let asked = memory.asked.load(Ordering::SeqCst);
    wait_for("a heartbeat showed the restart", || {
        seen(&master).0 == Some(instance)
    })
    .await;
    let started = Instant::now();
    wait_for("more heartbeats", || {
        memory.asked.load(Ordering::SeqCst) >= asked + 5
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "one per interval, not more: {:?}",
        started.elapsed()
    );
    assert_eq!(memory.opened.load(Ordering::SeqCst), 1, "on one stream");
    assert_eq!(status(&master), Status::Healthy);

    // It stops answering: its heartbeat is late, so the stream fails (recorded for the health
    // view), and the link opens new ones after its backoff, which fail the same way.
    memory.silent.store(true, Ordering::SeqCst);
    wait_for("the silent stream failed", || {
        seen(&master)
            .2
            .is_some_and(|e| e.contains("no answer within"))
    })
    .await;
    wait_for("new streams opened", || {
        memory.opened.load(Ordering::SeqCst) >= 3
    })
    .await;
    wait_for("the silent secondary unhealthy", || {
        status(&master) == Status::Unhealthy
    })
    .await;
    // It answers again: the next stream's first question is answered.
    memory.silent.store(false, Ordering::SeqCst);
    wait_for("healthy again", || status(&master) == Status::Healthy).await;
    assert_eq!(seen(&master).2, None, "an answer clears the last error");
    assert!(
        metrics
            .render()
            .contains("replog_replication_retries_total{secondary=\"memory\"}"),
        "the failures were counted"
    );
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_secondary_that_holds_its_answers_back_is_alive_through_its_pongs() {
    let memory = Memory::default();
    let (master, _, stop) = master_with(&memory, &FAST_HEALTH).await;
    wait_for("the first question answered", || seen(&master).0.is_some()).await;
    memory.delayed.store(true, Ordering::SeqCst);
    let append = {
        let master = master.clone();
        tokio::spawn(async move { master.append("late".into(), Some(2), None).await })
    };
    wait_for("the entry in flight", || {
        master.read(|core| core.link(0).in_flight()) == 1
    })
    .await;
    // Longer than it may stay silent: only the pongs keep it in contact, and healthy.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(status(&master), Status::Healthy);
        assert_eq!(
            master.read(|core| core.link(0).in_flight()),
            1,
            "no heartbeat meanwhile"
        );
    }
    memory.delayed.store(false, Ordering::SeqCst);
    let id = append.await.expect("the append's task").expect("committed");
    assert_eq!(id, 1);
    assert_eq!(memory.opened.load(Ordering::SeqCst), 1, "never failed");
    stop.cancel();
}
