//! TLS with rustls (the *ring* provider; no OpenSSL): the node's certificate and key, the CA its
//! peers' certificates must chain to, and the rustls configurations made from them.
//!
//! - Replication is mutual TLS when `TLS_CERT`, `TLS_KEY` and `TLS_CA` are set: a secondary's
//!   replication port takes only clients whose certificate chains to `TLS_CA`
//!   ([`Tls::replication_server`]), and the master presents its own certificate and accepts only
//!   a secondary whose certificate chains to `TLS_CA` and names the host it dialled
//!   ([`Tls::replication_client`]).
//! - `PUBLIC_TLS=true` serves the public port (JSON, gRPC and gRPC-Web) over TLS with the same
//!   certificate, ALPN offering `h2` and `http/1.1` ([`Tls::public_server`]); a node that calls
//!   another's public port (a secondary forwarding an append) then verifies it against `TLS_CA`
//!   ([`Tls::public_client`]).
//!
//! Operators renew certificates, so nothing here is fixed at start: [`Tls::reload`] (on SIGHUP,
//! and when the files change: [`Tls::reload_on_change`]) reads the files again and builds new
//! configurations; connections made from then on use them, and those already open keep the ones
//! they were made with. A reload that fails (a half-written file) keeps the configurations in
//! use and says why.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
pub use rustls::{ClientConfig, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// ALPN protocols of a port that serves HTTP/2 and HTTP/1.1 (hyper picks by what comes).
const PUBLIC_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN of gRPC ports and clients: gRPC is HTTP/2 only.
const GRPC_ALPN: [&[u8]; 1] = [b"h2"];

/// How often [`Tls::reload_on_change`] looks at the files for a change.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The TLS settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file with this node's certificate (its chain, leaf first). With TLS_KEY and TLS_CA,
    /// replication is mutual TLS.
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of TLS_CERT (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM file with the CA certificates that peers' certificates must chain to.
    #[arg(long, env = "TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Serve the public port over TLS with TLS_CERT and TLS_KEY.
    #[arg(long, env = "PUBLIC_TLS", default_value_t = false)]
    pub public_tls: bool,
}

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS_CERT and TLS_KEY go together: set both or neither")]
    Half,
    #[error("TLS_CA needs TLS_CERT and TLS_KEY: mutual TLS presents this node's certificate")]
    CaWithoutIdentity,
    #[error("PUBLIC_TLS needs TLS_CERT and TLS_KEY")]
    PublicWithoutIdentity,
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: {source}", path.display())]
    Ca {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS_CA {}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsArgs {
    /// Whether any TLS is asked for.
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_ca.is_some()
            || self.public_tls
    }

    /// Checks that the settings go together (files are read by [`TlsArgs::load`]).
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(TlsError::Half);
        }
        let identity = self.tls_cert.is_some();
        if self.tls_ca.is_some() && !identity {
            return Err(TlsError::CaWithoutIdentity);
        }
        if self.public_tls && !identity {
            return Err(TlsError::PublicWithoutIdentity);
        }
        Ok(())
    }

    /// The node's TLS, read from the files; `None` when no TLS is set.
    pub fn load(&self) -> Result<Option<Arc<Tls>>, TlsError> {
        self.validate()?;
        if !self.enabled() {
            return Ok(None);
        }
        let read_as = Fingerprint::of(self);
        let configs = Configs::read(self)?;
        Ok(Some(Arc::new(Tls {
            args: self.clone(),
            configs: RwLock::new(configs),
            read_as: Mutex::new(read_as),
        })))
    }
}

/// The node's TLS configurations, rebuilt from the files on [`Tls::reload`].
#[derive(Debug)]
pub struct Tls {
    args: TlsArgs,
    configs: RwLock<Configs>,
    /// The files as they were when last read, taken just before reading them (a change while
    /// they are read shows at the next look).
    read_as: Mutex<Fingerprint>,
}

#[derive(Debug, Clone)]
struct Configs {
    public_server: Option<Arc<ServerConfig>>,
    public_client: Option<Arc<ClientConfig>>,
    replication_server: Option<Arc<ServerConfig>>,
    replication_client: Option<Arc<ClientConfig>>,
}

impl Tls {
    /// The public port's configuration, when `PUBLIC_TLS` is on.
    pub fn public_server(&self) -> Option<Arc<ServerConfig>> {
        self.configs().public_server
    }

    /// For calls to another node's public port (forwarded appends), when `PUBLIC_TLS` is on:
    /// its certificate must chain to `TLS_CA` (with this node's certificate offered, should
    /// that port ask for one).
    pub fn public_client(&self) -> Option<Arc<ClientConfig>> {
        self.configs().public_client
    }

    /// A secondary's replication port, when mutual TLS is on: only clients whose certificate
    /// chains to `TLS_CA`.
    pub fn replication_server(&self) -> Option<Arc<ServerConfig>> {
        self.configs().replication_server
    }

    /// The master's side of replication, when mutual TLS is on: presents this node's
    /// certificate and accepts only secondaries whose certificate chains to `TLS_CA`.
    pub fn replication_client(&self) -> Option<Arc<ClientConfig>> {
        self.configs().replication_client
    }

    /// Whether replication is mutual TLS.
    pub fn mutual(&self) -> bool {
        self.args.tls_ca.is_some()
    }

    /// Reads the files again; new connections use what they hold from now on. On an error the
    /// configurations in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.reload_as(Fingerprint::of(&self.args))
    }

    /// Reloads, recording `files`, the fingerprint taken just before reading them.
    fn reload_as(&self, files: Fingerprint) -> Result<(), TlsError> {
        *self.read_as.lock().unwrap_or_else(|p| p.into_inner()) = files;
        let configs = Configs::read(&self.args)?;
        *self.configs.write().unwrap_or_else(|p| p.into_inner()) = configs;
        Ok(())
    }

    /// Reloads if the files changed since they were last read; `None` if they did not. A reload
    /// that failed is not tried again until they change again.
    fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = Fingerprint::of(&self.args);
        let unchanged = *self.read_as.lock().unwrap_or_else(|p| p.into_inner()) == now;
        (!unchanged).then(|| self.reload_as(now))
    }

    /// Reloads on every SIGHUP and whenever the files change, until `shutdown`, logging each
    /// reload and each failed one; a failed reload (a pair half written) keeps the previous
    /// certificates, is logged once, and is tried again when the files next change.
    ///
    /// The files are looked at every 2 s (`LOOK_EVERY`) rather than watched through inotify
    /// (the `notify` crate): Kubernetes updates a mounted Secret, cert-manager's renewals
    /// included, by swapping a symlink to a new directory, so the file a watch was put on never
    /// changes (it is left behind, then deleted), and nobody sends a signal. A look is three
    /// `stat`s that follow the links as opening the files does (`Fingerprint`), which costs
    /// nothing and sees a rename, a link swap or a rewrite in place alike.
    pub fn reload_on_change(self: &Arc<Self>, shutdown: crate::shutdown::Shutdown) {
        tokio::spawn(self.clone().keep_current(shutdown, LOOK_EVERY));
    }

    async fn keep_current(self: Arc<Self>, shutdown: crate::shutdown::Shutdown, every: Duration) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGHUP: certificates are reloaded only when their files change");
                None
            }
        };
        let mut looks = tokio::time::interval(every);
        looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(hangups) => hangups.recv().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            let (cause, reloaded) = tokio::select! {
                _ = shutdown.cancelled() => return,
                signalled = hangup => match signalled {
                    true => ("SIGHUP", self.reload()),
                    // No more signals can come.
                    false => {
                        hangups = None;
                        continue;
                    }
                },
                _ = looks.tick() => match self.reload_if_changed() {
                    Some(reloaded) => ("the files changed", reloaded),
                    None => continue,
                },
            };
            match reloaded {
                Ok(()) => tracing::info!(cause, "TLS certificates reloaded"),
                Err(error) => {
                    tracing::error!(cause, %error, "TLS certificates not reloaded; the previous ones stay in use")
                }
            }
        }
    }

    fn configs(&self) -> Configs {
        self.configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What the certificate files are on disk, following symlinks as opening them does: each one's
/// device and inode (a file replaced by a rename or behind a swapped link is another inode),
/// length, and modification and change times (a file rewritten in place). `None` for a file
/// that cannot be looked at (gone for a moment while it is replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<Option<Stamp>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Fingerprint {
    fn of(args: &TlsArgs) -> Self {
        use std::os::unix::fs::MetadataExt;
        let files = [&args.tls_cert, &args.tls_key, &args.tls_ca];
        Self(
            files
                .into_iter()
                .flatten()
                .map(|path| {
                    let meta = std::fs::metadata(path).ok()?;
                    Some(Stamp {
                        device: meta.dev(),
                        inode: meta.ino(),
                        len: meta.len(),
                        modified: (meta.mtime(), meta.mtime_nsec()),
                        changed: (meta.ctime(), meta.ctime_nsec()),
                    })
                })
                .collect(),
        )
    }
}

impl Configs {
    fn read(args: &TlsArgs) -> Result<Self, TlsError> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Ok(Self {
                public_server: None,
                public_client: None,
                replication_server: None,
                replication_client: None,
            });
        };
        let identity = Arc::new(certified_key(cert, key)?);
        let roots = args.tls_ca.as_deref().map(roots).transpose()?.map(Arc::new);
        let public_server = if args.public_tls {
            let mut config = server_builder()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Fixed(identity.clone())));
            config.alpn_protocols = PUBLIC_ALPN.iter().map(|p| p.to_vec()).collect();
            Some(Arc::new(config))
        } else {
            None
        };
        let (public_client, replication_server, replication_client) = match (&roots, &args.tls_ca) {
            (Some(roots), Some(ca)) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                        .build()
                        .map_err(|source| TlsError::Verifier {
                            path: ca.clone(),
                            source,
                        })?;
                let mut server = server_builder()?
                    .with_client_cert_verifier(verifier)
                    .with_cert_resolver(Arc::new(Fixed(identity.clone())));
                server.alpn_protocols = GRPC_ALPN.iter().map(|p| p.to_vec()).collect();
                let client = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, TlsError> {
                    let mut config = ClientConfig::builder_with_provider(provider())
                        .with_safe_default_protocol_versions()?
                        .with_root_certificates(roots.clone())
                        .with_client_cert_resolver(Arc::new(Fixed(identity.clone())));
                    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                    Ok(Arc::new(config))
                };
                let public_client = if args.public_tls {
                    Some(client(&GRPC_ALPN)?)
                } else {
                    None
                };
                (
                    public_client,
                    Some(Arc::new(server)),
                    Some(client(&GRPC_ALPN)?),
                )
            }
            _ => (None, None, None),
        };
        Ok(Self {
            public_server,
            public_client,
            replication_server,
            replication_client,
        })
    }
}

/// The crypto provider every configuration uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_builder(
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, rustls::Error> {
    ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()
}

/// The certificate chain of `cert` with the key of `key`, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        path: key.to_owned(),
        source,
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|source| TlsError::Key {
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    Ok(certified)
}

/// Every certificate in the PEM file `path`; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The CA certificates of `path`, as the roots peers must chain to.
fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate).map_err(|source| TlsError::Ca {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// One certificate for every handshake, server or client side; a reload makes a new one.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Opens TLS on `tcp` to `address` (`host:port`) with `config`: the peer's certificate must
/// chain to the configuration's roots and name `host`.
pub async fn connect(
    config: Arc<ClientConfig>,
    address: &str,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<Connected> {
    handshake(config, host_of(address), tcp).await
}

/// The client's side of a handshake with `host` on `tcp`.
async fn handshake(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<Connected> {
    let name = server_name(host)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Why the TLS server at `address` refuses this node's connections with `config`, if it does
/// (`None`: it takes them, or cannot be reached at all). Under TLS 1.3 a server checks the
/// client's certificate after the client's side of the handshake is done, and a refusal then
/// reaches the client only as an alert on its next read, which a call's error often no longer
/// carries; so this connects, completes the handshake and reads for up to `wait`: a server
/// that took the certificate sends nothing the client must answer (a gRPC server waits for the
/// client's preface), one that refused it sends its alert.
pub async fn refusal(
    config: Arc<ClientConfig>,
    address: &str,
    wait: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let probe = async {
        let tcp = tokio::net::TcpStream::connect(address).await.ok()?;
        let mut tls = match connect(config, address, tcp).await {
            Ok(tls) => tls,
            Err(error) => return Some(error.to_string()),
        };
        let mut byte = [0u8; 1];
        match tls.read(&mut byte).await {
            Err(error) if rustls_error(&error).is_some() => Some(error.to_string()),
            _ => None,
        }
    };
    tokio::time::timeout(wait, probe).await.ok().flatten()
}

/// The host part of `host:port` (an IPv6 address without its brackets).
fn host_of(address: &str) -> &str {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _port)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn server_name(host: &str) -> std::io::Result<rustls::pki_types::ServerName<'static>> {
    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|error| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{host}` is not a name TLS can verify: {error}"),
        )
    })
}

/// A tonic connector (`Endpoint::connect_with_connector`) that dials TCP and opens TLS with
/// the configuration `pick` returns at each connection, so that a reload reaches new ones.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<Tls>,
    pick: fn(&Tls) -> Option<Arc<ClientConfig>>,
}

impl Connector {
    /// For replication (the master to its secondaries): [`Tls::replication_client`].
    pub fn replication(tls: Arc<Tls>) -> Self {
        Self {
            tls,
            pick: Tls::replication_client,
        }
    }

    /// For another node's public port: [`Tls::public_client`].
    pub fn public(tls: Arc<Tls>) -> Self {
        Self {
            tls,
            pick: Tls::public_client,
        }
    }
}

type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
                >,
            > + Send,
    >,
>;

impl tower::Service<hyper::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let config = (self.pick)(&self.tls);
        Box::pin(async move {
            let invalid =
                |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
            let config =
                config.ok_or_else(|| invalid("TLS is not configured for this connection"))?;
            let host = uri
                .host()
                .ok_or_else(|| invalid("the address has no host"))?;
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid("the address has no port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            Ok(hyper_util::rt::TokioIo::new(
                handshake(config, host, tcp).await?,
            ))
        })
    }
}

/// A connection accepted with TLS ([`accept`]).
pub type Accepted = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// A connection opened with TLS ([`connect`]).
pub type Connected = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TCP connection, with TLS (`T`: [`Accepted`] or [`Connected`]) or without, for code that
/// serves or speaks on either the same way.
pub enum MaybeTls<T> {
    Plain(tokio::net::TcpStream),
    /// Boxed: a TLS stream carries rustls's buffers.
    Tls(Box<T>),
}

/// Calls `$call` on the stream inside a pinned [`MaybeTls`].
macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($io) => {
                let $io = std::pin::Pin::new($io);
                $call
            }
            MaybeTls::Tls($io) => {
                let $io = std::pin::Pin::new($io.as_mut());
                $call
            }
        }
    };
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(io) => io.is_write_vectored(),
            MaybeTls::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// Accepts TLS on `tcp` with `config`, within `timeout` (a client that opens a connection and
/// never finishes its handshake does not hold it forever).
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: tokio::net::TcpStream,
    timeout: std::time::Duration,
) -> std::io::Result<Accepted> {
    match tokio::time::timeout(timeout, tokio_rustls::TlsAcceptor::from(config).accept(tcp)).await {
        Ok(accepted) => accepted,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no TLS handshake within {timeout:?}"),
        )),
    }
}

/// The rustls error inside `error`, when an I/O error is one (a refused handshake, an alert
/// from the peer): callers tell TLS failures from other ones by it.
pub fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Certificates made for tests: a CA and the certificates it issues ([`replog_certs`]),
/// written as the PEM files `TLS_CERT`, `TLS_KEY` and `TLS_CA` name.
#[cfg(any(test, feature = "test-certs"))]
pub mod testing {
    use super::TlsArgs;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use std::path::Path;

    /// A certificate authority of its own.
    pub struct TestCa(replog_certs::Authority);

    /// A certificate issued by a [`TestCa`], with its key.
    pub struct Issued {
        pub cert_pem: String,
        pub key_pem: String,
        /// The certificate as a peer sees it in the handshake.
        pub der: Vec<u8>,
    }

    /// How long an issued certificate is valid.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Validity {
        /// From yesterday to a year from now.
        Current,
        /// Ended years ago.
        Expired,
    }

    impl TestCa {
        /// A new CA named `name`, with a key of its own.
        pub fn new(name: &str) -> Self {
            Self(replog_certs::Authority::new(name).expect("a CA"))
        }

        /// The CA's certificate, PEM.
        pub fn pem(&self) -> &str {
            self.0.pem()
        }

        /// A certificate for `names` (host names or IP addresses), usable by a server and a
        /// client alike, as a node's is.
        pub fn issue(&self, names: &[&str], validity: Validity) -> Issued {
            let days = match validity {
                Validity::Current => replog_certs::Validity::default().days,
                Validity::Expired => -3650,
            };
            let issued = self
                .0
                .issue("replog node", names, replog_certs::Validity { days })
                .expect("a certificate");
            let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
                .expect("the certificate just made")
                .to_vec();
            Issued {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
                der,
            }
        }
    }

    /// Writes `issued` and `ca` as `<name>.crt`, `<name>.key` and `<name>-ca.crt` under `dir`
    /// (replacing files of those names whole) and returns the settings that name them.
    pub fn write(dir: &Path, name: &str, issued: &Issued, ca: &str) -> TlsArgs {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let ca_path = dir.join(format!("{name}-ca.crt"));
        for (path, text, secret) in [
            (&cert, issued.cert_pem.as_str(), false),
            (&key, issued.key_pem.as_str(), true),
            (&ca_path, ca, false),
        ] {
            replog_certs::write(path, text, secret)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        TlsArgs {
            tls_cert: Some(cert),
            tls_key: Some(key),
            tls_ca: Some(ca_path),
            public_tls: false,
        }
    }

    /// Writes `issued` and `ca` as Kubernetes mounts a Secret (cert-manager's renewals
    /// included): in a new directory `<dir>/..<version>`, which the link `<dir>/..data` is
    /// swapped to in one rename (the directory it led to before is removed), reached through
    /// the links `tls.crt`, `tls.key` and `ca.crt` to `..data/<file>`. Returns the settings that
    /// name those links.
    pub fn mount(dir: &Path, version: u32, issued: &Issued, ca: &str) -> TlsArgs {
        fn fail(what: &str, path: &Path, e: impl std::fmt::Display) -> ! {
            panic!("cannot {what} {}: {e}", path.display())
        }
        let target = format!("..{version}");
        std::fs::create_dir_all(dir.join(&target))
            .unwrap_or_else(|e| fail("create", &dir.join(&target), e));
        let files = [
            ("tls.crt", issued.cert_pem.as_str(), false),
            ("tls.key", issued.key_pem.as_str(), true),
            ("ca.crt", ca, false),
        ];
        for (name, text, secret) in files {
            let path = dir.join(&target).join(name);
            replog_certs::write(&path, text, secret).unwrap_or_else(|e| fail("write", &path, e));
        }
        let data = dir.join("..data");
        let before = std::fs::read_link(&data).ok();
        let swapping = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&target, &swapping)
            .unwrap_or_else(|e| fail("link", &swapping, e));
        std::fs::rename(&swapping, &data).unwrap_or_else(|e| fail("swap", &data, e));
        for (name, _, _) in files {
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                    .unwrap_or_else(|e| fail("link", &link, e));
            }
        }
        if let Some(before) = before.filter(|before| *before != Path::new(&target)) {
            let old = dir.join(before);
            std::fs::remove_dir_all(&old).unwrap_or_else(|e| fail("remove", &old, e));
        }
        TlsArgs {
            tls_cert: Some(dir.join("tls.crt")),
            tls_key: Some(dir.join("tls.key")),
            tls_ca: Some(dir.join("ca.crt")),
            public_tls: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_do_not_go_together_are_refused() {
        let path = || Some(PathBuf::from("x.pem"));
        let half = TlsArgs {
            tls_cert: path(),
            ..TlsArgs::default()
        };
        assert!(matches!(half.validate(), Err(TlsError::Half)));
        let ca_alone = TlsArgs {
            tls_ca: path(),
            ..TlsArgs::default()
        };
        assert!(matches!(
            ca_alone.validate(),
            Err(TlsError::CaWithoutIdentity)
        ));
        let public_alone = TlsArgs {
            public_tls: true,
            ..TlsArgs::default()
        };
        assert!(matches!(
            public_alone.validate(),
            Err(TlsError::PublicWithoutIdentity)
        ));
        assert!(TlsArgs::default().load().expect("no TLS is fine").is_none());
    }

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("secondary-1:50051"), "secondary-1");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:50051"), "::1");
        assert!(server_name("::1").is_ok());
    }

    use super::testing::{mount, write, Issued, TestCa, Validity};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loaded node TLS for `issued` trusting `ca`, its files under `dir` as `name`.
    fn node(dir: &Path, name: &str, issued: &Issued, ca: &TestCa) -> Arc<Tls> {
        write(dir, name, issued, ca.pem())
            .load()
            .expect("the files load")
            .expect("TLS is on")
    }

    /// A secondary's and a master's TLS of `ca`, for 127.0.0.1, with the secondary's
    /// certificate.
    fn secondary_and_master(dir: &Path, ca: &TestCa) -> (Issued, Arc<Tls>, Arc<Tls>) {
        let issued = ca.issue(&["127.0.0.1"], Validity::Current);
        let secondary = node(dir, "secondary", &issued, ca);
        let master = node(
            dir,
            "master",
            &ca.issue(&["127.0.0.1"], Validity::Current),
            ca,
        );
        (issued, secondary, master)
    }

    /// One loopback connection: the server accepts with `server`, the client connects to
    /// `127.0.0.1` with `client` and sends a byte that the server echoes. Returns the server's
    /// outcome and, on success, the certificate the client saw.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (std::io::Result<()>, Option<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("its address").to_string();
        let serving = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = accept(server, tcp, Duration::from_secs(5)).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            tls.write_all(&byte).await?;
            tls.flush().await
        });
        let tcp = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connected");
        let seen = async {
            let mut tls = connect(client, &address, tcp).await.ok()?;
            let seen = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
            tls.write_all(b"x").await.ok()?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.ok()?;
            Some(seen)
        }
        .await;
        let served = serving.await.expect("the server task");
        (served, seen)
    }

    /// The certificate `server`'s replication port presents to a connection of `client`,
    /// which it takes.
    async fn presented(server: &Tls, client: &Tls) -> Vec<u8> {
        let (served, seen) = handshake(
            server.replication_server().expect("a server"),
            client.replication_client().expect("a client"),
        )
        .await;
        served.expect("accepted");
        seen.expect("a certificate")
    }

    fn refusal(served: std::io::Result<()>) -> String {
        let error = served.expect_err("the server refuses the client");
        assert!(rustls_error(&error).is_some(), "not a TLS error: {error:?}");
        error.to_string()
    }

    #[tokio::test]
    async fn mutual_tls_between_two_nodes_of_one_ca() {
        let dir = tempfile::tempdir().expect("a directory");
        let ca = TestCa::new("cluster");
        let (server_cert, server, client) = secondary_and_master(dir.path(), &ca);
        assert!(server.mutual() && client.mutual());
        let (served, seen) = handshake(
            server.replication_server().expect("a server configuration"),
            client.replication_client().expect("a client configuration"),
        )
        .await;
        served.expect("the server takes the client");
        assert_eq!(seen, Some(server_cert.der));
    }

    #[tokio::test]
    async fn a_client_of_another_ca_without_a_certificate_or_expired_is_refused() {
        let dir = tempfile::tempdir().expect("a directory");
        let ca = TestCa::new("cluster");
        let other = TestCa::new("stranger");
        let (_, secondary, _) = secondary_and_master(dir.path(), &ca);
        let server = secondary
            .replication_server()
            .expect("a server configuration");

        // Its own certificate from another CA; it trusts the cluster's CA, so only the server
        // can refuse.
        let stranger = TlsArgs {
            tls_ca: write(
                dir.path(),
                "cluster-ca",
                &ca.issue(&[], Validity::Current),
                ca.pem(),
            )
            .tls_ca,
            ..write(
                dir.path(),
                "stranger",
                &other.issue(&["127.0.0.1"], Validity::Current),
                other.pem(),
            )
        };
        let stranger = stranger.load().expect("loads").expect("TLS is on");
        let (served, _) = handshake(
            server.clone(),
            stranger.replication_client().expect("a client"),
        )
        .await;
        let reason = refusal(served);
        assert!(reason.contains("UnknownIssuer"), "{reason}");

        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("the CA"))
            .expect("a root");
        let anonymous = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (served, _) = handshake(server.clone(), Arc::new(anonymous)).await;
        let reason = refusal(served);
        assert!(reason.contains("no certificates"), "{reason}");

        let expired = node(
            dir.path(),
            "expired",
            &ca.issue(&["127.0.0.1"], Validity::Expired),
            &ca,
        );
        let (served, _) = handshake(server, expired.replication_client().expect("a client")).await;
        let reason = refusal(served);
        assert!(reason.to_lowercase().contains("expired"), "{reason}");
    }

    #[tokio::test]
    async fn refusal_names_why_a_server_refuses_this_client() {
        let dir = tempfile::tempdir().expect("a directory");
        let ca = TestCa::new("cluster");
        let (_, secondary, master) = secondary_and_master(dir.path(), &ca);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("its address").to_string();
        let server = secondary.replication_server().expect("a server");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(tls) = accept(server.clone(), tcp, Duration::from_secs(5)).await {
                    held.push(tls);
                }
            }
        });
        let wait = Duration::from_millis(500);
        let client = master.replication_client().expect("a client");
        assert_eq!(super::refusal(client, &address, wait).await, None);

        let stranger = TlsArgs {
            tls_ca: master.args.tls_ca.clone(),
            ..write(
                dir.path(),
                "stranger",
                &TestCa::new("stranger").issue(&["127.0.0.1"], Validity::Current),
                ca.pem(),
            )
        }
        .load()
        .expect("loads")
        .expect("TLS is on");
        let reason = super::refusal(
            stranger.replication_client().expect("a client"),
            &address,
            wait,
        )
        .await
        .expect("refused");
        assert!(reason.contains("UnknownCA"), "{reason}");
    }

    #[tokio::test]
    async fn a_plaintext_client_is_refused() {
        let dir = tempfile::tempdir().expect("a directory");
        let ca = TestCa::new("cluster");
        let (_, secondary, _) = secondary_and_master(dir.path(), &ca);
        let server = secondary
            .replication_server()
            .expect("a server configuration");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("its address");
        let mut client = tokio::net::TcpStream::connect(address)
            .await
            .expect("connected");
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("written");
        let (tcp, _) = listener.accept().await.expect("accepted");
        let refused = accept(server, tcp, Duration::from_secs(5)).await;
        let reason = refusal(refused.map(drop));
        assert!(!reason.is_empty());
    }

    #[tokio::test]
    async fn a_reload_gives_new_connections_the_new_certificate() {
        let dir = tempfile::tempdir().expect("a directory");
        let ca = TestCa::new("cluster");
        let (first, server, client) = secondary_and_master(dir.path(), &ca);
        let connect_once = || {
            handshake(
                server.replication_server().expect("a server"),
                client.replication_client().expect("a client"),
            )
        };
        let (served, seen) = connect_once().await;
        served.expect("accepted");
        assert_eq!(seen.as_deref(), Some(&first.der[..]));

        let second = ca.issue(&["127.0.0.1"], Validity::Current);
        write(dir.path(), "secondary", &second, ca.pem());
        // Not read until the reload.
        let (_, seen) = connect_once().await;
        assert_eq!(seen.as_deref(), Some(&first.der[..]));
        server.reload().expect("the new files load");
        let (served, seen) = connect_once().await;
        served.expect("accepted");
        assert_eq!(seen.as_deref(), Some(&second.der[..]));

        // A half-written file keeps what is in use.
        std::fs::write(dir.path().join("secondary.key"), "garbage").expect("written");
        assert!(server.reload().is_err());
        let (served, seen) = connect_once().await;
        served.expect("accepted");
        assert_eq!(seen.as_deref(), Some(&second.der[..]));
    }

    #[tokio::test]
    async fn files_that_change_are_reloaded_once_per_change() {
        let dir = tempfile::tempdir().expect("a directory");
        let ca = TestCa::new("cluster");
        let (first, server, client) = secondary_and_master(dir.path(), &ca);
        let seen = || presented(&server, &client);
        assert!(server.reload_if_changed().is_none(), "nothing changed");
        assert_eq!(seen().await, first.der);

        let second = ca.issue(&["127.0.0.1"], Validity::Current);
        write(dir.path(), "secondary", &second, ca.pem());
        assert!(matches!(server.reload_if_changed(), Some(Ok(()))));
        assert!(server.reload_if_changed().is_none(), "reloaded once");
        assert_eq!(seen().await, second.der);

        // Half a pair: the key of another certificate, rewritten in place.
        let third = ca.issue(&["127.0.0.1"], Validity::Current);
        let key = dir.path().join("secondary.key");
        std::fs::write(&key, &third.key_pem).expect("written");
        assert!(matches!(server.reload_if_changed(), Some(Err(_))));
        assert!(server.reload_if_changed().is_none(), "tried again");
        assert_eq!(seen().await, second.der);
        // The other half.
        std::fs::write(dir.path().join("secondary.crt"), &third.cert_pem).expect("written");
        assert!(matches!(server.reload_if_changed(), Some(Ok(()))));
        assert_eq!(seen().await, third.der);

        // A file gone for a moment, then back.
        std::fs::remove_file(&key).expect("removed");
        assert!(matches!(server.reload_if_changed(), Some(Err(_))));
        std::fs::write(&key, &third.key_pem).expect("written");
        assert!(matches!(server.reload_if_changed(), Some(Ok(()))));
    }

    /// The files are links into a Kubernetes Secret's mount, replaced by swapping the link to a
    /// new directory; nobody sends a signal.
    #[tokio::test]
    async fn a_swapped_secret_reaches_new_handshakes_without_a_signal() {
        let dir = tempfile::tempdir().expect("a directory");
        let ca = TestCa::new("cluster");
        let secret = dir.path().join("secret");
        let first = ca.issue(&["127.0.0.1"], Validity::Current);
        let server = mount(&secret, 1, &first, ca.pem())
            .load()
            .expect("the files load")
            .expect("TLS is on");
        let client = node(
            dir.path(),
            "master",
            &ca.issue(&["127.0.0.1"], Validity::Current),
            &ca,
        );
        let shutdown = crate::shutdown::Shutdown::new();
        server.reload_on_change(shutdown.clone());
        let seen = || presented(&server, &client);
        assert_eq!(seen().await, first.der);

        for version in 2..=3 {
            let next = ca.issue(&["127.0.0.1"], Validity::Current);
            mount(&secret, version, &next, ca.pem());
            let deadline = std::time::Instant::now() + 4 * LOOK_EVERY;
            while seen().await != next.der {
                assert!(
                    std::time::Instant::now() < deadline,
                    "secret {version} not in use within {:?}",
                    4 * LOOK_EVERY
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        shutdown.cancel();
    }
}
