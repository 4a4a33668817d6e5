//! A durable log far larger than what the nodes keep in memory: small segment files
//! (`SEGMENT_BYTES=4KiB`) and no payload cached (`CACHE_BYTES=0`), so nearly every read is served
//! from the segments. Lists, pages, a wiped secondary's catch-up and restarts all see the whole
//! log; and a data directory of the single-file format is converted at start without losing an
//! entry.

use cluster_tests::log_file::Record;
use cluster_tests::{try_list, wait_for, Cluster, MasterOpts, SecondaryOpts};
use replog_node::storage::{FsyncPolicy, LogFile};
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

fn segments(cluster: &Cluster) -> usize {
    let dir = cluster.master.data_dir().expect("durable").join("segments");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .count()
}

#[tokio::test]
async fn a_log_far_beyond_the_cache_is_listed_caught_up_and_recovered_from_its_segments() {
    let mut cluster = Cluster::start_with(
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
