//! The master's driver state: the [`Core`] behind one mutex, with the channels that carry out
//! its effects (the clients' verdicts, the journal, the link drivers' and the timer's
//! wake-ups), and the API's side of the master (admission, answers, health). The drivers share
//! it as one `Arc` to read and change the core ([`Master::read`], [`Master::update`]) and to
//! wait for their wake-ups; whatever else a driver needs (the stop signal, the metrics, its
//! settings) it is given when it is started, not read from here.

use crate::answers::{self, Verdict, Waiters};
use crate::config::Config;
use crate::core::{Core, Effect, Outcome, Progress, Quorum, Settings};
use crate::idempotency::{self, Claim, Keys};
use bytes::Bytes;
use replog_node::api::{ApiError, Health, Node, SecondaryHealth};
use replog_node::log::{Log, Message};
use replog_node::metrics::Metrics;
use replog_node::shutdown::{Phases, Shutdown};
use replog_node::storage::Record;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{watch, Notify, Semaphore};

/// Where records go to be made durable; `None` keeps the log in memory only.
pub type Journal = Option<UnboundedSender<Record>>;

/// Why the master (or the master role of a failover node) stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The shutdown signal: the process drained and stops.
    Stopped,
    /// Failover mode: the node lost the mastership (`MasterRole::depose`).
    Deposed,
    /// Failover mode: the lease lapsed before the node heard it was deposed; the node must
    /// give up the mastership if it still holds it.
    Lapsed,
    /// Failover mode: another node holds a more up-to-date log, or the term is not above
    /// every master process this log knows; the node must give up the mastership.
    Yielded,
}

pub struct Master {
    /// For the API: limits, write concerns, timeouts, the failover role.
    config: Config,
    /// The order of the master's stop; `shutdown` is its last phase.
    phases: Phases,
    /// Idempotency keys of recent appends.
    keys: Keys,
    inner: Mutex<Inner>,
    /// Wakes each link's driver: new entries, new decisions, a restarted secondary.
    wakes: Vec<Notify>,
    /// Wakes the timer when a pending append with a deadline arrives.
    timer: Notify,
    /// The highest visible id, for `Watch` streams.
    visible: watch::Sender<u64>,
    /// Cancelled to stop every task (a storage failure, the end of the master role).
    shutdown: Shutdown,
    /// Set when the journal failed: the process stops with an error.
    storage_failed: AtomicBool,
    /// One permit per append allowed to wait at once (`MAX_PENDING_APPENDS`).
    append_slots: Semaphore,
    /// Whether the core holds the log this master serves or will serve. Cleared while a log
    /// that may be incomplete is recovered, or when the file is older than the cluster's:
    /// lists then answer 503 rather than an empty log.
    known: AtomicBool,
    /// Failover mode: why the role ended, once it did (the first reason wins).
    ended: OnceLock<Ended>,
    metrics: Arc<Metrics>,
}

/// What the mutex guards: the core and where its effects go.
struct Inner {
    core: Core,
    waiters: Waiters,
    journal: Journal,
}

impl Master {
    /// A master over `log` (until another is installed, [`Master::install`]) that stops in
    /// `phases` and counts into `metrics`.
    pub fn new(config: Config, log: Log, phases: Phases, metrics: Arc<Metrics>) -> Self {
        let core = Core::new(
            Settings::from_config(&config),
            log,
            false,
            &[],
            Instant::now(),
        );
        // From the core, not the raw log: a recovered log is all decided only once in it.
        let (visible, _) = watch::channel(core.ledger().log().visible_upto());
        Self {
            inner: Mutex::new(Inner {
                core,
                waiters: Waiters::default(),
                journal: None,
            }),
            wakes: config.secondaries.iter().map(|_| Notify::new()).collect(),
            timer: Notify::new(),
            visible,
            shutdown: phases.stop.clone(),
            phases,
            keys: Keys::new(&config.keys),
            storage_failed: AtomicBool::new(false),
            append_slots: Semaphore::new(config.limits.max_pending_appends),
            known: AtomicBool::new(true),
            ended: OnceLock::new(),
            metrics,
            config,
        }
    }

    /// Stops the master because its log cannot be written.
    pub fn storage_failed(&self) {
        self.storage_failed.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
    }

    pub fn has_storage_failed(&self) -> bool {
        self.storage_failed.load(Ordering::SeqCst)
    }

    /// A panic while the lock was held cannot leave the core half-updated in a way a reader
    /// could misread, so poisoning is not fatal.
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock of a step that may decide: in failover mode, a master whose lease no longer
    /// holds (or that was deposed) freezes its core first, under the same lock, so that no
    /// decision is taken after the lease ended. The lease is checked after the lock is taken:
    /// the step runs within it.
    fn deciding(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.inner();
        if let Some(role) = &self.config.failover {
            if !inner.core.frozen()
                && (role.depose.is_cancelled() || !role.gate.holds(Instant::now()))
            {
                inner.core.freeze();
                // The role ends (see `end_role`); that needs no lock.
                let why = if role.depose.is_cancelled() {
                    Ended::Deposed
                } else {
                    Ended::Lapsed
                };
                if self.ended.set(why).is_ok() {
                    tracing::warn!(
                        term = role.term,
                        ?why,
                        "deciding nothing more: the master role ends"
                    );
                }
                self.shutdown.cancel();
            }
        }
        inner
    }

    /// Failover mode: the master role ends for `why`: its core decides nothing more, and every
    /// task stops at once (waiting appends hear "unknown"). The first reason is kept.
    pub fn end_role(&self, why: Ended) {
        if self.ended.set(why).is_ok() {
            tracing::warn!(?why, "the master role ends");
        }
        self.update(Core::freeze);
        self.shutdown.cancel();
    }

    /// Why the master role ended, if [`Master::end_role`] was called.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.get().copied()
    }

    /// Reads the core.
    pub fn read<T>(&self, look: impl FnOnce(&Core) -> T) -> T {
        look(&self.inner().core)
    }

    /// Changes the core and carries out its effects: the one way to write.
    pub fn update<T>(&self, change: impl FnOnce(&mut Core) -> T) -> T {
        let mut inner = self.deciding();
        let result = change(&mut inner.core);
        self.apply(&mut inner);
        result
    }

    /// Carries out the core's effects and publishes the visible frontier if it moved.
    fn apply(&self, inner: &mut Inner) {
        let Inner {
            core,
            waiters,
            journal,
        } = inner;
        for effect in core.drain_effects() {
            match effect {
                Effect::Persist(record) => {
                    let sent = journal.as_ref().map(|j| j.send(record));
                    if !matches!(sent, Some(Ok(()))) {
                        tracing::error!("the journal is gone; a record cannot become durable");
                    }
                }
                Effect::Answer { id, progress } => waiters.answer(id, progress),
                Effect::Wake(Some(index)) => self.wakes[index].notify_one(),
                Effect::Wake(None) => self.wakes.iter().for_each(Notify::notify_one),
                Effect::Timer => self.timer.notify_one(),
            }
        }
        let upto = core.ledger().log().visible_upto();
        replog_node::api::publish_visible(&self.visible, upto);
    }

    /// Time passed: aborts what expired and answers "unknown" to unconfirmed aborts past their
    /// bound. Returns the ids aborted and those answered "unknown".
    pub fn tick(&self, now: Instant) -> (Vec<u64>, Vec<u64>) {
        let mut inner = self.deciding();
        let Inner { core, waiters, .. } = &mut *inner;
        let ticked = core.tick(now, |id| waiters.listened(id));
        waiters.forget_unheard();
        self.apply(&mut inner);
        ticked
    }

    /// The driver of link `index` waits on this for something to send.
    pub fn wake(&self, index: usize) -> &Notify {
        &self.wakes[index]
    }

    /// The deadline timer waits on this for an append whose deadline comes before any it knew
    /// of.
    pub fn timer(&self) -> &Notify {
        &self.timer
    }

    /// Starts over with `log`: see [`Core::install`]. `journal` is where its records go.
    pub fn install(&self, log: Log, journal: Journal, starts: &[(u64, u64)]) {
        let mut inner = self.deciding();
        inner.core.install(log, journal.is_some(), starts);
        inner.journal = journal;
        self.apply(&mut inner);
    }

    /// Sets or clears why the master is read-only while it recovers its log.
    pub fn set_recovering(&self, reason: Option<String>) {
        self.update(|core| core.set_recovering(reason));
    }

    /// Says whether the core holds the log this master knows to be its own (see `known`).
    pub fn set_known(&self, known: bool) {
        self.known.store(known, Ordering::SeqCst);
    }

    /// See [`Core::quorum`].
    pub fn quorum(&self) -> Quorum {
        self.update(|core| core.quorum(Instant::now()))
    }

    /// Admission, the id and the client's channel, under one lock: the append's whole stay in
    /// the lock on the master's busiest path.
    fn admit(
        &self,
        message: Bytes,
        w: usize,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(Option<tokio::sync::SemaphorePermit<'_>>, u64, Verdict), ApiError> {
        let mut inner = self.deciding();
        let Inner { core, waiters, .. } = &mut *inner;
        core.admit(now)
            .map_err(|refused| ApiError::Unavailable(refused.0))?;
        // A w=1 append waits for nobody but the master's own disk, so others' waiting must not
        // refuse it, and it takes no slot; such appends cannot pile up behind a slow
        // secondary, and their number is bounded by the connections (MAX_CONNECTIONS) and the
        // streams each may have open.
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
        let id = core.append(message, w, deadline);
        let verdict = waiters.register(id);
        self.apply(&mut inner);
        Ok((slot, id, verdict))
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
                    let within =
                        crate::core::confirm_within(self.config.replication_timeout_seconds);
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
        now = answers::progress(&mut verdict).await?;
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
        // From the settings alone: no lock on the append's path before admission.
        let w = crate::core::write_concern(w, self.config.nodes())
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
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
                let claim = self.keys.claim(key.clone(), &message, Instant::now());
                match claim.map_err(|conflict| ApiError::Conflict(conflict.to_string()))? {
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
        let (_slot, id, outcome) = self.admit(message, w, deadline, now)?;
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

    /// The cold part of the page is read from the files after the core's lock is let go.
    fn page(&self, from_id: u64, limit: usize) -> Result<Vec<Message>, ApiError> {
        let page = self.read(|core| core.ledger().log().page(from_id, limit))?;
        Ok(page.read()?)
    }

    fn first_id(&self) -> u64 {
        self.read(|core| core.ledger().log().first_id())
    }

    fn readable(&self) -> Result<(), ApiError> {
        if self.known.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let reason = self.read(|core| core.recovering().unwrap_or_default().to_owned());
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
        let now = Instant::now();
        self.update(|core| {
            let quorum = core.quorum(now);
            let statuses: Vec<_> = (0..self.wakes.len())
                .map(|index| core.status(index, now))
                .collect();
            let ledger = core.ledger();
            let log = ledger.log();
            let secondaries = core
                .settings()
                .secondaries
                .iter()
                .zip(ledger.followers())
                .zip(statuses)
                .map(|((address, f), status)| SecondaryHealth {
                    address: address.clone(),
                    status: status.name(),
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
                first_id: log.first_id(),
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
                leadership: self.config.failover.as_ref().map(|role| {
                    replog_node::api::Leadership::of(&role.name, role.leader.borrow().as_ref())
                }),
                rejoining: None,
                reseeded_from: None,
            }
        })
    }
}
