//! The tokio runtime a node runs on, sized by `WORKER_THREADS`.
//!
//! One worker per CPU (tokio's default) suits a node with a machine to itself. Nodes that share
//! a few CPUs (a whole cluster on one laptop or one small VM, as in `docker compose up` or the
//! benchmark) do better with one thread each: every hop of an append between tasks (HTTP
//! connection, replication sender, HTTP/2 connection) is then a queue push instead of a
//! cross-thread wake-up, which costs a futex call and often an inter-processor interrupt. With
//! `WORKER_THREADS=1` the node uses tokio's current-thread scheduler, and writes its log file in
//! place on that thread ([`blocking_io`]); only the master's fsync, which overlaps shipping,
//! still goes to tokio's blocking pool.
//!
//! One thread is the limit when many clients arrive at once. `CONNECTION_THREADS` adds threads
//! of their own for client connections beyond the first 16, see [`crate::api::connections`].

use tokio::runtime::{Builder, Runtime};

#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Threads running the node's tasks: 0 = one per CPU; 1 = a single-threaded scheduler (best
    /// when several nodes share a few CPUs).
    #[arg(long, env = "WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Extra threads for client connections once the node's one thread serves 16 (needs
    /// `WORKER_THREADS=1`); see `api::connections`.
    #[arg(long, env = "CONNECTION_THREADS", default_value_t = 0)]
    pub connection_threads: usize,
}

/// More connection threads than this is a typo: each is a thread with a runtime of its own.
const MAX_CONNECTION_THREADS: usize = 64;

/// Why the runtime cannot be built as configured.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "CONNECTION_THREADS={0} needs WORKER_THREADS=1: a multi-thread runtime already spreads \
         connections over its workers"
    )]
    ConnectionThreadsNeedOneWorker(usize),
    #[error("CONNECTION_THREADS must be at most {MAX_CONNECTION_THREADS}")]
    TooManyConnectionThreads,
    #[error("cannot start the runtime (WORKER_THREADS): {0}")]
    Build(#[source] std::io::Error),
}

impl RuntimeArgs {
    fn validate(&self) -> Result<(), RuntimeError> {
        if self.connection_threads > 0 && self.worker_threads != 1 {
            return Err(RuntimeError::ConnectionThreadsNeedOneWorker(
                self.connection_threads,
            ));
        }
        if self.connection_threads > MAX_CONNECTION_THREADS {
            return Err(RuntimeError::TooManyConnectionThreads);
        }
        Ok(())
    }

    fn build(&self) -> std::io::Result<Runtime> {
        let mut builder = match self.worker_threads {
            1 => Builder::new_current_thread(),
            0 => Builder::new_multi_thread(),
            n => {
                let mut builder = Builder::new_multi_thread();
                builder.worker_threads(n);
                builder
            }
        };
        builder.enable_all().build()
    }

    /// The runtime, or the process stops with one line, as for a bad setting.
    pub fn build_or_exit(&self) -> Runtime {
        crate::config::or_exit(self.validate());
        crate::config::or_exit(self.build().map_err(RuntimeError::Build))
    }
}

/// Runs blocking file I/O (a write and its fsync) for async code, and returns its result.
///
/// On the current-thread scheduler (`WORKER_THREADS=1`) it runs in place. Handing it to the
/// blocking pool there costs two thread wake-ups per call (there and back), which on a loaded
/// machine is as much as the fsync itself, while the one thread has nothing to do meanwhile that
/// the next group commit would not batch anyway: work that arrives during the call waits in the
/// socket buffers and is taken in one go after it. On a multi-thread runtime it goes to the
/// blocking pool, so the workers keep serving.
pub async fn blocking_io<F, R>(f: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => Ok(f()),
        _ => tokio::task::spawn_blocking(f).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(worker_threads: usize, connection_threads: usize) -> RuntimeArgs {
        RuntimeArgs {
            worker_threads,
            connection_threads,
        }
    }

    #[test]
    fn connection_threads_need_one_worker_and_a_bound() {
        assert!(args(1, 4).validate().is_ok());
        assert!(args(0, 0).validate().is_ok());
        let error = args(0, 4).validate().unwrap_err();
        assert!(matches!(
            error,
            RuntimeError::ConnectionThreadsNeedOneWorker(4)
        ));
        assert_eq!(
            error.to_string(),
            "CONNECTION_THREADS=4 needs WORKER_THREADS=1: a multi-thread runtime already spreads \
             connections over its workers"
        );
        assert!(matches!(
            args(1, MAX_CONNECTION_THREADS + 1).validate(),
            Err(RuntimeError::TooManyConnectionThreads)
        ));
    }
}
