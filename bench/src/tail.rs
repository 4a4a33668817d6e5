//! `--tail`: the live tail's delivery delay. For each reader count R (1 and 500 by default) a
//! fresh cluster (master + 2 secondaries, in memory) gets R readers of
//! `GET /api/messages/stream`, spread over the three nodes, each on its own connection; then one
//! client appends `--tail-messages` messages of 100 bytes with `w=3`, one after the other. One
//! sample is the time from an append's 200 answer reaching the client to its event reaching one
//! reader, so each append gives R samples. An event that arrives before the answer (the master
//! shows a message as soon as it commits, and the answer is still on its way) counts as 0 and
//! is counted in `before_answer`; the delay from the append's request being sent is reported
//! beside it. Every reader must see every appended message once, in order; what it missed or
//! saw out of order is reported, not hidden.
//!
//! The readers parse the stream with the cluster tests' [`cluster_tests::sse`].

use crate::http::Conn;
use crate::replog::{self, append_body, payload_text};
use crate::Env;
use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use cluster_tests::sse::Blocks;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The write concern of the appends: answered once every node holds the message, so every
/// node can show it by then.
const W: u32 = 3;
/// How long the readers may take, after the last answer, to see the last message.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct TailRow {
    pub readers: usize,
    pub messages: u64,
    pub w: u32,
    /// Samples: events matched to an answer (readers x messages when nothing was missed).
    pub samples: u64,
    /// Delivery delay, answer to event, in ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Events that arrived before their append's answer (counted as 0 ms above).
    pub before_answer: u64,
    /// Delivery delay from the append's request being sent to the event, in ms: the whole
    /// path from a writer to a reader, never negative.
    pub from_send_p50_ms: f64,
    pub from_send_p99_ms: f64,
    /// Appended messages a reader never saw, over all readers.
    pub missing: u64,
    /// Events a reader saw twice or out of id order, over all readers.
    pub out_of_order: u64,
    /// Appends per second of the single appending client, while the readers read.
    pub appends_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct TailReport {
    pub rows: Vec<TailRow>,
}

impl TailReport {
    /// Whether every reader saw every message once, in order.
    pub fn ok(&self) -> bool {
        self.rows
            .iter()
            .all(|row| row.missing == 0 && row.out_of_order == 0)
    }
}

pub async fn run(env: &Env, readers: &[usize], messages: u64) -> Result<TailReport> {
    let mut rows = Vec::new();
    for &count in readers {
        let row = run_row(env, count, messages).await?;
        eprintln!(
            "  tail: {} readers: delivery p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples, {:.0} appends/s)",
            row.readers, row.p50_ms, row.p99_ms, row.max_ms, row.samples, row.appends_per_sec
        );
        rows.push(row);
    }
    Ok(TailReport { rows })
}

/// What one reader saw: each event's id and when it arrived, in arrival order.
type Arrivals = Vec<(u64, Instant)>;

async fn run_row(env: &Env, readers: usize, messages: u64) -> Result<TailRow> {
    let log_dir = env.log_root.join(format!("tail-r{readers}"));
    let _ = std::fs::remove_dir_all(&log_dir);
    let cluster = replog::Cluster::start(&replog::Spec {
        bin_dir: &env.bin_dir,
        secondaries: 2,
        durable: false,
        tls: None,
        log_dir: &log_dir,
        tmp_root: &env.tmp_root,
    })
    .await
    .context("starting replog for the tail check")?;
    let nodes: Vec<SocketAddr> = std::iter::once(cluster.master_addr)
        .chain(cluster.secondary_addrs.iter().copied())
        .collect();

    // The last appended id, once known: a reader stops when it has seen it.
    let (last_tx, last_rx) = watch::channel(u64::MAX);
    let mut tasks = Vec::with_capacity(readers);
    for n in 0..readers {
        let body = open(nodes[n % nodes.len()]).await?;
        tasks.push(tokio::spawn(read(body, last_rx.clone())));
    }

    // Every reader is open before the first append, so each event is a live one.
    let mut conn = Conn::connect(cluster.master_addr).await?;
    let mut answered = Vec::with_capacity(messages as usize);
    let started = Instant::now();
    for i in 0..messages {
        let body = append_body(&payload_text(&format!("tail-{i}")), W);
        let sent = Instant::now();
        let (status, body) = conn.send(Method::POST, "/api/messages", Some(body)).await?;
        let at = Instant::now();
        if status != StatusCode::OK {
            bail!("append {i}: {status} {}", String::from_utf8_lossy(&body));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        let id = answer["id"]
            .as_u64()
            .context("an append's answer has its id")?;
        answered.push((id, sent, at));
    }
    let appends_per_sec = messages as f64 / started.elapsed().as_secs_f64();
    let last = answered.last().map_or(0, |(id, _, _)| *id);
    ensure!(
        answered.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "one client's appends got ids out of order"
    );
    last_tx.send_replace(last);

    let at = |id: u64| -> Option<(Instant, Instant)> {
        answered
            .binary_search_by_key(&id, |(id, _, _)| *id)
            .ok()
            .map(|i| (answered[i].1, answered[i].2))
    };
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut from_send = Histogram::<u64>::new(3)?;
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let (mut before_answer, mut missing, mut out_of_order) = (0, 0, 0);
    for task in tasks {
        let arrivals = match tokio::time::timeout(DRAIN_LIMIT, task).await {
            Ok(joined) => joined.context("a reader task")??,
            Err(_) => bail!("a reader did not see id {last} within {DRAIN_LIMIT:?}"),
        };
        let mut seen = 0;
        let mut previous = 0;
        for (id, arrived) in arrivals {
            if id <= previous {
                out_of_order += 1;
                continue;
            }
            previous = id;
            let Some((sent, answer)) = at(id) else {
                continue;
            };
            seen += 1;
            if arrived < answer {
                before_answer += 1;
            }
            histogram.record(micros(arrived.saturating_duration_since(answer)))?;
            from_send.record(micros(arrived.saturating_duration_since(sent)))?;
        }
        missing += messages - seen.min(messages);
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(TailRow {
        readers,
        messages,
        w: W,
        samples: histogram.len(),
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        before_answer,
        from_send_p50_ms: from_send.value_at_quantile(0.50) as f64 / 1000.0,
        from_send_p99_ms: from_send.value_at_quantile(0.99) as f64 / 1000.0,
        missing,
        out_of_order,
        appends_per_sec,
    })
}

/// Opens `GET /api/messages/stream` on its own connection to `addr`: the body, once the node
/// answered 200 with `text/event-stream`.
async fn open(addr: SocketAddr) -> Result<hyper::body::Incoming> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .method(Method::GET)
        .uri("/api/messages/stream")
        .header(HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    ensure!(
        response.status() == StatusCode::OK
            && content_type
                .as_ref()
                .is_some_and(|value| value == "text/event-stream"),
        "GET /api/messages/stream on {addr}: {} {content_type:?}",
        response.status()
    );
    Ok(response.into_body())
}

/// Reads one stream until it has seen the id `last` says (once it says one): each event's id
/// and arrival time (when the bytes that completed it came in).
async fn read(mut body: hyper::body::Incoming, mut last: watch::Receiver<u64>) -> Result<Arrivals> {
    let mut blocks = Blocks::new();
    let mut arrivals = Arrivals::new();
    let mut seen = 0;
    loop {
        if seen >= *last.borrow_and_update() {
            return Ok(arrivals);
        }
        tokio::select! {
            frame = body.frame() => {
                let arrived = Instant::now();
                let frame = frame.context("the stream ended")??;
                if let Ok(data) = frame.into_data() {
                    blocks.push(&data);
                    while let Some(event) = blocks.next_event().map_err(anyhow::Error::msg)? {
                        seen = seen.max(event.id);
                        arrivals.push((event.id, arrived));
                    }
                }
            }
            changed = last.changed() => changed.context("the appender went away")?,
        }
    }
}

pub fn print(report: &TailReport) {
    for row in &report.rows {
        println!(
            "tail: {:>3} readers, {} appends (w={}, one client, {:.0}/s): delivery delay from the append's answer to the event p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} before the answer); from the append's request p50 {:.3} ms, p99 {:.3} ms; {} missed, {} out of order",
            row.readers,
            row.messages,
            row.w,
            row.appends_per_sec,
            row.p50_ms,
            row.p99_ms,
            row.max_ms,
            row.before_answer,
            row.from_send_p50_ms,
            row.from_send_p99_ms,
            row.missing,
            row.out_of_order
        );
    }
}

pub fn write(report: &TailReport, out: &Path) -> Result<std::path::PathBuf> {
    let path = out.join("tail.json");
    std::fs::write(&path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
