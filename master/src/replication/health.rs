//! Each secondary's health, from the time since the master last heard from it.
//!
//! Healthy -> Suspected -> Unhealthy as contact ages past the configured thresholds, and back
//! to Healthy on the next reply. Unhealthy secondaries do not count towards the quorum.

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

/// Status for a secondary last heard from at `last_contact` (or never, since the master started).
pub fn status(
    last_contact: Instant,
    now: Instant,
    suspect_after: Duration,
    unhealthy_after: Duration,
) -> Status {
    let silent = now.saturating_duration_since(last_contact);
    if silent >= unhealthy_after {
        Status::Unhealthy
    } else if silent >= suspect_after {
        Status::Suspected
    } else {
        Status::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_through_the_thresholds() {
        let t = Instant::now();
        let (s, u) = (Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(status(t, t, s, u), Status::Healthy);
        assert_eq!(
            status(t, t + Duration::from_secs(1), s, u),
            Status::Suspected
        );
        assert_eq!(
            status(t, t + Duration::from_secs(5), s, u),
            Status::Unhealthy
        );
    }
}
