//! The docker-compose stack as a user runs it: what it publishes and how, appends with every
//! write concern through nginx and through each node's own port, a stopped secondary (w=2 still
//! commits, w=3 answers 500 after the configured timeout, the master's health shows it, it
//! catches up when started), and a master restarted, then killed with SIGKILL and started again,
//! without losing anything it acknowledged.
//!
//! The failover stack (docker-compose.failover.yml) as a user runs it: three `replog` nodes
//! elect a master through etcd, take appends through nginx and each node, and when the master is
//! killed another node takes over within the lease's TTL and a few seconds without losing an
//! acknowledged append; the old master, started again, rejoins as a secondary and catches up.
//!
//! The TLS variant (docker-compose.yml with docker-compose.tls.yml): every node's port speaks
//! HTTPS only, with the certificates the `certs` service made at the first start; replication
//! asks for the master's client certificate; nginx reaches every node over verified TLS, so
//! appends through nginx and through each node commit everywhere as in the plain stack; nginx
//! serves HTTPS on its TLS port as well.
//!
//! The failover stack with its TLS file (docker-compose.failover.tls.yml): the same failover as
//! above, with every node's port speaking only verified HTTPS, the replication links between the
//! nodes asking for a client certificate of the stack's CA, appends forwarded over TLS, and nginx
//! reaching the nodes over TLS and serving HTTPS itself.
//!
//! Runs against the stack `scripts/test-docker` brings up: `REPLOG_BASE_URL` is its page through
//! nginx and `REPLOG_COMPOSE` its compose command (used to stop, start and kill services and to
//! find their containers and published ports). Skips when `REPLOG_BASE_URL` is not set.
//! `REPLOG_STACK` says which stack runs (`failover`, `failover-tls`, `tls`, or the default one
//! otherwise): only that stack's test runs.

use browser_tests::run_tag;
use cluster_tests::compose::{docker, docker_status, running_stack, Compose};
use cluster_tests::{try_list, wait_for, wait_until, StatusCode, REPLICATION_FAILED};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The services of docker-compose.yml that run a node, and the port each listens on.
const NODES: [(&str, u16); 3] = [
    ("master", 8000),
    ("secondary-1", 8001),
    ("secondary-2", 8002),
];
const SECONDARIES: [&str; 2] = ["secondary-1", "secondary-2"];
/// Every service of docker-compose.yml.
const SERVICES: [&str; 4] = ["master", "secondary-1", "secondary-2", "nginx"];
/// The secondaries' replication port, which stays on the compose network.
const REPLICATION_PORT: &str = "50051";

/// Which stack runs: `failover` for docker-compose.failover.yml, `failover-tls` for it with
/// docker-compose.failover.tls.yml, `tls` for docker-compose.yml with docker-compose.tls.yml,
/// anything else (or unset) for docker-compose.yml.
const STACK_ENV: &str = "REPLOG_STACK";

type List = Vec<(u64, String)>;

/// The running stack's name ([`STACK_ENV`]): `failover`, `failover-tls`, `tls` or `default`.
fn stack_kind() -> &'static str {
    match std::env::var(STACK_ENV).as_deref().map(str::trim) {
        Ok("failover") => "failover",
        Ok("failover-tls") => "failover-tls",
        Ok("tls") => "tls",
        _ => "default",
    }
}

/// The running stack's page and compose command when `test`, which is for the stack `kind`,
/// runs ([`running_stack`]); says why not when it does not.
fn stack_for(test: &str, kind: &str) -> Option<(String, Compose)> {
    let stack = running_stack(test)?;
    let running = stack_kind();
    if running != kind {
        eprintln!("SKIPPED {test}: {STACK_ENV} says the {running} stack runs");
        return None;
    }
    Some(stack)
}

/// `<scheme>://<host>:<port>` where this host reaches `service`'s container port `port`:
/// `https` when `tls`.
async fn published_url(compose: &Compose, service: &str, port: u16, tls: bool) -> String {
    let url = compose.published_url(service, port).await;
    if tls {
        url.replacen("http://", "https://", 1)
    } else {
        url
    }
}

/// An HTTP client without idle connections: a restarted container must not get a request on a
/// connection to the one before it. With `ca`, it trusts only that CA for `https://`.
fn http_client(ca: Option<&Path>) -> reqwest::Client {
    cluster_tests::cluster::http_client_builder(ca)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// `POST <base>/api/messages` with `{"message", "w"}`: the status and the JSON body.
async fn append(http: &reqwest::Client, base: &str, message: &str, w: u64) -> (StatusCode, Value) {
    let url = format!("{base}/api/messages");
    let response = http
        .post(&url)
        .json(&json!({ "message": message, "w": w }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} {message:?}: {e}"));
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The value of `name` in the environment of `service`'s container.
async fn container_env(compose: &Compose, service: &str, name: &str) -> String {
    let id = compose.container(service).await;
    let env = docker(&[
        "inspect",
        "-f",
        "{{range .Config.Env}}{{println .}}{{end}}",
        &id,
    ])
    .await;
    let prefix = format!("{name}=");
    env.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} in {service}'s env:\n{env}"))
}

/// The running stack, and what this test appended to it.
struct Stack {
    compose: Compose,
    http: reqwest::Client,
    /// The page through nginx.
    nginx: String,
    /// Each node's service name and its URL on this host, the master first.
    nodes: Vec<(&'static str, String)>,
    /// Marks this run's messages: the stack's log may hold earlier runs'.
    tag: String,
    /// `(id, message)` of every append answered 200.
    acked: List,
    /// Messages of appends answered with an error: never to be listed.
    refused: Vec<String>,
}

impl Stack {
    /// The stack, its nodes reached over HTTPS trusting only `ca` when given.
    async fn new(compose: Compose, nginx: String, ca: Option<&Path>) -> Stack {
        let mut nodes = Vec::new();
        for (name, port) in NODES {
            let url = published_url(&compose, name, port, ca.is_some()).await;
            nodes.push((name, url));
        }
        Stack {
            compose,
            http: http_client(ca),
            nginx,
            nodes,
            tag: run_tag(),
            acked: Vec::new(),
            refused: Vec::new(),
        }
    }

    fn url(&self, node: &str) -> String {
        self.nodes
            .iter()
            .find(|(name, _)| *name == node)
            .map(|(_, url)| url.clone())
            .unwrap_or_else(|| panic!("no node {node}"))
    }

    fn message(&self, text: &str) -> String {
        format!("{text} [{}]", self.tag)
    }

    /// `POST <base>/api/messages` with `{"message", "w"}`: the status and the JSON body.
    async fn append(&self, base: &str, message: &str, w: u64) -> (StatusCode, Value) {
        append(&self.http, base, message, w).await
    }

    /// An append that must answer 200 with an id; it is then acknowledged.
    async fn append_ok(&mut self, base: &str, text: &str, w: u64) {
        let message = self.message(text);
        let (status, body) = self.append(base, &message, w).await;
        let id = body["id"].as_u64().filter(|_| status == StatusCode::OK);
        let id = id.unwrap_or_else(|| panic!("POST {base} {message:?} w={w}: {status} {body}"));
        println!("ok   POST {base}/api/messages {text:?} w={w}: 200, id {id}");
        self.acked.push((id, message));
    }

    /// `GET <base>/api/messages` as `(id, message)` pairs; `None` if it does not answer 200
    /// with a list.
    async fn list(&self, base: &str) -> Option<List> {
        try_list(&self.http, base).await
    }

    /// Every node lists exactly the master's log, which holds every acknowledged append and no
    /// refused one.
    async fn all_hold(&self) -> bool {
        let Some(master) = self.list(&self.url("master")).await else {
            return false;
        };
        for secondary in SECONDARIES {
            if self.list(&self.url(secondary)).await.as_ref() != Some(&master) {
                return false;
            }
        }
        let listed: HashSet<&(u64, String)> = master.iter().collect();
        self.acked.iter().all(|entry| listed.contains(entry))
            && !master.iter().any(|(_, m)| self.refused.contains(m))
    }

    /// The status of `secondary` in the master's `/api/health`.
    async fn status_of(&self, secondary: &str) -> Option<String> {
        let health: Value = self
            .http
            .get(format!("{}/api/health", self.url("master")))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let prefix = format!("{secondary}:");
        health["secondaries"].as_array()?.iter().find(|s| {
            s["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(&prefix))
        })?["status"]
            .as_str()
            .map(str::to_owned)
    }

    /// Docker's view of a service's container: its health, or its state if it has no health
    /// check.
    async fn container_health(&self, service: &str) -> String {
        let id = self.compose.container(service).await;
        let format = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}";
        docker(&["inspect", "-f", format, &id])
            .await
            .trim()
            .to_owned()
    }

    /// `GET url`, which must answer 200.
    async fn get_ok(&self, url: &str) -> reqwest::Response {
        get_ok(&self.http, url).await
    }
}

/// `GET url`, which must answer 200.
async fn get_ok(http: &reqwest::Client, url: &str) -> reqwest::Response {
    let response = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response
}

/// Waits until `condition` holds and says how long that took.
async fn waited<F, Fut>(timeout: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    wait_until(timeout, what, condition).await;
    println!("ok   {what} ({:.1} s)", started.elapsed().as_secs_f64());
}

async fn wait_all_hold(stack: &Stack, timeout: Duration, what: &str) {
    waited(timeout, what, || stack.all_hold()).await;
}

async fn wait_both_healthy(stack: &Stack) {
    for secondary in SECONDARIES {
        wait_status(stack, secondary, "healthy", true, Duration::from_secs(20)).await;
    }
}

/// Waits until the master's `/api/health` shows `secondary` with `status` (`is`), or with
/// another one (`!is`).
async fn wait_status(stack: &Stack, secondary: &str, status: &str, is: bool, timeout: Duration) {
    let not = if is { "" } else { "not " };
    let what = format!("the master's /api/health shows {secondary} {not}{status}");
    waited(timeout, &what, || async {
        let shown = stack.status_of(secondary).await;
        shown.is_some_and(|shown| (shown == status) == is)
    })
    .await;
}

async fn wait_container_healthy(stack: &Stack, service: &str, what: &str) {
    waited(Duration::from_secs(60), what, || async {
        stack.container_health(service).await == "healthy"
    })
    .await;
}

#[tokio::test]
async fn compose_stack_serves_replicates_and_survives_restarts() {
    let test = "compose_stack_serves_replicates_and_survives_restarts";
    let Some((nginx, compose)) = stack_for(test, "default") else {
        return;
    };
    let mut stack = Stack::new(compose, nginx, None).await;
    serves_what_it_publishes(&stack).await;
    appends_through_nginx_and_every_node(&mut stack).await;
    a_stopped_secondary(&mut stack).await;
    master_restart_and_sigkill(&mut stack).await;
}

#[tokio::test]
async fn tls_stack_speaks_only_verified_tls() {
    let test = "tls_stack_speaks_only_verified_tls";
    let Some((nginx, compose)) = stack_for(test, "tls") else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = stack_ca(&compose, "master", dir.path()).await;
    let mut stack = Stack::new(compose, nginx, Some(&ca)).await;
    nodes_speak_only_verified_tls(&stack.http, &stack.nodes).await;
    appends_through_nginx_and_every_node(&mut stack).await;
    replication_asks_for_a_client_certificate(&stack.compose, "master", &SECONDARIES).await;
    let url = nginx_serves_https(&stack.compose, &stack.http).await;
    stack.append_ok(&url, "via nginx over HTTPS w=3", 3).await;
    let what = format!(
        "every node lists the same {} acknowledged messages",
        stack.acked.len()
    );
    wait_all_hold(&stack, Duration::from_secs(20), &what).await;
    nginx_reloads_renewed_certificates(&stack, &url, dir.path()).await;
}

/// nginx reloads its certificate when the files change, without a restart or a signal: once the
/// `certs` volume's nginx.pem and nginx-key.pem are replaced by ones of a new CA, its TLS port
/// (`https`) answers a client that trusts only the new CA and refuses one that trusts only the
/// stack's; with the stack's files put back, the other way round again.
async fn nginx_reloads_renewed_certificates(stack: &Stack, https: &str, dir: &Path) {
    let renew = "set -e; rm -rf /tmp/renewed; replog-certs --out=/tmp/renewed --node=nginx >&2; \
                 cp -p /certs/nginx.pem /certs/nginx.pem.kept; \
                 cp -p /certs/nginx-key.pem /certs/nginx-key.pem.kept; \
                 cp /tmp/renewed/nginx.pem /tmp/renewed/nginx-key.pem /certs/; \
                 cat /tmp/renewed/ca.pem";
    let pem = in_certs_service(&stack.compose, renew).await;
    assert!(pem.contains("BEGIN CERTIFICATE"), "the new CA: {pem}");
    let renewed_ca = dir.join("renewed-ca.pem");
    std::fs::write(&renewed_ca, pem).expect("write renewed-ca.pem");
    println!("ok   nginx.pem and nginx-key.pem replaced in the certs volume by ones of a new CA");
    let renewed = http_client(Some(&renewed_ca));
    let what = "nginx's TLS port serves the new certificate and refuses the old CA's clients";
    nginx_serves_only_for(https, &renewed, &stack.http, what).await;

    let restore = "set -e; mv /certs/nginx.pem.kept /certs/nginx.pem; \
                   mv /certs/nginx-key.pem.kept /certs/nginx-key.pem";
    in_certs_service(&stack.compose, restore).await;
    let what = "with the stack's files back, nginx's TLS port serves its certificate again";
    nginx_serves_only_for(https, &stack.http, &renewed, what).await;
}

/// Waits until nginx's TLS port answers `trusting` and refuses `refused`.
async fn nginx_serves_only_for(
    https: &str,
    trusting: &reqwest::Client,
    refused: &reqwest::Client,
    what: &str,
) {
    let url = format!("{https}/");
    waited(Duration::from_secs(20), what, || async {
        let answer = trusting.get(&url).send().await;
        answer.is_ok_and(|answer| answer.status() == StatusCode::OK)
            && refused.get(&url).send().await.is_err()
    })
    .await;
}

/// The standard output of `script` (sh) in a one-off container of the `certs` service, which
/// mounts the `certs` volume writable and has replog-certs.
async fn in_certs_service(compose: &Compose, script: &str) -> String {
    let args = [
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "--entrypoint",
        "sh",
        "certs",
        "-c",
        script,
    ];
    compose.output(&args).await
}

/// nginx's TLS port (8443 in the container) serves the page with its certificate from the
/// stack's CA; its URL on this host, for appends through it.
async fn nginx_serves_https(compose: &Compose, http: &reqwest::Client) -> String {
    let url = published_url(compose, "nginx", 8443, true).await;
    let page = get_ok(http, &format!("{url}/")).await;
    let page = page.text().await.expect("the page");
    assert!(page.contains("<title>replog</title>"), "the page: {page}");
    println!("ok   nginx serves the page over HTTPS ({url}), verified against the CA");
    url
}

/// The stack's CA certificate, as the `certs` service wrote it into the `certs` volume (read in
/// `service`'s container), copied into `dir`.
async fn stack_ca(compose: &Compose, service: &str, dir: &Path) -> PathBuf {
    let container = compose.container(service).await;
    let pem = docker(&["exec", &container, "cat", "/certs/ca.pem"]).await;
    assert!(pem.contains("BEGIN CERTIFICATE"), "/certs/ca.pem: {pem}");
    let path = dir.join("ca.pem");
    std::fs::write(&path, pem).expect("write ca.pem");
    path
}

/// Every node answers over HTTPS with a certificate that chains to the stack's CA and names
/// 127.0.0.1; plain HTTP and a client that does not trust the CA get no answer.
async fn nodes_speak_only_verified_tls(http: &reqwest::Client, nodes: &[(&str, String)]) {
    let plain = http_client(None);
    for (name, url) in nodes {
        assert!(url.starts_with("https://"), "{name}: {url}");
        get_ok(http, &format!("{url}/health")).await;
        let http_url = format!("{}/health", url.replacen("https://", "http://", 1));
        let answer = plain.get(&http_url).send().await;
        assert!(
            answer.is_err(),
            "{name} answered plain HTTP on its TLS port: {answer:?}"
        );
        let untrusting = plain.get(format!("{url}/health")).send().await;
        assert!(
            untrusting.is_err(),
            "{name} was trusted by a client without the stack's CA: {untrusting:?}"
        );
        println!(
            "ok   {name} ({url}) answers HTTPS verified against the stack's CA, not plain HTTP"
        );
    }
}

/// `docker exec CONTAINER ARGS...`: whether it exited 0, and what it wrote.
async fn exec_status(container: &str, args: &[&str]) -> (bool, String) {
    let mut exec = vec!["exec", container];
    exec.extend_from_slice(args);
    docker_status(&exec).await
}

/// A secondary's replication port takes a TLS client only with a certificate of the stack's CA:
/// from the master's container, curl without a client certificate is refused, curl with the
/// master's gets an HTTP/2 answer.
async fn replication_asks_for_a_client_certificate(
    compose: &Compose,
    master: &str,
    secondaries: &[&str],
) {
    let container = compose.container(master).await;
    let (cert, key) = (
        format!("/certs/{master}.pem"),
        format!("/certs/{master}-key.pem"),
    );
    for secondary in secondaries {
        let url = format!("https://{secondary}:{REPLICATION_PORT}/");
        let base = [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "--http2",
        ];
        let mut without = base.to_vec();
        without.extend(["--cacert", "/certs/ca.pem", &url]);
        let (ok, refused) = exec_status(&container, &without).await;
        assert!(
            !ok,
            "{url} answered a client without a certificate: {refused}"
        );
        let mut with = without.clone();
        with.extend(["--cert", &cert, "--key", &key]);
        let (ok, said) = exec_status(&container, &with).await;
        assert!(ok, "{url} refused {master}'s certificate: {said}");
        let refused = refused.lines().next().unwrap_or_default().trim();
        println!(
            "ok   {secondary}'s replication port refuses a client without a certificate \
             ({refused}) and answers {master}'s"
        );
    }
}

/// Each node answers on its port, nginx serves the client and its wasm, only the HTTP ports
/// are published and only on 127.0.0.1, and no service runs as root.
async fn serves_what_it_publishes(stack: &Stack) {
    for (name, url) in &stack.nodes {
        stack.get_ok(&format!("{url}/health")).await;
        println!("ok   GET /health on {name} ({url}) answers 200");
    }
    let page = stack.get_ok(&format!("{}/", stack.nginx)).await;
    let page = page.text().await.expect("the page");
    assert!(page.contains("<title>replog</title>"), "the page: {page}");
    println!("ok   nginx serves the client at /");
    let wasm = page
        .split(['"', '\'', '/'])
        .find(|part| part.ends_with(".wasm"))
        .unwrap_or_else(|| panic!("no .wasm named in the page: {page}"));
    let response = stack.get_ok(&format!("{}/{wasm}", stack.nginx)).await;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/wasm"),
        "{wasm} is served as {content_type:?}"
    );
    println!("ok   nginx serves the wasm ({wasm}) as application/wasm");

    for service in SERVICES {
        let id = stack.compose.container(service).await;
        let ports = docker(&["port", &id]).await;
        assert!(!ports.trim().is_empty(), "{service} publishes no port");
        for line in ports.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.contains("127.0.0.1"),
                "{service} publishes beyond 127.0.0.1: {line}"
            );
        }
        if SECONDARIES.contains(&service) {
            assert!(
                !ports.contains(REPLICATION_PORT),
                "{service} publishes its replication port: {ports}"
            );
        }
        let uid = docker(&["exec", &id, "id", "-u"]).await;
        assert_ne!(uid.trim(), "0", "{service} runs as root");
    }
    println!(
        "ok   published ports bind 127.0.0.1 only, the secondaries publish only their HTTP \
         port ({REPLICATION_PORT} stays on the compose network), no service runs as root"
    );
}

/// w=1, 2 and 3 through nginx, through the master and forwarded by each secondary; every node
/// lists them all, and nginx's routes list what the nodes list.
async fn appends_through_nginx_and_every_node(stack: &mut Stack) {
    wait_both_healthy(stack).await;
    let nginx = stack.nginx.clone();
    for w in 1..=3 {
        stack
            .append_ok(&nginx, &format!("via nginx w={w}"), w)
            .await;
    }
    let master = stack.url("master");
    stack.append_ok(&master, "via master w=3", 3).await;
    let secondary_1 = stack.url("secondary-1");
    stack
        .append_ok(&secondary_1, "via secondary-1 w=2 (forwarded)", 2)
        .await;
    let secondary_2 = stack.url("secondary-2");
    stack
        .append_ok(&secondary_2, "via secondary-2 w=1 (forwarded)", 1)
        .await;
    stack
        .append_ok(
            &format!("{nginx}/node/secondary-1"),
            "via nginx /node/secondary-1 w=3",
            3,
        )
        .await;
    let what = format!(
        "every node lists the same {} acknowledged messages",
        stack.acked.len()
    );
    wait_all_hold(stack, Duration::from_secs(20), &what).await;

    assert_eq!(
        stack.list(&nginx).await,
        stack.list(&master).await,
        "nginx's /api/messages is the master's"
    );
    for (name, url) in &stack.nodes {
        assert_eq!(
            stack.list(&format!("{nginx}/node/{name}")).await,
            stack.list(url).await,
            "nginx's /node/{name}/api/messages is {name}'s"
        );
    }
    println!("ok   nginx's /api/messages and /node/<name>/api/messages list what the nodes list");
}

/// `REPLICATION_TIMEOUT_SECONDS` of the master's container.
async fn replication_timeout(stack: &Stack) -> Duration {
    let name = "REPLICATION_TIMEOUT_SECONDS";
    let value = container_env(&stack.compose, "master", name).await;
    let seconds: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("the master's {name} is {value:?}"));
    Duration::from_secs_f64(seconds)
}

/// secondary-2 stopped: w=2 commits; w=3 answers 500 after the replication timeout and is
/// listed nowhere; the master's health shows secondary-2 unhealthy and secondary-1 healthy.
/// Started again, it catches up and w=3 commits.
async fn a_stopped_secondary(stack: &mut Stack) {
    let (nginx, master) = (stack.nginx.clone(), stack.url("master"));
    let timeout = replication_timeout(stack).await;
    stack.compose.run(&["stop", "secondary-2"]).await;
    println!("ok   stopped secondary-2");
    stack
        .append_ok(&master, "w=2 while secondary-2 is stopped", 2)
        .await;

    let refused = stack.message("w=3 while secondary-2 is stopped");
    stack.refused.push(refused.clone());
    let started = Instant::now();
    let (status, body) = stack.append(&master, &refused, 3).await;
    let took = started.elapsed();
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some(REPLICATION_FAILED)),
        "w=3 with secondary-2 stopped: {body}"
    );
    let late = took.as_secs_f64() - timeout.as_secs_f64();
    assert!(
        (-0.2..5.0).contains(&late),
        "the 500 came after {took:?}, not after about {timeout:?} (REPLICATION_TIMEOUT_SECONDS)"
    );
    println!("ok   w=3 answers 500 {REPLICATION_FAILED:?} after {took:.1?} (timeout {timeout:?})");

    let (secondary_2, quickly) = ("secondary-2", Duration::from_secs(15));
    wait_status(stack, secondary_2, "healthy", false, quickly).await;
    wait_status(stack, secondary_2, "unhealthy", true, quickly).await;
    assert_eq!(
        stack.status_of("secondary-1").await.as_deref(),
        Some("healthy"),
        "secondary-1 in the master's /api/health"
    );
    for node in ["master", "secondary-1"] {
        let list = stack.list(&stack.url(node)).await.expect("a list");
        assert!(
            !list.iter().any(|(_, m)| *m == refused),
            "{node} lists the refused append"
        );
    }
    println!("ok   secondary-1 stays healthy; the refused append is listed nowhere");
    stack
        .append_ok(&nginx, "w=1 through nginx while secondary-2 is stopped", 1)
        .await;

    stack.compose.run(&["start", "secondary-2"]).await;
    println!("ok   started secondary-2");
    let secondary_2 = stack.url("secondary-2");
    waited(
        Duration::from_secs(60),
        "secondary-2 caught up: its list equals the master's",
        || async {
            let theirs = stack.list(&secondary_2).await;
            theirs.is_some() && theirs == stack.list(&master).await
        },
    )
    .await;
    wait_status(
        stack,
        "secondary-2",
        "healthy",
        true,
        Duration::from_secs(30),
    )
    .await;
    stack
        .append_ok(&nginx, "w=3 after secondary-2 returned", 3)
        .await;
    wait_all_hold(
        stack,
        Duration::from_secs(20),
        "every node lists every acknowledged message, none refused",
    )
    .await;
}

/// The master restarted, then killed with SIGKILL right after w=1 appends and started: every
/// node still lists everything acknowledged, and appends go on.
async fn master_restart_and_sigkill(stack: &mut Stack) {
    let (nginx, master) = (stack.nginx.clone(), stack.url("master"));
    stack.compose.run(&["restart", "master"]).await;
    wait_container_healthy(stack, "master", "the master is healthy after a restart").await;
    wait_all_hold(
        stack,
        Duration::from_secs(30),
        "nothing acknowledged lost after the restart",
    )
    .await;
    wait_both_healthy(stack).await;
    stack
        .append_ok(&nginx, "w=3 after the master's restart", 3)
        .await;

    for i in 1..=5 {
        stack
            .append_ok(&master, &format!("w=1 just before SIGKILL #{i}"), 1)
            .await;
    }
    stack.compose.run(&["kill", "-s", "KILL", "master"]).await;
    let id = stack.compose.container("master").await;
    let running = docker(&["inspect", "-f", "{{.State.Running}}", &id]).await;
    assert_eq!(running.trim(), "false", "the master runs after SIGKILL");
    println!("ok   the master is down after SIGKILL");
    stack.compose.run(&["start", "master"]).await;
    wait_container_healthy(
        stack,
        "master",
        "the master is healthy after SIGKILL and start",
    )
    .await;
    wait_all_hold(
        stack,
        Duration::from_secs(30),
        "nothing acknowledged lost after SIGKILL",
    )
    .await;
    wait_both_healthy(stack).await;
    stack.append_ok(&nginx, "w=3 after SIGKILL", 3).await;
    let what = format!(
        "every node lists the same {} acknowledged messages, none refused",
        stack.acked.len()
    );
    wait_all_hold(stack, Duration::from_secs(20), &what).await;
    let listed = stack.list(&master).await.map_or(0, |list| list.len());
    println!(
        "the master lists {listed} messages; this run's {} were acknowledged",
        stack.acked.len()
    );
}

/// The services of docker-compose.failover.yml that run a node; each listens on
/// [`FAILOVER_HTTP_PORT`] in its container.
const FAILOVER_NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const FAILOVER_HTTP_PORT: u16 = 8000;
/// How long the stack may take to elect its first master, and a restarted node to rejoin.
const ELECTION_AT_START: Duration = Duration::from_secs(60);
/// Beyond the lease's TTL: how long a failover may take once the dead master's lease expired
/// (the survivors see the leader key go, elect, and the new master recovers with a majority).
const FAILOVER_MARGIN: Duration = Duration::from_secs(7);

/// What a failover node's `/api/health` says of its role and who leads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leadership {
    role: String,
    /// The master this node knows of, if any.
    master: Option<String>,
    term: u64,
}

/// The running failover stack, and what this test appended to it.
struct Failover {
    compose: Compose,
    http: reqwest::Client,
    /// The page through nginx.
    nginx: String,
    /// Each node's service name and its URL on this host.
    nodes: Vec<(&'static str, String)>,
    /// Marks this run's messages: the stack's logs may hold earlier runs'.
    tag: String,
    /// `(id, message)` of every append answered 200; all were appended with w >= 2.
    acked: List,
}

impl Failover {
    /// The stack, its nodes reached over HTTPS trusting only `ca` when given.
    async fn new(compose: Compose, nginx: String, ca: Option<&Path>) -> Failover {
        let mut nodes = Vec::new();
        for name in FAILOVER_NODES {
            let url = published_url(&compose, name, FAILOVER_HTTP_PORT, ca.is_some()).await;
            nodes.push((name, url));
        }
        Failover {
            compose,
            http: http_client(ca),
            nginx,
            nodes,
            tag: run_tag(),
            acked: Vec::new(),
        }
    }

    fn url(&self, node: &str) -> String {
        self.nodes
            .iter()
            .find(|(name, _)| *name == node)
            .map(|(_, url)| url.clone())
            .unwrap_or_else(|| panic!("no node {node}"))
    }

    fn message(&self, text: &str) -> String {
        format!("{text} [{}]", self.tag)
    }

    /// An append through `base` (nginx or a node) that must answer 200 with an id.
    async fn append_ok(&mut self, base: &str, text: &str, w: u64) {
        let message = self.message(text);
        let (status, body) = append(&self.http, base, &message, w).await;
        let id = body["id"].as_u64().filter(|_| status == StatusCode::OK);
        let id = id.unwrap_or_else(|| panic!("POST {base} {message:?} w={w}: {status} {body}"));
        println!("ok   POST {base}/api/messages {text:?} w={w}: 200, id {id}");
        self.acked.push((id, message));
    }

    /// Appends through `base` until one answers 200 (each attempt a new message; those that
    /// fail may or may not be in the log, and are not checked); fails after `timeout`.
    async fn append_until_ok(&mut self, base: &str, text: &str, w: u64, timeout: Duration) {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let message = self.message(&format!("{text} (attempt {attempt})"));
            let (status, body) = append(&self.http, base, &message, w).await;
            if let Some(id) = body["id"].as_u64().filter(|_| status == StatusCode::OK) {
                println!(
                    "ok   POST {base}/api/messages {text:?} w={w}: 200, id {id}, at attempt \
                     {attempt} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                self.acked.push((id, message));
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "POST {base} {text:?} w={w}: no 200 within {timeout:?}; last {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `GET <node>/api/health` as the node's role and who it says leads; `None` if it does not
    /// answer with one.
    async fn leadership(&self, node: &str) -> Option<Leadership> {
        let health: Value = self
            .http
            .get(format!("{}/api/health", self.url(node)))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let leadership = &health["leadership"];
        Some(Leadership {
            role: health["role"].as_str()?.to_owned(),
            master: leadership["master"].as_str().map(str::to_owned),
            term: leadership["term"].as_u64()?,
        })
    }

    /// The master and its term, once one of `nodes` says it is master in a term above `above`
    /// and every other of `nodes` is its secondary in that term.
    async fn agreed_master(
        &self,
        nodes: &[&'static str],
        above: u64,
    ) -> Option<(&'static str, u64)> {
        let mut views = Vec::new();
        for &node in nodes {
            views.push((node, self.leadership(node).await?));
        }
        let (master, term) = views.iter().find_map(|(node, view)| {
            (view.role == "master" && view.master.as_deref() == Some(*node) && view.term > above)
                .then_some((*node, view.term))
        })?;
        let all_follow = views.iter().all(|(node, view)| {
            view.master.as_deref() == Some(master)
                && view.term == term
                && (*node == master || view.role == "secondary")
        });
        all_follow.then_some((master, term))
    }

    /// Every one of `nodes` lists the same log, which holds every acknowledged append.
    async fn all_hold(&self, nodes: &[&str]) -> bool {
        let mut first: Option<List> = None;
        for node in nodes {
            let Some(list) = try_list(&self.http, &self.url(node)).await else {
                return false;
            };
            match &first {
                Some(first) if *first != list => return false,
                Some(_) => {}
                None => first = Some(list),
            }
        }
        let Some(list) = first else {
            return false;
        };
        let listed: HashSet<&(u64, String)> = list.iter().collect();
        self.acked.iter().all(|entry| listed.contains(entry))
    }

    async fn wait_all_hold(&self, nodes: &[&str], timeout: Duration) {
        let what = format!(
            "{} list the same log with all {} acknowledged appends",
            nodes.join(", "),
            self.acked.len()
        );
        waited(timeout, &what, || self.all_hold(nodes)).await;
    }
}

#[tokio::test]
async fn failover_stack_elects_fails_over_and_rejoins() {
    let test = "failover_stack_elects_fails_over_and_rejoins";
    let Some((nginx, compose)) = stack_for(test, "failover") else {
        return;
    };
    let mut stack = Failover::new(compose, nginx, None).await;
    nginx_names_and_routes_the_nodes(&stack).await;
    let (first, first_term) = first_election_and_appends(&mut stack).await;
    let (master, term) = the_master_killed(&mut stack, first, first_term).await;
    the_old_master_rejoins(&mut stack, first, master, term).await;
}

#[tokio::test]
async fn failover_tls_stack_elects_and_fails_over_over_mutual_tls() {
    let test = "failover_tls_stack_elects_and_fails_over_over_mutual_tls";
    let Some((nginx, compose)) = stack_for(test, "failover-tls") else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = stack_ca(&compose, "node-a", dir.path()).await;
    let mut stack = Failover::new(compose, nginx, Some(&ca)).await;
    nodes_speak_only_verified_tls(&stack.http, &stack.nodes).await;
    nginx_names_and_routes_the_nodes(&stack).await;
    let (first, first_term) = first_election_and_appends(&mut stack).await;
    let followers: Vec<&str> = FAILOVER_NODES.into_iter().filter(|n| *n != first).collect();
    replication_asks_for_a_client_certificate(&stack.compose, first, &followers).await;
    let https = nginx_serves_https(&stack.compose, &stack.http).await;
    stack.append_ok(&https, "via nginx over HTTPS w=3", 3).await;
    stack
        .wait_all_hold(&FAILOVER_NODES, Duration::from_secs(20))
        .await;
    let (master, term) = the_master_killed(&mut stack, first, first_term).await;
    the_old_master_rejoins(&mut stack, first, master, term).await;
}

/// nginx serves the node names for the page and routes `/node/<name>/` to each node.
async fn nginx_names_and_routes_the_nodes(stack: &Failover) {
    let url = format!("{}/nodes.json", stack.nginx);
    let response = stack
        .http
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    let names: Value = response.json().await.expect("JSON from /nodes.json");
    assert_eq!(names, json!(FAILOVER_NODES), "GET {url}");
    println!("ok   nginx serves /nodes.json: {names}");
    for node in FAILOVER_NODES {
        let url = format!("{}/node/{node}/api/health", stack.nginx);
        let health: Value = wait_for(Duration::from_secs(20), format!("GET {url}"), || async {
            let response = stack.http.get(&url).send().await.ok()?;
            response.json::<Value>().await.ok()
        })
        .await;
        assert_eq!(
            health["leadership"]["node"].as_str(),
            Some(node),
            "GET {url}: {health}"
        );
    }
    println!("ok   nginx's /node/<name>/ reaches each node (its health names it)");
}

/// One node is elected and the others follow it; w=2 appends through nginx, the master and
/// each secondary (forwarded) are acknowledged and listed by every node.
async fn first_election_and_appends(stack: &mut Failover) -> (&'static str, u64) {
    let what = "one node is master and the other two follow it";
    let started = Instant::now();
    let (master, term) = wait_for(ELECTION_AT_START, what, || {
        stack.agreed_master(&FAILOVER_NODES, 0)
    })
    .await;
    println!(
        "ok   {master} is master in term {term}, the others follow it ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let nginx = stack.nginx.clone();
    stack.append_ok(&nginx, "via nginx w=2", 2).await;
    for node in FAILOVER_NODES {
        let how = if node == master { "" } else { " (forwarded)" };
        let url = stack.url(node);
        stack
            .append_ok(&url, &format!("via {node} w=2{how}"), 2)
            .await;
    }
    stack.append_ok(&nginx, "via nginx w=3", 3).await;
    stack
        .wait_all_hold(&FAILOVER_NODES, Duration::from_secs(20))
        .await;
    (master, term)
}

/// The master killed (SIGKILL): within the lease's TTL and a few seconds another node is master
/// in a higher term; appends through nginx succeed again; both survivors list every
/// acknowledged append.
async fn the_master_killed(
    stack: &mut Failover,
    old: &'static str,
    old_term: u64,
) -> (&'static str, u64) {
    let ttl_ms = container_env(&stack.compose, old, "FAILOVER_TTL_MS").await;
    let ttl = Duration::from_millis(
        ttl_ms
            .parse()
            .unwrap_or_else(|_| panic!("{old}'s FAILOVER_TTL_MS is {ttl_ms:?}")),
    );
    let survivors: Vec<&'static str> = FAILOVER_NODES.into_iter().filter(|n| *n != old).collect();

    let killed = Instant::now();
    stack.compose.run(&["kill", old]).await;
    let id = stack.compose.container(old).await;
    let running = docker(&["inspect", "-f", "{{.State.Running}}", &id]).await;
    assert_eq!(running.trim(), "false", "{old} runs after the kill");
    println!("ok   killed {old} (the master)");
    let deadline = ttl + FAILOVER_MARGIN;
    let what = format!("another node is master in a term above {old_term} within {deadline:?}");
    let (master, term) = wait_for(deadline.saturating_sub(killed.elapsed()), &what, || async {
        for &node in &survivors {
            let view = stack.leadership(node).await;
            if let Some(view) = view.filter(|v| {
                v.role == "master" && v.master.as_deref() == Some(node) && v.term > old_term
            }) {
                return Some((node, view.term));
            }
        }
        None
    })
    .await;
    println!(
        "ok   {master} took over in term {term}, {:.1} s after the kill (TTL {ttl:?})",
        killed.elapsed().as_secs_f64()
    );
    let what = format!("the survivors agree that {master} leads in term {term}");
    let agreed = wait_for(Duration::from_secs(10), &what, || {
        stack.agreed_master(&survivors, old_term)
    })
    .await;
    assert_eq!(agreed, (master, term), "the survivors' master");
    println!("ok   {what}");

    let nginx = stack.nginx.clone();
    stack
        .append_until_ok(
            &nginx,
            "via nginx w=2 after the failover",
            2,
            Duration::from_secs(20),
        )
        .await;
    for &node in &survivors {
        let url = stack.url(node);
        stack
            .append_ok(&url, &format!("via {node} w=2 after the failover"), 2)
            .await;
    }
    stack.append_ok(&nginx, "via nginx w=2 again", 2).await;
    stack
        .wait_all_hold(&survivors, Duration::from_secs(20))
        .await;
    (master, term)
}

/// The old master started again: it rejoins as a secondary of the new master in its term, lists
/// the same log, and takes part in w=3 appends.
async fn the_old_master_rejoins(
    stack: &mut Failover,
    stopped: &'static str,
    master: &'static str,
    term: u64,
) {
    stack.compose.run(&["start", stopped]).await;
    println!("ok   started {stopped}");
    let what = format!("{stopped} follows {master} in term {term} as a secondary");
    waited(ELECTION_AT_START, &what, || async {
        stack.leadership(stopped).await
            == Some(Leadership {
                role: "secondary".to_owned(),
                master: Some(master.to_owned()),
                term,
            })
    })
    .await;
    stack
        .wait_all_hold(&FAILOVER_NODES, Duration::from_secs(60))
        .await;
    let nginx = stack.nginx.clone();
    stack
        .append_ok(
            &nginx,
            &format!("via nginx w=3 after {stopped} rejoined"),
            3,
        )
        .await;
    let rejoined = stack.url(stopped);
    stack
        .append_ok(&rejoined, &format!("via {stopped} w=2 (forwarded)"), 2)
        .await;
    stack
        .wait_all_hold(&FAILOVER_NODES, Duration::from_secs(20))
        .await;
    let listed = try_list(&stack.http, &stack.url(master))
        .await
        .map_or(0, |list| list.len());
    println!(
        "{master} lists {listed} messages; this run's {} were acknowledged",
        stack.acked.len()
    );
}
