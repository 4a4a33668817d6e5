//! The memory check: a cluster (master + 2 secondaries) filled with N 100-byte messages (w=1,
//! many clients at once), then each node's RSS, the time of 1,000 pages read at random places
//! of the whole log (`GET /api/messages?from_id=..&limit=100`, a different page each time, in a
//! random order) and of the full list, streamed.
//!
//! `--memory` alone runs it on a memory-mode cluster and writes `memory.json`; the storage check
//! (`--durable`, [`crate::storage`]) runs it on a durable cluster too, with the same code, and
//! compares the two. On a durable node the payload cache (`CACHE_BYTES`, 64 MiB: about 500,000
//! payloads of 100 bytes) holds the newest entries, so the pages below it (half of them at a
//! million messages, 95 % at ten million) are read back from the segment files; the node's
//! files are dropped from the page cache first
//! (`posix_fadvise(DONTNEED)`, which needs no privilege), so the pages and the full list read
//! the disk, not the kernel's copy.

use crate::http::Conn;
use crate::procs;
use crate::replog::{self, append_body, payload_text};
use crate::Env;
use anyhow::{bail, Result};
use cluster_tests::{try_wait_for, Process};
use hyper::{Method, StatusCode};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clients that fill the log at once.
const FILL_CLIENTS: usize = 128;
/// Pages read per node (fewer when the log has fewer pages).
const PAGE_SAMPLES: u64 = 1000;
/// The seed of the pages' places: every run reads the same pages of a log of the same length.
const PAGE_SEED: u64 = 23;
/// The memory check's target: each node's peak RSS at most this, the full list read included.
pub const RSS_LIMIT_MB: f64 = 250.0;
/// The memory check's target: the median time of a page read below this, on every node.
pub const PAGE_LIMIT_MS: f64 = 5.0;

#[derive(Debug, Clone, Serialize)]
pub struct NodeMemory {
    pub node: String,
    /// RSS once every node holds the whole log, before any read, in MiB.
    pub rss_mb: f64,
    /// Peak RSS (VmHWM) at that point, in MiB.
    pub peak_rss_mb: f64,
    /// Whether the node's data files were dropped from the page cache before its reads
    /// (durable mode).
    pub page_cache_dropped: bool,
    pub page_p50_ms: f64,
    pub page_p99_ms: f64,
    pub page_max_ms: f64,
    pub full_list_bytes: u64,
    pub full_list_ms: f64,
    /// Peak RSS after the full list was read, in MiB: it shows whether serving the list held a
    /// second copy of the log.
    pub peak_rss_after_full_list_mb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryCheck {
    /// "in-memory" or "durable" (`DATA_DIR`, `FSYNC=always`, the default `CACHE_BYTES`).
    pub mode: String,
    pub messages: u64,
    pub message_bytes: usize,
    pub clients: usize,
    pub fill_seconds: f64,
    pub fill_ops_per_sec: f64,
    pub fill_errors: u64,
    /// Seconds from the end of the fill until every secondary showed the whole log.
    pub catch_up_seconds: f64,
    /// The pages read: how many, and the range their `from_id`s were drawn from.
    pub page_path: String,
    pub nodes: Vec<NodeMemory>,
}

impl MemoryCheck {
    /// Whether the check itself worked (not whether the targets are met).
    pub fn ok(&self) -> bool {
        self.fill_errors == 0
    }
}

async fn fill(addr: SocketAddr, messages: u64) -> Result<(f64, u64)> {
    let remaining = Arc::new(AtomicU64::new(messages));
    let errors = Arc::new(AtomicU64::new(0));
    let body = append_body(&payload_text("memory"), 1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..FILL_CLIENTS {
        let mut conn = Conn::connect(addr).await?;
        let (remaining, errors, body) = (remaining.clone(), errors.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let ok = matches!(
                    conn.send(Method::POST, "/api/messages", Some(body.clone()))
                        .await,
                    Ok((StatusCode::OK, _))
                );
                if !ok {
                    // Put it back, so exactly `messages` appends succeed; give up after many.
                    remaining.fetch_add(1, Ordering::Relaxed);
                    if errors.fetch_add(1, Ordering::Relaxed) > 1000 {
                        return;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let errors = errors.load(Ordering::Relaxed);
    if remaining.load(Ordering::Relaxed) > 0 {
        bail!("the fill gave up after {errors} failed appends");
    }
    Ok((started.elapsed().as_secs_f64(), errors))
}

/// Whether the node at `addr` shows entry `id` (the last one appended).
async fn shows(addr: SocketAddr, id: u64) -> Result<bool> {
    let answer =
        crate::http::get_json(addr, &format!("/api/messages?from_id={id}&limit=1")).await?;
    Ok(answer["messages"]
        .as_array()
        .is_some_and(|list| list.iter().any(|m| m["id"].as_u64() == Some(id))))
}

/// The `from_id` of each page read, in the order read: the log (ids 1..=messages+1) cut into
/// slots of 100 ids, [`PAGE_SAMPLES`] different slots drawn at random (every slot if there are
/// fewer) and a random id in each, so each read is a different full page, anywhere in the log,
/// and the next read is not where the last one ended (no help from read-ahead).
pub fn page_ids(messages: u64) -> Vec<u64> {
    // The last full page starts at messages + 1 - 99.
    let slots = (messages + 1 - 99) / 100;
    let mut state = PAGE_SEED;
    // splitmix64: enough randomness for places, and no dependency.
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut taken = std::collections::HashSet::new();
    let mut ids = Vec::new();
    while (ids.len() as u64) < PAGE_SAMPLES.min(slots) {
        let slot = next() % slots;
        if taken.insert(slot) {
            ids.push(1 + slot * 100 + next() % 100);
        }
    }
    ids
}

/// Drops every file under `dir` from the page cache (`POSIX_FADV_DONTNEED`; the files are
/// synced, so their pages are clean and go). Whether it worked for every file.
pub fn drop_page_cache(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut ok = true;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            ok &= drop_page_cache(&path);
        } else if let Ok(file) = std::fs::File::open(&path) {
            // SAFETY: the descriptor is open for the whole call.
            let done =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            ok &= done == 0;
        } else {
            ok = false;
        }
    }
    ok
}

async fn measure_node(
    name: &str,
    process: &Process,
    addr: SocketAddr,
    pages: &[u64],
    data_dir: Option<&Path>,
) -> Result<NodeMemory> {
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let (rss, peak) = (procs::rss(process), procs::peak_rss(process));
    let mut conn = Conn::connect(addr).await?;
    // A first request, so the samples measure reads and not the connection's setup.
    let (status, _) = conn.send(Method::GET, "/api/health", None).await?;
    if status != StatusCode::OK {
        bail!("GET /api/health on {name}: {status}");
    }
    let page_cache_dropped = data_dir.is_some_and(drop_page_cache);
    let mut samples = Vec::with_capacity(pages.len());
    for from_id in pages {
        let page = format!("/api/messages?from_id={from_id}&limit=100");
        let t0 = Instant::now();
        let (status, body) = conn.send(Method::GET, &page, None).await?;
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        let listed = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["messages"].as_array().map(Vec::len))
            .unwrap_or(0);
        if status != StatusCode::OK || listed != 100 {
            bail!("GET {page} on {name}: {status}, {listed} messages");
        }
    }
    samples.sort_by(f64::total_cmp);
    let percentile = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let (status, bytes, elapsed) = conn.get_streamed("/api/messages").await?;
    if status != StatusCode::OK {
        bail!("GET /api/messages on {name}: {status}");
    }
    Ok(NodeMemory {
        node: name.to_owned(),
        rss_mb: mb(rss),
        peak_rss_mb: mb(peak),
        page_cache_dropped,
        page_p50_ms: percentile(0.50),
        page_p99_ms: percentile(0.99),
        page_max_ms: percentile(1.0),
        full_list_bytes: bytes,
        full_list_ms: elapsed.as_secs_f64() * 1000.0,
        peak_rss_after_full_list_mb: mb(procs::peak_rss(process)),
    })
}

/// Every node of `cluster`, the master first: its process, address and data directory.
fn nodes(cluster: &replog::Cluster) -> Vec<(&Process, SocketAddr, Option<PathBuf>)> {
    cluster
        .kit
        .nodes()
        .map(|node| (node.process(), node.addr(), node.data_dir()))
        .collect()
}

/// Fills `cluster` with `messages` appends and waits until every node shows the last one: the
/// fill's figures, and the last id.
pub async fn fill_and_wait(
    cluster: &replog::Cluster,
    messages: u64,
) -> Result<(f64, u64, f64, u64)> {
    let (fill_seconds, fill_errors) = fill(cluster.master_addr, messages).await?;
    // The readiness probe was id 1; the fill took ids 2..=messages+1.
    let last = messages + 1;
    let caught_up = Instant::now();
    // A durable secondary syncs what it takes: give a long log time to follow.
    let timeout = Duration::from_secs(300.max(messages / 10_000));
    for (_, addr, _) in nodes(cluster) {
        try_wait_for(timeout, format!("{addr} shows id {last}"), || async move {
            anyhow::Ok(shows(addr, last).await?.then_some(()))
        })
        .await?;
    }
    Ok((
        fill_seconds,
        fill_errors,
        caught_up.elapsed().as_secs_f64(),
        last,
    ))
}

/// Starts a cluster (durable with `data_root`, in memory without), fills it and measures every
/// node; the cluster is handed back running, for the storage check's restarts.
pub async fn check_cluster(
    env: &Env,
    messages: u64,
    data_root: Option<&Path>,
) -> Result<(MemoryCheck, replog::Cluster)> {
    if messages < 1000 {
        bail!("the memory check needs at least 1000 messages");
    }
    let mode = if data_root.is_some() {
        "durable"
    } else {
        "in-memory"
    };
    eprintln!(
        "memory check: appending {messages} messages (w=1, {FILL_CLIENTS} clients) to a {mode} cluster"
    );
    // The nodes' logs of this run only (a restart appends to its node's).
    let log_dir = env.log_root.join(format!("memory-check-{mode}"));
    let _ = std::fs::remove_dir_all(&log_dir);
    let cluster = replog::Cluster::start(&replog::Spec {
        bin_dir: &env.bin_dir,
        secondaries: 2,
        durable: data_root.is_some(),
        tls: None,
        log_dir: &log_dir,
        tmp_root: data_root.unwrap_or(&env.tmp_root),
    })
    .await?;
    let (fill_seconds, fill_errors, catch_up_seconds, _) =
        fill_and_wait(&cluster, messages).await?;
    let pages = page_ids(messages);
    let mut measured = Vec::new();
    for (process, addr, data_dir) in nodes(&cluster) {
        let data_dir = data_dir.as_deref();
        measured.push(measure_node(process.name(), process, addr, &pages, data_dir).await?);
    }
    let check = MemoryCheck {
        mode: mode.to_owned(),
        messages,
        message_bytes: crate::MESSAGE_BYTES,
        clients: FILL_CLIENTS,
        fill_seconds,
        fill_ops_per_sec: messages as f64 / fill_seconds,
        fill_errors,
        catch_up_seconds,
        page_path: format!(
            "/api/messages?from_id=<random in 1..={}>&limit=100 ({} different pages, random order)",
            messages + 1 - 99,
            pages.len()
        ),
        nodes: measured,
    };
    Ok((check, cluster))
}

/// `--memory`: the check on a memory-mode cluster.
pub async fn run(env: &Env, messages: u64) -> Result<MemoryCheck> {
    let (check, _cluster) = check_cluster(env, messages, None).await?;
    Ok(check)
}

pub fn print(check: &MemoryCheck) {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "memory check ({}): {} x {}-byte messages, w=1, {} clients: {:.1} s ({:.0} ops/s, {} errors); secondaries caught up {:.2} s later",
        check.mode,
        check.messages,
        check.message_bytes,
        check.clients,
        check.fill_seconds,
        check.fill_ops_per_sec,
        check.fill_errors,
        check.catch_up_seconds
    );
    let _ = writeln!(
        text,
        "{:<12} {:>8} {:>9} {:>12} {:>12} {:>12} {:>11} {:>10} {:>16}",
        "node",
        "RSS MiB",
        "peak MiB",
        "page p50 ms",
        "page p99 ms",
        "page max ms",
        "full MB",
        "full ms",
        "peak after MiB"
    );
    for n in &check.nodes {
        let _ = writeln!(
            text,
            "{:<12} {:>8.1} {:>9.1} {:>12.3} {:>12.3} {:>12.3} {:>11.1} {:>10.0} {:>16.1}",
            n.node,
            n.rss_mb,
            n.peak_rss_mb,
            n.page_p50_ms,
            n.page_p99_ms,
            n.page_max_ms,
            n.full_list_bytes as f64 / 1e6,
            n.full_list_ms,
            n.peak_rss_after_full_list_mb
        );
    }
    let rss_ok = check
        .nodes
        .iter()
        .all(|n| n.peak_rss_after_full_list_mb <= RSS_LIMIT_MB);
    let page_ok = check.nodes.iter().all(|n| n.page_p50_ms < PAGE_LIMIT_MS);
    let mark = |ok: bool| if ok { "MET   " } else { "MISSED" };
    let _ = writeln!(
        text,
        "  {} every node's peak RSS <= {RSS_LIMIT_MB} MiB with {} messages (full list read included)",
        mark(rss_ok),
        check.messages
    );
    let _ = writeln!(
        text,
        "  {} pages `{}` p50 < {PAGE_LIMIT_MS} ms on every node",
        mark(page_ok),
        check.page_path
    );
    println!("{text}");
}

pub fn write(check: &MemoryCheck, out: &Path) -> Result<()> {
    std::fs::write(
        out.join("memory.json"),
        serde_json::to_string_pretty(check)? + "\n",
    )?;
    Ok(())
}
