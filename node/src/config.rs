//! Configuration helpers shared by both binaries.
//!
//! Every setting is an environment variable and a CLI flag of the same name (`HTTP_PORT` and
//! `--http-port`). A bad setting stops the process at start with one clear line, because a node
//! that half-starts with a wrong setting is harder to debug than one that refuses.

use crate::storage::segments::{Retention, SegmentOpenError};
use crate::storage::FsyncPolicy;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A bad setting. Its message is the one line a process stops with ([`or_exit`]); clap prefixes
/// the setting's name for the ones it parses.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("`{0}` is not a number of seconds")]
    NotSeconds(String),
    #[error("`{0}` must be a finite number >= 0")]
    NegativeSeconds(String),
    #[error("`{value}`: {source}")]
    SecondsOutOfRange {
        value: String,
        source: std::time::TryFromFloatSecsError,
    },
    #[error("`{0}` is not a whole number of milliseconds")]
    NotMillis(String),
    #[error("must be at least 1 ms")]
    ZeroMillis,
    #[error("`{0}` is not a number")]
    NotANumber(String),
    #[error("`{0}` must be between 0 and 1")]
    NotAProbability(String),
    #[error("`{0}` is not host:port")]
    NotHostPort(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}` has no valid port")]
    NoPort(String),
    #[error("HOST `{host}`: {source}")]
    Host {
        host: String,
        source: std::io::Error,
    },
    #[error("HOST `{0}` resolves to no address")]
    HostUnresolved(String),
    #[error("`{0}` is not a whole number from 1 to {MAX_CONNECTIONS_CEILING}")]
    MaxConnections(String),
    #[error("DATA_DIR: {0}")]
    DataDir(#[from] SegmentOpenError),
    #[error("`{0}` is not a size in bytes (a whole number, optionally with KiB, MiB or GiB)")]
    NotBytes(String),
    #[error("`{0}` is below the least allowed, {1} bytes")]
    TooFewBytes(String, u64),
    #[error("`{0}` must be more than 0")]
    Zero(String),
    #[error("RETENTION_BYTES and RETENTION_SECONDS remove segment files: they need DATA_DIR")]
    RetentionWithoutDataDir,
}

/// Where a node keeps its log; the same settings on every node.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Directory of the durable log (segment files in `DATA_DIR/segments/`); unset, the log
    /// lives in memory only.
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// With `DATA_DIR`: bytes of the most recent payloads kept in memory; older ones are read
    /// back from the segment files when asked for (pages, catch-up), so memory does not grow
    /// with the log. Without `DATA_DIR` every entry stays in memory.
    #[arg(long, env = "CACHE_BYTES", default_value = "64MiB", value_parser = cache_bytes)]
    pub cache_bytes: u64,

    /// With `DATA_DIR`: the size at which a segment file is closed and the next one begun.
    #[arg(long, env = "SEGMENT_BYTES", default_value = "64MiB", value_parser = segment_bytes)]
    pub segment_bytes: u64,

    /// When appends reach the disk: `always` fsyncs before anything is acknowledged (survives
    /// power loss); `never` leaves it to the OS (survives a killed process, not power loss).
    #[arg(long, env = "FSYNC", default_value = "always")]
    pub fsync: FsyncPolicy,

    /// With `DATA_DIR`: keep the segment files' total size at about this, removing the oldest
    /// whole segments (never the one being written, never an id not yet decided). Unset, size
    /// removes nothing.
    #[arg(long, env = "RETENTION_BYTES", value_parser = retention_bytes)]
    pub retention_bytes: Option<u64>,

    /// With `DATA_DIR`: remove a whole segment once its last append is older than this many
    /// seconds (never the one being written). Unset, age removes nothing.
    #[arg(long, env = "RETENTION_SECONDS", value_parser = retention_seconds)]
    pub retention_seconds: Option<Duration>,
}

impl StorageArgs {
    /// The node's log: recovered from `DATA_DIR` (reporting a cut tail, a conversion of the
    /// single-file format, rebuilt indexes and damaged segments once), or a fresh one in
    /// memory. `new_log_id` names a log created here (the master makes one; a secondary passes
    /// an empty id and adopts the master's on first contact).
    ///
    /// A recovered log starts with every payload cold: start-up reads the last segment only,
    /// and entries are read back from the files as they are asked for.
    pub fn open(&self, new_log_id: impl FnOnce() -> String) -> Result<Opened, ConfigError> {
        if self.data_dir.is_none() && self.retention().is_some() {
            return Err(ConfigError::RetentionWithoutDataDir);
        }
        let Some(dir) = &self.data_dir else {
            return Ok(Opened {
                log: crate::log::Log::new(new_log_id()),
                file: None,
                doubt: Some("the log is kept in memory only (no DATA_DIR)".into()),
                incomplete: true,
            });
        };
        let config = crate::storage::segments::Config {
            fsync: self.fsync,
            segment_bytes: self.segment_bytes,
            ..Default::default()
        };
        let (file, opened) = crate::storage::SegmentLog::open(dir, config, new_log_id)?;
        if let Some(conversion) = &opened.converted {
            tracing::warn!(?conversion, "converted the single-file log (log.bin) into segment files; log.bin is kept as log.bin.converted");
        }
        for path in &opened.rebuilt_indexes {
            tracing::warn!(path = %path.display(), "rebuilt a missing or damaged segment index");
        }
        for damage in &opened.damaged {
            tracing::error!(path = %damage.path.display(), from = damage.ids.0, to = damage.ids.1, reason = %damage.reason, "ids of the log cannot be read from a damaged segment");
        }
        let doubt = match (&opened.cut, opened.created) {
            (Some(cut), _) => Some(format!(
                "a torn or corrupt tail was cut off the log ({})",
                cut.reason
            )),
            (None, Some(why)) => Some(format!("DATA_DIR held no log: {why}")),
            (None, None) if opened.unfinished => Some(
                "an earlier start found the log incomplete and did not finish recovering it".into(),
            ),
            (None, None) if self.fsync == crate::storage::FsyncPolicy::Never => {
                Some("FSYNC=never: a power failure may have taken acknowledged entries".into())
            }
            (None, None) => None,
        };
        if let Some(cut) = &opened.cut {
            tracing::warn!(path = %cut.path.display(), offset = cut.offset, bytes_cut = cut.bytes_cut, reason = %cut.reason, "cut a torn or corrupt tail off the log");
        }
        tracing::info!(path = %dir.display(), entries = opened.last_id, first_id = opened.first_id, log_id = opened.log_id, fsync = %self.fsync, "log recovered");
        let incomplete = opened.cut.is_some() || opened.created.is_some() || opened.unfinished;
        let log = crate::log::Log::resume(
            opened.log_id,
            opened.first_id,
            opened.last_id,
            opened.decided,
            opened.tombstones,
        )
        .with_files(file.reader());
        Ok(Opened {
            log,
            file: Some(file),
            doubt,
            incomplete,
        })
    }

    /// What retention removes (`RETENTION_BYTES`, `RETENTION_SECONDS`); `None` when neither
    /// is set: the log keeps everything.
    pub fn retention(&self) -> Option<Retention> {
        (self.retention_bytes.is_some() || self.retention_seconds.is_some()).then_some(Retention {
            max_bytes: self.retention_bytes,
            max_age: self.retention_seconds,
        })
    }

    /// The byte budget of cached payloads: `CACHE_BYTES` with `DATA_DIR`, none without (a log
    /// in memory keeps everything).
    pub fn cache_budget(&self) -> Option<usize> {
        self.data_dir
            .as_ref()
            .map(|_| usize::try_from(self.cache_bytes).unwrap_or(usize::MAX))
    }
}

/// A node's log as found at start.
pub struct Opened {
    pub log: crate::log::Log,
    /// The files it lives in; `None` in memory.
    pub file: Option<crate::storage::SegmentLog>,
    /// Why this log may lack entries that were acknowledged before this start, if it may: kept
    /// in memory only, no log in `DATA_DIR`, a cut tail, or `FSYNC=never`. A master with a doubt
    /// recovers the log from its secondaries before it takes an append.
    pub doubt: Option<String>,
    /// The log may lack entries this node acknowledged before, whatever the `FSYNC` policy:
    /// it is kept in memory only, or its file was created anew, cut, or found so by an earlier
    /// start that did not finish ([`crate::storage::SegmentLog::mark_complete`] says otherwise).
    pub incomplete: bool,
}

/// Authentication of the internal replication service, the same on master and secondaries.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Shared secret of the replication service. Unset, replication is open (logged at start).
    #[arg(long, env = "REPLICATION_TOKEN", value_parser = crate::auth::validate, hide_env_values = true)]
    pub replication_token: Option<String>,

    /// The same secret read from this file at start (a Docker or Kubernetes secret), so that it
    /// is not in the environment. `REPLICATION_TOKEN`, when set and not empty, is used instead.
    #[arg(long = "replication-token-file", env = "REPLICATION_TOKEN_FILE", value_name = "PATH", value_parser = crate::auth::read_file)]
    pub replication_token_from_file: Option<String>,
}

impl AuthArgs {
    /// The token, if one is set (an empty `REPLICATION_TOKEN=` counts as unset, so compose
    /// files can pass it through from an optional `.env`).
    pub fn token(&self) -> Option<&str> {
        self.replication_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(self.replication_token_from_file.as_deref())
    }

    /// Warns once at start when replication is open.
    pub fn warn_if_open(&self) {
        if self.token().is_none() {
            tracing::warn!("REPLICATION_TOKEN is not set: the replication service is open to anyone who reaches it");
        }
    }
}

/// Limits that keep a node responsive under large, many or hostile requests, and who may call
/// it from a browser.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Largest message accepted, in bytes (larger: 413).
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub max_message_bytes: usize,

    /// Appends (with `w` of 2 or more) waiting for their write concern at once; beyond it such
    /// appends answer 503 with `Retry-After` instead of piling up. A `w=1` append waits for no
    /// other node and is not counted.
    #[arg(long, env = "MAX_PENDING_APPENDS", default_value_t = 10_000)]
    pub max_pending_appends: usize,

    /// Seconds a connection may go without a complete request while none is in flight (from
    /// its start, or the end of its last answer), on HTTP/1 and HTTP/2, and a request's whole
    /// body may take (0 = no limit).
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value = "30", value_parser = seconds)]
    pub request_timeout_seconds: Duration,

    /// Client connections served at once on the HTTP port; one more is closed as soon as it is
    /// accepted (logged, and counted in `replog_connections_refused_total`).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024, value_parser = max_connections)]
    pub max_connections: usize,

    /// Origins whose web pages may call the API (CORS): a comma list of exact origins
    /// (`http://localhost:8080`), or `*` for any. Unset: none, only same-origin pages.
    #[arg(long, env = "CORS_ORIGINS", value_parser = crate::api::cors::parse_origins)]
    pub cors_origins: Option<crate::api::cors::CorsOrigins>,
}

impl LimitArgs {
    /// Time a client has to send a request's headers (`REQUEST_TIMEOUT_SECONDS`, 0 = none).
    pub fn header_timeout(&self) -> Option<Duration> {
        (!self.request_timeout_seconds.is_zero()).then_some(self.request_timeout_seconds)
    }
}

/// The most `MAX_CONNECTIONS` may be: far beyond what one node serves well, and what an open-file
/// limit allows.
const MAX_CONNECTIONS_CEILING: usize = 1 << 20;

/// `MAX_CONNECTIONS`: a whole number from 1 to [`MAX_CONNECTIONS_CEILING`].
fn max_connections(value: &str) -> Result<usize, ConfigError> {
    value
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_CONNECTIONS_CEILING).contains(n))
        .ok_or_else(|| ConfigError::MaxConnections(value.to_owned()))
}

/// Parses the command line and environment, or exits with one line naming the bad setting.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                error.exit();
            }
            let rendered = error.render().to_string();
            let line = rendered
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("invalid configuration")
                .trim_start_matches("error: ");
            eprintln!("configuration error: {line}");
            std::process::exit(2);
        }
    }
}

/// Stops the process with one line when a setting is bad.
pub fn or_exit<T, E: std::fmt::Display>(checked: Result<T, E>) -> T {
    checked.unwrap_or_else(|line| {
        eprintln!("configuration error: {line}");
        std::process::exit(2);
    })
}

/// Binds `port` on `host`, or stops the process with one line.
pub async fn listen_or_exit(host: &str, port: u16) -> tokio::net::TcpListener {
    let address = or_exit(bind_addr(host, port));
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {address}: {e}");
            std::process::exit(1);
        }
    }
}

/// A non-negative number of seconds, fractions allowed (`DELAY_SECONDS=0.5`).
pub fn seconds(value: &str) -> Result<Duration, ConfigError> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| ConfigError::NotSeconds(value.to_owned()))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(ConfigError::NegativeSeconds(value.to_owned()));
    }
    Duration::try_from_secs_f64(secs).map_err(|source| ConfigError::SecondsOutOfRange {
        value: value.to_owned(),
        source,
    })
}

/// A size in bytes: a whole number, optionally followed by `KiB`, `MiB` or `GiB`.
pub fn bytes(value: &str) -> Result<u64, ConfigError> {
    let text = value.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(ConfigError::NotBytes(value.to_owned())),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| ConfigError::NotBytes(value.to_owned()))
}

/// `CACHE_BYTES`: any size (0 keeps no payload cached).
fn cache_bytes(value: &str) -> Result<u64, ConfigError> {
    bytes(value)
}

/// `SEGMENT_BYTES`: at least 4 KiB, so that a segment holds more than its header.
fn segment_bytes(value: &str) -> Result<u64, ConfigError> {
    const LEAST: u64 = 4096;
    let size = bytes(value)?;
    if size < LEAST {
        return Err(ConfigError::TooFewBytes(value.to_owned(), LEAST));
    }
    Ok(size)
}

/// `RETENTION_BYTES`: a size in bytes, more than 0.
fn retention_bytes(value: &str) -> Result<u64, ConfigError> {
    match bytes(value)? {
        0 => Err(ConfigError::Zero(value.to_owned())),
        size => Ok(size),
    }
}

/// `RETENTION_SECONDS`: seconds, more than 0.
fn retention_seconds(value: &str) -> Result<Duration, ConfigError> {
    match seconds(value)? {
        age if age.is_zero() => Err(ConfigError::Zero(value.to_owned())),
        age => Ok(age),
    }
}

/// How often a node applies its retention: removing a segment is a few file operations, so
/// checking often keeps the log near its limits at no cost worth counting.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(1);

/// A whole number of milliseconds, at least 1.
pub fn millis(value: &str) -> Result<Duration, ConfigError> {
    let ms: u64 = value
        .trim()
        .parse()
        .map_err(|_| ConfigError::NotMillis(value.to_owned()))?;
    if ms == 0 {
        return Err(ConfigError::ZeroMillis);
    }
    Ok(Duration::from_millis(ms))
}

/// A probability in `0..=1`.
pub fn rate(value: &str) -> Result<f64, ConfigError> {
    let rate: f64 = value
        .trim()
        .parse()
        .map_err(|_| ConfigError::NotANumber(value.to_owned()))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(ConfigError::NotAProbability(value.to_owned()));
    }
    Ok(rate)
}

/// A `host:port` endpoint (host may be a name, resolved when connecting).
pub fn endpoint(value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    let value = value
        .strip_prefix("http://")
        .unwrap_or(value)
        .trim_end_matches('/');
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::NotHostPort(value.to_owned()))?;
    if host.is_empty() {
        return Err(ConfigError::NoHost(value.to_owned()));
    }
    port.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| ConfigError::NoPort(value.to_owned()))?;
    Ok(value.to_owned())
}

/// Resolves the bind address for a port on `HOST`.
pub fn bind_addr(host: &str, port: u16) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map_err(|source| ConfigError::Host {
            host: host.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| ConfigError::HostUnresolved(host.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_token_from_a_file() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            auth: AuthArgs,
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").expect("write");
        let path = path.to_string_lossy().into_owned();
        let parse = |args: &[&str]| Cli::try_parse_from([&["node"], args].concat());
        let file_only = parse(&["--replication-token-file", &path]).expect("parses");
        assert_eq!(file_only.auth.token(), Some("from-file"));
        let empty_token = parse(&["--replication-token", "", "--replication-token-file", &path]);
        assert_eq!(empty_token.expect("parses").auth.token(), Some("from-file"));
        let both = parse(&[
            "--replication-token",
            "direct",
            "--replication-token-file",
            &path,
        ]);
        assert_eq!(both.expect("parses").auth.token(), Some("direct"));
        let missing = dir.path().join("missing").to_string_lossy().into_owned();
        let err = parse(&["--replication-token-file", &missing])
            .err()
            .expect("a missing file is refused at start");
        assert!(err.to_string().contains("cannot read it"), "{err}");
    }

    #[test]
    fn parses_and_rejects_settings() {
        assert_eq!(seconds("1.5").ok(), Some(Duration::from_millis(1500)));
        assert!(matches!(
            seconds("-1"),
            Err(ConfigError::NegativeSeconds(_))
        ));
        assert!(matches!(seconds("soon"), Err(ConfigError::NotSeconds(_))));
        assert!(matches!(
            seconds("1e30"),
            Err(ConfigError::SecondsOutOfRange { .. })
        ));
        assert!(rate("0.3").is_ok());
        assert!(matches!(rate("1.5"), Err(ConfigError::NotAProbability(_))));
        assert_eq!(endpoint("http://s1:50051/").ok(), Some("s1:50051".into()));
        assert!(matches!(endpoint("s1"), Err(ConfigError::NotHostPort(_))));
        assert!(matches!(endpoint(":50051"), Err(ConfigError::NoHost(_))));
        assert!(matches!(endpoint("s1:0"), Err(ConfigError::NoPort(_))));
        assert!(matches!(millis("0"), Err(ConfigError::ZeroMillis)));
        assert_eq!(bytes("64MiB").ok(), Some(64 << 20));
        assert_eq!(bytes(" 1000 ").ok(), Some(1000));
        assert_eq!(bytes("2 GiB").ok(), Some(2 << 30));
        assert!(matches!(bytes("64MB"), Err(ConfigError::NotBytes(_))));
        assert!(matches!(bytes("-1"), Err(ConfigError::NotBytes(_))));
        assert!(matches!(
            bytes("99999999999999999999GiB"),
            Err(ConfigError::NotBytes(_))
        ));
        assert!(matches!(
            segment_bytes("1KiB"),
            Err(ConfigError::TooFewBytes(..))
        ));
        assert_eq!(
            max_connections("0").unwrap_err().to_string(),
            format!("`0` is not a whole number from 1 to {MAX_CONNECTIONS_CEILING}")
        );
        assert_eq!(
            seconds("soon").unwrap_err().to_string(),
            "`soon` is not a number of seconds"
        );
    }
}
