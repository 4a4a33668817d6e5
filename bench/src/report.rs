//! The results: the printed table, the benchmark's targets, `results.json` and `plot.svg`
//! (a hand-written SVG, so no font or drawing library is needed).

use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// One cell: a row kind at one client count.
#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub key: String,
    pub group: String,
    pub system: String,
    pub mode: String,
    pub clients: usize,
    /// TCP connections the clients used (HTTP, Redis: one per client; gRPC: shared channels).
    pub connections: usize,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// HTTP connections opened again because the server closed one (0 = all kept alive).
    pub reconnects: u64,
    /// Peak RSS (VmHWM) of the master / Redis primary at the end of the cell, in MiB.
    pub rss_master_mb: f64,
    /// The largest peak RSS among the secondaries / replicas, in MiB.
    pub rss_replica_max_mb: f64,
    /// CPU time per successful call over the window, in µs, by process (see [`crate::cpu`]).
    pub cpu_us_per_op: Option<crate::cpu::PerProcess>,
    /// The row compared with (same C): replog rows against Redis, n=4 against n=2.
    pub reference: Option<String>,
    /// ops/s of this row against the reference's: the median of the per-round ratios (see
    /// [`paired`]).
    pub ops_ratio: Option<f64>,
    /// p99 of this row against the reference's, the same way.
    pub p99_ratio: Option<f64>,
    pub window_s: f64,
    /// Every round of this cell, in the order run (`--repeat`); the figures above are those of
    /// the median round.
    pub rounds: Vec<Round>,
}

/// One round's headline figures of a cell.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Round {
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl RowResult {
    fn round(&self) -> Round {
        Round {
            ops_per_sec: self.ops_per_sec,
            p50_ms: self.p50_ms,
            p99_ms: self.p99_ms,
        }
    }
}

/// The round with the median ops/s of one cell (the lower middle of an even count), with every
/// round recorded. Its figures all come from one real run, never a mix of runs.
pub fn median_round(runs: Vec<RowResult>) -> Option<RowResult> {
    let all: Vec<Round> = runs.iter().map(RowResult::round).collect();
    let mut sorted = runs;
    sorted.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    let middle = sorted.len().checked_sub(1)? / 2;
    let mut median = sorted.into_iter().nth(middle)?;
    median.rounds = all;
    Some(median)
}

/// One figure of `row` against the same figure of `reference`, round by round, and the median
/// of those ratios (the lower middle of an even count).
///
/// Why paired: with `--repeat`, round k of both cells ran within a minute or so of each other
/// (for each C, every row runs once before any runs again), while the machine's speed drifts
/// between rounds on a shared host (docs/bench/README.md). A ratio within one round cancels most
/// of that drift; the median of the ratios then drops the odd round out. Comparing the two
/// median rounds instead can pit a fast round of one side against a slow round of the other.
/// With one round (or rounds that do not pair up) it is simply the ratio of the two cells'
/// figures.
pub fn paired(row: &RowResult, reference: &RowResult, figure: fn(&Round) -> f64) -> Paired {
    let rounds: Vec<f64> = if row.rounds.len() > 1 && row.rounds.len() == reference.rounds.len() {
        row.rounds
            .iter()
            .zip(&reference.rounds)
            .map(|(r, p)| figure(r) / figure(p))
            .collect()
    } else {
        vec![figure(&row.round()) / figure(&reference.round())]
    };
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[(sorted.len() - 1) / 2];
    Paired { rounds, median }
}

/// Per-round ratios of one figure and their median.
pub struct Paired {
    pub rounds: Vec<f64>,
    pub median: f64,
}

impl Paired {
    /// `1.05x`, or with several rounds `1.05x (rounds 0.98 1.05 1.12)`.
    fn text(&self) -> String {
        if self.rounds.len() < 2 {
            return format!("{:.2}x", self.median);
        }
        let rounds: Vec<String> = self.rounds.iter().map(|r| format!("{r:.2}")).collect();
        format!("{:.2}x (rounds {})", self.median, rounds.join(" "))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub redis_version: String,
    /// 1/5/15-minute load averages when the run started (other work on the machine skews
    /// every figure; only ratios from one run count).
    pub load_average_before: String,
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Machine {
    pub fn here() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let redis_version = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            redis_version,
            load_average_before: load_average(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    /// `None`: the rows it needs were not run.
    pub met: Option<bool>,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub load_average_after: String,
    pub warmup_s: f64,
    pub window_s: f64,
    /// Rounds per cell (`--repeat`).
    pub rounds: u32,
    pub message_bytes: usize,
    pub rows: Vec<RowResult>,
    pub targets: Vec<Target>,
    /// The table as printed.
    pub table: String,
}

fn find<'a>(rows: &'a [RowResult], key: &str, clients: usize) -> Option<&'a RowResult> {
    rows.iter().find(|r| r.key == key && r.clients == clients)
}

pub fn add_ratios(rows: &mut [RowResult]) {
    let snapshot = rows.to_vec();
    for row in rows.iter_mut() {
        if let Some(reference) = row
            .reference
            .as_deref()
            .and_then(|key| find(&snapshot, key, row.clients))
        {
            row.ops_ratio = Some(paired(row, reference, |r| r.ops_per_sec).median);
            row.p99_ratio = Some(paired(row, reference, |r| r.p99_ms).median);
        }
    }
}

/// The benchmark's targets that the table can decide: replog's throughput and latency against
/// Redis's at the same client count, durable against durable, and n=4 against n=2.
pub fn targets(rows: &[RowResult]) -> Vec<Target> {
    let mut out = Vec::new();
    let mut counts: Vec<usize> = rows.iter().map(|r| r.clients).collect();
    counts.sort_unstable();
    counts.dedup();
    let pair =
        |key: &str, reference: &str, c: usize| find(rows, key, c).zip(find(rows, reference, c));

    for key in ["replog-http-w3", "replog-grpc-w3"] {
        for c in [64, 256] {
            let target = format!("{key} C={c}: ops/s >= Redis XADD+WAIT and p99 <= Redis p99");
            out.push(match pair(key, "redis-wait", c) {
                Some((r, p)) => {
                    let ops = paired(r, p, |r| r.ops_per_sec);
                    let p99 = paired(r, p, |r| r.p99_ms);
                    Target {
                        target,
                        met: Some(ops.median >= 1.0 && p99.median <= 1.0),
                        detail: format!(
                            "{:.0} vs {:.0} ops/s ({}), p99 {:.2} vs {:.2} ms ({})",
                            r.ops_per_sec,
                            p.ops_per_sec,
                            ops.text(),
                            r.p99_ms,
                            p.p99_ms,
                            p99.text()
                        ),
                    }
                }
                None => not_run(target),
            });
        }
        let target = format!("{key} C=1: p50 <= 1.5 x Redis XADD+WAIT p50");
        out.push(match pair(key, "redis-wait", 1) {
            Some((r, p)) => {
                let p50 = paired(r, p, |r| r.p50_ms);
                Target {
                    target,
                    met: Some(p50.median <= 1.5),
                    detail: format!("p50 {:.3} vs {:.3} ms ({})", r.p50_ms, p.p50_ms, p50.text()),
                }
            }
            None => not_run(target),
        });
    }
    let mut ratio_target = |key: &str, reference: &str, min: f64, what: &str| {
        for &c in &counts {
            let target = format!("{key} C={c}: ops/s >= {min:.1} x {what}");
            if let Some((r, p)) = pair(key, reference, c) {
                let ops = paired(r, p, |r| r.ops_per_sec);
                out.push(Target {
                    target,
                    met: Some(ops.median >= min),
                    detail: format!(
                        "{:.0} vs {:.0} ops/s ({})",
                        r.ops_per_sec,
                        p.ops_per_sec,
                        ops.text()
                    ),
                });
            }
        }
    };
    ratio_target("replog-http-w1", "redis-xadd", 0.7, "Redis XADD");
    ratio_target(
        "replog-durable-w3",
        "redis-durable-wait",
        1.0,
        "Redis appendfsync always XADD+WAIT",
    );
    ratio_target("replog-n4-w5", "replog-http-w3", 0.6, "replog n=2 w=3");
    out
}

fn not_run(target: String) -> Target {
    Target {
        target,
        met: None,
        detail: "rows not run".into(),
    }
}

pub fn targets_text(targets: &[Target]) -> String {
    let mut text = String::from("targets:\n");
    for t in targets {
        let mark = match t.met {
            Some(true) => "MET   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let _ = writeln!(text, "  {mark} {:<76} {}", t.target, t.detail);
    }
    text
}

fn num(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "-".into()
    }
}

/// The table, one line per cell.
pub fn table(rows: &[RowResult]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<7} {:<23} {:>4} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  {:<18} {:>6} {:>6} {:>6}  {:>6} {:>6} {:>6}",
        "system",
        "mode",
        "C",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "RSS M/P",
        "RSS rep",
        "vs (same C)",
        "ops x",
        "p99 x",
        "errors",
        "cpu M",
        "cpu R",
        "cpu C"
    );
    let mut group = "";
    for row in rows {
        let cpu = row.cpu_us_per_op;
        if row.group != group {
            if !group.is_empty() {
                text.push('\n');
            }
            group = &row.group;
        }
        let _ = writeln!(
            text,
            "{:<7} {:<23} {:>4} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  {:<18} {:>6} {:>6} {:>6}  {:>6} {:>6} {:>6}",
            row.system,
            row.mode,
            row.clients,
            num(row.ops_per_sec, 0),
            num(row.p50_ms, 3),
            num(row.p99_ms, 3),
            num(row.p999_ms, 3),
            num(row.rss_master_mb, 1),
            num(row.rss_replica_max_mb, 1),
            row.reference.as_deref().unwrap_or(""),
            row.ops_ratio.map_or("".into(), |r| num(r, 2)),
            row.p99_ratio.map_or("".into(), |r| num(r, 2)),
            row.errors,
            cpu.map_or("-".into(), |c| num(c.primary, 1)),
            cpu.map_or("-".into(), |c| num(c.replicas, 1)),
            cpu.map_or("-".into(), |c| num(c.client, 1)),
        );
    }
    text.push_str("(latencies in ms; RSS = peak RSS in MiB of the master/primary and of the largest secondary/replica; ratios = this row / the `vs` row)\n");
    text.push_str("(cpu = CPU time per call in µs over the window, from /proc/<pid>/stat: M the master/primary, R all secondaries/replicas together, C the load generator)\n");
    text
}

pub fn write(report: &Report, out: &Path) -> Result<()> {
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    let svg = out.join("plot.svg");
    std::fs::write(&svg, plot(report))
        .with_context(|| format!("cannot write {}", svg.display()))?;
    Ok(())
}

const COLOURS: &[(&str, &str, &str)] = &[
    // key, colour, dash pattern
    ("replog-http-w3", "#1f77b4", ""),
    ("replog-grpc-w3", "#17becf", ""),
    ("redis-wait", "#d62728", ""),
    ("replog-http-w1", "#1f77b4", "6 4"),
    ("redis-xadd", "#d62728", "6 4"),
    ("replog-durable-w3", "#2ca02c", ""),
    ("redis-durable-wait", "#ff7f0e", ""),
    ("replog-n4-w5", "#9467bd", ""),
];

fn style(key: &str) -> (&'static str, &'static str) {
    COLOURS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map_or(("#7f7f7f", ""), |(_, colour, dash)| (*colour, *dash))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Throughput and p99 latency against C, every row kind as one line, both systems.
pub fn plot(report: &Report) -> String {
    let rows = &report.rows;
    let mut counts: Vec<usize> = rows.iter().map(|r| r.clients).collect();
    counts.sort_unstable();
    counts.dedup();
    let mut keys: Vec<(&str, String)> = Vec::new();
    for row in rows {
        if !keys.iter().any(|(k, _)| *k == row.key) {
            keys.push((&row.key, format!("{} {}", row.system, row.mode)));
        }
    }

    let legend_rows = keys.len().div_ceil(4) as f64;
    let (width, height) = (1100.0, 60.0 + 330.0 + 70.0 + 22.0 * legend_rows);
    let (panel_w, panel_h) = (440.0, 330.0);
    let panels = [(80.0, 60.0), (620.0, 60.0)];
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">replog vs Redis: closed loop of C clients, {}-byte appends ({} CPUs, {:.0} s per cell)</text>"#,
        width / 2.0,
        report.message_bytes,
        report.machine.cpus,
        report.window_s
    );

    let x_of = |c: usize, x0: f64| -> f64 {
        if counts.len() <= 1 {
            return x0 + panel_w / 2.0;
        }
        let lo = (counts[0] as f64).log2();
        let hi = (*counts.last().unwrap() as f64).log2();
        x0 + 20.0 + (panel_w - 40.0) * ((c as f64).log2() - lo) / (hi - lo).max(1e-9)
    };

    // Both panels use log scales: the rows span several orders of magnitude.
    let range = |values: Vec<f64>| -> (f64, f64) {
        let values: Vec<f64> = values
            .into_iter()
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let lo = values
            .iter()
            .fold(f64::INFINITY, |a, v| a.min(v.log10()))
            .floor();
        let hi = values
            .iter()
            .fold(f64::NEG_INFINITY, |a, v| a.max(v.log10()))
            .ceil();
        if lo.is_finite() && hi > lo {
            (lo, hi)
        } else if lo.is_finite() {
            (lo, lo + 1.0)
        } else {
            (0.0, 1.0)
        }
    };
    let scales = [
        range(rows.iter().map(|r| r.ops_per_sec).collect()),
        range(rows.iter().map(|r| r.p99_ms).collect()),
    ];

    for (panel, &(x0, y0)) in panels.iter().enumerate() {
        let title = if panel == 0 {
            "throughput (ops/s, log scale, higher is better)"
        } else {
            "p99 latency (ms, log scale, lower is better)"
        };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="14">{title}</text>"#,
            x0 + panel_w / 2.0,
            y0 - 10.0
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{x0}" y="{y0}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#333"/>"##
        );
        // y grid
        let (lo_exp, hi_exp) = scales[panel];
        let y_of = |v: f64| y0 + panel_h - panel_h * (v.log10() - lo_exp) / (hi_exp - lo_exp);
        let mut ticks = Vec::new();
        let mut e = lo_exp;
        while e <= hi_exp + 1e-9 {
            let v = 10f64.powf(e);
            ticks.push((y_of(v), format!("{v}")));
            e += 1.0;
        }
        for (y, label) in ticks {
            let _ = writeln!(
                svg,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
                x0 + panel_w,
                x0 - 6.0,
                y + 4.0
            );
        }
        for &c in &counts {
            let x = x_of(c, x0);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{c}</text>"##,
                y0 + panel_h,
                y0 + panel_h + 16.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">clients C</text>"#,
            x0 + panel_w / 2.0,
            y0 + panel_h + 34.0
        );
        for (key, _) in &keys {
            let (colour, dash) = style(key);
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.key == *key)
                .filter_map(|r| {
                    let x = x_of(r.clients, x0);
                    let v = if panel == 0 { r.ops_per_sec } else { r.p99_ms };
                    if !(v > 0.0 && v.is_finite()) {
                        return None;
                    }
                    let y = y_of(v);
                    y.is_finite().then_some((x, y))
                })
                .collect();
            let path: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                path.join(" ")
            );
            for (x, y) in points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
                );
            }
        }
    }
    // Legend.
    let legend_y = 60.0 + panel_h + 60.0;
    for (i, (key, label)) in keys.iter().enumerate() {
        let (colour, dash) = style(key);
        let x = 80.0 + (i % 4) as f64 * 250.0;
        let y = legend_y + (i / 4) as f64 * 22.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{}</text>"#,
            x + 28.0,
            x + 34.0,
            y + 4.0,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(ops_per_sec: f64, p99_ms: f64) -> RowResult {
        RowResult {
            key: "replog-http-w3".into(),
            group: "memory".into(),
            system: "replog".into(),
            mode: "HTTP w=3".into(),
            clients: 64,
            connections: 64,
            ops: ops_per_sec as u64,
            ops_per_sec,
            p50_ms: 1.0,
            p99_ms,
            p999_ms: 2.0 * p99_ms,
            max_ms: 3.0 * p99_ms,
            errors: 0,
            first_error: None,
            reconnects: 0,
            rss_master_mb: 1.0,
            rss_replica_max_mb: 1.0,
            cpu_us_per_op: None,
            reference: None,
            ops_ratio: None,
            p99_ratio: None,
            window_s: 1.0,
            rounds: Vec::new(),
        }
    }

    #[test]
    fn the_median_round_keeps_one_runs_figures_and_lists_every_round() {
        let median = median_round(vec![cell(300.0, 3.0), cell(100.0, 1.0), cell(200.0, 9.0)])
            .expect("three rounds");
        assert_eq!((median.ops_per_sec, median.p99_ms), (200.0, 9.0));
        let ops: Vec<f64> = median.rounds.iter().map(|r| r.ops_per_sec).collect();
        assert_eq!(ops, [300.0, 100.0, 200.0]);
        let lower = median_round(vec![cell(4.0, 1.0), cell(2.0, 1.0)]).expect("two rounds");
        assert_eq!(lower.ops_per_sec, 2.0);
        assert!(median_round(Vec::new()).is_none());
    }

    /// Round k of one cell against round k of the other: a slow round on one side is not
    /// compared with a fast round of the other, and the odd round is dropped by the median.
    #[test]
    fn targets_compare_rounds_pairwise_and_take_the_median_ratio() {
        let rounds = |figures: &[(f64, f64)]| {
            let runs = figures.iter().map(|&(ops, p99)| cell(ops, p99)).collect();
            median_round(runs).expect("rounds")
        };
        let mut ours = rounds(&[(110.0, 1.0), (60.0, 2.0), (90.0, 1.5)]);
        let mut peer = rounds(&[(100.0, 1.1), (50.0, 2.1), (120.0, 1.2)]);
        ours.clients = 64;
        peer.clients = 64;
        peer.key = "redis-wait".into();
        // The median rounds alone (90 vs 100 ops/s) would say "missed"; round by round it is
        // 1.10, 1.20 and 0.75: a median of 1.10.
        let ops = paired(&ours, &peer, |r| r.ops_per_sec);
        assert_eq!(ops.rounds, [1.1, 1.2, 0.75]);
        assert_eq!(ops.median, 1.1);
        assert_eq!(ops.text(), "1.10x (rounds 1.10 1.20 0.75)");
        let targets = targets(&[ours.clone(), peer.clone()]);
        let c64 = targets
            .iter()
            .find(|t| t.target.starts_with("replog-http-w3 C=64"))
            .expect("the C=64 target");
        // p99 ratios: 0.91, 0.95, 1.25: median 0.95.
        assert_eq!(c64.met, Some(true), "{}", c64.detail);
        // One round each: plain ratio of the two cells.
        let single = paired(&cell(90.0, 1.0), &cell(100.0, 1.0), |r| r.ops_per_sec);
        assert_eq!((single.rounds.len(), single.median), (1, 0.9));
    }
}
