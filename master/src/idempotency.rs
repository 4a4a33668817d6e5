//! Idempotency keys: an append may carry a key chosen by its client, and the master remembers
//! what became of it, so that a client whose answer was lost (an unknown outcome, a dropped
//! connection) can retry without appending twice.
//!
//! A retry with a known key and the same message gets the first attempt's answer: its id once
//! committed, 500 if it was aborted, and while it is still pending it waits for that decision
//! (it never appends a second time). An abort no secondary has confirmed yet is answered
//! "unknown" until one does, then 500 (see [`crate::core::Progress`]). The same key with another message is a conflict. A key
//! whose first attempt was refused before it appended (no quorum, overloaded) is free again.
//!
//! Keys live in this process's memory only: a restarted master knows none of them, so a retry
//! after a restart may append twice (the README says so). They are forgotten `window` after
//! their append was taken, or earlier, oldest first, once `capacity` keys are held; an append
//! still undecided when its window ends keeps its key for another window.

use crate::answers::{self, Verdict};
use crate::config::KeyArgs;
use crate::core::{Outcome, Progress};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What became of the append that first used a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Claimed by an attempt that has not been given an id yet.
    Admitting,
    /// Appended under this id, not decided yet.
    Pending(u64),
    Decided(u64, Outcome),
    /// Aborted, but no secondary has confirmed the abort yet: answered "unknown", and still
    /// waiting for the confirmation that makes it 500.
    AbortUnconfirmed(u64),
    /// The master stopped waiting for the decision (it is shutting down).
    Unknown(u64),
    /// Refused before anything was appended; the key is free again.
    Released,
}

impl State {
    fn is_final(self) -> bool {
        matches!(
            self,
            State::Decided(..) | State::Unknown(_) | State::Released
        )
    }

    /// An attempt in this state gets an answer now (final or not).
    fn is_answered(self) -> bool {
        self.is_final() || matches!(self, State::AbortUnconfirmed(_))
    }
}

/// A key already used for another message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the key `{0}` was used for another message; nothing was appended (use a new key for a new message)")]
pub struct KeyConflict(pub String);

/// The answer to [`Keys::claim`].
pub enum Claim<'a> {
    /// The key is new: this attempt appends, and tells the key what became of it.
    First(Ticket<'a>),
    /// The key is known, with the same message: the first attempt's fate, to wait for.
    Retry(watch::Receiver<State>),
}

/// The keys the master remembers.
pub struct Keys {
    inner: Mutex<Inner>,
    window: Duration,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<String, Slot>,
    /// Keys as they were taken (or renewed), oldest first, with the generation of the slot
    /// they were taken for: an entry whose slot has gone or been taken again is skipped.
    order: VecDeque<(Instant, String, u64)>,
    next_generation: u64,
}

struct Slot {
    /// Shares the bytes the log holds: remembering it costs no copy.
    message: Bytes,
    generation: u64,
    state: watch::Receiver<State>,
}

impl Keys {
    pub fn new(args: &KeyArgs) -> Self {
        Self {
            inner: Mutex::default(),
            window: args.idempotency_window_seconds,
            capacity: args.idempotency_max_keys.max(1),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks `key` up for an append of `message` at `now`.
    pub fn claim(
        &self,
        key: String,
        message: &Bytes,
        now: Instant,
    ) -> Result<Claim<'_>, KeyConflict> {
        let mut inner = self.inner();
        self.expire(&mut inner, now);
        if let Some(slot) = inner.by_key.get(&key) {
            if slot.message != *message {
                return Err(KeyConflict(key));
            }
            return Ok(Claim::Retry(slot.state.clone()));
        }
        while inner.by_key.len() >= self.capacity {
            let Some((_, oldest, generation)) = inner.order.pop_front() else {
                break;
            };
            inner.forget(&oldest, generation);
        }
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let (sender, state) = watch::channel(State::Admitting);
        inner.by_key.insert(
            key.clone(),
            Slot {
                message: message.clone(),
                generation,
                state,
            },
        );
        inner.order.push_back((now, key.clone(), generation));
        Ok(Claim::First(Ticket {
            keys: self,
            key,
            generation,
            sender: Some(sender),
        }))
    }

    /// Forgets keys older than the window; an undecided one is renewed instead.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((taken, _, _)) = inner.order.front() {
            if now.saturating_duration_since(*taken) < self.window {
                break;
            }
            let Some((_, key, generation)) = inner.order.pop_front() else {
                break;
            };
            let undecided = inner
                .by_key
                .get(&key)
                .is_some_and(|s| s.generation == generation && !s.state.borrow().is_final());
            if undecided {
                inner.order.push_back((now, key, generation));
            } else {
                inner.forget(&key, generation);
            }
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.inner().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Drops `key` if it still belongs to the slot of this `generation`.
    fn forget(&mut self, key: &str, generation: u64) {
        if self
            .by_key
            .get(key)
            .is_some_and(|s| s.generation == generation)
        {
            self.by_key.remove(key);
        }
    }
}

/// The first attempt's hold on a key: it records the append's fate there. Dropped before
/// [`Ticket::bind`] (the append was refused, nothing appended), it frees the key.
pub struct Ticket<'a> {
    keys: &'a Keys,
    key: String,
    generation: u64,
    sender: Option<watch::Sender<State>>,
}

impl Ticket<'_> {
    /// The append was given `id`; `verdict` will learn its decision. The decision is recorded
    /// under the key whether or not this attempt's client still waits for it (a task waits for
    /// it), so a retry always learns it. Returns what every attempt waits on.
    pub fn bind(mut self, id: u64, mut verdict: Verdict) -> watch::Receiver<State> {
        let sender = self.sender.take().expect("a ticket is bound once");
        sender.send_replace(State::Pending(id));
        let state = sender.subscribe();
        tokio::spawn(async move {
            let mut seen = *verdict.borrow_and_update();
            loop {
                match seen {
                    Progress::Waiting => {}
                    Progress::AbortUnconfirmed => {
                        sender.send_replace(State::AbortUnconfirmed(id));
                    }
                    Progress::Decided(outcome) => {
                        sender.send_replace(State::Decided(id, outcome));
                        return;
                    }
                }
                match answers::progress(&mut verdict).await {
                    Some(next) => seen = next,
                    None => {
                        sender.send_replace(State::Unknown(id));
                        return;
                    }
                }
            }
        });
        state
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            let mut inner = self.keys.inner();
            inner.forget(&self.key, self.generation);
            sender.send_replace(State::Released);
        }
    }
}

/// Waits until the attempt behind `state` is decided (or released, or given up on, or its
/// abort awaits confirmation).
pub async fn settled(mut state: watch::Receiver<State>) -> State {
    loop {
        let now = *state.borrow_and_update();
        if now.is_answered() {
            return now;
        }
        if state.changed().await.is_err() {
            // The task that records the decision is gone (the runtime is stopping).
            return match now {
                State::Pending(id) | State::AbortUnconfirmed(id) => State::Unknown(id),
                _ => State::Released,
            };
        }
    }
}

/// Waits until the attempt behind `state` is decided for good (or released, or given up on):
/// past an abort that awaits confirmation.
pub async fn decided(mut state: watch::Receiver<State>) -> State {
    loop {
        let now = *state.borrow_and_update();
        if now.is_final() {
            return now;
        }
        if state.changed().await.is_err() {
            return match now {
                State::Pending(id) | State::AbortUnconfirmed(id) => State::Unknown(id),
                _ => State::Released,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(window_seconds: u64, capacity: usize) -> Keys {
        Keys::new(&KeyArgs {
            idempotency_window_seconds: Duration::from_secs(window_seconds),
            idempotency_max_keys: capacity,
        })
    }

    fn first(claim: Result<Claim<'_>, KeyConflict>) -> Ticket<'_> {
        match claim {
            Ok(Claim::First(ticket)) => ticket,
            Ok(Claim::Retry(state)) => panic!("a retry of {:?}", *state.borrow()),
            Err(error) => panic!("{error}"),
        }
    }

    fn retry(claim: Result<Claim<'_>, KeyConflict>) -> watch::Receiver<State> {
        match claim {
            Ok(Claim::Retry(state)) => state,
            Ok(Claim::First(_)) => panic!("taken as a first attempt"),
            Err(error) => panic!("{error}"),
        }
    }

    #[tokio::test]
    async fn a_retry_learns_the_first_attempts_decision() {
        let keys = keys(300, 10);
        let now = Instant::now();
        let hello = Bytes::from("hello");
        let ticket = first(keys.claim("k".into(), &hello, now));
        let waiting = retry(keys.claim("k".into(), &hello, now));
        assert_eq!(*waiting.borrow(), State::Admitting);
        let (decide, verdict) = watch::channel(Progress::Waiting);
        let mine = ticket.bind(7, verdict);
        assert_eq!(*waiting.borrow(), State::Pending(7));
        decide.send_replace(Progress::Decided(Outcome::Committed));
        let decided = State::Decided(7, Outcome::Committed);
        assert_eq!(settled(mine).await, decided);
        assert_eq!(settled(waiting).await, decided);
        let later = retry(keys.claim("k".into(), &hello, now));
        assert_eq!(settled(later).await, decided);
    }

    #[tokio::test]
    async fn an_abort_stays_the_answer_and_a_lost_decision_is_unknown() {
        let keys = keys(300, 10);
        let now = Instant::now();
        let (decide, verdict) = watch::channel(Progress::Waiting);
        let state = first(keys.claim("a".into(), &Bytes::from("x"), now)).bind(1, verdict);
        decide.send_replace(Progress::Decided(Outcome::Aborted));
        assert_eq!(settled(state).await, State::Decided(1, Outcome::Aborted));
        let again = retry(keys.claim("a".into(), &Bytes::from("x"), now));
        assert_eq!(settled(again).await, State::Decided(1, Outcome::Aborted));

        let (decide, verdict) = watch::channel(Progress::Waiting);
        let state = first(keys.claim("b".into(), &Bytes::from("y"), now)).bind(2, verdict);
        drop(decide);
        assert_eq!(settled(state).await, State::Unknown(2));
    }

    #[tokio::test]
    async fn an_unconfirmed_abort_is_unknown_until_confirmed_then_500() {
        let keys = keys(1, 10);
        let start = Instant::now();
        let (decide, verdict) = watch::channel(Progress::Waiting);
        let hello = Bytes::from("x");
        let state = first(keys.claim("k".into(), &hello, start)).bind(3, verdict);
        decide.send_replace(Progress::AbortUnconfirmed);
        assert_eq!(settled(state).await, State::AbortUnconfirmed(3));
        // Not final: kept past its window, and a retry hears "unknown" at once.
        let later = start + Duration::from_secs(2);
        let again = retry(keys.claim("k".into(), &hello, later));
        assert_eq!(settled(again).await, State::AbortUnconfirmed(3));
        let waiting = retry(keys.claim("k".into(), &hello, later));
        let confirm = async { decide.send_replace(Progress::Decided(Outcome::Aborted)) };
        let (learned, _) = tokio::join!(decided(waiting), confirm);
        assert_eq!(learned, State::Decided(3, Outcome::Aborted));
        let mut confirmed = retry(keys.claim("k".into(), &hello, later));
        let decided = State::Decided(3, Outcome::Aborted);
        tokio::time::timeout(
            Duration::from_secs(5),
            confirmed.wait_for(|s| *s == decided),
        )
        .await
        .expect("the confirmation is recorded under the key")
        .expect("the record stays");
    }

    #[test]
    fn another_message_under_a_key_is_a_conflict() {
        let keys = keys(300, 10);
        let now = Instant::now();
        let _ticket = first(keys.claim("k".into(), &Bytes::from("one"), now));
        let claim = keys.claim("k".into(), &Bytes::from("two"), now);
        match claim {
            Err(KeyConflict(key)) => assert_eq!(key, "k"),
            _ => panic!("not a conflict"),
        }
    }

    #[tokio::test]
    async fn a_refused_first_attempt_frees_its_key() {
        let keys = keys(300, 10);
        let now = Instant::now();
        let ticket = first(keys.claim("k".into(), &Bytes::from("one"), now));
        let waiting = retry(keys.claim("k".into(), &Bytes::from("one"), now));
        drop(ticket);
        assert_eq!(settled(waiting).await, State::Released);
        assert!(keys.is_empty());
        // Free for any message now, since nothing was appended under it.
        let _ticket = first(keys.claim("k".into(), &Bytes::from("two"), now));
    }

    #[test]
    fn keys_are_forgotten_after_the_window_unless_undecided() {
        let keys = keys(10, 10);
        let start = Instant::now();
        let _pending = first(keys.claim("pending".into(), &Bytes::from("p"), start));
        let ticket = first(keys.claim("done".into(), &Bytes::from("d"), start));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let (decide, done) = watch::channel(Progress::Waiting);
        let state = rt.block_on(async { ticket.bind(1, done) });
        decide.send_replace(Progress::Decided(Outcome::Committed));
        rt.block_on(settled(state));

        let later = start + Duration::from_secs(11);
        // "pending" is still admitting: renewed; "done" is decided: forgotten.
        let _ticket = first(keys.claim("done".into(), &Bytes::from("new"), later));
        retry(keys.claim("pending".into(), &Bytes::from("p"), later));
    }

    #[test]
    fn beyond_capacity_the_oldest_key_goes_first() {
        let keys = keys(300, 2);
        let now = Instant::now();
        let tickets: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|k| first(keys.claim(k.into(), &Bytes::from(k), now)))
            .collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.inner().by_key.contains_key("b"));
        assert!(keys.inner().by_key.contains_key("c"));
        drop(tickets);
    }
}
