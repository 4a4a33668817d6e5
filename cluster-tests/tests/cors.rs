//! CORS on the public port: what a browser on another origin needs, and nothing on the appends
//! that no browser sent (node/src/api/cors.rs says why).

use cluster_tests::{Cluster, SecondaryOpts, StatusCode, FAST_HEALTH};
use reqwest::header::HeaderMap;
use reqwest::Method;

const ORIGIN: &str = "http://page.example:8080";

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

/// Injected: appends with and without `Origin`, a list without it, and a preflight, on the
/// master and on a secondary. Checked: with `Origin` the answer mirrors it and exposes gRPC's
/// status headers; a `POST` without it gets none of the CORS headers (and is appended as
/// usual); a `GET` without it still says it varies with `Origin`, since it may be cached; a
/// preflight answers with the allowed methods and headers.
#[tokio::test]
async fn browsers_get_cors_headers_and_other_clients_do_not_pay_for_them() {
    let cluster = Cluster::start(vec![SecondaryOpts::new()], &FAST_HEALTH).await;
    for node in [&cluster.master, &cluster.secondaries[0]] {
        let url = node.url("/api/messages");
        let post = |origin: Option<&str>| {
            let mut request = cluster
                .client
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"message": "hello"}"#);
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            request.send()
        };

        let answer = post(Some(ORIGIN)).await.expect("POST with Origin");
        assert_eq!(answer.status(), StatusCode::OK);
        let headers = answer.headers();
        assert_eq!(header(headers, "access-control-allow-origin"), Some(ORIGIN));
        assert_lists(headers, "vary", "origin");
        assert_lists(headers, "access-control-expose-headers", "grpc-status");

        let answer = post(None).await.expect("POST without Origin");
        assert_eq!(answer.status(), StatusCode::OK);
        let headers = answer.headers().clone();
        for name in [
            "access-control-allow-origin",
            "access-control-expose-headers",
            "vary",
        ] {
            assert_eq!(header(&headers, name), None, "{name}: {headers:?}");
        }
        let body: serde_json::Value = answer.json().await.expect("a JSON answer");
        assert_eq!(body["status"], "success", "{body}");

        let answer = cluster.client.get(&url).send().await.expect("GET");
        assert_eq!(answer.status(), StatusCode::OK);
        assert_lists(answer.headers(), "vary", "origin");

        let answer = cluster
            .client
            .request(Method::OPTIONS, &url)
            .header("origin", ORIGIN)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .expect("preflight");
        assert!(answer.status().is_success(), "{}", answer.status());
        let headers = answer.headers();
        assert_eq!(header(headers, "access-control-allow-origin"), Some(ORIGIN));
        assert_lists(headers, "access-control-allow-methods", "POST");
        assert_lists(headers, "access-control-allow-headers", "content-type");
    }
    cluster
        .wait_all_show(std::time::Duration::from_secs(2), &["hello"; 4])
        .await;
}
