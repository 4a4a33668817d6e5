//! The node's real HTTP router (`replog_node::api::router`), driven in process with
//! `tower::ServiceExt::oneshot`: request validation, CORS and the body deadline.
//!
//! The `Node` behind it is an in-memory log ([`MemoryNode`]): the router is what is under test,
//! and the double counts the appends that reach it, so a test can check that a refused request
//! changed nothing. It can start after id 1 as retention leaves a log
//! ([`MemoryNode::forget_before`]) and fail its pages from an id on as a damaged segment does
//! ([`MemoryNode::break_from`]), with the storage's own `ReadError`s.

use axum::body::Body;
use axum::http::{header, Method, Request, Response, StatusCode};
use bytes::Bytes;
use replog_node::api::{self, cors, ApiError, Health, Node};
use replog_node::config::LimitArgs;
use replog_node::log::Message;
use replog_node::metrics::Metrics;
use replog_node::shutdown::Shutdown;
use replog_node::storage::segments::ReadError;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tower::ServiceExt;

/// Nodes in the pretend cluster: the largest `w` the double accepts.
const NODES: u64 = 3;

/// A log in memory that appends whatever reaches it.
struct MemoryNode {
    log: Mutex<Vec<Bytes>>,
    /// The first retained id: pages from below it are gone.
    first: AtomicU64,
    /// Pages reaching this id fail as a damaged segment's do; 0: none does.
    broken: AtomicU64,
    visible: watch::Sender<u64>,
    metrics: Metrics,
}

impl MemoryNode {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            log: Mutex::new(Vec::new()),
            first: AtomicU64::new(1),
            broken: AtomicU64::new(0),
            visible: watch::Sender::new(0),
            metrics: Metrics::default(),
        })
    }

    fn appended(&self) -> usize {
        self.log.lock().expect("the log's lock").len()
    }

    /// Appends `count` messages `m<id>` straight to the log, as committed ones.
    fn fill(&self, count: usize) {
        let last = {
            let mut log = self.log.lock().expect("the log's lock");
            for _ in 0..count {
                let id = log.len() + 1;
                log.push(Bytes::from(format!("m{id}")));
            }
            log.len() as u64
        };
        api::publish_visible(&self.visible, last);
    }

    /// Drops every id below `first_id`, as retention does.
    fn forget_before(&self, first_id: u64) {
        self.first.store(first_id, Ordering::SeqCst);
    }

    /// Makes every page that reaches `id` fail as an unreadable segment does.
    fn break_from(&self, id: u64) {
        self.broken.store(id, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl Node for MemoryNode {
    async fn append(
        &self,
        message: String,
        w: Option<u64>,
        _key: Option<String>,
    ) -> Result<u64, ApiError> {
        if w.is_some_and(|w| !(1..=NODES).contains(&w)) {
            return Err(ApiError::Unprocessable(format!(
                "`w` must be between 1 and {NODES}"
            )));
        }
        let id = {
            let mut log = self.log.lock().expect("the log's lock");
            log.push(Bytes::from(message));
            log.len() as u64
        };
        api::publish_visible(&self.visible, id);
        Ok(id)
    }

    fn page(&self, from_id: u64, limit: usize) -> Result<Vec<Message>, ApiError> {
        let first_id = self.first.load(Ordering::SeqCst);
        let from_id = match from_id {
            0 => first_id,
            below if below < first_id => {
                return Err(ReadError::Gone {
                    from_id: below,
                    first_id,
                }
                .into())
            }
            from => from,
        };
        let log = self.log.lock().expect("the log's lock");
        let page: Vec<Message> = (from_id..)
            .zip(log.iter().skip(from_id as usize - 1))
            .take(limit)
            .map(|(id, message)| Message {
                id,
                message: message.clone(),
            })
            .collect();
        let broken = self.broken.load(Ordering::SeqCst);
        if broken > 0 && page.last().is_some_and(|m| m.id >= broken) {
            return Err(ReadError::Corrupt {
                path: "segments/00000000000000000001.log".into(),
                id: broken,
                offset: 4096,
                reason: "checksum mismatch".into(),
            }
            .into());
        }
        Ok(page)
    }

    fn visible(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    fn health(&self) -> Health {
        Health {
            first_id: self.first.load(Ordering::SeqCst),
            ..Health::default()
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn nodes(&self) -> Option<u64> {
        Some(NODES)
    }
}

const TIMEOUT: Duration = Duration::from_secs(1);

fn limits(cors_origins: Option<&str>) -> LimitArgs {
    LimitArgs {
        max_message_bytes: 1024,
        max_pending_appends: 100,
        request_timeout_seconds: TIMEOUT,
        max_connections: 16,
        cors_origins: cors_origins
            .map(|value| cors::parse_origins(value).expect("valid CORS_ORIGINS")),
    }
}

/// The node's whole HTTP app over `node`.
fn app(node: &Arc<MemoryNode>, limits: &LimitArgs) -> axum::Router {
    api::router(node.clone(), axum::Router::new(), Shutdown::new(), limits)
}

/// Sends `request` through a fresh router with `limits`.
async fn send(
    node: &Arc<MemoryNode>,
    limits: &LimitArgs,
    request: Request<Body>,
) -> Response<Body> {
    app(node, limits)
        .oneshot(request)
        .await
        .expect("the router answers every request")
}

fn post_json(body: impl Into<Body>) -> Request<Body> {
    Request::post("/api/messages")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("a request")
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("a request")
}

/// The answer's status and JSON body.
async fn json_of(response: Response<Body>) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the answer's body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
        panic!("not JSON ({error}): {:?}", String::from_utf8_lossy(&bytes))
    });
    (status, body)
}

/// Asserts a refusal: `status`, `{"status": "error"}`, a detail containing `names`.
async fn assert_refused(response: Response<Body>, status: StatusCode, names: &str) {
    let (got, body) = json_of(response).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(names),
        "detail should name {names:?}: {body}"
    );
}

#[tokio::test]
async fn a_valid_append_is_answered_with_its_id() {
    let node = MemoryNode::new();
    let limits = limits(None);
    let answer = send(&node, &limits, post_json(r#"{"message": "hello", "w": 2}"#)).await;
    let (status, body) = json_of(answer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "success", "id": 1, "message": "hello"})
    );
    assert_eq!(node.appended(), 1);
}

/// Injected: append bodies that break the contract, one per rule.
/// Checked: each is answered with its 4xx and a JSON detail naming the problem, and none
/// reaches the node.
#[tokio::test]
async fn invalid_append_bodies_are_refused_with_what_is_wrong() {
    let node = MemoryNode::new();
    let limits = limits(None);
    let cases: [(&str, StatusCode, &str); 11] = [
        (
            r#"{"message": "a""#,
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        ("not json", StatusCode::BAD_REQUEST, "malformed JSON"),
        ("", StatusCode::BAD_REQUEST, "malformed JSON"),
        (
            r#"{"w": 2}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "`message` is required",
        ),
        (
            r#"{"message": 5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "`message` must be a string",
        ),
        (r#"["a"]"#, StatusCode::UNPROCESSABLE_ENTITY, "JSON object"),
        (
            r#"{"message": "a", "w": "2"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "`w` must be an integer",
        ),
        (
            r#"{"message": "a", "w": 2.5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "`w` must be an integer",
        ),
        (
            r#"{"message": "a", "w": -1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "`w` must be between 1 and",
        ),
        (
            r#"{"message": "a", "W": 2}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `W`",
        ),
        (
            r#"{"message": "a", "key": "a b"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "`key` must be 1 to 128",
        ),
    ];
    for (body, status, names) in cases {
        let answer = send(&node, &limits, post_json(body)).await;
        let (got, json) = json_of(answer).await;
        assert_eq!(got, status, "{body}: {json}");
        assert_eq!(json["status"], "error", "{body}: {json}");
        let detail = json["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(names),
            "{body}: should name {names:?}: {json}"
        );
    }
    assert_eq!(node.appended(), 0, "a refused body reached the node");
}

/// Injected: appends without `Content-Type`, as `text/plain`, and as `application/json` with
/// parameters and as `application/<x>+json` (both JSON).
/// Checked: the first two are 415 naming the header, the JSON ones are appended.
#[tokio::test]
async fn an_append_must_say_it_is_json() {
    let node = MemoryNode::new();
    let limits = limits(None);
    let body = r#"{"message": "a"}"#;
    for content_type in [None, Some("text/plain")] {
        let mut request = Request::post("/api/messages");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(body)).expect("a request");
        let answer = send(&node, &limits, request).await;
        assert_refused(
            answer,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/json",
        )
        .await;
    }
    assert_eq!(node.appended(), 0);
    for content_type in [
        "application/json; charset=utf-8",
        "application/vnd.replog+json",
    ] {
        let request = Request::post("/api/messages")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("a request");
        let (status, json) = json_of(send(&node, &limits, request).await).await;
        assert_eq!(status, StatusCode::OK, "{content_type}: {json}");
    }
    assert_eq!(node.appended(), 2);
}

/// Injected: a body one byte over the limit (`api::body_limit` of MAX_MESSAGE_BYTES), with
/// and without `Content-Length`.
/// Checked: 413 naming the size, nothing appended; a body at the limit is read.
#[tokio::test]
async fn an_oversized_body_is_413() {
    let node = MemoryNode::new();
    let limits = limits(None);
    let limit = api::body_limit(limits.max_message_bytes);
    let padded = |size: usize| {
        let mut body = br#"{"message": "a"}"#.to_vec();
        body.resize(size, b' ');
        body
    };
    let known = post_json(padded(limit + 1));
    assert_refused(
        send(&node, &limits, known).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too large",
    )
    .await;
    let chunks = padded(limit + 1)
        .chunks(4096)
        .map(|chunk| Ok::<_, std::io::Error>(Bytes::copy_from_slice(chunk)))
        .collect::<Vec<_>>();
    let streamed = post_json(Body::from_stream(futures::stream::iter(chunks)));
    assert_refused(
        send(&node, &limits, streamed).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too large",
    )
    .await;
    assert_eq!(node.appended(), 0);
    let (status, json) = json_of(send(&node, &limits, post_json(padded(limit))).await).await;
    assert_eq!(status, StatusCode::OK, "{json}");
}

/// Injected: `GET /api/messages` with a negative `from_id` or `limit`, a non-number, an
/// unknown parameter; then good queries over three appends.
/// Checked: the bad ones are 400 naming the parameter or the query string; the good ones list
/// the right window.
#[tokio::test]
async fn list_queries_are_validated() {
    let node = MemoryNode::new();
    let limits = limits(None);
    for (query, names) in [
        ("from_id=-1", "`from_id` must be >= 0"),
        ("limit=-5", "`limit` must be >= 0"),
        ("limit=many", "bad query string"),
        ("from=2", "bad query string"),
    ] {
        let answer = send(&node, &limits, get(&format!("/api/messages?{query}"))).await;
        assert_refused(answer, StatusCode::BAD_REQUEST, names).await;
    }
    for message in ["a", "b", "c"] {
        let body = json!({ "message": message }).to_string();
        let (status, _) = json_of(send(&node, &limits, post_json(body)).await).await;
        assert_eq!(status, StatusCode::OK);
    }
    for (query, ids) in [
        ("", vec![1, 2, 3]),
        ("?from_id=2", vec![2, 3]),
        ("?from_id=0&limit=2", vec![1, 2]),
        ("?from_id=3&limit=0", vec![]),
        ("?from_id=9", vec![]),
    ] {
        let (status, body) =
            json_of(send(&node, &limits, get(&format!("/api/messages{query}"))).await).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        let got: Vec<u64> = body["messages"]
            .as_array()
            .map(|list| list.iter().filter_map(|m| m["id"].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(got, ids, "{query}: {body}");
    }
}

#[tokio::test]
async fn an_unknown_path_is_a_json_404() {
    let node = MemoryNode::new();
    let answer = send(&node, &limits(None), get("/api/nothing")).await;
    assert_refused(answer, StatusCode::NOT_FOUND, "/api/nothing").await;
}

const ORIGIN: &str = "http://page.example:8080";

/// A preflight for a JSON append from `origin`.
fn preflight(origin: &str) -> Request<Body> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri("/api/messages")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .body(Body::empty())
        .expect("a request")
}

fn with_origin(mut request: Request<Body>, origin: &str) -> Request<Body> {
    let value = origin.parse().expect("an origin header");
    request.headers_mut().insert(header::ORIGIN, value);
    request
}

/// The `access-control-*` headers of an answer.
fn cors_headers(response: &Response<Body>) -> Vec<String> {
    response
        .headers()
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

fn header_of(response: &Response<Body>, name: header::HeaderName) -> &str {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// Injected: no CORS_ORIGINS; a preflight, a list and an append from another origin.
/// Checked: no answer carries any `access-control-*` header.
#[tokio::test]
async fn without_cors_origins_no_answer_has_cors_headers() {
    let node = MemoryNode::new();
    let limits = limits(None);
    for request in [
        preflight(ORIGIN),
        with_origin(get("/api/messages"), ORIGIN),
        with_origin(post_json(r#"{"message": "a"}"#), ORIGIN),
    ] {
        let what = format!("{} {}", request.method(), request.uri());
        let answer = send(&node, &limits, request).await;
        assert_eq!(cors_headers(&answer), Vec::<String>::new(), "{what}");
    }
}

/// Injected: CORS_ORIGINS listing one origin; a preflight, an append and a list from it, and
/// the same from another origin and from `null`.
/// Checked: the listed origin is mirrored, the preflight allows `POST` and `content-type`, and
/// gRPC-Web's status headers are exposed; the others get no `Access-Control-Allow-Origin`.
#[tokio::test]
async fn a_listed_origin_is_allowed_and_no_other() {
    let node = MemoryNode::new();
    let limits = limits(Some(&format!("{ORIGIN}, http://other.example")));

    let answer = send(&node, &limits, preflight(ORIGIN)).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(
        header_of(&answer, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        ORIGIN
    );
    assert!(header_of(&answer, header::ACCESS_CONTROL_ALLOW_METHODS).contains("POST"));
    let allowed = header_of(&answer, header::ACCESS_CONTROL_ALLOW_HEADERS);
    for name in ["content-type", "x-grpc-web", "grpc-timeout"] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }

    let answer = send(
        &node,
        &limits,
        with_origin(post_json(r#"{"message": "a"}"#), ORIGIN),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        header_of(&answer, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        ORIGIN
    );
    let exposed = header_of(&answer, header::ACCESS_CONTROL_EXPOSE_HEADERS);
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }

    let answer = send(&node, &limits, get("/api/messages")).await;
    assert!(
        header_of(&answer, header::VARY).contains("origin"),
        "a list may be cached, so it must vary with Origin: {:?}",
        answer.headers()
    );

    for stranger in ["http://evil.example", "null", "http://page.example:8081"] {
        for request in [
            preflight(stranger),
            with_origin(post_json(r#"{"message": "b"}"#), stranger),
        ] {
            let what = format!("{} from {stranger}", request.method());
            let answer = send(&node, &limits, request).await;
            assert_eq!(
                answer.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
                None,
                "{what}: {:?}",
                answer.headers()
            );
        }
    }
}

#[tokio::test]
async fn a_star_allows_every_origin() {
    let node = MemoryNode::new();
    let answer = send(
        &node,
        &limits(Some("*")),
        preflight("http://anyone.example"),
    )
    .await;
    assert_eq!(header_of(&answer, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
}

/// Sends `request` like [`send`], but fails instead of waiting forever if the router never
/// answers (a body without a deadline would hold it open).
async fn send_bounded(node: &Arc<MemoryNode>, request: Request<Body>) -> Response<Body> {
    tokio::time::timeout(60 * TIMEOUT, send(node, &limits(None), request))
        .await
        .expect("an answer within a minute of REQUEST_TIMEOUT_SECONDS=1")
}

/// A JSON append whose body sends `{"message": ` and then nothing more, ever.
fn stalled_append() -> Request<Body> {
    let start = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(
        br#"{"message": "#,
    ))]);
    post_json(Body::from_stream(futures::StreamExt::chain(
        start,
        futures::stream::pending(),
    )))
}

/// An append whose body of `len` spaces arrives one byte every `gap`.
fn trickled_append(len: usize, gap: Duration) -> Request<Body> {
    let bytes = futures::stream::unfold(0, move |sent| async move {
        if sent == len {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((Ok::<_, std::io::Error>(Bytes::from_static(b" ")), sent + 1))
    });
    post_json(Body::from_stream(bytes))
}

/// Injected (paused clock): REQUEST_TIMEOUT_SECONDS=1 and an append body that stops after its
/// first bytes.
/// Checked: answered 408 with a JSON detail naming REQUEST_TIMEOUT_SECONDS, exactly when the
/// timeout ends, and nothing appended.
#[tokio::test(start_paused = true)]
async fn a_stalled_body_is_answered_408_at_the_timeout() {
    let node = MemoryNode::new();
    let started = tokio::time::Instant::now();
    let answer = send_bounded(&node, stalled_append()).await;
    assert_eq!(started.elapsed(), TIMEOUT);
    assert_refused(
        answer,
        StatusCode::REQUEST_TIMEOUT,
        "REQUEST_TIMEOUT_SECONDS",
    )
    .await;
    assert_eq!(node.appended(), 0);
}

/// Injected (paused clock): REQUEST_TIMEOUT_SECONDS=1 and an append body of 100 bytes sent one
/// byte every 200 ms: each gap well within the timeout, the whole 20 s.
/// Checked: the whole body is bounded, not each gap: 408 one second after the body started,
/// nothing appended.
#[tokio::test(start_paused = true)]
async fn a_trickled_body_is_cut_at_the_timeout() {
    let node = MemoryNode::new();
    let started = tokio::time::Instant::now();
    let answer = send_bounded(&node, trickled_append(100, Duration::from_millis(200))).await;
    let took = started.elapsed();
    assert!(
        took >= TIMEOUT && took < 2 * TIMEOUT,
        "answered after {took:?}"
    );
    assert_refused(
        answer,
        StatusCode::REQUEST_TIMEOUT,
        "REQUEST_TIMEOUT_SECONDS",
    )
    .await;
    assert_eq!(node.appended(), 0);
}

/// Injected (paused clock): an append body that arrives in three parts 300 ms apart, within
/// REQUEST_TIMEOUT_SECONDS=1.
/// Checked: it is appended; the deadline does not cut a slow body that arrives in time.
#[tokio::test(start_paused = true)]
async fn a_body_that_arrives_in_time_is_read() {
    let node = MemoryNode::new();
    let parts = [r#"{"mess"#, r#"age": "#, r#""slow"}"#];
    let bytes = futures::stream::unfold(0, move |next| async move {
        let part = parts.get(next)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from_static(part.as_bytes())),
            next + 1,
        ))
    });
    let answer = send(&node, &limits(None), post_json(Body::from_stream(bytes))).await;
    let (status, body) = json_of(answer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "slow");
    assert_eq!(node.appended(), 1);
}

/// The ids of a list answer's `messages`.
fn ids(body: &Value) -> Vec<u64> {
    body["messages"]
        .as_array()
        .map(|list| list.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// Asserts a 410 that names `first_id` in its JSON body and its detail.
async fn assert_gone(response: Response<Body>, first_id: u64, what: &str) {
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::GONE, "{what}: {body}");
    assert_eq!(body["status"], "error", "{what}: {body}");
    assert_eq!(body["first_id"], first_id, "{what}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("first retained id is {first_id}")),
        "{what}: the detail should name the first retained id: {body}"
    );
}

/// A node whose log holds ids 1..=`count` with ids below `first_id` retained no more.
fn retained(count: usize, first_id: u64) -> Arc<MemoryNode> {
    let node = MemoryNode::new();
    node.fill(count);
    node.forget_before(first_id);
    node
}

/// Injected: a log of ids 1..=10 whose first retained id is 5; lists from 3 and 4, one page
/// and streamed (a limit above the streamed list's page of 1024).
/// Checked: each is 410 with `first_id` 5, before any body, and changes nothing: the log is
/// whole, the first retained id still 5, and a list from 5 shows 5..=10.
#[tokio::test]
async fn a_list_below_the_first_retained_id_is_410_naming_it() {
    let node = retained(10, 5);
    let limits = limits(None);
    for query in [
        "from_id=3",
        "from_id=4",
        "from_id=1&limit=2",
        "from_id=4&limit=5000",
    ] {
        let answer = send(&node, &limits, get(&format!("/api/messages?{query}"))).await;
        assert_gone(answer, 5, query).await;
    }
    assert_eq!(node.appended(), 10);
    assert_eq!(node.first_id(), 5);
    let (status, body) = json_of(send(&node, &limits, get("/api/messages?from_id=5")).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), (5..=10).collect::<Vec<_>>(), "{body}");
    assert_eq!(body["first_id"], 5, "{body}");
}

/// Injected: the same log (ids 1..=10, first retained 5); lists without `from_id`, with
/// `from_id=0`, one page and streamed.
/// Checked: each starts at 5 and names `first_id` 5; the streamed body has `first_id` as its
/// first key, as the one-page body does.
#[tokio::test]
async fn a_list_without_from_id_starts_at_the_first_retained_id() {
    let node = retained(10, 5);
    let limits = limits(None);
    for (query, want) in [
        ("", (5..=10).collect::<Vec<u64>>()),
        ("?from_id=0", (5..=10).collect()),
        ("?limit=3", vec![5, 6, 7]),
        ("?from_id=0&limit=2", vec![5, 6]),
        ("?from_id=7&limit=100", vec![7, 8, 9, 10]),
    ] {
        let answer = send(&node, &limits, get(&format!("/api/messages{query}"))).await;
        let bytes = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .expect("the answer's body");
        assert!(
            bytes.starts_with(br#"{"first_id":5,"messages":["#),
            "{query}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        let body: Value = serde_json::from_slice(&bytes).expect("a JSON list");
        assert_eq!(ids(&body), want, "{query}: {body}");
    }
}

/// Injected: a log of 1,500 ids, all retained, whose page reaching id 1,200 fails as a
/// damaged segment does; a one-page list over it, a stream from it, and a streamed list of all.
/// Checked: the page and the stream are 503 with a JSON detail naming the segment and the id;
/// the streamed list, whose body has begun when the page fails, ends with a broken body rather
/// than a short list.
#[tokio::test]
async fn a_page_the_files_cannot_serve_is_503_not_a_short_list() {
    let node = MemoryNode::new();
    node.fill(1500);
    node.break_from(1200);
    let limits = limits(None);
    for uri in [
        "/api/messages?from_id=1150&limit=100",
        "/api/messages/stream?from_id=1200",
    ] {
        let answer = send(&node, &limits, get(uri)).await;
        let (status, body) = json_of(answer).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert_eq!(body["status"], "error", "{uri}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        for names in [
            "cannot read the log here",
            "00000000000000000001.log",
            "id 1200",
        ] {
            assert!(
                detail.contains(names),
                "{uri}: should name {names:?}: {body}"
            );
        }
    }
    let answer = send(&node, &limits, get("/api/messages")).await;
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "the body began before the page failed"
    );
    let body = axum::body::to_bytes(answer.into_body(), usize::MAX).await;
    assert!(body.is_err(), "a short list was answered whole");
}

/// The status and the text of an event stream until `until` appears in it (or, failing, what
/// came within a few seconds): the stream itself never ends.
async fn stream_until(response: Response<Body>, until: &str) -> (StatusCode, String) {
    use futures::StreamExt;
    let status = response.status();
    let mut chunks = response.into_body().into_data_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !text.contains(until) {
        match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Some(Err(error))) => panic!("the stream broke: {error}; so far {text:?}"),
            Ok(None) | Err(_) => break,
        }
    }
    (status, text)
}

fn stream_request(query: &str, last_event_id: Option<&str>) -> Request<Body> {
    let mut request = Request::get(format!("/api/messages/stream{query}"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.body(Body::empty()).expect("a request")
}

/// Injected: a log of ids 1..=10, first retained 5; streams from 3 and 4, with
/// `Last-Event-ID` 2 and 3 (next 3 and 4), and with both (`from_id=5`, `Last-Event-ID` 2:
/// `from_id` is the later).
/// Checked: a start below 5 is 410 with `first_id` 5 before any stream; a start at 5 or later
/// (`Last-Event-ID` 4, no `from_id`, `from_id=0`) streams from it, its greeting naming where it
/// starts.
#[tokio::test]
async fn a_stream_below_the_first_retained_id_is_410_naming_it() {
    let node = retained(10, 5);
    let limits = limits(None);
    for (query, last_event_id) in [
        ("?from_id=3", None),
        ("?from_id=4", None),
        ("", Some("2")),
        ("", Some("3")),
        ("?from_id=0", Some("3")),
    ] {
        let what = format!("{query} Last-Event-ID {last_event_id:?}");
        let answer = send(&node, &limits, stream_request(query, last_event_id)).await;
        assert_gone(answer, 5, &what).await;
    }
    for (query, last_event_id, from) in [
        ("", None, 5),
        ("?from_id=0", None, 5),
        ("", Some("4"), 5),
        ("?from_id=5", Some("2"), 5),
        ("", Some("8"), 9),
        ("?from_id=6", None, 6),
    ] {
        let what = format!("{query} Last-Event-ID {last_event_id:?}");
        let answer = send(&node, &limits, stream_request(query, last_event_id)).await;
        let (status, text) = stream_until(answer, "id: 10\n").await;
        assert_eq!(status, StatusCode::OK, "{what}: {text}");
        assert!(
            text.starts_with(&format!(": replog stream from id {from}\n")),
            "{what}: {text:?}"
        );
        let first_event = text.find("id: ").and_then(|at| text[at..].lines().next());
        assert_eq!(
            first_event,
            Some(&*format!("id: {from}")),
            "{what}: {text:?}"
        );
    }
}

/// Injected: the same log (ids 1..=10, first retained 5); `/api/health`, `/metrics`.
/// Checked: both name the first retained id.
#[tokio::test]
async fn health_and_metrics_name_the_first_retained_id() {
    let node = retained(10, 5);
    let limits = limits(None);
    let (status, body) = json_of(send(&node, &limits, get("/api/health")).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["first_id"], 5, "{body}");
    let answer = send(&node, &limits, get("/metrics")).await;
    let text = axum::body::to_bytes(answer.into_body(), usize::MAX)
        .await
        .expect("the metrics");
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.lines().any(|line| line == "replog_log_first_id 5"),
        "{text}"
    );
}

/// Injected: `/openapi.json`.
/// Checked: the list and the stream document their 410 with the `first_id` body and their 503,
/// and the list and health schemas have `first_id`.
#[tokio::test]
async fn the_openapi_document_names_the_410_and_first_id() {
    let node = MemoryNode::new();
    let (status, doc) = json_of(send(&node, &limits(None), get("/openapi.json")).await).await;
    assert_eq!(status, StatusCode::OK);
    for path in ["/api/messages", "/api/messages/stream"] {
        let responses = &doc["paths"][path]["get"]["responses"];
        let gone = &responses["410"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(gone, "#/components/schemas/GoneBody", "{path}: {responses}");
        assert!(responses["503"].is_object(), "{path}: {responses}");
    }
    for schema in ["GoneBody", "MessagesBody", "Health"] {
        let properties = &doc["components"]["schemas"][schema]["properties"];
        assert!(properties["first_id"].is_object(), "{schema}: {properties}");
    }
}

/// The gRPC client of `replog.v1.Log` over the node's router, in process.
fn grpc_client(node: &Arc<MemoryNode>) -> replog_proto::v1::log_client::LogClient<axum::Router> {
    replog_proto::v1::log_client::LogClient::new(app(node, &limits(None)))
}

/// Injected: the same log (ids 1..=10, first retained 5); gRPC `List` and `Watch` from 3,
/// `List` from 0 (the default), `Health`.
/// Checked: below 5 is `OUT_OF_RANGE` naming the first retained id, at the call; from 0 lists
/// 5..=10 and `first_id` 5; `Watch` from 0 sends 5 first; health says 5.
#[tokio::test]
async fn grpc_below_the_first_retained_id_is_out_of_range() {
    use replog_proto::v1::{HealthRequest, ListRequest, WatchRequest};
    let node = retained(10, 5);
    let mut client = grpc_client(&node);
    let refused = client
        .list(ListRequest {
            from_id: 3,
            limit: 0,
        })
        .await
        .expect_err("a List below the first retained id");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains("first retained id is 5"),
        "{refused:?}"
    );
    let refused = client
        .watch(WatchRequest { from_id: 3 })
        .await
        .expect_err("a Watch below the first retained id");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");

    let reply = client
        .list(ListRequest::default())
        .await
        .expect("a List from the first retained id")
        .into_inner();
    assert_eq!(reply.first_id, 5);
    let listed: Vec<u64> = reply.entries.iter().map(|e| e.id).collect();
    assert_eq!(listed, (5..=10).collect::<Vec<_>>());

    let mut watch = client
        .watch(WatchRequest::default())
        .await
        .expect("a Watch from the first retained id")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("an entry within 5 s")
        .expect("the stream goes on")
        .map(|entry| entry.id);
    assert_eq!(first, Some(5));

    let health = client
        .health(HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(health.first_id, 5);
}
