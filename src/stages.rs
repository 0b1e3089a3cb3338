//! Per-stage accounting: how long each stage of the pipeline was busy and how long
//! it waited for its neighbour, so that the bottleneck of a run is visible
//! (`convert --stats`). Plain atomics of nanoseconds, added to by the stage's own
//! thread(s) and read at the end.
//!
//! - source: inside the source's `read` (network waits included: a source is
//!   busy when its peer is slow).
//! - decode: the decoder thread's reading minus the source's share; waiting =
//!   blocked handing a chunk to the reader.
//! - reader: the format reader; waiting = blocked on the next chunk.
//! - inflate: the inflate threads decompressing; waiting = idle for a unit.
//! - sink: writing; waiting = idle for an extent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The source (http, S3, registry, file, stdin).
    Source,
    /// Peeling compression wrappers.
    Decode,
    /// The format reader (the engine).
    Reader,
    /// The inflate threads.
    Inflate,
    /// Writing the target.
    Sink,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 5] = [
        Stage::Source,
        Stage::Decode,
        Stage::Reader,
        Stage::Inflate,
        Stage::Sink,
    ];

    /// The stage's name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Decode => "decode",
            Stage::Reader => "reader",
            Stage::Inflate => "inflate",
            Stage::Sink => "sink",
        }
    }
}

/// Busy and waiting nanoseconds of every stage.
#[derive(Debug, Default)]
pub struct Stages {
    busy: [AtomicU64; 5],
    waiting: [AtomicU64; 5],
}

impl Stages {
    /// Adds busy time to `stage`.
    pub fn busy(&self, stage: Stage, time: Duration) {
        self.busy[stage as usize].fetch_add(nanos(time), Ordering::Relaxed);
    }

    /// Adds waiting time to `stage`.
    pub fn waited(&self, stage: Stage, time: Duration) {
        self.waiting[stage as usize].fetch_add(nanos(time), Ordering::Relaxed);
    }

    /// Runs `f`, counting its time as busy for `stage`.
    pub fn time_busy<T>(&self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.busy(stage, started.elapsed());
        out
    }

    /// Runs `f`, counting its time as waiting for `stage`.
    pub fn time_waiting<T>(&self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.waited(stage, started.elapsed());
        out
    }

    /// Busy time of `stage` so far.
    pub fn busy_time(&self, stage: Stage) -> Duration {
        Duration::from_nanos(self.busy[stage as usize].load(Ordering::Relaxed))
    }

    /// Waiting time of `stage` so far.
    pub fn waiting_time(&self, stage: Stage) -> Duration {
        Duration::from_nanos(self.waiting[stage as usize].load(Ordering::Relaxed))
    }

    /// One line per stage: name, busy and waiting seconds.
    pub fn table(&self) -> String {
        let mut out = format!("{:<8} {:>9} {:>11}\n", "stage", "busy s", "waiting s");
        for stage in Stage::ALL {
            out.push_str(&format!(
                "{:<8} {:>9.3} {:>11.3}\n",
                stage.name(),
                self.busy_time(stage).as_secs_f64(),
                self.waiting_time(stage).as_secs_f64()
            ));
        }
        out
    }
}

/// A reader whose `read` time counts as busy for a stage.
pub struct TimedRead<R> {
    inner: R,
    stages: std::sync::Arc<Stages>,
    stage: Stage,
}

impl<R> TimedRead<R> {
    /// Times `inner`'s reads as `stage`.
    pub fn new(inner: R, stages: std::sync::Arc<Stages>, stage: Stage) -> Self {
        TimedRead {
            inner,
            stages,
            stage,
        }
    }
}

impl<R: std::io::Read> std::io::Read for TimedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let started = Instant::now();
        let out = self.inner.read(buf);
        self.stages.busy(self.stage, started.elapsed());
        out
    }
}

impl<R: crate::piece::PieceRead> crate::piece::PieceRead for TimedRead<R> {
    fn read_piece(&mut self, max: usize) -> std::io::Result<Option<bytes::Bytes>> {
        let started = Instant::now();
        let out = self.inner.read_piece(max);
        self.stages.busy(self.stage, started.elapsed());
        out
    }
}

fn nanos(time: Duration) -> u64 {
    u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_add_up_per_stage() {
        let stages = Stages::default();
        stages.busy(Stage::Sink, Duration::from_millis(5));
        stages.busy(Stage::Sink, Duration::from_millis(7));
        stages.waited(Stage::Reader, Duration::from_millis(3));
        assert_eq!(stages.busy_time(Stage::Sink), Duration::from_millis(12));
        assert_eq!(stages.waiting_time(Stage::Reader), Duration::from_millis(3));
        assert_eq!(stages.busy_time(Stage::Source), Duration::ZERO);
        let table = stages.table();
        assert!(table.contains("sink"), "{table}");
        assert_eq!(table.lines().count(), 6);
    }
}
