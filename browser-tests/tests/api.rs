//! The public service `replog.v1.Log` against real nodes: native gRPC (tonic) and gRPC-Web
//! (framed by hand over HTTP/1.1, as a browser sends it), straight to the nodes and through
//! nginx.

use browser_tests::{grpc_web_call, grpc_web_send, nginx_tools, Nginx};
use bytes::BytesMut;
use cluster_tests::{wait_for, wait_until, Cluster, SecondaryOpts, REPLICATION_FAILED};
use prost::Message;
use replog_proto::framing::Decoder;
use replog_proto::v1::log_client::LogClient;
use replog_proto::v1::{
    AppendReply, AppendRequest, HealthReply, HealthRequest, ListReply, ListRequest, LogEntry,
    WatchRequest,
};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(10);

async fn client(node: &cluster_tests::Node) -> LogClient<Channel> {
    LogClient::connect(node.url(""))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", node.name))
}

fn append(message: &str, w: Option<u32>) -> AppendRequest {
    AppendRequest {
        message: message.to_owned(),
        w,
        key: None,
    }
}

/// `(id, message)` pairs of a node's `List` from id 1.
async fn list(client: &mut LogClient<Channel>) -> Vec<(u64, String)> {
    client
        .list(ListRequest {
            from_id: 1,
            limit: 0,
        })
        .await
        .expect("List")
        .into_inner()
        .entries
        .into_iter()
        .map(|e| (e.id, e.message))
        .collect()
}

#[tokio::test]
async fn grpc_append_via_master_and_secondary_list_and_watch() {
    let stack = Cluster::start(vec![SecondaryOpts::new(); 2], &[]).await;
    let mut master = client(&stack.master).await;
    let mut secondary_1 = client(&stack.secondaries[0]).await;
    let mut secondary_2 = client(&stack.secondaries[1]).await;

    // Watch before anything is appended: everything arrives as it becomes visible.
    let mut watch = secondary_2
        .watch(WatchRequest { from_id: 1 })
        .await
        .expect("Watch")
        .into_inner();

    let first = master
        .append(append("via master", None))
        .await
        .expect("Append via the master")
        .into_inner();
    assert_eq!(first.id, 1);
    assert_eq!(first.message, "via master");
    let second = secondary_1
        .append(append("via secondary-1", Some(3)))
        .await
        .expect("Append via secondary-1 (forwarded to the master)")
        .into_inner();
    assert_eq!(second.id, 2);

    let expected = vec![
        (1, "via master".to_owned()),
        (2, "via secondary-1".to_owned()),
    ];
    for (name, client) in [
        ("master", &mut master),
        ("secondary-1", &mut secondary_1),
        ("secondary-2", &mut secondary_2),
    ] {
        // w=3 (the default) answered only when all three hold it, and the secondaries learn
        // the commit within about a round trip.
        let mut shown = Vec::new();
        for _ in 0..500 {
            shown = list(client).await;
            if shown == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(shown, expected, "List on {name}");
    }

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let entry = tokio::time::timeout(DEADLINE, watch.message())
            .await
            .expect("Watch delivers within the deadline")
            .expect("Watch stays open")
            .expect("Watch is not closed");
        seen.push((entry.id, entry.message));
    }
    assert_eq!(seen, expected, "Watch on secondary-2");

    // A later entry arrives on the open stream.
    master
        .append(append("later", Some(1)))
        .await
        .expect("Append w=1");
    let entry = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("Watch delivers the later entry")
        .expect("Watch stays open")
        .expect("Watch is not closed");
    assert_eq!((entry.id, entry.message.as_str()), (3, "later"));

    // List paging: from_id and limit.
    let page = master
        .list(ListRequest {
            from_id: 2,
            limit: 1,
        })
        .await
        .expect("List page")
        .into_inner()
        .entries;
    assert_eq!(
        page,
        vec![LogEntry {
            id: 2,
            message: "via secondary-1".into()
        }]
    );

    let health = master
        .health(HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(health.role, "master");
    assert!(health.quorum && !health.read_only, "{health:?}");
    assert_eq!(health.secondaries.len(), 2);
    let health = secondary_1
        .health(HealthRequest {})
        .await
        .expect("Health")
        .into_inner();
    assert_eq!(health.role, "secondary");
}

#[tokio::test]
async fn grpc_bad_write_concern_is_invalid_argument_on_every_node() {
    let stack = Cluster::start(vec![SecondaryOpts::new(); 2], &[]).await;
    for node in stack.nodes() {
        let mut client = client(node).await;
        for w in [0, 9] {
            let status = client
                .append(append("bad w", Some(w)))
                .await
                .expect_err("w out of range is refused");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "w={w} via {}: {status:?}",
                node.name
            );
            assert!(
                status.message().contains('w'),
                "the message names w: {:?}",
                status.message()
            );
        }
    }
    // Nothing was appended.
    assert!(list(&mut client(&stack.master).await).await.is_empty());
}

#[tokio::test]
async fn grpc_no_quorum_is_unavailable() {
    let mut stack = Cluster::start(
        vec![SecondaryOpts::new(); 2],
        &[
            ("HEARTBEAT_INTERVAL_MS", "100"),
            ("SUSPECT_AFTER_MS", "300"),
            ("UNHEALTHY_AFTER_MS", "800"),
        ],
    )
    .await;
    let mut master = client(&stack.master).await;
    for secondary in &mut stack.secondaries {
        secondary.kill();
    }
    let health: HealthReply = wait_for(
        Duration::from_secs(15),
        "the master loses its quorum",
        || {
            let mut master = master.clone();
            async move {
                let health = master.health(HealthRequest {}).await.ok()?.into_inner();
                (!health.quorum).then_some(health)
            }
        },
    )
    .await;
    assert!(health.read_only, "no quorum means read-only: {health:?}");
    assert!(!health.read_only_reason.is_empty());

    let status = master
        .append(append("no quorum", Some(1)))
        .await
        .expect_err("no quorum refuses appends");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().is_empty());
}

#[tokio::test]
async fn grpc_replication_timeout_is_aborted_via_master_and_secondary() {
    let stack = Cluster::start(
        vec![
            SecondaryOpts::new().env("DELAY_SECONDS", "3"),
            SecondaryOpts::new(),
        ],
        &[("REPLICATION_TIMEOUT_SECONDS", "1")],
    )
    .await;
    let mut master = client(&stack.master).await;
    let status = master
        .append(append("too slow", Some(3)))
        .await
        .expect_err("w=3 with a slow secondary times out");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), REPLICATION_FAILED);

    // Forwarded by a secondary, the master's verdict keeps its code.
    let mut secondary_2 = client(&stack.secondaries[1]).await;
    let status = secondary_2
        .append(append("too slow again", Some(3)))
        .await
        .expect_err("forwarded w=3 times out too");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), REPLICATION_FAILED);

    // w=2 does not wait for the slow one.
    let reply = master
        .append(append("fast enough", Some(2)))
        .await
        .expect("w=2 commits with the fast secondary");
    assert_eq!(reply.into_inner().id, 3, "ids 1 and 2 became tombstones");
}

/// gRPC-Web to one base URL: Append, List, Health, a bad w, and a Watch that receives an
/// entry appended after it opened.
async fn grpc_web_round_trip(http: &reqwest::Client, append_base: &str, watch_base: &str) {
    let before = grpc_web_call(
        http,
        watch_base,
        "List",
        &ListRequest {
            from_id: 1,
            limit: 0,
        },
    )
    .await;
    assert_eq!(before.grpc_status, 0, "{before:?}");
    let known = ListReply::decode(before.messages[0].clone())
        .expect("ListReply")
        .entries
        .last()
        .map_or(0, |e| e.id);

    // Open the Watch stream first; read it as the chunks come.
    let mut watch = grpc_web_send(
        http,
        watch_base,
        "Watch",
        &WatchRequest { from_id: known + 1 },
    )
    .await;
    assert_eq!(watch.status().as_u16(), 200);
    assert!(
        watch.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web"),
        "{:?}",
        watch.headers()
    );

    let message = format!("grpc-web via {append_base}");
    let reply = grpc_web_call(http, append_base, "Append", &append(&message, Some(3))).await;
    assert_eq!(reply.http_status, 200);
    assert_eq!(reply.grpc_status, 0, "Append: {}", reply.grpc_message);
    let appended = AppendReply::decode(reply.messages[0].clone()).expect("AppendReply");
    assert_eq!(appended.message, message);
    assert!(appended.id > known);

    let mut buffer = BytesMut::new();
    let entry = tokio::time::timeout(DEADLINE, async {
        loop {
            let chunk = watch
                .chunk()
                .await
                .expect("the Watch stream reads")
                .expect("the Watch stream stays open");
            buffer.extend_from_slice(&chunk);
            while let Some(entry) = Decoder::grpc_web()
                .next_message::<LogEntry>(&mut buffer)
                .expect("a LogEntry frame, not trailers")
            {
                if entry.id == appended.id {
                    return entry;
                }
            }
        }
    })
    .await
    .expect("the appended entry arrives on the gRPC-Web Watch");
    assert_eq!(entry.message, message);
    drop(watch);

    let listed = grpc_web_call(
        http,
        watch_base,
        "List",
        &ListRequest {
            from_id: appended.id,
            limit: 0,
        },
    )
    .await;
    let entries = ListReply::decode(listed.messages[0].clone())
        .unwrap()
        .entries;
    assert_eq!(entries.first().map(|e| e.id), Some(appended.id));

    let health = grpc_web_call(http, append_base, "Health", &HealthRequest {}).await;
    assert_eq!(health.grpc_status, 0);
    HealthReply::decode(health.messages[0].clone()).expect("HealthReply");

    let bad = grpc_web_call(http, append_base, "Append", &append("bad", Some(9))).await;
    assert_eq!(
        bad.http_status, 200,
        "gRPC-Web errors travel in grpc-status"
    );
    assert_eq!(bad.grpc_status, Code::InvalidArgument as i32, "{bad:?}");
    assert!(bad.grpc_message.contains('w'), "{bad:?}");
}

#[tokio::test]
async fn grpc_web_round_trips_direct_and_through_nginx() {
    let stack = Cluster::start(vec![SecondaryOpts::new(); 2], &[]).await;
    let http = stack.client.clone();
    let master = stack.master.url("");
    let secondary_1 = stack.secondaries[0].url("");
    let secondary_2 = stack.secondaries[1].url("");
    grpc_web_round_trip(&http, &master, &secondary_2).await;
    grpc_web_round_trip(&http, &secondary_1, &master).await;

    let Some(tools) = nginx_tools() else {
        return;
    };
    let nginx = Nginx::start(&tools, &stack, &stack.dir).await;
    grpc_web_round_trip(
        &http,
        &nginx.url("/node/master"),
        &nginx.url("/node/secondary-1"),
    )
    .await;
    grpc_web_round_trip(
        &http,
        &nginx.url("/node/secondary-2"),
        &nginx.url("/node/master"),
    )
    .await;

    // The JSON API through nginx: /api/ is the master, /node/<name>/api/ each node.
    let posted: serde_json::Value = http
        .post(nginx.url("/api/messages"))
        .header("content-type", "application/json")
        .body(r#"{"message":"json through nginx"}"#)
        .send()
        .await
        .expect("POST /api/messages through nginx")
        .json()
        .await
        .expect("JSON");
    let id = posted["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("an id in {posted}"));
    for path in [
        "/api/messages",
        "/node/secondary-1/api/messages",
        "/node/secondary-2/api/messages",
    ] {
        let url = nginx.url(path);
        wait_until(DEADLINE, format!("GET {url} shows #{id}"), || {
            let request = http.get(&url).send();
            async move {
                let Ok(response) = request.await else {
                    return false;
                };
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                body["messages"].as_array().is_some_and(|m| {
                    m.iter()
                        .any(|m| m["id"] == id && m["message"] == "json through nginx")
                })
            }
        })
        .await;
    }
    let health = http
        .get(nginx.url("/node/secondary-2/health"))
        .send()
        .await
        .expect("GET /node/secondary-2/health");
    assert!(health.status().is_success());
}
