//! The memory check: a memory-mode cluster (master + 2 secondaries) filled with N 100-byte
//! messages (w=1, many clients at once), then each node's RSS, the time of a page
//! (`GET /api/messages?from_id=N/2&limit=100`) and of the full list, streamed.

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
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clients that fill the log at once.
const FILL_CLIENTS: usize = 128;
/// Samples of the page read per node.
const PAGE_SAMPLES: usize = 31;
/// The memory check's target: each node's peak RSS at most this, the full list read included.
pub const RSS_LIMIT_MB: f64 = 250.0;
/// The memory check's target: the median time of a page read below this, on every node.
pub const PAGE_LIMIT_MS: f64 = 5.0;

#[derive(Debug, Serialize)]
pub struct NodeMemory {
    pub node: String,
    /// RSS once every node holds the whole log, before any read, in MiB.
    pub rss_mb: f64,
    /// Peak RSS (VmHWM) at that point, in MiB.
    pub peak_rss_mb: f64,
    pub page_p50_ms: f64,
    pub page_max_ms: f64,
    pub full_list_bytes: u64,
    pub full_list_ms: f64,
    /// Peak RSS after the full list was read, in MiB: it shows whether serving the list held a
    /// second copy of the log.
    pub peak_rss_after_full_list_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct MemoryCheck {
    pub messages: u64,
    pub message_bytes: usize,
    pub clients: usize,
    pub fill_seconds: f64,
    pub fill_ops_per_sec: f64,
    pub fill_errors: u64,
    /// Seconds from the end of the fill until every secondary showed the whole log.
    pub catch_up_seconds: f64,
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

async fn measure_node(
    name: &str,
    process: &Process,
    addr: SocketAddr,
    page: &str,
) -> Result<NodeMemory> {
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let (rss, peak) = (procs::rss(process), procs::peak_rss(process));
    let mut conn = Conn::connect(addr).await?;
    let (status, body) = conn.send(Method::GET, page, None).await?;
    let listed = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["messages"].as_array().map(Vec::len))
        .unwrap_or(0);
    if status != StatusCode::OK || listed != 100 {
        bail!("GET {page} on {name}: {status}, {listed} messages");
    }
    let mut samples = Vec::with_capacity(PAGE_SAMPLES);
    for _ in 0..PAGE_SAMPLES {
        let t0 = Instant::now();
        let (status, _) = conn.send(Method::GET, page, None).await?;
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        if status != StatusCode::OK {
            bail!("GET {page} on {name}: {status}");
        }
    }
    samples.sort_by(f64::total_cmp);
    let (status, bytes, elapsed) = conn.get_streamed("/api/messages").await?;
    if status != StatusCode::OK {
        bail!("GET /api/messages on {name}: {status}");
    }
    Ok(NodeMemory {
        node: name.to_owned(),
        rss_mb: mb(rss),
        peak_rss_mb: mb(peak),
        page_p50_ms: samples[samples.len() / 2],
        page_max_ms: *samples.last().unwrap(),
        full_list_bytes: bytes,
        full_list_ms: elapsed.as_secs_f64() * 1000.0,
        peak_rss_after_full_list_mb: mb(procs::peak_rss(process)),
    })
}

pub async fn run(env: &Env, messages: u64) -> Result<MemoryCheck> {
    eprintln!("memory check: appending {messages} messages (w=1, {FILL_CLIENTS} clients) to a memory-mode cluster");
    let cluster = replog::Cluster::start(&replog::Spec {
        bin_dir: &env.bin_dir,
        secondaries: 2,
        durable: false,
        log_dir: &env.log_root.join("memory-check"),
        tmp_root: &env.tmp_root,
    })
    .await?;
    let (fill_seconds, fill_errors) = fill(cluster.master_addr, messages).await?;
    // The readiness probe was id 1; the fill took ids 2..=messages+1.
    let last = messages + 1;
    let caught_up = Instant::now();
    let addrs: Vec<SocketAddr> = std::iter::once(cluster.master_addr)
        .chain(cluster.secondary_addrs.iter().copied())
        .collect();
    for addr in &addrs {
        let addr = *addr;
        try_wait_for(
            Duration::from_secs(300),
            format!("{addr} shows id {last}"),
            || async move { anyhow::Ok(shows(addr, last).await?.then_some(())) },
        )
        .await?;
    }
    let catch_up_seconds = caught_up.elapsed().as_secs_f64();
    let page = format!("/api/messages?from_id={}&limit=100", messages / 2);
    let mut nodes = Vec::new();
    let processes = std::iter::once(&cluster.master).chain(cluster.secondaries.iter());
    for (process, addr) in processes.zip(addrs) {
        nodes.push(measure_node(process.name(), process, addr, &page).await?);
    }
    Ok(MemoryCheck {
        messages,
        message_bytes: crate::MESSAGE_BYTES,
        clients: FILL_CLIENTS,
        fill_seconds,
        fill_ops_per_sec: messages as f64 / fill_seconds,
        fill_errors,
        catch_up_seconds,
        page_path: page,
        nodes,
    })
}

pub fn print(check: &MemoryCheck) {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "memory check: {} x {}-byte messages, w=1, {} clients: {:.1} s ({:.0} ops/s, {} errors); secondaries caught up {:.2} s later",
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
        "{:<12} {:>8} {:>9} {:>13} {:>13} {:>11} {:>10} {:>16}",
        "node",
        "RSS MiB",
        "peak MiB",
        "page p50 ms",
        "page max ms",
        "full MB",
        "full ms",
        "peak after MiB"
    );
    for n in &check.nodes {
        let _ = writeln!(
            text,
            "{:<12} {:>8.1} {:>9.1} {:>13.3} {:>13.3} {:>11.1} {:>10.0} {:>16.1}",
            n.node,
            n.rss_mb,
            n.peak_rss_mb,
            n.page_p50_ms,
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
        "  {} page `{}` p50 < {PAGE_LIMIT_MS} ms on every node",
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
