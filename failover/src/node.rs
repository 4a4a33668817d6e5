//! The failover node: one process that serves as secondary or master as etcd says.
//!
//! Two tasks share the work. The *coordination* task alone talks to the [`Coordinator`]: it
//! renews this node's lease, keeps [`LeaseGate`] of the current mastership up to date, watches
//! the leader key, publishes where this node stands, and campaigns when no master leads and
//! [`may_campaign`] allows it. The *role* loop ([`run`]) runs the secondary role (the
//! `secondary` binary's server) or the master role (the `master` binary's server) on this
//! node's ports and data directory, one at a time, switching when the coordination task says
//! the node won or lost the mastership.
//!
//! Safety does not rest on this task's timing: the master role takes no decision once its
//! gate has lapsed (checked under the core's lock at the moment of each decision), and the
//! gate lapses before etcd can expire the lease (see [`LeaseGate`]). Deposing the role here
//! only makes the node give its port to the secondary role promptly.

use crate::config::Config;
use crate::coordinator::{Coordinator, CoordinatorError};
use replog_node::failover::{
    unix_ms, vouches, Leader, LeaseGate, MasterRole, SecondaryRole, Standing,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often the coordination task looks at etcd: the leader key's disappearance is noticed
/// within this, on top of the lease's TTL.
const POLL: Duration = Duration::from_millis(100);
/// How long a role may take to give its ports back before the next one binds them.
const BIND_WITHIN: Duration = Duration::from_secs(10);

/// Why the node stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("the master role failed: {0}")]
    Master(#[from] replog_master::error::Error),
    #[error("the secondary role failed: {0}")]
    Secondary(String),
    #[error("a role's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why this node may not campaign now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotEligible {
    #[error("only {seen} of the {needed} nodes a majority needs have published where they stand (and hold a log, if this node holds one)")]
    NoMajority { seen: usize, needed: usize },
    #[error("{0} holds a more up-to-date log")]
    NotBest(String),
    #[error("this node is still catching up with the master after it lost entries of its log")]
    Rejoining,
}

/// Raft's election restriction over published standings: this node may campaign only if it
/// sees the standings of a majority of `members` (itself included; a node that holds nothing
/// or is rejoining counts only as [`vouches`] says, and such a node does not campaign) and is the most up-to-date of them ([`Standing::rank`]).
/// A majority that acknowledged an append shares a node with every majority that elects, so
/// the winner holds every append acknowledged with `w` >= a majority. Returns the highest term
/// any of them follows: the new term is above it.
pub fn may_campaign(
    me: &Standing,
    seen: &[Standing],
    members: &[&str],
    majority: usize,
) -> Result<u64, NotEligible> {
    if !vouches(me.held, me.held, &me.log_id, me.rejoining) {
        return Err(NotEligible::Rejoining);
    }
    let mut counted: Vec<&Standing> = vec![me];
    for standing in seen {
        if standing.name != me.name
            && members.contains(&standing.name.as_str())
            && vouches(me.held, standing.held, &standing.log_id, standing.rejoining)
            && !counted.iter().any(|c| c.name == standing.name)
        {
            counted.push(standing);
        }
    }
    if counted.len() < majority {
        return Err(NotEligible::NoMajority {
            seen: counted.len(),
            needed: majority,
        });
    }
    let best = counted
        .iter()
        .max_by(|a, b| a.rank().cmp(&b.rank()))
        .map_or(me, |best| *best);
    if best.name != me.name {
        return Err(NotEligible::NotBest(best.name.clone()));
    }
    Ok(counted.iter().map(|s| s.master_instance).max().unwrap_or(0))
}

/// A mastership this node won: what the master role needs, and what the coordination task
/// keeps to end it.
#[derive(Debug, Clone)]
struct Mastership {
    leader: Leader,
    gate: Arc<LeaseGate>,
    depose: CancellationToken,
}

/// What the role loop is doing, for the coordination task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between roles, or starting: no campaign.
    Switching,
    /// The secondary role runs and has read its log: this node may campaign.
    Secondary,
    /// The master role runs.
    Master,
}

/// Runs the node until `shutdown`: the coordination task and the role loop.
pub async fn run<C: Coordinator + 'static>(
    config: Config,
    coordinator: C,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let config = Arc::new(config);
    let (leader_tx, leader_rx) = watch::channel(None);
    let (standing_tx, standing_rx) = watch::channel(config.standing());
    let (phase_tx, phase_rx) = watch::channel(Phase::Switching);
    let (won_tx, won_rx) = mpsc::channel(1);
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let stop_coordinating = CancellationToken::new();
    let coordination = tokio::spawn(coordinate(
        coordinator,
        Coordination {
            config: config.clone(),
            leader: leader_tx,
            standing: standing_rx.clone(),
            phase: phase_rx,
            won: won_tx,
            ended: ended_rx,
        },
        stop_coordinating.clone(),
    ));
    let roles = Roles {
        config,
        leader: leader_rx,
        standing: standing_tx,
        standing_rx,
        phase: phase_tx,
        won: won_rx,
        ended: ended_tx,
    };
    let result = roles.run(shutdown).await;
    stop_coordinating.cancel();
    coordination.await?;
    result
}

/// The role loop's handles.
struct Roles {
    config: Arc<Config>,
    leader: watch::Receiver<Option<Leader>>,
    standing: watch::Sender<Standing>,
    standing_rx: watch::Receiver<Standing>,
    phase: watch::Sender<Phase>,
    won: mpsc::Receiver<Mastership>,
    /// The master role ended: the coordination task resigns the mastership.
    ended: mpsc::UnboundedSender<Leader>,
}

impl Roles {
    async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        loop {
            let Some(mastership) = self.secondary(&shutdown).await? else {
                return Ok(());
            };
            self.master(mastership, &shutdown).await?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Runs the secondary role until this node wins the mastership (returned) or `shutdown`.
    async fn secondary(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Mastership>, Error> {
        let config = &self.config;
        let http = bind(&config.master.host, config.master.http_port).await?;
        let grpc = bind(&config.master.host, config.grpc_port).await?;
        let role = SecondaryRole {
            name: config.node_name.clone(),
            leader: self.leader.clone(),
            standing: self.standing.clone(),
        };
        let stop = shutdown.child_token();
        self.standing_rx.mark_unchanged();
        let mut serving = tokio::spawn(replog_secondary::server::run(
            config.secondary_role(role),
            http,
            grpc,
            stop.clone(),
        ));
        // The role reports its log once it has read it; only then does this node stand.
        let read = tokio::time::timeout(BIND_WITHIN, self.standing_rx.changed());
        tokio::select! {
            _ = read => {}
            ended = &mut serving => return role_ended(ended, shutdown),
        }
        self.phase.send_replace(Phase::Secondary);
        tracing::info!(node = %config.node_name, "serving as a secondary");
        let won = tokio::select! {
            won = self.won.recv() => won,
            _ = shutdown.cancelled() => None,
            ended = &mut serving => return role_ended(ended, shutdown),
        };
        self.phase.send_replace(Phase::Switching);
        stop.cancel();
        serving
            .await?
            .map_err(|e| Error::Secondary(e.to_string()))?;
        Ok(won)
    }

    /// Runs the master role of `mastership` until it is deposed, yields or `shutdown`.
    async fn master(
        &mut self,
        mastership: Mastership,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let config = &self.config;
        let leader = mastership.leader.clone();
        tracing::info!(node = %config.node_name, term = leader.term, "won the mastership: serving as the master");
        let listener = bind(&config.master.host, config.master.http_port).await?;
        let mut settings = config.master_role();
        settings.failover = Some(MasterRole {
            name: config.node_name.clone(),
            term: leader.term,
            gate: mastership.gate,
            depose: mastership.depose,
            leader: self.leader.clone(),
        });
        self.phase.send_replace(Phase::Master);
        let ended = replog_master::server::run(settings, listener, shutdown.clone()).await;
        self.phase.send_replace(Phase::Switching);
        let _ = self.ended.send(leader.clone());
        tracing::info!(node = %config.node_name, term = leader.term, outcome = ?ended, "the master role ended");
        ended.map(|_| ()).map_err(Error::from)
    }
}

/// The secondary role's task ended before this node won. Asked to (`shutdown`: it stops with
/// the node, and the signal may reach it before this node looks at `shutdown`), that is the
/// node's end, an error of the role's aside; otherwise it is an error: the role's own, or one
/// saying it stopped.
fn role_ended<E: std::fmt::Display>(
    ended: Result<Result<(), E>, tokio::task::JoinError>,
    shutdown: &CancellationToken,
) -> Result<Option<Mastership>, Error> {
    match ended? {
        Err(error) => Err(Error::Secondary(error.to_string())),
        Ok(()) if shutdown.is_cancelled() => Ok(None),
        Ok(()) => Err(Error::Secondary(
            "the secondary role stopped by itself".into(),
        )),
    }
}

/// Binds `host:port`, retrying while the previous role still holds it.
async fn bind(host: &str, port: u16) -> Result<TcpListener, Error> {
    let address = format!("{host}:{port}");
    let deadline = Instant::now() + BIND_WITHIN;
    loop {
        match TcpListener::bind(&address).await {
            Ok(listener) => return Ok(listener),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%address, %error, "port still taken; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => return Err(Error::Bind { address, source }),
        }
    }
}

/// The coordination task's handles.
struct Coordination {
    config: Arc<Config>,
    leader: watch::Sender<Option<Leader>>,
    standing: watch::Receiver<Standing>,
    phase: watch::Receiver<Phase>,
    won: mpsc::Sender<Mastership>,
    ended: mpsc::UnboundedReceiver<Leader>,
}

/// The lease as this task knows it.
#[derive(Debug, Default)]
struct Lease {
    /// Until when the lease holds by the last renewal (send time + TTL); `None`: none held.
    valid_until: Option<Instant>,
    /// When to renew next.
    renew_at: Option<Instant>,
}

/// Talks to the coordinator until `stop`, then revokes the lease.
async fn coordinate<C: Coordinator>(
    mut coordinator: C,
    mut handles: Coordination,
    stop: CancellationToken,
) {
    let config = handles.config.clone();
    let ttl = config.failover_ttl_ms;
    let mut lease = Lease::default();
    let mut mastership: Option<Mastership> = None;
    // Masterships this node ended and must still take off the leader key.
    let mut to_resign: Vec<Leader> = Vec::new();
    let mut published: Option<Standing> = None;
    // Whether the standing is withdrawn for the current mastership.
    let mut withdrawn = false;
    // No campaign before then (after a mastership ended, others get their turn first).
    let mut quiet_until = Instant::now();
    let members: Vec<String> = config.peers.iter().map(|p| p.name.clone()).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
            ended = handles.ended.recv() => {
                if let Some(leader) = ended {
                    if mastership.as_ref().is_some_and(|m| m.leader == leader) {
                        mastership = None;
                    }
                    to_resign.push(leader);
                    quiet_until = Instant::now() + ttl;
                }
            }
        }
        let now = Instant::now();

        // The lease: granted, renewed, or lost (which ends any mastership on it).
        if lease.valid_until.is_none() {
            match coordinator.start(ttl).await {
                Ok(granted) => {
                    tracing::info!(?granted, "holding an etcd lease");
                    lease.valid_until = Some(now + ttl.min(granted));
                    lease.renew_at = Some(now + ttl / 4);
                    published = None;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot get an etcd lease; retrying");
                    continue;
                }
            }
        } else if lease.renew_at.is_some_and(|at| at <= now) {
            lease.renew_at = Some(now + ttl / 4);
            match coordinator.renew().await {
                Ok(granted) => {
                    let until = now + ttl.min(granted);
                    lease.valid_until = Some(until);
                    if let Some(m) = &mastership {
                        m.gate.extend_to(until);
                    }
                }
                Err(CoordinatorError::Expired) => {
                    tracing::warn!("the etcd lease expired");
                    lease = Lease::default();
                    if let Some(m) = mastership.take() {
                        m.gate.revoke();
                        m.depose.cancel();
                    }
                    continue;
                }
                Err(error) => tracing::warn!(%error, "cannot renew the etcd lease"),
            }
        }
        if lease
            .valid_until
            .is_some_and(|until| until <= Instant::now())
        {
            // Unrenewed for a whole TTL: etcd may have expired it; start over with a new one.
            lease = Lease::default();
        }

        // A mastership whose gate lapsed is over, whatever etcd says later.
        if let Some(m) = &mastership {
            if !m.gate.holds(Instant::now()) {
                tracing::warn!(
                    term = m.leader.term,
                    "the lease lapsed: giving up the mastership"
                );
                m.depose.cancel();
                mastership = None;
            }
        }

        let mut kept = Vec::new();
        for leader in to_resign.drain(..) {
            if let Err(error) = coordinator.resign(&leader).await {
                tracing::warn!(%error, term = leader.term, "cannot resign yet; retrying");
                kept.push(leader);
            }
        }
        to_resign = kept;

        let current = match coordinator.leader().await {
            Ok(current) => current,
            Err(error) => {
                tracing::debug!(%error, "cannot read the leader key");
                continue;
            }
        };
        handles.leader.send_if_modified(|shown| {
            let changed = *shown != current;
            shown.clone_from(&current);
            changed
        });
        if let Some(m) = &mastership {
            // While master, this node publishes no standing: the one it published as a
            // secondary goes stale as it appends, and once it resigns another node could count
            // it towards a majority instead of a more up-to-date node's.
            if !withdrawn {
                match coordinator.withdraw().await {
                    Ok(()) => withdrawn = true,
                    Err(error) => {
                        tracing::warn!(%error, "cannot withdraw this node's standing yet")
                    }
                }
            }
            if current.as_ref() != Some(&m.leader) {
                tracing::warn!(
                    term = m.leader.term,
                    ?current,
                    "the leader key is no longer ours: giving up the mastership"
                );
                m.depose.cancel();
                mastership = None;
            }
            continue;
        }
        if *handles.phase.borrow() != Phase::Secondary {
            continue;
        }
        let standing = handles.standing.borrow().clone();
        if published.as_ref() != Some(&standing) {
            match coordinator.publish(&standing).await {
                Ok(()) => published = Some(standing.clone()),
                Err(error) => {
                    tracing::debug!(%error, "cannot publish this node's standing");
                    continue;
                }
            }
        }
        if current.is_some() || Instant::now() < quiet_until || lease.valid_until.is_none() {
            continue;
        }
        let seen = match coordinator.standings().await {
            Ok(seen) => seen,
            Err(error) => {
                tracing::debug!(%error, "cannot read the standings");
                continue;
            }
        };
        let floor = match may_campaign(&standing, &seen, &members, config.majority()) {
            Ok(floor) => floor,
            Err(why) => {
                tracing::debug!(%why, "not campaigning");
                continue;
            }
        };
        let me = config.me();
        let candidate = Leader {
            name: me.name.clone(),
            http: me.http.clone(),
            term: 0,
            since_unix_ms: unix_ms(),
        };
        match coordinator.try_lead(candidate, floor).await {
            Ok(Some(leader)) => {
                let gate = Arc::new(LeaseGate::default());
                // The leader key lives on this lease: it holds as long as the lease does.
                if let Some(until) = lease.valid_until {
                    gate.extend_to(until);
                }
                tracing::info!(term = leader.term, "won the election");
                handles.leader.send_replace(Some(leader.clone()));
                let won = Mastership {
                    leader,
                    gate,
                    depose: CancellationToken::new(),
                };
                mastership = Some(won.clone());
                published = None;
                withdrawn = false;
                if handles.won.send(won).await.is_err() {
                    break;
                }
            }
            Ok(None) => tracing::debug!("another node took the leader key first"),
            Err(error) => tracing::warn!(%error, "campaign failed"),
        }
    }
    if let Some(m) = mastership {
        m.gate.revoke();
        m.depose.cancel();
    }
    if let Err(error) = coordinator.revoke().await {
        tracing::warn!(%error, "cannot revoke the etcd lease; it expires by itself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that follows `master_instance` and holds ids it wrote.
    fn standing(name: &str, master_instance: u64, held: u64) -> Standing {
        Standing {
            name: name.into(),
            master_instance,
            last_term: master_instance,
            held,
            ..Standing::default()
        }
    }

    const MEMBERS: [&str; 3] = ["a", "b", "c"];

    #[test]
    fn a_node_campaigns_only_as_the_best_of_a_majority() {
        let me = standing("b", 3, 10);
        assert_eq!(
            may_campaign(&me, &[], &MEMBERS, 2),
            Err(NotEligible::NoMajority { seen: 1, needed: 2 })
        );
        assert_eq!(
            may_campaign(&me, &[standing("c", 3, 9)], &MEMBERS, 2),
            Ok(3)
        );
        assert_eq!(
            may_campaign(&me, &[standing("c", 4, 1)], &MEMBERS, 2),
            Err(NotEligible::NotBest("c".into()))
        );
        // Equal logs: the smaller name.
        assert_eq!(
            may_campaign(&me, &[standing("a", 3, 10)], &MEMBERS, 2),
            Err(NotEligible::NotBest("a".into()))
        );
    }

    #[test]
    fn a_node_catching_up_on_a_later_term_does_not_outrank_a_longer_log() {
        // c follows term 4 but holds only 3 ids, none of them term 4's.
        let behind = Standing {
            last_term: 3,
            ..standing("c", 4, 3)
        };
        let me = standing("b", 3, 10);
        // b campaigns, above the term c follows.
        assert_eq!(
            may_campaign(&me, std::slice::from_ref(&behind), &MEMBERS, 2),
            Ok(4)
        );
        assert_eq!(
            may_campaign(&behind, &[me], &MEMBERS, 2),
            Err(NotEligible::NotBest("b".into()))
        );
    }

    #[test]
    fn a_node_that_holds_nothing_counts_only_for_a_candidate_that_holds_nothing() {
        let wiped = standing("c", 0, 0);
        assert_eq!(
            may_campaign(
                &standing("b", 3, 10),
                std::slice::from_ref(&wiped),
                &MEMBERS,
                2
            ),
            Err(NotEligible::NoMajority { seen: 1, needed: 2 })
        );
        assert_eq!(
            may_campaign(&standing("b", 0, 0), &[wiped], &MEMBERS, 2),
            Ok(0)
        );
    }

    #[test]
    fn a_node_still_catching_up_after_losing_entries_neither_counts_nor_campaigns() {
        // c lost its disk and holds 6 of the ids again; b lacks some that a and c's lost disk
        // acknowledged, so c must not make b's majority, though b holds more than c.
        let rejoining = Standing {
            rejoining: true,
            ..standing("c", 3, 6)
        };
        assert_eq!(
            may_campaign(
                &standing("b", 3, 8),
                std::slice::from_ref(&rejoining),
                &MEMBERS,
                2
            ),
            Err(NotEligible::NoMajority { seen: 1, needed: 2 })
        );
        assert_eq!(
            may_campaign(&rejoining, &[standing("b", 3, 5)], &MEMBERS, 2),
            Err(NotEligible::Rejoining)
        );
        // Caught up, it counts again.
        let caught_up = Standing {
            rejoining: false,
            ..rejoining
        };
        assert_eq!(
            may_campaign(&standing("b", 3, 8), &[caught_up], &MEMBERS, 2),
            Ok(3)
        );
        // In a new cluster every node holds nothing and is rejoining: they elect one anyway.
        let new = Standing {
            rejoining: true,
            ..standing("c", 0, 0)
        };
        let other = Standing {
            rejoining: true,
            ..standing("b", 0, 0)
        };
        assert_eq!(may_campaign(&other, &[new], &MEMBERS, 2), Ok(0));
    }

    #[test]
    fn a_secondary_role_that_stops_with_the_node_is_no_error() {
        let shutdown = CancellationToken::new();
        let stopped = || Ok(Ok::<(), String>(()));
        assert!(matches!(
            role_ended(stopped(), &shutdown),
            Err(Error::Secondary(_))
        ));
        shutdown.cancel();
        assert!(matches!(role_ended(stopped(), &shutdown), Ok(None)));
        let failed = Ok(Err("disk full".to_owned()));
        assert!(matches!(
            role_ended(failed, &shutdown),
            Err(Error::Secondary(e)) if e == "disk full"
        ));
    }

    #[test]
    fn strangers_and_stale_copies_of_itself_do_not_count() {
        let me = standing("b", 3, 10);
        let seen = [standing("x", 9, 99), standing("b", 9, 99)];
        assert_eq!(
            may_campaign(&me, &seen, &MEMBERS, 2),
            Err(NotEligible::NoMajority { seen: 1, needed: 2 })
        );
    }
}
