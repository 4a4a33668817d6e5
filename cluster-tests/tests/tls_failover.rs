//! TLS in failover mode, with real `replog` processes and a real etcd: every node has a
//! certificate of one test CA (for 127.0.0.1, where the kit's nodes listen and the others reach
//! them), trusts that CA and serves its public port over TLS. A follower forwards appends to the
//! elected leader over TLS, the leader replicates over mutual TLS, a killed leader is replaced
//! and the new one replicates to the other survivor, and the killed one catches up when it
//! comes back. A node whose certificate comes from another CA gets nothing, and the leader's
//! health says why.

use cluster_tests::failover::FailoverCluster;
use cluster_tests::{fresh_log_dir, secondary_health, tls_settings, wait_for, StatusCode};
use replog_node::tls::testing::{write, TestCa, Validity};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a takeover may take: the lease, the election and recovery, on a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(15);
const CONVERGE: Duration = Duration::from_secs(15);

/// The names every node's certificate carries: the host of its advertised addresses in PEERS.
const NAMES: [&str; 1] = ["127.0.0.1"];

/// Where a test's certificates go: `certs/` in its log directory (which the cluster then uses
/// as it is), and the CA file the kit's client trusts, holding the PEM of every CA in `cas`.
fn certs(dir: &Path, cas: &[&TestCa]) -> (PathBuf, PathBuf) {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("the certificates' directory");
    let bundle = certs.join("clients-trust.pem");
    let pems: Vec<&str> = cas.iter().map(|ca| ca.pem()).collect();
    std::fs::write(&bundle, pems.join("\n")).expect("write the CA bundle");
    (certs, bundle)
}

/// Node settings: a certificate from `issuer` for [`NAMES`], written under `dir` as `name`,
/// trusting `trusts`, and `PUBLIC_TLS=true`.
fn node_tls(dir: &Path, name: &str, issuer: &TestCa, trusts: &TestCa) -> Vec<(String, String)> {
    let mut args = write(
        dir,
        name,
        &issuer.issue(&NAMES, Validity::Current),
        trusts.pem(),
    );
    args.public_tls = true;
    tls_settings(&args)
}

/// Appends `count` messages with write concern `w` through node `via` (a secondary forwards
/// to the leader), each answered 200; returns them.
async fn append_ok(
    cluster: &FailoverCluster,
    via: usize,
    prefix: &str,
    count: usize,
    w: u64,
) -> Vec<String> {
    let appender = cluster.appender_on(via);
    let mut sent = Vec::new();
    for n in 0..count {
        let message = format!("{prefix}-{n}");
        let (status, body) = appender.append(&message, Some(w)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{message} (w={w}) through {}: {body}",
            cluster.nodes[via].name
        );
        sent.push(message);
    }
    sent
}

fn texts(list: &[(u64, String)]) -> Vec<&str> {
    list.iter().map(|(_, m)| m.as_str()).collect()
}

/// Injected: three failover nodes, each with TLS_CERT, TLS_KEY and TLS_CA of one CA and
/// PUBLIC_TLS; the kit reads and appends over HTTPS trusting that CA. Then the elected leader
/// gets SIGKILL, and later starts again.
/// Checked: w=3 appends sent to a follower (forwarded to the leader over TLS) and to the leader
/// commit and every node lists them; after the kill another node is elected with a higher term
/// and w=2 appends, on it and forwarded by the other survivor, commit between the two; the
/// killed node comes back as a secondary of the new leader, and every node then lists every
/// acknowledged append, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_follower_forwards_and_a_killed_leader_is_replaced_and_catches_up() {
    let started = Instant::now();
    let dir = fresh_log_dir();
    let ca = TestCa::new("replog failover CA");
    let (certs, trusted) = certs(&dir, &[&ca]);
    let mut builder = FailoverCluster::builder(3).log_dir(&dir).https(&trusted);
    for (i, name) in ["node-a", "node-b", "node-c"].into_iter().enumerate() {
        builder = builder.node_envs(i, &node_tls(&certs, name, &ca, &ca));
    }
    let mut cluster = builder.start().await;
    let (leader, term) = cluster.wait_master(TAKEOVER, None).await;
    eprintln!(
        "{} leads (term {term}) after {:?}",
        cluster.nodes[leader].name,
        started.elapsed()
    );
    let follower = (leader + 1) % 3;
    let mut acked = append_ok(&cluster, follower, "forwarded", 3, 3).await;
    acked.extend(append_ok(&cluster, leader, "on-the-leader", 2, 3).await);
    let list = cluster.wait_converged(CONVERGE).await;
    assert_eq!(texts(&list), acked);

    cluster.nodes[leader].kill();
    let killed = Instant::now();
    let (next, next_term) = cluster.wait_master(TAKEOVER, Some(leader)).await;
    eprintln!(
        "{} took over (term {next_term}) in {:?}",
        cluster.nodes[next].name,
        killed.elapsed()
    );
    assert_ne!(next, leader);
    assert!(next_term > term, "term {next_term} after {term}");
    let survivor = (0..3)
        .find(|&i| i != leader && i != next)
        .expect("a third node");
    acked.extend(append_ok(&cluster, next, "after-the-kill", 2, 2).await);
    acked.extend(append_ok(&cluster, survivor, "after-the-kill-forwarded", 2, 2).await);
    let health = cluster.health(next).await.expect("the new leader's health");
    let entry = secondary_health(&health, &cluster.nodes[survivor].grpc_endpoint())
        .unwrap_or_else(|| panic!("the survivor is listed: {health}"));
    assert_eq!(entry["status"], "healthy", "{entry}");

    cluster.nodes[leader].start();
    let (still, _) = cluster.wait_master(TAKEOVER, None).await;
    assert_eq!(
        still, next,
        "the returning node does not take the mastership back"
    );
    let seen = cluster
        .seen_by(leader)
        .await
        .expect("the old leader answers");
    assert_eq!(seen.role, "secondary");
    let list = cluster.wait_converged(CONVERGE).await;
    assert_eq!(
        texts(&list),
        acked,
        "every acknowledged append, once, in order"
    );
    eprintln!("done in {:?}", started.elapsed());
}

/// Injected: node-a and node-b have certificates of one CA and trust it; node-c trusts that CA
/// too but its certificate comes from another CA, so the leader refuses it on the replication
/// connection. The kit's client trusts both CAs, to read node-c as well.
/// Checked: node-a or node-b is elected (node-c holds nothing to stand on); w=2 appends, on the
/// leader and forwarded by node-c (it verifies the leader's certificate against the CA it
/// trusts), commit on the two that trust each other and both list them; the leader's health
/// names TLS and the unknown issuer as node-c's last error; node-c lists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_ca_gets_nothing_while_the_two_that_trust_each_other_commit() {
    let started = Instant::now();
    let dir = fresh_log_dir();
    let ca = TestCa::new("replog failover CA");
    let stranger = TestCa::new("stranger CA");
    let (certs, trusted) = certs(&dir, &[&ca, &stranger]);
    let cluster = FailoverCluster::builder(3)
        .log_dir(&dir)
        .https(&trusted)
        .node_envs(0, &node_tls(&certs, "node-a", &ca, &ca))
        .node_envs(1, &node_tls(&certs, "node-b", &ca, &ca))
        .node_envs(2, &node_tls(&certs, "node-c", &stranger, &ca))
        .start()
        .await;
    let stranger_node = 2;
    let (leader, _) = cluster.wait_master(TAKEOVER, None).await;
    assert_ne!(leader, stranger_node, "node-c was elected");
    let other = 1 - leader;

    let mut acked = append_ok(&cluster, leader, "on-the-leader", 3, 2).await;
    acked.extend(append_ok(&cluster, stranger_node, "forwarded-by-node-c", 2, 2).await);

    let address = cluster.nodes[stranger_node].grpc_endpoint();
    let error = wait_for(
        CONVERGE,
        format!("the leader's health names TLS as {address}'s last error"),
        || async {
            let health = cluster.health(leader).await?;
            let error = secondary_health(&health, &address)?["last_error"]
                .as_str()?
                .to_owned();
            error.contains("TLS").then_some(error)
        },
    )
    .await;
    eprintln!("node-c's last error: {error}");
    assert!(error.contains("UnknownIssuer"), "{error}");

    for i in [leader, other] {
        wait_for(
            CONVERGE,
            format!("{} lists every acknowledged append", cluster.nodes[i].name),
            || async {
                let list = cluster.try_messages(i).await?;
                (texts(&list) == acked).then_some(())
            },
        )
        .await;
    }
    assert_eq!(
        cluster.try_messages(stranger_node).await,
        Some(Vec::new()),
        "node-c holds entries"
    );
    let health = cluster
        .health(stranger_node)
        .await
        .expect("node-c's health");
    assert_eq!(health["last_id"], 0, "{health}");
    eprintln!("done in {:?}", started.elapsed());
}
