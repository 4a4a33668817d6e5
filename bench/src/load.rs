//! The closed loop: C clients, each sends one append, waits for its answer, sends the next.
//!
//! A [`Driver`] runs as one tokio task: either one [`Client`] with its own connection, or the
//! clients that share one multiplexed connection (gRPC, see [`crate::grpc`]). Latency is
//! measured per call, from just before the request is written to the moment the whole answer
//! is read. Only calls that start after the warm-up and finish before the end of the measuring
//! window count; throughput is those calls divided by the window's length.

use crate::cpu;
use anyhow::Result;
use hdrhistogram::Histogram;
use std::future::Future;
use std::time::{Duration, Instant};

/// One client of the closed loop: a connection and the request it repeats.
pub trait Client: Send + 'static {
    /// Sends one append and waits for its answer; an error is any answer but success.
    fn call(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// Some of the closed loop's clients, driven by one task until the window ends.
pub trait Driver: Send + 'static {
    /// Runs the clients' calls, a client's next only once its last is answered, and counts
    /// those that fall in `window`.
    fn drive(self, window: Window) -> impl Future<Output = Tally> + Send;
}

/// A client alone: its calls one after the other, in its own task.
impl<C: Client> Driver for C {
    async fn drive(mut self, window: Window) -> Tally {
        let mut tally = Tally::default();
        loop {
            let t0 = Instant::now();
            if t0 >= window.end {
                break;
            }
            let result = match tokio::time::timeout(CALL_TIMEOUT, self.call()).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("no answer within {CALL_TIMEOUT:?}")),
            };
            tally.record(&window, t0, Instant::now(), result);
        }
        tally
    }
}

/// The longest any single call may take before it counts as an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// When calls count: those that start at or after `measure_from` and end by `end`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub measure_from: Instant,
    pub end: Instant,
}

/// What one driver counted in the window.
pub struct Tally {
    /// Latency of each successful call, in microseconds.
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            hist: new_histogram(),
            errors: 0,
            first_error: None,
        }
    }
}

impl Tally {
    /// Counts a call that ran from `t0` to `t1`, if it lies in the window.
    pub fn record(&mut self, window: &Window, t0: Instant, t1: Instant, result: Result<()>) {
        if t0 < window.measure_from || t1 > window.end {
            return;
        }
        match result {
            Ok(()) => {
                let us = (t1 - t0).as_micros().max(1) as u64;
                self.hist.saturating_record(us);
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    /// Takes in what another driver counted.
    fn add(&mut self, other: Tally) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Counts a failure that is no call's in the window (a connection lost, a task panicked):
    /// it must show in the table whenever it happened.
    pub fn error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// What one closed-loop run measured.
pub struct Outcome {
    /// Latency of each successful call in the window, in microseconds.
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
    /// CPU seconds the servers and the load generator spent in the window (see
    /// [`crate::cpu`]).
    pub cpu: Option<cpu::PerProcess>,
}

impl Outcome {
    pub fn ops(&self) -> u64 {
        self.hist.len()
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops() as f64 / self.window.as_secs_f64()
    }

    /// Latency at quantile `q`, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return f64::NAN;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 120 s at 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Runs `drivers` in a closed loop: `warmup`, then `window` measured, and what `processes`
/// (the servers) and this process spend of the CPU meanwhile.
pub async fn run<D: Driver>(
    drivers: Vec<D>,
    warmup: Duration,
    window: Duration,
    processes: cpu::Processes,
) -> Outcome {
    let measure_from = Instant::now() + warmup;
    let bounds = Window {
        measure_from,
        end: measure_from + window,
    };
    let cpu = tokio::spawn(cpu::measure(processes, bounds));
    let tasks: Vec<_> = drivers
        .into_iter()
        .map(|driver| tokio::spawn(driver.drive(bounds)))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        match task.await {
            Ok(tally) => total.add(tally),
            Err(e) => total.error(format!("client task: {e}")),
        }
    }
    Outcome {
        hist: total.hist,
        errors: total.errors,
        first_error: total.first_error,
        window,
        cpu: cpu.await.ok().flatten(),
    }
}
