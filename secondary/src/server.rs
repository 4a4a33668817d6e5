//! Wires the secondary together: the gRPC replication server and the HTTP API, both stopped by
//! one shutdown token.
//!
//! When [`run`] returns, the secondary has let go of everything it took: both listeners, every
//! replication connection, and the log file. A failover node relies on it, starting the master
//! role on the same `DATA_DIR` right after the secondary role returns.

use crate::config::Config;
use crate::error::Error;
use crate::forward::Forwarder;
use crate::incoming::Cutter;
use crate::replica::Replica;
use crate::service::ReplicationService;
use crate::state::Secondary;
use replog_node::api::connections::Threads;
use replog_node::shutdown::Shutdown;
use replog_node::storage::SegmentLog;
use replog_proto::framing::MAX_MESSAGE_BYTES;
use replog_proto::v1::replication_server::ReplicationServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long the replication server may take to close the master's connection at shutdown.
const REPLICATION_LINGER: Duration = Duration::from_secs(1);

/// How long the replication server's connections may take to end once they are cut (a cut
/// connection fails at its next read or write, so this is a bound that is never reached).
const CUT_GRACE: Duration = Duration::from_secs(1);

pub async fn run(
    config: Config,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), Error> {
    tracing::info!(
        delay = ?config.delay_seconds,
        error_rate = config.error_rate,
        failover = config.failover.is_some(),
        "secondary starting"
    );
    // Certificates are read now (a bad file stops the node here) and again on SIGHUP or when
    // their files change.
    let tls = config.tls.load()?;
    if let Some(tls) = &tls {
        tls.reload_on_change(shutdown.clone());
    }
    // A fresh log has no identity yet: it adopts the master's on first contact.
    let replog_node::config::Opened {
        log,
        file,
        incomplete,
        ..
    } = config.storage.open(String::new)?;
    // A secondary's log is whole by definition: the master catches it up. In failover mode it
    // also vouches in elections for what it holds, so one that may lack entries it acknowledged
    // stays incomplete until it has caught up (see `Replica::rejoining`).
    let rejoining = config.failover.is_some() && incomplete;
    if let (Some(file), false) = (&file, rejoining) {
        file.mark_complete()?;
    }
    if rejoining {
        tracing::warn!("this node's log may lack entries it acknowledged before: it counts in elections again once it has caught up with the master");
    }
    config.auth.warn_if_open();
    let limits = config.limits.clone();
    let forward = Forwarder::for_config(&config, tls.as_ref())?;
    let grpc_address = grpc_listener.local_addr().map_err(Error::Listener)?;
    let http_address = http_listener.local_addr().map_err(Error::Listener)?;
    let secondary = Arc::new(Secondary::new(
        config,
        Replica::new(log)
            .with_master(file.as_ref().map_or(0, SegmentLog::master_instance))
            .rejoining(rejoining),
        file,
        forward,
        shutdown.clone(),
    ));
    // The last step that may fail: from here on, every task started is waited for.
    let threads = Threads::start(
        secondary.config.runtime.connection_threads,
        &secondary.metrics,
    );
    let threads = match threads {
        Ok(threads) => threads,
        Err(error) => {
            secondary.close();
            return Err(error.into());
        }
    };

    let token = secondary.config.auth.token().map(str::to_owned);
    let server = ReplicationServer::new(ReplicationService {
        secondary: secondary.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = tonic::service::interceptor::InterceptedService::new(
        server,
        move |request: tonic::Request<()>| {
            replog_node::auth::check(&request, token.as_deref())?;
            Ok(request)
        },
    );
    // Accepted connections get TCP_NODELAY and, with mutual TLS, their handshake; each is
    // wrapped so that a connection the master does not close can be cut at shutdown (see
    // `incoming`).
    let cutter = Cutter::default();
    let incoming = crate::incoming::incoming(grpc_listener, tls.clone(), cutter.clone());
    let grpc_shutdown = shutdown.clone();
    let mut grpc = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            // The master's batches (up to 4 MiB) arrive on one long-lived stream: windows larger
            // than a batch let each flow in without waiting for window updates.
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, grpc_shutdown.clone().cancelled_owned())
            .await;
        // A secondary that no longer takes replication stops (and exits non-zero, see below)
        // rather than serving an ever older log.
        if served.is_err() {
            grpc_shutdown.cancel();
        }
        served
    });
    tracing::info!(address = %grpc_address, "replication service listening");

    tracing::info!(address = %http_address, "HTTP API listening");
    let secondary_failed = secondary.clone();
    let served = replog_node::api::serve(
        http_listener,
        replog_node::api::router(secondary, axum::Router::new(), shutdown.clone(), &limits),
        shutdown.clone(),
        limits.clone(),
        threads,
        tls.clone(),
    )
    .await
    .map_err(Error::Http);
    shutdown.cancel();
    // The replication server stops accepting at once (its listener is closed). A master that
    // does not close its connection (paused, or gone without a FIN) would hold the graceful
    // stop open: it gets a moment, then its connection is cut.
    let replication = match tokio::time::timeout(REPLICATION_LINGER, &mut grpc).await {
        Ok(ended) => ended,
        Err(_) => {
            tracing::info!(linger = ?REPLICATION_LINGER, "the master's connection did not close; cutting it");
            cutter.cut();
            match tokio::time::timeout(CUT_GRACE, &mut grpc).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::warn!("the replication server did not stop after its connections were cut; dropping it");
                    grpc.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    // Whatever still holds the secondary (a connection task that outlived all of this), the
    // file is closed and nothing more is written to it.
    secondary_failed.close();
    replication??;
    if secondary_failed.has_storage_failed() {
        return Err(Error::StorageFailed);
    }
    tracing::info!("secondary stopped");
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use replog_proto::v1::replication_client::ReplicationClient;
    use replog_proto::v1::{Entry, MasterStart, ReplicateRequest};
    use std::path::{Path, PathBuf};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A directory of its own under the system's temporary one, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let name = format!(
                "replog-secondary-{}-{:x}",
                std::process::id(),
                rand::random::<u64>()
            );
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).expect("a temporary directory");
            Self(path.canonicalize().expect("its real path"))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// How many of this process's open files are `path`.
    fn opened(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .expect("the open files")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    /// Opens an HTTP/2 connection (preface and settings) and then says nothing more: a master
    /// that was paused or cut off, which never acknowledges the server's goodbye.
    async fn silent_master(address: std::net::SocketAddr) -> tokio::net::TcpStream {
        let mut tcp = tokio::net::TcpStream::connect(address)
            .await
            .expect("connected");
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        tcp.write_all(&hello).await.expect("the preface sent");
        // The server's settings: it serves the connection.
        let mut frame = [0u8; 9];
        tcp.read_exact(&mut frame)
            .await
            .expect("the server's settings");
        assert_eq!(frame[3], 4, "a SETTINGS frame");
        tcp
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_lets_go_of_its_file_and_ports_even_when_a_master_holds_its_connection() {
        let dir = TempDir::new();
        let config = Config::parse_from([
            std::ffi::OsStr::new("secondary"),
            "--data-dir".as_ref(),
            dir.0.as_os_str(),
        ]);
        let http = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let (http_address, grpc_address) = (
            http.local_addr().expect("its address"),
            grpc.local_addr().expect("its address"),
        );
        let shutdown = Shutdown::new();
        let storage = config.storage.clone();
        let running = tokio::spawn(run(config, http, grpc, shutdown.clone()));

        // A master replicates two entries over a stream it keeps open...
        let mut master = ReplicationClient::connect(format!("http://{grpc_address}"))
            .await
            .expect("the replication service");
        let (requests, outbound) = tokio::sync::mpsc::channel(4);
        let entries = (1..=2)
            .map(|id| Entry {
                id,
                message: format!("m{id}").into_bytes().into(),
                tombstone: false,
            })
            .collect();
        let request = ReplicateRequest {
            log_id: "L".into(),
            entries,
            decisions: None,
            master_instance: 1,
            starts: vec![MasterStart {
                instance: 1,
                recovered: 0,
            }],
            quiet: false,
            first_id: 0,
            last_id: 2,
        };
        requests.send(request).await.expect("queued");
        let mut replies = master
            .stream(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await
            .expect("a stream")
            .into_inner();
        let state = replies
            .message()
            .await
            .expect("an answer")
            .expect("a state");
        assert_eq!(state.held, 2);
        // ... and another never acknowledges the server's goodbye.
        let mut silent = silent_master(grpc_address).await;

        shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("run returns promptly")
            .expect("the task ran");
        assert!(stopped.is_ok(), "{stopped:?}");

        let file = dir.0.join(replog_node::storage::FILE_NAME);
        assert_eq!(opened(&file), 0, "the log file is still open");
        // The silent master's connection was closed.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest))
            .await
            .expect("the silent master's connection is closed");
        drop(closed);
        // The ports can be bound again, and the log opened: all of it is there.
        TcpListener::bind(http_address)
            .await
            .expect("the HTTP port is free");
        TcpListener::bind(grpc_address)
            .await
            .expect("the replication port is free");
        let opened = storage.open(String::new).expect("the log opens again");
        assert_eq!((opened.log.log_id(), opened.log.last_id()), ("L", 2));
        drop(requests);
    }
}
