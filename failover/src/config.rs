//! The failover node's settings: the master's (every node may become master) plus who this
//! node is, who its peers are and where etcd is. Environment variables, each also a CLI flag
//! of the same name.

use crate::etcd::EtcdTls;
use clap::Parser;
use replog_node::config::millis;
use replog_node::failover::{SecondaryRole, Standing};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[group(id = "FailoverConfig")]
#[command(
    name = "replog",
    version,
    about = "replog node in failover mode: master or secondary as etcd's lease and election say"
)]
pub struct Config {
    /// This node's name: unique in PEERS, the key of its standing and leadership in etcd.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Every node of the cluster, this one included: `name=host:http_port:grpc_port`, comma
    /// separated. host:http_port is where the others forward appends, host:grpc_port where the
    /// master replicates to.
    #[arg(long, env = "PEERS", value_delimiter = ',', value_parser = peer, required = true)]
    pub peers: Vec<Peer>,

    /// Port of the internal gRPC replication service (served while this node is a secondary).
    #[arg(long, env = "GRPC_PORT", default_value_t = 50051)]
    pub grpc_port: u16,

    /// etcd's client endpoints, comma separated (`http://host:2379`, or `https://host:2379`
    /// for TLS with ETCD_CA).
    #[arg(long, env = "ETCD_ENDPOINTS", value_delimiter = ',', required = true)]
    pub etcd_endpoints: Vec<String>,

    /// PEM file with the CA certificates etcd's server certificate must chain to; required
    /// with `https://` endpoints. Read again at every connection to etcd, as are ETCD_CERT and
    /// ETCD_KEY, so renewed files are used without a restart.
    #[arg(long, env = "ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM file with this node's client certificate for etcd (an etcd run with
    /// `--client-cert-auth` asks for one), with ETCD_KEY.
    #[arg(long, env = "ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,

    /// PEM file with the private key of ETCD_CERT.
    #[arg(long, env = "ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,

    /// Prefix of this cluster's keys in etcd (several clusters may share one etcd).
    #[arg(long, env = "ETCD_PREFIX", default_value = "/replog")]
    pub etcd_prefix: String,

    /// The master's lease in milliseconds (etcd counts whole seconds: rounded up). A master
    /// that cannot renew it within this time stops deciding; another node may take over after
    /// it.
    #[arg(long, env = "FAILOVER_TTL_MS", default_value = "3000", value_parser = millis)]
    pub failover_ttl_ms: Duration,

    #[command(flatten)]
    pub master: replog_master::config::Config,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// host:port of its public HTTP API.
    pub http: String,
    /// host:port of its replication service.
    pub grpc: String,
}

/// Parses `name=host:http_port:grpc_port`.
fn peer(value: &str) -> Result<Peer, String> {
    let value = value.trim();
    let bad = || format!("`{value}` is not name=host:http_port:grpc_port");
    let (name, address) = value.split_once('=').ok_or_else(bad)?;
    let (rest, grpc_port) = address.rsplit_once(':').ok_or_else(bad)?;
    let (host, http_port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0);
    if name.is_empty() || host.is_empty() || port(http_port).is_none() || port(grpc_port).is_none()
    {
        return Err(bad());
    }
    Ok(Peer {
        name: name.to_owned(),
        http: format!("{host}:{http_port}"),
        grpc: format!("{host}:{grpc_port}"),
    })
}

/// Settings that cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("NODE_NAME `{0}` is not among PEERS")]
    NotAPeer(String),
    #[error("PEERS names `{0}` twice")]
    DuplicatePeer(String),
    #[error("DATA_DIR is required in failover mode: a node's log must outlive its role changes and restarts")]
    NoDataDir,
    #[error("SECONDARIES is not used in failover mode; PEERS lists every node")]
    Secondaries,
    #[error("HTTP_PORT and GRPC_PORT are both {0}; they must differ")]
    SamePort(u16),
    #[error("FAILOVER_TTL_MS must be at least 1000 (etcd counts leases in whole seconds)")]
    ShortTtl,
    #[error("ETCD_ENDPOINTS lists no endpoint")]
    NoEtcd,
    #[error("ETCD_ENDPOINTS mixes http:// and https://: use one scheme for every endpoint")]
    EtcdMixedSchemes,
    #[error("ETCD_ENDPOINTS are https:// but ETCD_CA is not set: etcd's certificate is checked against it")]
    EtcdNoCa,
    #[error("ETCD_CA, ETCD_CERT and ETCD_KEY are for https:// ETCD_ENDPOINTS; these are http://")]
    EtcdTlsOverHttp,
    #[error("ETCD_CERT and ETCD_KEY go together: set both or neither")]
    EtcdHalfIdentity,
    #[error("{0}")]
    EtcdTls(String),
    #[error("{0}")]
    Master(#[from] replog_master::error::InvalidSettings),
}

impl Config {
    /// Checks that the settings agree with one another.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for peer in &self.peers {
            if !names.insert(peer.name.as_str()) {
                return Err(ConfigError::DuplicatePeer(peer.name.clone()));
            }
        }
        if !names.contains(self.node_name.as_str()) {
            return Err(ConfigError::NotAPeer(self.node_name.clone()));
        }
        if self.master.storage.data_dir.is_none() {
            return Err(ConfigError::NoDataDir);
        }
        if !self.master.secondaries.is_empty() {
            return Err(ConfigError::Secondaries);
        }
        if self.master.http_port != 0 && self.master.http_port == self.grpc_port {
            return Err(ConfigError::SamePort(self.grpc_port));
        }
        if self.failover_ttl_ms < Duration::from_secs(1) {
            return Err(ConfigError::ShortTtl);
        }
        if self.etcd_endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(ConfigError::NoEtcd);
        }
        if let Some(tls) = self.etcd_tls()? {
            tls.load()
                .map_err(|error| ConfigError::EtcdTls(error.to_string()))?;
        }
        self.master.validate()?;
        Ok(())
    }

    /// TLS to etcd when ETCD_ENDPOINTS are `https://`; `None` when they are `http://` (or
    /// name no scheme, which etcd-client takes as `http://`). Checks that the endpoints and
    /// ETCD_CA, ETCD_CERT and ETCD_KEY go together; the files are read by [`EtcdTls::load`].
    pub fn etcd_tls(&self) -> Result<Option<EtcdTls>, ConfigError> {
        let endpoints: Vec<&str> = self
            .etcd_endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .collect();
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != endpoints.len() {
            return Err(ConfigError::EtcdMixedSchemes);
        }
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(ConfigError::EtcdHalfIdentity),
        };
        if https == 0 {
            if self.etcd_ca.is_some() || identity.is_some() {
                return Err(ConfigError::EtcdTlsOverHttp);
            }
            return Ok(None);
        }
        let ca = self.etcd_ca.clone().ok_or(ConfigError::EtcdNoCa)?;
        Ok(Some(EtcdTls { ca, identity }))
    }

    /// This node as PEERS names it.
    pub fn me(&self) -> &Peer {
        self.peers
            .iter()
            .find(|p| p.name == self.node_name)
            .unwrap_or(&self.peers[0])
    }

    /// The other nodes, in PEERS order: the master role's secondaries.
    pub fn others(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.name != self.node_name)
    }

    /// A majority of the cluster's nodes.
    pub fn majority(&self) -> usize {
        self.peers.len() / 2 + 1
    }

    /// This node's standing before its log is read.
    pub fn standing(&self) -> Standing {
        let me = self.me();
        Standing {
            name: me.name.clone(),
            http: me.http.clone(),
            grpc: me.grpc.clone(),
            ..Standing::default()
        }
    }

    /// The master role's settings: the master's, with the other nodes as secondaries.
    pub fn master_role(&self) -> replog_master::config::Config {
        let mut master = self.master.clone();
        master.secondaries = self.others().map(|p| p.grpc.clone()).collect();
        master
    }

    /// The secondary role's settings: the shared ones, this node's ports, no test knobs.
    pub fn secondary_role(&self, role: SecondaryRole) -> replog_secondary::config::Config {
        let m = &self.master;
        replog_secondary::config::Config {
            host: m.host.clone(),
            http_port: m.http_port,
            grpc_port: self.grpc_port,
            master: None,
            storage: m.storage.clone(),
            auth: m.auth.clone(),
            tls: m.tls.clone(),
            limits: m.limits.clone(),
            runtime: m.runtime.clone(),
            shutdown: m.shutdown.clone(),
            delay_seconds: Duration::ZERO,
            error_rate: 0.0,
            failover: Some(role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the defaults below with `changes` (flag, value) applied.
    fn parse(changes: &[(&str, &str)]) -> Result<Config, String> {
        let mut settings = vec![
            ("--node-name", "a"),
            ("--peers", "a=h1:8000:50051,b=h2:8000:50051,c=h3:8000:50051"),
            ("--etcd-endpoints", "http://127.0.0.1:2379"),
            ("--data-dir", "/tmp/x"),
        ];
        for &(flag, value) in changes {
            match settings.iter_mut().find(|(f, _)| *f == flag) {
                Some(setting) => setting.1 = value,
                None => settings.push((flag, value)),
            }
        }
        let args = std::iter::once("replog").chain(settings.iter().flat_map(|(f, v)| [*f, *v]));
        let config = Config::try_parse_from(args).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn peers_name_every_node_with_both_ports() {
        let config = parse(&[]).expect("valid");
        assert_eq!(config.majority(), 2);
        assert_eq!(config.me().http, "h1:8000");
        let others: Vec<&str> = config.others().map(|p| p.grpc.as_str()).collect();
        assert_eq!(others, ["h2:50051", "h3:50051"]);
        assert_eq!(config.master_role().secondaries, ["h2:50051", "h3:50051"]);
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let refused = |changes: &[(&str, &str)], why: &str| {
            let error = parse(changes).expect_err("refused");
            assert!(error.contains(why), "{error}");
        };
        refused(&[("--node-name", "z")], "not among PEERS");
        refused(&[("--peers", "a=h:1")], "name=host");
        refused(&[("--peers", "a=h:1:2,a=h:3:4")], "twice");
        refused(&[("--failover-ttl-ms", "500")], "1000");
        refused(&[("--secondaries", "h:1")], "SECONDARIES");
    }

    #[test]
    fn etcd_tls_settings_go_with_https_endpoints() {
        let dir = std::env::temp_dir().join(format!("replog-etcd-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let ca = replog_node::tls::testing::TestCa::new("etcd CA");
        let issued = ca.issue(&["node-a"], replog_node::tls::testing::Validity::Current);
        let files = replog_node::tls::testing::write(&dir, "etcd", &issued, ca.pem());
        let path = |p: &Option<PathBuf>| p.as_ref().expect("written").display().to_string();
        let (cert, key, ca) = (
            path(&files.tls_cert),
            path(&files.tls_key),
            path(&files.tls_ca),
        );
        let https = (
            "--etcd-endpoints",
            "https://127.0.0.1:2379,https://127.0.0.2:2379",
        );
        let refused = |changes: &[(&str, &str)], why: &str| {
            let error = parse(changes).expect_err("refused");
            assert!(error.contains(why), "{error}");
        };

        let tls = parse(&[
            https,
            ("--etcd-ca", &ca),
            ("--etcd-cert", &cert),
            ("--etcd-key", &key),
        ])
        .expect("https with a CA and a client certificate")
        .etcd_tls()
        .expect("valid");
        let tls = tls.expect("TLS for https endpoints");
        assert_eq!(tls.ca.display().to_string(), ca);
        assert!(tls.identity.is_some());
        let without_identity = parse(&[https, ("--etcd-ca", &ca)]).expect("https with a CA");
        let tls = without_identity.etcd_tls().expect("valid").expect("TLS");
        assert_eq!(tls.identity, None);
        assert_eq!(parse(&[]).expect("http").etcd_tls().expect("valid"), None);

        refused(&[https], "ETCD_CA is not set");
        refused(&[("--etcd-ca", &ca)], "these are http://");
        refused(
            &[("--etcd-cert", &cert), ("--etcd-key", &key)],
            "these are http://",
        );
        refused(
            &[
                (
                    "--etcd-endpoints",
                    "http://127.0.0.1:2379,https://127.0.0.2:2379",
                ),
                ("--etcd-ca", &ca),
            ],
            "mixes http:// and https://",
        );
        refused(
            &[https, ("--etcd-ca", &ca), ("--etcd-cert", &cert)],
            "go together",
        );
        refused(
            &[https, ("--etcd-ca", &ca), ("--etcd-key", &key)],
            "go together",
        );
        let missing = dir.join("missing.pem").display().to_string();
        refused(&[https, ("--etcd-ca", &missing)], "ETCD_CA");
        refused(&[https, ("--etcd-ca", &missing)], "missing.pem");
        refused(
            &[
                https,
                ("--etcd-ca", &ca),
                ("--etcd-cert", &missing),
                ("--etcd-key", &key),
            ],
            "ETCD_CERT",
        );
        refused(&[https, ("--etcd-ca", &key)], "no certificate in the file");
        refused(
            &[
                https,
                ("--etcd-ca", &ca),
                ("--etcd-cert", &cert),
                ("--etcd-key", &cert),
            ],
            "ETCD_KEY",
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
