//! The tokio runtime a node runs on, sized by `WORKER_THREADS`.
//!
//! One worker per CPU (tokio's default) suits a node with a machine to itself. Nodes that share
//! a few CPUs (a whole cluster on one laptop or one small VM, as in `docker compose up` or the
//! benchmark) do better with one thread each: every hop of an append between tasks (HTTP
//! connection, replication sender, HTTP/2 connection) is then a queue push instead of a
//! cross-thread wake-up, which costs a futex call and often an inter-processor interrupt. With
//! `WORKER_THREADS=1` the node uses tokio's current-thread scheduler; blocking work (file writes,
//! fsync) still runs on tokio's blocking pool, never on that one thread.

use tokio::runtime::{Builder, Runtime};

#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Threads running the node's tasks: 0 = one per CPU; 1 = a single-threaded scheduler (best
    /// when several nodes share a few CPUs).
    #[arg(long, env = "WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}

impl RuntimeArgs {
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
        crate::config::or_exit(
            self.build()
                .map_err(|e| format!("cannot start the runtime (WORKER_THREADS): {e}")),
        )
    }
}
