//! Server processes the benchmark starts, and the guarantee that none outlives it.
//!
//! Every child is held by the test kit's [`Process`] (`cluster-tests`; replog's nodes through
//! the kit's cluster builder, Redis through [`spawn`]), which kills it on `Drop` (also while a
//! panic unwinds) and has the kernel kill it if the thread that started it ends
//! (`PR_SET_PDEATHSIG`). Every server is started from the bench's main thread, which
//! `block_on` keeps the main future on and which lives as long as the bench, so not even
//! `kill -9` of the bench leaves servers behind. Ctrl-C or SIGTERM kills them before the bench
//! exits ([`kill_all`]).

use anyhow::{Context, Result};
use cluster_tests::Process;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Remembers a temporary directory, so that [`kill_all`] removes it if the bench is interrupted
/// (its `TempDir` guard removes it otherwise).
pub fn register_dir(dir: &Path) {
    DIRS.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(dir.to_path_buf());
}

/// Starts `command` as `name`, with stdout and stderr going to `log_dir/<name>.log`.
///
/// Must be called from the thread that lives as long as the bench (the main thread): the
/// death signal is tied to the thread that forked the child.
pub fn spawn(name: &str, command: Command, log_dir: &Path) -> Result<Process> {
    let log = log_dir.join(format!("{name}.log"));
    Process::spawn(name, command, &log).with_context(|| format!("log: {}", log.display()))
}

/// Kills every process still running and removes the temporary directories (for signal
/// handlers and fatal errors, where destructors will not run).
pub fn kill_all() {
    cluster_tests::process::kill_all();
    let dirs = std::mem::take(&mut *DIRS.lock().unwrap_or_else(|p| p.into_inner()));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The process's id, as [`crate::cpu`] reads `/proc` with it.
pub fn pid(process: &Process) -> u32 {
    process.pid().as_raw() as u32
}

/// A primary's and its replicas' pids, for [`crate::cpu`].
pub fn group_pids<'a>(
    primary: &Process,
    replicas: impl IntoIterator<Item = &'a Process>,
) -> crate::cpu::Processes {
    crate::cpu::Processes {
        primary: pid(primary),
        replicas: replicas.into_iter().map(pid).collect(),
    }
}

/// Peak RSS of a primary, and the largest peak RSS among its replicas, in bytes.
pub fn group_peak_rss<'a>(
    primary: &Process,
    replicas: impl IntoIterator<Item = &'a Process>,
) -> (u64, u64) {
    let replicas = replicas.into_iter().map(peak_rss).max().unwrap_or(0);
    (peak_rss(primary), replicas)
}

/// Peak resident set size (`VmHWM`) so far, in bytes.
pub fn peak_rss(process: &Process) -> u64 {
    proc_status_kb(process, "VmHWM:") * 1024
}

/// Current resident set size (`VmRSS`), in bytes.
pub fn rss(process: &Process) -> u64 {
    proc_status_kb(process, "VmRSS:") * 1024
}

fn proc_status_kb(process: &Process, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", process.pid()))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}
