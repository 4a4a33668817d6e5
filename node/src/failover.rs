//! What the roles of a failover node share with the node that runs them (the `replog` binary
//! of the `replog-failover` crate): who leads, the master's lease, and where a secondary
//! stands in the election.
//!
//! In failover mode (`ETCD_ENDPOINTS`) the master and secondary roles run inside one process
//! that changes role as etcd says. The roles know nothing of etcd: they take these values
//! through their configs, so static mode (`master`, `secondary`) is the same code with them
//! absent.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The master as the coordinator names it: stored in etcd under the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Leader {
    /// The master's node name (`NODE_NAME`).
    pub name: String,
    /// Its public HTTP endpoint (host:port): where appends are forwarded.
    pub http: String,
    /// Its term: the `MasterStart` instance its log records.
    pub term: u64,
    /// When it took over, in milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
}

/// Where a node stands in the election, published for the others: Raft's election
/// restriction compares the last term (the master process that wrote the last id held), then
/// the length.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    pub name: String,
    /// Public HTTP endpoint (host:port).
    pub http: String,
    /// Replication endpoint (host:port).
    pub grpc: String,
    pub log_id: String,
    /// The master process (term) it follows: a new term is numbered above every one a
    /// majority follows.
    pub master_instance: u64,
    /// The master process (term) that wrote the last id held (0: none held): what the
    /// election compares. It lags `master_instance` while the node still receives the ids a
    /// new process recovered from earlier ones, and a node in that state holds no more of the
    /// log than one that already has them all.
    #[serde(default)]
    pub last_term: u64,
    /// Highest id held contiguously.
    pub held: u64,
    pub decided: u64,
    /// Its log may lack entries it acknowledged (it started with its log lost, created anew or
    /// cut) and it has not yet caught up with the master: see [`vouches`].
    #[serde(default)]
    pub rejoining: bool,
}

impl Standing {
    /// Raft's "at least as up-to-date": the later term of the last id held first, then the
    /// longer log; ties go to the smaller name, so every node that sees the same standings
    /// names the same best one.
    pub fn rank(&self) -> (u64, u64, std::cmp::Reverse<&str>) {
        (self.last_term, self.held, std::cmp::Reverse(&self.name))
    }
}

/// Whether a node that holds `held` ids of log `log_id` (`rejoining` as [`Standing::rejoining`]
/// says) counts towards the majority that elects a candidate holding `candidate_held` ids.
///
/// A majority that acknowledged an append shares a node with every majority that elects, and
/// that node vouches that the candidate, being at least as up-to-date, holds the append too.
/// A node vouches only for what it still holds: one that holds nothing is new, or it lost its
/// disk and may have been in the majority that acknowledged an append the candidate lacks; one
/// that is rejoining holds less than it once acknowledged until it has caught up with the
/// master. Neither counts, except in a new cluster, where the candidate holds nothing either.
pub fn vouches(candidate_held: u64, held: u64, log_id: &str, rejoining: bool) -> bool {
    candidate_held == 0 || (!rejoining && (held > 0 || !log_id.is_empty()))
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The master's lease, as this process may count on it: until the last renewal's send time
/// plus the TTL. etcd expires the lease no earlier than its own receipt of that renewal plus
/// the TTL, so the master stops deciding before any other node can be elected.
#[derive(Debug)]
pub struct LeaseGate {
    base: Instant,
    /// Nanoseconds after `base` until which the lease holds; 0: never / revoked.
    until: AtomicU64,
}

impl Default for LeaseGate {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            until: AtomicU64::new(0),
        }
    }
}

impl LeaseGate {
    /// The lease holds until `until` (never shortened by a late renewal's answer).
    pub fn extend_to(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.base).as_nanos() as u64;
        self.until.fetch_max(nanos, Ordering::SeqCst);
    }

    /// The lease is lost: nothing may be decided any more.
    pub fn revoke(&self) {
        self.until.store(0, Ordering::SeqCst);
    }

    /// Whether the lease holds at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::SeqCst);
        until > 0 && (now.saturating_duration_since(self.base).as_nanos() as u64) < until
    }

    /// How long the lease still holds at `now`.
    pub fn remaining(&self, now: Instant) -> Duration {
        let until = Duration::from_nanos(self.until.load(Ordering::SeqCst));
        until.saturating_sub(now.saturating_duration_since(self.base))
    }
}

/// What the master role needs in failover mode.
#[derive(Debug, Clone)]
pub struct MasterRole {
    /// This node's name.
    pub name: String,
    /// The term etcd gave this mastership: the master process is numbered so.
    pub term: u64,
    /// Decisions (commit, abort) are taken only while it holds.
    pub gate: Arc<LeaseGate>,
    /// Cancelled when the node loses the mastership: the role stops at once, its undecided
    /// appends answered "unknown".
    pub depose: CancellationToken,
    /// Who leads, for health.
    pub leader: watch::Receiver<Option<Leader>>,
}

/// What the secondary role needs in failover mode.
#[derive(Debug, Clone)]
pub struct SecondaryRole {
    /// This node's name.
    pub name: String,
    /// Who leads: appends are forwarded to its `http`.
    pub leader: watch::Receiver<Option<Leader>>,
    /// Where this node stands, updated as it receives entries and decisions (only
    /// `log_id`, `master_instance`, `last_term`, `held`, `decided` and `rejoining` are the
    /// role's to fill).
    pub standing: watch::Sender<Standing>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_holds_until_its_time_and_never_moves_back() {
        let gate = LeaseGate::default();
        let now = Instant::now();
        assert!(!gate.holds(now));
        gate.extend_to(now + Duration::from_secs(3));
        assert!(gate.holds(now + Duration::from_secs(2)));
        assert!(!gate.holds(now + Duration::from_secs(3)));
        gate.extend_to(now + Duration::from_secs(1));
        assert!(gate.holds(now + Duration::from_secs(2)));
        gate.revoke();
        assert!(!gate.holds(now));
    }

    #[test]
    fn the_best_standing_has_the_later_term_then_the_longer_log_then_the_smaller_name() {
        let s = |name: &str, master_instance, last_term, held| Standing {
            name: name.into(),
            master_instance,
            last_term,
            held,
            ..Standing::default()
        };
        assert!(s("b", 2, 2, 1).rank() > s("a", 1, 1, 9).rank());
        assert!(s("b", 2, 2, 5).rank() > s("a", 2, 2, 4).rank());
        assert!(s("a", 2, 2, 5).rank() > s("b", 2, 2, 5).rank());
        // Following a later term without any id of it yet is no later last term: the node
        // still catching up holds less of the same log.
        assert!(s("a", 1, 1, 10).rank() > s("b", 2, 1, 3).rank());
    }

    #[test]
    fn a_standing_without_a_last_term_reads_as_none() {
        let old = r#"{"name":"a","http":"a:1","grpc":"a:2","log_id":"L","master_instance":3,"held":5,"decided":4}"#;
        let standing: Result<Standing, _> = serde_json::from_str(old);
        assert!(
            matches!(&standing, Ok(s) if s.last_term == 0 && s.held == 5),
            "{standing:?}"
        );
    }
}
