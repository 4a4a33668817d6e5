//! Exponential backoff with jitter for failed replication calls, capped, never giving up.

use std::time::Duration;

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// Delay before the next attempt: half of the capped exponential step plus a random part
    /// up to the other half, so that retries of many senders spread out.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
        for _ in 0..30 {
            assert!(b.next_delay() <= Duration::from_millis(100));
        }
        assert!(b.next_delay() >= Duration::from_millis(50));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
