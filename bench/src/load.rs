//! The closed loop: C clients, each sends one append, waits for its answer, sends the next.
//!
//! Every client runs as its own tokio task with its own connection. Latency is measured per
//! call, from just before the request is written to the moment the whole answer is read. Only
//! calls that start after the warm-up and finish before the end of the measuring window count;
//! throughput is those calls divided by the window's length.

use anyhow::Result;
use hdrhistogram::Histogram;
use std::future::Future;
use std::time::{Duration, Instant};

/// One client of the closed loop: a connection and the request it repeats.
pub trait Client: Send + 'static {
    /// Sends one append and waits for its answer; an error is any answer but success.
    fn call(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// The longest any single call may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What one closed-loop run measured.
pub struct Outcome {
    /// Latency of each successful call in the window, in microseconds.
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
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

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 120 s at 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Runs `clients` in a closed loop: `warmup`, then `window` measured.
pub async fn run<C: Client>(clients: Vec<C>, warmup: Duration, window: Duration) -> Outcome {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + window;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut hist = new_histogram();
                let mut errors = 0u64;
                let mut first_error = None;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let result = match tokio::time::timeout(CALL_TIMEOUT, client.call()).await {
                        Ok(result) => result,
                        Err(_) => Err(anyhow::anyhow!("no answer within {CALL_TIMEOUT:?}")),
                    };
                    let t1 = Instant::now();
                    if t0 < measure_from || t1 > end {
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            let us = (t1 - t0).as_micros().max(1) as u64;
                            hist.saturating_record(us);
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (hist, errors, first_error)
            })
        })
        .collect();
    let mut outcome = Outcome {
        hist: new_histogram(),
        errors: 0,
        first_error: None,
        window,
    };
    for task in tasks {
        match task.await {
            Ok((hist, errors, first_error)) => {
                outcome.hist.add(&hist).expect("same histogram bounds");
                outcome.errors += errors;
                if outcome.first_error.is_none() {
                    outcome.first_error = first_error;
                }
            }
            Err(e) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("client task: {e}"));
            }
        }
    }
    outcome
}
