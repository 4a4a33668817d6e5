//! The etcd coordinator against a real etcd (the kit's [`Etcd`]): leases, standings, the
//! leader key's transaction, expiry, revocation, and calls bounded in time while etcd hangs;
//! the same over TLS ([`tls`]).

use cluster_tests::etcd::Etcd;
use etcd_client::Client;
use replog_failover::coordinator::{Coordinator, CoordinatorError};
use replog_failover::etcd::EtcdCoordinator;
use replog_node::failover::{Leader, Standing};
use std::time::{Duration, Instant};

/// Each call's bound in these tests.
const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a test waits for etcd to expire a lease or come back (its TTLs are 1-2 s, checked
/// by etcd every 500 ms).
const EXPIRY_WITHIN: Duration = Duration::from_secs(10);
/// The TTL asked for: etcd grants at least its minimum (2 s with its default timings).
const TTL: Duration = Duration::from_secs(1);
const PREFIX: &str = "/test";

fn coordinator(etcd: &Etcd, name: &str) -> EtcdCoordinator {
    EtcdCoordinator::new(&[etcd.endpoint()], PREFIX, name, OP_TIMEOUT)
}

fn standing(name: &str, master_instance: u64, held: u64) -> Standing {
    Standing {
        name: name.into(),
        http: format!("{name}:8080"),
        grpc: format!("{name}:50051"),
        log_id: "log".into(),
        master_instance,
        last_term: master_instance,
        held,
        decided: held,
        rejoining: false,
    }
}

fn candidate(name: &str) -> Leader {
    Leader {
        name: name.into(),
        http: format!("{name}:8080"),
        term: 0,
        since_unix_ms: 1,
    }
}

/// The names in `standings`, sorted.
fn names(standings: &[Standing]) -> Vec<String> {
    let mut names: Vec<String> = standings.iter().map(|s| s.name.clone()).collect();
    names.sort();
    names
}

/// A raw etcd client, to look at the keys behind the coordinator's back.
async fn raw(etcd: &Etcd) -> Client {
    Client::connect([etcd.endpoint()], None)
        .await
        .expect("an etcd client")
}

async fn stored_term(client: &mut Client) -> Option<String> {
    let response = client
        .get(format!("{PREFIX}/term"), None)
        .await
        .expect("GET the term");
    response
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

/// Polls `probe` every 50 ms until it yields a value; panics naming `what` after `timeout`.
async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_nodes_see_each_other_and_one_takes_the_leader_key() {
    let etcd = Etcd::start().await;
    let (mut a, mut b) = (coordinator(&etcd, "a"), coordinator(&etcd, "b"));
    let granted = a.start(TTL).await.expect("a's lease");
    assert!(granted >= TTL, "granted {granted:?}");
    b.start(TTL).await.expect("b's lease");
    a.publish(&standing("a", 0, 5)).await.expect("a publishes");
    b.publish(&standing("b", 0, 3)).await.expect("b publishes");
    let seen = a.standings().await.expect("a reads the standings");
    assert_eq!(names(&seen), ["a", "b"]);
    assert!(seen.contains(&standing("b", 0, 3)), "{seen:?}");
    assert_eq!(names(&b.standings().await.expect("b reads")), ["a", "b"]);

    assert_eq!(a.leader().await.expect("no leader yet"), None);
    let won = a
        .try_lead(candidate("a"), 0)
        .await
        .expect("a campaigns")
        .expect("a wins an empty election");
    assert_eq!(won.term, 1);
    assert_eq!(won.name, "a");
    assert_eq!(
        b.try_lead(candidate("b"), 0).await.expect("b campaigns"),
        None,
        "b cannot take a held leader key"
    );
    assert_eq!(
        b.leader().await.expect("b reads the leader"),
        Some(won.clone())
    );
    assert_eq!(
        stored_term(&mut raw(&etcd).await).await.as_deref(),
        Some("1")
    );

    // Resigning a mastership that is not the key's leaves the key alone.
    let stale = Leader {
        term: 7,
        ..won.clone()
    };
    a.resign(&stale).await.expect("resign of a stale leader");
    b.resign(&candidate("b")).await.expect("resign by b");
    assert_eq!(a.leader().await.expect("leader"), Some(won.clone()));
    a.resign(&won).await.expect("a resigns");
    assert_eq!(a.leader().await.expect("leader"), None);

    // The term outlives the leader key: the next mastership has the next term.
    let next = b
        .try_lead(candidate("b"), 0)
        .await
        .expect("b campaigns")
        .expect("b wins after a resigned");
    assert_eq!(next.term, 2);
}

#[tokio::test]
async fn an_expired_lease_takes_its_leader_key_and_standing_with_it() {
    let etcd = Etcd::start().await;
    let (mut a, mut b) = (coordinator(&etcd, "a"), coordinator(&etcd, "b"));
    a.start(TTL).await.expect("a's lease");
    b.start(TTL).await.expect("b's lease");
    a.publish(&standing("a", 0, 1)).await.expect("a publishes");
    b.publish(&standing("b", 0, 1)).await.expect("b publishes");
    let first = a
        .try_lead(candidate("a"), 0)
        .await
        .expect("a campaigns")
        .expect("a wins");
    assert_eq!(first.term, 1);

    // a stops renewing; b keeps its lease alive meanwhile.
    let stopped = Instant::now();
    wait_for(EXPIRY_WITHIN, "a's leader key expires", async || {
        b.renew().await.expect("b renews");
        b.leader()
            .await
            .expect("b reads the leader")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() >= TTL,
        "the key went after {:?}",
        stopped.elapsed()
    );
    assert_eq!(names(&b.standings().await.expect("standings")), ["b"]);
    let second = b
        .try_lead(candidate("b"), 0)
        .await
        .expect("b campaigns")
        .expect("b wins once a's key expired");
    assert_eq!(second.term, 2);

    // a learns that its lease is gone; a new one puts it back in the cluster.
    assert!(
        matches!(a.renew().await, Err(CoordinatorError::Expired)),
        "a's renewal after expiry"
    );
    assert!(matches!(
        a.publish(&standing("a", 1, 1)).await,
        Err(CoordinatorError::NoLease)
    ));
    a.start(TTL).await.expect("a's new lease");
    a.publish(&standing("a", 1, 1))
        .await
        .expect("a publishes again");
    assert_eq!(names(&b.standings().await.expect("standings")), ["a", "b"]);
    assert_eq!(
        a.try_lead(candidate("a"), 0).await.expect("a campaigns"),
        None
    );
}

#[tokio::test]
async fn renewals_keep_the_lease_past_its_ttl() {
    let etcd = Etcd::start().await;
    let mut a = coordinator(&etcd, "a");
    let ttl = a.start(TTL).await.expect("a's lease");
    a.publish(&standing("a", 0, 1)).await.expect("a publishes");
    let end = Instant::now() + ttl * 2;
    while Instant::now() < end {
        let renewed = a.renew().await.expect("a renews");
        assert_eq!(renewed, ttl);
        tokio::time::sleep(ttl / 4).await;
    }
    assert_eq!(names(&a.standings().await.expect("standings")), ["a"]);
}

#[tokio::test]
async fn revoking_the_lease_removes_the_leader_key_and_standing_at_once() {
    let etcd = Etcd::start().await;
    let (mut a, mut b) = (coordinator(&etcd, "a"), coordinator(&etcd, "b"));
    a.start(Duration::from_secs(60)).await.expect("a's lease");
    b.start(Duration::from_secs(60)).await.expect("b's lease");
    a.publish(&standing("a", 0, 1)).await.expect("a publishes");
    b.publish(&standing("b", 0, 1)).await.expect("b publishes");
    a.try_lead(candidate("a"), 0)
        .await
        .expect("a campaigns")
        .expect("a wins");
    a.revoke().await.expect("a revokes");
    assert_eq!(b.leader().await.expect("leader"), None);
    assert_eq!(names(&b.standings().await.expect("standings")), ["b"]);
    a.revoke().await.expect("revoking again is a no-op");
    assert!(matches!(a.renew().await, Err(CoordinatorError::NoLease)));
}

#[tokio::test]
async fn a_withdrawn_standing_is_gone_while_the_lease_and_leader_key_stay() {
    let etcd = Etcd::start().await;
    let (mut a, mut b) = (coordinator(&etcd, "a"), coordinator(&etcd, "b"));
    a.start(Duration::from_secs(60)).await.expect("a's lease");
    b.start(Duration::from_secs(60)).await.expect("b's lease");
    a.publish(&standing("a", 0, 1)).await.expect("a publishes");
    b.publish(&standing("b", 0, 1)).await.expect("b publishes");
    let leader = a
        .try_lead(candidate("a"), 0)
        .await
        .expect("a campaigns")
        .expect("a wins");
    a.withdraw().await.expect("a withdraws");
    assert_eq!(names(&b.standings().await.expect("standings")), ["b"]);
    assert_eq!(b.leader().await.expect("leader"), Some(leader));
    a.renew().await.expect("the lease stays");
    a.withdraw().await.expect("withdrawing again is a no-op");
}

#[tokio::test]
async fn the_term_is_above_the_floor_and_never_goes_back() {
    let etcd = Etcd::start().await;
    let mut raw = raw(&etcd).await;
    let mut a = coordinator(&etcd, "a");
    a.start(TTL).await.expect("a's lease");
    let won = a
        .try_lead(candidate("a"), 7)
        .await
        .expect("a campaigns")
        .expect("a wins");
    assert_eq!(won.term, 8, "above the floor");
    assert_eq!(stored_term(&mut raw).await.as_deref(), Some("8"));
    a.resign(&won).await.expect("a resigns");
    let again = a
        .try_lead(candidate("a"), 3)
        .await
        .expect("a campaigns")
        .expect("a wins again");
    assert_eq!(again.term, 9, "a lower floor does not lower the term");
    assert_eq!(stored_term(&mut raw).await.as_deref(), Some("9"));
}

#[tokio::test]
async fn calls_to_a_hung_etcd_fail_within_the_timeout() {
    let etcd = Etcd::start().await;
    let mut a = coordinator(&etcd, "a");
    a.start(Duration::from_secs(30)).await.expect("a's lease");
    a.renew().await.expect("a renews over a fresh stream");
    a.publish(&standing("a", 0, 1)).await.expect("a publishes");

    etcd.pause();
    let margin = Duration::from_millis(300);
    let asked = Instant::now();
    let renewed = a.renew().await;
    assert!(
        matches!(renewed, Err(CoordinatorError::Timeout(_))),
        "{renewed:?}"
    );
    assert!(
        asked.elapsed() < OP_TIMEOUT + margin,
        "{:?}",
        asked.elapsed()
    );
    let asked = Instant::now();
    assert!(a.leader().await.is_err());
    assert!(a.try_lead(candidate("a"), 0).await.is_err());
    assert!(
        asked.elapsed() < 2 * (OP_TIMEOUT + margin),
        "{:?}",
        asked.elapsed()
    );

    etcd.resume();
    wait_for(EXPIRY_WITHIN, "a renews after etcd resumed", async || {
        a.renew().await.ok()
    })
    .await;
    assert_eq!(names(&a.standings().await.expect("standings")), ["a"]);
}

#[tokio::test]
async fn the_lease_survives_an_etcd_restart_over_a_new_stream() {
    let mut etcd = Etcd::start().await;
    let mut a = coordinator(&etcd, "a");
    a.start(Duration::from_secs(30)).await.expect("a's lease");
    a.renew().await.expect("a renews");
    a.publish(&standing("a", 0, 1)).await.expect("a publishes");

    etcd.kill();
    assert!(a.renew().await.is_err(), "renewed with etcd down");
    etcd.restart().await;
    wait_for(EXPIRY_WITHIN, "a renews after etcd restarted", async || {
        a.renew().await.ok()
    })
    .await;
    assert_eq!(names(&a.standings().await.expect("standings")), ["a"]);
}

#[tokio::test]
async fn an_unreachable_etcd_is_an_error_within_the_timeout() {
    let port = cluster_tests::free_port();
    let mut a = EtcdCoordinator::new(
        &[format!("http://127.0.0.1:{port}")],
        PREFIX,
        "a",
        OP_TIMEOUT,
    );
    let asked = Instant::now();
    assert!(a.start(TTL).await.is_err());
    assert!(a.leader().await.is_err());
    assert!(
        asked.elapsed() < 2 * OP_TIMEOUT + Duration::from_millis(300),
        "{:?}",
        asked.elapsed()
    );
}

/// The coordinator over TLS, against an etcd serving its clients with TLS only and asking each
/// for a certificate (the kit's [`Etcd::start_tls_in`]), with certificates made here: it works
/// with etcd's CA and its own certificate, fails within the operation timeout with an error
/// naming the certificate when either is wrong or missing, and reads its files again when it
/// reconnects; a `replog` node leads through it.
mod tls {
    use super::*;
    use cluster_tests::etcd::EtcdTlsFiles;
    use cluster_tests::{Binary, Node, START_TIMEOUT};
    use replog_failover::etcd::EtcdTls;
    use replog_node::tls::testing::{write, TestCa, Validity};
    use std::path::{Path, PathBuf};

    /// What a failed call may take beyond [`OP_TIMEOUT`] on a loaded machine.
    const MARGIN: Duration = Duration::from_millis(300);

    /// An etcd over TLS and the certificates around it, in the test's log directory.
    struct Setup {
        etcd: Etcd,
        dir: PathBuf,
        /// The CA that signed etcd's certificate and the clients' it takes.
        ca: TestCa,
        /// A client's files, signed by `ca`: `TLS_CERT`, `TLS_KEY`, `TLS_CA` of [`write`].
        client: EtcdTls,
    }

    async fn setup() -> Setup {
        let dir = cluster_tests::fresh_log_dir();
        let ca = TestCa::new("etcd test CA");
        let server = write(
            &dir,
            "etcd-server",
            &ca.issue(&["localhost", "127.0.0.1"], Validity::Current),
            ca.pem(),
        );
        let client = write(
            &dir,
            "etcd-client",
            &ca.issue(&["node-a"], Validity::Current),
            ca.pem(),
        );
        let path = |p: Option<PathBuf>| p.expect("write names every file");
        let etcd = Etcd::start_tls_in(
            &dir,
            EtcdTlsFiles {
                cert: path(server.tls_cert),
                key: path(server.tls_key),
                client_ca: path(server.tls_ca),
            },
        )
        .await;
        let client = EtcdTls {
            ca: path(client.tls_ca),
            identity: Some((path(client.tls_cert), path(client.tls_key))),
        };
        Setup {
            etcd,
            dir,
            ca,
            client,
        }
    }

    fn coordinator(etcd: &Etcd, name: &str, tls: EtcdTls) -> EtcdCoordinator {
        EtcdCoordinator::new(&[etcd.endpoint()], PREFIX, name, OP_TIMEOUT).with_tls(tls)
    }

    /// Checks that `call` fails within the operation timeout with an error that names a
    /// certificate.
    async fn refused<T: std::fmt::Debug>(
        call: impl std::future::Future<Output = Result<T, CoordinatorError>>,
    ) {
        let asked = Instant::now();
        let result = call.await;
        let took = asked.elapsed();
        assert!(took < OP_TIMEOUT + MARGIN, "the call took {took:?}");
        let error = result.expect_err("the call succeeded");
        // The whole chain: etcd-client's error names the transport failure, its sources the cause.
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        eprintln!("refused as expected: {text}");
        assert!(text.to_lowercase().contains("certificate"), "{text}");
    }

    /// A client certificate and its key from a CA that etcd does not trust, written as
    /// `<name>.crt` and `<name>.key`.
    fn foreign_identity(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let other = TestCa::new("another CA");
        let issued = other.issue(&["node-a"], Validity::Current);
        let files = write(dir, name, &issued, other.pem());
        (
            files.tls_cert.expect("written"),
            files.tls_key.expect("written"),
        )
    }

    /// Writes `pem` to `path`, replacing the file.
    fn replace(path: &Path, pem: &str) {
        std::fs::write(path, pem)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    #[tokio::test]
    async fn the_coordinator_works_over_tls_with_a_client_certificate() {
        let setup = setup().await;
        assert!(setup.etcd.endpoint().starts_with("https://"));
        let mut a = coordinator(&setup.etcd, "a", setup.client.clone());
        let mut b = coordinator(&setup.etcd, "b", setup.client.clone());
        a.start(TTL).await.expect("a's lease over TLS");
        b.start(TTL).await.expect("b's lease over TLS");
        let won = a
            .try_lead(candidate("a"), 0)
            .await
            .expect("a campaigns")
            .expect("a wins an empty election");
        assert_eq!(won.term, 1);
        assert_eq!(b.leader().await.expect("b reads the leader"), Some(won));
        a.renew().await.expect("a renews over TLS");
    }

    #[tokio::test]
    async fn etcd_signed_by_another_ca_is_refused_naming_the_certificate() {
        let setup = setup().await;
        let other = TestCa::new("another CA");
        let other_ca = setup.dir.join("other-ca.crt");
        replace(&other_ca, other.pem());
        let tls = EtcdTls {
            ca: other_ca,
            ..setup.client.clone()
        };
        let mut a = coordinator(&setup.etcd, "a", tls);
        refused(a.start(TTL)).await;
        refused(a.leader()).await;
    }

    /// Against `--client-cert-auth`: no client certificate, or one from a CA etcd does not trust.
    #[tokio::test]
    async fn a_client_certificate_etcd_does_not_take_is_refused_naming_it() {
        let setup = setup().await;
        for identity in [None, Some(foreign_identity(&setup.dir, "foreign"))] {
            let tls = EtcdTls {
                identity,
                ..setup.client.clone()
            };
            let mut a = coordinator(&setup.etcd, "a", tls);
            refused(a.start(TTL)).await;
        }
    }

    /// The files are read again when the coordinator reconnects: the same coordinator, refused
    /// for a wrong CA file and then for a client certificate etcd does not trust, gets through
    /// once each file is replaced on disk.
    #[tokio::test]
    async fn certificate_files_replaced_on_disk_are_used_at_the_next_connection() {
        let setup = setup().await;
        let ca = setup.dir.join("renewed-ca.crt");
        replace(&ca, TestCa::new("the old CA").pem());
        let (cert, key) = foreign_identity(&setup.dir, "renewed");
        let tls = EtcdTls {
            ca: ca.clone(),
            identity: Some((cert.clone(), key.clone())),
        };
        let mut a = coordinator(&setup.etcd, "a", tls);
        refused(a.start(TTL)).await;

        replace(&ca, setup.ca.pem());
        refused(a.start(TTL)).await;

        let issued = setup.ca.issue(&["node-a"], Validity::Current);
        replace(&cert, &issued.cert_pem);
        replace(&key, &issued.key_pem);
        a.start(TTL)
            .await
            .expect("a's lease with the files replaced");
        a.renew().await.expect("a renews");
    }

    /// A `replog` node (the binary, through the kit) with `https://` ETCD_ENDPOINTS and ETCD_CA,
    /// ETCD_CERT, ETCD_KEY holds its lease over TLS and becomes master of its one-node cluster.
    #[tokio::test]
    async fn a_replog_node_leads_through_etcd_over_tls() {
        let setup = setup().await;
        let (cert, key) = setup.client.identity.clone().expect("a client certificate");
        let (dir, etcd, client_tls) = (&setup.dir, &setup.etcd, &setup.client);
        let (cert, key) = (&cert, &key);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        let client = &http;
        let node = cluster_tests::on_free_ports(move || async move {
            let ports = cluster_tests::free_ports(2);
            let name = "node-a";
            let settings = [
                ("HOST", "127.0.0.1".to_owned()),
                ("HTTP_PORT", ports[0].to_string()),
                ("GRPC_PORT", ports[1].to_string()),
                ("NODE_NAME", name.to_owned()),
                (
                    "PEERS",
                    format!("{name}=127.0.0.1:{}:{}", ports[0], ports[1]),
                ),
                ("ETCD_ENDPOINTS", etcd.endpoint()),
                ("ETCD_CA", client_tls.ca.display().to_string()),
                ("ETCD_CERT", cert.display().to_string()),
                ("ETCD_KEY", key.display().to_string()),
                ("FAILOVER_TTL_MS", "2000".to_owned()),
                ("DATA_DIR", dir.join("node-a-data").display().to_string()),
            ]
            .map(|(k, v)| (k.to_owned(), v))
            .to_vec();
            let mut node = Node::new(
                name,
                Binary::Replog,
                ports[0],
                Some(ports[1]),
                settings,
                dir,
            );
            node.start();
            node.wait_answering(client, Instant::now() + START_TIMEOUT)
                .await?;
            Ok(node)
        })
        .await;
        let url = node.url("/api/health");
        cluster_tests::wait_for(START_TIMEOUT, "node-a serves as master", || async {
            let health: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            let master = health["leadership"]["master"].as_str() == Some("node-a");
            (health["role"] == "master" && master).then_some(())
        })
        .await;
    }
}
