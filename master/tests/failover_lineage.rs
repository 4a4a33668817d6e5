//! Failover scenarios played step by step: master processes on different nodes in turn, each a
//! real [`Core`] of failover mode (quorum decisions, a journal) over its node's file, and the
//! other nodes real [`Replica`]s of failover mode over theirs. A node's file is the records it
//! was asked to make durable (written and synced at once here); a role change replays it, as
//! the node opening `DATA_DIR` for its next role does. Elections and recovery are played by
//! hand as the coordinator and `recovery::plan_failover` would decide them: the winner is the
//! most up-to-date of the nodes it hears, and it takes their decided frontier and decided
//! tombstones.
//!
//! What every scenario checks in the end: every node shows the same list as the master.

mod support;

use bytes::Bytes;
use replog_master::core::health::Thresholds;
use replog_master::core::link::Poll;
use replog_master::core::{Core, Effect, Progress, Settings};
use replog_node::log::{new_log_id, Log};
use replog_node::storage::Record;
use replog_secondary::replica::{Refusal, Replica};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::replay;

/// How long an append with a deadline waits for its write concern.
const TIMEOUT: Duration = Duration::from_secs(1);

struct MasterRole {
    core: Core,
    term: u64,
    /// The node behind each secondary index.
    peers: Vec<usize>,
    /// What each append's client was told last.
    told: BTreeMap<u64, Progress>,
}

enum Role {
    Secondary(Box<Replica>),
    Master(Box<MasterRole>),
}

struct Node {
    /// The node's log file: every record it wrote.
    disk: Vec<Record>,
    role: Role,
}

struct Cluster {
    nodes: Vec<Node>,
    now: Instant,
}

impl Cluster {
    /// `n` nodes holding nothing yet, all in the secondary role.
    fn new(n: usize) -> Self {
        let nodes = (0..n)
            .map(|_| {
                let disk = vec![Record::Meta {
                    log_id: String::new(),
                }];
                Node {
                    role: Role::Secondary(Box::new(opened(&disk))),
                    disk,
                }
            })
            .collect();
        Self {
            nodes,
            now: Instant::now(),
        }
    }

    fn master(&mut self, node: usize) -> &mut MasterRole {
        match &mut self.nodes[node].role {
            Role::Master(master) => master,
            Role::Secondary(_) => panic!("node {node} is not the master"),
        }
    }

    fn replica(&self, node: usize) -> &Replica {
        match &self.nodes[node].role {
            Role::Secondary(replica) => replica,
            Role::Master(_) => panic!("node {node} is the master"),
        }
    }

    /// Node `node` becomes master for `term`, having heard the nodes `heard` (a majority, itself
    /// included, none more up-to-date): it takes their decided frontier and decided
    /// tombstones, records its start and serves.
    fn elect(&mut self, node: usize, term: u64, heard: &[usize]) {
        let disk = &self.nodes[node].disk;
        let (mut log, mut starts) = replay(disk);
        if log.log_id().is_empty() && log.last_id() == 0 {
            // A new cluster: this node's file is made with a new identity.
            log = Log::new(new_log_id());
            self.nodes[node].disk.push(Record::Meta {
                log_id: log.log_id().to_owned(),
            });
        }
        let mut decided = log.decided();
        let mut tombstones = Vec::new();
        for &other in heard.iter().filter(|&&h| h != node) {
            let theirs = self.replica(other).log();
            if theirs.log_id() != log.log_id() {
                continue;
            }
            decided = decided.max(theirs.decided());
            tombstones.extend(theirs.tombstones_in(0, theirs.decided().min(log.last_id())));
        }
        for id in tombstones {
            if !log.is_tombstone(id) {
                log.tombstone(id);
                self.nodes[node].disk.push(Record::Tombstone { id });
            }
        }
        log.set_decided(decided.min(log.last_id()));
        let recovered = log.last_id();
        self.nodes[node].disk.push(Record::MasterStart {
            instance: term,
            recovered,
        });
        starts.push((term, recovered));
        let peers: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != node).collect();
        let settings = Settings {
            secondaries: peers.iter().map(|i| format!("node-{i}")).collect(),
            thresholds: Thresholds {
                suspect_after: Duration::from_secs(60),
                unhealthy_after: Duration::from_secs(120),
            },
            rpc_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_millis(10),
            retry_base: Duration::from_millis(1),
            retry_max: Duration::from_millis(1),
            replication_timeout: TIMEOUT,
            quorum_decisions: true,
            cache_bytes: None,
        };
        let core = Core::new(settings, log, true, &starts, self.now);
        self.nodes[node].role = Role::Master(Box::new(MasterRole {
            core,
            term,
            peers,
            told: BTreeMap::new(),
        }));
        self.settle(node);
    }

    /// The master role of `node` ends (deposed, or the node restarts): the node opens its file
    /// for the secondary role.
    fn depose(&mut self, node: usize) {
        self.master(node);
        let replica = opened(&self.nodes[node].disk);
        self.nodes[node].role = Role::Secondary(Box::new(replica));
    }

    /// Carries out the master's effects: records are written and synced at once.
    fn settle(&mut self, node: usize) {
        let Node { disk, role } = &mut self.nodes[node];
        let Role::Master(master) = role else {
            panic!("node {node} is not the master")
        };
        loop {
            let effects = master.core.take_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::Persist(record) => {
                        disk.push(record.clone());
                        match record {
                            Record::Entry { id, .. } => {
                                master.core.on_written(id);
                                master.core.on_persisted(Some(id), &[]);
                            }
                            Record::Tombstone { id } => master.core.on_persisted(None, &[id]),
                            _ => {}
                        }
                    }
                    Effect::Answer { id, progress } => {
                        master.told.insert(id, progress);
                    }
                    Effect::Wake(_) | Effect::Timer => {}
                }
            }
        }
    }

    /// A client appends `message` on master `node` with write concern `w`, waiting at most
    /// [`TIMEOUT`] if `deadline`.
    fn append(&mut self, node: usize, message: &str, w: usize, deadline: bool) -> u64 {
        let now = self.now;
        let master = self.master(node);
        let deadline = deadline.then(|| now + TIMEOUT);
        let id = master
            .core
            .append(Bytes::from(message.to_owned()), w, deadline);
        self.settle(node);
        id
    }

    /// Time passes on master `node`: what expired is aborted.
    fn tick(&mut self, node: usize, by: Duration) {
        self.now += by;
        let now = self.now;
        self.master(node).core.tick(now, |_| true);
        self.settle(node);
    }

    /// Master `node` replicates to node `to` until `to` holds and has decided all it can, as
    /// its link decides: the stream opened, the first question, then batches with the
    /// decisions; each request delivered in order and each answer taken. When the link has
    /// nothing to send, the clock moves on to its next heartbeat.
    fn ship(&mut self, node: usize, to: usize) -> Result<(), Refusal> {
        for _ in 0..50 {
            let now = self.now;
            let master = self.master(node);
            let index = master.peers.iter().position(|&p| p == to).expect("a peer");
            let requests = match master.core.poll_link(index, now, false) {
                Poll::Open => {
                    master.core.link_opened(index, now);
                    continue;
                }
                Poll::Send(requests) => requests,
                other => panic!("link to node {to}: {other:?}"),
            };
            if requests.is_empty() {
                let wait = master.core.link(index).wait();
                self.now = wait.heartbeat_at.expect("an idle stream's heartbeat");
                continue;
            }
            let Node { disk, role } = &mut self.nodes[to];
            let Role::Secondary(replica) = role else {
                panic!("node {to} is not a secondary")
            };
            let mut answers = Vec::new();
            for request in requests {
                let quiet = request.quiet && request.entries.is_empty();
                disk.extend(replica.receive(request)?);
                if !quiet {
                    answers.push(replica.state());
                }
            }
            let state = replica.state();
            let master = self.master(node);
            for answer in &answers {
                master
                    .core
                    .link_reply(index, answer, now)
                    .expect("an answer owed, of this log");
            }
            self.settle(node);
            let master = self.master(node);
            let follows = master.core.ledger().follower(index).master_instance == Some(master.term);
            let ledger = master.core.ledger();
            if follows && state.held >= ledger.written() && state.decided >= ledger.log().decided()
            {
                return Ok(());
            }
        }
        panic!("node {to} did not catch up with master {node}");
    }

    /// Master `node` replicates to each of `to`, then once more to each, so that what the
    /// later ones held is decided on the earlier ones too.
    fn spread(&mut self, node: usize, to: &[usize]) {
        for _ in 0..2 {
            for &other in to {
                self.ship(node, other).expect("taken");
            }
        }
    }

    /// What node `node` shows, as texts.
    fn shown(&self, node: usize) -> Vec<String> {
        let page = match &self.nodes[node].role {
            Role::Master(master) => master
                .core
                .ledger()
                .log()
                .try_visible(1, usize::MAX)
                .expect("page"),
            Role::Secondary(replica) => replica.log().try_visible(1, usize::MAX).expect("page"),
        };
        page.into_iter()
            .map(|m| String::from_utf8_lossy(&m.message).into_owned())
            .collect()
    }

    /// Every node shows what master `node` shows, which is `expected`.
    fn all_show(&self, node: usize, expected: &[&str]) {
        assert_eq!(self.shown(node), expected, "master {node}");
        for other in 0..self.nodes.len() {
            assert_eq!(self.shown(other), expected, "node {other}");
        }
    }
}

/// A replica of failover mode over a node's file, as the secondary role opens it.
fn opened(disk: &[Record]) -> Replica {
    let (log, starts) = replay(disk);
    Replica::new(log).with_starts(&starts).in_failover(true)
}

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const D: usize = 3;
const E: usize = 4;

#[test]
fn a_term_that_served_a_minority_leaves_nothing_behind_on_its_followers() {
    let mut c = Cluster::new(5);
    c.elect(A, 1, &[A, B, C, D, E]);
    for message in ["a1", "a2", "a3"] {
        c.append(A, message, 1, false);
    }
    c.spread(A, &[B, C, D, E]);
    c.all_show(A, &["a1", "a2", "a3"]);
    // Two more reach d only: held by two of five, never decided.
    c.append(A, "a4", 1, false);
    c.append(A, "a5", 1, false);
    c.ship(A, D).expect("taken");
    assert_eq!(c.shown(A), ["a1", "a2", "a3"]);
    c.depose(A);

    // Term 2 at b, elected with c and e (all three hold ids 1..=3 of process 1). It serves b
    // and c only: its ids 4 and 5 are held by two of five, never decided.
    c.elect(B, 2, &[B, C, E]);
    c.append(B, "x4", 1, false);
    c.append(B, "x5", 1, false);
    c.ship(B, C).expect("taken");
    assert_eq!(c.shown(C), ["a1", "a2", "a3"]);
    c.depose(B);

    // Term 3 at d, elected with a and e: it holds ids 4 and 5 of process 1 and never heard of
    // term 2.
    c.elect(D, 3, &[D, A, E]);
    c.append(D, "d6", 1, false);
    c.spread(D, &[A, E]);
    assert_eq!(c.shown(D), ["a1", "a2", "a3", "a4", "a5", "d6"]);
    // b and c hold term 2's ids 4 and 5: they drop them and take term 3's.
    for node in [B, C] {
        c.ship(D, node).expect("taken");
    }
    c.all_show(D, &["a1", "a2", "a3", "a4", "a5", "d6"]);

    // Term 4 at c, which recorded term 2 but not as what it kept: the followers of term 3
    // keep what they decided.
    c.depose(D);
    c.elect(C, 4, &[C, B, E]);
    c.append(C, "c7", 1, false);
    c.spread(C, &[A, B, D, E]);
    c.all_show(C, &["a1", "a2", "a3", "a4", "a5", "d6", "c7"]);
}

#[test]
fn a_deposed_master_drops_the_tombstone_it_never_confirmed() {
    let mut c = Cluster::new(3);
    c.elect(A, 1, &[A, B, C]);
    c.append(A, "a1", 1, false);
    c.spread(A, &[B, C]);
    // m2 waits for all three nodes; m3 for none. Only b receives them.
    let m2 = c.append(A, "m2", 3, true);
    c.append(A, "m3", 1, false);
    c.ship(A, B).expect("taken");
    assert_eq!(c.shown(A), ["a1"], "m2 is pending");
    // m2 times out: its tombstone is on a's disk only, its client is not told 500.
    c.tick(A, TIMEOUT * 2);
    assert_ne!(
        c.master(A).told.get(&m2),
        Some(&Progress::Decided(replog_master::core::Outcome::Aborted))
    );
    c.depose(A);
    // What a's file calls decided stops below the tombstone.
    assert_eq!(c.replica(A).log().decided(), 1);
    assert_eq!(c.shown(A), ["a1"]);

    // Term 2 at b, elected with c: it holds m2 and commits it.
    c.elect(B, 2, &[B, C]);
    c.spread(B, &[C, A]);
    c.all_show(B, &["a1", "m2", "m3"]);

    // a leads again (term 3): its file names process 1 twice; the lineage it sends lists it
    // once, and the others follow.
    c.depose(B);
    c.elect(A, 3, &[A, B, C]);
    c.append(A, "a4", 1, false);
    c.spread(A, &[B, C]);
    c.all_show(A, &["a1", "m2", "m3", "a4"]);
}

#[test]
fn a_deposed_master_shows_what_it_showed() {
    let mut c = Cluster::new(3);
    c.elect(A, 1, &[A, B, C]);
    for message in ["a1", "a2"] {
        c.append(A, message, 1, false);
    }
    c.ship(A, B).expect("taken");
    assert_eq!(c.shown(A), ["a1", "a2"]);
    c.depose(A);
    assert_eq!(c.shown(A), ["a1", "a2"]);
}
