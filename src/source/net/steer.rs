//! Whether a download nobody set `--connections` for is worth fetching over
//! parallel ranges. Parallel connections pay off against a distant or
//! per-connection-throttled server, and cost CPU for nothing when one
//! connection already outruns the reader or saturates a core (a nearby
//! server, a slow disk behind the pipeline): the segments held ahead of the
//! reader go cold in the cache and every segment is a request. So the
//! download starts on one connection, measures the rate the reader gets,
//! tries parallel ranges over the next stretch, and keeps them only if they
//! were clearly faster; otherwise the rest comes over one connection again.
//! Where the reader hardly ever waited for the one connection (a decoder or
//! a disk behind it sets the pace), no trial is made at all: more
//! connections cannot make it faster, and their buffers would only add to
//! the peak memory.
//!
//! This file only decides, from offsets and instants it is shown (so that
//! the decisions are tested with made-up clocks); the reader acts on them.

use std::time::{Duration, Instant};

use super::transfer::CHUNK;

/// Bytes read before the first measurement starts (connection set-up and
/// TCP slow start are not the rate).
const WARM_UP: u64 = 4 << 20;
/// A measurement ends after this many bytes...
const PROBE_BYTES: u64 = 32 << 20;
/// ...or after this long, once it holds [`PROBE_MIN_BYTES`].
const PROBE_TIME: Duration = Duration::from_secs(1);
/// The least a measurement that ended on time must hold.
const PROBE_MIN_BYTES: u64 = 2 * CHUNK as u64;
/// How much faster parallel ranges must be to be kept.
const GAIN: f64 = 1.25;
/// One connection keeps up with the reader when fewer than one chunk in
/// this many had to be waited for.
const READER_BOUND: u64 = 8;

/// What the reader should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Fetch the rest over parallel ranges from here (a trial).
    Parallel,
    /// The trial did not pay: fetch the rest over one connection.
    Sequential,
}

/// The state of the decision for one download.
#[derive(Debug)]
pub struct Steer {
    phase: Phase,
    /// Bytes left at which a trial is still worth starting.
    worth_from: u64,
}

#[derive(Debug)]
enum Phase {
    WarmingUp,
    Sequential(Stretch),
    Parallel { stretch: Stretch, sequential: f64 },
    Settled,
}

/// A measurement: from `offset` at `since`; of its chunks, how many the
/// reader had to wait for.
#[derive(Debug, Clone, Copy)]
struct Stretch {
    since: Instant,
    offset: u64,
    chunks: u64,
    waited: u64,
}

impl Stretch {
    fn new(offset: u64, since: Instant) -> Stretch {
        Stretch {
            since,
            offset,
            chunks: 0,
            waited: 0,
        }
    }
}

impl Stretch {
    /// Bytes per second up to (`offset`, `now`), once the stretch is long
    /// enough to tell.
    fn rate(&self, offset: u64, now: Instant) -> Option<f64> {
        let bytes = offset.saturating_sub(self.offset);
        let elapsed = now.saturating_duration_since(self.since);
        let done = bytes >= PROBE_BYTES || (elapsed >= PROBE_TIME && bytes >= PROBE_MIN_BYTES);
        done.then(|| bytes as f64 / elapsed.as_secs_f64().max(1e-6))
    }
}

impl Steer {
    /// A download that may try parallel ranges while at least `worth_from`
    /// bytes are left.
    pub fn new(worth_from: u64) -> Steer {
        Steer {
            phase: Phase::WarmingUp,
            worth_from,
        }
    }

    /// Whether the decision is made for good (nothing more to observe).
    pub fn settled(&self) -> bool {
        matches!(self.phase, Phase::Settled)
    }

    /// The reader has been handed everything before `offset` by `now` (the
    /// last chunk after waiting for it, if `waited`), and `left` bytes
    /// remain; what to do, if anything changes.
    pub fn observe(&mut self, offset: u64, left: u64, now: Instant, waited: bool) -> Option<Turn> {
        match &mut self.phase {
            Phase::WarmingUp => {
                if offset >= WARM_UP {
                    self.phase = Phase::Sequential(Stretch::new(offset, now));
                }
                None
            }
            Phase::Sequential(stretch) => {
                stretch.chunks += 1;
                stretch.waited += u64::from(waited);
                let sequential = stretch.rate(offset, now)?;
                if left < self.worth_from {
                    self.phase = Phase::Settled;
                    return None;
                }
                if stretch.waited * READER_BOUND < stretch.chunks {
                    tracing::debug!(
                        chunks = stretch.chunks,
                        waited = stretch.waited,
                        "one connection keeps ahead of the reader; no parallel ranges"
                    );
                    self.phase = Phase::Settled;
                    return None;
                }
                tracing::debug!(
                    mb_per_s = sequential / 1e6,
                    "one connection measured; trying parallel ranges"
                );
                self.phase = Phase::Parallel {
                    stretch: Stretch::new(offset, now),
                    sequential,
                };
                Some(Turn::Parallel)
            }
            Phase::Parallel {
                stretch,
                sequential,
            } => {
                let parallel = stretch.rate(offset, now)?;
                let keep = parallel >= *sequential * GAIN;
                tracing::debug!(
                    sequential_mb_per_s = *sequential / 1e6,
                    parallel_mb_per_s = parallel / 1e6,
                    keep,
                    "parallel ranges measured"
                );
                self.phase = Phase::Settled;
                (!keep).then_some(Turn::Sequential)
            }
            Phase::Settled => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Feeds a download read at `sequential` MiB/s on one connection and
    /// `parallel` MiB/s on ranges, one chunk at a time; the turns taken and
    /// the offsets they were taken at.
    fn run(total: u64, sequential: u64, parallel: u64) -> Vec<(u64, Turn)> {
        let mut steer = Steer::new(32 * MIB);
        let mut now = Instant::now();
        let mut rate = sequential;
        let mut turns = Vec::new();
        let mut offset = 0;
        while offset < total {
            offset += MIB;
            now += Duration::from_secs_f64(1.0 / rate as f64);
            if let Some(turn) = steer.observe(offset, total - offset, now, true) {
                turns.push((offset, turn));
                rate = match turn {
                    Turn::Parallel => parallel,
                    Turn::Sequential => sequential,
                };
            }
        }
        turns
    }

    #[test]
    fn ranges_that_are_clearly_faster_are_kept() {
        let turns = run(2048 * MIB, 10, 40);
        assert_eq!(turns.len(), 1, "{turns:?}");
        assert_eq!(turns[0].1, Turn::Parallel);
        assert!(
            turns[0].0 > WARM_UP && turns[0].0 <= WARM_UP + PROBE_BYTES,
            "{turns:?}"
        );
    }

    #[test]
    fn ranges_that_are_not_faster_are_given_up() {
        for parallel in [500, 1000, 1200] {
            let turns = run(2048 * MIB, 1000, parallel);
            assert_eq!(
                turns.iter().map(|t| t.1).collect::<Vec<_>>(),
                [Turn::Parallel, Turn::Sequential],
                "parallel at {parallel} MiB/s: {turns:?}"
            );
            // Fast reads end each trial after PROBE_BYTES.
            assert_eq!(turns[1].0 - turns[0].0, PROBE_BYTES);
        }
    }

    #[test]
    fn a_slow_download_decides_after_a_second_not_after_the_bytes() {
        // 2 MiB/s: a second's worth (two chunks) is enough to tell.
        let turns = run(512 * MIB, 2, 8);
        assert_eq!(turns.len(), 1, "{turns:?}");
        assert!(turns[0].0 <= WARM_UP + 3 * MIB, "{turns:?}");
    }

    #[test]
    fn too_little_left_for_a_trial_stays_on_one_connection() {
        assert!(run(40 * MIB, 10, 40).is_empty());
        assert!(run(3 * MIB, 10, 40).is_empty());
    }

    #[test]
    fn a_reader_slower_than_one_connection_gets_no_trial() {
        let mut steer = Steer::new(32 * MIB);
        let mut now = Instant::now();
        for i in 1..=200u64 {
            now += Duration::from_millis(10);
            // One chunk in ten waited for: the connection is ahead.
            let turn = steer.observe(i * MIB, 2048 * MIB, now, i % 10 == 0);
            assert_eq!(turn, None, "at {i} MiB");
        }
        assert!(steer.settled());
        // One in four waited for: the network may be what it waits for.
        let mut steer = Steer::new(32 * MIB);
        let turns: Vec<Turn> = (1..=200u64)
            .filter_map(|i| steer.observe(i * MIB, 2048 * MIB, now, i % 4 == 0))
            .collect();
        assert_eq!(turns.first(), Some(&Turn::Parallel));
    }

    #[test]
    fn a_clock_that_does_not_move_still_ends_on_bytes() {
        let mut steer = Steer::new(0);
        let now = Instant::now();
        let mut turns = Vec::new();
        for offset in (1..=200).map(|i| i * MIB) {
            turns.extend(steer.observe(offset, u64::MAX, now, true));
        }
        // Both rates are "infinite": not clearly faster, so given up.
        assert_eq!(turns, [Turn::Parallel, Turn::Sequential]);
        assert!(steer.settled());
    }
}
