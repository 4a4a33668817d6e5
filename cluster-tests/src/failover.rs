//! A failover cluster: a real etcd and `replog` nodes (every one durable, any may be master),
//! on free loopback ports, with the same [`Node`] handles and [`Appender`]s as [`crate::Cluster`].

use crate::cluster::data_dir_setting;
use crate::etcd::Etcd;
use crate::{
    free_ports, fresh_log_dir, on_free_ports, try_list, wait_for, Appender, Binary, Node,
    START_TIMEOUT, STEADY_HEALTH,
};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The lease the tests give their masters: short, so that a failover fits a test's time.
pub const TEST_TTL_MS: u64 = 2000;

/// Settings every failover node of a test gets, before its own.
const NODE_SETTINGS: &[(&str, &str)] = &[
    ("REPLICATION_TIMEOUT_SECONDS", "3"),
    ("RETRY_BASE_MS", "10"),
    ("RETRY_MAX_MS", "200"),
    ("SHUTDOWN_GRACE_SECONDS", "2"),
];

/// etcd and the nodes.
pub struct FailoverCluster {
    pub etcd: Etcd,
    pub nodes: Vec<Node>,
    pub client: reqwest::Client,
    pub dir: PathBuf,
}

/// Who a node says is master, from its `GET /api/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The node's role: "master" or "secondary".
    pub role: String,
    pub master: Option<String>,
    pub term: u64,
}

impl FailoverCluster {
    /// Starts etcd and `n` nodes named `node-a`, `node-b`, ... (`FAILOVER_TTL_MS` =
    /// [`TEST_TTL_MS`], the steady health thresholds, `env` last), and waits until one of them
    /// serves as master and every node names it.
    pub async fn start(n: usize, env: &[(&str, &str)]) -> FailoverCluster {
        let dir = fresh_log_dir();
        let etcd = Etcd::start_in(&dir).await;
        let endpoint = etcd.endpoint();
        let (dir, endpoint) = (&dir, &endpoint);
        let nodes = on_free_ports(move || async move {
            let ports = free_ports(2 * n);
            let names: Vec<String> = (0..n)
                .map(|i| format!("node-{}", (b'a' + i as u8) as char))
                .collect();
            let peers: Vec<String> = names
                .iter()
                .enumerate()
                .map(|(i, name)| format!("{name}=127.0.0.1:{}:{}", ports[2 * i], ports[2 * i + 1]))
                .collect();
            let client = client();
            let mut nodes = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let (http, grpc) = (ports[2 * i], ports[2 * i + 1]);
                let mut settings: Vec<(String, String)> = [
                    ("HOST", "127.0.0.1".to_owned()),
                    ("HTTP_PORT", http.to_string()),
                    ("GRPC_PORT", grpc.to_string()),
                    ("NODE_NAME", name.clone()),
                    ("PEERS", peers.join(",")),
                    ("ETCD_ENDPOINTS", endpoint.clone()),
                    ("FAILOVER_TTL_MS", TEST_TTL_MS.to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                settings.push(data_dir_setting(dir, name));
                for (k, v) in STEADY_HEALTH.iter().chain(NODE_SETTINGS).chain(env) {
                    settings.retain(|(key, _)| key != k);
                    settings.push((k.to_string(), v.to_string()));
                }
                let mut node = Node::new(name, Binary::Replog, http, Some(grpc), settings, dir);
                node.start();
                nodes.push(node);
            }
            let deadline = Instant::now() + START_TIMEOUT;
            for node in &mut nodes {
                node.wait_answering(&client, deadline).await?;
            }
            Ok(nodes)
        })
        .await;
        let cluster = FailoverCluster {
            etcd,
            nodes,
            client: client(),
            dir: dir.clone(),
        };
        cluster.wait_master(START_TIMEOUT, None).await;
        cluster
    }

    /// What node `i` says of the mastership, or `None` if it does not answer.
    pub async fn seen_by(&self, i: usize) -> Option<Seen> {
        let node = &self.nodes[i];
        if !node.is_running() {
            return None;
        }
        let response = self.client.get(node.url("/api/health")).send().await.ok()?;
        let health: Value = response.json().await.ok()?;
        let leadership = &health["leadership"];
        Some(Seen {
            role: health["role"].as_str()?.to_owned(),
            master: leadership["master"].as_str().map(str::to_owned),
            term: leadership["term"].as_u64().unwrap_or(0),
        })
    }

    /// The node serving as master, with its term, once every running node but `except` names
    /// it and it takes appends; panics after `timeout`.
    pub async fn wait_master(&self, timeout: Duration, except: Option<usize>) -> (usize, u64) {
        wait_for(timeout, "a master every running node names", || async {
            let mut master = None;
            for i in 0..self.nodes.len() {
                if Some(i) == except || !self.nodes[i].is_running() {
                    continue;
                }
                let seen = self.seen_by(i).await?;
                if seen.role == "master" {
                    if seen.master.as_deref() != Some(self.nodes[i].name.as_str()) {
                        return None;
                    }
                    master = Some((i, seen.term));
                }
            }
            let (i, term) = master?;
            for j in 0..self.nodes.len() {
                if j == i || Some(j) == except || !self.nodes[j].is_running() {
                    continue;
                }
                let seen = self.seen_by(j).await?;
                if seen.master.as_deref() != Some(self.nodes[i].name.as_str()) || seen.term != term
                {
                    return None;
                }
            }
            let health = self.health(i).await?;
            (health["read_only"] == false).then_some((i, term))
        })
        .await
    }

    /// `GET /api/health` of node `i`, if it answers.
    pub async fn health(&self, i: usize) -> Option<Value> {
        let response = self
            .client
            .get(self.nodes[i].url("/api/health"))
            .send()
            .await
            .ok()?;
        (response.status() == StatusCode::OK).then_some(())?;
        response.json().await.ok()
    }

    /// Appends through node `i` (a secondary forwards to the master).
    pub fn appender_on(&self, i: usize) -> Appender {
        Appender::on(&self.client, &self.nodes[i])
    }

    /// Node `i`'s visible log, if it answers.
    pub async fn try_messages(&self, i: usize) -> Option<Vec<(u64, String)>> {
        try_list(&self.client, &self.nodes[i].url("")).await
    }

    /// Waits until every running node lists the same log, and returns it.
    pub async fn wait_converged(&self, timeout: Duration) -> Vec<(u64, String)> {
        wait_for(timeout, "every running node lists the same log", || async {
            let mut lists = Vec::new();
            for i in 0..self.nodes.len() {
                if self.nodes[i].is_running() {
                    lists.push(self.try_messages(i).await?);
                }
            }
            let first = lists.first()?.clone();
            lists.iter().all(|l| *l == first).then_some(first)
        })
        .await
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}
