//! CPU time per call, per process: what the master (or Redis's primary), the secondaries (or
//! replicas) together, and the load generator each spend on one append, from `/proc/<pid>/stat`
//! (user plus system time) read at the start and at the end of the measured window.
//!
//! Why it is in every cell: throughput and latency say how fast a system is on this machine;
//! CPU per call says what each of its processes costs, which is what moves a figure when every
//! node and the client share a few CPUs. It is how the notes in `docs/bench/README.md` tell a
//! slow step (more CPU per call) from a busy machine (the same CPU, less throughput), and tell
//! the servers' cost from the client's, for both systems alike.

use crate::load::Window;
use serde::Serialize;

/// The server processes of one cell (the load generator is this process).
pub struct Processes {
    pub primary: u32,
    pub replicas: Vec<u32>,
}

/// One figure for each part of a cell: the master or primary, all secondaries or replicas
/// together, and the load generator (CPU seconds spent, or µs per call in the report).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerProcess {
    pub primary: f64,
    pub replicas: f64,
    pub client: f64,
}

impl PerProcess {
    /// Each figure through `f`.
    pub fn map(self, f: impl Fn(f64) -> f64) -> PerProcess {
        PerProcess {
            primary: f(self.primary),
            replicas: f(self.replicas),
            client: f(self.client),
        }
    }

    /// What was added to each figure since `earlier`.
    fn since(self, earlier: PerProcess) -> PerProcess {
        PerProcess {
            primary: self.primary - earlier.primary,
            replicas: self.replicas - earlier.replicas,
            client: self.client - earlier.client,
        }
    }
}

impl Processes {
    /// CPU seconds spent so far.
    fn sample(&self) -> Option<PerProcess> {
        let mut replicas = 0.0;
        for &pid in &self.replicas {
            replicas += seconds(pid)?;
        }
        Some(PerProcess {
            primary: seconds(self.primary)?,
            replicas,
            client: seconds(std::process::id())?,
        })
    }
}

/// The CPU seconds the processes spend within `window`; `None` if a process cannot be read
/// (not Linux, or one exited, which the cell reports as an error anyway).
pub async fn measure(processes: Processes, window: Window) -> Option<PerProcess> {
    tokio::time::sleep_until(window.measure_from.into()).await;
    let start = processes.sample()?;
    tokio::time::sleep_until(window.end.into()).await;
    Some(processes.sample()?.since(start))
}

/// A process's user plus system time so far, every thread's, in seconds.
fn seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_ticks(&stat)?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses itself,
    // so fields are counted from its last `)`: field 3, the state, comes first.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_name.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_time_are_read_after_the_command_name() {
        // A line as the kernel writes it, for a process whose name ("tokio-rt worker)") holds
        // a space and a parenthesis.
        let line = "4242 (tokio-rt worker)) S 1 4242 4242 0 -1 4194560 1234 0 5 0 \
                    731 269 0 0 20 0 3 0 98765 123456789 4567 18446744073709551615";
        assert_eq!(stat_ticks(line), Some(1000));
        assert_eq!(stat_ticks("4242 (cut"), None);
        assert_eq!(stat_ticks("4242 (short) S 1 2 3"), None);
    }

    #[test]
    fn this_process_has_spent_some_cpu() {
        let spent = seconds(std::process::id()).expect("/proc/self/stat");
        // Busy until the counter moves past one tick (10 ms on most systems), or fail.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let later = seconds(std::process::id()).expect("/proc/self/stat");
            if later > spent {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no CPU time counted in 10 s of work"
            );
        }
    }
}
