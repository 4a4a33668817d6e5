//! A durable log far larger than what the nodes keep in memory: small segment files
//! (`SEGMENT_BYTES=4KiB`) and no payload cached (`CACHE_BYTES=0`), so nearly every read is served
//! from the segments. Lists, pages, a wiped secondary's catch-up and restarts all see the whole
//! log; a data directory of the single-file format is converted at start without losing an
//! entry; and a node with a corrupt sealed segment refuses the pages that need it, naming the
//! file, and serves the rest.

use cluster_tests::log_file::{frames, Record};
use cluster_tests::{
    try_list, try_wait_for, wait_for, Cluster, MasterOpts, SecondaryOpts, PROMPTLY,
};
use replog_node::storage::{FsyncPolicy, LogFile};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(30);

/// Tiny segments, nothing cached.
const COLD: &[(&str, &str)] = &[("CACHE_BYTES", "0"), ("SEGMENT_BYTES", "4KiB")];

fn cold_secondary() -> SecondaryOpts {
    COLD.iter()
        .fold(SecondaryOpts::new().durable(), |opts, (k, v)| {
            opts.env(k, v)
        })
}

/// Waits until every node lists exactly `expected`, ids included.
async fn converged(cluster: &Cluster, expected: &[(u64, String)]) {
    wait_for(CONVERGE, "every node lists the whole log", || async {
        for node in cluster.nodes() {
            if try_list(&cluster.client, &node.url("")).await? != expected {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// The segment files (`<first id>.log`) of a node's `DATA_DIR`, in id order.
fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("segments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

fn segments(cluster: &Cluster) -> usize {
    segment_files(&cluster.master.data_dir().expect("durable")).len()
}

/// The first id of a segment, from its file name.
fn first_id(segment: &Path) -> u64 {
    segment
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a segment name: {}", segment.display()))
}

fn page_ids(page: &serde_json::Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no `messages` in {page}"))
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect()
}

/// A cold cluster holding 400 messages appended with w=3, and what every node must list.
async fn cold_cluster_of_400() -> (Cluster, Vec<(u64, String)>) {
    let cluster = Cluster::start_with(
        vec![cold_secondary(), cold_secondary()],
        MasterOpts::new().durable().envs(COLD),
    )
    .await;
    let mut expected = Vec::new();
    for n in 0..400 {
        let text = format!("message {n} {}", "x".repeat(n % 40));
        let (status, body) = cluster.append(&text, Some(3)).await;
        assert_eq!(status, 200, "{body}");
        expected.push((body["id"].as_u64().expect("an id"), text));
    }
    (cluster, expected)
}

#[tokio::test]
async fn a_log_far_beyond_the_cache_is_listed_caught_up_and_recovered_from_its_segments() {
    let (mut cluster, expected) = cold_cluster_of_400().await;
    assert!(
        segments(&cluster) > 4,
        "many segments: {}",
        segments(&cluster)
    );
    converged(&cluster, &expected).await;
    // A page from the middle, read back from the files on every node.
    for node in cluster.nodes() {
        let url = node.url("/api/messages?from_id=200&limit=5");
        let page: serde_json::Value = cluster
            .client
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let ids: Vec<u64> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["id"].as_u64())
            .collect();
        assert_eq!(ids, [200, 201, 202, 203, 204], "{}", node.name);
    }
    // A secondary that lost its disk is caught up from the master's segments.
    cluster.secondaries[0].restart_empty();
    converged(&cluster, &expected).await;
    // Every node restarted at once: each reads its last segment, and serves the rest from
    // the files.
    cluster.master.kill();
    for secondary in &mut cluster.secondaries {
        secondary.restart();
    }
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    converged(&cluster, &expected).await;
    let (status, body) = cluster.append("after", Some(3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"].as_u64(), Some(expected.len() as u64 + 1));
}

#[tokio::test]
async fn a_data_directory_of_the_single_file_format_is_converted_without_losing_an_entry() {
    let mut cluster = Cluster::start_with(
        vec![
            SecondaryOpts::new().durable(),
            SecondaryOpts::new().durable(),
        ],
        MasterOpts::new().durable(),
    )
    .await;
    let health = cluster.health(&cluster.master).await;
    let log_id = health["log_id"].as_str().expect("a log id").to_owned();
    // Every node stopped; each data directory replaced by a log.bin of the earlier format
    // holding the same 30 entries, the 7th aborted, all decided.
    cluster.master.kill();
    for secondary in &mut cluster.secondaries {
        secondary.kill();
    }
    let nodes: Vec<_> = cluster
        .nodes()
        .map(|n| n.data_dir().expect("durable"))
        .collect();
    for dir in &nodes {
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let (mut file, _) =
            LogFile::open(dir, FsyncPolicy::Always, || log_id.clone()).expect("a log.bin");
        let mut records: Vec<Record> = (1..=30)
            .map(|id| Record::Entry {
                id,
                message: format!("old {id}").into(),
                tombstone: id == 7,
            })
            .collect();
        records.push(Record::Decided { upto: 30 });
        file.append(&records).expect("written");
        file.mark_complete().expect("complete");
    }
    for secondary in &mut cluster.secondaries {
        secondary.start();
    }
    cluster.master.start();
    cluster.renew_client();
    cluster.wait_ready().await;
    let expected: Vec<(u64, String)> = (1..=30)
        .filter(|&id| id != 7)
        .map(|id| (id, format!("old {id}")))
        .collect();
    converged(&cluster, &expected).await;
    for (node, dir) in cluster.nodes().zip(&nodes) {
        assert!(dir.join("segments").is_dir(), "{}", node.name);
        assert!(dir.join("log.bin.converted").is_file(), "{}", node.name);
        assert!(!dir.join("log.bin").exists(), "{}", node.name);
        assert_eq!(
            node.log_since_start()
                .matches("converted the single-file log")
                .count(),
            1,
            "{} says so once",
            node.name
        );
    }
    let (status, body) = cluster.append("new", Some(3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"].as_u64(), Some(31));
}

#[tokio::test]
async fn a_corrupt_sealed_segment_is_refused_by_name_and_the_rest_of_the_log_is_served() {
    let (mut cluster, expected) = cold_cluster_of_400().await;
    converged(&cluster, &expected).await;

    // One secondary stopped; a byte flipped in the payload of an entry in the middle of one of
    // its sealed segments, so that entry's checksum fails. The segment's index still matches
    // it.
    cluster.secondaries[0].terminate(PROMPTLY);
    let files = segment_files(&cluster.secondaries[0].data_dir().expect("durable"));
    assert!(files.len() >= 4, "many segments: {files:?}");
    let victim = files[files.len() / 2].clone();
    let next_first = first_id(&files[files.len() / 2 + 1]);
    let mut bytes = std::fs::read(&victim).unwrap_or_else(|e| panic!("{}: {e}", victim.display()));
    let entries: Vec<_> = frames(&bytes)
        .into_iter()
        .filter_map(|f| match f.record {
            Record::Entry { id, .. } => Some((id, f)),
            _ => None,
        })
        .collect();
    assert!(entries.len() >= 6, "{}: {entries:?}", victim.display());
    let (damaged_id, frame) = &entries[entries.len() / 2];
    let damaged_id = *damaged_id;
    assert!(frame.offset > 0 && damaged_id < next_first);
    bytes[frame.end() - 1] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap_or_else(|e| panic!("{}: {e}", victim.display()));
    let victim_name = victim
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a file name")
        .to_owned();

    cluster.secondaries[0].start();
    cluster.renew_client();
    cluster.wait_ready().await;
    let damaged = &cluster.secondaries[0];
    let (status, _) = cluster.get_json(&damaged.url("/health")).await;
    assert_eq!(status, 200, "{} serves", damaged.name);

    // A page that needs the damaged entry: refused, naming the file, never a short list.
    let url = damaged.url(&format!("/api/messages?from_id={damaged_id}&limit=5"));
    let (status, body) = cluster.get_json(&url).await;
    assert_eq!(status, 503, "GET {url}: {body}");
    assert!(body.get("messages").is_none(), "GET {url}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&victim_name) && detail.contains(&damaged_id.to_string()),
        "GET {url}: the detail names {victim_name} and id {damaged_id}: {body}"
    );
    // So does the whole list, which crosses the damage.
    let (status, body) = cluster.get_json(&damaged.url("/api/messages")).await;
    assert_eq!(status, 503, "GET /api/messages: {body}");

    // The intact segment after it, and the last one, serve.
    let url = damaged.url(&format!("/api/messages?from_id={next_first}&limit=5"));
    let (status, body) = cluster.get_json(&url).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    let want: Vec<u64> = (next_first..next_first + 5).collect();
    assert_eq!(page_ids(&body), want, "GET {url}");
    let url = damaged.url("/api/messages?from_id=398&limit=5");
    let (status, body) = cluster.get_json(&url).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    assert_eq!(page_ids(&body), [398, 399, 400], "GET {url}");

    // The master and the other secondary still list the whole log.
    for node in [&cluster.master, &cluster.secondaries[1]] {
        assert_eq!(
            try_list(&cluster.client, &node.url("")).await.as_deref(),
            Some(&expected[..]),
            "{} lists the whole log",
            node.name
        );
    }
    // The damaged node still takes new entries: its active segment is whole.
    let (status, body) = cluster.append("after", Some(3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"].as_u64(), Some(401));

    // The node's own log names the damaged segment, so that an operator learns of it: the
    // index matched, so start-up did not read the segment, and the read that reached the
    // damage is where the node finds out. Asserted at the end, after the start-up report below.
    let named_after_the_read = try_wait_for(
        Duration::from_secs(5),
        format!("{}'s log names {victim_name}", cluster.secondaries[0].name),
        || async {
            let log = cluster.secondaries[0].log_since_start();
            Ok::<_, std::convert::Infallible>(log.contains(&victim_name).then_some(()))
        },
    )
    .await;

    // Without its index the segment is read at start to rebuild it: the start-up reports the
    // ids it cannot read, naming the file, and reads still refuse them.
    cluster.secondaries[0].terminate(PROMPTLY);
    let index = victim.with_extension("idx");
    std::fs::remove_file(&index).unwrap_or_else(|e| panic!("{}: {e}", index.display()));
    cluster.secondaries[0].start();
    cluster.renew_client();
    cluster.wait_ready().await;
    let damaged = &cluster.secondaries[0];
    let log = damaged.log_since_start();
    let report = log
        .lines()
        .find(|l| l.contains("ids of the log cannot be read from a damaged segment"))
        .unwrap_or_else(|| {
            panic!(
                "{} reports no damaged segment at start:\n{log}",
                damaged.name
            )
        });
    assert!(
        report.contains(&victim_name) && report.contains(&format!("from={damaged_id}")),
        "{report}"
    );
    let url = damaged.url(&format!("/api/messages?from_id={damaged_id}&limit=5"));
    let (status, body) = cluster.get_json(&url).await;
    assert_eq!(status, 503, "GET {url}: {body}");
    let url = damaged.url(&format!("/api/messages?from_id={next_first}&limit=5"));
    let (status, body) = cluster.get_json(&url).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    assert_eq!(page_ids(&body), want, "GET {url}");

    if let Err(timed_out) = named_after_the_read {
        panic!(
            "{timed_out}: a read refused for a damaged segment leaves no trace in the node's \
             log (index intact, so start-up did not read the segment either)"
        );
    }
}

/// Injected: a cold cluster of 400 messages (nothing cached), then a `Watch` (gRPC) and a live
/// tail (SSE) opened from id 100 on every node.
/// Checked: each starts with ids 100, 101, ... read back from the segment files (the Watch
/// with their texts).
#[tokio::test]
async fn watch_and_the_live_tail_from_an_id_in_a_cold_segment_read_it_from_the_files() {
    use cluster_tests::sse;
    use replog_proto::v1::log_client::LogClient;
    use replog_proto::v1::WatchRequest;

    let (cluster, expected) = cold_cluster_of_400().await;
    converged(&cluster, &expected).await;
    let from = 100u64;
    let wanted: Vec<(u64, String)> = expected
        .iter()
        .filter(|(id, _)| *id >= from)
        .take(5)
        .cloned()
        .collect();
    for node in cluster.nodes() {
        // gRPC Watch.
        let mut client = LogClient::connect(node.url(""))
            .await
            .unwrap_or_else(|e| panic!("{}: gRPC connection: {e}", node.name));
        let mut stream = client
            .watch(WatchRequest { from_id: from })
            .await
            .unwrap_or_else(|e| panic!("{}: Watch: {e}", node.name))
            .into_inner();
        let mut got = Vec::new();
        while got.len() < wanted.len() {
            let entry = tokio::time::timeout(CONVERGE, stream.message())
                .await
                .unwrap_or_else(|_| panic!("{}: Watch sent nothing in time", node.name))
                .unwrap_or_else(|e| panic!("{}: Watch failed: {e}", node.name))
                .unwrap_or_else(|| panic!("{}: Watch ended", node.name));
            got.push((entry.id, entry.message));
        }
        assert_eq!(got, wanted, "{}: Watch from a cold id", node.name);
        // The live tail (SSE).
        let url = node.url(&format!("/api/messages/stream?from_id={from}"));
        let mut response = cluster
            .client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status(), 200, "GET {url}");
        let mut blocks = sse::Blocks::new();
        let mut ids = Vec::new();
        while ids.len() < wanted.len() {
            match blocks.next_event() {
                Ok(Some(event)) => ids.push(event.id),
                Ok(None) => {
                    let chunk = tokio::time::timeout(CONVERGE, response.chunk())
                        .await
                        .unwrap_or_else(|_| panic!("GET {url}: nothing in time"))
                        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
                        .unwrap_or_else(|| panic!("GET {url}: the stream ended"));
                    blocks.push(&chunk);
                }
                Err(error) => panic!("GET {url}: {error}"),
            }
        }
        let wanted_ids: Vec<u64> = wanted.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids, wanted_ids,
            "{}: the live tail from a cold id",
            node.name
        );
    }
}
