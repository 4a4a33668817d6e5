//! The pieces the public-API and browser tests share: a real cluster whose secondaries forward
//! appends to the master, nginx in front of it (rendered from `nginx/nginx.conf` by
//! `nginx/render`, as `scripts/run` does), chromedriver, a gRPC-Web client framed by hand over
//! HTTP/1.1, and the check for the tools the browser test needs.
//!
//! The cluster is the `cluster-tests` kit's [`Cluster`]; nginx and chromedriver run under its
//! [`Process`] guard too (logs under `target/cluster-tests/<test>/`, stopped on drop). A stack
//! that `docker compose` runs is reached through the kit's compose backend
//! ([`cluster_tests::compose`]).

use bytes::{Bytes, BytesMut};
use cluster_tests::compose::workspace_root;
use cluster_tests::failover::FailoverCluster;
use cluster_tests::{free_port, on_free_ports, Cluster, Node, Process, START_TIMEOUT};
use prost::Message;
use replog_proto::framing::{self, Decoder, Frame, Trailers};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use cluster_tests;

/// How long nginx and chromedriver get to take their workers and browsers down after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Set (to anything but `0`) where a missing browser, nginx or built client must fail the
/// browser tests instead of skipping them: CI sets it.
pub const REQUIRE_ENV: &str = "REPLOG_REQUIRE_BROWSER";

/// A tag for this run's messages (milliseconds since the epoch): a running stack's log may
/// hold earlier runs'.
pub fn run_tag() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
        .to_string()
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

/// What the browser test needs to drive an already running stack
/// ([`cluster_tests::compose::BASE_URL_ENV`]).
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

/// nginx in front of a cluster, configured as `scripts/run` (static mode) or the failover
/// compose stack does it, from the same templates.
pub struct Nginx {
    pub port: u16,
    pub dir: PathBuf,
    _process: Process,
}

impl Nginx {
    /// nginx as `scripts/run` starts it, its files under `dir/nginx`.
    pub async fn start(tools: &NginxTools, cluster: &Cluster, dir: &Path) -> Nginx {
        Self::start_with(tools, cluster, &dir.join("nginx"), None).await
    }

    /// nginx as [`Nginx::start`] starts it, its files under `run_dir`, with `/nodes.json` (the
    /// page's columns) answering `nodes_json` when given (nginx/render's `NODES_JSON`).
    pub async fn start_with(
        tools: &NginxTools,
        cluster: &Cluster,
        run_dir: &Path,
        nodes_json: Option<&str>,
    ) -> Nginx {
        let mut settings = vec![
            ("MASTER_ADDR".to_owned(), addr(&cluster.master)),
            ("SECONDARY_1_ADDR".to_owned(), addr(&cluster.secondaries[0])),
            ("SECONDARY_2_ADDR".to_owned(), addr(&cluster.secondaries[1])),
        ];
        if let Some(nodes) = nodes_json {
            settings.push(("NODES_JSON".to_owned(), nodes.to_owned()));
        }
        Self::render_and_start(tools, &cluster.client, run_dir, None, &settings).await
    }

    /// nginx in front of a failover cluster, configured as the failover compose stack's:
    /// `nginx/nginx-failover.conf`, each node's address in `NODE_<NAME>_ADDR` (`node-a` is
    /// `NODE_A_ADDR`).
    pub async fn start_failover(
        tools: &NginxTools,
        cluster: &FailoverCluster,
        run_dir: &Path,
    ) -> Nginx {
        let settings: Vec<(String, String)> = cluster
            .nodes
            .iter()
            .map(|node| {
                let name = node.name.strip_prefix("node-").unwrap_or(&node.name);
                let var = format!("NODE_{}_ADDR", name.to_uppercase().replace('-', "_"));
                (var, addr(node))
            })
            .collect();
        let template = workspace_root().join("nginx/nginx-failover.conf");
        let text = std::fs::read_to_string(&template)
            .unwrap_or_else(|e| panic!("read {}: {e}", template.display()));
        for (var, _) in &settings {
            assert!(
                text.contains(&format!("${{{var}}}")),
                "{} does not take the node's address as ${{{var}}}: the test cannot point it \
                 at its own nodes",
                template.display()
            );
        }
        Self::render_and_start(tools, &cluster.client, run_dir, Some(&template), &settings).await
    }

    /// Renders `template` (nginx/render's default when `None`) with `settings` and the
    /// listening address, run directory and web root, and starts nginx on it.
    async fn render_and_start(
        tools: &NginxTools,
        http: &reqwest::Client,
        run_dir: &Path,
        template: Option<&Path>,
        settings: &[(String, String)],
    ) -> Nginx {
        on_free_ports(move || async move {
            let port = free_port();
            let mut render = Command::new("bash");
            render
                .arg(workspace_root().join("nginx/render"))
                .env_remove("NGINX_TEMPLATE")
                .env_remove("NODES_JSON")
                .env("NGINX_RUN_DIR", run_dir)
                .env("NGINX_LISTEN", format!("127.0.0.1:{port}"))
                .env("WEB_ROOT", &tools.web_root)
                .envs(settings.iter().map(|(k, v)| (k, v)));
            if let Some(template) = template {
                render.env("NGINX_TEMPLATE", template);
            }
            let output = render.output().expect("run nginx/render");
            assert!(
                output.status.success(),
                "nginx/render failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let conf = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            let mut command = Command::new(&tools.nginx);
            command
                .arg("-p")
                .arg(run_dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(run_dir.join("error.log"))
                .args(["-g", "daemon off;"]);
            let mut process = Process::spawn("nginx", command, &run_dir.join("nginx.out"))
                .expect("start nginx")
                .terminate_on_drop(STOP_GRACE);
            let url = format!("http://127.0.0.1:{port}/");
            process.wait_answering(http, &url, START_TIMEOUT).await?;
            Ok(Nginx {
                port,
                dir: run_dir.to_path_buf(),
                _process: process,
            })
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// A node's public HTTP address as nginx reaches it.
fn addr(node: &Node) -> String {
    format!("127.0.0.1:{}", node.http_port)
}

/// chromedriver on a free port.
pub struct Chromedriver {
    pub port: u16,
    _process: Process,
}

impl Chromedriver {
    pub async fn start(chromedriver: &Path, dir: &Path, http: &reqwest::Client) -> Chromedriver {
        on_free_ports(move || async move {
            let port = free_port();
            let mut command = Command::new(chromedriver);
            command.arg(format!("--port={port}"));
            let mut process =
                Process::spawn("chromedriver", command, &dir.join("chromedriver.log"))
                    .expect("start chromedriver")
                    .terminate_on_drop(STOP_GRACE);
            let url = format!("http://127.0.0.1:{port}/status");
            process.wait_answering(http, &url, START_TIMEOUT).await?;
            Ok(Chromedriver {
                port,
                _process: process,
            })
        })
        .await
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
