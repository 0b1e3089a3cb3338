//! Compressed units decompressed on a small pool of threads while the reader goes
//! on dispatching the stream (issue 8: compressed qcow2 was inflated cluster by
//! cluster on the reader's thread while the other core idled).
//!
//! The reader submits a unit's assembled bytes and gets finished units back in any
//! order; the sink accepts extents in any order, so they are written as they come.
//! Each thread keeps its own [`Decoders`] (contexts reused unit after unit). At most
//! `max_in_flight` units are submitted and not yet collected, which bounds memory to
//! that many inputs and outputs; the reader waits for one to finish before it
//! submits past that bound.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::codec::Decoders;
use super::core::CompressedUnit;

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
    submit: Option<SyncSender<Job>>,
    finished: Receiver<Finished>,
    threads: Vec<JoinHandle<()>>,
    in_flight: usize,
    max_in_flight: usize,
}

impl InflatePool {
    /// Starts `threads` inflate threads, with at most `max_in_flight` units
    /// outstanding.
    pub fn start(threads: usize, max_in_flight: usize) -> std::io::Result<Self> {
        let max_in_flight = max_in_flight.max(1);
        let (submit, jobs) = mpsc::sync_channel::<Job>(max_in_flight);
        let (done, finished) = mpsc::channel::<Finished>();
        let jobs = Arc::new(Mutex::new(jobs));
        let mut handles = Vec::with_capacity(threads);
        for n in 0..threads {
            let jobs = Arc::clone(&jobs);
            let done = done.clone();
            let handle = std::thread::Builder::new()
                .name(format!("inflate-{n}"))
                .spawn(move || inflate_thread(&jobs, &done))?;
            handles.push(handle);
        }
        Ok(InflatePool {
            submit: Some(submit),
            finished,
            threads: handles,
            in_flight: 0,
            max_in_flight,
        })
    }

    /// Hands a unit to the pool. When `max_in_flight` units are outstanding, first
    /// waits for one and returns it (and any others already done) in `out`.
    pub fn submit(
        &mut self,
        unit: CompressedUnit,
        input: Bytes,
        keep: usize,
        out: &mut Vec<Finished>,
    ) {
        if self.in_flight >= self.max_in_flight {
            out.push(self.wait_one());
        }
        self.collect_ready(out);
        let job = Job { unit, input, keep };
        match &self.submit {
            Some(submit) => match submit.send(job) {
                Ok(()) => self.in_flight += 1,
                // Every thread is gone (it panicked): decompress here instead.
                Err(mpsc::SendError(job)) => out.push(run_job(&mut Decoders::default(), job)),
            },
            None => out.push(run_job(&mut Decoders::default(), job)),
        }
    }

    /// Units finished so far, without waiting.
    pub fn collect_ready(&mut self, out: &mut Vec<Finished>) {
        while let Ok(done) = self.finished.try_recv() {
            self.in_flight -= 1;
            out.push(done);
        }
    }

    /// Waits for every outstanding unit and stops the threads.
    pub fn finish(&mut self, out: &mut Vec<Finished>) {
        self.submit = None;
        while self.in_flight > 0 {
            out.push(self.wait_one());
        }
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }

    fn wait_one(&mut self) -> Finished {
        let done = self
            .finished
            .recv()
            .expect("an inflate thread holds the sender while units are in flight");
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

fn inflate_thread(jobs: &Mutex<Receiver<Job>>, done: &mpsc::Sender<Finished>) {
    let mut decoders = Decoders::default();
    loop {
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return; // the reader is done
        };
        if done.send(run_job(&mut decoders, job)).is_err() {
            return;
        }
    }
}

fn run_job(decoders: &mut Decoders, job: Job) -> Finished {
    let Job { unit, input, keep } = job;
    let result = decoders
        .decompress(unit.codec, &input, unit.unit_size as usize, keep)
        .map(|out| {
            let mut out = Bytes::from(out);
            out.truncate(keep);
            out
        });
    Finished { unit, result }
}
