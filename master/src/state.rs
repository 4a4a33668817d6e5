//! The master's shared state, one `Arc`'d struct that the API, the replication tasks and the
//! deadline task all hold.

use crate::config::Config;
use crate::deadlines;
use crate::idempotency::{self, Claim, Keys};
use crate::ledger::{self, ForeignLog, Journal, Ledger, Outcome, Progress, Verdict};
use crate::replication::health::{self, Status};
use crate::replication::Peer;
use bytes::Bytes;
use replog_node::api::{ApiError, Health, Node, SecondaryHealth};
use replog_node::log::{Log, Message};
use replog_node::metrics::Metrics;
use replog_node::shutdown::{Phases, Shutdown};
use replog_proto::v1::ReplicaState;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{watch, Notify, Semaphore};

pub struct Master {
    pub config: Config,
    /// The order of the master's stop; `shutdown` is its last phase.
    pub phases: Phases,
    /// Idempotency keys of recent appends.
    keys: Keys,
    ledger: Mutex<Ledger>,
    pub peers: Vec<Peer>,
    /// Wakes the deadline task when a pending append with a deadline arrives.
    pub deadline_wake: Notify,
    /// The highest visible id, for `Watch` streams.
    visible: watch::Sender<u64>,
    pub started: Instant,
    pub shutdown: Shutdown,
    /// Set when the journal failed: the process stops with an error.
    storage_failed: std::sync::atomic::AtomicBool,
    /// One permit per append allowed to wait at once (`MAX_PENDING_APPENDS`).
    append_slots: Semaphore,
    /// Why no append is taken while the log is recovered from the secondaries
    /// ([`crate::recovery`]); `None` once it serves.
    recovering: Mutex<Option<String>>,
    /// Whether the ledger holds the log this master serves or will serve. Cleared while a log
    /// that may be incomplete is recovered, or when the file is older than the cluster's:
    /// lists then answer 503 rather than an empty log.
    known: std::sync::atomic::AtomicBool,
    pub metrics: Metrics,
    /// When the master itself was not running, so that its own stall is not taken for the
    /// secondaries' silence.
    pub stalls: health::Stalls,
}

/// Whether the master may take appends.
#[derive(Debug, Clone)]
pub struct Quorum {
    pub reachable: usize,
    pub nodes: usize,
    /// Why appends are refused, if they are.
    pub refusal: Option<String>,
}

impl Master {
    pub fn new(
        config: Config,
        log: Log,
        journal: Journal,
        starts: &[(u64, u64)],
        phases: Phases,
    ) -> Result<Self, String> {
        let peers = config
            .secondaries
            .iter()
            .map(|address| Peer::new(address, &config))
            .collect::<Result<Vec<_>, _>>()?;
        let ledger = Ledger::new(log, peers.len(), journal, starts);
        // From the ledger, not the raw log: a recovered log is all decided only once in it.
        let (visible, _) = watch::channel(ledger.log().visible_upto());
        Ok(Self {
            ledger: Mutex::new(ledger),
            peers,
            deadline_wake: Notify::new(),
            visible,
            started: Instant::now(),
            shutdown: phases.stop.clone(),
            phases,
            keys: Keys::new(&config.keys),
            storage_failed: Default::default(),
            append_slots: Semaphore::new(config.limits.max_pending_appends),
            recovering: Mutex::new(None),
            known: std::sync::atomic::AtomicBool::new(true),
            metrics: Metrics::default(),
            stalls: Default::default(),
            config,
        })
    }

    /// Stops the master because its log cannot be written.
    pub fn storage_failed(&self) {
        self.storage_failed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shutdown.cancel();
    }

    pub fn has_storage_failed(&self) -> bool {
        self.storage_failed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The ledger, for reading. A panic while it was held cannot leave it half-updated in a way
    /// a reader could misread, so poisoning is not fatal.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the ledger and publishes the visible frontier if it moved: the one way to write.
    pub fn update<T>(&self, change: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut ledger = self.ledger();
        let result = change(&mut ledger);
        let upto = ledger.log().visible_upto();
        replog_node::api::publish_visible(&self.visible, upto);
        result
    }

    /// Sets or clears why the master is read-only while it recovers its log.
    pub fn set_recovering(&self, reason: Option<String>) {
        *self.recovering.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    fn recovering(&self) -> Option<String> {
        self.recovering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Says whether the ledger holds the log this master knows to be its own (see `known`).
    pub fn set_known(&self, known: bool) {
        self.known.store(known, std::sync::atomic::Ordering::SeqCst);
    }

    /// Replaces the ledger with one over the log to serve (after recovery) and publishes it.
    pub fn install(&self, ledger: Ledger) {
        self.update(|current| *current = ledger);
    }

    /// Checks `w` against the cluster: 1..=n+1, default n+1 (all nodes).
    fn write_concern(&self, w: Option<u64>) -> Result<usize, ApiError> {
        let nodes = self.config.nodes();
        match w {
            None => Ok(nodes),
            Some(w) if (1..=nodes as u64).contains(&w) => Ok(w as usize),
            Some(w) => Err(ApiError::Unprocessable(format!(
                "`w` must be between 1 and {nodes} (the nodes in the cluster), got {w}"
            ))),
        }
    }

    /// Tells every sender there is work: new entries or new decisions.
    pub fn wake_senders(&self) {
        for peer in &self.peers {
            peer.wake.notify_one();
        }
    }

    /// Takes a reply from secondary `index`; pushes new decisions at once.
    pub fn on_reply(&self, index: usize, state: &ReplicaState) -> Result<(), ForeignLog> {
        let (changed, restarted) = self.update(|ledger| {
            let instance = ledger.follower(index).instance;
            let changed = ledger.on_reply(index, state, Instant::now())?;
            Ok((changed, instance.is_some_and(|i| i != state.instance)))
        })?;
        if changed {
            self.wake_senders();
        } else if restarted {
            self.peers[index].wake.notify_one();
        }
        Ok(())
    }

    /// The health of a secondary last heard from at `last_contact`, as of `now`: silence counts
    /// only while the master itself ran (see [`health::Stalls`]).
    pub fn status_of(&self, last_contact: Option<Instant>, now: Instant) -> Status {
        self.stalls.status(
            last_contact.unwrap_or(self.started),
            now,
            health::Thresholds::from_config(&self.config),
        )
    }

    /// A majority of the n+1 nodes must be reachable, and no secondary may hold another log.
    pub fn quorum(&self) -> Quorum {
        self.quorum_in(&self.ledger(), Instant::now())
    }

    /// [`Master::quorum`] from a ledger already locked, as of `now`.
    fn quorum_in(&self, ledger: &Ledger, now: Instant) -> Quorum {
        let nodes = self.config.nodes();
        let mut reachable = 1;
        let mut refusal = self.recovering();
        for (peer, follower) in self.peers.iter().zip(ledger.followers()) {
            if let Some(foreign) = &follower.foreign_log {
                refusal = Some(format!(
                    "secondary {} holds log {foreign}, not this master's log {}: restart the master with its data, or wipe that secondary",
                    peer.address,
                    ledger.log().log_id()
                ));
            } else if self.status_of(follower.last_contact, now) != Status::Unhealthy {
                reachable += 1;
            }
        }
        if refusal.is_none() && reachable * 2 <= nodes {
            refusal = Some(format!(
                "no quorum: {reachable} of {nodes} nodes reachable; the master is read-only"
            ));
        }
        Quorum {
            reachable,
            nodes,
            refusal,
        }
    }
}

impl Master {
    /// The answer of the attempt behind a key, once it is decided or the grace period of a
    /// shutdown ends; `None` if it was refused before it appended (the key is free again).
    /// A `retry` of an abort no secondary has confirmed yet waits for the confirmation once
    /// more as long as the first attempt did, so a client retrying at once does not spin on
    /// "unknown".
    async fn answer_keyed(
        &self,
        state: tokio::sync::watch::Receiver<idempotency::State>,
        retry: bool,
    ) -> Option<Result<u64, ApiError>> {
        use idempotency::State;
        let last = state.clone();
        let settle = async {
            match idempotency::settled(state.clone()).await {
                unconfirmed @ State::AbortUnconfirmed(_) if retry => {
                    let within = deadlines::confirm_within(self.config.replication_timeout_seconds);
                    tokio::time::timeout(within, idempotency::decided(state))
                        .await
                        .unwrap_or(unconfirmed)
                }
                settled => settled,
            }
        };
        let state = tokio::select! {
            biased;
            state = settle => state,
            _ = self.phases.grace_over.cancelled() => *last.borrow(),
        };
        match state {
            State::Decided(id, outcome) => Some(answer(id, Some(Progress::Decided(outcome)))),
            State::AbortUnconfirmed(id) => Some(answer(id, Some(Progress::AbortUnconfirmed))),
            State::Pending(id) | State::Unknown(id) => Some(answer(id, None)),
            State::Admitting | State::Released => None,
        }
    }
}

/// The answer to an append given `id`, from what is known of it (`None`: the master stopped
/// waiting before there was a decision).
fn answer(id: u64, progress: Option<Progress>) -> Result<u64, ApiError> {
    match progress {
        Some(Progress::Decided(Outcome::Committed)) => {
            tracing::debug!(id, "append committed");
            Ok(id)
        }
        Some(Progress::Decided(Outcome::Aborted)) => {
            tracing::warn!(id, "append aborted: write concern not met in time");
            Err(ApiError::ReplicationFailed)
        }
        Some(Progress::AbortUnconfirmed) => {
            tracing::warn!(
                id,
                "append answered unknown: aborted, but no secondary has confirmed the abort"
            );
            Err(abort_unconfirmed(id))
        }
        Some(Progress::Waiting) | None => {
            tracing::warn!(
                id,
                "append answered unknown: the master stops before its decision"
            );
            Err(outcome_unknown(id))
        }
    }
}

/// The master took the append as `id` but stops before deciding it: it may commit (its entry
/// is in the log and may be on the secondaries) or not.
fn outcome_unknown(id: u64) -> ApiError {
    ApiError::OutcomeUnknown(format!(
        "the master is shutting down before the append (id {id}) was decided: it may or may not be committed; once the master is back, id {id} in the log shows whether it was"
    ))
}

/// The master aborted the append as `id` and holds its tombstone, but no secondary has
/// confirmed it: a master that lost its disk now would recover the log from the secondaries,
/// and one of them may hold the entry, so "not committed" is not yet a promise it can keep.
fn abort_unconfirmed(id: u64) -> ApiError {
    ApiError::OutcomeUnknown(format!(
        "the append (id {id}) was not replicated in time and the master aborted it, but no secondary has confirmed the abort yet (the master holds it, on its disk with DATA_DIR): a master that lost its disk now could still commit it; a retry with the same idempotency key learns the final answer (500 once a secondary confirms)"
    ))
}

/// Waits until `verdict` says something the client can be told: a decision, or that an abort
/// is not confirmed; `None` when the ledger dropped the append first (the master stops).
async fn told(mut verdict: Verdict) -> Option<Progress> {
    let mut now = *verdict.borrow_and_update();
    while now == Progress::Waiting {
        now = ledger::progress(&mut verdict).await?;
    }
    Some(now)
}

#[tonic::async_trait]
impl Node for Master {
    /// The append's life: admission, id, replication, commit or abort (ARCHITECTURE.md).
    async fn append(
        &self,
        message: String,
        w: Option<u64>,
        key: Option<String>,
    ) -> Result<u64, ApiError> {
        if self.phases.draining.is_cancelled() {
            return Err(ApiError::Unavailable(
                "the master is shutting down; nothing was appended".into(),
            ));
        }
        let w = self.write_concern(w)?;
        let limit = self.config.limits.max_message_bytes;
        if message.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "the message is {} bytes; the limit is {limit} (MAX_MESSAGE_BYTES)",
                message.len()
            )));
        }
        let message = Bytes::from(message);
        // A known key answers what became of its first attempt; a new one is held by this
        // attempt (and freed if it is refused before it appends).
        let ticket = match key {
            None => None,
            Some(key) => loop {
                if self.phases.draining.is_cancelled() {
                    return Err(ApiError::Unavailable(
                        "the master is shutting down; nothing was appended".into(),
                    ));
                }
                match self.keys.claim(key.clone(), &message, Instant::now())? {
                    Claim::First(ticket) => break Some(ticket),
                    Claim::Retry(state) => {
                        if let Some(answer) = self.answer_keyed(state, true).await {
                            return answer;
                        }
                    }
                }
            },
        };
        let timeout = self.config.replication_timeout_seconds;
        let now = Instant::now();
        let deadline = (!timeout.is_zero()).then(|| now + timeout);
        // Admission and the id under one lock: the append's whole stay in the ledger's lock on
        // the master's busiest path.
        let (_slot, id, outcome) = self.update(|ledger| {
            if let Some(reason) = self.quorum_in(ledger, now).refusal {
                return Err(ApiError::Unavailable(reason));
            }
            // A w=1 append waits for nobody but the master's own disk, so others' waiting
            // must not refuse it, and it takes no slot; such appends cannot pile up behind a
            // slow secondary, and their number is bounded by the connections
            // (MAX_CONNECTIONS) and the streams each may have open.
            let slot = if w > 1 {
                Some(self.append_slots.try_acquire().map_err(|_| {
                    ApiError::Overloaded(format!(
                        "{} appends are already waiting (MAX_PENDING_APPENDS); retry shortly",
                        self.config.limits.max_pending_appends
                    ))
                })?)
            } else {
                None
            };
            let was_idle = ledger.pending_count() == 0;
            let (id, rx) = ledger.append(message, w, deadline);
            if was_idle && ledger.pending_count() > 0 && deadline.is_some() {
                self.deadline_wake.notify_one();
            }
            Ok((slot, id, rx))
        })?;
        self.wake_senders();
        if let Some(ticket) = ticket {
            let answer = self.answer_keyed(ticket.bind(id, outcome), false).await;
            return answer.unwrap_or_else(|| Err(outcome_unknown(id)));
        }
        // The decision if it comes before the grace period of a shutdown ends (`biased`: one
        // that came is never answered "unknown"); the ledger dropping the append without one
        // happens only when the master stops, and is unknown too.
        let progress = tokio::select! {
            biased;
            progress = told(outcome) => progress,
            _ = self.phases.grace_over.cancelled() => None,
        };
        answer(id, progress)
    }

    fn page(&self, from_id: u64, limit: usize) -> Vec<Message> {
        self.ledger().page(from_id, limit)
    }

    fn readable(&self) -> Result<(), ApiError> {
        if self.known.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let reason = self.recovering().unwrap_or_default();
        Err(ApiError::Unavailable(format!(
            "{reason}; the log is listed once this master serves it"
        )))
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn nodes(&self) -> Option<u64> {
        Some(self.config.nodes() as u64)
    }

    fn visible(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    fn health(&self) -> Health {
        let quorum = self.quorum();
        let now = Instant::now();
        let ledger = self.ledger();
        let log = ledger.log();
        let secondaries = self
            .peers
            .iter()
            .zip(ledger.followers())
            .map(|(peer, f)| SecondaryHealth {
                address: peer.address.clone(),
                status: self.status_of(f.last_contact, now).name(),
                last_contact_ms_ago: f
                    .last_contact
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                acked_id: f.acked,
                held: f.held,
                lag: ledger.written().saturating_sub(f.held),
                last_error: f.last_error.clone(),
            })
            .collect();
        Health {
            role: "master",
            log_id: log.log_id().to_owned(),
            last_id: log.last_id(),
            decided: log.decided(),
            visible: log.visible_count(),
            pending: Some(ledger.pending_count() as u64),
            nodes: Some(quorum.nodes as u64),
            reachable: Some(quorum.reachable as u64),
            quorum: quorum.reachable * 2 > quorum.nodes,
            read_only: quorum.refusal.is_some(),
            read_only_reason: quorum.refusal,
            secondaries,
            last_contact_ms_ago: None,
        }
    }
}
