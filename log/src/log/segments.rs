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
#[derive(Debug, Clone)]
pub struct Segments<T> {
    segments: Vec<Vec<T>>,
}

impl<T> Default for Segments<T> {
    fn default() -> Self {
        Self {
            segments: Vec::new(),
        }
    }
}

impl<T> Segments<T> {
    pub fn len(&self) -> usize {
        self.segments
            .last()
            .map_or(0, |last| (self.segments.len() - 1) * SEGMENT + last.len())
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
        self.segments.get(index / SEGMENT)?.get(index % SEGMENT)
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.segments
            .get_mut(index / SEGMENT)?
            .get_mut(index % SEGMENT)
    }

    /// Keeps the first `len` elements (all of them if there are fewer).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        let kept = len.div_ceil(SEGMENT);
        self.segments.truncate(kept);
        if let Some(last) = self.segments.last_mut() {
            // The last kept segment holds what is left after the full ones before it.
            last.truncate(len - (kept - 1) * SEGMENT);
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
