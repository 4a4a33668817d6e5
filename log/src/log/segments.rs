//! A vector kept in fixed-size segments, so that growing it never moves what it holds.
//!
//! A plain `Vec` doubles its buffer when full and copies every element across. For the log
//! that copy happens under the lock every append and read takes, and at a million entries it is
//! tens of megabytes: a stall of milliseconds for every client at once, and for that moment the
//! old and the new buffer both in memory. Here a full segment stays where it is and the next
//! append starts a new one, so an append costs the same at the ten-millionth entry as at the
//! first, and the memory held is what the entries need plus at most one partly filled segment.

/// Elements per segment: 64 Ki (2 MiB of `Bytes` handles), few enough segments for a lookup
/// to be one division, large enough that a segment's own allocation is rare.
const SEGMENT: usize = 1 << 16;

/// Every segment but the last is full (`push` starts a new one only then, and `truncate` keeps
/// a prefix), so the length and an element's place follow from `SEGMENT`.
///
/// Elements can also leave from the front ([`Segments::drop_front`]): the first `front` slots of
/// the first segment are spent (reset to `T::default()`, so they hold nothing), and a segment
/// whose slots are all spent is freed.
#[derive(Debug, Clone)]
pub struct Segments<T> {
    segments: Vec<Vec<T>>,
    /// Spent slots at the start of the first segment.
    front: usize,
}

impl<T> Default for Segments<T> {
    fn default() -> Self {
        Self {
            segments: Vec::new(),
            front: 0,
        }
    }
}

impl<T: Default> Segments<T> {
    /// Drops the first `n` elements (all of them if there are fewer): element `n` becomes
    /// element 0.
    pub fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len());
        for slot in 0..n {
            if let Some(value) = self.get_mut(slot) {
                *value = T::default();
            }
        }
        self.front += n;
        let spent = self.front / SEGMENT;
        if spent > 0 {
            self.segments.drain(..spent.min(self.segments.len()));
            self.front -= spent * SEGMENT;
        }
        if self.len() == 0 {
            // Nothing left: start afresh, so the next push begins a segment at slot 0.
            self.segments.clear();
            self.front = 0;
        }
    }
}

impl<T> Segments<T> {
    pub fn len(&self) -> usize {
        self.segments.last().map_or(0, |last| {
            (self.segments.len() - 1) * SEGMENT + last.len() - self.front
        })
    }

    pub fn push(&mut self, value: T) {
        match self.segments.last_mut() {
            Some(last) if last.len() < SEGMENT => last.push(value),
            _ => {
                // The first segment grows like a `Vec` (a small log stays small); every later
                // one is allocated whole, once.
                let mut segment = if self.segments.is_empty() {
                    Vec::new()
                } else {
                    Vec::with_capacity(SEGMENT)
                };
                segment.push(value);
                self.segments.push(segment);
            }
        }
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        let slot = index.checked_add(self.front)?;
        self.segments.get(slot / SEGMENT)?.get(slot % SEGMENT)
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        let slot = index.checked_add(self.front)?;
        self.segments
            .get_mut(slot / SEGMENT)?
            .get_mut(slot % SEGMENT)
    }

    /// Keeps the first `len` elements (all of them if there are fewer).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        let slots = len + self.front;
        let kept = slots.div_ceil(SEGMENT);
        self.segments.truncate(kept);
        if let Some(last) = self.segments.last_mut() {
            // The last kept segment holds what is left after the full ones before it.
            last.truncate(slots - (kept - 1) * SEGMENT);
        }
        if self.len() == 0 {
            self.segments.clear();
            self.front = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: usize) -> Segments<usize> {
        let mut segments = Segments::default();
        for i in 0..n {
            segments.push(i);
        }
        segments
    }

    #[test]
    fn holds_every_element_across_segment_boundaries() {
        let n = 3 * SEGMENT + 5;
        let mut segments = filled(n);
        assert_eq!(segments.len(), n);
        for i in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, n - 1] {
            assert_eq!(segments.get(i), Some(&i));
        }
        assert_eq!(segments.get(n), None);
        *segments.get_mut(SEGMENT).expect("held") = 7;
        assert_eq!(segments.get(SEGMENT), Some(&7));
        assert_eq!(segments.get_mut(n), None);
        // Full segments are never reallocated: each later one was allocated whole.
        assert!(segments.segments[1..]
            .iter()
            .all(|s| s.capacity() == SEGMENT));
    }

    #[test]
    fn drops_from_the_front_freeing_spent_segments() {
        for dropped in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT + 3] {
            let n = 2 * SEGMENT + 3;
            let mut segments = filled(n);
            segments.drop_front(dropped);
            assert_eq!(segments.len(), n - dropped, "drop_front({dropped})");
            if dropped < n {
                assert_eq!(segments.get(0), Some(&dropped), "drop_front({dropped})");
                assert_eq!(segments.get(n - dropped - 1), Some(&(n - 1)));
            }
            assert_eq!(segments.get(n - dropped), None);
            assert_eq!(
                segments.segments.len(),
                (n - dropped + segments.front).div_ceil(SEGMENT)
            );
            segments.push(usize::MAX);
            assert_eq!(segments.get(n - dropped), Some(&usize::MAX));
            // Truncation after a drop counts from the new front.
            segments.truncate(1);
            assert_eq!(segments.len(), 1);
            let first = if dropped < n { dropped } else { usize::MAX };
            assert_eq!(segments.get(0), Some(&first));
        }
        let mut spent = filled(SEGMENT + 1);
        spent.drop_front(3);
        assert_eq!(
            spent.segments[0][..3],
            [0, 0, 0],
            "spent slots hold nothing"
        );
        spent.drop_front(usize::MAX);
        assert_eq!(spent.len(), 0);
        spent.push(9);
        assert_eq!(spent.get(0), Some(&9));
    }

    #[test]
    fn truncates_at_and_between_segment_boundaries_and_grows_again() {
        for keep in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT] {
            let mut segments = filled(2 * SEGMENT + 3);
            segments.truncate(keep);
            assert_eq!(segments.len(), keep, "truncate({keep})");
            assert_eq!(segments.get(keep), None, "truncate({keep})");
            if keep > 0 {
                assert_eq!(
                    segments.get(keep - 1),
                    Some(&(keep - 1)),
                    "truncate({keep})"
                );
            }
            segments.push(usize::MAX);
            assert_eq!(segments.get(keep), Some(&usize::MAX), "truncate({keep})");
            assert_eq!(segments.len(), keep + 1);
        }
        let mut short = filled(3);
        short.truncate(10);
        assert_eq!(short.len(), 3);
    }
}
