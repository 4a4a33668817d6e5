//! The clients waiting for their appends' outcomes: one watch channel per append, fed by the
//! core's [`Effect::Answer`](crate::core::Effect::Answer)s.
//!
//! A channel's last value stays readable after the master lets go of it, so a closed channel
//! before a decision means the master stopped.

use crate::core::Progress;
use std::collections::HashMap;
use tokio::sync::watch;

/// Where an append's progress is published.
pub type Verdict = watch::Receiver<Progress>;

/// Waits for the next progress of an append beyond what `verdict` has seen; `None` once the
/// master dropped it without more to tell (it stops).
pub async fn progress(verdict: &mut Verdict) -> Option<Progress> {
    if verdict.changed().await.is_err() {
        return None;
    }
    Some(*verdict.borrow_and_update())
}

/// The open channels, by append id.
#[derive(Debug, Default)]
pub struct Waiters {
    by_id: HashMap<u64, watch::Sender<Progress>>,
}

impl Waiters {
    /// A channel for append `id`, to be registered before its first answer can come.
    pub fn register(&mut self, id: u64) -> Verdict {
        let (sender, verdict) = watch::channel(Progress::Waiting);
        self.by_id.insert(id, sender);
        verdict
    }

    /// Tells append `id`'s client; a decision is the last word, so its channel is let go. An
    /// abort not yet confirmed keeps it: the confirmation may still come.
    pub fn answer(&mut self, id: u64, progress: Progress) {
        match progress {
            Progress::Decided(_) => {
                if let Some(sender) = self.by_id.remove(&id) {
                    sender.send_replace(progress);
                }
            }
            Progress::Waiting | Progress::AbortUnconfirmed => {
                if let Some(sender) = self.by_id.get(&id) {
                    sender.send_replace(progress);
                }
            }
        }
    }

    /// Whether anyone still listens for append `id` (its client, or an idempotency key).
    pub fn listened(&self, id: u64) -> bool {
        self.by_id.get(&id).is_some_and(|s| !s.is_closed())
    }

    /// Lets go of the channels nobody listens to any more.
    pub fn forget_unheard(&mut self) {
        self.by_id.retain(|_, sender| !sender.is_closed());
    }

    /// Channels held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Outcome;

    #[test]
    fn a_decision_is_the_last_word_an_unconfirmed_abort_is_not() {
        let mut waiters = Waiters::default();
        let one = waiters.register(1);
        let two = waiters.register(2);
        waiters.answer(1, Progress::Decided(Outcome::Committed));
        assert_eq!(*one.borrow(), Progress::Decided(Outcome::Committed));
        assert!(!waiters.listened(1), "let go after the decision");
        waiters.answer(2, Progress::AbortUnconfirmed);
        assert_eq!(*two.borrow(), Progress::AbortUnconfirmed);
        assert!(waiters.listened(2));
        waiters.answer(2, Progress::Decided(Outcome::Aborted));
        assert_eq!(*two.borrow(), Progress::Decided(Outcome::Aborted));
        assert!(waiters.is_empty());
    }

    #[test]
    fn channels_nobody_listens_to_are_let_go() {
        let mut waiters = Waiters::default();
        let kept = waiters.register(1);
        drop(waiters.register(2));
        assert!(!waiters.listened(2));
        waiters.forget_unheard();
        assert_eq!(waiters.len(), 1);
        drop(kept);
        waiters.forget_unheard();
        assert!(waiters.is_empty());
    }
}
