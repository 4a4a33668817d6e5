//! CORS on the public port (node/src/api/cors.rs): by default no cross-origin access at all;
//! with `CORS_ORIGINS`, what a browser on a listed origin needs, and no allowed origin for
//! anyone else.

use cluster_tests::{
    free_ports, run_to_exit, Binary, Cluster, MasterOpts, Node, SecondaryOpts, StatusCode,
    FAST_HEALTH,
};
use reqwest::header::HeaderMap;
use reqwest::Method;
use std::time::Duration;

const ORIGIN: &str = "http://page.example:8080";

const CORS_HEADERS: [&str; 5] = [
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-allow-credentials",
];

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Asserts that header `name` is there and its value contains `part`.
fn assert_lists(headers: &HeaderMap, name: &str, part: &str) {
    assert!(
        header(headers, name).is_some_and(|v| v.contains(part)),
        "{name} should list {part}: {headers:?}"
    );
}

/// Asserts that no CORS header grants anything.
fn assert_no_cors(headers: &HeaderMap, what: &str) {
    for name in CORS_HEADERS {
        assert_eq!(header(headers, name), None, "{what}: {name} in {headers:?}");
    }
}

/// An append on `node`, with `Origin: origin` if any.
async fn post(cluster: &Cluster, node: &Node, origin: Option<&str>) -> reqwest::Response {
    let mut request = cluster
        .client
        .post(node.url("/api/messages"))
        .header("content-type", "application/json")
        .body(r#"{"message": "hello"}"#);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.expect("POST /api/messages")
}

/// A preflight for an append from `origin`.
async fn preflight(cluster: &Cluster, node: &Node, origin: &str) -> reqwest::Response {
    cluster
        .client
        .request(Method::OPTIONS, node.url("/api/messages"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight")
}

/// Injected: no CORS_ORIGINS; appends, lists and preflights from another origin and from
/// `null`, on the master and a secondary.
/// Checked: no answer carries a CORS header that would let a page read it or send a JSON
/// append (so a browser blocks them); same-origin clients (no `Origin`) work as always.
#[tokio::test]
async fn by_default_no_origin_gets_cross_origin_access() {
    let cluster = Cluster::start(vec![SecondaryOpts::new()], &FAST_HEALTH).await;
    for node in [&cluster.master, &cluster.secondaries[0]] {
        for origin in [ORIGIN, "null"] {
            let answer = preflight(&cluster, node, origin).await;
            assert_no_cors(
                answer.headers(),
                &format!("{}: preflight from {origin}", node.name),
            );
            let answer = cluster
                .client
                .get(node.url("/api/messages"))
                .header("origin", origin)
                .send()
                .await
                .expect("GET");
            assert_eq!(answer.status(), StatusCode::OK);
            assert_no_cors(
                answer.headers(),
                &format!("{}: GET from {origin}", node.name),
            );
        }
        let answer = post(&cluster, node, None).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_no_cors(answer.headers(), &format!("{}: POST", node.name));
    }
}

/// Injected: CORS_ORIGINS listing one origin on the master and a secondary; appends with that
/// origin, another one, `null` and none, a list without `Origin`, and preflights.
/// Checked: the listed origin is mirrored, with gRPC's status headers exposed and the allowed
/// methods and headers in the preflight; other origins and `null` get no
/// `Access-Control-Allow-Origin`; a `POST` without `Origin` gets none either (and is appended as
/// usual); a `GET` without it still says it varies with `Origin`, since it may be cached.
#[tokio::test]
async fn listed_origins_get_cors_headers_and_others_do_not() {
    let origins = format!("{ORIGIN}, http://other.example");
    let cluster = Cluster::start_with(
        vec![SecondaryOpts::new().env("CORS_ORIGINS", &origins)],
        MasterOpts::new()
            .envs(&FAST_HEALTH)
            .env("CORS_ORIGINS", &origins),
    )
    .await;
    for node in [&cluster.master, &cluster.secondaries[0]] {
        let answer = post(&cluster, node, Some(ORIGIN)).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let headers = answer.headers();
        assert_eq!(header(headers, "access-control-allow-origin"), Some(ORIGIN));
        assert_lists(headers, "vary", "origin");
        assert_lists(headers, "access-control-expose-headers", "grpc-status");

        // Without `Access-Control-Allow-Origin` naming it, a browser grants a page nothing,
        // whatever else the answer says.
        for stranger in ["http://evil.example", "null", "http://page.example:8081"] {
            let answer = post(&cluster, node, Some(stranger)).await;
            let headers = answer.headers();
            assert_eq!(
                header(headers, "access-control-allow-origin"),
                None,
                "{}: POST from {stranger}: {headers:?}",
                node.name
            );
            let answer = preflight(&cluster, node, stranger).await;
            let headers = answer.headers();
            assert_eq!(
                header(headers, "access-control-allow-origin"),
                None,
                "{}: preflight from {stranger}: {headers:?}",
                node.name
            );
        }

        let answer = post(&cluster, node, None).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let headers = answer.headers().clone();
        // tower-http's layer adds `Vary` and `Access-Control-Expose-Headers` to every answer;
        // without `Access-Control-Allow-Origin` they grant nothing.
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            None,
            "{}: POST without Origin: {headers:?}",
            node.name
        );
        let body: serde_json::Value = answer.json().await.expect("a JSON answer");
        assert_eq!(body["status"], "success", "{body}");

        let answer = cluster
            .client
            .get(node.url("/api/messages"))
            .send()
            .await
            .expect("GET");
        assert_eq!(answer.status(), StatusCode::OK);
        assert_lists(answer.headers(), "vary", "origin");

        let answer = preflight(&cluster, node, ORIGIN).await;
        assert!(answer.status().is_success(), "{}", answer.status());
        let headers = answer.headers();
        assert_eq!(header(headers, "access-control-allow-origin"), Some(ORIGIN));
        assert_lists(headers, "access-control-allow-methods", "POST");
        assert_lists(headers, "access-control-allow-headers", "content-type");
    }
}

/// Injected: CORS_ORIGINS=* on the master.
/// Checked: any origin may read the answers (`access-control-allow-origin: *`).
#[tokio::test]
async fn a_star_allows_every_origin() {
    let cluster = Cluster::start(vec![], &[("CORS_ORIGINS", "*")]).await;
    let answer = post(&cluster, &cluster.master, Some("http://anyone.example")).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        header(answer.headers(), "access-control-allow-origin"),
        Some("*")
    );
}

/// Injected: CORS_ORIGINS values that are not exact origins (`null`, a path, a star among
/// origins, a bare host, an empty entry).
/// Checked: the node stops at start with one line naming CORS_ORIGINS.
#[test]
fn bad_cors_origins_stop_the_node_at_start() {
    let port = free_ports(1)[0].to_string();
    for value in [
        "null",
        "http://page.example/app",
        "*,http://page.example",
        "page.example",
        "http://page.example,",
    ] {
        let env = [
            ("HOST", "127.0.0.1"),
            ("HTTP_PORT", port.as_str()),
            ("CORS_ORIGINS", value),
        ];
        let output = run_to_exit(Binary::Master, &env, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            !output.status.success() && lines.len() == 1 && lines[0].contains("CORS_ORIGINS"),
            "CORS_ORIGINS={value}: {}, stderr {stderr:?}",
            output.status
        );
    }
}
