//! `bench`: replog against Redis replication, side by side, in one run.
//!
//! For every row (system × mode) and every client count C it starts a fresh cluster (replog:
//! `master` + `secondary` from the directory of this binary; Redis: `redis-server` primary +
//! replicas), drives it with the same closed loop of C clients appending 100-byte messages,
//! records throughput, latency percentiles and the servers' peak RSS, and stops the cluster.
//! Then it prints one table, writes `results.json` and `plot.svg`, and checks the benchmark's
//! targets (replog against Redis at the same client count, see `report::targets`). `--memory`
//! instead fills a memory-mode cluster with 1,000,000 messages and measures each node's RSS and
//! the `GET /api/messages` reads; `--durable` does the same on a durable cluster (beside the
//! memory-mode one with `--memory`), and measures its master's restart and a wiped secondary's
//! catch-up beside a Redis replica's full resync (`storage`, `resync`); `--tail` measures the
//! live tail's delivery delay at 1 and 500 readers (`tail`).

mod cpu;
mod failover;
mod grpc;
mod http;
mod load;
mod memory;
mod procs;
mod redis_peer;
mod replog;
mod report;
mod resync;
mod storage;
mod tail;
mod tls;
mod wire;

use anyhow::{bail, Context, Result};
use clap::Parser;
use report::RowResult;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// Size of every appended message, in bytes.
pub const MESSAGE_BYTES: usize = 100;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "replog vs Redis replication (XADD + WAIT): throughput, latency and RSS in one run"
)]
struct Args {
    /// Client counts C (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,

    /// Warm-up per cell, in seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,

    /// Measured time per cell, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,

    /// Rounds: every cell runs this many times (for each C, all rows one after the other, then
    /// again), and the table shows the round with the median ops/s of each cell. On a shared
    /// machine one cell's figures move from run to run (docs/bench/README.md); the median of 3
    /// makes a verdict near a target less a matter of luck.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    repeat: u32,

    /// Rows to run (comma-separated): row keys (see --list-rows) or groups `memory`, `durable`,
    /// `n4`, `all`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    rows: Vec<String>,

    /// A quick run that proves everything works: C = 1,16, 1 s per cell, short warm-up, no
    /// memory check; results go to target/bench-smoke unless --out is given.
    #[arg(long)]
    smoke: bool,

    /// Only the memory check: fill a memory-mode cluster with --messages appends (w=1), then
    /// report each node's RSS and the time of paged and full `GET /api/messages`.
    #[arg(long)]
    memory: bool,

    /// The storage check: the memory check on a durable cluster (`DATA_DIR` per node under
    /// target/bench-data or --tmp-dir, `FSYNC=always`), then its master restarted and a
    /// secondary wiped and caught up. With --memory the memory-mode cluster is measured too, in
    /// the same run, with ratios (storage.json); without it the durable cluster alone
    /// (storage-durable.json).
    #[arg(long)]
    durable: bool,

    /// Skip the memory check that a full run does after the table.
    #[arg(long)]
    no_memory: bool,

    /// Only the failover check: three `replog` nodes and etcd; the master is killed --kills
    /// times and the time until a new master acknowledges an append is measured.
    #[arg(long)]
    failover: bool,

    /// Only the live tail check: delivery delay of `GET /api/messages/stream`, from an append's
    /// answer to its event at a reader, with each of --readers readers (tail.json).
    #[arg(long)]
    tail: bool,

    /// Reader counts of the tail check (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,500")]
    readers: Vec<usize>,

    /// Appends of the tail check, per reader count (200 with --smoke).
    #[arg(long, default_value_t = 2000)]
    tail_messages: u64,

    /// Kills of the master in the failover check.
    #[arg(long, default_value_t = 20)]
    kills: usize,

    /// Messages appended by the memory check.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,

    /// Where results.json, plot.svg and memory.json go [default: docs/bench, or
    /// target/bench-smoke with --smoke].
    #[arg(long)]
    out: Option<PathBuf>,

    /// Directory holding the `master` and `secondary` binaries [default: this binary's].
    #[arg(long)]
    bin_dir: Option<PathBuf>,

    /// Where the durable rows keep their data directories [default: the system temp dir; for
    /// --durable, target/bench-data].
    #[arg(long)]
    tmp_dir: Option<PathBuf>,

    /// Lists the row keys and exits.
    #[arg(long)]
    list_rows: bool,
}

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// replog `POST /api/messages`, one keep-alive HTTP/1.1 connection per client.
    ReplogHttp,
    /// replog gRPC `Append` (h2c), clients sharing a few channels.
    ReplogGrpc,
    /// Redis `XADD` + `WAIT <replicas> 0`, one connection per client.
    RedisWait,
    /// Redis `XADD` alone.
    RedisXadd,
}

/// One row kind of the table: a system in one mode (the client count varies).
#[derive(Debug, Clone, Copy)]
pub struct RowKind {
    pub key: &'static str,
    pub group: &'static str,
    pub system: &'static str,
    pub mode: &'static str,
    pub driver: Driver,
    pub durable: bool,
    /// Secondaries (replog) or replicas (Redis).
    pub replicas: usize,
    /// replog's write concern.
    pub w: u32,
    /// Every connection over TLS ([`tls`]): clients to the servers, and replication (replog:
    /// mutual TLS; Redis: `tls-replication`).
    pub tls: bool,
    /// The row this one is compared with (same C).
    pub reference: Option<&'static str>,
}

pub const ROWS: &[RowKind] = &[
    RowKind {
        key: "replog-http-w3",
        group: "memory",
        system: "replog",
        mode: "HTTP w=3",
        driver: Driver::ReplogHttp,
        durable: false,
        replicas: 2,
        w: 3,
        tls: false,
        reference: Some("redis-wait"),
    },
    RowKind {
        key: "replog-grpc-w3",
        group: "memory",
        system: "replog",
        mode: "gRPC w=3",
        driver: Driver::ReplogGrpc,
        durable: false,
        replicas: 2,
        w: 3,
        tls: false,
        reference: Some("redis-wait"),
    },
    RowKind {
        key: "redis-wait",
        group: "memory",
        system: "redis",
        mode: "XADD+WAIT 2",
        driver: Driver::RedisWait,
        durable: false,
        replicas: 2,
        w: 3,
        tls: false,
        reference: None,
    },
    RowKind {
        key: "replog-http-w1",
        group: "memory",
        system: "replog",
        mode: "HTTP w=1",
        driver: Driver::ReplogHttp,
        durable: false,
        replicas: 2,
        w: 1,
        tls: false,
        reference: Some("redis-xadd"),
    },
    RowKind {
        key: "redis-xadd",
        group: "memory",
        system: "redis",
        mode: "XADD",
        driver: Driver::RedisXadd,
        durable: false,
        replicas: 2,
        w: 1,
        tls: false,
        reference: None,
    },
    RowKind {
        key: "replog-durable-w3",
        group: "durable",
        system: "replog",
        mode: "durable HTTP w=3",
        driver: Driver::ReplogHttp,
        durable: true,
        replicas: 2,
        w: 3,
        tls: false,
        reference: Some("redis-durable-wait"),
    },
    RowKind {
        key: "redis-durable-wait",
        group: "durable",
        system: "redis",
        mode: "aof-always XADD+WAIT 2",
        driver: Driver::RedisWait,
        durable: true,
        replicas: 2,
        w: 3,
        tls: false,
        reference: None,
    },
    RowKind {
        key: "replog-n4-w5",
        group: "n4",
        system: "replog",
        mode: "n=4 HTTP w=5",
        driver: Driver::ReplogHttp,
        durable: false,
        replicas: 4,
        w: 5,
        tls: false,
        reference: Some("replog-http-w3"),
    },
    RowKind {
        key: "replog-tls-w3",
        group: "tls",
        system: "replog",
        mode: "TLS HTTP w=3",
        driver: Driver::ReplogHttp,
        durable: false,
        replicas: 2,
        w: 3,
        tls: true,
        reference: Some("redis-tls-wait"),
    },
    RowKind {
        key: "redis-tls-wait",
        group: "tls",
        system: "redis",
        mode: "TLS XADD+WAIT 2",
        driver: Driver::RedisWait,
        durable: false,
        replicas: 2,
        w: 3,
        tls: true,
        reference: None,
    },
];

/// Settings every cell shares.
pub struct Env {
    /// The TLS rows' certificates, made when the run starts.
    pub certs: tls::Certs,
    pub bin_dir: PathBuf,
    pub tmp_root: PathBuf,
    pub log_root: PathBuf,
    pub warmup: Duration,
    pub window: Duration,
}

fn select_rows(wanted: &[String]) -> Result<Vec<RowKind>> {
    let mut rows: Vec<RowKind> = Vec::new();
    for name in wanted {
        let name = name.trim();
        let matched: Vec<RowKind> = ROWS
            .iter()
            .filter(|row| name == "all" || row.group == name || row.key == name)
            .copied()
            .collect();
        if matched.is_empty() {
            bail!("unknown row `{name}`; see --list-rows");
        }
        for row in matched {
            if !rows.iter().any(|r| r.key == row.key) {
                rows.push(row);
            }
        }
    }
    // Table order, whatever the order asked.
    rows.sort_by_key(|row| ROWS.iter().position(|r| r.key == row.key));
    Ok(rows)
}

async fn run_cell(kind: &RowKind, clients: usize, env: &Env) -> Result<RowResult> {
    let log_dir = env.log_root.join(format!("{}-c{clients}", kind.key));
    let _ = std::fs::remove_dir_all(&log_dir);
    let reconnects = Arc::new(AtomicU64::new(0));
    let (outcome, rss, conns) = match kind.driver {
        Driver::ReplogHttp | Driver::ReplogGrpc => {
            let cluster = replog::Cluster::start(&replog::Spec {
                bin_dir: &env.bin_dir,
                secondaries: kind.replicas,
                durable: kind.durable,
                tls: kind.tls.then_some(&env.certs),
                log_dir: &log_dir,
                tmp_root: &env.tmp_root,
            })
            .await
            .with_context(|| format!("starting replog for {}", kind.key))?;
            let addr = cluster.master_addr;
            let processes = cluster.processes();
            let (outcome, conns) = if kind.driver == Driver::ReplogHttp {
                let mut list = Vec::with_capacity(clients);
                for _ in 0..clients {
                    let tls = kind.tls.then(|| env.certs.client.clone());
                    list.push(
                        replog::HttpAppend::connect(addr, tls, kind.w, reconnects.clone()).await?,
                    );
                }
                (
                    load::run(list, env.warmup, env.window, processes).await,
                    clients,
                )
            } else {
                let message = replog::payload_text("bench");
                let list = grpc::connections(addr, clients, message, kind.w).await?;
                let connections = list.len();
                (
                    load::run(list, env.warmup, env.window, processes).await,
                    connections,
                )
            };
            (outcome, cluster.peak_rss(), conns)
        }
        Driver::RedisWait | Driver::RedisXadd => {
            let cluster = redis_peer::Cluster::start(&redis_peer::Spec {
                replicas: kind.replicas,
                durable: kind.durable,
                tls: kind.tls.then_some(&env.certs),
                log_dir: &log_dir,
                tmp_root: &env.tmp_root,
            })
            .await
            .with_context(|| format!("starting redis for {}", kind.key))?;
            let wait = (kind.driver == Driver::RedisWait).then_some(kind.replicas);
            let mut list = Vec::with_capacity(clients);
            for _ in 0..clients {
                let tls = kind.tls.then(|| env.certs.client.clone());
                list.push(redis_peer::Append::connect(cluster.client_port, tls, wait).await?);
            }
            let outcome = load::run(list, env.warmup, env.window, cluster.processes()).await;
            (outcome, cluster.peak_rss(), clients)
        }
    };
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let ops = outcome.ops();
    let cpu_us_per_op = outcome
        .cpu
        .filter(|_| ops > 0)
        .map(|spent| spent.map(|seconds| seconds * 1e6 / ops as f64));
    Ok(RowResult {
        key: kind.key.to_owned(),
        group: kind.group.to_owned(),
        system: kind.system.to_owned(),
        mode: kind.mode.to_owned(),
        clients,
        connections: conns,
        ops,
        ops_per_sec: outcome.ops_per_sec(),
        p50_ms: outcome.ms(0.50),
        p99_ms: outcome.ms(0.99),
        p999_ms: outcome.ms(0.999),
        max_ms: outcome.ms(1.0),
        errors: outcome.errors,
        first_error: outcome.first_error,
        reconnects: reconnects.load(std::sync::atomic::Ordering::Relaxed),
        rss_master_mb: mb(rss.0),
        rss_replica_max_mb: mb(rss.1),
        cpu_us_per_op,
        reference: kind.reference.map(str::to_owned),
        ops_ratio: None,
        p99_ratio: None,
        window_s: env.window.as_secs_f64(),
        rounds: Vec::new(),
    })
}

async fn run(args: Args) -> Result<bool> {
    if args.list_rows {
        for row in ROWS {
            println!(
                "{:<20} group {:<8} {} {}",
                row.key, row.group, row.system, row.mode
            );
        }
        return Ok(true);
    }
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary's directory")?
            .to_path_buf(),
    };
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.smoke {
            "target/bench-smoke"
        } else {
            "docs/bench"
        })
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let target_dir = bin_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| bin_dir.clone());
    let env = Env {
        certs: tls::Certs::make(&args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir))?,
        log_root: target_dir.join("bench-logs"),
        tmp_root: args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
        bin_dir,
        warmup: Duration::from_secs_f64(if args.smoke { 0.2 } else { args.warmup }),
        window: Duration::from_secs_f64(if args.smoke { 1.0 } else { args.duration }),
    };

    if args.failover {
        if args.kills == 0 {
            bail!("--kills needs at least one kill");
        }
        let report = failover::run(args.kills).await?;
        failover::print(&report);
        failover::write(&report, &out)?;
        return Ok(report.goal_met);
    }

    if args.tail {
        if args.readers.is_empty() || args.readers.contains(&0) || args.tail_messages == 0 {
            bail!("--tail needs positive --readers and --tail-messages");
        }
        let messages = if args.smoke { 200 } else { args.tail_messages };
        let report = tail::run(&env, &args.readers, messages).await?;
        tail::print(&report);
        let path = tail::write(&report, &out)?;
        println!("results: {}", path.display());
        return Ok(report.ok());
    }

    if args.durable {
        let data_root = args
            .tmp_dir
            .clone()
            .unwrap_or_else(|| target_dir.join("bench-data"));
        let check = storage::run(&env, args.messages, &data_root, args.memory).await?;
        storage::print(&check);
        let path = storage::write(&check, &out)?;
        println!("results: {}", path.display());
        return Ok(check.ok());
    }

    if args.memory {
        let check = memory::run(&env, args.messages).await?;
        memory::print(&check);
        memory::write(&check, &out)?;
        return Ok(check.ok());
    }

    let clients = if args.smoke {
        vec![1, 16]
    } else {
        args.clients.clone()
    };
    if clients.is_empty() || clients.contains(&0) {
        bail!("--clients needs positive counts");
    }
    let rows = select_rows(&args.rows)?;
    let machine = report::Machine::here();
    let repeat = if args.smoke { 1 } else { args.repeat };
    eprintln!(
        "bench: {} rows x C = {:?}, warm-up {:?}, measured {:?} per cell, {} round(s); {} CPUs, load {}; servers from {}",
        rows.len(),
        clients,
        env.warmup,
        env.window,
        repeat,
        machine.cpus,
        machine.load_average_before,
        env.bin_dir.display()
    );
    // Client count outermost: the rows compared with each other (same C) run minutes apart at
    // most, so a change in the machine's load hits both sides alike.
    let mut results = Vec::new();
    for &c in &clients {
        let mut rounds: Vec<Vec<RowResult>> = vec![Vec::new(); rows.len()];
        for _ in 0..repeat {
            for (kind, runs) in rows.iter().zip(&mut rounds) {
                runs.push(run_cell(kind, c, &env).await?);
                let result = runs.last().context("a run")?;
                eprintln!(
                    "  {:<7} {:<24} C={:<4} {:>9.0} ops/s  p50 {:>7.3} ms  p99 {:>7.3} ms{}",
                    result.system,
                    result.mode,
                    c,
                    result.ops_per_sec,
                    result.p50_ms,
                    result.p99_ms,
                    match &result.first_error {
                        Some(e) => format!("  ({} errors, first: {e})", result.errors),
                        None => String::new(),
                    }
                );
            }
        }
        results.extend(rounds.into_iter().filter_map(report::median_round));
    }
    // Table order: row kind, then C.
    results.sort_by_key(|r| (ROWS.iter().position(|k| k.key == r.key), r.clients));
    report::add_ratios(&mut results);
    let targets = report::targets(&results);
    let mut table = report::table(&results);
    let reconnects: u64 = results.iter().map(|r| r.reconnects).sum();
    table.push_str(&format!(
        "(HTTP rows: one keep-alive connection per client; reconnects in the whole run: {reconnects})\n"
    ));
    if repeat > 1 {
        table.push_str(&format!(
            "(each cell: the median of {repeat} rounds by ops/s; ratios and targets: the median of the per-round ratios; every round is in results.json)\n"
        ));
    }
    let load_after = report::load_average();
    table.push_str(&format!(
        "(load average before / after the run: {} / {load_after} on {} CPUs)\n",
        machine.load_average_before, machine.cpus
    ));
    println!("{table}");
    println!("{}", report::targets_text(&targets));
    let report = report::Report {
        load_average_after: load_after,
        machine,
        warmup_s: env.warmup.as_secs_f64(),
        window_s: env.window.as_secs_f64(),
        rounds: repeat,
        message_bytes: MESSAGE_BYTES,
        rows: results,
        targets,
        table,
    };
    report::write(&report, &out)?;
    println!(
        "results: {} and {}",
        out.join("results.json").display(),
        out.join("plot.svg").display()
    );
    let complete = report.rows.iter().all(|row| row.ops > 0);
    if !complete {
        eprintln!("bench: a cell completed no append at all (see errors above)");
    }

    if !args.smoke && !args.no_memory {
        let check = memory::run(&env, args.messages).await?;
        memory::print(&check);
        memory::write(&check, &out)?;
    }
    Ok(complete)
}

/// mimalloc, as in the servers: the load generator shares the machine's CPUs with the servers
/// it measures, and glibc's malloc and free cost it more of that CPU (docs/bench/README.md).
/// Every row's clients allocate, so a cheaper allocator leaves more CPU to the servers of both
/// systems alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // As the nodes do (node/src/memory.rs): a huge page zeroed on first touch stops the load
    // generator for milliseconds, and that would land in the latency of whichever system it
    // was measuring.
    if let Err(error) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("cannot turn transparent huge pages off: {error}");
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Ctrl-C / SIGTERM: kill the servers (destructors do not run on a signal exit).
    runtime.spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("bench: interrupted; stopping the servers");
        procs::kill_all();
        std::process::exit(130);
    });
    // `block_on` keeps the main future (which starts every server) on this thread, which lives
    // as long as the bench: the servers' death signal is tied to it.
    let result = runtime.block_on(run(args));
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            procs::kill_all();
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
