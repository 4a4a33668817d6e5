//! One node of a test cluster: its settings (kept, so that it starts again with the same ones on
//! the same ports) and, while it runs, what runs it: a child [`Process`] of the node's binary, or
//! the node's server as tasks of the test's own runtime ([`crate::in_process`]).
//!
//! Everything a client does (URLs, settings, data directory, logs) is the same for both.
//! Signals are not: [`Node::kill`], [`Node::stop`], [`Node::cont`], [`Node::terminate`] and
//! [`Node::pid`] need a process and panic on an in-process node, which [`Node::shut_down`]
//! stops instead.

use crate::in_process::{self, Listeners, Task};
use crate::process::{self, Exited, Process};
use crate::{try_wait_for, StartError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// The binaries under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Master,
    Secondary,
    /// A failover node (`replog`, crate replog-failover).
    Replog,
}

impl Binary {
    pub fn file_name(self) -> &'static str {
        match self {
            Binary::Master => "master",
            Binary::Secondary => "secondary",
            Binary::Replog => "replog",
        }
    }

    /// The binary built by `cargo build --workspace --bins` for the profile the tests run in:
    /// [`Binary::path_in`] the [`default_bin_dir`].
    pub fn path(self) -> PathBuf {
        self.path_in(&default_bin_dir())
            .unwrap_or_else(|missing| panic!("{missing}"))
    }

    /// The binary in `dir`, or why not.
    pub fn path_in(self, dir: &Path) -> Result<PathBuf, StartError> {
        let path = dir.join(self.file_name());
        if path.is_file() {
            Ok(path)
        } else {
            Err(StartError::Missing(path))
        }
    }
}

/// Where the binaries of `cargo build --workspace --bins` are for the profile this executable
/// was built in: `target/<profile>/`.
///
/// Integration tests run from `target/<profile>/deps/<test>-<hash>`; Cargo puts the workspace
/// binaries one level up. A binary of the workspace (the benchmark) runs from
/// `target/<profile>/` itself. Cargo does not build other packages' binaries for a test run,
/// hence the explicit build step.
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    let profile = if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().expect("target/<profile>")
    } else {
        deps
    };
    profile.to_path_buf()
}

/// How a node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A child process of the binary in this directory.
    Process { bin_dir: PathBuf },
    /// The node's server as tasks of the test's runtime (master and secondary only).
    InProcess,
}

impl Default for Backend {
    /// Processes of the binaries next to this executable ([`default_bin_dir`]).
    fn default() -> Self {
        Backend::Process {
            bin_dir: default_bin_dir(),
        }
    }
}

/// What runs a started node.
enum Running {
    Process(Process),
    InProcess(Task),
}

/// One node: its settings and, while it runs, its process or its tasks.
pub struct Node {
    pub name: String,
    pub binary: Binary,
    pub http_port: u16,
    /// The internal replication port (secondaries only).
    pub grpc_port: Option<u16>,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    backend: Backend,
    /// In process: the listeners bound before the node's first start.
    bound: Option<Listeners>,
    running: Option<Running>,
    /// The public port serves TLS: its URLs are `https://`.
    https: bool,
}

impl Node {
    /// Describes a node process of [`Binary::path`] without starting it.
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
            backend: Backend::default(),
            bound: None,
            running: None,
            https: false,
        }
    }

    /// Describes a node of `backend`. An in-process node takes `bound`, the listeners of its
    /// ports, for its first start, and logs to the one log file of the test's in-process
    /// nodes ([`in_process::LOG_FILE`] in `dir`).
    pub(crate) fn with_backend(
        mut self,
        backend: Backend,
        bound: Option<Listeners>,
        dir: &Path,
    ) -> Node {
        if backend == Backend::InProcess {
            self.log_path = dir.join(in_process::LOG_FILE);
        }
        self.backend = backend;
        self.bound = bound;
        self
    }

    /// A node whose public port serves TLS (`PUBLIC_TLS`) when `https`: its URLs are `https://`.
    pub fn with_https(mut self, https: bool) -> Node {
        self.https = https;
        self
    }

    /// Starts the node: panics if it cannot ([`Node::try_start`]).
    pub fn start(&mut self) {
        self.try_start()
            .unwrap_or_else(|e| panic!("{e} (log: {})", self.log_path.display()));
    }

    /// Starts the node. A process's environment is only what the node was described with (plus
    /// `RUST_LOG`, default `info`), so that settings of the shell running the tests cannot leak
    /// in; its output is appended to the node's log file, across restarts. An in-process node
    /// reads the same settings, and nothing else, as its configuration.
    pub fn try_start(&mut self) -> Result<(), StartError> {
        assert!(self.running.is_none(), "{} is already running", self.name);
        let running = match &self.backend {
            Backend::Process { bin_dir } => {
                let mut command = Command::new(self.binary.path_in(bin_dir)?);
                command
                    .env_clear()
                    .env(
                        "RUST_LOG",
                        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                    )
                    // Plain text logs: the files are read by people, not terminals.
                    .env("NO_COLOR", "1")
                    .envs(self.env.iter().map(|(k, v)| (k, v)));
                let process =
                    Process::spawn(&self.name, command, &self.log_path).map_err(|error| {
                        StartError::Spawn {
                            node: self.name.clone(),
                            error,
                        }
                    })?;
                Running::Process(process)
            }
            Backend::InProcess => {
                let listeners = match self.bound.take() {
                    Some(listeners) => listeners,
                    None => Listeners::bind(self.http_port, self.grpc_port).map_err(|error| {
                        StartError::Spawn {
                            node: self.name.clone(),
                            error,
                        }
                    })?,
                };
                let task = Task::start(
                    &self.name,
                    self.binary,
                    &self.env,
                    listeners,
                    &self.log_path,
                )?;
                Running::InProcess(task)
            }
        };
        self.running = Some(running);
        Ok(())
    }

    /// The exit status if the node has ended on its own (it is then no longer running). An
    /// in-process node that ended shows code 0 if its server returned `Ok`, 1 otherwise.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = match self.running.as_mut()? {
            Running::Process(process) => process.exited()?,
            Running::InProcess(task) => task.exited()?.0,
        };
        self.running = None;
        Some(status)
    }

    /// `Err` (naming the status and showing the log's last lines) if the node has ended.
    /// Panics if it was never started, or was stopped by the test.
    pub fn check_running(&mut self) -> Result<(), Exited> {
        match self.running.as_mut() {
            None => panic!("{} is not running", self.name),
            Some(Running::Process(process)) => process.check_running(),
            Some(Running::InProcess(task)) => match task.exited() {
                None => Ok(()),
                Some((status, outcome)) => Err(Exited {
                    name: self.name.clone(),
                    status,
                    log_path: self.log_path.clone(),
                    log: outcome,
                }),
            },
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The node's process (panics if it does not run, or runs in process).
    pub fn process(&self) -> &Process {
        match &self.running {
            Some(Running::Process(process)) => process,
            Some(Running::InProcess(_)) => panic!(
                "{} runs in process: signals and /proc need the process backend",
                self.name
            ),
            None => panic!("{} is not running", self.name),
        }
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
        if let Some(Running::InProcess(_)) = self.running {
            panic!(
                "{} runs in process: kill needs the process backend",
                self.name
            );
        }
        self.running = None;
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
        let Some(Running::Process(mut process)) = self.running.take() else {
            unreachable!("signal() checked that a process runs")
        };
        process.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?} of SIGTERM (log: {})",
                self.name,
                self.log_path.display()
            )
        })
    }

    /// Stops the node as its supervisor would, and waits until it has: a process gets SIGTERM
    /// and `grace` to exit, then SIGKILL; an in-process node has its shutdown token cancelled
    /// and `grace` to return, then its task is dropped. `None` if it had to be killed (or
    /// dropped). Nothing happens to a node that does not run.
    pub async fn shut_down(&mut self, grace: Duration) -> Option<ExitStatus> {
        let exited = match self.running.take()? {
            Running::Process(mut process) => {
                let _ = process.signal(nix::sys::signal::Signal::SIGTERM);
                let exited = try_wait_for(grace, "the exit", || {
                    let status = process.exited();
                    async move { Ok::<_, std::convert::Infallible>(status) }
                })
                .await;
                // Dropping the process kills what is left of it, and reaps it.
                exited.ok()
            }
            Running::InProcess(task) => task.shut_down(grace).await.map(|(status, _)| status),
        };
        if exited.is_none() {
            eprintln!(
                "{} did not stop within {grace:?} of being asked to; killed it",
                self.name
            );
        }
        exited
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

    /// Waits (until `deadline`) for a started process to answer `GET /health`: `Err` if it
    /// exits first, for instance because another process took its port. An in-process node's
    /// listeners are bound before it starts, so it has nothing to wait for here.
    pub async fn wait_answering(
        &mut self,
        client: &reqwest::Client,
        deadline: Instant,
    ) -> Result<(), Exited> {
        let url = self.url("/health");
        if let Some(Running::Process(process)) = self.running.as_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            process.wait_answering(client, &url, left).await?;
        }
        Ok(())
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

    /// The node's log output since its latest start (the harness marks each start of a
    /// process; the in-process nodes of a test share one log, shown whole).
    pub fn log_since_start(&self) -> String {
        process::since_start(self.log())
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.http_port)
    }

    /// `127.0.0.1:<http>`, the node's HTTP API.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
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
