//! `--failover`: how long a failover cluster (three `replog` nodes and etcd, default lease)
//! is without a master. Clients append with `w=2` through the two nodes that will survive;
//! the master is killed (SIGKILL) and the time from the kill to the first acknowledged append
//! that was *sent* after it (so only the new master can have committed it) is one sample.
//! Appends in flight at the kill that got no definite answer count as unknown outcomes. The
//! killed node is started again, rejoins as a secondary, and the next round kills whichever
//! node is master then.

use anyhow::{Context, Result};
use cluster_tests::failover::FailoverCluster;
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clients appending during every kill.
const CLIENTS: usize = 4;
/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a new master's first acknowledgement.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
pub struct Report {
    pub kills: usize,
    pub ttl_ms: u64,
    /// Kill to first acknowledged append on the new master, in ms, per kill.
    pub takeover_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Appends in flight at a kill whose outcome was unknown (504 or no answer), in all.
    pub unknown: usize,
    /// Appends in flight at a kill answered 503/500 (nothing appended), in all.
    pub refused: usize,
    /// Whether p99 < TTL + 1 s (the goal).
    pub goal_met: bool,
}

/// One answer: when sent and answered (since the round's start) and its status (`None`: no
/// answer).
#[derive(Debug, Clone, Copy)]
struct Answer {
    sent: Duration,
    answered: Duration,
    status: Option<u16>,
}

pub async fn run(kills: usize) -> Result<Report> {
    let ttl_ms = 3000;
    let mut cluster = FailoverCluster::start(3, &[("FAILOVER_TTL_MS", "3000")]).await;
    let mut takeover_ms = Vec::new();
    let (mut unknown, mut refused) = (0, 0);
    for round in 0..kills {
        let (master, term) = cluster.wait_master(TAKEOVER_LIMIT, None).await;
        let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != master).collect();
        let start = Instant::now();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let appender = cluster
                    .appender_on(survivors[c % survivors.len()])
                    .with_timeout(ANSWER_TIMEOUT);
                let (answers, stop) = (answers.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let sent = start.elapsed();
                        let status = appender
                            .try_append(&format!("r{round}-c{c}-{n}"), Some(2))
                            .await
                            .ok()
                            .map(|(s, _)| s.as_u16());
                        let answered = start.elapsed();
                        n += 1;
                        answers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Answer {
                                sent,
                                answered,
                                status,
                            });
                        if status != Some(200) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.nodes[master].kill();
        let killed = start.elapsed();
        let first = cluster_tests::wait_for(
            TAKEOVER_LIMIT,
            "an append acknowledged by the new master",
            || {
                let found = answers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|a| a.sent >= killed && a.status == Some(200))
                    .map(|a| a.answered)
                    .min();
                async move { found }
            },
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in tasks {
            task.await.context("a client task")?;
        }
        let answers = answers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for a in answers
            .iter()
            .filter(|a| a.sent < killed && a.answered >= killed)
        {
            match a.status {
                Some(200) => {}
                Some(504) | None => unknown += 1,
                Some(_) => refused += 1,
            }
        }
        let took = (first - killed).as_secs_f64() * 1000.0;
        eprintln!(
            "  kill {:>2}: {} (term {term}) -> takeover in {took:.0} ms",
            round + 1,
            cluster.nodes[master].name
        );
        takeover_ms.push(took);
        cluster.nodes[master].start();
        cluster.wait_master(TAKEOVER_LIMIT, None).await;
    }
    let mut sorted = takeover_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
    let (p50_ms, p99_ms) = (at(0.5), at(0.99));
    Ok(Report {
        kills,
        ttl_ms,
        p50_ms,
        p99_ms,
        max_ms: sorted.last().copied().unwrap_or(0.0),
        goal_met: p99_ms < ttl_ms as f64 + 1000.0,
        takeover_ms,
        unknown,
        refused,
    })
}

pub fn print(report: &Report) {
    println!(
        "failover: {} kills of the master (FAILOVER_TTL_MS {}): kill to first acknowledged append on the new master p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; appends in flight at the kills: {} unknown, {} refused; goal p99 < TTL + 1 s: {}",
        report.kills,
        report.ttl_ms,
        report.p50_ms,
        report.p99_ms,
        report.max_ms,
        report.unknown,
        report.refused,
        if report.goal_met { "met" } else { "MISSED" }
    );
}

pub fn write(report: &Report, out: &Path) -> Result<()> {
    let path = out.join("failover.json");
    std::fs::write(&path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
