//! A master that was itself stopped does not take its own stall for the secondaries' silence:
//! the appends that queued up while it was paused are answered as if nothing had happened, and
//! its health never shows a quorum lost to secondaries that answered all along.

use cluster_tests::{fast_health, Cluster, SecondaryOpts, StatusCode};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// [`cluster_tests::FAST_HEALTH`]'s `UNHEALTHY_AFTER_MS`.
const UNHEALTHY_AFTER: Duration = Duration::from_millis(1000);

/// Injected: SIGSTOP of the master for 2.5 x `UNHEALTHY_AFTER_MS` while appends (w=1 and w=3)
/// are sent to it and its `/api/health` is polled, then SIGCONT.
/// Checked: both appends answer 200 with their ids; no health answer, during the pause or for
/// 2 x `UNHEALTHY_AFTER_MS` after it, shows the master without quorum or read-only.
#[tokio::test]
async fn appends_queued_during_a_master_stall_are_committed() {
    let cluster = Cluster::start(
        vec![SecondaryOpts::new(), SecondaryOpts::new()],
        &fast_health(&[]),
    )
    .await;

    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let (client, url, polling) = (
            cluster.client.clone(),
            cluster.master.url("/api/health"),
            polling.clone(),
        );
        tokio::spawn(async move {
            let mut answers: Vec<Value> = Vec::new();
            while polling.load(Ordering::Relaxed) {
                if let Ok(response) = client.get(&url).send().await {
                    if let Ok(health) = response.json::<Value>().await {
                        answers.push(health);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };

    cluster.master.stop();
    let appends: Vec<_> = [1, 3]
        .into_iter()
        .map(|w| {
            let appender = cluster.appender();
            tokio::spawn(async move {
                appender
                    .append(&format!("during the stall, w={w}"), Some(w))
                    .await
            })
        })
        .collect();
    // The pause itself, long enough that every secondary's last contact is older than
    // UNHEALTHY_AFTER_MS when the master resumes.
    tokio::time::sleep(UNHEALTHY_AFTER * 5 / 2).await;
    cluster.master.cont();

    for (append, w) in appends.into_iter().zip([1, 3]) {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), append)
            .await
            .expect("the append queued during the stall is answered within 10 s")
            .expect("the append task");
        assert_eq!(
            status,
            StatusCode::OK,
            "the w={w} append queued during the stall: {body}"
        );
        assert!(body["id"].is_u64(), "an id in {body}");
    }

    // Health is watched for a while after the stall too (a window to observe, not a wait for a
    // condition): the secondaries answered all along, so they never leave the quorum.
    tokio::time::sleep(UNHEALTHY_AFTER * 2).await;
    polling.store(false, Ordering::Relaxed);
    let answers = poller.await.expect("the health poller");
    assert!(
        answers.len() > 10,
        "health was polled ({} answers)",
        answers.len()
    );
    for health in &answers {
        assert!(
            health["quorum"] == true && health["read_only"] == false,
            "the master reported no quorum although both secondaries answered: {health}"
        );
    }
}
