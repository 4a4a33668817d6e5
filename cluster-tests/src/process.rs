//! The guard every child process of the tests and of the benchmark is held by.
//!
//! A [`Process`] runs in a process group of its own, writes stdout and stderr to a log file, and
//! is gone when the guard is: `Drop` kills the whole group (also while a failing test unwinds),
//! so that helpers the process started (nginx's workers, chromedriver's browsers) go with it.
//! Each child also asks the kernel for SIGKILL when the thread that started it ends
//! (`PR_SET_PDEATHSIG`), so that not even a killed test run leaves servers behind; start
//! processes from a thread that lives as long as they should (a test's own thread, a runtime's
//! worker, the benchmark's main thread), never from `spawn_blocking`.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Starts the line written into a process's log file at each start.
pub const START_MARK_PREFIX: &str = "===== harness: starting ";

/// What a server writes when the port it was given was taken before it could bind it.
pub const PORT_TAKEN: &str = "Address already in use";

/// How many lines of its log an [`Exited`] shows.
const TAIL_LINES: usize = 25;

/// The process groups of every live [`Process`], for [`kill_all`].
static RUNNING: Mutex<Vec<Pid>> = Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<Pid>> {
    RUNNING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SIGKILL to every process group still held by a [`Process`]: for a signal handler or a fatal
/// error, where destructors do not run.
pub fn kill_all() {
    for group in std::mem::take(&mut *running()) {
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// One child process, killed with its whole process group when dropped.
pub struct Process {
    name: String,
    log_path: PathBuf,
    child: Child,
    /// With `Some`, drop sends SIGTERM first and gives the process this long to exit.
    grace: Option<Duration>,
}

impl Process {
    /// Starts `command` as `name`: stdin empty, stdout and stderr appended to `log_path` after a
    /// line that marks the start ([`START_MARK_PREFIX`]), in a new process group.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> std::io::Result<Process> {
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        writeln!(log, "{START_MARK_PREFIX}{name} =====")?;
        let stderr = log.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .process_group(0);
        // SAFETY: between fork and exec the child only calls prctl(2), which is
        // async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().map_err(|e| {
            let program = command.get_program().to_string_lossy().into_owned();
            std::io::Error::new(e.kind(), format!("cannot start {name} ({program}): {e}"))
        })?;
        let process = Process {
            name: name.to_owned(),
            log_path: log_path.to_path_buf(),
            child,
            grace: None,
        };
        running().push(process.pid());
        Ok(process)
    }

    /// On drop, SIGTERM first and up to `grace` to exit, before SIGKILL: for servers that take
    /// helpers down themselves when asked (nginx's workers, chromedriver's browsers).
    pub fn terminate_on_drop(mut self, grace: Duration) -> Process {
        self.grace = Some(grace);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process's id, which is also its process group's.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log file (every start of this name in that file).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log since the latest start mark.
    pub fn log_since_start(&self) -> String {
        since_start(self.log())
    }

    /// Sends `signal` to the process (not its group).
    pub fn signal(&self, signal: Signal) -> nix::Result<()> {
        kill(self.pid(), signal)
    }

    /// SIGSTOP, returning once every thread is stopped: `kill` returns before the kernel has
    /// stopped them all, and on a loaded machine the process could still answer a request sent
    /// right after. Its sockets stay open, so it hangs rather than fails. Panics if it is not
    /// stopped within 5 s.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP)
            .unwrap_or_else(|e| panic!("cannot stop {}: {e}", self.name));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(self.pid()) {
            assert!(
                Instant::now() < deadline,
                "{} did not stop within 5 s of SIGSTOP",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `Err` (naming the status and showing the log's last lines) if the process has ended.
    pub fn check_running(&mut self) -> Result<(), Exited> {
        match self.exited() {
            None => Ok(()),
            Some(status) => Err(Exited {
                name: self.name.clone(),
                status,
                log_path: self.log_path.clone(),
                log: self.log_since_start(),
            }),
        }
    }

    /// Waits at most `timeout` for the process to end: its status, or `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `GET url` until it answers with a success status; `Err` if the process ends first.
    /// Panics after `timeout`.
    pub async fn wait_answering(
        &mut self,
        client: &reqwest::Client,
        url: &str,
        timeout: Duration,
    ) -> Result<(), Exited> {
        let deadline = Instant::now() + timeout;
        loop {
            let answered = client.get(url).send().await;
            if answered.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                panic!(
                    "{} did not answer GET {url} within {timeout:?} (log: {})",
                    self.name,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    /// SIGKILL also ends a stopped (SIGSTOP) process, so a failing test leaves nothing behind.
    fn drop(&mut self) {
        let pid = self.pid();
        if let Some(grace) = self.grace {
            if self.signal(Signal::SIGTERM).is_ok() {
                self.wait_timeout(grace);
            }
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        running().retain(|group| *group != pid);
    }
}

/// A [`Process`] that ended while it was expected to run.
#[derive(Debug)]
pub struct Exited {
    pub name: String,
    pub status: ExitStatus,
    pub log_path: PathBuf,
    /// Its log since its latest start.
    pub log: String,
}

impl Exited {
    /// Whether it ended because its port was taken (by another process, between
    /// [`free_ports`](crate::free_ports) and its start): starting again on new ports helps.
    pub fn port_taken(&self) -> bool {
        self.log.contains(PORT_TAKEN)
    }
}

impl fmt::Display for Exited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited ({}); last lines of {}:\n{}",
            self.name,
            self.status,
            self.log_path.display(),
            tail(&self.log, TAIL_LINES)
        )
    }
}

impl std::error::Error for Exited {}

/// The part of `log` from its latest start mark on (all of it without one).
pub(crate) fn since_start(log: String) -> String {
    match log.rfind(START_MARK_PREFIX) {
        Some(at) => log[at..].to_owned(),
        None => log,
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether every thread of `pid` is stopped (state `T` or `t` in `/proc/<pid>/task/*/stat`).
fn all_threads_stopped(pid: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    entries.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the parenthesised command name.
                let after = &stat[stat.rfind(')')? + 1..];
                after
                    .split_whitespace()
                    .next()
                    .map(|state| state == "T" || state == "t")
            })
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        command
    }

    fn log_in(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.log"))
    }

    /// Whether `pid` still runs (a zombie waiting for a parent that never reaps does not).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let state = stat[stat.rfind(')').map_or(0, |at| at + 1)..].trim_start();
            !state.starts_with('Z')
        })
    }

    fn wait_for_file(path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::read_to_string(path) {
                Ok(text) if text.ends_with('\n') => return text,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                other => panic!("{} not written: {other:?}", path.display()),
            }
        }
    }

    #[test]
    fn drop_kills_the_whole_process_group() {
        let dir = crate::fresh_log_dir();
        let pid_file = dir.join("grandchild.pid");
        let script = format!("sleep 100 & echo $! > {}; wait", pid_file.display());
        let process =
            Process::spawn("parent", sh(&script), &log_in(&dir, "parent")).expect("start sh");
        let grandchild: i32 = wait_for_file(&pid_file).trim().parse().expect("a pid");
        let parent = process.pid().as_raw();
        assert!(alive(grandchild) && alive(parent));
        assert!(running().contains(&process.pid()));
        let group = process.pid();
        drop(process);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(
                Instant::now() < deadline,
                "the grandchild outlived the guard"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(parent));
        assert!(!running().contains(&group));
    }

    #[test]
    fn terminate_on_drop_sends_sigterm_first() {
        let dir = crate::fresh_log_dir();
        let log = log_in(&dir, "polite");
        let ready = dir.join("ready");
        let script = format!(
            "trap 'echo got TERM; exit 0' TERM; echo > {}; while :; do sleep 0.05; done",
            ready.display()
        );
        let process = Process::spawn("polite", sh(&script), &log)
            .expect("start sh")
            .terminate_on_drop(Duration::from_secs(5));
        wait_for_file(&ready);
        drop(process);
        let text = std::fs::read_to_string(&log).expect("the log");
        assert!(text.starts_with(START_MARK_PREFIX), "{text:?}");
        assert!(text.contains("got TERM"), "{text:?}");
    }

    #[test]
    fn an_exit_names_its_status_and_whether_the_port_was_taken() {
        let dir = crate::fresh_log_dir();
        let log = log_in(&dir, "server");
        let mut first =
            Process::spawn("server", sh("echo listening; exit 0"), &log).expect("start sh");
        first.wait_timeout(Duration::from_secs(5)).expect("exits");
        let mut second = Process::spawn(
            "server",
            sh("echo 'bind: Address already in use'; exit 3"),
            &log,
        )
        .expect("start sh");
        second.wait_timeout(Duration::from_secs(5)).expect("exits");
        let exited = second.check_running().expect_err("it has exited");
        assert_eq!(exited.status.code(), Some(3));
        assert!(exited.port_taken(), "{exited}");
        assert!(
            !exited.log.contains("listening"),
            "only since the latest start"
        );
        assert!(exited.to_string().contains("Address already in use"));
        let mut third =
            Process::spawn("server", sh("echo other trouble; exit 1"), &log).expect("start sh");
        third.wait_timeout(Duration::from_secs(5)).expect("exits");
        assert!(!third.check_running().expect_err("exited").port_taken());
    }
}
