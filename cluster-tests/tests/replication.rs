//! Blocking replication and its failure modes: a POST answers only once every secondary holds
//! the message; a secondary that is gone, hung or too slow makes it fail with the exact 500, and
//! the aborted message is never shown by any node, then or later.

use cluster_tests::{
    steady_health, wait_until, Cluster, SecondaryOpts, StatusCode, REPLICATION_FAILED,
    STEADY_HEALTH,
};
use serde_json::json;
use std::time::{Duration, Instant};

fn texts(list: &[(u64, String)]) -> Vec<&str> {
    list.iter().map(|(_, m)| m.as_str()).collect()
}

/// Waits until every running node shows exactly `expected` as `(id, text)`, failing at once if
/// any node ever shows `never`.
async fn wait_exactly(cluster: &Cluster, timeout: Duration, expected: &[(u64, &str)], never: &str) {
    wait_until(
        timeout,
        format!("every node shows exactly {expected:?}"),
        || async {
            let all = cluster.all_messages().await;
            for (node, list) in &all {
                assert!(
                    !texts(list).contains(&never),
                    "{node} shows the aborted message {never:?}: {list:?}"
                );
            }
            all.iter().all(|(_, list)| {
                list.iter()
                    .map(|(id, m)| (*id, m.as_str()))
                    .eq(expected.iter().copied())
            })
        },
    )
    .await;
}

#[tokio::test]
async fn post_returns_only_after_every_secondary_holds_it() {
    let cluster = Cluster::start_in_process(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &STEADY_HEALTH,
    )
    .await;

    for i in 1..=5u64 {
        let text = format!("msg-{i}");
        let (status, body) = cluster.append(&text, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({"status": "success", "id": i, "message": text}));
        // Right after the answer, not eventually: the default w is every node.
        for secondary in &cluster.secondaries {
            let held = cluster.held(secondary).await;
            assert!(
                held >= i,
                "{} holds up to {held} right after the 200 for id {i}",
                secondary.name
            );
        }
        let on_master = cluster.messages(&cluster.master).await;
        assert_eq!(on_master.last(), Some(&(i, text.clone())), "master list");
        // Visibility on a secondary follows within about one round trip.
        for secondary in &cluster.secondaries {
            wait_until(
                Duration::from_secs(1),
                format!("{} lists id {i}", secondary.name),
                || async { cluster.messages(secondary).await.last() == Some(&(i, text.clone())) },
            )
            .await;
        }
    }
}

#[tokio::test]
async fn slow_secondary_makes_the_post_wait() {
    let cluster = Cluster::start(
        vec![
            SecondaryOpts::new(),
            SecondaryOpts::new().env("DELAY_SECONDS", "1"),
        ],
        &steady_health(&[("REPLICATION_TIMEOUT_SECONDS", "10")]),
    )
    .await;
    let slow = &cluster.secondaries[1];

    let started = Instant::now();
    let (status, body) = cluster.append("waits", None).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took >= Duration::from_secs(1),
        "w=3 answered after {took:?}, before the slow secondary's 1 s delay"
    );
    assert!(cluster.held(slow).await >= 1, "the slow secondary holds it");

    // w=2 needs the master and one secondary: the fast one suffices.
    let started = Instant::now();
    let (status, body) = cluster.append("fast", Some(2)).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took < Duration::from_millis(900),
        "w=2 took {took:?}: it waited for the slow secondary"
    );
    cluster
        .wait_all_show(Duration::from_secs(5), &["waits", "fast"])
        .await;
}

#[tokio::test]
async fn killed_secondary_aborts_with_500_and_ids_continue() {
    let mut cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &steady_health(&[("REPLICATION_TIMEOUT_SECONDS", "1")]),
    )
    .await;
    let (status, body) = cluster.append("before", None).await;
    assert_eq!((status, &body["id"]), (StatusCode::OK, &json!(1)), "{body}");

    cluster.secondaries[1].kill();
    let started = Instant::now();
    let (status, body) = cluster.append("lost", None).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        body,
        json!({"status": "error", "detail": REPLICATION_FAILED})
    );
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "the abort came after {took:?}, not after the 1 s timeout"
    );

    let (status, body) = cluster.append("after", Some(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 3, "ids continue after the tombstone 2: {body}");
    wait_exactly(
        &cluster,
        Duration::from_secs(2),
        &[(1, "before"), (3, "after")],
        "lost",
    )
    .await;

    // The killed secondary comes back empty and is caught up: the tombstone stays a tombstone.
    cluster.secondaries[1].restart();
    cluster.wait_ready().await;
    wait_exactly(
        &cluster,
        Duration::from_secs(5),
        &[(1, "before"), (3, "after")],
        "lost",
    )
    .await;
    let health = cluster.health(&cluster.master).await;
    assert_eq!(health["last_id"], 3, "{health}");
}

#[tokio::test]
async fn hung_secondary_aborts_and_the_message_never_shows_after_it_resumes() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &steady_health(&[("REPLICATION_TIMEOUT_SECONDS", "1")]),
    )
    .await;
    let hung = &cluster.secondaries[1];
    hung.stop();
    let (status, body) = cluster.append("lost", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        body,
        json!({"status": "error", "detail": REPLICATION_FAILED})
    );

    let (status, body) = cluster.append("after", Some(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 2, "{body}");

    // Resumed, it processes what reached it while stopped, the aborted entry included.
    hung.cont();
    wait_until(
        Duration::from_secs(5),
        "the resumed secondary holds id 2",
        || async { cluster.held(hung).await >= 2 },
    )
    .await;
    wait_exactly(&cluster, Duration::from_secs(3), &[(2, "after")], "lost").await;
}

#[tokio::test]
async fn secondary_slower_than_the_timeout_aborts_and_never_shows_it() {
    let cluster = Cluster::start(
        vec![
            SecondaryOpts::new(),
            SecondaryOpts::new().env("DELAY_SECONDS", "2"),
        ],
        &steady_health(&[("REPLICATION_TIMEOUT_SECONDS", "1")]),
    )
    .await;
    let slow = &cluster.secondaries[1];

    let started = Instant::now();
    let (status, body) = cluster.append("too-slow", None).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        body,
        json!({"status": "error", "detail": REPLICATION_FAILED})
    );
    assert!(
        took < Duration::from_millis(1900),
        "the abort came after {took:?}: it waited for the slow secondary, not the 1 s timeout"
    );

    // Proof that the slow secondary finished: it now holds the aborted entry.
    wait_until(
        Duration::from_secs(5),
        "the slow secondary holds id 1",
        || async { cluster.held(slow).await >= 1 },
    )
    .await;
    for (node, list) in cluster.all_messages().await {
        assert!(
            list.is_empty(),
            "{node} shows {list:?} after the slow secondary stored the aborted entry"
        );
    }

    let (status, body) = cluster.append("later", Some(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], 2, "{body}");
    wait_exactly(
        &cluster,
        Duration::from_secs(6),
        &[(2, "later")],
        "too-slow",
    )
    .await;
}

#[tokio::test]
async fn an_append_on_a_secondary_is_forwarded_to_the_master() {
    let cluster = Cluster::start_in_process(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &STEADY_HEALTH,
    )
    .await;
    let (status, body) = cluster.append("on master", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = cluster
        .appender_on(&cluster.secondaries[1])
        .append("via secondary-2", Some(3))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "success", "id": 2, "message": "via secondary-2"})
    );
    cluster
        .wait_all_show(Duration::from_secs(2), &["on master", "via secondary-2"])
        .await;
}

/// The state of a secondary, from a `Fetch` that asks for no entries.
async fn state_of(
    client: &mut replog_proto::v1::replication_client::ReplicationClient<tonic::transport::Channel>,
) -> replog_proto::v1::ReplicaState {
    client
        .fetch(replog_proto::v1::FetchRequest::default())
        .await
        .expect("the secondary answers")
        .into_inner()
        .state
        .expect("a fetch reply carries the state")
}

/// The replication stream's quiet decision pushes, spoken to a real secondary directly.
/// Injected: a cluster of one secondary makes it adopt the master's log and commit one entry;
/// the master is stopped, and the test opens the `Stream` call itself (with the secondary's
/// own log id and master process). Checked: an entry (answered), a quiet push of the decision
/// that commits it and an answered empty request get exactly two answers, the second already
/// reporting the quiet decision taken, and the secondary lists the entry; a quiet push the
/// secondary cannot take (its `since` is past the secondary's frontier) ends the stream with
/// FAILED_PRECONDITION instead of being dropped in silence, and changes nothing.
#[tokio::test]
async fn quiet_decision_pushes_are_taken_unanswered_or_end_the_stream() {
    use futures::StreamExt;
    use replog_proto::v1::replication_client::ReplicationClient;
    use replog_proto::v1::{Decisions, Entry, ReplicateRequest};

    let mut cluster = Cluster::start(vec![SecondaryOpts::new()], &STEADY_HEALTH).await;
    let (status, body) = cluster.append("first", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until(Duration::from_secs(5), "the secondary lists it", || async {
        cluster.messages(&cluster.secondaries[0]).await.len() == 1
    })
    .await;
    cluster.master.terminate(Duration::from_secs(10));

    let endpoint = format!("http://{}", cluster.secondaries[0].grpc_endpoint());
    let mut client = ReplicationClient::connect(endpoint)
        .await
        .expect("connect to the secondary");
    let state = state_of(&mut client).await;
    assert_eq!((state.held, state.decided), (1, 1), "{state:?}");
    let request =
        |entries: Vec<Entry>, decisions: Option<Decisions>, quiet: bool| ReplicateRequest {
            log_id: state.log_id.clone(),
            master_instance: state.master_instance,
            entries,
            decisions,
            quiet,
            ..Default::default()
        };
    let decided = |decided_upto: u64, since: u64| {
        Some(Decisions {
            decided_upto,
            since,
            tombstones: Vec::new(),
        })
    };

    let second = Entry {
        id: 2,
        message: "second".into(),
        tombstone: false,
    };
    let requests = vec![
        request(vec![second], decided(1, 1), false),
        request(Vec::new(), decided(2, 1), true),
        request(Vec::new(), None, false),
    ];
    let replies: Vec<_> = client
        .stream(futures::stream::iter(requests))
        .await
        .expect("the stream opens")
        .into_inner()
        .collect()
        .await;
    let replies: Vec<_> = replies
        .into_iter()
        .map(|r| r.map(|s| (s.held, s.decided)).map_err(|e| e.code()))
        .collect();
    assert_eq!(replies, [Ok((2, 1)), Ok((2, 2))], "answers: {replies:?}");
    assert_eq!(
        cluster.messages(&cluster.secondaries[0]).await,
        [(1, "first".to_owned()), (2, "second".to_owned())]
    );

    // Kept open after the push, so that only an error can end it.
    let requests = futures::stream::iter(vec![request(Vec::new(), decided(3, 3), true)])
        .chain(futures::stream::pending());
    let mut replies = client
        .stream(requests)
        .await
        .expect("the stream opens")
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(5), replies.message())
        .await
        .expect("the stream ends within 5 s");
    let code = ended.as_ref().map_err(tonic::Status::code);
    assert_eq!(
        code.map(|_| ()),
        Err(tonic::Code::FailedPrecondition),
        "{ended:?}"
    );
    let state = state_of(&mut client).await;
    assert_eq!((state.held, state.decided), (2, 2), "{state:?}");
}

/// Decisions reach the secondaries by themselves, not with a heartbeat: with heartbeats a
/// minute apart, every committed append (through HTTP and through gRPC, one at a time, as one
/// client does) shows on both secondaries within seconds of its answer. The last append of
/// each kind has no later request to ride on, so its decision goes as a push of its own, which
/// the master sends only after the append's answer (`sender::DECISION_DEFERRALS`); the others
/// may ride on the next append's entry instead. Either way none may wait for the heartbeat.
#[tokio::test]
async fn decisions_reach_the_secondaries_without_a_heartbeat() {
    use replog_proto::v1::log_client::LogClient;
    use replog_proto::v1::AppendRequest;

    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &[
            ("HEARTBEAT_INTERVAL_MS", "60000"),
            ("SUSPECT_AFTER_MS", "120000"),
            ("UNHEALTHY_AFTER_MS", "240000"),
        ],
    )
    .await;
    let shows = |id: u64, text: String| {
        let cluster = &cluster;
        async move {
            wait_until(
                Duration::from_secs(5),
                format!("both secondaries show id {id} ({text})"),
                || async {
                    let mut all = true;
                    for secondary in &cluster.secondaries {
                        let list = cluster.messages(secondary).await;
                        all &= list.iter().any(|(i, m)| *i == id && *m == text);
                    }
                    all
                },
            )
            .await;
        }
    };

    for i in 1..=10u64 {
        let text = format!("http-{i}");
        let (status, body) = cluster.append(&text, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["id"], json!(i));
    }
    shows(10, "http-10".into()).await;

    let mut client = LogClient::connect(cluster.master.url(""))
        .await
        .expect("a gRPC connection to the master");
    for i in 11..=20u64 {
        let text = format!("grpc-{i}");
        let reply = client
            .append(AppendRequest {
                message: text.clone(),
                w: None,
                key: None,
            })
            .await
            .expect("a committed gRPC append")
            .into_inner();
        assert_eq!(reply.id, i);
        shows(i, text).await;
    }
}
