//! Redis's full resync, beside the storage check's wiped secondary: a durable Redis primary
//! (`appendfsync always`, as the bench's durable rows run it) holding one stream of N 100-byte
//! entries, then a fresh durable replica started with `--replicaof` it; the time from the
//! replica's start until its `INFO replication` says `master_link_status:up` and
//! `master_sync_in_progress:0` and its `XLEN` is N. The primary sends a diskless full sync at
//! once (`repl-diskless-sync`, no delay, see [`crate::redis_peer`]).

use crate::procs;
use crate::redis_peer::{self, connect};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// `XADD`s per pipelined round trip while filling the primary.
const FILL_BATCH: u64 = 1000;

#[derive(Debug, Serialize)]
pub struct RedisResync {
    pub entries: u64,
    /// Filling the primary's stream (pipelined `XADD`s, fsynced per batch).
    pub fill_seconds: f64,
    /// From the replica's start until it is in sync and holds every entry.
    pub seconds: f64,
    pub entries_per_sec: f64,
    /// The replica's peak RSS (`VmHWM`) then, in MiB.
    pub replica_peak_rss_mb: f64,
}

/// Whether the replica on `port` is in sync with its primary and holds `entries` entries.
async fn in_sync(port: u16, entries: u64) -> Result<bool> {
    let mut con = connect(port).await?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut con)
        .await?;
    let has = |line: &str| info.lines().any(|l| l.trim_end() == line);
    if !(has("master_link_status:up") && has("master_sync_in_progress:0")) {
        return Ok(false);
    }
    let len: u64 = redis::cmd("XLEN").arg("s").query_async(&mut con).await?;
    Ok(len == entries)
}

pub async fn run(entries: u64, log_dir: &Path, tmp_root: &Path) -> Result<RedisResync> {
    let _ = std::fs::remove_dir_all(log_dir);
    std::fs::create_dir_all(log_dir)?;
    let primary = redis_peer::Cluster::start(&redis_peer::Spec {
        replicas: 0,
        durable: true,
        tls: None,
        log_dir,
        tmp_root,
    })
    .await?;
    let message = crate::replog::payload_text("resync");
    let mut con = connect(primary.primary_port).await?;
    let started = Instant::now();
    let mut left = entries;
    while left > 0 {
        let batch = left.min(FILL_BATCH);
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("XADD")
                .arg("s")
                .arg("*")
                .arg("m")
                .arg(&message)
                .ignore();
        }
        pipe.query_async::<()>(&mut con).await?;
        left -= batch;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    let len: u64 = redis::cmd("XLEN").arg("s").query_async(&mut con).await?;
    if len != entries {
        bail!("the redis primary's stream holds {len} entries, not {entries}");
    }

    let port = cluster_tests::try_free_ports(1)?[0];
    let dir = tempfile::Builder::new()
        .prefix("redis-bench-resync-replica-")
        .tempdir_in(tmp_root)?;
    procs::register_dir(dir.path());
    let started = Instant::now();
    let mut replica = procs::spawn(
        "redis-resync-replica",
        redis_peer::server(port, dir.path(), true, Some(primary.primary_port), None),
        log_dir,
    )?;
    let deadline = started + Duration::from_secs(120.max(entries / 20_000));
    // Errors (not listening yet, LOADING) mean not yet.
    while !in_sync(port, entries).await.unwrap_or(false) {
        replica.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "the redis replica did not finish its full resync of {entries} entries (log: {})",
                replica.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RedisResync {
        entries,
        fill_seconds,
        seconds,
        entries_per_sec: entries as f64 / seconds,
        replica_peak_rss_mb: procs::peak_rss(&replica) as f64 / (1024.0 * 1024.0),
    })
}
