//! A small harness that runs a real replog cluster (one `master`, N `secondary` processes) on
//! free loopback ports, for end-to-end tests in `tests/`.
//!
//! The style follows tokio's mini-redis tests: every test starts its own servers, talks to them
//! over the real wire protocol, and asserts on what comes back. Nothing is mocked, so a test
//! proves what a user with `curl` would see.
//!
//! Rules the harness follows, and that tests built on it should follow:
//!
//! - **Own ports, own processes.** Every [`Cluster`] picks fresh ports, so tests run in parallel
//!   (cargo-nextest runs each test in its own process).
//! - **No process left behind.** Every child is held by a [`Process`], which kills it (and its
//!   process group) on `Drop`, also while a failing test unwinds, and which the kernel kills if
//!   the test process dies first.
//! - **Logs kept for the post-mortem.** Each node writes stdout and stderr to
//!   `target/cluster-tests/<test>/<node>.log`; when a test panics, the cluster prints those paths
//!   and the last lines of each log.
//! - **No hopeful sleeps.** Anything that depends on timing waits for a condition with a deadline
//!   ([`wait_until`], [`wait_for`]) and fails with a message that says what it waited for.
//!
//! The benchmark (`bench/`) and the browser tests start their processes with the same
//! [`Process`], on ports from the same [`free_ports`], and wait with the same [`try_wait_for`].

pub mod etcd;
pub mod failover;
pub mod history;
pub mod process;
pub mod sse;
pub mod workload;

pub use process::{Exited, Process};

use serde_json::{json, Value};
use std::fmt::Display;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use reqwest::StatusCode;

/// How long a freshly started cluster may take to be up and in contact.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a node may take to drain and exit after SIGTERM.
pub const PROMPTLY: Duration = Duration::from_secs(3);

/// The exact detail the master answers when an append is not committed in time.
pub const REPLICATION_FAILED: &str = "Replication failed. Message not committed.";

/// Master settings for short heartbeats, so that its view of each secondary follows the
/// processes within a fraction of a second (the defaults take seconds, to ride out hiccups in
/// production; tests would only wait longer).
pub const FAST_HEALTH: [(&str, &str); 3] = [
    ("HEARTBEAT_INTERVAL_MS", "100"),
    ("SUSPECT_AFTER_MS", "300"),
    ("UNHEALTHY_AFTER_MS", "1000"),
];

/// Master settings for tests that are not about health states: heartbeats as in
/// [`FAST_HEALTH`], but thresholds wide enough that a machine starved of CPU (2 cores, other
/// builds running) does not make the master count a live secondary unhealthy and lose its quorum
/// in the middle of a test about something else.
pub const STEADY_HEALTH: [(&str, &str); 3] = [
    ("HEARTBEAT_INTERVAL_MS", "100"),
    ("SUSPECT_AFTER_MS", "1000"),
    ("UNHEALTHY_AFTER_MS", "3000"),
];

/// [`STEADY_HEALTH`] plus `extra` master settings.
pub fn steady_health<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    STEADY_HEALTH.iter().chain(extra).copied().collect()
}

/// [`FAST_HEALTH`] plus `extra` master settings.
pub fn fast_health<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    FAST_HEALTH.iter().chain(extra).copied().collect()
}

/// The binaries under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Master,
    Secondary,
    /// A failover node (`replog`, crate replog-failover).
    Replog,
}

impl Binary {
    fn file_name(self) -> &'static str {
        match self {
            Binary::Master => "master",
            Binary::Secondary => "secondary",
            Binary::Replog => "replog",
        }
    }

    /// The binary built by `cargo build --workspace --bins` for the profile the tests run in.
    ///
    /// Integration tests run from `target/<profile>/deps/<test>-<hash>`; Cargo puts the
    /// workspace binaries one level up, in `target/<profile>/`. Cargo does not build other
    /// packages' binaries for a test run, hence the explicit build step.
    pub fn path(self) -> PathBuf {
        let path = profile_dir().join(self.file_name());
        if !path.is_file() {
            panic!(
                "{} not found: run `cargo build --workspace --bins` before the cluster tests \
                 (same profile as the tests)",
                path.display()
            );
        }
        path
    }
}

/// `target/<profile>/`, the directory two levels above the test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    let profile = if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().expect("target/<profile>")
    } else {
        deps
    };
    profile.to_path_buf()
}

/// The directory that keeps the node logs of one test: `target/cluster-tests/<test>/`.
///
/// The test's name comes from the current thread, which libtest and nextest name after the
/// test (`#[tokio::test]` runs the test body on that thread).
pub fn log_dir() -> PathBuf {
    let name = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(|name| name.replace("::", "-"))
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    let target = profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(profile_dir);
    target.join("cluster-tests").join(name)
}

/// [`log_dir`], emptied of an earlier run's logs, and held by this process until it exits.
///
/// Another process may run the same test at this moment (a second terminal, someone else's run
/// of the whole suite in the same checkout): its nodes keep their logs and data directories
/// there. A run that finds the directory held takes `<test>-<pid>/` instead, so that two
/// clusters never delete or share each other's data.
pub fn fresh_log_dir() -> PathBuf {
    let mut dir = log_dir();
    if !hold(&dir) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        dir = dir.with_file_name(format!("{name}-{}", std::process::id()));
        hold(&dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Locks `<dir>.lock` for the rest of this process's life (the lock goes with the process, even
/// a killed one); `false` if another process holds it. A lock that cannot be taken for another
/// reason counts as held: the directory is then used as if no lock existed.
fn hold(dir: &Path) -> bool {
    static HELD: std::sync::Mutex<Vec<(PathBuf, std::fs::File)>> =
        std::sync::Mutex::new(Vec::new());
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if held.iter().any(|(path, _)| path == dir) {
        return true;
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return true;
    };
    let _ = std::fs::create_dir_all(parent);
    let lock = parent.join(format!("{}.lock", name.to_string_lossy()));
    let Ok(file) = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
    else {
        return true;
    };
    match file.try_lock() {
        Ok(()) => {
            held.push((dir.to_path_buf(), file));
            true
        }
        Err(std::fs::TryLockError::WouldBlock) => false,
        Err(std::fs::TryLockError::Error(_)) => true,
    }
}

/// A port that was free a moment ago: bind port 0 on loopback, read the port, let it go.
///
/// Another process could take it before the server binds it; the server then exits with
/// "Address already in use" ([`Exited::port_taken`]), loudly rather than silently, and
/// [`on_free_ports`] starts over on new ports.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports (panics if the system has none).
pub fn free_ports(n: usize) -> Vec<u16> {
    try_free_ports(n).unwrap_or_else(|e| panic!("{n} free loopback ports: {e}"))
}

/// `n` distinct free loopback ports. All are held bound until every one is chosen: ports
/// picked one after another can repeat, since the kernel may hand a just-released port out
/// again.
pub fn try_free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// How many times [`on_free_ports`] starts over.
const PORT_ATTEMPTS: usize = 3;

/// Runs `start`, which picks its ports with [`free_ports`] and starts servers on them, again on
/// new ports while a server exits because another process took its port first
/// ([`Exited::port_taken`]), so that parallel tests do not flake. Panics on any other exit.
pub async fn on_free_ports<T, F, Fut>(mut start: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Exited>>,
{
    for attempt in 1..=PORT_ATTEMPTS {
        match start().await {
            Ok(started) => return started,
            Err(exited) if exited.port_taken() && attempt < PORT_ATTEMPTS => {
                eprintln!(
                    "{} lost its port to another process; starting over",
                    exited.name
                );
            }
            Err(exited) if exited.port_taken() => {
                panic!("{exited}\n(its port was taken {PORT_ATTEMPTS} times)")
            }
            Err(exited) => panic!("{exited}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// One node process: its command line (kept, so it can be restarted with the same settings on
/// the same ports) and, while it runs, its [`Process`].
pub struct Node {
    pub name: String,
    pub binary: Binary,
    pub http_port: u16,
    /// The internal replication port (secondaries only).
    pub grpc_port: Option<u16>,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    process: Option<Process>,
}

impl Node {
    /// Describes a node without starting it.
    pub fn new(
        name: &str,
        binary: Binary,
        http_port: u16,
        grpc_port: Option<u16>,
        env: Vec<(String, String)>,
        dir: &Path,
    ) -> Node {
        Node {
            name: name.to_owned(),
            binary,
            http_port,
            grpc_port,
            env,
            log_path: dir.join(format!("{name}.log")),
            process: None,
        }
    }

    /// Starts the process. Its environment is only what the node was described with (plus
    /// `RUST_LOG`, default `info`), so that settings of the shell running the tests cannot leak
    /// in. Output is appended to the node's log file, across restarts.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.name);
        let mut command = Command::new(self.binary.path());
        command
            .env_clear()
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Plain text logs: the files are read by people, not terminals.
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let process = Process::spawn(&self.name, command, &self.log_path)
            .unwrap_or_else(|e| panic!("{e} (log: {})", self.log_path.display()));
        self.process = Some(process);
    }

    /// The exit status if the process has ended on its own (it is then no longer running).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.process.as_mut()?.exited()?;
        self.process = None;
        Some(status)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    fn process(&self) -> &Process {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        self.process().pid()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        self.process()
            .signal(signal)
            .unwrap_or_else(|e| panic!("cannot send {signal} to {}: {e}", self.name));
    }

    /// SIGKILL, and reap the child: the node is gone at once, as after a crash.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// SIGSTOP: the process stays, its sockets stay open, but it answers nothing (a hung node).
    ///
    /// `kill` returns before the kernel has stopped every thread: on a loaded machine the node
    /// could still answer a request sent right after. So this waits until `/proc` shows every
    /// thread stopped (state `T`), and only then is the node truly hung.
    pub fn stop(&self) {
        self.process().pause();
    }

    /// SIGCONT: a stopped node resumes where it was.
    pub fn cont(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// SIGTERM, then wait for the exit (at most `timeout`; panics after it).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut process = self.process.take().expect("running");
        process.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?} of SIGTERM (log: {})",
                self.name,
                self.log_path.display()
            )
        })
    }

    /// Kills the node if it runs and starts it again: same settings, same ports.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// Kills the node if it runs, deletes its `DATA_DIR` (if it has one) and starts it again:
    /// it comes back with an empty log, as a new machine would. A node without `DATA_DIR` is
    /// empty after any restart.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.wipe_data();
        self.start();
    }

    /// Deletes the node's `DATA_DIR` (nothing if it has none). The node must not run.
    pub fn wipe_data(&self) {
        assert!(!self.is_running(), "{} runs: stop it first", self.name);
        if let Some(dir) = self.data_dir() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("cannot delete {}: {e}", dir.display()),
            }
        }
    }

    /// The value of one of the node's settings.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces) a setting for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Removes a setting for the next start; returns its value. Removing `DATA_DIR` puts the
    /// node in memory mode (its files stay on disk).
    pub fn remove_env(&mut self, key: &str) -> Option<String> {
        let old = self.env(key).map(str::to_owned);
        self.env.retain(|(k, _)| k != key);
        old
    }

    /// The node's `DATA_DIR`, if it keeps its log on disk.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.env("DATA_DIR").map(PathBuf::from)
    }

    /// The active (last) segment file of the node's log, `DATA_DIR/segments/<first id>.log`:
    /// where the latest records are (panics if the node has no `DATA_DIR` or no segment).
    pub fn log_file(&self) -> PathBuf {
        let segments = self
            .data_dir()
            .unwrap_or_else(|| panic!("{} has no DATA_DIR", self.name))
            .join("segments");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&segments)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", segments.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
            .collect();
        files.sort();
        files
            .pop()
            .unwrap_or_else(|| panic!("{} holds no segment", segments.display()))
    }

    /// The node's log output since its latest start (the harness marks each start).
    pub fn log_since_start(&self) -> String {
        process::since_start(self.log())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// `127.0.0.1:<grpc>`, as the master's `SECONDARIES` lists it.
    pub fn grpc_endpoint(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.grpc_port.expect("a secondary has a gRPC port")
        )
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The node's log file so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// How to start one secondary.
#[derive(Debug, Clone, Default)]
pub struct SecondaryOpts {
    env: Vec<(String, String)>,
    not_started: bool,
    durable: bool,
}

impl SecondaryOpts {
    pub fn new() -> Self {
        Self::default()
    }

    /// An extra setting, e.g. `("DELAY_SECONDS", "1")` or `("ERROR_RATE", "0.3")`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Ports are chosen and the master lists it, but the process is not started (start it later
    /// with `cluster.secondaries[i].start()`), and the cluster does not wait for it.
    pub fn not_started(mut self) -> Self {
        self.not_started = true;
        self
    }

    /// Keeps the log on disk: `DATA_DIR` is `<log_dir>/<name>-data` (see [`Node::data_dir`]).
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }
}

/// How to start the master (for [`Cluster::start_with`]).
#[derive(Debug, Clone, Default)]
pub struct MasterOpts {
    env: Vec<(String, String)>,
    durable: bool,
}

impl MasterOpts {
    pub fn new() -> Self {
        Self::default()
    }

    /// An extra setting, e.g. `("REPLICATION_TIMEOUT_SECONDS", "0")`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Several extra settings, e.g. [`FAST_HEALTH`].
    pub fn envs(mut self, pairs: &[(&str, &str)]) -> Self {
        self.env.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self
    }

    /// Keeps the log on disk: `DATA_DIR` is `<log_dir>/master-data`.
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }
}

/// The `DATA_DIR` of a durable node: `<dir>/<name>-data`.
fn data_dir_setting(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(format!("{name}-data"));
    ("DATA_DIR".to_owned(), path.display().to_string())
}

/// A master and its secondaries, plus an HTTP client to talk to them.
pub struct Cluster {
    pub master: Node,
    pub secondaries: Vec<Node>,
    pub client: reqwest::Client,
    pub dir: PathBuf,
}

impl Cluster {
    /// Starts the secondaries (`HOST=127.0.0.1`, free `HTTP_PORT` and `GRPC_PORT`, `MASTER`
    /// pointing at the master, plus each one's extra settings), then the master (`HOST=127.0.0.1`, free `HTTP_PORT`, `SECONDARIES`
    /// listing every secondary, started or not, plus `master_env`), and waits until the cluster
    /// is in a known state: see [`Cluster::wait_ready`].
    pub async fn start(secondaries: Vec<SecondaryOpts>, master_env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(secondaries, MasterOpts::new().envs(master_env)).await
    }

    /// [`Cluster::start`] with the master described by [`MasterOpts`] (e.g. durable).
    ///
    /// A node whose port another process took first exits at once; the whole cluster then
    /// starts again on new ports ([`on_free_ports`]).
    pub async fn start_with(secondaries: Vec<SecondaryOpts>, master: MasterOpts) -> Cluster {
        let (secondaries, master) = (&secondaries, &master);
        let cluster = on_free_ports(move || async move {
            let mut cluster = Cluster::launch(secondaries, master);
            cluster.first_contact().await?;
            Ok(cluster)
        })
        .await;
        cluster.wait_ready().await;
        cluster
    }

    /// Starts the processes of a cluster on fresh ports, without waiting for anything.
    fn launch(secondaries: &[SecondaryOpts], master_opts: &MasterOpts) -> Cluster {
        let dir = fresh_log_dir();
        // All ports at once, so that they differ from one another; the master's is known
        // before the secondaries start, as they forward appends to it (`MASTER`).
        let ports = free_ports(1 + 2 * secondaries.len());
        let master_http = ports[0];
        let mut nodes = Vec::new();
        for (i, opts) in secondaries.iter().enumerate() {
            let (http, grpc) = (ports[1 + 2 * i], ports[2 + 2 * i]);
            let mut env = vec![
                ("HOST".to_owned(), "127.0.0.1".to_owned()),
                ("HTTP_PORT".to_owned(), http.to_string()),
                ("GRPC_PORT".to_owned(), grpc.to_string()),
                ("MASTER".to_owned(), format!("127.0.0.1:{master_http}")),
            ];
            let name = format!("secondary-{}", i + 1);
            if opts.durable {
                env.push(data_dir_setting(&dir, &name));
            }
            env.extend(opts.env.iter().cloned());
            let mut node = Node::new(&name, Binary::Secondary, http, Some(grpc), env, &dir);
            if !opts.not_started {
                node.start();
            }
            nodes.push(node);
        }
        let listed: Vec<String> = nodes.iter().map(Node::grpc_endpoint).collect();
        let mut env = vec![
            ("HOST".to_owned(), "127.0.0.1".to_owned()),
            ("HTTP_PORT".to_owned(), master_http.to_string()),
        ];
        // A master without secondaries has no SECONDARIES at all (an empty value is invalid).
        if !listed.is_empty() {
            env.push(("SECONDARIES".to_owned(), listed.join(",")));
        }
        if master_opts.durable {
            env.push(data_dir_setting(&dir, "master"));
        }
        env.extend(master_opts.env.iter().cloned());
        let mut master = Node::new("master", Binary::Master, master_http, None, env, &dir);
        master.start();

        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
        Cluster {
            master,
            secondaries: nodes,
            client,
            dir,
        }
    }

    /// Waits until every started node answers `GET /health`; `Err` if one exits first.
    async fn first_contact(&mut self) -> Result<(), Exited> {
        let deadline = Instant::now() + START_TIMEOUT;
        let nodes = std::iter::once(&mut self.master).chain(self.secondaries.iter_mut());
        for node in nodes {
            let url = node.url("/health");
            if let Some(process) = node.process.as_mut() {
                let left = deadline.saturating_duration_since(Instant::now());
                process.wait_answering(&self.client, &url, left).await?;
            }
        }
        Ok(())
    }

    /// Waits until every running node answers `GET /health` with 200 and the master's
    /// `GET /api/health` shows every running secondary `healthy` *and contacted* (a secondary
    /// the master never reached also reads `healthy` until `SUSPECT_AFTER_MS` passes, so the
    /// status alone proves nothing). Secondaries not running are not waited for.
    pub async fn wait_ready(&self) {
        for node in self.running() {
            let url = node.url("/health");
            wait_until(
                START_TIMEOUT,
                format!("{} GET /health = 200", node.name),
                || {
                    let request = self.client.get(&url).send();
                    async move { request.await.is_ok_and(|r| r.status() == StatusCode::OK) }
                },
            )
            .await;
        }
        let running: &Vec<String> = &self
            .secondaries
            .iter()
            .filter(|s| s.is_running())
            .map(Node::grpc_endpoint)
            .collect();
        wait_until(
            START_TIMEOUT,
            format!("master /api/health shows {running:?} healthy and contacted"),
            || async move {
                let Some(health) = self.try_health(&self.master).await else {
                    return false;
                };
                // A master that has not yet asked the secondaries what they hold (or, with a
                // complete log, not yet heard a majority) takes nothing: not ready. One that has
                // asked and waits for a secondary that is down is as ready as it will get.
                let starting = health["read_only_reason"].as_str().is_some_and(|r| {
                    r.starts_with("starting:")
                        || r.contains("asking the secondaries what they hold")
                });
                !starting
                    && running.iter().all(|address| {
                        secondary_health(&health, address).is_some_and(|s| {
                            s["status"] == "healthy" && s["last_contact_ms_ago"].is_u64()
                        })
                    })
            },
        )
        .await;
    }

    /// The master, then every secondary that runs.
    pub fn running(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master).chain(self.secondaries.iter().filter(|s| s.is_running()))
    }

    /// Every node, the master first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master).chain(self.secondaries.iter())
    }

    /// A cheap, `'static` handle that appends to the master, for spawned tasks.
    pub fn appender(&self) -> Appender {
        Appender {
            client: self.client.clone(),
            url: self.master.url("/api/messages"),
        }
    }

    /// Like [`Cluster::appender`], but posting to `node` (a secondary forwards to the master).
    pub fn appender_on(&self, node: &Node) -> Appender {
        Appender {
            client: self.client.clone(),
            url: node.url("/api/messages"),
        }
    }

    /// `POST /api/messages` on the master with `{"message": msg, "w": w}` (`w` left out if
    /// `None`).
    pub async fn append(&self, message: &str, w: Option<u64>) -> (StatusCode, Value) {
        self.appender().append(message, w).await
    }

    /// `POST /api/messages` on the master with this exact body and `Content-Type` (none if
    /// `None`).
    pub async fn append_raw(&self, body: &str, content_type: Option<&str>) -> (StatusCode, Value) {
        self.appender().append_raw(body, content_type).await
    }

    /// `GET /api/messages` on `node`: its visible log as `(id, message)` pairs.
    pub async fn messages(&self, node: &Node) -> Vec<(u64, String)> {
        let url = node.url("/api/messages");
        let body: Value = self
            .client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        body["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {url}: no `messages` array in {body}"))
            .iter()
            .map(|m| {
                let id = m["id"].as_u64().unwrap_or_else(|| panic!("bad id in {m}"));
                let text = m["message"]
                    .as_str()
                    .unwrap_or_else(|| panic!("bad message in {m}"));
                (id, text.to_owned())
            })
            .collect()
    }

    /// The status `GET /api/messages` on `node` answers (panics if it does not answer).
    pub async fn list_status(&self, node: &Node) -> StatusCode {
        self.client
            .get(node.url("/api/messages"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /api/messages on {}: {e}", node.name))
            .status()
    }

    /// `GET /api/messages` on `node`, or `None` if it does not answer 200 with a list (e.g. while
    /// it restarts).
    pub async fn try_messages(&self, node: &Node) -> Option<Vec<(u64, String)>> {
        try_list(&self.client, &node.url("")).await
    }

    /// Replaces the HTTP client (and so its pool of connections): call it after a node was
    /// restarted, so that no request goes out on a connection to the process that is gone.
    pub fn renew_client(&mut self) {
        self.client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
    }

    /// `last_id` from `node`'s `/api/health` (on a secondary: the highest id it holds).
    pub async fn last_id(&self, node: &Node) -> u64 {
        let health = self.health(node).await;
        health["last_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no `last_id` in {} /api/health: {health}", node.name))
    }

    /// The status (`healthy`, `suspected`, `unhealthy`) of `secondary` in the master's
    /// `/api/health`.
    pub async fn status_of(&self, secondary: &Node) -> String {
        let health = self.health(&self.master).await;
        let entry = secondary_health(&health, &secondary.grpc_endpoint())
            .unwrap_or_else(|| panic!("no entry for {} in {health}", secondary.name));
        entry["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no status in {entry}"))
            .to_owned()
    }

    /// Waits until every running node lists exactly `expected`, ids included; a node that does
    /// not answer (yet) counts as not there yet.
    pub async fn wait_converged(&self, timeout: Duration, expected: &[(u64, String)]) {
        let mut last = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            last.clear();
            let mut all_equal = true;
            for node in self.running() {
                let list = self.try_messages(node).await;
                all_equal &= list.as_deref() == Some(expected);
                last.push((node.name.clone(), list));
            }
            if all_equal {
                return;
            }
            if Instant::now() >= deadline {
                let summary: Vec<String> = last
                    .iter()
                    .map(|(name, list)| match list {
                        None => format!("{name}: no answer"),
                        Some(list) => format!(
                            "{name}: {} entries, first difference at index {:?}, last {:?}",
                            list.len(),
                            list.iter().zip(expected).position(|(a, b)| a != b),
                            list.last()
                        ),
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting until every node lists the expected {} \
                     entries (last {:?}); {}",
                    expected.len(),
                    expected.last(),
                    summary.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The visible log of every running node, the master first.
    pub async fn all_messages(&self) -> Vec<(String, Vec<(u64, String)>)> {
        let mut all = Vec::new();
        for node in self.running() {
            all.push((node.name.clone(), self.messages(node).await));
        }
        all
    }

    /// `GET /api/health` on `node` (the master's cluster view, or a secondary's own).
    pub async fn health(&self, node: &Node) -> Value {
        self.try_health(node)
            .await
            .unwrap_or_else(|| panic!("GET {} failed", node.url("/api/health")))
    }

    /// `GET /api/health` on `node`, or `None` if it does not answer 200 with JSON.
    /// `GET url`: the status and the JSON body (panics if there is no JSON answer).
    pub async fn get_json(&self, url: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let body = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {status}, not JSON: {e}"));
        (status, body)
    }

    pub async fn try_health(&self, node: &Node) -> Option<Value> {
        let response = self.client.get(node.url("/api/health")).send().await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        response.json().await.ok()
    }

    /// The highest id a secondary holds contiguously: its [`Cluster::last_id`].
    pub async fn held(&self, secondary: &Node) -> u64 {
        self.last_id(secondary).await
    }

    /// Waits until every running node shows exactly `expected` (messages in this order).
    pub async fn wait_all_show(&self, timeout: Duration, expected: &[&str]) {
        wait_until(
            timeout,
            format!("every node shows exactly {expected:?}"),
            || async move {
                self.all_messages().await.iter().all(|(_, list)| {
                    list.iter()
                        .map(|(_, m)| m.as_str())
                        .eq(expected.iter().copied())
                })
            },
        )
        .await;
    }
}

/// Appends to the master; clone it into as many tasks as needed.
#[derive(Clone)]
pub struct Appender {
    client: reqwest::Client,
    url: String,
}

impl Appender {
    /// `POST /api/messages` with `{"message": msg, "w": w}` (`w` left out if `None`).
    pub async fn append(&self, message: &str, w: Option<u64>) -> (StatusCode, Value) {
        let mut body = json!({ "message": message });
        if let Some(w) = w {
            body["w"] = json!(w);
        }
        self.append_raw(&body.to_string(), Some("application/json"))
            .await
    }

    /// `POST /api/messages` with `{"message", "w", "key"}`: an append with an idempotency key.
    pub async fn append_keyed(&self, message: &str, w: u64, key: &str) -> (StatusCode, Value) {
        let body = json!({ "message": message, "w": w, "key": key });
        self.append_raw(&body.to_string(), Some("application/json"))
            .await
    }

    /// Like [`Appender::append`], with the answer's headers (e.g. `Retry-After`).
    pub async fn append_with_headers(
        &self,
        message: &str,
        w: Option<u64>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut body = json!({ "message": message });
        if let Some(w) = w {
            body["w"] = json!(w);
        }
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {} {body}: {e}", self.url));
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| {
            eprintln!("POST {} -> {status}, not JSON: {text:?}", self.url);
            Value::Null
        });
        (status, headers, value)
    }

    /// `POST /api/messages` with this exact body and `Content-Type` (none if `None`). The
    /// answer's body is parsed as JSON (`Value::Null` if it is not JSON, after printing it, so
    /// that the assertion that follows shows what came back).
    pub async fn append_raw(&self, body: &str, content_type: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.post(&self.url).body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {} {body}: {e}", self.url));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| {
            eprintln!("POST {} {body} -> {status}, not JSON: {text:?}", self.url);
            Value::Null
        });
        (status, value)
    }
}

impl Appender {
    /// The same appender on its own connections, giving up on an answer after `timeout`: for
    /// clients that must not hang on a stopped node.
    pub fn with_timeout(&self, timeout: Duration) -> Appender {
        Appender {
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(timeout)
                .build()
                .expect("an HTTP client"),
            url: self.url.clone(),
        }
    }

    /// Like [`Appender::append`], but a failed request (refused, reset, timed out) is an `Err`
    /// instead of a panic: under fault injection, a node may die while it is asked.
    pub async fn try_append(
        &self,
        message: &str,
        w: Option<u64>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut body = json!({ "message": message });
        if let Some(w) = w {
            body["w"] = json!(w);
        }
        let response = self.client.post(&self.url).json(&body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

/// `GET <base>/api/messages` as `(id, message)` pairs, or `None` if it does not answer 200 with
/// a list. `base` is a node's URL (`http://127.0.0.1:<port>`) or a proxy's route to one.
pub async fn try_list(client: &reqwest::Client, base: &str) -> Option<Vec<(u64, String)>> {
    let response = client
        .get(format!("{base}/api/messages"))
        .send()
        .await
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["messages"]
        .as_array()?
        .iter()
        .map(|m| Some((m["id"].as_u64()?, m["message"].as_str()?.to_owned())))
        .collect()
}

/// The entry for the secondary at `address` in the master's `/api/health`.
pub fn secondary_health<'a>(master_health: &'a Value, address: &str) -> Option<&'a Value> {
    master_health["secondaries"]
        .as_array()?
        .iter()
        .find(|s| s["address"] == address)
}

impl Drop for Cluster {
    /// When a test fails, point at the logs and show their last lines: the processes are gone
    /// by the time anyone looks, the log files are not.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("\n===== cluster logs in {} =====", self.dir.display());
        for node in self.nodes() {
            eprintln!("----- {} ({}) -----", node.name, node.log_path().display());
            eprintln!("{}", process::tail(&node.log(), 25));
        }
    }
}

/// Reads and discards until the node closes `stream`; `Err` with the bytes read if it is still
/// open `limit` after `since`.
pub async fn closed_by(
    stream: &mut tokio::net::TcpStream,
    since: Instant,
    limit: Duration,
) -> Result<(), usize> {
    let mut buffer = [0u8; 4096];
    let mut read = 0;
    loop {
        let left = limit.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, stream.readable()).await {
            Err(_) => return Err(read),
            Ok(Err(_)) => return Ok(()),
            Ok(Ok(())) => match stream.try_read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => read += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(()),
            },
        }
    }
}

/// Checks that `node`, started with `REQUEST_TIMEOUT_SECONDS=1`, closes `stream` for that
/// timeout: within `limit` of `since` (when the client last sent), and not before 0.9 s.
/// `what` names the connection in a failure.
pub async fn assert_closed_by_the_request_timeout(
    node: &Node,
    what: &str,
    stream: &mut tokio::net::TcpStream,
    since: Instant,
    limit: Duration,
) {
    let closed = closed_by(stream, since, limit).await;
    let took = since.elapsed();
    assert!(
        closed.is_ok(),
        "{}: {what} is still open after {took:?} (REQUEST_TIMEOUT_SECONDS=1)",
        node.name
    );
    assert!(
        took >= Duration::from_millis(900),
        "{}: {what} was closed after {took:?}, before the 1 s timeout",
        node.name
    );
}

/// Checks what a node with `REQUEST_TIMEOUT_SECONDS=1` answered a client whose request stopped
/// arriving: a 408 naming the setting, `took` after the client last sent, not before 0.9 s.
/// `in_time` says whether the connection ended within the test's bound (`answer` is what was
/// read by then).
pub fn assert_answered_408_by_the_request_timeout(in_time: bool, answer: &str, took: Duration) {
    assert!(in_time, "no answer after {took:?}: {answer}");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {took:?}: {answer}"
    );
    assert!(answer.contains("REQUEST_TIMEOUT_SECONDS"), "{answer}");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}, before the 1 s timeout"
    );
}

/// `GET url` on a connection of its own: with a short `REQUEST_TIMEOUT_SECONDS` the nodes close
/// keep-alive connections idle that long, so a pooled connection may be closing when reused.
pub async fn get_on_a_new_connection(url: &str) -> Result<reqwest::Response, reqwest::Error> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    client.get(url).send().await
}

/// Checks that `node` serves a new client a list; `when` says at which point of the test.
pub async fn assert_serves_new_clients(node: &Node, when: &str) {
    let status = get_on_a_new_connection(&node.url("/api/messages"))
        .await
        .map(|answer| answer.status());
    assert!(
        matches!(status, Ok(StatusCode::OK)),
        "{}: not served {when}: {status:?}",
        node.name
    );
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` if `timeout` passes first.
pub async fn wait_until<F, Fut>(timeout: Duration, what: impl Display, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Polls `probe` every 20 ms until it yields a value; panics naming `what` if `timeout` passes
/// first.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: impl Display, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let polled = try_wait_for(timeout, what, || {
        let probe = probe();
        async move { Ok::<_, std::convert::Infallible>(probe.await) }
    })
    .await;
    polled.unwrap_or_else(|timed_out| panic!("{timed_out}"))
}

/// Polls `probe` every 20 ms until it yields `Ok(Some(value))`. `Ok(None)` means not yet;
/// `Err` means not yet either, and the last one is shown if `timeout` passes first.
pub async fn try_wait_for<T, E, F, Fut>(
    timeout: Duration,
    what: impl Display,
    mut probe: F,
) -> Result<T, TimedOut>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = Some(format!("{e:#}")),
        }
        if Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What [`try_wait_for`] waited for in vain.
#[derive(Debug)]
pub struct TimedOut {
    pub what: String,
    pub timeout: Duration,
    /// The last error the probe returned, if any.
    pub last: Option<String>,
}

impl Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting until: {}",
            self.timeout, self.what
        )?;
        match &self.last {
            Some(last) => write!(f, " (last: {last})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for TimedOut {}

/// Runs a binary with only `env` set and waits for it to exit (at most `timeout`; panics after
/// it). For configuration tests: a bad setting must stop the process at once. The run is
/// recorded in `<log_dir>/<Binary>-exit.log`.
pub fn run_to_exit(binary: Binary, env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut command = Command::new(binary.path());
    command.env_clear().envs(env.iter().copied());
    run_command_to_exit(
        &format!("{binary:?}-exit"),
        &format!("{binary:?} with {env:?}"),
        command,
        timeout,
    )
}

/// Runs `command` and waits for it to exit (at most `timeout`; panics after it, naming it as
/// `what`). Its status and output are appended to `<log_dir>/<record>.log`.
pub fn run_command_to_exit(
    record: &str,
    what: &str,
    mut command: Command,
    timeout: Duration,
) -> Output {
    let dir = log_dir();
    std::fs::create_dir_all(&dir).ok();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "{what} still ran after {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().expect("output");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{record}.log")));
    if let Ok(mut file) = file {
        let _ = writeln!(file, "===== {what}\nstatus: {}", output.status);
        let _ = file.write_all(&output.stdout);
        let _ = file.write_all(&output.stderr);
    }
    output
}

/// What one append got back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub w: Option<u64>,
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The id of a 200 answer.
    pub fn id(&self) -> Option<u64> {
        if self.status == StatusCode::OK {
            self.body["id"].as_u64()
        } else {
            None
        }
    }
}

/// The acknowledged appends as the master's total order: `(id, text)` sorted by id. Panics if
/// an answer is not a 200 with an id, or if two answers got the same id.
pub fn acknowledged(answers: &[Answer]) -> Vec<(u64, String)> {
    let mut by_id = std::collections::BTreeMap::new();
    for answer in answers {
        let id = answer.id().unwrap_or_else(|| {
            panic!(
                "{:?} (w={:?}) answered {} {}",
                answer.text, answer.w, answer.status, answer.body
            )
        });
        if let Some(other) = by_id.insert(id, answer.text.clone()) {
            panic!(
                "id {id} was answered for both {other:?} and {:?}",
                answer.text
            );
        }
    }
    by_id.into_iter().collect()
}

/// Panics unless `list` holds no message twice and no id twice, in increasing id order.
pub fn assert_no_repeats(node: &str, list: &[(u64, String)]) {
    let mut texts = std::collections::HashSet::new();
    for (i, (id, text)) in list.iter().enumerate() {
        assert!(texts.insert(text), "{node} lists {text:?} twice");
        if i > 0 {
            assert!(
                list[i - 1].0 < *id,
                "{node} lists id {id} after id {}",
                list[i - 1].0
            );
        }
    }
}

/// Concurrent clients that append one message after another until stopped: a steady load.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl Load {
    /// Starts `clients` tasks; client `c` appends `"{prefix}{c}-{i}"` for i = 0, 1, ... with
    /// write concern `w(i)`, each append after the previous one answered.
    pub fn start(
        appender: &Appender,
        clients: usize,
        prefix: &str,
        w: fn(u64) -> Option<u64>,
    ) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|c| {
                let appender = appender.clone();
                let (stop, answered) = (stop.clone(), answered.clone());
                let prefix = format!("{prefix}{c}-");
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let text = format!("{prefix}{i}");
                        let w = w(i);
                        let (status, body) = appender.append(&text, w).await;
                        answers.push(Answer {
                            text,
                            w,
                            status,
                            body,
                        });
                        answered.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    answers
                })
            })
            .collect();
        Load {
            stop,
            answered,
            tasks,
        }
    }

    /// Appends answered so far (any status).
    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until at least `n` appends have been answered.
    pub async fn wait_answered(&self, n: u64, timeout: Duration) {
        wait_until(timeout, format!("{n} appends answered under load"), || {
            let done = self.answered() >= n;
            async move { done }
        })
        .await;
    }

    /// Stops the clients after their current append and returns every answer.
    pub async fn stop(self, timeout: Duration) -> Vec<Answer> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let all = tokio::time::timeout(timeout, futures::future::join_all(self.tasks))
            .await
            .unwrap_or_else(|_| {
                panic!("the load's last appends did not answer within {timeout:?}")
            });
        all.into_iter()
            .flat_map(|r| r.expect("a load client task"))
            .collect()
    }
}

/// Reading a node's active segment ([`Node::log_file`]) to damage it on purpose, with the
/// nodes' own record decoder.
pub mod log_file {
    use replog_node::storage::decode;
    pub use replog_node::storage::Record;

    /// One framed record.
    #[derive(Debug, Clone)]
    pub struct Frame {
        pub offset: usize,
        /// Header and payload.
        pub len: usize,
        pub record: Record,
    }

    impl Frame {
        pub fn end(&self) -> usize {
            self.offset + self.len
        }
    }

    /// The records of `bytes`, in order, up to the first that does not decode (torn or
    /// corrupt).
    pub fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut offset = 0;
        while let Ok(Some((record, len))) = decode(&bytes[offset..]) {
            frames.push(Frame {
                offset,
                len,
                record,
            });
            offset += len;
        }
        frames
    }

    /// What a node recovers from `frames`: the highest contiguous entry id and the decided
    /// frontier (the last `Decided` record). Panics on a tombstone (the tests write none).
    pub fn recovered(frames: &[Frame]) -> (u64, u64) {
        let (mut held, mut decided) = (0, 0);
        for frame in frames {
            match frame.record {
                Record::Entry { id, tombstone, .. } => {
                    assert!(!tombstone, "unexpected tombstone entry {id}");
                    assert_eq!(id, held + 1, "entries out of order in the file");
                    held = id;
                }
                Record::Decided { upto } => decided = upto,
                Record::Tombstone { id } => panic!("unexpected tombstone {id}"),
                _ => {}
            }
        }
        (held, decided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// A connection the peer closes after sending some bytes counts as closed, with what it
    /// sent read and dropped; one the peer holds open is reported with what was read.
    #[tokio::test]
    async fn closed_by_tells_a_closed_connection_from_one_held_open() {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let peer = tokio::spawn(async move {
            let (closing, _) = listener.accept().await.expect("accept");
            closing.writable().await.expect("writable");
            closing.try_write(b"bye").expect("write");
            drop(closing);
            let (held, _) = listener.accept().await.expect("accept");
            held.writable().await.expect("writable");
            held.try_write(b"hold").expect("write");
            held
        });
        let since = Instant::now();
        let mut closing = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let limit = Duration::from_secs(5);
        assert_eq!(closed_by(&mut closing, since, limit).await, Ok(()));
        let mut held = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let _held = peer.await.expect("the peer");
        let since = Instant::now();
        let limit = Duration::from_millis(300);
        assert_eq!(closed_by(&mut held, since, limit).await, Err(4));
        assert!(since.elapsed() >= limit);
    }

    fn exited(log: &str) -> Exited {
        Exited {
            name: "server".into(),
            status: ExitStatus::from_raw(1 << 8),
            log_path: PathBuf::from("server.log"),
            log: log.into(),
        }
    }

    #[tokio::test]
    async fn on_free_ports_starts_over_only_when_a_port_was_taken() {
        let mut attempts = 0;
        let started = on_free_ports(|| {
            attempts += 1;
            let attempt = attempts;
            async move {
                if attempt < PORT_ATTEMPTS {
                    Err(exited("bind: Address already in use"))
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(started, PORT_ATTEMPTS);

        let other = tokio::spawn(on_free_ports(|| async {
            Err::<(), _>(exited("bad setting"))
        }));
        let panic = other.await.expect_err("another exit is a failure");
        assert!(panic.is_panic());
        let always = tokio::spawn(on_free_ports(|| async {
            Err::<(), _>(exited("Address already in use"))
        }));
        assert!(always.await.expect_err("gives up").is_panic());
    }

    #[tokio::test]
    async fn try_wait_for_shows_the_last_error_when_it_times_out() {
        let mut polls = 0;
        let timed_out = try_wait_for(Duration::from_millis(100), "never", || {
            polls += 1;
            let polled = polls;
            async move { Err::<Option<()>, _>(format!("poll {polled}")) }
        })
        .await
        .expect_err("never ready");
        assert!(polls >= 2, "polled {polls} times");
        assert_eq!(timed_out.last, Some(format!("poll {polls}")));
        assert!(timed_out.to_string().contains("waiting until: never"));

        let mut left = 3;
        let value = try_wait_for(Duration::from_secs(5), "the third poll", || {
            left -= 1;
            let ready = left == 0;
            async move { Ok::<_, String>(ready.then_some(42)) }
        })
        .await
        .expect("ready at the third poll");
        assert_eq!(value, 42);
    }
}
