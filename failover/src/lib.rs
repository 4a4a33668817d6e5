//! A replog node in failover mode (`ETCD_ENDPOINTS`): every node can serve either role. It
//! holds an etcd lease, publishes where it stands, and when no master leads, the most
//! up-to-date node of a majority takes the leader key; that node runs the master role, the
//! others the secondary role, forwarding appends to it.

pub mod config;
pub mod coordinator;
pub mod etcd;
pub mod node;

/// How long one call to etcd may take: a sixth of the lease, so a few can fail before the
/// lease lapses, and at most a second.
pub fn etcd_timeout(ttl: std::time::Duration) -> std::time::Duration {
    (ttl / 6).min(std::time::Duration::from_secs(1))
}
