//! The compose backend: a stack that `docker compose` started outside the tests (the page
//! through nginx at [`BASE_URL_ENV`], the compose command in [`COMPOSE_ENV`]), which tests
//! check from outside and drive with the compose command (stop, start and kill services, find
//! their containers and published ports). The kit starts no such stack itself; without
//! [`BASE_URL_ENV`] the tests that need one skip ([`running_stack`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The page of an already running stack (e.g. `http://127.0.0.1:8080`, the compose stack
/// through nginx): when set, the tests that need a running stack check that one.
pub const BASE_URL_ENV: &str = "REPLOG_BASE_URL";

/// With [`BASE_URL_ENV`]: the compose command of that stack, split on whitespace (e.g.
/// `docker-compose -p replog -f docker-compose.yml`); the tests run it from the workspace root.
pub const COMPOSE_ENV: &str = "REPLOG_COMPOSE";

/// How long one compose or docker command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The page ([`BASE_URL_ENV`]) and the compose command ([`COMPOSE_ENV`]) of a running stack, or
/// `None` (after saying that `test` skips) when [`BASE_URL_ENV`] is not set. Panics when only
/// the compose command is missing.
pub fn running_stack(test: &str) -> Option<(String, Compose)> {
    let Some(base) = base_url() else {
        eprintln!("SKIPPED {test}: {BASE_URL_ENV} is not set (the page of a running stack)");
        return None;
    };
    let compose = Compose::from_env().unwrap_or_else(|| {
        panic!("{BASE_URL_ENV} is set but {COMPOSE_ENV} (the stack's compose command) is not")
    });
    Some((base, compose))
}

/// [`BASE_URL_ENV`] without a trailing slash, if set and not empty.
pub fn base_url() -> Option<String> {
    std::env::var(BASE_URL_ENV)
        .ok()
        .map(|url| url.trim().trim_end_matches('/').to_owned())
        .filter(|url| !url.is_empty())
}

/// The workspace root (the kit's parent directory), where the compose files are.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The compose command of a running stack ([`COMPOSE_ENV`]), run from the workspace root.
pub struct Compose {
    pub command: Vec<String>,
}

impl Compose {
    /// From [`COMPOSE_ENV`]; `None` when unset or empty.
    pub fn from_env() -> Option<Compose> {
        let command: Vec<String> = std::env::var(COMPOSE_ENV)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (!command.is_empty()).then_some(Compose { command })
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .args(args)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `<compose> ARGS...` and fails the test if it does not succeed within two minutes.
    pub async fn run(&self, args: &[&str]) {
        self.output(args).await;
    }

    /// The standard output of `<compose> ARGS...`; fails the test if it does not succeed
    /// within two minutes.
    pub async fn output(&self, args: &[&str]) -> String {
        let shown = format!("{} {}", self.command.join(" "), args.join(" "));
        output_of(self.command(args), &shown).await
    }

    /// The id of `service`'s container.
    pub async fn container(&self, service: &str) -> String {
        let id = self.output(&["ps", "-q", service]).await.trim().to_owned();
        assert!(!id.is_empty(), "{service} has no container");
        id
    }

    /// `http://<host>:<port>` where the host publishes `service`'s container port `port`.
    pub async fn published_url(&self, service: &str, port: u16) -> String {
        let published = self.output(&["port", service, &port.to_string()]).await;
        let address = published.lines().next().unwrap_or_default().trim();
        assert!(
            !address.is_empty(),
            "{service} does not publish its port {port}"
        );
        format!("http://{address}")
    }

    /// Blocking `<compose> ARGS...`, ignoring the outcome: for putting things back on the way
    /// out of a failed test.
    pub fn run_blocking(&self, args: &[&str]) {
        let _ = Command::new(&self.command[0])
            .args(&self.command[1..])
            .args(args)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The standard output of `docker ARGS...`; fails the test if it does not succeed within two
/// minutes.
pub async fn docker(args: &[&str]) -> String {
    let mut command = tokio::process::Command::new("docker");
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    output_of(command, &format!("docker {}", args.join(" "))).await
}

/// `docker ARGS...` that may fail: whether it exited 0, and what it wrote (standard output,
/// then standard error). Fails the test only if it cannot run or does not finish within two
/// minutes.
pub async fn docker_status(args: &[&str]) -> (bool, String) {
    let mut command = tokio::process::Command::new("docker");
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output = finished(command, &format!("docker {}", args.join(" "))).await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// What `command` did, once it finished within [`COMMAND_TIMEOUT`].
async fn finished(mut command: tokio::process::Command, shown: &str) -> std::process::Output {
    tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("`{shown}` did not finish within {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("run `{shown}`: {e}"))
}

async fn output_of(command: tokio::process::Command, shown: &str) -> String {
    let output = finished(command, shown).await;
    assert!(
        output.status.success(),
        "`{shown}` failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
