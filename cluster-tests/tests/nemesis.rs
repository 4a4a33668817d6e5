//! A randomized fault run: concurrent clients append through every node while a nemesis kills,
//! pauses, wipes and stops nodes; at the end the cluster is healed and the whole history is
//! checked ([`cluster_tests::history`]). Two clusters: static roles (`master`, `secondary`),
//! and failover nodes (`replog` with etcd), where the master is any node and its loss makes
//! another take over.
//!
//! Settings (environment):
//! - `REPLOG_NEMESIS_SECONDS`: how long faults are injected (default 45; 30 in failover mode);
//! - `REPLOG_NEMESIS_SEED`: the seed of every random choice (default 1; `random` picks one and
//!   prints it). Process timing is not seeded, so a seed replays the same faults and requests,
//!   not the same interleaving;
//! - `REPLOG_NEMESIS_SKIP`: fault kinds left out, comma-separated (`kill`, `pause`,
//!   `wipe-secondary`, `wipe-master`, `term`).

use cluster_tests::failover::FailoverCluster;
use cluster_tests::history::{History, Violation};
use cluster_tests::workload::{list_of, Target, Workload};
use cluster_tests::{steady_health, Cluster, MasterOpts, Node, SecondaryOpts};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 6;

/// Longest wait for one answer: above `REPLICATION_TIMEOUT_SECONDS` and any pause.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a node may take to exit after SIGTERM: `SHUTDOWN_GRACE_SECONDS` (5), a second for
/// the last answers, and room for a loaded machine; compose's `stop_grace_period` is 10 s too.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);

/// A node started this recently gets no SIGTERM: it may not handle signals yet (the default
/// action, dying by the signal, says nothing about its shutdown).
const JUST_STARTED: Duration = Duration::from_secs(1);

/// Least time between two wiped disks: the first wiped node is back (at most 2.5 s) and caught
/// up long before, so no two disks are ever lost at once.
const WIPE_SPACING: Duration = Duration::from_secs(8);

/// How long the healed cluster may take to agree.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Short aborts, so that appends waiting on a dead secondary are decided within the run, and
/// short retries, so that a returning node is found at once.
const MASTER_SETTINGS: &[(&str, &str)] = &[
    ("REPLICATION_TIMEOUT_SECONDS", "3"),
    ("RETRY_BASE_MS", "10"),
    ("RETRY_MAX_MS", "200"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, down for a while, start.
    Kill,
    /// SIGSTOP for a while, SIGCONT.
    Pause,
    /// SIGKILL a secondary, delete its data directory, start it empty.
    WipeSecondary,
    /// SIGTERM (it must exit 0 in time), down for a while, start.
    Term,
    /// SIGKILL the master, delete its data directory, start it empty.
    WipeMaster,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::WipeSecondary => "wipe-secondary",
            Fault::Term => "term",
            Fault::WipeMaster => "wipe-master",
        }
    }
}

/// What the run is told by its environment.
struct Settings {
    seconds: u64,
    seed: u64,
    faults: Vec<Fault>,
}

impl Settings {
    fn from_env(default_seconds: u64) -> Settings {
        let seconds = match std::env::var("REPLOG_NEMESIS_SECONDS") {
            Ok(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("REPLOG_NEMESIS_SECONDS must be seconds, got {v:?}")),
            Err(_) => default_seconds,
        };
        let seed = match std::env::var("REPLOG_NEMESIS_SEED").as_deref() {
            Ok("random") => rand::rng().random(),
            Ok(v) => v.parse().unwrap_or_else(|_| {
                panic!("REPLOG_NEMESIS_SEED must be a u64 or `random`, got {v:?}")
            }),
            Err(_) => 1,
        };
        let skip = std::env::var("REPLOG_NEMESIS_SKIP").unwrap_or_default();
        let skip: Vec<&str> = skip
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut faults = vec![
            Fault::Kill,
            Fault::Pause,
            Fault::WipeSecondary,
            Fault::WipeMaster,
            Fault::Term,
        ];
        for name in &skip {
            assert!(
                faults.iter().any(|f| f.name() == *name),
                "REPLOG_NEMESIS_SKIP: unknown fault kind {name:?}"
            );
        }
        faults.retain(|f| !skip.contains(&f.name()));
        assert!(
            !faults.is_empty(),
            "REPLOG_NEMESIS_SKIP leaves no fault kind"
        );
        Settings {
            seconds,
            seed,
            faults,
        }
    }
}

/// A node's state as the nemesis left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Paused {
        until: Instant,
    },
    /// Sent SIGTERM; must exit by `deadline`, then stays down for `down`.
    Stopping {
        deadline: Instant,
        down: Duration,
    },
    Down {
        until: Instant,
    },
}

/// The fault injector: one fault at a time is started, every 1-3 s, on a node that is up; each
/// lasts a random while, so faults on different nodes overlap.
struct Nemesis<'a> {
    /// Every node; in static mode the master first.
    nodes: Vec<&'a mut Node>,
    /// Failover mode: any node may be master, so any fault may take the master (and a `w=1`
    /// acknowledgement with it), and a wipe may hit any node.
    failover: bool,
    rng: StdRng,
    faults: Vec<Fault>,
    states: Vec<State>,
    /// When each node was last started: a process has no SIGTERM handler in its first moments.
    started: Vec<Instant>,
    /// Each node's epoch: one more at every wipe of its disk (see `History::record_list`).
    epochs: Arc<Vec<AtomicU64>>,
    history: Arc<Mutex<History>>,
    start: Instant,
    /// What was done when, for the report.
    log: Vec<String>,
    /// Rules the processes broke (a node that exits by itself, or badly after SIGTERM).
    found: Vec<Violation>,
    /// When a disk was last wiped: the contract covers the loss of one node, its disk included,
    /// so a second disk is wiped only once the first node has had time to be caught up again.
    last_wipe: Option<Instant>,
}

impl Nemesis<'_> {
    fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i]
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>8.3}s {what}", self.start.elapsed().as_secs_f64());
        eprintln!("nemesis: {line}");
        self.log.push(line);
    }

    /// Ends the faults whose time has come, and notices nodes that exited on their own.
    fn heal_due(&mut self, now: Instant) {
        for i in 0..self.states.len() {
            match self.states[i] {
                State::Paused { until } if until <= now => {
                    self.node(i).cont();
                    self.states[i] = State::Up;
                    let name = self.node(i).name.clone();
                    self.note(format!("SIGCONT {name}"));
                }
                State::Down { until } if until <= now => {
                    self.node(i).start();
                    self.states[i] = State::Up;
                    self.started[i] = Instant::now();
                    let name = self.node(i).name.clone();
                    self.note(format!("start {name}"));
                }
                State::Stopping { deadline, down } => {
                    let name = self.node(i).name.clone();
                    let elapsed = self.start.elapsed();
                    match self.node(i).exited() {
                        Some(status) => {
                            if !status.success() {
                                self.found.push(Violation(format!(
                                    "{name} exited {status} after SIGTERM (at {elapsed:?})"
                                )));
                            }
                            self.note(format!("{name} exited ({status}), down for {down:?}"));
                        }
                        None if deadline <= now => {
                            self.found.push(Violation(format!(
                                "{name} did not exit within {TERM_TIMEOUT:?} of SIGTERM (at {elapsed:?})"
                            )));
                            self.node(i).kill();
                            self.note(format!("{name} still runs {TERM_TIMEOUT:?} after SIGTERM: SIGKILL, down for {down:?}"));
                        }
                        None => continue,
                    }
                    self.states[i] = State::Down { until: now + down };
                }
                State::Up => {
                    if let Some(status) = self.node(i).exited() {
                        let name = self.node(i).name.clone();
                        self.found.push(Violation(format!(
                            "{name} exited by itself ({status}) at {:?}",
                            self.start.elapsed()
                        )));
                        self.note(format!("{name} exited by itself ({status}); start it"));
                        self.node(i).start();
                        self.started[i] = Instant::now();
                    }
                }
                _ => {}
            }
        }
    }

    /// Starts one random fault on a node that is up, unless two nodes are already out.
    fn strike(&mut self) {
        let out = self.states.iter().filter(|s| **s != State::Up).count();
        if out >= 2 {
            return;
        }
        let fault = self.faults[self.rng.random_range(0..self.faults.len())];
        let candidates: Vec<usize> = (0..self.states.len())
            .filter(|i| self.states[*i] == State::Up)
            .filter(|i| match fault {
                _ if matches!(fault, Fault::WipeSecondary | Fault::WipeMaster)
                    && self.last_wipe.is_some_and(|t| t.elapsed() < WIPE_SPACING) =>
                {
                    false
                }
                Fault::WipeSecondary => *i > 0 || self.failover,
                Fault::WipeMaster => *i == 0 || self.failover,
                Fault::Term => self.started[*i].elapsed() >= JUST_STARTED,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let i = candidates[self.rng.random_range(0..candidates.len())];
        // A pause may outlast the master's UNHEALTHY_AFTER_MS (3 s): a stalled master, or a
        // secondary it must count out of the quorum.
        let longest = if fault == Fault::Pause { 4000 } else { 2500 };
        let lasts = Duration::from_millis(self.rng.random_range(200..longest));
        let until = Instant::now() + lasts;
        let name = self.node(i).name.clone();
        if self.failover {
            // Whichever node this is, it may be the master: a `w=1` acknowledgement it gave
            // may be lost with it (the README's failover guarantees).
            let at = self.start.elapsed();
            self.history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record_master_wipe(at);
        }
        match fault {
            Fault::Kill => {
                self.node(i).kill();
                self.states[i] = State::Down { until };
                self.note(format!("SIGKILL {name}, down for {lasts:?}"));
            }
            Fault::Pause => {
                self.node(i).stop();
                self.states[i] = State::Paused { until };
                self.note(format!("SIGSTOP {name} for {lasts:?}"));
            }
            Fault::WipeSecondary | Fault::WipeMaster => {
                self.last_wipe = Some(Instant::now());
                self.epochs[i].fetch_add(1, Ordering::SeqCst);
                self.node(i).kill();
                self.node(i).wipe_data();
                if i == 0 && !self.failover {
                    let at = self.start.elapsed();
                    self.history
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record_master_wipe(at);
                }
                self.states[i] = State::Down { until };
                self.note(format!(
                    "SIGKILL {name} and wipe its data directory, down for {lasts:?}"
                ));
            }
            Fault::Term => {
                let node = self.node(i);
                nix::sys::signal::kill(node.pid(), nix::sys::signal::Signal::SIGTERM)
                    .unwrap_or_else(|e| panic!("cannot send SIGTERM to {name}: {e}"));
                self.states[i] = State::Stopping {
                    deadline: Instant::now() + TERM_TIMEOUT,
                    down: lasts,
                };
                self.note(format!("SIGTERM {name}"));
            }
        }
    }

    /// Every node up: SIGCONT the paused, start the stopped (after those stopping exited).
    async fn heal_all(&mut self) {
        while self
            .states
            .iter()
            .any(|s| matches!(s, State::Stopping { .. }))
        {
            self.heal_due(Instant::now());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..self.states.len() {
            match self.states[i] {
                State::Paused { .. } => self.states[i] = State::Paused { until: self.start },
                State::Down { .. } => self.states[i] = State::Down { until: self.start },
                State::Up | State::Stopping { .. } => {}
            }
        }
        self.heal_due(Instant::now());
    }
}

/// Injected: for `REPLOG_NEMESIS_SECONDS`, every 1-3 s one of SIGKILL + restart, SIGSTOP +
/// SIGCONT, SIGKILL + wipe + restart of a secondary or of the master (never two disks within
/// `WIPE_SPACING`), SIGTERM + restart, each lasting 0.2-2.5 s (a pause up to 4 s), at most two
/// nodes out at once; meanwhile 6 clients append unique messages with a random `w` through
/// random nodes (durable master and secondaries, FSYNC always).
/// Checked, after every node is back and the cluster converged: the history rules of
/// [`cluster_tests::history`], and that every node exits 0 on SIGTERM and none exits by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_keep_every_promise() {
    let settings = Settings::from_env(45);
    let mut cluster = Cluster::start_with(
        vec![
            SecondaryOpts::new().durable(),
            SecondaryOpts::new().durable(),
        ],
        MasterOpts::new()
            .durable()
            .envs(&steady_health(MASTER_SETTINGS)),
    )
    .await;
    let targets: Vec<Target> = cluster
        .nodes()
        .map(|n| Target {
            name: n.name.clone(),
            appender: cluster.appender_on(n),
            list_url: n.url("/api/messages"),
        })
        .collect();
    let nodes: Vec<&mut Node> = std::iter::once(&mut cluster.master)
        .chain(cluster.secondaries.iter_mut())
        .collect();
    run(settings, nodes, false, &targets).await;
}

/// The same run against three failover nodes and a real etcd (`FAILOVER_TTL_MS` 2 s): every
/// fault may hit the master, which another node then replaces; a paused master must not
/// commit after its lease lapsed. `w=1` acknowledgements may be lost with a lost master (the
/// README says so), `w >= 2` ones never; no id ever shows two messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_with_failover_keep_every_promise() {
    let settings = Settings::from_env(30);
    let mut cluster = FailoverCluster::start(3, &[]).await;
    let targets: Vec<Target> = (0..cluster.nodes.len())
        .map(|i| Target {
            name: cluster.nodes[i].name.clone(),
            appender: cluster.appender_on(i),
            list_url: cluster.nodes[i].url("/api/messages"),
        })
        .collect();
    let nodes: Vec<&mut Node> = cluster.nodes.iter_mut().collect();
    run(settings, nodes, true, &targets).await;
}

/// Runs the clients, pollers and the nemesis for the settings' time, heals the cluster, waits
/// until it converged and checks the history.
async fn run(settings: Settings, nodes: Vec<&mut Node>, failover: bool, targets: &[Target]) {
    let faults: Vec<&str> = settings.faults.iter().map(|f| f.name()).collect();
    eprintln!(
        "nemesis: seed {} (REPLOG_NEMESIS_SEED={}), {} s of faults: {faults:?}",
        settings.seed, settings.seed, settings.seconds
    );
    let mut workload = Workload::start(targets, CLIENTS, settings.seed, 1..=3, ANSWER_TIMEOUT);
    let start = workload.start;
    let count = nodes.len();
    let mut nemesis = Nemesis {
        nodes,
        failover,
        rng: StdRng::seed_from_u64(settings.seed),
        faults: settings.faults.clone(),
        states: vec![State::Up; count],
        started: vec![start; count],
        epochs: workload.epochs.clone(),
        history: workload.history.clone(),
        start,
        log: Vec::new(),
        found: Vec::new(),
        last_wipe: None,
    };
    let end = start + Duration::from_secs(settings.seconds);
    let mut next = start + Duration::from_millis(nemesis.rng.random_range(1000..3000));
    while Instant::now() < end {
        let now = Instant::now();
        nemesis.heal_due(now);
        if now >= next {
            nemesis.strike();
            next = Instant::now() + Duration::from_millis(nemesis.rng.random_range(1000..3000));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nemesis.heal_all().await;
    nemesis.note("healed: every node runs".into());
    let (fault_log, mut found) = (nemesis.log, nemesis.found);

    let appends = workload.stop_clients(ANSWER_TIMEOUT * 2).await;

    // Converged: nothing pending on the master, and every node lists the same log.
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let list_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let finals = loop {
        let mut lists = Vec::new();
        let mut pending = None;
        for target in targets {
            lists.push((
                target.name.clone(),
                list_of(&list_client, &target.list_url).await,
            ));
            let health = target.list_url.replace("/api/messages", "/api/health");
            if let Some(health) = health_of(&list_client, &health).await {
                if health["role"] == "master" {
                    pending = health["pending"].as_u64();
                }
            }
        }
        let agreed = lists.iter().all(|(_, l)| l.is_some() && *l == lists[0].1);
        if (agreed && pending == Some(0)) || Instant::now() >= deadline {
            break lists;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (violations, count, polled) = workload.check(appends, &finals).await;
    found.extend(violations);
    eprintln!(
        "nemesis: seed {}: {} faults, answers {count:?}, {polled} lists polled, final log {} entries",
        settings.seed,
        fault_log.len(),
        finals[0].1.as_ref().map_or(0, Vec::len)
    );
    if !found.is_empty() {
        let shown: Vec<String> = found.iter().take(40).map(|v| format!("  - {v}")).collect();
        panic!(
            "seed {} (REPLOG_NEMESIS_SEED={}): {} violations:\n{}\nfaults:\n  {}",
            settings.seed,
            settings.seed,
            found.len(),
            shown.join("\n"),
            fault_log.join("\n  ")
        );
    }
}

/// `GET url` as JSON, if it answers.
async fn health_of(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}
