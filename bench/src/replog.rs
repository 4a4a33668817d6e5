//! replog under test: a master and N secondaries from the bench's binary directory, and its two
//! clients (HTTP JSON `POST /api/messages`, and the public gRPC `replog.v1.Log/Append`).

use crate::http::Conn;
use crate::load::Client;
use crate::procs;
use crate::wire::HttpPost;
use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use cluster_tests::{try_free_ports, try_wait_for, Process};
use hyper::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

pub struct Cluster {
    pub master: Process,
    pub secondaries: Vec<Process>,
    pub master_addr: SocketAddr,
    pub secondary_addrs: Vec<SocketAddr>,
    /// How each node was started, to start it again ([`Cluster::restart_master`],
    /// [`Cluster::restart_secondary`]).
    master_start: NodeStart,
    secondary_starts: Vec<NodeStart>,
    /// Data directories (durable mode); removed when the cluster is dropped, after the processes
    /// (fields drop in declaration order).
    _dirs: Vec<TempDir>,
}

/// A node's environment variables.
type NodeEnv = Vec<(&'static str, String)>;

/// What starts one node again: its binary, its environment, its data directory (durable mode).
struct NodeStart {
    bin: PathBuf,
    env: NodeEnv,
    data_dir: Option<PathBuf>,
    log_dir: PathBuf,
}

impl NodeStart {
    fn spawn(&self, name: &str) -> Result<Process> {
        procs::spawn(name, command(&self.bin, &self.env), &self.log_dir)
    }
}

/// Where and how to start a cluster.
pub struct Spec<'a> {
    pub bin_dir: &'a Path,
    pub secondaries: usize,
    /// `DATA_DIR` (a fresh temporary directory per node) with `FSYNC=always`.
    pub durable: bool,
    pub log_dir: &'a Path,
    pub tmp_root: &'a Path,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn command(bin: &Path, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(bin);
    command
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .env("HOST", "127.0.0.1")
        // The nodes run with what users get: the compose file's settings (one scheduler thread
        // per node, since the nodes share a host's CPUs, and one connection thread on the
        // master; a secondary has too few clients to use one).
        .env("WORKER_THREADS", "1")
        .env("CONNECTION_THREADS", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    // Experiments: `BENCH_MASTER_X=v` / `BENCH_SECONDARY_X=v` set `X=v` for that kind of node.
    let prefix = match bin.file_name().and_then(|n| n.to_str()) {
        Some("master") => "BENCH_MASTER_",
        _ => "BENCH_SECONDARY_",
    };
    for (key, value) in std::env::vars() {
        if let Some(key) = key.strip_prefix(prefix) {
            command.env(key, value);
        }
    }
    command
}

impl Cluster {
    pub async fn start(spec: &Spec<'_>) -> Result<Cluster> {
        let master_bin = spec.bin_dir.join("master");
        let secondary_bin = spec.bin_dir.join("secondary");
        for bin in [&master_bin, &secondary_bin] {
            if !bin.is_file() {
                bail!(
                    "{} not found: build the servers first (`cargo build --release --bins`)",
                    bin.display()
                );
            }
        }
        let ports = try_free_ports(1 + 2 * spec.secondaries)?;
        let master_port = ports[0];
        let mut dirs = Vec::new();
        let mut storage = |name: &str| -> Result<(NodeEnv, Option<PathBuf>)> {
            if !spec.durable {
                return Ok((vec![], None));
            }
            let dir = tempfile::Builder::new()
                .prefix(&format!("replog-bench-{name}-"))
                .tempdir_in(spec.tmp_root)?;
            procs::register_dir(dir.path());
            let env = vec![
                ("DATA_DIR", dir.path().display().to_string()),
                ("FSYNC", "always".to_owned()),
            ];
            let path = dir.path().to_path_buf();
            dirs.push(dir);
            Ok((env, Some(path)))
        };

        let mut secondaries = Vec::new();
        let mut secondary_addrs = Vec::new();
        let mut replication = Vec::new();
        let mut secondary_starts = Vec::new();
        for i in 0..spec.secondaries {
            let (http_port, grpc_port) = (ports[1 + 2 * i], ports[2 + 2 * i]);
            let name = format!("secondary-{}", i + 1);
            let mut env = vec![
                ("HTTP_PORT", http_port.to_string()),
                ("GRPC_PORT", grpc_port.to_string()),
                ("MASTER", format!("127.0.0.1:{master_port}")),
            ];
            let (data_env, data_dir) = storage(&name)?;
            env.extend(data_env);
            let start = NodeStart {
                bin: secondary_bin.clone(),
                env,
                data_dir,
                log_dir: spec.log_dir.to_path_buf(),
            };
            secondaries.push(start.spawn(&name)?);
            secondary_starts.push(start);
            secondary_addrs.push(loopback(http_port));
            replication.push(format!("127.0.0.1:{grpc_port}"));
        }
        let mut env = vec![
            ("HTTP_PORT", master_port.to_string()),
            ("SECONDARIES", replication.join(",")),
        ];
        let (data_env, data_dir) = storage("master")?;
        env.extend(data_env);
        let master_start = NodeStart {
            bin: master_bin,
            env,
            data_dir,
            log_dir: spec.log_dir.to_path_buf(),
        };
        let master = master_start.spawn("master")?;
        let mut cluster = Cluster {
            master,
            secondaries,
            master_addr: loopback(master_port),
            secondary_addrs,
            master_start,
            secondary_starts,
            _dirs: dirs,
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// The master's data directory (durable mode).
    pub fn master_data_dir(&self) -> Option<&Path> {
        self.master_start.data_dir.as_deref()
    }

    /// Secondary `i`'s data directory (durable mode).
    pub fn secondary_data_dir(&self, i: usize) -> Option<&Path> {
        self.secondary_starts.get(i)?.data_dir.as_deref()
    }

    /// Stops the master with SIGTERM, waits for it to exit (SIGKILL after `grace`), and starts it
    /// again with the same settings and data directory. Returns when the new process is
    /// started, not when it serves. Must run on the bench's main thread, as [`procs::spawn`].
    pub fn restart_master(&mut self, grace: Duration) -> Result<()> {
        stop(&mut self.master, grace)?;
        self.master = self.master_start.spawn("master")?;
        Ok(())
    }

    /// Stops secondary `i` as [`Cluster::restart_master`] does; with `wipe`, empties its data
    /// directory (a lost disk); starts it again.
    pub fn restart_secondary(&mut self, i: usize, grace: Duration, wipe: bool) -> Result<()> {
        let (Some(process), Some(start)) =
            (self.secondaries.get_mut(i), self.secondary_starts.get(i))
        else {
            bail!("no secondary {i}");
        };
        stop(process, grace)?;
        if wipe {
            if let Some(dir) = &start.data_dir {
                std::fs::remove_dir_all(dir)?;
                std::fs::create_dir_all(dir)?;
            }
        }
        *process = start.spawn(&format!("secondary-{}", i + 1))?;
        Ok(())
    }

    /// Nodes in the cluster, the master included: `w` = all.
    pub fn nodes(&self) -> u32 {
        self.secondaries.len() as u32 + 1
    }

    fn check_running(&mut self) -> Result<()> {
        self.master.check_running()?;
        for secondary in &mut self.secondaries {
            secondary.check_running()?;
        }
        Ok(())
    }

    /// Every node answers `/health`, and an append with w = all commits.
    async fn wait_ready(&mut self) -> Result<()> {
        let addrs: Vec<SocketAddr> = std::iter::once(self.master_addr)
            .chain(self.secondary_addrs.iter().copied())
            .collect();
        for addr in addrs {
            let timeout = Duration::from_secs(20);
            let what = format!("GET /health on {addr}");
            let result = try_wait_for(timeout, &what, || async move {
                let (status, _) = crate::http::get(addr, "/health").await?;
                ensure!(status == StatusCode::OK, "{status}");
                anyhow::Ok(Some(()))
            })
            .await;
            if let Err(e) = result {
                self.check_running()?;
                return Err(e.into());
            }
        }
        let body = append_body(&payload_text("ready"), self.nodes());
        let addr = self.master_addr;
        let result = try_wait_for(
            Duration::from_secs(20),
            "a first append with w = all",
            || {
                let body = body.clone();
                async move {
                    let mut conn = Conn::connect(addr).await?;
                    let (status, answer) =
                        conn.send(Method::POST, "/api/messages", Some(body)).await?;
                    if status != StatusCode::OK {
                        bail!("{status} {}", String::from_utf8_lossy(&answer));
                    }
                    Ok(Some(()))
                }
            },
        )
        .await;
        if let Err(e) = result {
            self.check_running()?;
            return Err(e.into());
        }
        Ok(())
    }

    /// The master's and the secondaries' pids, for [`crate::cpu`].
    pub fn processes(&self) -> crate::cpu::Processes {
        procs::group_pids(&self.master, &self.secondaries)
    }

    /// Peak RSS of the master, and the largest peak RSS among the secondaries, in bytes.
    pub fn peak_rss(&self) -> (u64, u64) {
        procs::group_peak_rss(&self.master, &self.secondaries)
    }
}

/// SIGTERM, then up to `grace` for the process to exit, then SIGKILL.
fn stop(process: &mut Process, grace: Duration) -> Result<()> {
    process.signal(nix::sys::signal::Signal::SIGTERM)?;
    if process.wait_timeout(grace).is_none() {
        eprintln!(
            "{} did not exit within {grace:?} of SIGTERM; killing it",
            process.name()
        );
        process.signal(nix::sys::signal::Signal::SIGKILL)?;
        if process.wait_timeout(Duration::from_secs(10)).is_none() {
            bail!("{} did not exit after SIGKILL", process.name());
        }
    }
    Ok(())
}

/// A message of exactly [`crate::MESSAGE_BYTES`] bytes, starting with `tag`.
pub fn payload_text(tag: &str) -> String {
    let mut text = format!("{tag}-");
    while text.len() < crate::MESSAGE_BYTES {
        text.push(char::from(b'a' + (text.len() % 26) as u8));
    }
    text.truncate(crate::MESSAGE_BYTES);
    text
}

/// The JSON body of an append.
pub fn append_body(message: &str, w: u32) -> Bytes {
    Bytes::from(serde_json::to_vec(&serde_json::json!({ "message": message, "w": w })).unwrap())
}

/// `POST /api/messages` on one keep-alive connection (see [`crate::wire`]).
pub struct HttpAppend {
    post: HttpPost,
}

impl HttpAppend {
    /// Connects; reconnects (if the server ever closes the connection) add to `reconnects`.
    pub async fn connect(
        addr: SocketAddr,
        w: u32,
        reconnects: Arc<AtomicU64>,
    ) -> Result<HttpAppend> {
        let body = append_body(&payload_text("bench"), w);
        Ok(HttpAppend {
            post: HttpPost::connect(addr, "/api/messages", &body, reconnects).await?,
        })
    }
}

impl Client for HttpAppend {
    async fn call(&mut self) -> Result<()> {
        let answer = self.post.call().await?;
        if answer.status != 200 {
            bail!(
                "{} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok(())
    }
}
