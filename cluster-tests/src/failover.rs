//! A failover cluster: a real etcd and `replog` nodes (every one durable, any may be master),
//! on free loopback ports, with the same [`Node`] handles and [`Appender`]s as [`crate::Cluster`];
//! their public ports over TLS with [`FailoverBuilder::https`].

use crate::cluster::{data_dir_setting, http_client_builder, log_dir_or_fresh, owned};
use crate::etcd::Etcd;
use crate::{
    free_ports, on_free_ports, try_list, wait_for, Appender, Binary, Node, START_TIMEOUT,
    STEADY_HEALTH,
};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
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

/// How to start a [`FailoverCluster`] ([`FailoverCluster::builder`]): its nodes' settings,
/// where its logs go, and whether the nodes serve their public port over TLS.
#[derive(Debug, Clone, Default)]
pub struct FailoverBuilder {
    nodes: usize,
    env: Vec<(String, String)>,
    /// Each node's own settings, by index.
    node_env: Vec<Vec<(String, String)>>,
    log_dir: Option<PathBuf>,
    /// The CA (PEM file) of nodes that serve their public port over TLS.
    https_ca: Option<PathBuf>,
}

impl FailoverBuilder {
    /// Settings for every node, after the kit's (which they override).
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Self {
        self.env.extend(owned(pairs));
        self
    }

    /// Settings of node `i` alone (`node-a` is 0), after every node's (which they override):
    /// e.g. its certificate files.
    pub fn node_envs<K: AsRef<str>, V: AsRef<str>>(mut self, i: usize, pairs: &[(K, V)]) -> Self {
        assert!(i < self.nodes, "node {i} of {}", self.nodes);
        self.node_env[i].extend(owned(pairs));
        self
    }

    /// Where the nodes' and etcd's logs and data go (created if missing, kept as it is
    /// otherwise). Default: this test's [`crate::fresh_log_dir`].
    pub fn log_dir(mut self, dir: &Path) -> Self {
        self.log_dir = Some(dir.to_path_buf());
        self
    }

    /// The nodes serve their public port over TLS (their own settings say so: `PUBLIC_TLS` and
    /// the certificate files): the kit's URLs are `https://` and its client trusts the CA
    /// certificates of the PEM file `ca`, as [`crate::ClusterBuilder::https`].
    pub fn https(mut self, ca: &Path) -> Self {
        self.https_ca = Some(ca.to_path_buf());
        self
    }

    /// Starts etcd and the nodes named `node-a`, `node-b`, ... (`FAILOVER_TTL_MS` =
    /// [`TEST_TTL_MS`], the steady health thresholds, then the settings for every node, then
    /// each node's own), and waits until one of them serves as master and every node names it.
    pub async fn start(self) -> FailoverCluster {
        let dir = log_dir_or_fresh(self.log_dir.as_deref()).unwrap_or_else(|e| panic!("{e}"));
        let etcd = Etcd::start_in(&dir).await;
        let endpoint = etcd.endpoint();
        let (spec, dir, endpoint) = (&self, &dir, &endpoint);
        let n = self.nodes;
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
            let client = client(spec.https_ca.as_deref());
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
                let kit = owned(&STEADY_HEALTH)
                    .into_iter()
                    .chain(owned(NODE_SETTINGS));
                for (k, v) in kit
                    .chain(spec.env.iter().cloned())
                    .chain(spec.node_env[i].iter().cloned())
                {
                    settings.retain(|(key, _)| *key != k);
                    settings.push((k, v));
                }
                let mut node = Node::new(name, Binary::Replog, http, Some(grpc), settings, dir)
                    .with_https(spec.https_ca.is_some());
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
            client: client(self.https_ca.as_deref()),
            dir: dir.clone(),
        };
        cluster.wait_master(START_TIMEOUT, None).await;
        cluster
    }
}

impl FailoverCluster {
    /// Describes a cluster of `n` nodes to start: see [`FailoverBuilder`].
    pub fn builder(n: usize) -> FailoverBuilder {
        FailoverBuilder {
            nodes: n,
            node_env: vec![Vec::new(); n],
            ..FailoverBuilder::default()
        }
    }

    /// Starts etcd and `n` nodes with `env` for every node, and waits until one of them serves
    /// as master and every node names it: see [`FailoverBuilder::start`].
    pub async fn start(n: usize, env: &[(&str, &str)]) -> FailoverCluster {
        FailoverCluster::builder(n).envs(env).start().await
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

/// The kit's HTTP client ([`http_client_builder`]), giving up on an answer after 5 s: a
/// stopped node must not hang a wait.
fn client(ca: Option<&Path>) -> reqwest::Client {
    http_client_builder(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}
