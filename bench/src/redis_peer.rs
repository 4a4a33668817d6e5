//! The peer: Debian's `redis-server` as a primary and N replicas on loopback, and its client
//! (`XADD s * m <message>`, then `WAIT N 0` for the "every replica holds it" row).

use crate::load::Client;
use crate::procs;
use crate::tls::Certs;
use crate::wire::{RedisPipeline, Reply};
use anyhow::{bail, Context, Result};
use cluster_tests::{try_free_ports, try_wait_for, Process};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use rustls::ClientConfig;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

pub struct Cluster {
    pub primary: Process,
    pub replicas: Vec<Process>,
    /// The primary's plain port (the bench's own checks use it).
    pub primary_port: u16,
    /// Where the clients connect: the plain port, or with TLS the primary's TLS port.
    pub client_port: u16,
    _dirs: Vec<TempDir>,
}

pub struct Spec<'a> {
    pub replicas: usize,
    /// `appendonly yes` + `appendfsync always` on every instance (no persistence otherwise).
    pub durable: bool,
    /// TLS with these certificates: clients on a TLS port, replication over TLS.
    pub tls: Option<&'a Certs>,
    pub log_dir: &'a Path,
    pub tmp_root: &'a Path,
}

/// One instance's TLS: its TLS port, and the certificates it presents (replicas also to their
/// primary: `tls-replication`). Clients are not asked for a certificate, as on replog's public
/// port.
pub(crate) struct ServerTls<'a> {
    pub port: u16,
    pub certs: &'a Certs,
}

/// A Redis instance on `port`; with `tls`, also on a TLS port, and a replica then follows its
/// primary's TLS port (`replica_of` names it).
pub(crate) fn server(
    port: u16,
    dir: &Path,
    durable: bool,
    replica_of: Option<u16>,
    tls: Option<&ServerTls<'_>>,
) -> Command {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--daemonize", "no"])
        .args(["--protected-mode", "no"])
        .args(["--save", ""])
        .args(["--logfile", ""])
        .args(["--dir", &dir.display().to_string()])
        // Full syncs stream straight to the replicas and start at once (7.x waits 5 s).
        .args(["--repl-diskless-sync", "yes"])
        .args(["--repl-diskless-sync-delay", "0"]);
    if durable {
        command
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    if let Some(primary) = replica_of {
        command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    if let Some(tls) = tls {
        let path = |p: &Path| p.display().to_string();
        command
            .args(["--tls-port", &tls.port.to_string()])
            .args(["--tls-cert-file", &path(&tls.certs.cert)])
            .args(["--tls-key-file", &path(&tls.certs.key)])
            .args(["--tls-ca-cert-file", &path(&tls.certs.ca)])
            .args(["--tls-auth-clients", "no"])
            .args(["--tls-replication", "yes"]);
    }
    command
}

pub async fn connect(port: u16) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    // No response timeout: `WAIT` may legitimately block; the closed loop has its own limit.
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("cannot connect to redis on port {port}"))
}

impl Cluster {
    pub async fn start(spec: &Spec<'_>) -> Result<Cluster> {
        let n = 1 + spec.replicas;
        let ports = try_free_ports(if spec.tls.is_some() { 2 * n } else { n })?;
        // With TLS, instance i also listens on ports[n + i].
        let tls = |i: usize| {
            spec.tls.map(|certs| ServerTls {
                port: ports[n + i],
                certs,
            })
        };
        // A replica follows the primary's TLS port when there is one.
        let follow = if spec.tls.is_some() {
            ports[n]
        } else {
            ports[0]
        };
        let mut dirs = Vec::new();
        let dir = |name: &str| -> Result<TempDir> {
            let dir = tempfile::Builder::new()
                .prefix(&format!("redis-bench-{name}-"))
                .tempdir_in(spec.tmp_root)?;
            procs::register_dir(dir.path());
            Ok(dir)
        };
        let primary_dir = dir("primary")?;
        let primary = procs::spawn(
            "redis-primary",
            server(
                ports[0],
                primary_dir.path(),
                spec.durable,
                None,
                tls(0).as_ref(),
            ),
            spec.log_dir,
        )?;
        dirs.push(primary_dir);
        let mut replicas = Vec::new();
        for (i, port) in ports[1..n].iter().enumerate() {
            let name = format!("redis-replica-{}", i + 1);
            let replica_dir = dir(&name)?;
            replicas.push(procs::spawn(
                &name,
                server(
                    *port,
                    replica_dir.path(),
                    spec.durable,
                    Some(follow),
                    tls(i + 1).as_ref(),
                ),
                spec.log_dir,
            )?);
            dirs.push(replica_dir);
        }
        let mut cluster = Cluster {
            primary,
            replicas,
            primary_port: ports[0],
            client_port: if spec.tls.is_some() {
                ports[n]
            } else {
                ports[0]
            },
            _dirs: dirs,
        };
        if let Err(e) = cluster.wait_ready().await {
            cluster.primary.check_running()?;
            for replica in &mut cluster.replicas {
                replica.check_running()?;
            }
            return Err(e);
        }
        Ok(cluster)
    }

    /// The primary reports every replica connected and `online` (INFO replication).
    async fn wait_ready(&self) -> Result<()> {
        let port = self.primary_port;
        let want = self.replicas.len();
        let what = format!("{want} redis replicas online");
        try_wait_for(Duration::from_secs(20), &what, || async move {
            let mut con = connect(port).await?;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut con)
                .await?;
            let online = info
                .lines()
                .filter(|line| line.starts_with("slave") && line.contains("state=online"))
                .count();
            anyhow::Ok((online >= want).then_some(()))
        })
        .await?;
        // And a write reaches them all.
        let mut con = connect(port).await?;
        let acked: i64 = redis::cmd("WAIT")
            .arg(want)
            .arg(5000)
            .query_async(&mut con)
            .await?;
        if acked < want as i64 {
            bail!("redis WAIT {want} answered {acked}");
        }
        Ok(())
    }

    /// The primary's and the replicas' pids, for [`crate::cpu`].
    pub fn processes(&self) -> crate::cpu::Processes {
        procs::group_pids(&self.primary, &self.replicas)
    }

    /// Peak RSS of the primary, and the largest peak RSS among the replicas, in bytes.
    pub fn peak_rss(&self) -> (u64, u64) {
        procs::group_peak_rss(&self.primary, &self.replicas)
    }
}

/// One client on its own connection: `XADD`, and with `wait` also `WAIT <replicas> 0`,
/// pipelined in one round trip (one request, one answer, like an HTTP append; see
/// [`crate::wire`]).
pub struct Append {
    pipeline: RedisPipeline,
    wait: Option<usize>,
}

impl Append {
    pub async fn connect(
        port: u16,
        tls: Option<Arc<ClientConfig>>,
        wait: Option<usize>,
    ) -> Result<Append> {
        let message = crate::replog::payload_text("bench");
        let xadd: Vec<&[u8]> = vec![b"XADD", b"s", b"*", b"m", message.as_bytes()];
        let replicas = wait.map(|n| n.to_string());
        let mut commands = vec![xadd];
        if let Some(replicas) = &replicas {
            commands.push(vec![b"WAIT", replicas.as_bytes(), b"0"]);
        }
        Ok(Append {
            pipeline: RedisPipeline::connect(port, tls, &commands).await?,
            wait,
        })
    }
}

impl Client for Append {
    async fn call(&mut self) -> Result<()> {
        let replies = self.pipeline.call().await?;
        if let Some(replicas) = self.wait {
            match replies.last() {
                Some(Reply::Integer(acked)) if *acked >= replicas as i64 => {}
                other => bail!("WAIT {replicas} 0 answered {other:?}"),
            }
        }
        Ok(())
    }
}
