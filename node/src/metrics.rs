//! Prometheus metrics, served as text at `GET /metrics` on every node.
//!
//! Counters and histograms are updated where things happen (the API layer for append
//! outcomes, the journal for disk writes, the senders for retries); gauges that describe state
//! (log size, lag, health) are read from the node's state at scrape time, so they cannot drift.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    /// Appends answered, by outcome (`committed`, `aborted`, `invalid`, `unavailable`, ...).
    pub appends: Family<Labels, Counter>,
    /// `appends{outcome="committed"}`, looked up once: the hot path's counter.
    committed: Counter,
    /// Time from an append's arrival to its successful answer.
    pub commit_latency: Histogram,
    /// Time of one write (and fsync, with `FSYNC=always`) of the log file.
    pub log_write_seconds: Histogram,
    /// Failed replication calls per secondary (each is retried).
    pub replication_retries: Family<Labels, Counter>,
    /// Entries the master holds that a secondary does not.
    pub replication_lag: Family<Labels, Gauge>,
    /// 1 for a secondary's current status, 0 for the others.
    pub secondary_status: Family<Labels, Gauge>,
    /// First retained id: reads below it answer 410 (1 until retention removes a segment).
    pub first_id: Gauge,
    pub last_id: Gauge,
    pub decided: Gauge,
    pub visible: Gauge,
    /// 1 while the node takes appends (master: quorum and no foreign log).
    pub writable: Gauge,
    /// Open client connections, by the thread that serves them (`api::connections`).
    connections: Family<Labels, Gauge>,
    /// Client connections closed at once because `MAX_CONNECTIONS` were open.
    pub connections_refused: Counter,
    /// Replication requests a secondary refused, by reason (`zero_id`, `divergent_entry`, ...).
    pub replication_refused: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("replog");
        let appends: Family<Labels, Counter> = Family::default();
        let committed = appends
            .get_or_create(&vec![("outcome", "committed".to_owned())])
            .clone();
        let metrics = Self {
            appends,
            committed,
            commit_latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
            log_write_seconds: Histogram::new(exponential_buckets(0.000_02, 2.0, 18)),
            replication_retries: Family::default(),
            replication_lag: Family::default(),
            secondary_status: Family::default(),
            first_id: Gauge::default(),
            last_id: Gauge::default(),
            decided: Gauge::default(),
            visible: Gauge::default(),
            writable: Gauge::default(),
            connections: Family::default(),
            connections_refused: Counter::default(),
            replication_refused: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "appends",
            "Appends answered, by outcome",
            metrics.appends.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "Time from an append's arrival to its successful answer",
            metrics.commit_latency.clone(),
        );
        registry.register(
            "log_write_seconds",
            "Time of one write (and fsync) of the log file",
            metrics.log_write_seconds.clone(),
        );
        registry.register(
            "replication_retries",
            "Failed replication calls per secondary, each retried",
            metrics.replication_retries.clone(),
        );
        registry.register(
            "replication_lag_entries",
            "Entries the master holds that a secondary does not",
            metrics.replication_lag.clone(),
        );
        registry.register(
            "secondary_status",
            "1 for each secondary's current health status",
            metrics.secondary_status.clone(),
        );
        registry.register(
            "log_first_id",
            "First retained id; reads below it answer 410",
            metrics.first_id.clone(),
        );
        registry.register("log_last_id", "Highest id held", metrics.last_id.clone());
        registry.register(
            "log_decided_id",
            "Decided frontier",
            metrics.decided.clone(),
        );
        registry.register(
            "log_visible_entries",
            "Visible entries",
            metrics.visible.clone(),
        );
        registry.register(
            "writable",
            "1 while the node takes appends",
            metrics.writable.clone(),
        );
        registry.register(
            "connections",
            "Open client connections, by the thread serving them",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once because MAX_CONNECTIONS were open",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "replication_refused",
            "Replication requests a secondary refused, by reason",
            metrics.replication_refused.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn append_outcome(&self, outcome: &'static str) {
        if outcome == "committed" {
            self.committed.inc();
            return;
        }
        self.appends
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    pub fn retry(&self, secondary: &str) {
        self.replication_retries
            .get_or_create(&vec![("secondary", secondary.to_owned())])
            .inc();
    }

    pub fn log_write(&self, took: Duration) {
        self.log_write_seconds.observe(took.as_secs_f64());
    }

    /// Sets a secondary's lag and one-hot status.
    pub fn secondary(&self, secondary: &str, lag: u64, status: &str) {
        self.replication_lag
            .get_or_create(&vec![("secondary", secondary.to_owned())])
            .set(lag as i64);
        for name in ["healthy", "suspected", "unhealthy"] {
            let labels = vec![
                ("secondary", secondary.to_owned()),
                ("status", name.to_owned()),
            ];
            self.secondary_status
                .get_or_create(&labels)
                .set(i64::from(name == status));
        }
    }

    /// The open-connection gauge of one thread (`main`, `extra-1`, ...).
    pub fn connections(&self, thread: &str) -> Gauge {
        self.connections
            .get_or_create(&vec![("thread", thread.to_owned())])
            .clone()
    }

    /// Counts a replication request a secondary refused.
    pub fn replication_refused(&self, reason: &'static str) {
        self.replication_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
