//! Invalid appends: each gets a 4xx with a JSON error naming the problem, and no node's log
//! changes (no message, and no id consumed).

use cluster_tests::{Cluster, SecondaryOpts, StatusCode, FAST_HEALTH};
use std::time::Duration;

#[tokio::test]
async fn invalid_appends_get_4xx_and_leave_every_log_unchanged() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &FAST_HEALTH,
    )
    .await;
    let (status, body) = cluster.append("valid", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    cluster
        .wait_all_show(Duration::from_secs(2), &["valid"])
        .await;

    const JSON: Option<&str> = Some("application/json");
    // (what, body, content type, a word the detail must contain)
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        ("w = 0", r#"{"message": "x", "w": 0}"#, JSON, "w"),
        ("w above n+1", r#"{"message": "x", "w": 4}"#, JSON, "w"),
        ("w negative", r#"{"message": "x", "w": -1}"#, JSON, "w"),
        ("w = 2.5", r#"{"message": "x", "w": 2.5}"#, JSON, "w"),
        ("w a string", r#"{"message": "x", "w": "2"}"#, JSON, "w"),
        ("missing message", r#"{"w": 2}"#, JSON, "message"),
        ("message a number", r#"{"message": 5}"#, JSON, "message"),
        ("message null", r#"{"message": null}"#, JSON, "message"),
        ("malformed JSON", r#"{"message": "x""#, JSON, "json"),
        ("empty body", "", JSON, "json"),
        ("JSON array", r#"["x"]"#, JSON, "object"),
        (
            "wrong content type",
            r#"{"message": "x"}"#,
            Some("text/plain"),
            "content-type",
        ),
        (
            "no content type",
            r#"{"message": "x"}"#,
            None,
            "content-type",
        ),
    ];
    let mut failures = Vec::new();
    for (what, body, content_type, word) in cases {
        let (status, answer) = cluster.append_raw(body, *content_type).await;
        let detail = answer["detail"].as_str().unwrap_or_default();
        let ok = status.is_client_error()
            && answer["status"] == "error"
            && detail.to_lowercase().contains(word);
        if !ok {
            failures.push(format!(
                "{what}: sent {body:?} ({content_type:?}), got {status} {answer} \
                 (want 4xx, \"status\":\"error\", a detail naming {word:?})"
            ));
        }
    }

    // Nothing changed on any node, and no id was consumed by the rejected requests.
    for (node, list) in cluster.all_messages().await {
        if list != [(1, "valid".to_owned())] {
            failures.push(format!("{node} shows {list:?} after the invalid appends"));
        }
    }
    let health = cluster.health(&cluster.master).await;
    if health["last_id"] != 1 {
        failures.push(format!(
            "master last_id after the invalid appends: {health}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let (status, body) = cluster.append("valid-2", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 2, "{body}");
    cluster
        .wait_all_show(Duration::from_secs(2), &["valid", "valid-2"])
        .await;
}
