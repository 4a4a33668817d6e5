//! Each secondary's health, from how long the master has listened for it without hearing it.
//!
//! Healthy -> Suspected -> Unhealthy as silence grows past the configured thresholds, and back
//! to Healthy on the next reply. Unhealthy secondaries do not count towards the quorum.
//!
//! Silence counts only time the master could listen. A master that was itself stopped (SIGSTOP,
//! a VM paused, a thread blocked) heard nothing from anyone for that long, and the replies that
//! came meanwhile wait unread in its sockets: its own stall says nothing about the secondaries.
//! So [`Stalls`] notices when the master was not running, and after a stall every secondary's
//! silence is counted again from the stall's end. A secondary leaves the quorum only once the
//! master has listened for it, running, for `UNHEALTHY_AFTER_MS` (so a heartbeat sent after the
//! stall went unanswered). One that had already been silent that long before the stall began
//! stays unhealthy.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Healthy,
    Suspected,
    Unhealthy,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Suspected => "suspected",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// How long silence must last before a secondary is suspected, then unhealthy.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub suspect_after: Duration,
    pub unhealthy_after: Duration,
}

impl Thresholds {
    /// The shortest gap in the master's own running that counts as a stall. Shorter gaps (a
    /// busy scheduler) cannot make a secondary that answers every heartbeat look unhealthy, so
    /// they leave the silence clocks alone: restarting them at every hiccup would keep a dead
    /// secondary in the quorum.
    pub fn stall(&self) -> Duration {
        self.unhealthy_after / 4
    }

    /// How often the master notes that it runs: often enough that a gap of [`Self::stall`] is
    /// seen as one.
    pub fn pulse(&self) -> Duration {
        (self.stall() / 5).max(Duration::from_millis(5))
    }

    fn of(&self, silent: Duration) -> Status {
        if silent >= self.unhealthy_after {
            Status::Unhealthy
        } else if silent >= self.suspect_after {
            Status::Suspected
        } else {
            Status::Healthy
        }
    }
}

/// A time the master was not running: from the last moment it was seen running to the first
/// moment after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub start: Instant,
    pub end: Instant,
}

/// Status of a secondary last heard from at `last_contact` (or, if never, the master's start),
/// counting silence only over time the master was running: `stalls` are the master's recent
/// stalls, oldest first.
pub fn status(
    last_contact: Instant,
    now: Instant,
    stalls: &[Stall],
    thresholds: Thresholds,
) -> Status {
    let mut silent_since = last_contact;
    for stall in stalls {
        if stall.end <= silent_since {
            continue;
        }
        let before = stall.start.saturating_duration_since(silent_since);
        if thresholds.of(before) == Status::Unhealthy {
            return Status::Unhealthy;
        }
        silent_since = stall.end;
    }
    thresholds.of(now.saturating_duration_since(silent_since))
}

/// The master's recent stalls, noticed from gaps between the moments it is seen running.
///
/// A task notes a pulse every [`Thresholds::pulse`] ([`Stalls::observe`]); while it runs, every
/// health decision notes one too, so the first decision after a stall already knows of it, even
/// if the pulse task has not run yet since the master resumed.
#[derive(Debug, Default)]
pub struct Stalls {
    /// The latest moment the master was seen running.
    last: Option<Instant>,
    /// Oldest first, at most [`KEPT_STALLS`].
    recent: VecDeque<Stall>,
}

/// Stalls remembered. Only a secondary silent since before the oldest one kept could be judged
/// by less than it should be (its silence then includes older stalls): one silent that long is
/// gone in any case.
const KEPT_STALLS: usize = 32;

impl Stalls {
    /// Notes that the master runs at `now`; returns the stall that just ended, if the gap since
    /// it was last seen running is one.
    pub fn observe(&mut self, now: Instant, thresholds: Thresholds) -> Option<Stall> {
        let last = self
            .last
            .replace(self.last.map_or(now, |last| last.max(now)))?;
        if now.saturating_duration_since(last) < thresholds.stall() {
            return None;
        }
        let stall = Stall {
            start: last,
            end: now,
        };
        if self.recent.len() == KEPT_STALLS {
            self.recent.pop_front();
        }
        self.recent.push_back(stall);
        tracing::warn!(
            stalled_ms = (now - last).as_millis() as u64,
            "the master was not running; each secondary's silence is counted from now"
        );
        Some(stall)
    }

    /// Stops judging gaps until the next [`Stalls::observe`]: without the pulse (not started
    /// yet, or stopped for shutdown), a gap between two health decisions proves nothing.
    pub fn unpulsed(&mut self) {
        self.last = None;
    }

    /// [`status`] with the stalls seen so far, after noting that the master runs at `now` (if
    /// the pulse runs).
    pub fn status(
        &mut self,
        last_contact: Instant,
        now: Instant,
        thresholds: Thresholds,
    ) -> Status {
        if self.last.is_some() {
            self.observe(now, thresholds);
        }
        status(last_contact, now, self.recent.make_contiguous(), thresholds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn thresholds() -> Thresholds {
        Thresholds {
            suspect_after: S,
            unhealthy_after: 4 * S,
        }
    }

    #[test]
    fn ages_through_the_thresholds() {
        let t = Instant::now();
        let th = thresholds();
        assert_eq!(status(t, t, &[], th), Status::Healthy);
        assert_eq!(status(t, t + S, &[], th), Status::Suspected);
        assert_eq!(status(t, t + 5 * S, &[], th), Status::Unhealthy);
    }

    #[test]
    fn silence_restarts_at_the_end_of_a_stall() {
        let t = Instant::now();
        let th = thresholds();
        let stall = Stall {
            start: t + S / 10,
            end: t + 10 * S,
        };
        // Right after a 10 s stall, a secondary heard just before it is still healthy ...
        assert_eq!(status(t, stall.end, &[stall], th), Status::Healthy);
        // ... and ages only with time the master ran after it.
        assert_eq!(status(t, stall.end + S, &[stall], th), Status::Suspected);
        assert_eq!(
            status(t, stall.end + 4 * S, &[stall], th),
            Status::Unhealthy
        );
    }

    #[test]
    fn a_secondary_unhealthy_before_the_stall_stays_unhealthy() {
        let t = Instant::now();
        let th = thresholds();
        let stall = Stall {
            start: t + 5 * S,
            end: t + 10 * S,
        };
        assert_eq!(status(t, stall.end, &[stall], th), Status::Unhealthy);
        // Suspected before it: the clock restarts.
        let stall = Stall {
            start: t + 2 * S,
            end: t + 10 * S,
        };
        assert_eq!(status(t, stall.end, &[stall], th), Status::Healthy);
    }

    #[test]
    fn contact_after_a_stall_is_judged_as_usual() {
        let t = Instant::now();
        let th = thresholds();
        let stall = Stall {
            start: t,
            end: t + 10 * S,
        };
        let contact = stall.end + S;
        assert_eq!(
            status(contact, contact + S, &[stall], th),
            Status::Suspected
        );
        assert_eq!(
            status(contact, contact + 4 * S, &[stall], th),
            Status::Unhealthy
        );
    }

    #[test]
    fn each_stall_restarts_the_clock() {
        let t = Instant::now();
        let th = thresholds();
        let first = Stall {
            start: t + S,
            end: t + 10 * S,
        };
        let second = Stall {
            start: first.end + 2 * S,
            end: first.end + 20 * S,
        };
        // 1 s before the first, 2 s between them: never 4 s of listening in a row.
        assert_eq!(
            status(t, second.end + S, &[first, second], th),
            Status::Suspected
        );
        // But 4 s of listening between them is enough, whatever follows.
        let second = Stall {
            start: first.end + 4 * S,
            end: first.end + 20 * S,
        };
        assert_eq!(
            status(t, second.end, &[first, second], th),
            Status::Unhealthy
        );
    }

    #[test]
    fn gaps_shorter_than_a_stall_are_not_stalls() {
        let t = Instant::now();
        let th = thresholds();
        let mut stalls = Stalls::default();
        assert_eq!(stalls.observe(t, th), None);
        assert_eq!(stalls.observe(t + th.stall() / 2, th), None);
        // A health decision notes the gap itself, before any pulse after the stall.
        let end = t + 10 * S;
        assert_eq!(stalls.status(t, end, th), Status::Healthy);
        assert_eq!(stalls.recent.len(), 1);
        let mut now = end;
        while now < end + 4 * S {
            now += th.pulse();
            assert_eq!(stalls.observe(now, th), None);
        }
        assert_eq!(stalls.status(t, now, th), Status::Unhealthy);
        // A moment older than the last one seen (taken before a lock) changes nothing.
        assert_eq!(stalls.observe(t + S, th), None);
        assert_eq!(
            stalls.observe(now + th.stall(), th),
            Some(Stall {
                start: now,
                end: now + th.stall()
            })
        );
        // Without the pulse, a gap between health decisions is no stall.
        stalls.unpulsed();
        let later = now + 10 * S;
        assert_eq!(stalls.status(later, later + 10 * S, th), Status::Unhealthy);
        assert_eq!(stalls.recent.len(), 2);
    }
}
