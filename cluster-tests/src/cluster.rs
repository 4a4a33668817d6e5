//! The cluster builder: a master and its secondaries, as processes or in process, and the
//! client helpers every test uses against them, whichever way the nodes run.

use crate::in_process::Listeners;
use crate::node::{Backend, Binary, Node};
use crate::process::{self, Exited};
use crate::{
    fresh_log_dir, try_free_ports, try_on_free_ports, try_wait_until, wait_until, StartError,
    TimedOut, START_TIMEOUT,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How to start one node of a [`Cluster`]: [`SecondaryOpts`] or [`MasterOpts`].
#[derive(Debug, Clone)]
pub struct NodeOpts<Kind> {
    env: Vec<(String, String)>,
    not_started: bool,
    durable: bool,
    kind: PhantomData<Kind>,
}

/// The kinds of [`NodeOpts`].
pub mod kind {
    #[derive(Debug, Clone, Copy)]
    pub struct Master;
    #[derive(Debug, Clone, Copy)]
    pub struct Secondary;
}

/// How to start one secondary.
pub type SecondaryOpts = NodeOpts<kind::Secondary>;

/// How to start the master (for [`Cluster::start_with`] and [`ClusterBuilder::master`]).
pub type MasterOpts = NodeOpts<kind::Master>;

impl<Kind> Default for NodeOpts<Kind> {
    fn default() -> Self {
        NodeOpts {
            env: Vec::new(),
            not_started: false,
            durable: false,
            kind: PhantomData,
        }
    }
}

impl<Kind> NodeOpts<Kind> {
    pub fn new() -> Self {
        Self::default()
    }

    /// An extra setting, e.g. `("DELAY_SECONDS", "1")` for a secondary or
    /// `("REPLICATION_TIMEOUT_SECONDS", "0")` for the master.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Several extra settings, e.g. [`crate::FAST_HEALTH`].
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Self {
        self.env.extend(owned(pairs));
        self
    }

    /// Keeps the log on disk: `DATA_DIR` is `<data root>/<name>-data` (see
    /// [`ClusterBuilder::data_root`]), with `FSYNC=always`.
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }
}

impl SecondaryOpts {
    /// Ports are chosen and the master lists it, but the node is not started (start it later
    /// with `cluster.secondaries[i].start()`), and the cluster does not wait for it.
    pub fn not_started(mut self) -> Self {
        self.not_started = true;
        self
    }
}

pub(crate) fn owned<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
        .collect()
}

/// `dir`, created if missing and kept as it is otherwise; without one, this test's
/// [`fresh_log_dir`].
pub(crate) fn log_dir_or_fresh(dir: Option<&Path>) -> Result<PathBuf, StartError> {
    let Some(dir) = dir else {
        return Ok(fresh_log_dir());
    };
    std::fs::create_dir_all(dir).map_err(|error| StartError::Spawn {
        node: format!("the log directory {}", dir.display()),
        error,
    })?;
    Ok(dir.to_path_buf())
}

/// The `DATA_DIR` of a durable node: `<dir>/<name>-data`.
pub(crate) fn data_dir_setting(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(format!("{name}-data"));
    ("DATA_DIR".to_owned(), path.display().to_string())
}

/// Everything that says how a [`Cluster`] starts: its nodes, how they run, where their logs and
/// data go, and settings for every node. [`Cluster::start`] and [`Cluster::start_with`] are
/// this with the defaults.
#[derive(Debug, Clone, Default)]
pub struct ClusterBuilder {
    secondaries: Vec<SecondaryOpts>,
    master: MasterOpts,
    backend: Backend,
    env: Vec<(String, String)>,
    log_dir: Option<PathBuf>,
    data_root: Option<PathBuf>,
    /// Every node durable.
    durable: bool,
    /// The CA (PEM file) of nodes that serve their public port over TLS.
    https_ca: Option<PathBuf>,
}

impl ClusterBuilder {
    /// The secondaries, in order (`secondary-1`, `secondary-2`, ...).
    pub fn secondaries(mut self, secondaries: Vec<SecondaryOpts>) -> Self {
        self.secondaries = secondaries;
        self
    }

    pub fn master(mut self, master: MasterOpts) -> Self {
        self.master = master;
        self
    }

    /// Node processes of the binaries in `dir` (default: [`crate::default_bin_dir`], the
    /// binaries of the profile the tests were built in).
    pub fn bin_dir(mut self, dir: &Path) -> Self {
        self.backend = Backend::Process {
            bin_dir: dir.to_path_buf(),
        };
        self
    }

    /// The nodes run in this process, as tasks of the caller's runtime, on listeners bound
    /// before they start ([`crate::in_process`]): no port race, no process start-up; no
    /// signals either.
    pub fn in_process(mut self) -> Self {
        self.backend = Backend::InProcess;
        self
    }

    /// A setting for every node, before each node's own (which win).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Every node keeps its log on disk, as [`MasterOpts::durable`] and
    /// [`SecondaryOpts::durable`].
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// Where the nodes' logs go (created if missing, kept as it is otherwise). Default: this
    /// test's [`fresh_log_dir`].
    pub fn log_dir(mut self, dir: &Path) -> Self {
        self.log_dir = Some(dir.to_path_buf());
        self
    }

    /// The nodes serve their public port over TLS (their own settings say so: `PUBLIC_TLS` and
    /// the certificate files): the kit's URLs are `https://` and its client trusts the CA
    /// certificates of the PEM file `ca`.
    pub fn https(mut self, ca: &Path) -> Self {
        self.https_ca = Some(ca.to_path_buf());
        self
    }

    /// Where durable nodes keep their `DATA_DIR`s (`<root>/<name>-data`). Default: the log
    /// directory.
    pub fn data_root(mut self, dir: &Path) -> Self {
        self.data_root = Some(dir.to_path_buf());
        self
    }

    /// Starts the cluster; panics if it does not get ready ([`ClusterBuilder::try_start`]).
    pub async fn start(self) -> Cluster {
        self.try_start().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the secondaries (`HOST=127.0.0.1`, their `HTTP_PORT` and `GRPC_PORT`, `MASTER`
    /// pointing at the master, then the settings for every node, `DATA_DIR` and `FSYNC` if
    /// durable, and each one's own settings), then the master (likewise, with `SECONDARIES`
    /// listing every secondary, started or not), and waits until the cluster is in a known
    /// state: see [`Cluster::wait_ready`].
    ///
    /// Processes run on ports that were free a moment ago; a node whose port another process
    /// took first exits at once, and the whole cluster then starts again on new ports
    /// ([`crate::on_free_ports`]). They are started from the calling thread, which their
    /// death signal is tied to ([`crate::process`]). In-process nodes run on listeners bound
    /// first, in the caller's runtime.
    pub async fn try_start(self) -> Result<Cluster, StartError> {
        let dir = log_dir_or_fresh(self.log_dir.as_deref())?;
        let cluster = match self.backend {
            Backend::Process { .. } => {
                let (spec, dir) = (&self, &dir);
                try_on_free_ports(move || async move {
                    let mut cluster = spec.launch(dir, None)?;
                    cluster.first_contact().await?;
                    Ok::<_, StartError>(cluster)
                })
                .await?
            }
            Backend::InProcess => {
                let listeners = (0..1 + self.secondaries.len())
                    .map(|i| Listeners::bind(0, (i > 0).then_some(0)))
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(|error| StartError::Spawn {
                        node: "the in-process listeners".into(),
                        error,
                    })?;
                self.launch(&dir, Some(listeners))?
            }
        };
        cluster.try_wait_ready().await?;
        Ok(cluster)
    }

    /// Describes the nodes on their ports and starts them, without waiting for anything.
    /// `bound`: the in-process listeners, the master's first; `None`: free ports for processes.
    fn launch(&self, dir: &Path, bound: Option<Vec<Listeners>>) -> Result<Cluster, StartError> {
        let spawn_failed = |error| StartError::Spawn {
            node: "the cluster's ports".into(),
            error,
        };
        // The ports, the master's first; for processes all picked at once, so that they differ
        // from one another. The master's is known before the secondaries start, as they forward
        // appends to it (`MASTER`).
        let (ports, listeners): (Vec<u16>, Vec<Option<Listeners>>) = match bound {
            Some(bound) => {
                let mut ports = Vec::new();
                for node in &bound {
                    let (http, grpc) = node.ports().map_err(spawn_failed)?;
                    ports.extend(std::iter::once(http).chain(grpc));
                }
                (ports, bound.into_iter().map(Some).collect())
            }
            None => {
                let ports = try_free_ports(1 + 2 * self.secondaries.len()).map_err(spawn_failed)?;
                (ports, Vec::new())
            }
        };
        let mut listeners = listeners.into_iter();
        let master_listeners = listeners.next().flatten();
        let master_http = ports[0];
        let data_root = self.data_root.as_deref().unwrap_or(dir);
        let node_env =
            |defaults: Vec<(&str, String)>, name: &str, durable, own: &[(String, String)]| {
                let mut env: Vec<(String, String)> = defaults
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                env.extend(self.env.iter().cloned());
                if durable || self.durable {
                    env.push(data_dir_setting(data_root, name));
                    env.push(("FSYNC".to_owned(), "always".to_owned()));
                }
                env.extend(own.iter().cloned());
                env
            };
        let mut nodes = Vec::new();
        for (i, opts) in self.secondaries.iter().enumerate() {
            let (http, grpc) = (ports[1 + 2 * i], ports[2 + 2 * i]);
            let name = format!("secondary-{}", i + 1);
            let defaults = vec![
                ("HOST", "127.0.0.1".to_owned()),
                ("HTTP_PORT", http.to_string()),
                ("GRPC_PORT", grpc.to_string()),
                ("MASTER", format!("127.0.0.1:{master_http}")),
            ];
            let env = node_env(defaults, &name, opts.durable, &opts.env);
            let mut node = Node::new(&name, Binary::Secondary, http, Some(grpc), env, dir)
                .with_backend(self.backend.clone(), listeners.next().flatten(), dir)
                .with_https(self.https_ca.is_some());
            if !opts.not_started {
                node.try_start()?;
            }
            nodes.push(node);
        }
        let listed: Vec<String> = nodes.iter().map(Node::grpc_endpoint).collect();
        let mut defaults = vec![
            ("HOST", "127.0.0.1".to_owned()),
            ("HTTP_PORT", master_http.to_string()),
        ];
        // A master without secondaries has no SECONDARIES at all (an empty value is invalid).
        if !listed.is_empty() {
            defaults.push(("SECONDARIES", listed.join(",")));
        }
        let env = node_env(defaults, "master", self.master.durable, &self.master.env);
        let mut master = Node::new("master", Binary::Master, master_http, None, env, dir)
            .with_backend(self.backend.clone(), master_listeners, dir)
            .with_https(self.https_ca.is_some());
        master.try_start()?;
        Ok(Cluster {
            master,
            secondaries: nodes,
            client: http_client(self.https_ca.as_deref()),
            dir: dir.to_path_buf(),
            https_ca: self.https_ca.clone(),
        })
    }
}

/// The kit's HTTP client: [`http_client_builder`] as it is.
pub(crate) fn http_client(ca: Option<&Path>) -> reqwest::Client {
    http_client_builder(ca).build().expect("an HTTP client")
}

/// The kit's HTTP client, to build: no proxy, whatever the environment says; trusting only the
/// CA certificates of the PEM file `ca`, if given, for `https://`.
pub fn http_client_builder(ca: Option<&Path>) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("cannot read {}: {e}", ca.display()));
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .unwrap_or_else(|e| panic!("{}: {e}", ca.display()));
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
}

/// A master and its secondaries, plus an HTTP client to talk to them.
pub struct Cluster {
    pub master: Node,
    pub secondaries: Vec<Node>,
    pub client: reqwest::Client,
    pub dir: PathBuf,
    /// See [`ClusterBuilder::https`].
    https_ca: Option<PathBuf>,
}

impl Cluster {
    /// Describes a cluster to start: see [`ClusterBuilder`].
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts node processes: the `secondaries`, then the master with `master_env`; see
    /// [`ClusterBuilder::try_start`].
    pub async fn start(secondaries: Vec<SecondaryOpts>, master_env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(secondaries, MasterOpts::new().envs(master_env)).await
    }

    /// [`Cluster::start`] with the nodes in process ([`ClusterBuilder::in_process`]).
    pub async fn start_in_process(
        secondaries: Vec<SecondaryOpts>,
        master_env: &[(&str, &str)],
    ) -> Cluster {
        Cluster::builder()
            .in_process()
            .secondaries(secondaries)
            .master(MasterOpts::new().envs(master_env))
            .start()
            .await
    }

    /// [`Cluster::start`] with the master described by [`MasterOpts`] (e.g. durable).
    pub async fn start_with(secondaries: Vec<SecondaryOpts>, master: MasterOpts) -> Cluster {
        Cluster::builder()
            .secondaries(secondaries)
            .master(master)
            .start()
            .await
    }

    /// Waits until every started process answers `GET /health`; `Err` if one exits first.
    async fn first_contact(&mut self) -> Result<(), Exited> {
        let deadline = Instant::now() + START_TIMEOUT;
        let nodes = std::iter::once(&mut self.master).chain(self.secondaries.iter_mut());
        for node in nodes {
            node.wait_answering(&self.client, deadline).await?;
        }
        Ok(())
    }

    /// Waits until every running node answers `GET /health` with 200 and the master's
    /// `GET /api/health` shows every running secondary `healthy` *and contacted* (a secondary
    /// the master never reached also reads `healthy` until `SUSPECT_AFTER_MS` passes, so the
    /// status alone proves nothing). Secondaries not running are not waited for. Panics after
    /// [`START_TIMEOUT`].
    pub async fn wait_ready(&self) {
        self.try_wait_ready()
            .await
            .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    }

    /// [`Cluster::wait_ready`], `Err` instead of a panic.
    pub async fn try_wait_ready(&self) -> Result<(), TimedOut> {
        for node in self.running() {
            let url = node.url("/health");
            try_wait_until(
                START_TIMEOUT,
                format!("{} GET /health = 200", node.name),
                || {
                    let request = self.client.get(&url).send();
                    async move { request.await.is_ok_and(|r| r.status() == StatusCode::OK) }
                },
            )
            .await?;
        }
        let running: &Vec<String> = &self
            .secondaries
            .iter()
            .filter(|s| s.is_running())
            .map(Node::grpc_endpoint)
            .collect();
        try_wait_until(
            START_TIMEOUT,
            format!("master /api/health shows {running:?} healthy and contacted"),
            || async move {
                let Some(health) = self.try_health(&self.master).await else {
                    return false;
                };
                // A master that has not yet asked the secondaries what they hold (or, with a
                // complete log, not yet heard a majority) takes nothing: not ready. One that has
                // asked and waits for a secondary that is down is as ready as it will get.
                let starting = health["read_only_reason"].as_str().is_some_and(|r| {
                    r.starts_with("starting:")
                        || r.contains("asking the secondaries what they hold")
                });
                !starting
                    && running.iter().all(|address| {
                        secondary_health(&health, address).is_some_and(|s| {
                            s["status"] == "healthy" && s["last_contact_ms_ago"].is_u64()
                        })
                    })
            },
        )
        .await
    }

    /// The master, then every secondary that runs.
    pub fn running(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master).chain(self.secondaries.iter().filter(|s| s.is_running()))
    }

    /// Every node, the master first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master).chain(self.secondaries.iter())
    }

    /// A cheap, `'static` handle that appends to the master, for spawned tasks.
    pub fn appender(&self) -> Appender {
        self.appender_on(&self.master)
    }

    /// Like [`Cluster::appender`], but posting to `node` (a secondary forwards to the master).
    pub fn appender_on(&self, node: &Node) -> Appender {
        Appender::on(&self.client, node)
    }

    /// `POST /api/messages` on the master with `{"message": msg, "w": w}` (`w` left out if
    /// `None`).
    pub async fn append(&self, message: &str, w: Option<u64>) -> (StatusCode, Value) {
        self.appender().append(message, w).await
    }

    /// `POST /api/messages` on the master with this exact body and `Content-Type` (none if
    /// `None`).
    pub async fn append_raw(&self, body: &str, content_type: Option<&str>) -> (StatusCode, Value) {
        self.appender().append_raw(body, content_type).await
    }

    /// `GET /api/messages` on `node`: its visible log as `(id, message)` pairs.
    pub async fn messages(&self, node: &Node) -> Vec<(u64, String)> {
        let url = node.url("/api/messages");
        let body: Value = self
            .client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        body["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {url}: no `messages` array in {body}"))
            .iter()
            .map(|m| {
                let id = m["id"].as_u64().unwrap_or_else(|| panic!("bad id in {m}"));
                let text = m["message"]
                    .as_str()
                    .unwrap_or_else(|| panic!("bad message in {m}"));
                (id, text.to_owned())
            })
            .collect()
    }

    /// The status `GET /api/messages` on `node` answers (panics if it does not answer).
    pub async fn list_status(&self, node: &Node) -> StatusCode {
        self.client
            .get(node.url("/api/messages"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /api/messages on {}: {e}", node.name))
            .status()
    }

    /// `GET /api/messages` on `node`, or `None` if it does not answer 200 with a list (e.g. while
    /// it restarts).
    pub async fn try_messages(&self, node: &Node) -> Option<Vec<(u64, String)>> {
        try_list(&self.client, &node.url("")).await
    }

    /// Replaces the HTTP client (and so its pool of connections): call it after a node was
    /// restarted, so that no request goes out on a connection to the process that is gone.
    pub fn renew_client(&mut self) {
        self.client = http_client(self.https_ca.as_deref());
    }

    /// `last_id` from `node`'s `/api/health` (on a secondary: the highest id it holds).
    pub async fn last_id(&self, node: &Node) -> u64 {
        let health = self.health(node).await;
        health["last_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no `last_id` in {} /api/health: {health}", node.name))
    }

    /// The status (`healthy`, `suspected`, `unhealthy`) of `secondary` in the master's
    /// `/api/health`.
    pub async fn status_of(&self, secondary: &Node) -> String {
        let health = self.health(&self.master).await;
        let entry = secondary_health(&health, &secondary.grpc_endpoint())
            .unwrap_or_else(|| panic!("no entry for {} in {health}", secondary.name));
        entry["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no status in {entry}"))
            .to_owned()
    }

    /// Waits until every running node lists exactly `expected`, ids included; a node that does
    /// not answer (yet) counts as not there yet.
    pub async fn wait_converged(&self, timeout: Duration, expected: &[(u64, String)]) {
        let mut last = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            last.clear();
            let mut all_equal = true;
            for node in self.running() {
                let list = self.try_messages(node).await;
                all_equal &= list.as_deref() == Some(expected);
                last.push((node.name.clone(), list));
            }
            if all_equal {
                return;
            }
            if Instant::now() >= deadline {
                let summary: Vec<String> = last
                    .iter()
                    .map(|(name, list)| match list {
                        None => format!("{name}: no answer"),
                        Some(list) => format!(
                            "{name}: {} entries, first difference at index {:?}, last {:?}",
                            list.len(),
                            list.iter().zip(expected).position(|(a, b)| a != b),
                            list.last()
                        ),
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting until every node lists the expected {} \
                     entries (last {:?}); {}",
                    expected.len(),
                    expected.last(),
                    summary.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The visible log of every running node, the master first.
    pub async fn all_messages(&self) -> Vec<(String, Vec<(u64, String)>)> {
        let mut all = Vec::new();
        for node in self.running() {
            all.push((node.name.clone(), self.messages(node).await));
        }
        all
    }

    /// `GET /api/health` on `node` (the master's cluster view, or a secondary's own).
    pub async fn health(&self, node: &Node) -> Value {
        self.try_health(node)
            .await
            .unwrap_or_else(|| panic!("GET {} failed", node.url("/api/health")))
    }

    /// `GET /api/health` on `node`, or `None` if it does not answer 200 with JSON.
    /// `GET url`: the status and the JSON body (panics if there is no JSON answer).
    pub async fn get_json(&self, url: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let body = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {status}, not JSON: {e}"));
        (status, body)
    }

    pub async fn try_health(&self, node: &Node) -> Option<Value> {
        let response = self.client.get(node.url("/api/health")).send().await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        response.json().await.ok()
    }

    /// The highest id a secondary holds contiguously: its [`Cluster::last_id`].
    pub async fn held(&self, secondary: &Node) -> u64 {
        self.last_id(secondary).await
    }

    /// Waits until every running node shows exactly `expected` (messages in this order).
    pub async fn wait_all_show(&self, timeout: Duration, expected: &[&str]) {
        wait_until(
            timeout,
            format!("every node shows exactly {expected:?}"),
            || async move {
                self.all_messages().await.iter().all(|(_, list)| {
                    list.iter()
                        .map(|(_, m)| m.as_str())
                        .eq(expected.iter().copied())
                })
            },
        )
        .await;
    }
}

/// Appends to the master; clone it into as many tasks as needed.
#[derive(Clone)]
pub struct Appender {
    client: reqwest::Client,
    url: String,
}

impl Appender {
    /// Appends through `node` (a secondary forwards to the master) with `client`.
    pub fn on(client: &reqwest::Client, node: &Node) -> Appender {
        Appender {
            client: client.clone(),
            url: node.url("/api/messages"),
        }
    }

    /// `POST /api/messages` with `{"message": msg, "w": w}` (`w` left out if `None`).
    pub async fn append(&self, message: &str, w: Option<u64>) -> (StatusCode, Value) {
        let mut body = json!({ "message": message });
        if let Some(w) = w {
            body["w"] = json!(w);
        }
        self.append_raw(&body.to_string(), Some("application/json"))
            .await
    }

    /// `POST /api/messages` with `{"message", "w", "key"}`: an append with an idempotency key.
    pub async fn append_keyed(&self, message: &str, w: u64, key: &str) -> (StatusCode, Value) {
        let body = json!({ "message": message, "w": w, "key": key });
        self.append_raw(&body.to_string(), Some("application/json"))
            .await
    }

    /// Like [`Appender::append`], with the answer's headers (e.g. `Retry-After`).
    pub async fn append_with_headers(
        &self,
        message: &str,
        w: Option<u64>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut body = json!({ "message": message });
        if let Some(w) = w {
            body["w"] = json!(w);
        }
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {} {body}: {e}", self.url));
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| {
            eprintln!("POST {} -> {status}, not JSON: {text:?}", self.url);
            Value::Null
        });
        (status, headers, value)
    }

    /// `POST /api/messages` with this exact body and `Content-Type` (none if `None`). The
    /// answer's body is parsed as JSON (`Value::Null` if it is not JSON, after printing it, so
    /// that the assertion that follows shows what came back).
    pub async fn append_raw(&self, body: &str, content_type: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.post(&self.url).body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {} {body}: {e}", self.url));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| {
            eprintln!("POST {} {body} -> {status}, not JSON: {text:?}", self.url);
            Value::Null
        });
        (status, value)
    }
}

impl Appender {
    /// The same appender on its own connections, giving up on an answer after `timeout`: for
    /// clients that must not hang on a stopped node.
    pub fn with_timeout(&self, timeout: Duration) -> Appender {
        Appender {
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(timeout)
                .build()
                .expect("an HTTP client"),
            url: self.url.clone(),
        }
    }

    /// Like [`Appender::append`], but a failed request (refused, reset, timed out) is an `Err`
    /// instead of a panic: under fault injection, a node may die while it is asked.
    pub async fn try_append(
        &self,
        message: &str,
        w: Option<u64>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut body = json!({ "message": message });
        if let Some(w) = w {
            body["w"] = json!(w);
        }
        let response = self.client.post(&self.url).json(&body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

/// `GET <base>/api/messages` as `(id, message)` pairs, or `None` if it does not answer 200 with
/// a list. `base` is a node's URL (`http://127.0.0.1:<port>`) or a proxy's route to one.
pub async fn try_list(client: &reqwest::Client, base: &str) -> Option<Vec<(u64, String)>> {
    let response = client
        .get(format!("{base}/api/messages"))
        .send()
        .await
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["messages"]
        .as_array()?
        .iter()
        .map(|m| Some((m["id"].as_u64()?, m["message"].as_str()?.to_owned())))
        .collect()
}

/// The entry for the secondary at `address` in the master's `/api/health`.
pub fn secondary_health<'a>(master_health: &'a Value, address: &str) -> Option<&'a Value> {
    master_health["secondaries"]
        .as_array()?
        .iter()
        .find(|s| s["address"] == address)
}

impl Drop for Cluster {
    /// When a test fails, point at the logs and show their last lines: the processes are gone
    /// by the time anyone looks, the log files are not.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("\n===== cluster logs in {} =====", self.dir.display());
        // In-process nodes share one log: it is shown once.
        let mut shown = Vec::new();
        for node in self.nodes() {
            if shown.contains(&node.log_path()) {
                continue;
            }
            shown.push(node.log_path());
            eprintln!("----- {} ({}) -----", node.name, node.log_path().display());
            eprintln!("{}", process::tail(&node.log(), 25));
        }
    }
}
