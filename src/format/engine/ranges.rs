//! Named host ranges a format declares: metadata (a mapping that lands on one is
//! refused) and known garbage (unclaimed bytes there are dropped instead of kept).
//!
//! Formats register a few large ranges (a header, an L1 table, a refcount table)
//! and possibly very many small ones (one per L2 table or block bitmap), in any
//! order. Small ranges go into a map ordered by start; a lookup walks back from the
//! end of the queried range only as far as the longest small range reaches, so it
//! costs a logarithmic search when small ranges do not overlap each other (they do
//! not in any valid image). Large ranges are few and scanned in full.

use std::collections::BTreeMap;

/// Ranges longer than this are "large" and scanned linearly.
const SMALL_RANGE: u64 = 4 << 20;
/// At most this many large ranges (a format declares them from header fields).
pub const MAX_LARGE_RANGES: usize = 64;

/// A set of named half-open host ranges.
#[derive(Debug, Default)]
pub struct RangeSet {
    small: BTreeMap<u64, (u64, &'static str)>,
    longest_small: u64,
    large: Vec<(u64, u64, &'static str)>,
}

impl RangeSet {
    /// Adds `[start, end)` named `what`; false when there are already
    /// [`MAX_LARGE_RANGES`] large ranges. Empty ranges are ignored.
    #[must_use]
    pub fn insert(&mut self, start: u64, end: u64, what: &'static str) -> bool {
        if end <= start {
            return true;
        }
        let len = end - start;
        if len > SMALL_RANGE {
            if self.large.len() >= MAX_LARGE_RANGES {
                return false;
            }
            self.large.push((start, end, what));
            return true;
        }
        self.longest_small = self.longest_small.max(len);
        // Two ranges with the same start: keep the longer.
        let entry = self.small.entry(start).or_insert((end, what));
        if entry.0 < end {
            *entry = (end, what);
        }
        true
    }

    /// Number of ranges held.
    pub fn len(&self) -> usize {
        self.small.len() + self.large.len()
    }

    /// True when no range is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name of a range overlapping `[start, end)`, if any.
    pub fn overlapping(&self, start: u64, end: u64) -> Option<&'static str> {
        if end <= start {
            return None;
        }
        for &(s, e, what) in &self.large {
            if s < end && start < e {
                return Some(what);
            }
        }
        let reach_from = start.saturating_sub(self.longest_small);
        for (&s, &(e, what)) in self.small.range(reach_from..end).rev() {
            if e > start {
                return Some(what);
            }
            if s + self.longest_small <= start {
                break;
            }
        }
        None
    }

    /// Calls `keep` with every part of `[start, end)` that no range covers, in order.
    pub fn uncovered(&self, start: u64, end: u64, mut keep: impl FnMut(u64, u64)) {
        let mut covers: Vec<(u64, u64)> = self
            .large
            .iter()
            .filter(|(s, e, _)| *s < end && start < *e)
            .map(|(s, e, _)| (*s, *e))
            .collect();
        let reach_from = start.saturating_sub(self.longest_small);
        covers.extend(
            self.small
                .range(reach_from..end)
                .filter(|(s, (e, _))| **s < end && start < *e)
                .map(|(s, (e, _))| (*s, *e)),
        );
        covers.sort_unstable();
        let mut at = start;
        for (s, e) in covers {
            if s > at {
                keep(at, s.min(end));
            }
            at = at.max(e);
            if at >= end {
                return;
            }
        }
        if at < end {
            keep(at, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_finds_small_and_large_ranges() {
        let mut set = RangeSet::default();
        assert!(set.insert(0, 512, "header"));
        assert!(set.insert(10 << 20, 30 << 20, "L1 table"));
        for k in 0..100u64 {
            assert!(set.insert(
                1_000_000 + k * 4096,
                1_000_000 + k * 4096 + 4096,
                "L2 table"
            ));
        }
        assert_eq!(set.overlapping(100, 101), Some("header"));
        assert_eq!(set.overlapping(512, 1024), None);
        assert_eq!(set.overlapping(20 << 20, (20 << 20) + 1), Some("L1 table"));
        assert_eq!(
            set.overlapping(1_000_000 + 4095, 1_000_000 + 4097),
            Some("L2 table")
        );
        assert_eq!(set.overlapping(999_000, 1_000_000), None);
        assert_eq!(set.overlapping(1_000_000 + 100 * 4096, 2_000_000), None);
    }

    #[test]
    fn uncovered_parts_are_the_gaps() {
        let mut set = RangeSet::default();
        assert!(set.insert(10, 20, "a"));
        assert!(set.insert(30, 40, "b"));
        let mut gaps = Vec::new();
        set.uncovered(0, 50, |s, e| gaps.push((s, e)));
        assert_eq!(gaps, vec![(0, 10), (20, 30), (40, 50)]);
        gaps.clear();
        set.uncovered(12, 18, |s, e| gaps.push((s, e)));
        assert!(gaps.is_empty());
        set.uncovered(15, 35, |s, e| gaps.push((s, e)));
        assert_eq!(gaps, vec![(20, 30)]);
    }

    #[test]
    fn large_ranges_are_bounded() {
        let mut set = RangeSet::default();
        for k in 0..MAX_LARGE_RANGES as u64 {
            assert!(set.insert(k << 30, (k << 30) + (8 << 20), "x"));
        }
        assert!(!set.insert(1 << 50, (1 << 50) + (8 << 20), "x"));
    }
}
