//! Compressed units decompressed on a small pool of threads while the reader goes
//! on dispatching the stream (issue 8: compressed qcow2 was inflated cluster by
//! cluster on the reader's thread while the other core idled).
//!
//! The reader submits a unit's assembled bytes and gets finished units back in any
//! order; the sink accepts extents in any order, so they are written as they come.
//! Units travel in batches of about a MiB of output (16 clusters of 64 KiB): one
//! channel message and at most one wake-up per batch instead of per unit, which was
//! a sixth of the CPU of a zlib qcow2 import (futex wake-ups and task switches).
//! Each thread keeps its own [`Decoders`] (contexts reused unit after unit). At most
//! `max_batches` batches are submitted and not yet collected, which bounds memory to
//! that many batches of inputs and outputs; the reader waits for one to finish
//! before it submits past that bound.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::codec::Decoders;
use super::core::CompressedUnit;
use crate::stages::{Stage, Stages};

/// A unit to decompress, and how many of its bytes lie inside the disk.
struct Job {
    unit: CompressedUnit,
    input: Bytes,
    keep: usize,
}

/// A decompressed unit (its bytes inside the disk), or why it failed.
pub struct Finished {
    /// The unit.
    pub unit: CompressedUnit,
    /// The guest bytes, or the reason the unit does not decompress.
    pub result: Result<Bytes, String>,
}

/// The threads and the two queues between them and the reader.
pub struct InflatePool {
    submit: Option<SyncSender<Vec<Job>>>,
    finished: Receiver<Vec<Finished>>,
    threads: Vec<JoinHandle<()>>,
    /// Units submitted and not yet sent, at most `batch_units`.
    pending: Vec<Job>,
    batch_units: usize,
    /// Batches sent and not yet collected, at most `max_batches`.
    in_flight: usize,
    max_batches: usize,
    /// The reader waiting for a unit counts as the reader's wait.
    stages: Option<Arc<Stages>>,
}

impl InflatePool {
    /// Starts `threads` inflate threads that take `batch_units` units at a time,
    /// with at most `max_batches` batches outstanding.
    pub fn start(
        threads: usize,
        batch_units: usize,
        max_batches: usize,
        stages: Option<Arc<Stages>>,
    ) -> std::io::Result<Self> {
        let batch_units = batch_units.max(1);
        let max_batches = max_batches.max(1);
        let (submit, jobs) = mpsc::sync_channel::<Vec<Job>>(max_batches);
        let (done, finished) = mpsc::channel::<Vec<Finished>>();
        let jobs = Arc::new(Mutex::new(jobs));
        let mut handles = Vec::with_capacity(threads);
        for n in 0..threads {
            let jobs = Arc::clone(&jobs);
            let done = done.clone();
            let thread_stages = stages.clone().unwrap_or_default();
            let handle = std::thread::Builder::new()
                .name(format!("inflate-{n}"))
                .spawn(move || inflate_thread(&jobs, &done, &thread_stages))?;
            handles.push(handle);
        }
        Ok(InflatePool {
            submit: Some(submit),
            finished,
            threads: handles,
            pending: Vec::with_capacity(batch_units),
            batch_units,
            in_flight: 0,
            max_batches,
            stages,
        })
    }

    /// Hands a unit to the pool. When a batch is full it is sent; when
    /// `max_batches` batches are outstanding, that first waits for one and returns
    /// its units (and any others already done) in `out`.
    pub fn submit(
        &mut self,
        unit: CompressedUnit,
        input: Bytes,
        keep: usize,
        out: &mut Vec<Finished>,
    ) {
        self.pending.push(Job { unit, input, keep });
        if self.pending.len() >= self.batch_units {
            self.send_pending(out);
        }
    }

    /// Units finished so far, without waiting.
    pub fn collect_ready(&mut self, out: &mut Vec<Finished>) {
        while let Ok(done) = self.finished.try_recv() {
            self.in_flight -= 1;
            out.extend(done);
        }
    }

    /// Sends the last, partial batch, waits for every outstanding unit and stops
    /// the threads.
    pub fn finish(&mut self, out: &mut Vec<Finished>) {
        self.send_pending(out);
        self.submit = None;
        while self.in_flight > 0 {
            out.extend(self.wait_one());
        }
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }

    fn send_pending(&mut self, out: &mut Vec<Finished>) {
        if self.pending.is_empty() {
            return;
        }
        if self.in_flight >= self.max_batches {
            out.extend(self.wait_one());
        }
        self.collect_ready(out);
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(self.batch_units));
        match &self.submit {
            Some(submit) => match submit.send(batch) {
                Ok(()) => self.in_flight += 1,
                // Every thread is gone (it panicked): decompress here instead.
                Err(mpsc::SendError(batch)) => {
                    out.extend(run_batch(&mut Decoders::default(), batch))
                }
            },
            None => out.extend(run_batch(&mut Decoders::default(), batch)),
        }
    }

    fn wait_one(&mut self) -> Vec<Finished> {
        let started = std::time::Instant::now();
        let done = self
            .finished
            .recv()
            .expect("an inflate thread holds the sender while batches are in flight");
        if let Some(stages) = &self.stages {
            stages.waited(Stage::Reader, started.elapsed());
        }
        self.in_flight -= 1;
        done
    }
}

impl Drop for InflatePool {
    fn drop(&mut self) {
        // On an error path: stop the threads; outstanding results are dropped.
        self.submit = None;
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

fn inflate_thread(
    jobs: &Mutex<Receiver<Vec<Job>>>,
    done: &mpsc::Sender<Vec<Finished>>,
    stages: &Stages,
) {
    let mut decoders = Decoders::default();
    loop {
        let batch = stages.time_waiting(Stage::Inflate, || match jobs.lock() {
            Ok(receiver) => receiver.recv().ok(),
            Err(_) => None,
        });
        let Some(batch) = batch else {
            return; // the reader is done
        };
        let finished = stages.time_busy(Stage::Inflate, || run_batch(&mut decoders, batch));
        if done.send(finished).is_err() {
            return;
        }
    }
}

fn run_batch(decoders: &mut Decoders, batch: Vec<Job>) -> Vec<Finished> {
    batch
        .into_iter()
        .map(|job| run_job(decoders, job))
        .collect()
}

fn run_job(decoders: &mut Decoders, job: Job) -> Finished {
    let Job { unit, input, keep } = job;
    let result = decoders.decompress_kept(unit.codec, &input, unit.unit_size as usize, keep);
    Finished { unit, result }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::engine::codec::Codec;
    use std::collections::BTreeMap;
    use std::io::Write;

    const UNIT: usize = 4096;

    fn unit_at(n: u64) -> (CompressedUnit, Bytes, Vec<u8>) {
        let data: Vec<u8> = (0..UNIT)
            .map(|i| ((i as u64 * 7 + n) % 251) as u8)
            .collect();
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        let unit = CompressedUnit {
            guest: n * UNIT as u64,
            host: 0,
            stored: 0,
            unit_size: UNIT as u64,
            codec: Codec::Deflate,
            unit: "cluster",
        };
        (unit, Bytes::from(e.finish().unwrap()), data)
    }

    /// Submits `count` units and checks every one comes back once, decompressed.
    fn round_trip(threads: usize, batch_units: usize, max_batches: usize, count: u64) {
        let mut pool = InflatePool::start(threads, batch_units, max_batches, None).unwrap();
        let mut expected = BTreeMap::new();
        let mut out = Vec::new();
        for n in 0..count {
            let (unit, input, data) = unit_at(n);
            expected.insert(unit.guest, data);
            pool.submit(unit, input, UNIT, &mut out);
            // Never more than the bound outstanding: sent batches and the one filling.
            let outstanding = n as usize + 1 - out.len();
            assert!(
                outstanding <= (max_batches + 1) * batch_units,
                "{outstanding}"
            );
        }
        pool.finish(&mut out);
        assert_eq!(out.len() as u64, count);
        for done in out {
            let want = expected.remove(&done.unit.guest).expect("each unit once");
            assert_eq!(done.result.unwrap(), want);
        }
        assert!(expected.is_empty());
    }

    #[test]
    fn every_unit_comes_back_across_partial_batches() {
        round_trip(2, 16, 4, 100); // 6 whole batches and one of 4
        round_trip(2, 16, 4, 3); // only the partial batch, sent by finish
        round_trip(1, 1, 1, 20); // one unit per batch, one batch in flight
    }

    #[test]
    fn a_bad_unit_is_reported_not_lost() {
        let mut pool = InflatePool::start(2, 4, 2, None).unwrap();
        let mut out = Vec::new();
        for n in 0..6 {
            let (unit, input, _) = unit_at(n);
            let input = if n == 3 {
                Bytes::from_static(&[0xff; 16])
            } else {
                input
            };
            pool.submit(unit, input, UNIT, &mut out);
        }
        pool.finish(&mut out);
        assert_eq!(out.len(), 6);
        let bad: Vec<u64> = out
            .iter()
            .filter(|d| d.result.is_err())
            .map(|d| d.unit.guest)
            .collect();
        assert_eq!(bad, vec![3 * UNIT as u64]);
    }
}
