//! A real, single-member etcd for the failover tests: Debian's `etcd-server` (3.4), installed by
//! `scripts/setup`.
//!
//! Each [`Etcd`] runs on free loopback ports with a data directory of its own, held by a
//! [`Process`] like the replog nodes, so it goes when the test does. It can be paused (a hung
//! etcd: its sockets stay open and nothing answers), killed, and restarted on the same ports
//! with the same data, as an etcd machine that reboots.
//!
//! [`Etcd::start_tls_in`] serves clients over TLS only, asking each for a certificate
//! (`--client-cert-auth`). Its `GET /health` then stays on a plain-HTTP loopback port of its own
//! (`--listen-metrics-urls`), so that the kit's wait does not need TLS.

use crate::process::{Exited, Process};
use crate::{free_ports, fresh_log_dir, START_TIMEOUT};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where Debian's `etcd-server` puts the server.
const DEBIAN_ETCD: &str = "/usr/bin/etcd";

/// How many times [`Etcd::start_in`] starts over on new ports when another process took one.
const PORT_ATTEMPTS: usize = 3;

/// The PEM files of an etcd that serves its clients over TLS.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// etcd's certificate: its names must include the host clients dial (`127.0.0.1`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA clients' certificates must chain to.
    pub client_ca: PathBuf,
}

/// One etcd server, stopped (SIGKILL) when dropped.
pub struct Etcd {
    /// The member's `--name`, unique per client port: also names its data directory.
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Where `GET /health` is served over plain HTTP when the client port is TLS.
    metrics_port: u16,
    tls: Option<EtcdTlsFiles>,
    data_dir: PathBuf,
    log_path: PathBuf,
    process: Option<Process>,
    client: reqwest::Client,
}

impl Etcd {
    /// Starts an etcd in this test's fresh log directory ([`fresh_log_dir`]) and waits until it
    /// answers. For a test that also starts replog nodes, use [`Etcd::start_in`] with the
    /// directory they use, since [`fresh_log_dir`] empties it.
    pub async fn start() -> Etcd {
        Etcd::start_in(&fresh_log_dir()).await
    }

    /// Starts an etcd whose log (`etcd.log`) and data directory are in `dir`, on free loopback
    /// ports, and waits until `GET /health` says it is healthy (it has elected itself leader and
    /// serves requests). Starts over on new ports if another process took one first.
    pub async fn start_in(dir: &Path) -> Etcd {
        Etcd::start_with(dir, None).await
    }

    /// As [`Etcd::start_in`], serving clients over TLS with `tls` only (`https://`
    /// [`Etcd::endpoint`]) and taking only clients with a certificate that chains to
    /// `tls.client_ca`.
    pub async fn start_tls_in(dir: &Path, tls: EtcdTlsFiles) -> Etcd {
        Etcd::start_with(dir, Some(tls)).await
    }

    async fn start_with(dir: &Path, tls: Option<EtcdTlsFiles>) -> Etcd {
        let binary = etcd_binary();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        for attempt in 1..=PORT_ATTEMPTS {
            let ports = free_ports(3);
            let name = format!("etcd-{}", ports[0]);
            let mut etcd = Etcd {
                data_dir: dir.join(format!("{name}-data")),
                log_path: dir.join("etcd.log"),
                name,
                client_port: ports[0],
                peer_port: ports[1],
                metrics_port: ports[2],
                tls: tls.clone(),
                process: None,
                client: client.clone(),
            };
            etcd.spawn(&binary);
            match etcd.wait_healthy().await {
                Ok(()) => return etcd,
                Err(exited) if port_taken(&exited) && attempt < PORT_ATTEMPTS => {
                    eprintln!("etcd lost a port to another process; starting over");
                    let _ = std::fs::remove_dir_all(&etcd.data_dir);
                }
                Err(exited) => panic!("{exited}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `http://127.0.0.1:<client port>` (`https://` when it serves TLS), as `ETCD_ENDPOINTS`
    /// lists it.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<metrics port>`: `GET /health` and `/metrics` in plain HTTP, whether
    /// the client port serves TLS or not.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn process(&self) -> &Process {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    /// SIGSTOP, returning once every thread of etcd is stopped: from then on it answers nothing,
    /// while its sockets stay open (connections hang rather than fail).
    pub fn pause(&self) {
        self.process().pause();
    }

    /// SIGCONT: a paused etcd resumes where it was.
    pub fn resume(&self) {
        self.process()
            .signal(Signal::SIGCONT)
            .unwrap_or_else(|e| panic!("cannot continue {}: {e}", self.name));
    }

    /// SIGKILL: etcd is gone at once, as after a crash; its data directory stays.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Kills etcd if it runs and starts it again on the same ports with the same data (its keys
    /// and leases survive), then waits until it is healthy.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn(&etcd_binary());
        if let Err(exited) = self.wait_healthy().await {
            panic!("{exited}");
        }
    }

    fn spawn(&mut self, binary: &Path) {
        assert!(self.process.is_none(), "{} is already running", self.name);
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let metrics_url = self.metrics_url();
        let mut command = Command::new(binary);
        // Only what is set here: ETCD_* variables of the shell running the tests would be read
        // as settings.
        command
            .env_clear()
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("{}={peer_url}", self.name))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .arg("--listen-metrics-urls")
            .arg(&metrics_url);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        // etcd 3.4 refuses to start on other architectures than amd64 unless told to.
        if let Some(arch) = unsupported_arch() {
            command.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        let process = Process::spawn(&self.name, command, &self.log_path)
            .unwrap_or_else(|e| panic!("{e} (log: {})", self.log_path.display()));
        self.process = Some(process);
    }

    /// Polls `GET /health` on the metrics port until it reads `{"health":"true"}`; `Err` if
    /// etcd exits first. Panics after [`START_TIMEOUT`].
    async fn wait_healthy(&mut self) -> Result<(), Exited> {
        let url = format!("{}/health", self.metrics_url());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = self.client.get(&url).send().await {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                if body["health"] == "true" {
                    return Ok(());
                }
            }
            if let Some(process) = self.process.as_mut() {
                process.check_running()?;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer GET {url} with {{\"health\":\"true\"}} within {:?} (log: {})",
                self.name,
                START_TIMEOUT,
                self.log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The etcd server: Debian's, else the first `etcd` on `PATH`; panics naming `scripts/setup`.
fn etcd_binary() -> PathBuf {
    let debian = PathBuf::from(DEBIAN_ETCD);
    if debian.is_file() {
        return debian;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("etcd"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "etcd not found ({DEBIAN_ETCD} nor on PATH): run `scripts/setup`, which installs \
                 Debian's etcd-server"
            )
        })
}

/// `ETCD_UNSUPPORTED_ARCH` for this machine (Go's name of the architecture), `None` on amd64.
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => None,
        "aarch64" => Some("arm64"),
        "x86" => Some("386"),
        "powerpc64" => Some("ppc64le"),
        other => Some(other),
    }
}

/// Whether etcd exited because one of its ports was taken: Go writes "bind: address already
/// in use", in lower case.
fn port_taken(exited: &Exited) -> bool {
    exited.port_taken() || exited.log.to_lowercase().contains("address already in use")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kit's etcd answers, comes back with its data after a restart, and hangs while paused.
    #[tokio::test]
    async fn etcd_starts_pauses_and_restarts_with_its_data() {
        let mut etcd = Etcd::start().await;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()
            .expect("an HTTP client");
        let url = format!("{}/health", etcd.endpoint());
        etcd.pause();
        assert!(
            client.get(&url).send().await.is_err(),
            "a paused etcd answered"
        );
        etcd.resume();
        crate::wait_until(START_TIMEOUT, "etcd answers after SIGCONT", || {
            let request = client.get(&url).send();
            async move { request.await.is_ok() }
        })
        .await;
        let data = etcd.data_dir().to_path_buf();
        etcd.restart().await;
        assert_eq!(etcd.data_dir(), data);
        assert!(
            data.join("member").is_dir(),
            "no data in {}",
            data.display()
        );
    }
}
