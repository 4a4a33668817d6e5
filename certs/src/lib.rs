//! Certificates for replog's TLS, made with rcgen: one certificate authority and the
//! certificates it issues to nodes (each good as a server's and as a client's, so one file
//! serves a node's public port, its replication port and its calls to other nodes).
//!
//! For tests and the benchmark, which make their own keys at every run, and for a cluster's
//! first start (the `replog-certs` binary) when the operator brings no certificates of their
//! own. Keys are written with mode 0600.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("making a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate authority: its certificate, and its key to issue others.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long an issued certificate is valid, from a day ago (clocks differ) to `days` from now;
/// a negative `days` makes one that has already expired.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Validity { days: 365 }
    }
}

impl Authority {
    /// A new CA named `name` (its common name), valid for ten years.
    pub fn new(name: &str) -> Result<Authority, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        })
    }

    /// The CA's certificate (what peers are told to trust: `TLS_CA`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `name` (its common name) valid for `hosts` (DNS names or IP
    /// addresses), with a fresh key.
    pub fn issue(
        &self,
        name: &str,
        hosts: &[&str],
        validity: Validity,
    ) -> Result<Issued, CertError> {
        // The subject must differ from the CA's: a certificate named as its issuer reads as
        // self-signed to OpenSSL.
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = common_name(name);
        // rcgen derives the serial from the new key, so each certificate has its own.
        let now = OffsetDateTime::now_utc();
        params.not_after = now + Duration::days(validity.days);
        params.not_before = (now - Duration::days(1)).min(params.not_after - Duration::days(1));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem` (mode 0600); returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CertError> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        write(&cert, &self.cert_pem, false)?;
        write(&key, &self.key_pem, true)?;
        Ok((cert, key))
    }
}

/// Writes `contents` to `path` (replacing it whole: written beside it, then renamed, so a
/// node that reloads meanwhile reads the old file or the new one, never half of one).
pub fn write(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let failed = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let partial = path.with_extension("partial");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&partial).map_err(failed)?;
        file.write_all(contents.as_bytes()).map_err(failed)?;
    }
    std::fs::rename(&partial, path).map_err(failed)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_are_written_whole_and_keys_private() {
        let dir = std::env::temp_dir().join(format!("replog-certs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Authority::new("test CA").unwrap();
        assert!(ca.pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let one = ca
            .issue("node", &["localhost", "127.0.0.1"], Validity::default())
            .unwrap();
        let two = ca
            .issue("node", &["localhost"], Validity::default())
            .unwrap();
        assert_ne!(one.cert_pem, two.cert_pem, "each certificate is its own");
        let (cert, key) = one.write(&dir, "node").unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), one.cert_pem);
        assert!(std::fs::read_to_string(&key)
            .unwrap()
            .contains("PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the key is the owner's alone");
        }
        assert!(!dir.join("node.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
