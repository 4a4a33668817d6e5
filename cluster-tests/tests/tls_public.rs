//! The public port over TLS (`PUBLIC_TLS`), with certificates made for the test (a CA, and per
//! node a certificate for `localhost` and `127.0.0.1`): real curl over HTTP/1.1 and HTTP/2, the
//! gRPC `Log` API with tonic's own TLS client, appends a secondary forwards to the master over
//! TLS, what a client without TLS or without the CA gets, certificate rotation on SIGHUP, and
//! settings that stop a node at start.

use cluster_tests::{
    assert_closed_by_the_request_timeout, free_ports, fresh_log_dir, run_to_exit, tls_settings,
    wait_for, wait_until, Binary, Cluster, MasterOpts, Node, SecondaryOpts, StatusCode,
};
use nix::sys::signal::Signal;
use replog_node::tls::testing::{self, TestCa, Validity};
use replog_node::tls::TlsArgs;
use replog_proto::v1::log_client::LogClient;
use replog_proto::v1::{AppendRequest, ListRequest};
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The names every node's certificate carries.
const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A CA and the certificate files of each node, under `dir`.
struct Certs {
    ca: TestCa,
    dir: PathBuf,
}

impl Certs {
    fn new(dir: &Path) -> Self {
        Self::of(dir, "certs", "replog test CA")
    }

    /// A CA named `ca` of its own, its files in `dir/name`.
    fn of(dir: &Path, name: &str, ca: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("the certificates' directory");
        Self {
            ca: TestCa::new(ca),
            dir,
        }
    }

    /// Writes a new certificate for `node` (over the one it had) and returns its DER.
    fn issue(&self, node: &str) -> (TlsArgs, Vec<u8>) {
        let issued = self.ca.issue(&NAMES, Validity::Current);
        let args = testing::write(&self.dir, node, &issued, self.ca.pem());
        (args, issued.der)
    }

    /// The CA's certificate as a file clients are given.
    fn ca_file(&self) -> PathBuf {
        let path = self.dir.join("ca.pem");
        std::fs::write(&path, self.ca.pem()).expect("write ca.pem");
        path
    }
}

/// A node's settings: its files, and `PUBLIC_TLS=true`.
fn settings(args: &TlsArgs) -> Vec<(String, String)> {
    tls_settings(&TlsArgs {
        public_tls: true,
        ..args.clone()
    })
}

/// A cluster of a master (with `master_env` besides) and `secondaries` secondaries, every one
/// serving TLS.
async fn start(secondaries: usize, master_env: &[(&str, &str)]) -> (Cluster, Certs, PathBuf) {
    let dir = fresh_log_dir();
    let certs = Certs::new(&dir);
    let ca = certs.ca_file();
    let opts = (1..=secondaries)
        .map(|i| SecondaryOpts::new().envs(&settings(&certs.issue(&format!("secondary-{i}")).0)))
        .collect();
    let master = MasterOpts::new()
        .envs(&settings(&certs.issue("master").0))
        .envs(master_env);
    let cluster = Cluster::builder()
        .secondaries(opts)
        .master(master)
        .log_dir(&dir)
        .https(&ca)
        .start()
        .await;
    (cluster, certs, ca)
}

/// Runs curl with `args` (no proxy, 10 s at most).
fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("curl runs")
}

/// Injected: every node with PUBLIC_TLS and its own certificate of one CA.
/// Checked: curl with `--cacert` appends and lists over HTTP/1.1 and over HTTP/2 (as curl
/// reports the version); an append made on a secondary, through the kit's HTTPS client and
/// through gRPC, is forwarded to the master over TLS and shows everywhere; tonic's TLS client
/// appends and lists on the master; plain HTTP to the port gets no answer; curl without the CA
/// refuses the certificate (exit 60); the node serves TLS clients afterwards.
#[tokio::test]
async fn the_public_port_serves_tls_to_curl_grpc_and_forwarded_appends() {
    let (cluster, _certs, ca) = start(2, &[]).await;
    let ca = ca.display().to_string();
    let base = cluster.master.url("/api/messages");
    for (flag, version, message) in [
        ("--http1.1", "1.1", "over http/1.1"),
        ("--http2", "2", "over h2"),
    ] {
        let body = format!(r#"{{"message":"{message}"}}"#);
        let out = curl(&[
            flag,
            "--cacert",
            &ca,
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "-w",
            "\n%{http_code} %{http_version}",
            &base,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.ends_with(&format!("\n200 {version}")),
            "curl {flag}: {}, stdout {stdout:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = curl(&[flag, "--cacert", &ca, &base]);
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.contains(message), "GET {flag}: {listed}");
    }

    let (status, body) = cluster
        .appender_on(&cluster.secondaries[0])
        .append("forwarded over TLS", None)
        .await;
    assert_eq!(status, StatusCode::OK, "append on secondary-1: {body}");

    let grpc = |node: &cluster_tests::Node| {
        let url = node.url("");
        let pem = std::fs::read(&ca).expect("read the CA");
        async move {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                .domain_name("localhost");
            let channel = tonic::transport::Channel::from_shared(url)
                .expect("an endpoint")
                .tls_config(tls)
                .expect("a TLS configuration")
                .connect()
                .await
                .expect("a gRPC connection over TLS");
            LogClient::new(channel)
        }
    };
    let mut on_master = grpc(&cluster.master).await;
    let mut on_secondary = grpc(&cluster.secondaries[1]).await;
    for (client, message) in [
        (&mut on_master, "gRPC over TLS"),
        (&mut on_secondary, "gRPC forwarded over TLS"),
    ] {
        client
            .append(AppendRequest {
                message: message.into(),
                w: None,
                key: None,
            })
            .await
            .unwrap_or_else(|status| panic!("gRPC append {message:?}: {status}"));
    }
    let listed = on_master
        .list(ListRequest {
            from_id: 0,
            limit: 0,
        })
        .await
        .expect("gRPC list over TLS")
        .into_inner();
    let messages: Vec<&str> = listed.entries.iter().map(|e| e.message.as_str()).collect();
    let expected = [
        "over http/1.1",
        "over h2",
        "forwarded over TLS",
        "gRPC over TLS",
        "gRPC forwarded over TLS",
    ];
    assert_eq!(messages, expected);
    cluster
        .wait_all_show(Duration::from_secs(10), &expected)
        .await;

    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client")
        .get(format!("http://{}/health", cluster.master.addr()))
        .send()
        .await;
    assert!(
        !plain.as_ref().is_ok_and(|r| r.status().is_success()),
        "plain HTTP to the TLS port: {plain:?}"
    );
    let unverified = curl(&[&cluster.master.url("/health")]);
    assert_eq!(
        unverified.status.code(),
        Some(60),
        "curl without the CA: {}",
        String::from_utf8_lossy(&unverified.stderr)
    );
    let health = curl(&["--cacert", &ca, &cluster.master.url("/health")]);
    assert!(health.status.success(), "curl with the CA after the rest");
}

/// A TLS connection to `port` that trusts `ca` only, over HTTP/1.1.
async fn connect(ca: &Path, port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots.add(cert.expect("a CA certificate")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake")
}

/// The certificate the server presented on `stream`.
fn presented(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .to_vec()
}

/// `GET /health` on an open keep-alive connection: its status line.
async fn health_on(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("send a request");
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).await.expect("a status line");
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("a header");
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("a length");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.expect("the body");
    status.trim().to_owned()
}

/// Injected: a new certificate (new key) written over the master's files, then SIGHUP.
/// Checked: a new connection presents the new certificate (within 10 s of the signal), while a
/// connection opened before still has the old one and is answered on.
#[tokio::test]
async fn sighup_gives_new_connections_the_new_certificate_while_open_ones_go_on() {
    let (cluster, certs, ca) = start(1, &[]).await;
    let port = cluster.master.http_port;
    let mut before = connect(&ca, port).await;
    assert_eq!(health_on(&mut before).await, "HTTP/1.1 200 OK");
    let old = presented(&before);

    let (_, new) = certs.issue("master");
    assert_ne!(old, new);
    cluster
        .master
        .process()
        .signal(Signal::SIGHUP)
        .expect("SIGHUP");
    wait_for(
        Duration::from_secs(10),
        "a new connection presents the new certificate",
        || async { (presented(&connect(&ca, port).await) == new).then_some(()) },
    )
    .await;

    assert_eq!(presented(&before), old);
    assert_eq!(
        health_on(&mut before).await,
        "HTTP/1.1 200 OK",
        "the connection opened before the reload"
    );
    assert!(
        cluster.master.log().contains("TLS certificates reloaded"),
        "the master logs the reload"
    );
}

/// Injected: a master with PUBLIC_TLS but no certificate, with a certificate file that does not
/// exist, and with one that holds no certificate; a secondary with PUBLIC_TLS, its certificate
/// and MASTER, but no TLS_CA.
/// Checked: each exits non-zero at once with one line on stderr naming the setting or file.
#[tokio::test]
async fn bad_tls_settings_stop_a_node_with_one_line() {
    let dir = fresh_log_dir();
    let certs = Certs::new(&dir);
    let (args, _) = certs.issue("node");
    let path = |p: &Option<PathBuf>| p.as_ref().expect("a file").display().to_string();
    let (cert, key) = (path(&args.tls_cert), path(&args.tls_key));
    let missing = certs.dir.join("missing.crt").display().to_string();
    let garbage = certs.dir.join("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").expect("write garbage");
    let garbage = garbage.display().to_string();
    let ports = free_ports(2);
    let (http, grpc) = (ports[0].to_string(), ports[1].to_string());
    let node = |extra: &[(&'static str, &str)]| {
        let mut env = vec![("HOST", "127.0.0.1"), ("HTTP_PORT", http.as_str())];
        env.extend(extra.iter().map(|&(k, v)| (k, v)));
        env.into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect::<Vec<_>>()
    };
    // The binary, its settings, and what its line must name.
    type Case<'a> = (Binary, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            Binary::Master,
            node(&[("PUBLIC_TLS", "true")]),
            "PUBLIC_TLS needs TLS_CERT and TLS_KEY",
        ),
        (
            Binary::Master,
            node(&[("TLS_CERT", &missing), ("TLS_KEY", &key)]),
            &missing,
        ),
        (
            Binary::Master,
            node(&[("TLS_CERT", &garbage), ("TLS_KEY", &key)]),
            &garbage,
        ),
        (
            Binary::Secondary,
            node(&[
                ("GRPC_PORT", &grpc),
                ("MASTER", "127.0.0.1:1"),
                ("TLS_CERT", &cert),
                ("TLS_KEY", &key),
                ("PUBLIC_TLS", "true"),
            ]),
            "TLS_CA",
        ),
    ];
    for (binary, env, named) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let output = run_to_exit(binary, &env, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            !output.status.success() && lines.len() == 1 && lines[0].contains(named),
            "{binary:?} with {env:?}: {}, stderr {stderr:?}",
            output.status
        );
    }
}

/// Injected: REQUEST_TIMEOUT_SECONDS=1 on a TLS master; a client that connects and never
/// starts its handshake, and one that sends half a ClientHello.
/// Checked: the node closes each within the timeout plus slack (not before 0.9 s), and serves
/// TLS clients afterwards.
#[tokio::test]
async fn a_handshake_that_never_ends_is_cut_by_the_request_timeout() {
    let (cluster, _certs, ca) = start(0, &[("REQUEST_TIMEOUT_SECONDS", "1")]).await;
    let port = cluster.master.http_port;
    // A TLS record header announcing a ClientHello of 512 bytes, and none of them.
    let half_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00];
    for sent in [&[][..], half_hello] {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        tcp.write_all(sent).await.expect("send");
        let what = format!("a connection that sent {sent:?}");
        let since = std::time::Instant::now();
        assert_closed_by_the_request_timeout(
            &cluster.master,
            &what,
            &mut tcp,
            since,
            Duration::from_secs(5),
        )
        .await;
    }
    let mut client = connect(&ca, port).await;
    assert_eq!(health_on(&mut client).await, "HTTP/1.1 200 OK");
}

/// Injected: a TLS master; a secondary (not one the master replicates to) that forwards to it,
/// with a certificate and `TLS_CA` of another CA.
/// Checked: an append on that secondary is refused 503 "nothing was appended", naming the
/// invalid certificate (the master's does not chain to its CA, so no request leaves), and the
/// master's log stays empty.
#[tokio::test]
async fn a_secondary_does_not_forward_to_a_master_its_ca_did_not_sign() {
    let (cluster, certs, _) = start(0, &[]).await;
    let other = Certs::of(&certs.dir, "other", "another CA");
    let other_ca = other.ca_file().display().to_string();
    let ports = free_ports(2);
    let mut env = settings(&other.issue("outsider").0);
    env.extend([
        ("HOST".into(), "127.0.0.1".into()),
        ("HTTP_PORT".into(), ports[0].to_string()),
        ("GRPC_PORT".into(), ports[1].to_string()),
        (
            "MASTER".into(),
            format!("127.0.0.1:{}", cluster.master.http_port),
        ),
    ]);
    let mut outsider = Node::new(
        "outsider",
        Binary::Secondary,
        ports[0],
        Some(ports[1]),
        env,
        &cluster.dir,
    )
    .with_https(true);
    outsider.start();
    let health = outsider.url("/health");
    wait_until(Duration::from_secs(10), "the outsider answers", || {
        let answered = curl(&["--cacert", &other_ca, &health]).status.success();
        async move { answered }
    })
    .await;

    let out = curl(&[
        "--cacert",
        &other_ca,
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"message":"to an unverified master"}"#,
        "-w",
        "\n%{http_code}",
        &outsider.url("/api/messages"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("\n503")
            && stdout.contains("nothing was appended")
            && stdout.contains("invalid peer certificate"),
        "append on the outsider: {stdout}"
    );
    assert_eq!(cluster.messages(&cluster.master).await, vec![]);
}
