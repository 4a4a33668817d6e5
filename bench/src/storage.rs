//! The storage check (`--durable`): the memory check ([`crate::memory`]) on a durable cluster
//! (every node with its own `DATA_DIR`, `FSYNC=always`, the default `CACHE_BYTES`), with `--memory`
//! also on a memory-mode cluster with the same number of messages, one after the other in one
//! run, and the ratios durable / in-memory. Then, on the durable cluster:
//!
//! - the master restarted (SIGTERM, started again on the same `DATA_DIR`): the time from the new
//!   process's start until `GET /health` answers 200 and until `/api/health` says it is not
//!   read-only (it has heard from the secondaries and takes appends), and its RSS then; the same
//!   for a durable cluster holding 1,000 messages, as the reference a long log's start-up is
//!   compared with;
//! - secondary-1 stopped, its `DATA_DIR` emptied (a lost disk) and started again: the time until
//!   it holds the whole log (its `/api/health` `last_id` is the master's), and its peak RSS
//!   (`VmHWM` of the new process, so the catch-up alone);
//! - beside it, Redis's full resync of a stream of the same length ([`crate::resync`]), once the
//!   durable cluster is stopped.
//!
//! The data directories live under `target/bench-data` (or `--tmp-dir`), on the disk, not in a
//! tmpfs that would count them as memory and make fsync free; they are removed at the end.
//! With `--memory` the figures go to `storage.json`; without it (the durable cluster alone, for
//! long logs) to `storage-durable.json`. The table as printed is kept in the file too.

use crate::memory::{self, MemoryCheck, NodeMemory};
use crate::resync::{self, RedisResync};
use crate::{procs, replog, Env};
use anyhow::{bail, Context, Result};
use hyper::StatusCode;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The target: every durable node's peak RSS at most this, whatever the log's length.
pub const DURABLE_RSS_LIMIT_MB: f64 = 128.0;
/// The target: a restarted node holding the log serves within this.
pub const RESTART_LIMIT_MS: f64 = 2000.0;
/// The target: a wiped secondary catches up a million entries within 2 s.
pub const CATCH_UP_LIMIT_PER_SEC: f64 = 500_000.0;
/// The target for a page read from the files (page cache dropped): p50 at most this.
pub const COLD_PAGE_P50_LIMIT_MS: f64 = 1.0;
/// The target for the same pages' p99.
pub const COLD_PAGE_P99_LIMIT_MS: f64 = 5.0;
/// Messages in the small durable cluster whose restart is the reference.
const SMALL_LOG: u64 = 1000;
/// How long a node is given to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
pub struct Restart {
    /// Entries the node held (its `last_id`).
    pub entries: u64,
    /// From the process's start to `GET /health` 200.
    pub health_ms: f64,
    /// From the process's start to `/api/health` with `read_only` false.
    pub ready_ms: f64,
    /// RSS when it was ready, in MiB.
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    /// Segment files (`DATA_DIR/segments/*.log`) and their bytes, at the restart.
    pub segments: usize,
    pub segment_bytes: u64,
    /// The last (active) segment's bytes: start-up replays that one file, so its time follows
    /// this, not the number of entries.
    pub active_segment_bytes: u64,
}

/// The segment files under `data_dir`: how many, their bytes, the last one's bytes.
fn segment_files(data_dir: Option<&Path>) -> (usize, u64, u64) {
    let Some(Ok(entries)) = data_dir.map(|d| std::fs::read_dir(d.join("segments"))) else {
        return (0, 0, 0);
    };
    let mut files: Vec<(u64, u64)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let first: u64 = name.strip_suffix(".log")?.parse().ok()?;
            Some((first, entry.metadata().ok()?.len()))
        })
        .collect();
    files.sort_unstable();
    let total = files.iter().map(|(_, bytes)| bytes).sum();
    (
        files.len(),
        total,
        files.last().map_or(0, |(_, bytes)| *bytes),
    )
}

#[derive(Debug, Serialize)]
pub struct CatchUp {
    pub node: String,
    pub entries: u64,
    /// From the process's start to its `last_id` equal to the master's.
    pub seconds: f64,
    pub entries_per_sec: f64,
    /// The new process's peak RSS (`VmHWM`) once caught up, in MiB.
    pub peak_rss_mb: f64,
    pub rss_mb: f64,
}

/// One figure of one node, both ways.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub node: String,
    pub figure: String,
    pub in_memory: f64,
    pub durable: f64,
    /// durable / in-memory.
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct StorageCheck {
    pub messages: u64,
    /// `CACHE_BYTES` of the durable nodes: the node's default unless set through
    /// `BENCH_MASTER_CACHE_BYTES` / `BENCH_SECONDARY_CACHE_BYTES`.
    pub cache_bytes: String,
    pub data_root: PathBuf,
    pub in_memory: Option<MemoryCheck>,
    pub durable: MemoryCheck,
    pub comparison: Vec<Comparison>,
    pub master_restart: Restart,
    /// The same restart with [`SMALL_LOG`] messages, as the reference.
    pub master_restart_small_log: Restart,
    pub secondary_catch_up: CatchUp,
    /// Redis's full resync of a stream as long as the log the secondary caught up.
    pub redis_resync: RedisResync,
    pub load_average_before: String,
    pub load_average_after: String,
    pub table: String,
}

impl StorageCheck {
    /// Whether the check itself worked (not whether the targets are met).
    pub fn ok(&self) -> bool {
        self.durable.ok() && self.in_memory.as_ref().is_none_or(MemoryCheck::ok)
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn health(addr: SocketAddr) -> Result<serde_json::Value> {
    crate::http::get_json(addr, "/api/health").await
}

/// Restarts the master and measures its start-up.
async fn restart_master(cluster: &mut replog::Cluster) -> Result<Restart> {
    let addr = cluster.master_addr;
    let entries = health(addr).await?["last_id"].as_u64().unwrap_or(0);
    cluster.restart_master(STOP_GRACE).await?;
    let (segments, segment_bytes, active_segment_bytes) =
        segment_files(cluster.master_data_dir().as_deref());
    let started = Instant::now();
    let mut health_ms = None;
    let deadline = started + Duration::from_secs(120);
    let ready_ms = loop {
        if health_ms.is_none() {
            if let Ok((StatusCode::OK, _)) = crate::http::get(addr, "/health").await {
                health_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if health_ms.is_some() {
            if let Ok(view) = health(addr).await {
                if view["read_only"] == serde_json::Value::Bool(false) {
                    break started.elapsed().as_secs_f64() * 1000.0;
                }
            }
        }
        cluster.kit.master.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "the restarted master was not ready within 120 s (log: {})",
                cluster.kit.master.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let now = health(addr).await?["last_id"].as_u64().unwrap_or(0);
    if now != entries {
        bail!("the restarted master holds {now} entries, it held {entries}");
    }
    Ok(Restart {
        entries,
        health_ms: health_ms.unwrap_or(ready_ms),
        ready_ms,
        rss_mb: mb(procs::rss(cluster.kit.master.process())),
        peak_rss_mb: mb(procs::peak_rss(cluster.kit.master.process())),
        segments,
        segment_bytes,
        active_segment_bytes,
    })
}

/// Wipes secondary-1's data directory, starts it again and measures its catch-up.
async fn wipe_secondary(cluster: &mut replog::Cluster) -> Result<CatchUp> {
    let master_last = health(cluster.master_addr).await?["last_id"]
        .as_u64()
        .context("the master's last_id")?;
    let addr = cluster.secondary_addrs[0];
    cluster.restart_secondary(0, STOP_GRACE, true).await?;
    let started = Instant::now();
    let timeout = Duration::from_secs(120.max(master_last / 20_000));
    let node = &mut cluster.kit.secondaries[0];
    let deadline = started + timeout;
    loop {
        if let Ok(view) = health(addr).await {
            if view["last_id"].as_u64() == Some(master_last) {
                break;
            }
        }
        node.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "the wiped secondary did not catch up {master_last} entries within {timeout:?} (log: {})",
                node.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CatchUp {
        node: node.name.clone(),
        entries: master_last,
        seconds,
        entries_per_sec: master_last as f64 / seconds,
        peak_rss_mb: mb(procs::peak_rss(node.process())),
        rss_mb: mb(procs::rss(node.process())),
    })
}

/// The storage check; `with_memory`: the in-memory cluster too, first.
pub async fn run(
    env: &Env,
    messages: u64,
    data_root: &Path,
    with_memory: bool,
) -> Result<StorageCheck> {
    let load_average_before = crate::report::load_average();
    std::fs::create_dir_all(data_root)
        .with_context(|| format!("cannot create {}", data_root.display()))?;
    let in_memory = match with_memory {
        true => Some(memory::run(env, messages).await?),
        false => None,
    };
    let (durable, mut cluster) = memory::check_cluster(env, messages, Some(data_root)).await?;
    eprintln!("storage check: restarting the durable master");
    let master_restart = restart_master(&mut cluster).await?;
    eprintln!("storage check: wiping secondary-1's DATA_DIR and starting it again");
    let secondary_catch_up = wipe_secondary(&mut cluster).await?;
    drop(cluster);
    eprintln!(
        "storage check: Redis full resync of a stream of {} entries",
        secondary_catch_up.entries
    );
    let redis_resync = resync::run(
        secondary_catch_up.entries,
        &env.log_root.join("storage-redis-resync"),
        data_root,
    )
    .await?;

    eprintln!("storage check: restarting the master of a durable cluster of {SMALL_LOG} messages");
    let log_dir = env.log_root.join("memory-check-durable-small");
    let _ = std::fs::remove_dir_all(&log_dir);
    let mut small = replog::Cluster::start(&replog::Spec {
        bin_dir: &env.bin_dir,
        secondaries: 2,
        durable: true,
        tls: None,
        log_dir: &log_dir,
        tmp_root: data_root,
    })
    .await?;
    memory::fill_and_wait(&small, SMALL_LOG).await?;
    let master_restart_small_log = restart_master(&mut small).await?;
    drop(small);

    let comparison = in_memory
        .as_ref()
        .map(|m| compare(m, &durable))
        .unwrap_or_default();
    let cache_bytes = std::env::var("BENCH_MASTER_CACHE_BYTES")
        .map(|v| format!("master {v}"))
        .unwrap_or_else(|_| "default".to_owned());
    let mut check = StorageCheck {
        messages,
        cache_bytes,
        data_root: data_root.to_path_buf(),
        in_memory,
        durable,
        comparison,
        master_restart,
        master_restart_small_log,
        secondary_catch_up,
        redis_resync,
        load_average_before,
        load_average_after: crate::report::load_average(),
        table: String::new(),
    };
    check.table = table(&check);
    Ok(check)
}

fn node_figures(n: &NodeMemory) -> [(&'static str, f64); 7] {
    [
        ("RSS after fill MiB", n.rss_mb),
        ("peak RSS after fill MiB", n.peak_rss_mb),
        ("page p50 ms", n.page_p50_ms),
        ("page p99 ms", n.page_p99_ms),
        ("page max ms", n.page_max_ms),
        ("full list ms", n.full_list_ms),
        (
            "peak RSS after full list MiB",
            n.peak_rss_after_full_list_mb,
        ),
    ]
}

fn compare(memory: &MemoryCheck, durable: &MemoryCheck) -> Vec<Comparison> {
    let row = |node: &str, figure: &str, a: f64, b: f64| Comparison {
        node: node.to_owned(),
        figure: figure.to_owned(),
        in_memory: a,
        durable: b,
        ratio: if a > 0.0 { b / a } else { f64::NAN },
    };
    let mut rows = vec![
        row(
            "cluster",
            "fill ops/s",
            memory.fill_ops_per_sec,
            durable.fill_ops_per_sec,
        ),
        row(
            "cluster",
            "secondaries caught up after fill s",
            memory.catch_up_seconds,
            durable.catch_up_seconds,
        ),
    ];
    for (m, d) in memory.nodes.iter().zip(&durable.nodes) {
        for ((figure, a), (_, b)) in node_figures(m).into_iter().zip(node_figures(d)) {
            rows.push(row(&m.node, figure, a, b));
        }
    }
    rows
}

fn table(check: &StorageCheck) -> String {
    let mut text = String::new();
    let d = &check.durable;
    let _ = writeln!(
        text,
        "storage check: {} x {}-byte messages, w=1, {} clients; durable = DATA_DIR + FSYNC=always, CACHE_BYTES {}; pages {}{}",
        check.messages,
        d.message_bytes,
        d.clients,
        check.cache_bytes,
        d.page_path,
        if d.nodes.iter().all(|n| n.page_cache_dropped) {
            ", durable nodes' files dropped from the page cache first"
        } else {
            ""
        }
    );
    if check.comparison.is_empty() {
        let _ = writeln!(
            text,
            "durable fill: {:.1} s ({:.0} ops/s, {} errors); secondaries caught up {:.2} s later",
            d.fill_seconds, d.fill_ops_per_sec, d.fill_errors, d.catch_up_seconds
        );
        let _ = writeln!(text, "{:<12} {:<30} {:>12}", "node", "figure", "durable");
        for n in &d.nodes {
            for (figure, value) in node_figures(n) {
                let _ = writeln!(text, "{:<12} {:<30} {:>12.3}", n.node, figure, value);
            }
        }
    } else {
        let _ = writeln!(
            text,
            "{:<12} {:<36} {:>12} {:>12} {:>8}",
            "node", "figure", "in-memory", "durable", "ratio"
        );
        for c in &check.comparison {
            let _ = writeln!(
                text,
                "{:<12} {:<36} {:>12.3} {:>12.3} {:>8.2}",
                c.node, c.figure, c.in_memory, c.durable, c.ratio
            );
        }
    }
    let restart = |label: &str, r: &Restart| {
        format!(
            "{label}: {} entries ({} segments, {:.1} MB, the active one {:.1} MB), /health 200 after {:.0} ms, ready (read_only false) after {:.0} ms, RSS {:.1} MiB (peak {:.1})",
            r.entries,
            r.segments,
            r.segment_bytes as f64 / 1e6,
            r.active_segment_bytes as f64 / 1e6,
            r.health_ms,
            r.ready_ms,
            r.rss_mb,
            r.peak_rss_mb
        )
    };
    let _ = writeln!(
        text,
        "{}",
        restart("durable master restarted", &check.master_restart)
    );
    let _ = writeln!(
        text,
        "{}",
        restart(
            "  reference, a durable master restarted",
            &check.master_restart_small_log
        )
    );
    let c = &check.secondary_catch_up;
    let _ = writeln!(
        text,
        "{} wiped and restarted: caught up {} entries in {:.2} s ({:.0} entries/s), peak RSS {:.1} MiB (RSS {:.1} after)",
        c.node, c.entries, c.seconds, c.entries_per_sec, c.peak_rss_mb, c.rss_mb
    );
    let r = &check.redis_resync;
    let _ = writeln!(
        text,
        "  beside it, a Redis replica's full resync (appendfsync always): {} entries in {:.2} s ({:.0} entries/s), peak RSS {:.1} MiB; replog / Redis time {:.2}x (the primary's stream filled in {:.1} s)",
        r.entries,
        r.seconds,
        r.entries_per_sec,
        r.replica_peak_rss_mb,
        c.seconds / r.seconds,
        r.fill_seconds
    );
    let mark = |ok: bool| if ok { "MET   " } else { "MISSED" };
    let peak = d
        .nodes
        .iter()
        .map(|n| n.peak_rss_after_full_list_mb)
        .chain([check.master_restart.peak_rss_mb, c.peak_rss_mb])
        .fold(0.0, f64::max);
    let _ = writeln!(
        text,
        "  {} every durable node's peak RSS <= {DURABLE_RSS_LIMIT_MB} MiB (fill, reads, restart, catch-up): largest {peak:.1} MiB",
        mark(peak <= DURABLE_RSS_LIMIT_MB)
    );
    let p50 = d.nodes.iter().map(|n| n.page_p50_ms).fold(0.0, f64::max);
    let p99 = d.nodes.iter().map(|n| n.page_p99_ms).fold(0.0, f64::max);
    let _ = writeln!(
        text,
        "  {} durable page p50 <= {COLD_PAGE_P50_LIMIT_MS} ms on every node: largest {p50:.3} ms",
        mark(p50 <= COLD_PAGE_P50_LIMIT_MS)
    );
    let _ = writeln!(
        text,
        "  {} durable page p99 <= {COLD_PAGE_P99_LIMIT_MS} ms on every node: largest {p99:.3} ms",
        mark(p99 <= COLD_PAGE_P99_LIMIT_MS)
    );
    let _ = writeln!(
        text,
        "  {} restarted master serves (/health 200) within {RESTART_LIMIT_MS} ms: {:.0} ms ({:.2}x the {}-entry log's {:.0} ms; ready {:.0} ms vs {:.0} ms)",
        mark(check.master_restart.health_ms <= RESTART_LIMIT_MS),
        check.master_restart.health_ms,
        check.master_restart.health_ms / check.master_restart_small_log.health_ms,
        check.master_restart_small_log.entries,
        check.master_restart_small_log.health_ms,
        check.master_restart.ready_ms,
        check.master_restart_small_log.ready_ms,
    );
    let _ = writeln!(
        text,
        "  {} wiped secondary catches up >= {CATCH_UP_LIMIT_PER_SEC:.0} entries/s (a million in 2 s): {:.0} entries/s",
        mark(c.entries_per_sec >= CATCH_UP_LIMIT_PER_SEC),
        c.entries_per_sec
    );
    let _ = writeln!(
        text,
        "(load average before / after: {} / {})",
        check.load_average_before, check.load_average_after
    );
    text
}

pub fn print(check: &StorageCheck) {
    if let Some(m) = &check.in_memory {
        memory::print(m);
    }
    memory::print(&check.durable);
    println!("{}", check.table);
}

/// `storage.json` with the in-memory cluster beside, `storage-durable.json` without it.
pub fn write(check: &StorageCheck, out: &Path) -> Result<PathBuf> {
    let name = match check.in_memory {
        Some(_) => "storage.json",
        None => "storage-durable.json",
    };
    let path = out.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(check)? + "\n")?;
    Ok(path)
}
