//! The TLS rows' certificates and the clients' side of TLS.
//!
//! Both systems get the same keys ([`replog_certs`]): one CA, and one certificate for
//! `127.0.0.1` and `localhost` (ECDSA P-256, rcgen's default) that every server presents, replog's nodes also to each
//! other (mutual TLS on replication) and Redis's replicas to their primary (`tls-replication`).
//! They are made when the run starts, in a temporary directory, and never written elsewhere.
//! The clients verify the servers against the CA and present no certificate, on both systems.

use anyhow::{Context, Result};
use replog_certs::{Authority, Validity};
use replog_node::tls::{connect, Connected, MaybeTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;
use tokio::net::TcpStream;

/// The run's CA and server certificate, as PEM files, and the clients' configuration.
pub struct Certs {
    _dir: TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client: Arc<ClientConfig>,
}

impl Certs {
    /// Makes the CA and the servers' certificate in a new directory under `tmp_root`.
    pub fn make(tmp_root: &Path) -> Result<Certs> {
        let dir = tempfile::Builder::new()
            .prefix("bench-tls-")
            .tempdir_in(tmp_root)?;
        crate::procs::register_dir(dir.path());
        let authority = Authority::new("replog bench CA")?;
        let (cert, key) = authority
            .issue(
                "replog bench server",
                &["127.0.0.1", "localhost"],
                Validity::default(),
            )?
            .write(dir.path(), "server")?;
        let ca = dir.path().join("ca.pem");
        replog_certs::write(&ca, authority.pem(), false)?;
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(authority.pem().as_bytes()) {
            roots.add(root.context("the CA's certificate")?)?;
        }
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Certs {
            ca,
            cert,
            key,
            client: Arc::new(client),
            _dir: dir,
        })
    }
}

/// A client's connection: plain TCP, or TLS over it (the nodes' own type).
pub type Conn = MaybeTls<Connected>;

/// Opens TLS on `tcp` with `config` when there is one (the server must be `127.0.0.1`).
pub async fn open(tcp: TcpStream, config: Option<&Arc<ClientConfig>>) -> Result<Conn> {
    let Some(config) = config else {
        return Ok(MaybeTls::Plain(tcp));
    };
    let tls = connect(config.clone(), "127.0.0.1:0", tcp)
        .await
        .context("TLS handshake")?;
    Ok(MaybeTls::Tls(Box::new(tls)))
}
