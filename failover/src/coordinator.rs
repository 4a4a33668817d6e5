//! What the failover node needs from the store that decides who leads: a lease per node, a
//! place to publish where each node stands, and a leader key taken by compare-and-swap.
//!
//! The surface is small on purpose, so that a store other than etcd could serve it (a
//! Kubernetes `Lease` object holds a holder, a renew time and a duration, and updates by
//! resource version, which is the same compare-and-swap): [`crate::etcd::EtcdCoordinator`] is
//! the implementation the `replog` binary uses.
//!
//! Why leases and a transaction rather than etcd's election API (`Campaign`): a campaign
//! queues the candidate and makes it leader whenever the keys ahead of it go, however long
//! after it asked. By then other nodes may have received entries it lacks, and it would lead
//! without Raft's election restriction having been checked against them. Here a node takes the
//! leader key only in one transaction against the state it has just read (no leader key, the
//! term it read), right after it saw the standings of a majority and found itself the most
//! up-to-date; if anything moved, it reads again and decides again.
//!
//! Every call of an implementation is bounded in time: a store that does not answer gives an
//! error within the implementation's timeout, so the node's coordination loop never hangs and
//! the master's lease gate lapses on time.

use replog_node::failover::{Leader, Standing};
use std::future::Future;
use std::time::Duration;

/// Why a coordinator call failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The store says this node's lease is gone (expired or revoked): the keys attached to it
    /// (the standing, a leader key) are gone too. [`Coordinator::start`] grants a new one.
    #[error("the lease expired")]
    Expired,
    /// No lease is held: [`Coordinator::start`] was not called or the lease was revoked.
    #[error("no lease held")]
    NoLease,
    /// The store did not answer within the coordinator's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The store answered with an error or could not be reached.
    #[error("the coordinator's store failed: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A key holds a value this node cannot read.
    #[error("{key} holds an unreadable value: {reason}")]
    Malformed { key: String, reason: String },
}

/// The calls the failover node makes, each bounded by the implementation's timeout. Used
/// generically (the node is generic over it); every future is `Send` so that the node can run
/// its coordination in a spawned task.
pub trait Coordinator: Send {
    /// Grants this node a lease of `ttl`, rounded up to whole seconds and at least 1 s, and
    /// holds it from now on (in place of any lease held before: call it again after
    /// [`CoordinatorError::Expired`]). `Ok(the TTL granted)`, which the store may have raised
    /// to its minimum.
    fn start(
        &mut self,
        ttl: Duration,
    ) -> impl Future<Output = Result<Duration, CoordinatorError>> + Send;

    /// Renews the lease once: `Ok(the TTL as the store granted it)`, counted from when the
    /// store received the renewal (so from no earlier than when this call was made).
    /// [`CoordinatorError::Expired`] if the store says the lease is gone; other errors if it
    /// could not be asked.
    fn renew(&mut self) -> impl Future<Output = Result<Duration, CoordinatorError>> + Send;

    /// Publishes where this node stands under `P/nodes/<name>`, attached to the lease: it
    /// vanishes with the node's lease.
    fn publish(
        &mut self,
        standing: &Standing,
    ) -> impl Future<Output = Result<(), CoordinatorError>> + Send;

    /// Takes this node's standing away (a master's would go stale: it changes as the master
    /// appends, and counting a stale one could elect a node less up-to-date than another).
    fn withdraw(&mut self) -> impl Future<Output = Result<(), CoordinatorError>> + Send;

    /// Every published standing (unreadable ones left out: they do not count towards a
    /// majority).
    fn standings(&mut self)
        -> impl Future<Output = Result<Vec<Standing>, CoordinatorError>> + Send;

    /// Who leads: the leader key's value, `None` if there is no leader key.
    fn leader(&mut self) -> impl Future<Output = Result<Option<Leader>, CoordinatorError>> + Send;

    /// Campaigns in one transaction: if there is no leader key and the last term handed out
    /// (`P/term`) is still the one just read, puts the leader key = `leader` with its term set
    /// to `max(that term, floor) + 1`, attached to this node's lease, and stores that term.
    /// `Ok(Some(leader with its term))` if this node won; `Ok(None)` if another node leads or
    /// the term moved meanwhile (read and decide again).
    fn try_lead(
        &mut self,
        leader: Leader,
        floor: u64,
    ) -> impl Future<Output = Result<Option<Leader>, CoordinatorError>> + Send;

    /// Deletes the leader key if it still holds exactly `leader`: a later leader's key is left
    /// alone. `Ok` also when there was nothing to delete.
    fn resign(
        &mut self,
        leader: &Leader,
    ) -> impl Future<Output = Result<(), CoordinatorError>> + Send;

    /// Revokes the lease (on shutdown): the leader key and the standing attached to it vanish
    /// at once rather than after the TTL. `Ok` also when no lease was held or it had expired.
    fn revoke(&mut self) -> impl Future<Output = Result<(), CoordinatorError>> + Send;
}
