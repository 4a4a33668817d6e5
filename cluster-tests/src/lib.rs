//! The test kit of replog: one cluster builder for the end-to-end tests in `tests/`, the browser
//! tests (`browser-tests/`) and the benchmark (`bench/`).
//!
//! The style follows tokio's mini-redis tests: every test starts its own servers, talks to them
//! over the real wire protocol, and asserts on what comes back. Nothing is mocked, so a test
//! proves what a user with `curl` would see.
//!
//! A [`Cluster`] (one master, N secondaries; [`Cluster::builder`]) runs on one of two
//! backends, with the same [`Node`] handles and client helpers on both:
//!
//! - **Processes** (the default): the `master` and `secondary` binaries of the workspace (or of
//!   a given directory) as child processes on free loopback ports, restarted on new ports when
//!   another process takes one first ([`on_free_ports`]). For tests that need signals (kill,
//!   SIGSTOP, SIGTERM), restarts of a process, `/proc`, or a log per node.
//! - **In process** ([`ClusterBuilder::in_process`], [`in_process`]): the same servers as tasks
//!   of the test's runtime, on listeners bound before anything starts: no port race, no
//!   process start-up.
//!
//! A stack started elsewhere by `docker compose` is reached through [`compose`]. The failover
//! cluster ([`failover`]) runs `replog` processes beside a real etcd ([`etcd`]).
//!
//! Rules the kit follows, and that tests built on it should follow:
//!
//! - **Own ports, own nodes.** Every [`Cluster`] takes fresh ports, so tests run in parallel
//!   (cargo-nextest runs each test in its own process).
//! - **No process left behind.** Every child is held by a [`Process`], which kills it (and its
//!   process group) on `Drop`, also while a failing test unwinds, and which the kernel kills if
//!   the thread that started it ends first.
//! - **Logs kept for the post-mortem.** Each node process writes stdout and stderr to
//!   `target/cluster-tests/<test>/<node>.log` (in-process nodes share
//!   [`in_process::LOG_FILE`] there); when a test panics, the cluster prints those paths and
//!   the last lines of each log.
//! - **No hopeful sleeps.** Anything that depends on timing waits for a condition with a deadline
//!   ([`wait_until`], [`wait_for`]) and fails with a message that says what it waited for.

pub mod cluster;
pub mod compose;
pub mod etcd;
pub mod failover;
pub mod history;
pub mod in_process;
pub mod node;
pub mod process;
pub mod sse;
pub mod workload;

pub use cluster::{
    secondary_health, try_list, Appender, Cluster, ClusterBuilder, MasterOpts, NodeOpts,
    SecondaryOpts,
};
pub use node::{default_bin_dir, Backend, Binary, Node};
pub use process::{Exited, Process};

use replog_node::tls::TlsArgs;
use serde_json::Value;
use std::fmt::Display;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
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

/// The settings that give a node `args`: `TLS_CERT`, `TLS_KEY` and `TLS_CA` for the files it
/// names, and `PUBLIC_TLS=true` if `args.public_tls`.
pub fn tls_settings(args: &TlsArgs) -> Vec<(String, String)> {
    let files = [
        ("TLS_CERT", &args.tls_cert),
        ("TLS_KEY", &args.tls_key),
        ("TLS_CA", &args.tls_ca),
    ];
    let mut settings: Vec<(String, String)> = files
        .into_iter()
        .filter_map(|(key, path)| Some((key.to_owned(), path.as_ref()?.display().to_string())))
        .collect();
    if args.public_tls {
        settings.push(("PUBLIC_TLS".to_owned(), "true".to_owned()));
    }
    settings
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
    let profile = default_bin_dir();
    let target = profile
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| profile.clone());
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

/// A failure to start that may be a lost race for a port: starting again on new ports cures it.
pub trait PortRace: Display {
    fn port_taken(&self) -> bool;
}

impl PortRace for Exited {
    fn port_taken(&self) -> bool {
        Exited::port_taken(self)
    }
}

/// Runs `start`, which picks its ports with [`free_ports`] and starts servers on them, again on
/// new ports while a server exits because another process took its port first
/// ([`Exited::port_taken`]), so that parallel tests do not flake. Panics on any other exit.
pub async fn on_free_ports<T, F, Fut>(start: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Exited>>,
{
    match try_on_free_ports(start).await {
        Ok(started) => started,
        Err(exited) if exited.port_taken() => {
            panic!("{exited}\n(its port was taken {PORT_ATTEMPTS} times)")
        }
        Err(exited) => panic!("{exited}"),
    }
}

/// [`on_free_ports`], returning the last failure instead of panicking: any that is not a lost
/// port, or a lost port at the last attempt.
pub async fn try_on_free_ports<T, E, F, Fut>(mut start: F) -> Result<T, E>
where
    E: PortRace,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(lost) if lost.port_taken() && attempt < PORT_ATTEMPTS => {
                let first_line = lost
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                eprintln!("{first_line}: lost its port to another process; starting over");
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Why a cluster did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "{} not found: build the servers first (`cargo build --workspace --bins`, in the \
         profile of the tests, or of the directory given)",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("{node}: {error}")]
    Spawn {
        node: String,
        #[source]
        error: std::io::Error,
    },
    /// An in-process node's settings do not parse or do not agree.
    #[error("{node}: {reason}")]
    Settings { node: String, reason: String },
    #[error(transparent)]
    Exited(#[from] Exited),
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
}

impl PortRace for StartError {
    fn port_taken(&self) -> bool {
        matches!(self, StartError::Exited(exited) if exited.port_taken())
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
pub async fn wait_until<F, Fut>(timeout: Duration, what: impl Display, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    try_wait_until(timeout, what, condition)
        .await
        .unwrap_or_else(|timed_out| panic!("{timed_out}"))
}

/// [`wait_until`], `Err` instead of a panic.
pub async fn try_wait_until<F, Fut>(
    timeout: Duration,
    what: impl Display,
    mut condition: F,
) -> Result<(), TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    try_wait_for(timeout, what, || {
        let check = condition();
        async move { Ok::<_, std::convert::Infallible>(check.await.then_some(())) }
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
///
/// Time is tokio's: in a test with paused time the wait takes no real time.
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
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = Some(format!("{e:#}")),
        }
        if tokio::time::Instant::now() >= deadline {
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
    use std::process::ExitStatus;

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
