//! replog under test: a master and N secondaries from the bench's binary directory, started by
//! the test kit with the bench's settings, and its two
//! clients (HTTP JSON `POST /api/messages`, and the public gRPC `replog.v1.Log/Append`).

use crate::load::Client;
use crate::procs;
use crate::tls::Certs;
use crate::wire::HttpPost;
use anyhow::{bail, Result};
use bytes::Bytes;
use cluster_tests::{try_wait_for, MasterOpts, SecondaryOpts};
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// A cluster the test kit started ([`cluster_tests::Cluster`], node processes), with the
/// bench's settings and the addresses its clients use.
pub struct Cluster {
    pub kit: cluster_tests::Cluster,
    pub master_addr: SocketAddr,
    pub secondary_addrs: Vec<SocketAddr>,
    /// The clients' TLS, when the nodes serve TLS.
    tls: Option<Arc<ClientConfig>>,
    /// The nodes' data directories (durable mode); removed when the cluster is dropped, after
    /// the processes (fields drop in declaration order).
    _data: Option<TempDir>,
}

/// Where and how to start a cluster.
pub struct Spec<'a> {
    pub bin_dir: &'a Path,
    pub secondaries: usize,
    /// `DATA_DIR` per node (under a fresh temporary directory in `tmp_root`) with
    /// `FSYNC=always`.
    pub durable: bool,
    /// TLS on every node with these certificates: the public port (`PUBLIC_TLS`) and mutual
    /// TLS on replication (`TLS_CA`).
    pub tls: Option<&'a Certs>,
    pub log_dir: &'a Path,
    pub tmp_root: &'a Path,
}

/// Experiments: `BENCH_MASTER_X=v` / `BENCH_SECONDARY_X=v` in the bench's environment set `X=v`
/// for that kind of node (after every other setting).
fn overrides(prefix: &str) -> Vec<(String, String)> {
    std::env::vars()
        .filter_map(|(key, value)| Some((key.strip_prefix(prefix)?.to_owned(), value)))
        .collect()
}

impl Cluster {
    /// Starts the nodes and waits until the cluster is ready and an append with w = all has
    /// committed (id 1). Processes are started from the calling thread, which must live as long
    /// as they do (the bench's main thread, see [`procs`]).
    pub async fn start(spec: &Spec<'_>) -> Result<Cluster> {
        let secondary = SecondaryOpts::new().envs(&overrides("BENCH_SECONDARY_"));
        let mut builder = cluster_tests::Cluster::builder()
            .bin_dir(spec.bin_dir)
            .log_dir(spec.log_dir)
            .secondaries(vec![secondary; spec.secondaries])
            .master(MasterOpts::new().envs(&overrides("BENCH_MASTER_")))
            .env("RUST_LOG", "warn")
            // The nodes run with what users get: the compose file's settings (one scheduler
            // thread per node, since the nodes share a host's CPUs, and one connection thread on
            // the master; a secondary has too few clients to use one).
            .env("WORKER_THREADS", "1")
            .env("CONNECTION_THREADS", "1");
        if let Some(certs) = spec.tls {
            let path = |p: &Path| p.display().to_string();
            builder = builder
                .env("TLS_CERT", &path(&certs.cert))
                .env("TLS_KEY", &path(&certs.key))
                .env("TLS_CA", &path(&certs.ca))
                .env("PUBLIC_TLS", "true")
                .https(&certs.ca);
        }
        let data = match spec.durable {
            true => {
                let dir = tempfile::Builder::new()
                    .prefix("replog-bench-")
                    .tempdir_in(spec.tmp_root)?;
                procs::register_dir(dir.path());
                builder = builder.durable().data_root(dir.path());
                Some(dir)
            }
            false => None,
        };
        let kit = builder.try_start().await?;
        let cluster = Cluster {
            master_addr: kit.master.addr(),
            secondary_addrs: kit.secondaries.iter().map(|node| node.addr()).collect(),
            tls: spec.tls.map(|certs| certs.client.clone()),
            kit,
            _data: data,
        };
        cluster.first_append().await?;
        Ok(cluster)
    }

    /// The master's data directory (durable mode).
    pub fn master_data_dir(&self) -> Option<PathBuf> {
        self.kit.master.data_dir()
    }

    /// Stops the master (SIGTERM, SIGKILL after `grace`) and starts it again with the same
    /// settings and data directory. Returns when the new process is started, not when it
    /// serves. Must run on the bench's main thread, as [`Cluster::start`].
    pub async fn restart_master(&mut self, grace: Duration) -> Result<()> {
        let master = &mut self.kit.master;
        master.shut_down(grace).await;
        master.try_start()?;
        Ok(())
    }

    /// Stops secondary `i` as [`Cluster::restart_master`] does; with `wipe`, deletes its data
    /// directory (a lost disk); starts it again.
    pub async fn restart_secondary(&mut self, i: usize, grace: Duration, wipe: bool) -> Result<()> {
        let Some(secondary) = self.kit.secondaries.get_mut(i) else {
            bail!("no secondary {i}");
        };
        secondary.shut_down(grace).await;
        if wipe {
            secondary.wipe_data();
        }
        secondary.try_start()?;
        Ok(())
    }

    /// Nodes in the cluster, the master included: `w` = all.
    pub fn nodes(&self) -> u32 {
        self.kit.secondaries.len() as u32 + 1
    }

    /// An append with w = all commits: the cluster is ready for the bench's clients.
    async fn first_append(&self) -> Result<()> {
        let (addr, nodes) = (self.master_addr, self.nodes());
        try_wait_for(
            Duration::from_secs(20),
            "a first append with w = all",
            || async move {
                let mut append =
                    HttpAppend::connect(addr, self.tls.clone(), nodes, Arc::default()).await?;
                append.call().await?;
                anyhow::Ok(Some(()))
            },
        )
        .await?;
        Ok(())
    }

    /// The master's and the secondaries' pids, for [`crate::cpu`].
    pub fn processes(&self) -> crate::cpu::Processes {
        procs::group_pids(self.kit.master.process(), self.secondaries())
    }

    /// Peak RSS of the master, and the largest peak RSS among the secondaries, in bytes.
    pub fn peak_rss(&self) -> (u64, u64) {
        procs::group_peak_rss(self.kit.master.process(), self.secondaries())
    }

    fn secondaries(&self) -> impl Iterator<Item = &cluster_tests::Process> {
        self.kit.secondaries.iter().map(|node| node.process())
    }
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
        tls: Option<Arc<ClientConfig>>,
        w: u32,
        reconnects: Arc<AtomicU64>,
    ) -> Result<HttpAppend> {
        let body = append_body(&payload_text("bench"), w);
        Ok(HttpAppend {
            post: HttpPost::connect(addr, tls, "/api/messages", &body, reconnects).await?,
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
