//! Protection of the cluster: the replication token keeps strangers off the internal port, and
//! limits keep the master responsive (oversized messages, too many waiting appends).

use cluster_tests::{
    assert_answered_408_by_the_request_timeout, assert_closed_by_the_request_timeout,
    assert_serves_new_clients, fast_health, secondary_health, steady_health, wait_until, Cluster,
    SecondaryOpts, StatusCode, REPLICATION_FAILED,
};
use replog_proto::v1::replication_client::ReplicationClient;
use replog_proto::v1::{FetchRequest, ReplicateRequest};
use std::time::{Duration, Instant};

/// "At once": well under a second, with room for a loaded 2-core machine.
const AT_ONCE: Duration = Duration::from_millis(500);

const TOKEN: &str = "s3cret-token";

/// Direct calls to a secondary's replication port, with `token` if any: a `Stream` with one
/// request (the answer to it) and a `Fetch`, each named.
async fn call_directly(
    grpc_endpoint: &str,
    token: Option<&str>,
) -> [(&'static str, Result<(), tonic::Status>); 2] {
    let mut client = ReplicationClient::connect(format!("http://{grpc_endpoint}"))
        .await
        .unwrap_or_else(|e| panic!("connect to {grpc_endpoint}: {e}"));
    fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("a header value"),
            );
        }
        request
    }
    let requests = tokio_stream::iter([ReplicateRequest::default()]);
    let stream = match client.stream(with_token(requests, token)).await {
        Ok(answers) => answers.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    let fetch = client
        .fetch(with_token(FetchRequest::default(), token))
        .await
        .map(|_| ());
    [("Stream", stream), ("Fetch", fetch)]
}

/// Injected: REPLICATION_TOKEN set on the master and secondary-1 alike, a different one on
/// secondary-2; direct gRPC calls to the replication ports without / with a wrong token.
/// Checked: replication to secondary-1 works (a w=2 append answers 200 and secondary-1 lists
/// it); the master's health shows secondary-2's last_error naming the token, secondary-2 is
/// never contacted nor healthy, a w=3 append answers the 500 after the 1 s timeout; direct calls
/// answer UNAUTHENTICATED and change nothing.
#[tokio::test]
async fn replication_needs_the_shared_token() {
    let mut cluster = Cluster::start(
        vec![
            SecondaryOpts::new().env("REPLICATION_TOKEN", TOKEN),
            SecondaryOpts::new()
                .env("REPLICATION_TOKEN", "another-token")
                .not_started(),
        ],
        &fast_health(&[
            ("REPLICATION_TOKEN", TOKEN),
            ("REPLICATION_TIMEOUT_SECONDS", "1"),
            ("RETRY_MAX_MS", "200"),
        ]),
    )
    .await;
    let (status, body) = cluster.append("with token", Some(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until(
        Duration::from_secs(2),
        "secondary-1 lists the message",
        || async { cluster.messages(&cluster.secondaries[0]).await.len() == 1 },
    )
    .await;

    cluster.secondaries[1].start();
    let stranger = cluster.secondaries[1].grpc_endpoint();
    let entry = cluster_tests::wait_for(
        Duration::from_secs(5),
        "the master reports secondary-2's token error",
        || async {
            let health = cluster.health(&cluster.master).await;
            let entry = secondary_health(&health, &stranger)?.clone();
            entry["last_error"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("token"))
                .then_some(entry)
        },
    )
    .await;
    eprintln!("secondary-2 in the master's health: {entry}");
    // Refused for good: it turns unhealthy (it never answered since the master started) and,
    // while a w=3 append waits its 1 s for it, it is never contacted and never healthy again.
    let mut seen = Vec::new();
    wait_until(
        Duration::from_secs(5),
        "secondary-2 unhealthy in the master's health",
        || async {
            let health = cluster.health(&cluster.master).await;
            let entry = secondary_health(&health, &stranger).expect("secondary-2 listed");
            assert!(entry["last_contact_ms_ago"].is_null(), "{entry}");
            entry["status"] == "unhealthy"
        },
    )
    .await;
    let started = Instant::now();
    let append = cluster.append("needs all three", Some(3));
    let watch = async {
        loop {
            let health = cluster.health(&cluster.master).await;
            let entry = secondary_health(&health, &stranger)
                .expect("secondary-2 listed")
                .clone();
            if entry["status"] != "unhealthy" || !entry["last_contact_ms_ago"].is_null() {
                seen.push(entry);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (status, body) = tokio::select! {
        answer = append => answer,
        never = watch => never,
    };
    let took = started.elapsed();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["detail"], REPLICATION_FAILED, "{body}");
    assert!(
        took >= Duration::from_millis(950),
        "answered after {took:?}"
    );
    assert!(
        seen.is_empty(),
        "secondary-2 with the wrong token was seen contacted or not unhealthy: {seen:?}"
    );

    for (node, token) in [(0, None), (0, Some("wrong")), (1, None)] {
        let endpoint = cluster.secondaries[node].grpc_endpoint();
        for (call, answer) in call_directly(&endpoint, token).await {
            let code = answer.as_ref().map_err(tonic::Status::code);
            assert_eq!(
                code,
                Err(tonic::Code::Unauthenticated),
                "direct {call} to secondary-{} with token {token:?}: {answer:?}",
                node + 1
            );
        }
    }
    assert_eq!(
        cluster.messages(&cluster.secondaries[0]).await,
        [(1, "with token".to_owned())]
    );
}

/// `POST /api/messages` with a JSON `body` over a raw HTTP/1.1 connection, reading the answer
/// while the body is still being sent (as curl does): a server that refuses a large body
/// answers before reading it all and then closes, which an HTTP client that first sends the
/// whole body reports as a send error. Returns the status code and the answer's body.
async fn post_reading_early(port: u16, body: Vec<u8>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the master");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /api/messages HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let send = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&body).await
    });
    // Read until the headers and `content-length` bytes of body are in (or the peer closes).
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if rest.len() >= length {
                    return text;
                }
            }
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&answer).into_owned(),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer to the large body within 10 s");
    send.abort();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, body.to_owned())
}

/// Injected: MAX_MESSAGE_BYTES=100 on the master; messages of 101 bytes (ASCII, and 51
/// characters of UTF-8), of 100 bytes, and a 10 MB body.
/// Checked: over the limit answers 413 with "status":"error" and a detail naming the limit,
/// and no id is used; exactly 100 bytes answers 200 with id 1; every node lists only it.
#[tokio::test]
async fn messages_over_the_limit_answer_413_and_change_nothing() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &steady_health(&[("MAX_MESSAGE_BYTES", "100")]),
    )
    .await;
    let too_long = [
        ("101 ASCII bytes", "x".repeat(101)),
        (
            "101 UTF-8 bytes in 51 characters",
            format!("{}a", "é".repeat(50)),
        ),
    ];
    for (what, message) in &too_long {
        let (status, body) = cluster.append(message, None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{what}: {body}");
        assert_eq!(body["status"], "error", "{what}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains("100")),
            "{what}: the detail should name the limit: {body}"
        );
    }
    let huge = format!(r#"{{"message": "{}"}}"#, "z".repeat(10 << 20));
    let (status, body) = post_reading_early(cluster.master.http_port, huge.into_bytes()).await;
    assert_eq!(status, 413, "10 MB body: {body}");
    let body: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("10 MB body: the 413 is not JSON: {body:?}"));
    assert_eq!(body["status"], "error", "{body}");
    assert!(body["detail"].is_string(), "{body}");
    assert_eq!(cluster.last_id(&cluster.master).await, 0, "ids used");

    let exact = "y".repeat(100);
    let (status, body) = cluster.append(&exact, None).await;
    assert_eq!(status, StatusCode::OK, "100 bytes: {body}");
    assert_eq!(body["id"], 1, "{body}");
    cluster
        .wait_converged(Duration::from_secs(3), &[(1, exact)])
        .await;
}

/// Injected: MAX_PENDING_APPENDS=5, no replication timeout, secondary-2 SIGSTOPped; 5 w=3
/// appends (they wait for it), then a sixth, then a w=1 append.
/// Checked: the master shows 5 pending; the sixth answers 503 at once with "status":"error"
/// and a `Retry-After` header, and takes no id; the w=1 append answers 200 at once with id 6
/// (it waits for nobody, so others' waiting does not refuse it); after SIGCONT the 5 answer 200
/// with ids 1..=5 and every node lists exactly the 6.
#[tokio::test]
async fn too_many_waiting_appends_answer_503_with_retry_after() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &steady_health(&[
            ("MAX_PENDING_APPENDS", "5"),
            ("REPLICATION_TIMEOUT_SECONDS", "0"),
            ("RETRY_MAX_MS", "200"),
        ]),
    )
    .await;
    cluster.secondaries[1].stop();
    let waiting: Vec<_> = (1..=5)
        .map(|i| {
            let appender = cluster.appender();
            tokio::spawn(async move { appender.append(&format!("wait-{i}"), Some(3)).await })
        })
        .collect();
    wait_until(
        Duration::from_secs(3),
        "the master shows 5 appends pending",
        || async { cluster.health(&cluster.master).await["pending"] == 5 },
    )
    .await;
    let started = Instant::now();
    let (status, headers, body) = cluster
        .appender()
        .append_with_headers("one too many", Some(3))
        .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    let retry_after = headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After header in {headers:?}"));
    assert!(
        retry_after.to_str().is_ok_and(|v| v.parse::<u64>().is_ok()),
        "Retry-After: {retry_after:?}"
    );
    assert!(took < AT_ONCE, "the 503 took {took:?}");
    assert!(
        waiting.iter().all(|t| !t.is_finished()),
        "a waiting append answered"
    );
    assert_eq!(cluster.last_id(&cluster.master).await, 5);

    let started = Instant::now();
    let (status, body) = cluster.append("waits for nobody", Some(1)).await;
    let took = started.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "w=1 behind a full MAX_PENDING_APPENDS: {body}"
    );
    assert_eq!(body["id"], 6, "{body}");
    assert!(took < AT_ONCE, "the w=1 append took {took:?}");

    cluster.secondaries[1].cont();
    let mut answered = Vec::new();
    for task in waiting {
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the waiting appends answer after SIGCONT")
            .expect("an append task");
        assert_eq!(status, StatusCode::OK, "{body}");
        answered.push((
            body["id"].as_u64().expect("an id"),
            body["message"].as_str().expect("a message").to_owned(),
        ));
    }
    answered.sort();
    let ids: Vec<u64> = answered.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    answered.push((6, "waits for nobody".to_owned()));
    cluster
        .wait_converged(Duration::from_secs(5), &answered)
        .await;
}

/// Injected: REQUEST_TIMEOUT_SECONDS=1 on the master and a secondary; on each, a client that
/// sends the start of a request's headers and then nothing more (slowloris).
/// Checked: the node closes that connection within the timeout plus slack (it does not hold it
/// forever), and answers other clients all along and afterwards.
#[tokio::test]
async fn clients_that_never_finish_their_headers_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let timeout = [("REQUEST_TIMEOUT_SECONDS", "1")];
    let cluster = Cluster::start(
        vec![SecondaryOpts::new().env("REQUEST_TIMEOUT_SECONDS", "1")],
        &steady_health(&timeout),
    )
    .await;
    for node in [&cluster.master, &cluster.secondaries[0]] {
        let port = node.http_port;
        let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stalled
            .write_all(b"POST /api/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-ty")
            .await
            .expect("send the start of the headers");
        let started = Instant::now();
        assert_serves_new_clients(node, "while a connection stalls").await;
        let what = "the stalled connection";
        let limit = Duration::from_secs(5);
        assert_closed_by_the_request_timeout(node, what, &mut stalled, started, limit).await;
        assert_serves_new_clients(node, "afterwards").await;
    }
}

/// Injected: REQUEST_TIMEOUT_SECONDS=1 on the master; a client that sends an append's headers
/// and the start of its body, then nothing more; another that sends its body in two parts
/// 300 ms apart.
/// Checked: the first is answered 408 with a JSON body naming REQUEST_TIMEOUT_SECONDS, no
/// sooner than the timeout and well before 5 s, and nothing is appended; the second (a pause,
/// but the whole body within the timeout) is appended normally.
#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408_and_appends_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start(
        vec![SecondaryOpts::new()],
        &steady_health(&[("REQUEST_TIMEOUT_SECONDS", "1")]),
    )
    .await;
    let port = cluster.master.http_port;
    let head = |length: usize| {
        format!(
            "POST /api/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
        )
    };

    let body = r#"{"message": "never finished"}"#;
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stalled
        .write_all(format!("{}{}", head(body.len()), &body[..12]).as_bytes())
        .await
        .expect("send the headers and the start of the body");
    let started = Instant::now();
    let mut answer = String::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), stalled.read_to_string(&mut answer)).await;
    let took = started.elapsed();
    assert_answered_408_by_the_request_timeout(read.is_ok(), &answer, took);

    let body = r#"{"message": "in two parts"}"#;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    slow.write_all(format!("{}{}", head(body.len()), &body[..10]).as_bytes())
        .await
        .expect("send the first part");
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.write_all(&body.as_bytes()[10..])
        .await
        .expect("send the rest");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_string(&mut answer))
        .await
        .expect("an answer within 5 s")
        .expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let listed: Vec<String> = cluster
        .messages(&cluster.master)
        .await
        .into_iter()
        .map(|(_, message)| message)
        .collect();
    assert_eq!(listed, ["in two parts"]);
}
