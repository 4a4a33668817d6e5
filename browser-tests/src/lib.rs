//! The pieces the public-API and browser tests share: a real cluster whose secondaries forward
//! appends to the master, nginx in front of it (rendered from `nginx/nginx.conf` by
//! `nginx/render`, as `scripts/run` does), chromedriver, a gRPC-Web client framed by hand over
//! HTTP/1.1, and the check for the tools the browser test needs.
//!
//! Processes are started by the `cluster-tests` harness's [`Node`] (killed on drop, logs under
//! `target/cluster-tests/<test>/`); nginx and chromedriver are killed on drop too.

use bytes::{Bytes, BytesMut};
use cluster_tests::{free_port, log_dir, wait_until, Binary, Node, START_TIMEOUT};
use prost::Message;
use replog_proto::framing::{self, Decoder, Frame, Trailers};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use cluster_tests;

/// Set (to anything but `0`) where a missing browser, nginx or built client must fail the
/// browser tests instead of skipping them: CI sets it.
pub const REQUIRE_ENV: &str = "REPLOG_REQUIRE_BROWSER";

/// The page of an already running stack (e.g. `http://127.0.0.1:8080`, the compose stack
/// through nginx): when set, the browser test drives that page instead of starting its own
/// cluster and nginx.
pub const BASE_URL_ENV: &str = "REPLOG_BASE_URL";

/// With [`BASE_URL_ENV`]: the compose command of that stack, split on whitespace (e.g.
/// `docker-compose -p replog -f docker-compose.yml`); the test runs `<it> stop secondary-2` and
/// `<it> start secondary-2` from the workspace root.
pub const COMPOSE_ENV: &str = "REPLOG_COMPOSE";

/// [`BASE_URL_ENV`] without a trailing slash, if set and not empty.
pub fn base_url() -> Option<String> {
    std::env::var(BASE_URL_ENV)
        .ok()
        .map(|url| url.trim().trim_end_matches('/').to_owned())
        .filter(|url| !url.is_empty())
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// `target/` of the workspace (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Where an external tool is: the first of `names` on `PATH` or in `/usr/sbin`, `/usr/bin`.
pub fn find_tool(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// What the browser test needs from outside the workspace build.
pub struct BrowserTools {
    pub nginx: PathBuf,
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
    /// The built client: `web-client/dist` with an `index.html`.
    pub web_root: PathBuf,
}

impl BrowserTools {
    pub fn nginx_tools(&self) -> NginxTools {
        NginxTools {
            nginx: self.nginx.clone(),
            web_root: self.web_root.clone(),
        }
    }
}

/// The nginx binary and the built client, needed by every test that goes through nginx.
pub struct NginxTools {
    pub nginx: PathBuf,
    pub web_root: PathBuf,
}

fn require() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Returns `None` (after printing why) when something is missing and [`REQUIRE_ENV`] is
/// unset: the caller then skips. With [`REQUIRE_ENV`] set, a missing tool fails the test.
/// Every item of `found`, or `None` (after saying what is missing, or failing under
/// [`REQUIRE_ENV`]) when any is not there.
fn present<const N: usize>(found: [Result<PathBuf, String>; N]) -> Option<[PathBuf; N]> {
    let problems: Vec<&str> = found
        .iter()
        .filter_map(|f| f.as_ref().err().map(String::as_str))
        .collect();
    if !problems.is_empty() {
        let message = format!(
            "missing {}: run scripts/install-web-tools and scripts/build-web",
            problems.join(", ")
        );
        if require() {
            panic!("{message} ({REQUIRE_ENV} is set, so this fails instead of skipping)");
        }
        eprintln!("SKIPPED: {message} (set {REQUIRE_ENV}=1 to make this a failure)");
        return None;
    }
    Some(found.map(|f| f.unwrap_or_default()))
}

fn web_root() -> Result<PathBuf, String> {
    let root = workspace_root().join("web-client/dist");
    if root.join("index.html").is_file() {
        Ok(root)
    } else {
        Err(format!("the built client ({})", root.display()))
    }
}

fn nginx() -> Result<PathBuf, String> {
    find_tool(&["nginx"]).ok_or_else(|| "nginx".to_owned())
}

fn chromium() -> Result<PathBuf, String> {
    find_tool(&["chromium", "chromium-browser", "google-chrome"])
        .ok_or_else(|| "chromium".to_owned())
}

fn chromedriver() -> Result<PathBuf, String> {
    find_tool(&["chromedriver"]).ok_or_else(|| "chromedriver".to_owned())
}

pub fn nginx_tools() -> Option<NginxTools> {
    let [nginx, web_root] = present([nginx(), web_root()])?;
    Some(NginxTools { nginx, web_root })
}

pub fn browser_tools() -> Option<BrowserTools> {
    let [nginx, chromium, chromedriver, web_root] =
        present([nginx(), chromium(), chromedriver(), web_root()])?;
    Some(BrowserTools {
        nginx,
        chromium,
        chromedriver,
        web_root,
    })
}

/// What the browser test needs to drive an already running stack ([`BASE_URL_ENV`]).
pub struct ChromiumTools {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

pub fn chromium_tools() -> Option<ChromiumTools> {
    let [chromium, chromedriver] = present([chromium(), chromedriver()])?;
    Some(ChromiumTools {
        chromium,
        chromedriver,
    })
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
        let shown = format!("{} {}", self.command.join(" "), args.join(" "));
        let output = tokio::time::timeout(Duration::from_secs(120), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("`{shown}` did not finish within 120 s"))
            .unwrap_or_else(|e| panic!("run `{shown}`: {e}"));
        assert!(
            output.status.success(),
            "`{shown}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
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

/// A master and two secondaries on free loopback ports; the secondaries know the master
/// (`MASTER`), so appends on them are forwarded.
pub struct Stack {
    pub master: Node,
    pub secondaries: Vec<Node>,
    pub http: reqwest::Client,
    pub dir: PathBuf,
}

impl Stack {
    /// Starts the cluster with extra settings for the master and for each secondary, and waits
    /// until every node answers and the master has contacted both secondaries.
    pub async fn start(master_env: &[(&str, &str)], secondary_env: &[&[(&str, &str)]]) -> Stack {
        let dir = log_dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the test's log directory");
        let master_http = free_port();
        let master_addr = format!("127.0.0.1:{master_http}");
        let mut secondaries = Vec::new();
        for i in 0..2 {
            let (http, grpc) = (free_port(), free_port());
            let mut env = vec![
                ("HOST".to_owned(), "127.0.0.1".to_owned()),
                ("HTTP_PORT".to_owned(), http.to_string()),
                ("GRPC_PORT".to_owned(), grpc.to_string()),
                ("MASTER".to_owned(), master_addr.clone()),
            ];
            if let Some(extra) = secondary_env.get(i) {
                env.extend(
                    extra
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                );
            }
            let name = format!("secondary-{}", i + 1);
            let mut node = Node::new(&name, Binary::Secondary, http, Some(grpc), env, &dir);
            node.start();
            secondaries.push(node);
        }
        let listed: Vec<String> = secondaries.iter().map(Node::grpc_endpoint).collect();
        let mut env = vec![
            ("HOST".to_owned(), "127.0.0.1".to_owned()),
            ("HTTP_PORT".to_owned(), master_http.to_string()),
            ("SECONDARIES".to_owned(), listed.join(",")),
        ];
        env.extend(
            master_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut master = Node::new("master", Binary::Master, master_http, None, env, &dir);
        master.start();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
        let stack = Stack {
            master,
            secondaries,
            http,
            dir,
        };
        stack.wait_ready().await;
        stack
    }

    /// Every node, the master first, with the names the page and nginx use.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master).chain(self.secondaries.iter())
    }

    pub async fn wait_ready(&self) {
        for node in self.nodes().filter(|n| n.is_running()) {
            let url = node.url("/health");
            wait_until(
                START_TIMEOUT,
                format!("{} GET /health = 200", node.name),
                || {
                    let request = self.http.get(&url).send();
                    async move { request.await.is_ok_and(|r| r.status().is_success()) }
                },
            )
            .await;
        }
        let running: Vec<String> = self
            .secondaries
            .iter()
            .filter(|s| s.is_running())
            .map(Node::grpc_endpoint)
            .collect();
        let running = &running;
        wait_until(
            START_TIMEOUT,
            format!("master health shows {running:?} healthy and contacted"),
            || async move {
                let Some(health) = self.master_health().await else {
                    return false;
                };
                running.iter().all(|address| {
                    cluster_tests::secondary_health(&health, address).is_some_and(|s| {
                        s["status"] == "healthy" && s["last_contact_ms_ago"].is_u64()
                    })
                })
            },
        )
        .await;
    }

    /// The master's `GET /api/health`, if it answers.
    pub async fn master_health(&self) -> Option<Value> {
        let response = self
            .http
            .get(self.master.url("/api/health"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// `http://127.0.0.1:<http port>` of a node, for tonic and gRPC-Web clients.
    pub fn endpoint(node: &Node) -> String {
        node.url("")
    }
}

impl Drop for Stack {
    /// On failure, point at the node logs (the processes are gone by the time anyone looks).
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n===== node logs in {} =====", self.dir.display());
            for node in self.nodes() {
                let log = node.log();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("----- {} -----", node.name);
                for line in &lines[lines.len().saturating_sub(20)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A child process stopped (and reaped) on drop: SIGTERM first, so that nginx's master takes
/// its workers down and chromedriver its browsers (a SIGKILLed nginx master leaves its workers
/// running, still listening), then SIGKILL if it has not exited within a few seconds.
pub struct Process {
    pub name: String,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Fails the test if the process has already exited (e.g. nginx rejected its config).
    pub fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{} exited early ({status}):\n{log}", self.name);
        }
    }
}

/// nginx in front of a [`Stack`], configured exactly as `scripts/run` does it.
pub struct Nginx {
    pub port: u16,
    pub dir: PathBuf,
    _process: Process,
}

impl Nginx {
    pub async fn start(tools: &NginxTools, stack: &Stack, dir: &Path) -> Nginx {
        let port = free_port();
        let run_dir = dir.join("nginx");
        let addr = |node: &Node| format!("127.0.0.1:{}", node.http_port);
        let output = Command::new("bash")
            .arg(workspace_root().join("nginx/render"))
            .env("NGINX_RUN_DIR", &run_dir)
            .env("NGINX_LISTEN", format!("127.0.0.1:{port}"))
            .env("WEB_ROOT", &tools.web_root)
            .env("MASTER_ADDR", addr(&stack.master))
            .env("SECONDARY_1_ADDR", addr(&stack.secondaries[0]))
            .env("SECONDARY_2_ADDR", addr(&stack.secondaries[1]))
            .output()
            .expect("run nginx/render");
        assert!(
            output.status.success(),
            "nginx/render failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let conf = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let error_log = run_dir.join("error.log");
        let log = std::fs::File::create(run_dir.join("nginx.out")).expect("nginx.out");
        let child = Command::new(&tools.nginx)
            .arg("-p")
            .arg(&run_dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start nginx");
        let mut process = Process {
            name: "nginx".into(),
            child,
        };
        let url = format!("http://127.0.0.1:{port}/");
        let http = &stack.http;
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            process.assert_running(&run_dir.join("nginx.out"));
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not answer {url} within {START_TIMEOUT:?} (see {})",
                error_log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Nginx {
            port,
            dir: run_dir,
            _process: process,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// chromedriver on a free port.
pub struct Chromedriver {
    pub port: u16,
    _process: Process,
}

impl Chromedriver {
    pub async fn start(chromedriver: &Path, dir: &Path, http: &reqwest::Client) -> Chromedriver {
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).expect("chromedriver.log");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let mut process = Process {
            name: "chromedriver".into(),
            child,
        };
        let url = format!("http://127.0.0.1:{port}/status");
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            process.assert_running(&dir.join("chromedriver.log"));
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver did not answer {url} within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Chromedriver {
            port,
            _process: process,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Headless Chromium flags for this closed network: no background traffic, no sandbox (root
/// in CI), a fresh profile.
pub fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-quic",
        "--no-first-run",
        "--disable-sync",
        "--window-size=1440,900",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(std::iter::once(format!(
        "--user-data-dir={}",
        profile.display()
    )))
    .collect()
}

/// The outcome of a gRPC-Web call: the messages of the body and the final status.
#[derive(Debug)]
pub struct GrpcWebReply {
    pub http_status: u16,
    pub messages: Vec<Bytes>,
    /// `grpc-status` (0 = OK), from the trailers frame or, for a trailers-only answer, the
    /// headers.
    pub grpc_status: i32,
    pub grpc_message: String,
}

/// A unary or server-streaming gRPC-Web call over HTTP/1.1 (as a browser makes it), reading
/// the whole answer. `base` is e.g. `http://127.0.0.1:8000` or `http://127.0.0.1:8080/node/master`.
pub async fn grpc_web_call(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    request: &impl Message,
) -> GrpcWebReply {
    let response = grpc_web_send(http, base, method, request).await;
    let http_status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let header_status = header("grpc-status").and_then(|s| s.parse().ok());
    let header_message = header("grpc-message").map(|m| framing::percent_decode(&m));
    let body = response.bytes().await.expect("the gRPC-Web body");
    let mut buffer = BytesMut::from(&body[..]);
    let mut messages = Vec::new();
    let mut trailers = Trailers::default();
    let decoder = Decoder::grpc_web();
    while let Some(frame) = decoder
        .next(&mut buffer)
        .unwrap_or_else(|e| panic!("{method}: {e}"))
    {
        match frame {
            Frame::Message(payload) => messages.push(payload),
            Frame::Trailers(payload) => trailers = framing::parse_trailers(&payload),
        }
    }
    assert!(
        buffer.is_empty(),
        "{method}: a partial gRPC-Web frame is left"
    );
    let grpc_status = trailers
        .status
        .or(header_status)
        .unwrap_or_else(|| panic!("{method}: no grpc-status in trailers or headers"));
    let grpc_message = if trailers.status.is_some() {
        trailers.message
    } else {
        header_message.unwrap_or_default()
    };
    GrpcWebReply {
        http_status,
        messages,
        grpc_status,
        grpc_message,
    }
}

/// Sends a gRPC-Web request and returns the response as soon as its headers arrive (for
/// streams, read the body with `chunk()`).
pub async fn grpc_web_send(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    request: &impl Message,
) -> reqwest::Response {
    let url = format!("{base}/replog.v1.Log/{method}");
    let body = framing::encode(request).unwrap_or_else(|e| panic!("{method}: {e}"));
    http.post(&url)
        .header("content-type", "application/grpc-web+proto")
        .header("accept", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}
