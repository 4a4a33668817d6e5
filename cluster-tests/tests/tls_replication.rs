//! Replication over mutual TLS, with real processes and certificates made by the test: a cluster
//! whose nodes share a CA replicates; a master or secondary whose certificate the other side
//! does not take (another CA, expired, none at all) gets nothing across, the master's health
//! names TLS as that secondary's last error and the secondary logs the refusal; a secondary's
//! certificate rotates on SIGHUP, and without a signal when its files change (a Kubernetes
//! Secret's swapped link), for new connections while the open stream goes on.

use cluster_tests::{
    fast_health, log_dir, secondary_health, tls_settings, wait_for, wait_until, Cluster, Node,
    SecondaryOpts, StatusCode, REPLICATION_FAILED,
};
use nix::sys::signal::Signal;
use replog_node::tls::testing::{mount, write, TestCa, Validity};
use replog_node::tls::TlsArgs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory for the test's certificates, emptied first.
fn certs_dir() -> PathBuf {
    let dir = log_dir().with_extension("certs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the certificates' directory");
    dir
}

/// A node's certificate from `ca` (for 127.0.0.1, where the kit's nodes listen), written under
/// `dir` as `name`, trusting `trusts`.
fn node_certs(
    dir: &Path,
    name: &str,
    ca: &TestCa,
    validity: Validity,
    trusts: &TestCa,
) -> Vec<(String, String)> {
    tls_settings(&write(
        dir,
        name,
        &ca.issue(&["127.0.0.1"], validity),
        trusts.pem(),
    ))
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Waits until the master's health shows `secondary`'s last error naming TLS, and returns it.
async fn tls_error_in_health(cluster: &Cluster, secondary: &Node) -> String {
    let address = secondary.grpc_endpoint();
    wait_for(
        Duration::from_secs(10),
        format!("the master's health names TLS as {address}'s last error"),
        || async {
            let health = cluster.health(&cluster.master).await;
            let error = secondary_health(&health, &address)?["last_error"]
                .as_str()?
                .to_owned();
            error.contains("TLS").then_some(error)
        },
    )
    .await
}

/// Waits until `secondary`'s log has the refusal of a TLS handshake with a reason containing
/// `reason` (any reason if empty), and returns the line.
async fn refusal_in_log(secondary: &Node, reason: &str) -> String {
    wait_for(
        Duration::from_secs(10),
        format!(
            "{}'s log refuses a TLS handshake ({reason})",
            secondary.name
        ),
        || async {
            secondary
                .log_since_start()
                .lines()
                .find(|line| {
                    line.contains("refused a replication connection") && line.contains(reason)
                })
                .map(str::to_owned)
        },
    )
    .await
}

/// The certificate the replication port of `secondary` presents to a new connection of a
/// client with `args`, within 5 s (half the secondary's handshake timeout: a handshake that
/// waited behind another client's would miss it).
async fn presented(secondary: &Node, args: &TlsArgs) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), presented_now(secondary, args))
        .await
        .expect("the handshake within 5 s")
}

async fn presented_now(secondary: &Node, args: &TlsArgs) -> Vec<u8> {
    let tls = args.load().expect("the files load").expect("TLS is on");
    let address = secondary.grpc_endpoint();
    let tcp = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connected");
    let stream =
        replog_node::tls::connect(tls.replication_client().expect("mutual TLS"), &address, tcp)
            .await
            .expect("the handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .to_vec()
}

/// Injected: TLS_CERT, TLS_KEY and TLS_CA on every node, one CA; secondary-1's files are links
/// into a directory swapped as Kubernetes updates a mounted Secret. Then secondary-1's files
/// are replaced with a new certificate of the same CA and it gets SIGHUP; then replaced again,
/// with no signal.
/// Checked: w=3 appends answer 200 and every node lists them; a connection that never starts
/// its handshake holds up no other; before the SIGHUP a new connection sees the first
/// certificate, after it the second, and within 10 s of the unsignalled swap the third, while
/// appends on the stream the master opened before still commit with w=3 and that stream never
/// failed (no last error).
#[tokio::test]
async fn a_cluster_on_mutual_tls_replicates_and_rotates_certificates() {
    let dir = certs_dir();
    let ca = TestCa::new("cluster");
    let master = node_certs(&dir, "master", &ca, Validity::Current, &ca);
    let first = ca.issue(&["127.0.0.1"], Validity::Current);
    let secret = dir.join("secondary-1");
    let secondary_1 = tls_settings(&mount(&secret, 1, &first, ca.pem()));
    let secondary_2 = node_certs(&dir, "secondary-2", &ca, Validity::Current, &ca);
    let cluster = Cluster::start(
        vec![
            SecondaryOpts::new().envs(&borrowed(&secondary_1)),
            SecondaryOpts::new().envs(&borrowed(&secondary_2)),
        ],
        &fast_health(&borrowed(&master)),
    )
    .await;
    for i in 1..=3 {
        let (status, body) = cluster.append(&format!("over TLS {i}"), Some(3)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let expected: Vec<(u64, String)> = (1..=3).map(|i| (i, format!("over TLS {i}"))).collect();
    cluster
        .wait_converged(Duration::from_secs(5), &expected)
        .await;
    let client = write(
        &dir,
        "client",
        &ca.issue(&["127.0.0.1"], Validity::Current),
        ca.pem(),
    );
    // A client that connects and never starts its handshake holds up no other connection.
    let silent = tokio::net::TcpStream::connect(cluster.secondaries[0].grpc_endpoint())
        .await
        .expect("connected");
    assert_eq!(presented(&cluster.secondaries[0], &client).await, first.der);

    let second = ca.issue(&["127.0.0.1"], Validity::Current);
    mount(&secret, 2, &second, ca.pem());
    cluster.secondaries[0]
        .process()
        .signal(Signal::SIGHUP)
        .expect("SIGHUP sent");
    wait_until(
        Duration::from_secs(5),
        "secondary-1 logs the reload on SIGHUP",
        || async {
            cluster.secondaries[0]
                .log_since_start()
                .lines()
                .any(|line| line.contains("TLS certificates reloaded") && line.contains("SIGHUP"))
        },
    )
    .await;
    let (status, body) = cluster.append("during the rotation", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        presented(&cluster.secondaries[0], &client).await,
        second.der
    );
    let (status, body) = cluster.append("after the rotation", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // No signal this time: the node sees its files change.
    let third = ca.issue(&["127.0.0.1"], Validity::Current);
    mount(&secret, 3, &third, ca.pem());
    wait_for(
        Duration::from_secs(10),
        "a new connection sees the certificate swapped in without a signal",
        || async { (presented(&cluster.secondaries[0], &client).await == third.der).then_some(()) },
    )
    .await;
    let (status, body) = cluster
        .append("after the unsignalled rotation", Some(3))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    drop(silent);
    let health = cluster.health(&cluster.master).await;
    let entry = secondary_health(&health, &cluster.secondaries[0].grpc_endpoint())
        .expect("secondary-1 listed");
    assert_eq!(entry["status"], "healthy", "{entry}");
    assert!(entry["last_error"].is_null(), "the stream broke: {entry}");
    assert_eq!(
        cluster.messages(&cluster.secondaries[0]).await.last(),
        Some(&(6, "after the unsignalled rotation".to_owned()))
    );
}

/// How many of the master's failed streams to a secondary that refuses its certificate must each
/// name the secondary's alert.
const STREAM_FAILURES: usize = 20;

/// Injected: one CA for the master and secondaries 1 and 2; secondary-3's certificate is of
/// that CA but it trusts only another CA (so it refuses the master's certificate); secondary-4
/// presents a certificate of another CA (so the master refuses it). REPLICATION_TIMEOUT_SECONDS
/// is 1; the master logs every failed stream (debug). (Secondaries 1 and 2 make the majority the
/// master's recovery needs before it serves.)
/// Checked: a w=3 append commits; a w=4 append answers 500 after the timeout; secondaries 3
/// and 4 list nothing; the master's health names TLS as the last error of both (secondary-3's
/// alert, UnknownCA; the unknown issuer), and each of the master's first
/// [`STREAM_FAILURES`] failed streams to secondary-3 names the alert (under TLS 1.3 the
/// secondary's close often overtakes it on the stream's connection); secondary-3 logs the
/// refusal with the peer's address and rustls's reason.
#[tokio::test]
async fn a_peer_of_another_ca_gets_nothing() {
    let dir = certs_dir();
    let ca = TestCa::new("cluster");
    let other = TestCa::new("stranger");
    let master = node_certs(&dir, "master", &ca, Validity::Current, &ca);
    let good_1 = node_certs(&dir, "secondary-1", &ca, Validity::Current, &ca);
    let good_2 = node_certs(&dir, "secondary-2", &ca, Validity::Current, &ca);
    let refuses = node_certs(&dir, "secondary-3", &ca, Validity::Current, &other);
    let refused = node_certs(&dir, "secondary-4", &other, Validity::Current, &ca);
    let mut cluster = Cluster::start(
        vec![
            SecondaryOpts::new().envs(&borrowed(&good_1)),
            SecondaryOpts::new().envs(&borrowed(&good_2)),
            SecondaryOpts::new().envs(&borrowed(&refuses)).not_started(),
            SecondaryOpts::new().envs(&borrowed(&refused)).not_started(),
        ],
        &fast_health(
            &[
                borrowed(&master),
                vec![
                    ("REPLICATION_TIMEOUT_SECONDS", "1"),
                    ("RETRY_MAX_MS", "200"),
                    ("RUST_LOG", "info,replog_master::replication=debug"),
                ],
            ]
            .concat(),
        ),
    )
    .await;
    cluster.secondaries[2].start();
    cluster.secondaries[3].start();
    let (status, body) = cluster.append("three of five", Some(3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = cluster.append("needs four", Some(4)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["detail"], REPLICATION_FAILED, "{body}");

    let refusing = tls_error_in_health(&cluster, &cluster.secondaries[2]).await;
    assert!(
        refusing.contains("received fatal alert: UnknownCA"),
        "{refusing}"
    );
    let address = format!("secondary={}", cluster.secondaries[2].grpc_endpoint());
    let failures = wait_for(
        Duration::from_secs(30),
        format!("{STREAM_FAILURES} failed TLS streams to secondary-3 in the master's log"),
        || async {
            let failures: Vec<String> = cluster
                .master
                .log_since_start()
                .lines()
                .filter(|line| line.contains(&address) && line.contains("error=TLS"))
                .map(str::to_owned)
                .collect();
            (failures.len() >= STREAM_FAILURES).then_some(failures)
        },
    )
    .await;
    let unexplained: Vec<&String> = failures
        .iter()
        .filter(|line| !line.contains("received fatal alert: UnknownCA"))
        .collect();
    assert!(
        unexplained.is_empty(),
        "{} of {} failures do not name the alert, as: {}",
        unexplained.len(),
        failures.len(),
        unexplained[0]
    );
    let unknown = tls_error_in_health(&cluster, &cluster.secondaries[3]).await;
    assert!(unknown.contains("UnknownIssuer"), "{unknown}");
    let line = refusal_in_log(&cluster.secondaries[2], "UnknownIssuer").await;
    assert!(line.contains("peer=127.0.0.1:"), "no peer address: {line}");
    for secondary in &cluster.secondaries[2..] {
        assert!(
            cluster.messages(secondary).await.is_empty(),
            "{} holds entries",
            secondary.name
        );
    }
    assert_eq!(
        cluster.messages(&cluster.secondaries[0]).await,
        vec![(1, "three of five".to_owned())]
    );
}

/// Injected: secondary-1 on mutual TLS; the master once with an expired certificate of the
/// same CA, once without any TLS settings (plaintext).
/// Checked: secondary-1 logs the refusal (the expired certificate; the plaintext), lists
/// nothing, and the master, which cannot hear from the majority its recovery needs, takes no
/// append (503, recovering, naming secondary-1); with the expired certificate the master's
/// health names TLS and the secondary's alert as secondary-1's last error.
#[tokio::test]
async fn an_expired_or_plaintext_master_gets_nothing() {
    let dir = certs_dir();
    let ca = TestCa::new("cluster");
    let secondary = node_certs(&dir, "secondary-1", &ca, Validity::Current, &ca);
    let expired = node_certs(&dir, "master", &ca, Validity::Expired, &ca);
    for (master, reason) in [(expired, "xpired"), (Vec::new(), "")] {
        let mut cluster = Cluster::start(
            vec![SecondaryOpts::new()
                .envs(&borrowed(&secondary))
                .not_started()],
            &fast_health(&borrowed(&master)),
        )
        .await;
        cluster.secondaries[0].start();
        let line = refusal_in_log(&cluster.secondaries[0], reason).await;
        eprintln!(
            "refused ({}): {line}",
            if master.is_empty() {
                "plaintext"
            } else {
                "expired"
            }
        );
        let (status, body) = cluster.append("refused", Some(2)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(&cluster.secondaries[0].grpc_endpoint()),
            "{body}"
        );
        if !master.is_empty() {
            let error = tls_error_in_health(&cluster, &cluster.secondaries[0]).await;
            assert!(error.contains("CertificateExpired"), "{error}");
        }
        assert!(cluster.messages(&cluster.secondaries[0]).await.is_empty());
    }
}
