//! Clients that hold what a node has without ever asking for anything: connections that never
//! send a complete request (HTTP/1 and HTTP/2), more connections than a node serves
//! (`MAX_CONNECTIONS`), a body trickled forever, and the docs page's external validator. (`w=1`
//! appends behind a full `MAX_PENDING_APPENDS`: `protection.rs`.)

use cluster_tests::{
    assert_answered_408_by_the_request_timeout, assert_closed_by_the_request_timeout,
    assert_serves_new_clients, closed_by, get_on_a_new_connection, steady_health, wait_for,
    wait_until, Cluster, SecondaryOpts, StatusCode, REPLICATION_FAILED,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 connection preface a client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame (length 0, type 4, no flags, stream 0).
const H2_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A HEADERS frame on stream 1 with END_STREAM but not END_HEADERS, carrying one header
/// (`:method: GET`, HPACK index 2): a header block that CONTINUATION frames would finish.
const H2_HEADERS_UNFINISHED: [u8; 10] = [0, 0, 1, 1, 0x1, 0, 0, 0, 1, 0x82];

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

/// Injected: REQUEST_TIMEOUT_SECONDS=1 on the master and a secondary; on each, connections that
/// send nothing, half of the HTTP/2 preface, the whole preface and SETTINGS and then nothing
/// (an idle h2c connection), and a HEADERS frame whose header block never ends; meanwhile a
/// w=3 append waits 3 s for a stopped secondary (REPLICATION_TIMEOUT_SECONDS=3).
/// Checked: every one of those connections is closed by the node within the timeout plus
/// slack, not before 0.9 s; the waiting append, longer than the timeout but in flight, gets its
/// answer (the 500) on its connection; the node serves new clients afterwards.
#[tokio::test]
async fn connections_that_never_complete_a_request_are_closed() {
    let timeout = [
        ("REQUEST_TIMEOUT_SECONDS", "1"),
        ("REPLICATION_TIMEOUT_SECONDS", "3"),
    ];
    let cluster = Cluster::start(
        vec![
            SecondaryOpts::new().env("REQUEST_TIMEOUT_SECONDS", "1"),
            SecondaryOpts::new(),
        ],
        &steady_health(&timeout),
    )
    .await;
    cluster.secondaries[1].stop();
    let waiting = {
        let appender = cluster.appender();
        tokio::spawn(async move { appender.append("waits 3 s", Some(3)).await })
    };
    for node in [&cluster.master, &cluster.secondaries[0]] {
        let port = node.http_port;
        let mut hostile = Vec::new();
        for i in 0..5 {
            hostile.push((format!("silent TCP connection {i}"), connect(port).await));
        }
        let mut partial = connect(port).await;
        partial.write_all(&H2_PREFACE[..10]).await.expect("write");
        hostile.push(("half an HTTP/2 preface".to_owned(), partial));
        let mut idle = connect(port).await;
        idle.write_all(H2_PREFACE).await.expect("write");
        idle.write_all(&H2_SETTINGS).await.expect("write");
        hostile.push(("an idle h2c connection".to_owned(), idle));
        let mut unfinished = connect(port).await;
        unfinished.write_all(H2_PREFACE).await.expect("write");
        unfinished.write_all(&H2_SETTINGS).await.expect("write");
        unfinished
            .write_all(&H2_HEADERS_UNFINISHED)
            .await
            .expect("write");
        hostile.push(("HEADERS without END_HEADERS".to_owned(), unfinished));
        let opened = Instant::now();

        for (what, stream) in &mut hostile {
            let limit = Duration::from_secs(4);
            assert_closed_by_the_request_timeout(node, what, stream, opened, limit).await;
        }
        assert_serves_new_clients(node, "afterwards").await;
    }
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting append is answered")
        .expect("the append task");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["detail"], REPLICATION_FAILED, "{body}");
    cluster.secondaries[1].cont();
}

/// The value of a counter without labels in a node's `/metrics`.
async fn counter(url: &str, name: &str) -> Option<u64> {
    let text = get_on_a_new_connection(url).await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Injected: MAX_CONNECTIONS=8 on the master; 8 silent connections, then more.
/// Checked: a connection beyond the limit is closed at once (well before
/// REQUEST_TIMEOUT_SECONDS, 30 s here), the master logs a warning naming MAX_CONNECTIONS and
/// counts `replog_connections_refused_total`; once the silent connections close, a normal
/// client is served again.
#[tokio::test]
async fn connections_beyond_max_connections_are_refused() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new()],
        &steady_health(&[("MAX_CONNECTIONS", "8")]),
    )
    .await;
    let port = cluster.master.http_port;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(connect(port).await);
    }
    let mut beyond = connect(port).await;
    let started = Instant::now();
    let closed = closed_by(&mut beyond, started, Duration::from_secs(3)).await;
    assert!(
        closed.is_ok(),
        "a connection beyond MAX_CONNECTIONS=8 is still open after {:?}",
        started.elapsed()
    );
    drop(silent);
    let metrics = cluster.master.url("/metrics");
    let refused = wait_for(
        Duration::from_secs(5),
        "a new client is served again and the refusals are counted",
        || async { counter(&metrics, "replog_connections_refused_total").await },
    )
    .await;
    assert!(refused >= 1, "replog_connections_refused_total = {refused}");
    let answer = get_on_a_new_connection(&cluster.master.url("/api/messages")).await;
    assert!(
        answer.as_ref().is_ok_and(|a| a.status() == StatusCode::OK),
        "{answer:?}"
    );
    wait_until(
        Duration::from_secs(2),
        "the master logs that it refused connections",
        || async { cluster.master.log().contains("MAX_CONNECTIONS") },
    )
    .await;
}

/// Injected: REQUEST_TIMEOUT_SECONDS=1 on the master; an append whose 100-byte body arrives one
/// byte every 200 ms (each gap well within the timeout).
/// Checked: it is answered 408 naming REQUEST_TIMEOUT_SECONDS about 1 s after the body
/// started, not after the 20 s the trickle would take, and nothing is appended.
#[tokio::test]
async fn a_body_trickled_forever_is_cut_after_the_request_timeout() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new()],
        &steady_health(&[("REQUEST_TIMEOUT_SECONDS", "1")]),
    )
    .await;
    let stream = connect(cluster.master.http_port).await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /api/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n",
        )
        .await
        .expect("send the headers");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert_answered_408_by_the_request_timeout(read.is_ok(), &answer, took);
    assert!(cluster.messages(&cluster.master).await.is_empty());
}

/// Checked: the `/docs` page (and `/docs/`) tells Swagger UI not to send the document to an
/// external validator, and its assets are served by the node.
#[tokio::test]
async fn the_docs_page_calls_no_external_validator() {
    let cluster = Cluster::start(vec![], &[]).await;
    for path in ["/docs", "/docs/"] {
        let answer = get_on_a_new_connection(&cluster.master.url(path))
            .await
            .expect("GET the docs page");
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        let page = answer.text().await.expect("the page");
        assert!(page.contains("validatorUrl: null"), "{path}: {page}");
        assert!(page.contains("swagger-ui-bundle.js"), "{path}: {page}");
    }
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        let answer = get_on_a_new_connection(&cluster.master.url(asset))
            .await
            .expect("GET an asset");
        assert_eq!(answer.status(), StatusCode::OK, "{asset}");
    }
}

/// Injected: MAX_CONNECTIONS values that are not a whole number from 1 to 2^20.
/// Checked: the master stops at start with one line naming MAX_CONNECTIONS.
#[test]
fn bad_max_connections_stop_the_node_at_start() {
    let port = cluster_tests::free_port().to_string();
    for value in ["0", "-1", "many", "2000000"] {
        let env = [
            ("HOST", "127.0.0.1"),
            ("HTTP_PORT", port.as_str()),
            ("MAX_CONNECTIONS", value),
        ];
        let output = cluster_tests::run_to_exit(
            cluster_tests::Binary::Master,
            &env,
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            !output.status.success() && lines.len() == 1 && lines[0].contains("MAX_CONNECTIONS"),
            "MAX_CONNECTIONS={value}: {}, stderr {stderr:?}",
            output.status
        );
    }
}
