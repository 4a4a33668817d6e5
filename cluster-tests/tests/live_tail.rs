//! The live tail, `GET /api/messages/stream` (Server-Sent Events), on real processes: a reader
//! on the master and one on a secondary see every append once, in id order, as it becomes
//! visible; `Last-Event-ID` resumes after the last event seen; a bad start is a 400 with a JSON
//! `detail`; and readers that stop reading hold no backlog on the node: its memory stays far
//! below what buffering the log for each of them would take, and each reader, once it reads
//! again, gets every message from the log in order. In failover mode every node tails too, and a
//! reader whose node is lost (or changes role, which ends its streams) goes on with
//! `Last-Event-ID` at any node.

use cluster_tests::failover::FailoverCluster;
use cluster_tests::{sse, wait_until, Cluster, Node, SecondaryOpts, StatusCode, STEADY_HEALTH};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// Longest wait for one event that should come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a failover may take: the lease, the election and recovery, on a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(15);

/// One event of the stream: its `id:` and its `data:` parsed as JSON.
#[derive(Debug)]
struct Event {
    id: u64,
    data: Value,
}

/// A reader of one stream: the response, read chunk by chunk, and what it has not parsed yet
/// (parsed by the kit's [`sse`], which the benchmark reads the stream with too).
struct Tail {
    response: reqwest::Response,
    blocks: sse::Blocks,
    /// Where it reads and the last id it saw, to reconnect with.
    client: reqwest::Client,
    url: String,
    last_id: Option<u64>,
    /// Whether an ended stream is reopened with `Last-Event-ID`, as an `EventSource` does
    /// (else an end fails the test), and how often that happened.
    resumes: bool,
    resumed: usize,
}

impl Tail {
    /// Opens `GET /api/messages/stream<query>` on `node`, with `Last-Event-ID` if given.
    async fn open(cluster: &Cluster, node: &Node, query: &str, last_event_id: Option<u64>) -> Tail {
        Tail::open_with(&cluster.client, node, query, last_event_id).await
    }

    /// [`Tail::open`] through `client` (one without a whole-request timeout: a stream has no end).
    async fn open_with(
        client: &reqwest::Client,
        node: &Node,
        query: &str,
        last_event_id: Option<u64>,
    ) -> Tail {
        let url = node.url(&format!("/api/messages/stream{query}"));
        let response = Tail::request(client, &url, last_event_id).await;
        Tail {
            response,
            blocks: sse::Blocks::new(),
            client: client.clone(),
            url,
            last_id: last_event_id,
            resumes: false,
            resumed: 0,
        }
    }

    async fn request(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<u64>,
    ) -> reqwest::Response {
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("the stream answers");
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(content_type, "text/event-stream", "{url}");
        response
    }

    /// Reads the next chunk of the stream into `blocks`; panics after `deadline`.
    async fn fill(&mut self, deadline: Instant) {
        let chunk = timeout_at(deadline, self.response.chunk())
            .await
            .expect("the next event in time");
        match chunk {
            Ok(Some(chunk)) => self.blocks.push(&chunk),
            Ok(None) | Err(_) if self.resumes => {
                // What an EventSource does: reconnect, saying what it saw last. A partial
                // event of the old stream is dropped, as the stream format says.
                self.blocks.clear();
                self.resumed += 1;
                self.response = timeout_at(
                    deadline,
                    Tail::request(&self.client, &self.url, self.last_id),
                )
                .await
                .expect("the reconnection in time");
            }
            Ok(None) => panic!("the stream ended ({})", self.url),
            Err(error) => panic!("the stream failed ({}): {error}", self.url),
        }
    }

    /// The next event, skipping comments.
    async fn next(&mut self) -> Event {
        self.next_by(Instant::now() + EVENT_TIMEOUT).await
    }

    /// The next event, skipping comments; panics after `deadline`.
    async fn next_by(&mut self, deadline: Instant) -> Event {
        loop {
            let parsed = self.blocks.next_event();
            match parsed.unwrap_or_else(|error| panic!("{} sent {error}", self.url)) {
                Some(sse::Event { id, data }) => {
                    let data = serde_json::from_str(&data).expect("data is JSON");
                    self.last_id = Some(id);
                    return Event { id, data };
                }
                None => self.fill(deadline).await,
            }
        }
    }

    /// The next `n` events, checked to be exactly `expected` (id, text) in order.
    async fn expect(&mut self, expected: &[(u64, String)]) {
        for (id, text) in expected {
            let event = self.next().await;
            assert_eq!(event.id, *id, "event {event:?}, expected id {id}");
            assert_eq!(event.data, json!({"id": id, "message": text}));
        }
    }
}

async fn append(cluster: &Cluster, text: &str) -> u64 {
    let (status, body) = cluster.append(text, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["id"].as_u64().expect("an id")
}

async fn three_nodes() -> Cluster {
    Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &STEADY_HEALTH,
    )
    .await
}

#[tokio::test]
async fn master_and_secondary_tail_every_append_in_order() {
    let cluster = three_nodes().await;
    let mut expected = Vec::new();
    for i in 1..=3 {
        let text = format!("before-{i}");
        expected.push((append(&cluster, &text).await, text));
    }
    let mut on_master = Tail::open(&cluster, &cluster.master, "", None).await;
    let mut on_secondary = Tail::open(&cluster, &cluster.secondaries[0], "", None).await;
    // What was there before the stream opened, then each append as it commits.
    on_master.expect(&expected).await;
    on_secondary.expect(&expected).await;
    for i in 1..=20 {
        let text = format!("live-{i}");
        let id = append(&cluster, &text).await;
        let one = [(id, text)];
        on_master.expect(&one).await;
        on_secondary.expect(&one).await;
        expected.extend(one);
    }
    // Appends through a secondary arrive the same way, and nothing arrives twice: a fresh
    // reader from 1 sees exactly the same sequence.
    let appender = cluster.appender_on(&cluster.secondaries[1]);
    let mut burst = Vec::new();
    for i in 1..=50 {
        let text = format!("burst-{i}");
        let (status, body) = appender.append(&text, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        burst.push((body["id"].as_u64().expect("an id"), text));
    }
    on_master.expect(&burst).await;
    on_secondary.expect(&burst).await;
    expected.extend(burst);
    let mut fresh = Tail::open(&cluster, &cluster.secondaries[1], "?from_id=1", None).await;
    fresh.expect(&expected).await;
}

#[tokio::test]
async fn last_event_id_resumes_after_the_last_event_seen() {
    let cluster = three_nodes().await;
    let mut expected = Vec::new();
    for i in 1..=6 {
        let text = format!("m-{i}");
        expected.push((append(&cluster, &text).await, text));
    }
    let secondary = &cluster.secondaries[0];
    // A reconnecting EventSource sends its URL again plus the last id: the later one wins.
    let mut resumed = Tail::open(&cluster, secondary, "?from_id=1", Some(3)).await;
    resumed.expect(&expected[3..]).await;
    let mut floor = Tail::open(&cluster, &cluster.master, "?from_id=5", Some(2)).await;
    floor.expect(&expected[4..]).await;
    let mut header_only = Tail::open(&cluster, &cluster.master, "", Some(6)).await;
    let text = "after-resume".to_owned();
    let id = append(&cluster, &text).await;
    assert_eq!(id, 7);
    let one = [(id, text)];
    header_only.expect(&one).await;
    resumed.expect(&one).await;
    floor.expect(&one).await;
}

#[tokio::test]
async fn a_bad_start_is_a_400_with_a_detail() {
    let cluster = three_nodes().await;
    for node in cluster.nodes() {
        for (query, last_event_id, says) in [
            ("?from_id=-1", None, "`from_id` must be >= 0"),
            ("?from_id=abc", None, "bad query string"),
            ("?from_id=1.5", None, "bad query string"),
            ("?limit=3", None, "bad query string"),
            ("", Some("abc"), "Last-Event-ID"),
            ("", Some("-4"), "Last-Event-ID"),
        ] {
            let mut request = cluster
                .client
                .get(node.url(&format!("/api/messages/stream{query}")));
            if let Some(value) = last_event_id {
                request = request.header("last-event-id", value);
            }
            let response = request.send().await.expect("an answer");
            let status = response.status();
            let body: Value = response.json().await.expect("a JSON body");
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{query} {last_event_id:?}: {body}"
            );
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(says), "{query} {last_event_id:?}: {body}");
        }
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`, in bytes.
fn rss(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid()))
        .expect("the node's /proc status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("a VmRSS line");
    kib * 1024
}

#[tokio::test]
async fn readers_that_stop_reading_hold_no_backlog() {
    const READERS: usize = 16;
    const MESSAGES: u64 = 1000;
    const SIZE: usize = 16 * 1024;
    let cluster = three_nodes().await;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(Tail::open(&cluster, &cluster.master, "", None).await);
    }
    let before = rss(&cluster.master);
    // 16 MiB of log; a node that buffered the backlog for each reader would hold 16 times that.
    let appender = cluster.appender();
    let answers: Vec<(StatusCode, Value)> = futures::stream::iter(1..=MESSAGES)
        .map(|i| {
            let appender = appender.clone();
            async move {
                let text = format!("{i:06}-{}", "x".repeat(SIZE - 7));
                appender.append(&text, Some(1)).await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut texts = std::collections::HashMap::new();
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        texts.insert(body["id"].as_u64(), body["message"].clone());
    }
    assert_eq!(texts.len() as u64, MESSAGES, "every append got its own id");
    wait_until(
        EVENT_TIMEOUT,
        format!("the master shows {MESSAGES} messages"),
        || async { cluster.last_id(&cluster.master).await >= MESSAGES },
    )
    .await;
    let grown = rss(&cluster.master).saturating_sub(before);
    let log = MESSAGES * SIZE as u64;
    eprintln!(
        "master grew by {} MiB with {READERS} readers not reading a {} MiB log",
        grown >> 20,
        log >> 20
    );
    assert!(
        grown < 3 * log + (64 << 20),
        "the master grew by {} MiB with {READERS} readers not reading a {} MiB log",
        grown >> 20,
        log >> 20
    );
    // Each reader, reading again, gets every message once, in order, from the log. One of
    // them stops halfway and reconnects with Last-Event-ID.
    let half = MESSAGES / 2;
    for (n, reader) in readers.iter_mut().enumerate() {
        let upto = if n == 0 { half } else { MESSAGES };
        for id in 1..=upto {
            let event = reader.next().await;
            assert_eq!(event.id, id, "reader {n}");
            assert_eq!(
                event.data,
                json!({"id": id, "message": texts[&Some(id)]}),
                "reader {n}"
            );
        }
    }
    drop(readers);
    let mut resumed = Tail::open(&cluster, &cluster.master, "", Some(half)).await;
    for id in half + 1..=MESSAGES {
        let event = resumed.next().await;
        assert_eq!(event.id, id);
    }
    // And it keeps tailing.
    let text = "after the backlog".to_owned();
    let id = append(&cluster, &text).await;
    resumed.expect(&[(id, text)]).await;
}

#[tokio::test]
async fn an_open_stream_does_not_hold_up_a_shutdown() {
    let mut cluster = three_nodes().await;
    let text = "one".to_owned();
    let id = append(&cluster, &text).await;
    let mut on_master = Tail::open(&cluster, &cluster.master, "", None).await;
    let mut on_secondary = Tail::open(&cluster, &cluster.secondaries[0], "", None).await;
    on_master.expect(&[(id, text.clone())]).await;
    on_secondary.expect(&[(id, text)]).await;
    // SIGTERM ends the streams (the node drains), so each node exits well before a supervisor's
    // SIGKILL (compose allows 10 s), with the client still connected.
    let status = cluster.secondaries[0].terminate(Duration::from_secs(8));
    assert!(status.success(), "secondary-1 exited with {status}");
    let status = cluster.master.terminate(Duration::from_secs(8));
    assert!(status.success(), "the master exited with {status}");
    for tail in [&mut on_master, &mut on_secondary] {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let ended = timeout_at(deadline, async {
            loop {
                match tail.response.chunk().await {
                    Ok(Some(_)) => continue,
                    other => return other.map(|_| ()),
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream ended with the node");
    }
}

#[tokio::test]
async fn failover_nodes_tail_and_a_reader_moves_to_another_node() {
    let mut cluster = FailoverCluster::start(3, &[]).await;
    let (master, _) = cluster.wait_master(TAKEOVER, None).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let mut tails = Vec::new();
    for node in &cluster.nodes {
        let mut tail = Tail::open_with(&client, node, "", None).await;
        // A node that changes role ends its streams (its HTTP server is the role's): readers
        // reconnect with Last-Event-ID, as an EventSource does.
        tail.resumes = true;
        tails.push(tail);
    }
    let through = cluster.appender_on((master + 1) % 3);
    let mut before = Vec::new();
    for i in 1..=5 {
        let text = format!("before-{i}");
        let (status, body) = through.append(&text, Some(3)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        before.push((body["id"].as_u64().expect("an id"), text));
    }
    for tail in &mut tails {
        tail.expect(&before).await;
    }
    // The master is lost; its reader goes on at another node from the last id it saw, as a
    // reconnecting EventSource would (every node shows the same log under the same ids).
    cluster.nodes[master].kill();
    let (new_master, _) = cluster.wait_master(TAKEOVER, Some(master)).await;
    let survivor = (master + 1) % 3;
    let last_seen = before.last().map(|(id, _)| *id);
    let mut moved = Tail::open_with(&client, &cluster.nodes[survivor], "", last_seen).await;
    let mut after = Vec::new();
    for i in 1..=5 {
        let text = format!("after-{i}");
        let (status, body) = cluster.appender_on(new_master).append(&text, Some(2)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        after.push((body["id"].as_u64().expect("an id"), text));
    }
    moved.expect(&after).await;
    for (i, tail) in tails.iter_mut().enumerate() {
        if i != master {
            tail.expect(&after).await;
            eprintln!(
                "{} reconnected {} times",
                cluster.nodes[i].name, tail.resumed
            );
        }
    }
}

/// Many readers at once, on every node, while clients append as fast as they are answered:
/// each reader sees every message exactly once, in id order, with its text. The streams share
/// the log (each holds a cursor and at most a page), so 500 of them cost the nodes CPU, not a
/// copy of the log each; the test checks they all keep up with a full-speed writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_readers_see_every_message_once_in_order_under_load() {
    /// Spread over the three nodes: about 167 connections each, far below `MAX_CONNECTIONS`
    /// (1024 by default) and the test process's open-file limit.
    const READERS: usize = 500;
    /// Clients appending at once, each as fast as it is answered, spread over the nodes (a
    /// secondary forwards to the master).
    const APPENDERS: u64 = 8;
    const PER_APPENDER: u64 = 75;
    const MESSAGES: u64 = APPENDERS * PER_APPENDER;
    /// How long everything may take once the readers are open: appends, then the last reader
    /// done. Generous for a loaded 2-core machine in debug; a stuck reader fails here.
    const WITHIN: Duration = Duration::from_secs(45);

    let cluster = three_nodes().await;
    let nodes: Vec<&Node> = cluster.nodes().collect();
    // One client for every stream: HTTP/1.1, so each stream is a connection of its own.
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let opened = Instant::now();
    let tails: Vec<(usize, Tail)> = futures::stream::iter(0..READERS)
        .map(|n| {
            let (client, node) = (&client, nodes[n % nodes.len()]);
            async move { (n, Tail::open_with(client, node, "", None).await) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    eprintln!("{READERS} streams open in {:?}", opened.elapsed());

    // Every stream is open (answered 200) before the first append, so each one tails the whole
    // load live. The last message, appended with w=3 after every other was answered, closes
    // the sequence: a reader that saw something twice would not find it where it expects it.
    let deadline = Instant::now() + WITHIN;
    let total = MESSAGES + 1;
    let readers: Vec<_> = tails
        .into_iter()
        .map(|(n, mut tail)| {
            let node = nodes[n % nodes.len()].name.clone();
            tokio::spawn(async move {
                // The texts in id order, one a line (the texts have no newline): one buffer
                // per reader, not a string per message.
                let mut seen = String::new();
                for id in 1..=total {
                    let event = tail.next_by(deadline).await;
                    assert_eq!(event.id, id, "reader {n} on {node}: {event:?}");
                    let fields = event.data.as_object().map_or(0, |o| o.len());
                    let text = event.data["message"].as_str();
                    assert!(
                        fields == 2 && event.data["id"] == id && text.is_some(),
                        "reader {n} on {node}: {event:?}"
                    );
                    seen.push_str(text.unwrap_or_default());
                    seen.push('\n');
                }
                (n, node, seen)
            })
        })
        .collect();

    let started = Instant::now();
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|a| {
            let appender = cluster.appender_on(nodes[a as usize % nodes.len()]);
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for k in 1..=PER_APPENDER {
                    let text = format!("appender-{a}-{k}");
                    let (status, body) = appender.append(&text, Some(1)).await;
                    assert_eq!(status, StatusCode::OK, "{text}: {body}");
                    acknowledged.push((body["id"].as_u64().expect("an id"), text));
                }
                acknowledged
            })
        })
        .collect();
    let mut expected = Vec::new();
    for appender in appenders {
        match timeout_at(deadline, appender).await {
            Ok(Ok(acknowledged)) => expected.extend(acknowledged),
            Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
            Err(_) => panic!("the appends were not answered within {WITHIN:?}"),
        }
    }
    let appended = started.elapsed();
    let text = "the last one".to_owned();
    let (status, body) = cluster.append(&text, Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expected.push((body["id"].as_u64().expect("an id"), text));
    expected.sort();
    let ids: Vec<u64> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (1..=total).collect::<Vec<_>>(),
        "every append has its own id, with no gaps"
    );
    eprintln!(
        "{MESSAGES} appends by {APPENDERS} clients in {appended:?} ({:.0}/s)",
        MESSAGES as f64 / appended.as_secs_f64()
    );
    let mut want = String::new();
    for (_, text) in &expected {
        want.push_str(text);
        want.push('\n');
    }

    for reader in readers {
        // Each reader fails on its own deadline; this only collects what they saw.
        let (n, node, seen) = match reader.await {
            Ok(done) => done,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        };
        if seen != want {
            let (id, (got, wanted)) = (1..)
                .zip(seen.lines().zip(want.lines()))
                .find(|(_, (got, wanted))| got != wanted)
                .expect("a line that differs");
            panic!("reader {n} on {node}: id {id} has {got:?}, acknowledged as {wanted:?}");
        }
    }
    eprintln!(
        "{READERS} readers saw all {total} messages {:?} after the first append",
        started.elapsed()
    );
}
