//! A small pool of writer threads for direct I/O: aligned buffers are filled
//! by the sink and written by a few threads (the sink says how many) with positional writes, so
//! that several writes are in flight while the next buffer is being filled
//! (O_DIRECT writes wait for the device; one at a time leaves it idle between
//! them).
//!
//! The sink contract allows extents in any order, so the writes of different
//! buffers are not ordered among each other. What needs an order waits for
//! it: [`WritePool::drain`] returns once every submitted write completed (the
//! sinks call it before a read-modify-write of a partial block, a zero ioctl,
//! a flush, and before the held-back edges are written). The first error a
//! writer hits is returned by the next call on the pool; later writes are
//! skipped.
//!
//! A write may skip the all-zero [`ZERO_BLOCK`](super::zero_detect::ZERO_BLOCK)s
//! of its buffer (file targets: they stay holes); the scan then runs on the
//! writer thread too.
//!
//! Besides its own buffers, the pool writes *borrowed* runs
//! ([`WritePool::submit_pieces`]): consecutive, already aligned pieces of the
//! stream's chunks, written with one `pwritev` and no copy. At most
//! writers + 1 writes of either kind are in flight.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::zero_detect::for_each_nonzero_run;
use crate::aligned::AlignedBuf;
use bytes::Bytes;

// Writer threads are chosen per target by the caller (see the sinks); each
// pool has one buffer more than writers: one being filled while the others
// are written.

/// Where a write's bytes are.
enum Payload {
    /// `len` bytes of one of the pool's buffers.
    Owned(AlignedBuf, usize),
    /// Consecutive pieces, each aligned in memory and of an aligned length.
    Borrowed(Vec<Bytes>),
}

/// One write: the payload to file offset `offset`.
struct Job {
    payload: Payload,
    offset: u64,
    /// Leave all-zero blocks unwritten (holes), writing only the other runs.
    skip_zero_blocks: bool,
}

/// What a writer hands back: the pool's buffer (for an owned write), and
/// the bytes written or the error.
type Done = (Option<AlignedBuf>, io::Result<u64>);

/// Writer threads on one file, and the buffers they write.
pub struct WritePool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Buffers not in flight.
    free: Vec<AlignedBuf>,
    /// Buffers allocated so far (at most `buffers`).
    allocated: usize,
    /// Writes in flight at most, and buffers at most: writers + 1.
    buffers: usize,
    buffer_len: usize,
    align: usize,
    in_flight: usize,
    /// The first write error, returned by the next call.
    failed: Option<io::Error>,
    /// Bytes the writers wrote (zero blocks skipped are not counted).
    written: u64,
}

impl WritePool {
    /// A pool of `writers` threads writing to `file` from buffers of
    /// `buffer_len` bytes aligned to `align`. Buffers are allocated as they
    /// are first needed.
    pub fn new(file: &File, buffer_len: usize, align: usize, writers: usize) -> io::Result<Self> {
        let writers = writers.max(1);
        let (jobs, job_receiver) = channel::<Job>();
        let (done_sender, done) = channel::<Done>();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        let mut workers = Vec::with_capacity(writers);
        for i in 0..writers {
            let file = file.try_clone()?;
            let job_receiver = job_receiver.clone();
            let done_sender = done_sender.clone();
            let worker = std::thread::Builder::new()
                .name(format!("direct-write-{i}"))
                .spawn(move || loop {
                    let job = match job_receiver.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let result = write_job(&file, &job);
                    let buffer = match job.payload {
                        Payload::Owned(buffer, _) => Some(buffer),
                        Payload::Borrowed(_) => None,
                    };
                    if done_sender.send((buffer, result)).is_err() {
                        return;
                    }
                })?;
            workers.push(worker);
        }
        Ok(WritePool {
            jobs: Some(jobs),
            done,
            workers,
            free: Vec::with_capacity(writers + 1),
            allocated: 0,
            buffers: writers + 1,
            buffer_len: buffer_len.next_multiple_of(align),
            align,
            in_flight: 0,
            failed: None,
            written: 0,
        })
    }

    /// Length of every buffer.
    pub fn buffer_len(&self) -> usize {
        self.buffer_len
    }

    /// A buffer to fill: a free one, a new one, or the next one a writer
    /// hands back. Its contents are whatever was last written from it.
    pub fn take(&mut self) -> io::Result<AlignedBuf> {
        loop {
            self.check()?;
            if let Some(buffer) = self.free.pop() {
                return Ok(buffer);
            }
            // Nothing in flight holds one of the buffers: the caller holds
            // them all (it never holds more than a few); give it another.
            if self.allocated < self.buffers || self.in_flight == 0 {
                self.allocated += 1;
                return Ok(AlignedBuf::new(self.buffer_len, self.align));
            }
            // The write that completes may be a borrowed one, which returns
            // no buffer: wait again then.
            self.wait_one()?;
        }
    }

    /// Gives back a buffer without writing it.
    pub fn give_back(&mut self, buffer: AlignedBuf) {
        self.free.push(buffer);
    }

    /// Queues the write of `buffer[..len]` at `offset` (both aligned for
    /// direct I/O by the caller). With `skip_zero_blocks`, all-zero blocks
    /// are left unwritten.
    pub fn submit(
        &mut self,
        buffer: AlignedBuf,
        offset: u64,
        len: usize,
        skip_zero_blocks: bool,
    ) -> io::Result<()> {
        self.send(Job {
            payload: Payload::Owned(buffer, len),
            offset,
            skip_zero_blocks,
        })
    }

    /// Queues the write of `pieces`, one after the other, at `offset`. Each
    /// piece must start at an aligned address and have an aligned length (the
    /// caller checks); they are written from where they are, without a copy,
    /// and dropped once written. Waits while writers + 1 writes are in flight.
    pub fn submit_pieces(
        &mut self,
        pieces: Vec<Bytes>,
        offset: u64,
        skip_zero_blocks: bool,
    ) -> io::Result<()> {
        debug_assert!(pieces
            .iter()
            .all(|p| p.as_ptr() as usize % self.align == 0 && p.len() % self.align == 0));
        while self.in_flight >= self.buffers {
            self.wait_one()?;
        }
        self.send(Job {
            payload: Payload::Borrowed(pieces),
            offset,
            skip_zero_blocks,
        })
    }

    fn send(&mut self, job: Job) -> io::Result<()> {
        let give_back = |pool: &mut Self, job: Job| {
            if let Payload::Owned(buffer, _) = job.payload {
                pool.free.push(buffer);
            }
        };
        if let Err(e) = self.check() {
            give_back(self, job);
            return Err(e);
        }
        match self.jobs.as_ref().map(|jobs| jobs.send(job)) {
            Some(Ok(())) => {
                self.in_flight += 1;
                Ok(())
            }
            Some(Err(returned)) => {
                give_back(self, returned.0);
                Err(io::Error::other("the writer threads stopped"))
            }
            None => Err(io::Error::other("the writer threads stopped")),
        }
    }

    /// Waits until every submitted write completed; the first error of any.
    pub fn drain(&mut self) -> io::Result<()> {
        while self.in_flight > 0 {
            self.wait_one()?;
        }
        self.check()
    }

    /// Bytes written by completed writes.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn wait_one(&mut self) -> io::Result<()> {
        let (buffer, result) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("the writer threads stopped"))?;
        self.in_flight -= 1;
        if let Some(buffer) = buffer {
            self.free.push(buffer);
        }
        match result {
            Ok(n) => self.written += n,
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
        Ok(())
    }

    /// The first error seen, once; the pool stays failed afterwards.
    fn check(&mut self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(e) => Err(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
        }
    }
}

fn write_job(file: &File, job: &Job) -> io::Result<u64> {
    match &job.payload {
        Payload::Owned(buffer, len) => write_pieces(
            file,
            &[&buffer.as_slice()[..*len]],
            job.offset,
            job.skip_zero_blocks,
        ),
        Payload::Borrowed(pieces) => {
            let slices: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
            write_pieces(file, &slices, job.offset, job.skip_zero_blocks)
        }
    }
}

/// Most slices in one `pwritev` (the kernel's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Writes `pieces`, consecutive from `offset`: the non-zero runs only when
/// `skip_zero_blocks`, runs that continue across pieces in one `pwritev`.
/// Returns the bytes written.
fn write_pieces<'a>(
    file: &'a File,
    pieces: &[&'a [u8]],
    offset: u64,
    skip_zero_blocks: bool,
) -> io::Result<u64> {
    let mut batch = Batch {
        file,
        start: offset,
        slices: Vec::new(),
        len: 0,
        written: 0,
    };
    let mut at = offset;
    for piece in pieces {
        if skip_zero_blocks {
            for_each_nonzero_run(piece, at, |start, len| {
                batch.add(at + start as u64, &piece[start..start + len])
            })?;
        } else {
            batch.add(at, piece)?;
        }
        at += piece.len() as u64;
    }
    batch.flush()?;
    Ok(batch.written)
}

/// Consecutive slices gathered for one `pwritev`.
struct Batch<'a> {
    file: &'a File,
    start: u64,
    slices: Vec<IoSlice<'a>>,
    len: u64,
    written: u64,
}

impl<'a> Batch<'a> {
    /// Adds `bytes` at file offset `at`, writing what was gathered first when
    /// `bytes` does not continue it.
    fn add(&mut self, at: u64, bytes: &'a [u8]) -> io::Result<()> {
        if !self.slices.is_empty()
            && (at != self.start + self.len || self.slices.len() == MAX_SLICES)
        {
            self.flush()?;
        }
        if self.slices.is_empty() {
            self.start = at;
        }
        self.slices.push(IoSlice::new(bytes));
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Writes the gathered slices, all of them (a short write is continued).
    fn flush(&mut self) -> io::Result<()> {
        let mut slices = &mut self.slices[..];
        let mut at = self.start;
        while !slices.is_empty() {
            let n = match nix::sys::uio::pwritev(self.file.as_fd(), slices, at as i64) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            at += n as u64;
            IoSlice::advance_slices(&mut slices, n);
        }
        self.written += self.len;
        self.slices.clear();
        self.len = 0;
        Ok(())
    }
}

impl Drop for WritePool {
    /// Waits for the writes in flight (their buffers must outlive them), then
    /// stops the threads.
    fn drop(&mut self) {
        while self.in_flight > 0 && self.wait_one().is_ok() {}
        self.jobs.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_in_any_order_and_zero_blocks_stay_holes() {
        let (_dir, path, file) = crate::sink::test_file::empty_file("out");
        let len = 64 << 10;
        file.set_len(16 * len as u64).unwrap();
        let mut pool = WritePool::new(&file, len, 4096, 2).unwrap();
        for i in (0..16u64).rev() {
            let mut buffer = pool.take().unwrap();
            buffer.as_mut_slice().fill(0);
            // Every other buffer has data only in its second half.
            let from = if i % 2 == 0 { 0 } else { len / 2 };
            buffer.as_mut_slice()[from..].fill(i as u8 + 1);
            pool.submit(buffer, i * len as u64, len, true).unwrap();
        }
        pool.drain().unwrap();
        assert_eq!(pool.written(), 8 * len as u64 + 8 * (len / 2) as u64);
        assert!(pool.allocated <= pool.buffers);
        let bytes = std::fs::read(&path).unwrap();
        for i in 0..16usize {
            let piece = &bytes[i * len..(i + 1) * len];
            let from = if i % 2 == 0 { 0 } else { len / 2 };
            assert!(piece[..from].iter().all(|b| *b == 0), "buffer {i}");
            assert!(
                piece[from..].iter().all(|b| *b == i as u8 + 1),
                "buffer {i}"
            );
        }
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 16 * len as u64, "zero halves left as holes");
    }

    #[test]
    fn owned_and_borrowed_writes_share_the_limit_and_buffers_come_back() {
        let (_dir, path, file) = crate::sink::test_file::empty_file("out");
        let len = 16 << 10;
        let rounds = 12u64;
        file.set_len(rounds * 2 * len as u64).unwrap();
        let mut pool = WritePool::new(&file, len, 4096, 2).unwrap();
        // Every buffer allocated and in flight, then borrowed writes (which
        // return no buffer) interleaved with more takes.
        for i in 0..rounds {
            let mut buffer = pool.take().unwrap();
            buffer.as_mut_slice().fill(i as u8 + 1);
            pool.submit(buffer, 2 * i * len as u64, len, false).unwrap();
            let mut piece = AlignedBuf::new(len, 4096);
            piece.as_mut_slice().fill(i as u8 + 101);
            let piece = Bytes::from_owner(piece);
            pool.submit_pieces(
                vec![piece.slice(..len / 2), piece.slice(len / 2..)],
                (2 * i + 1) * len as u64,
                false,
            )
            .unwrap();
            assert!(pool.in_flight <= pool.buffers);
        }
        pool.drain().unwrap();
        assert!(pool.allocated <= pool.buffers, "{} buffers", pool.allocated);
        assert_eq!(pool.written(), rounds * 2 * len as u64);
        let bytes = std::fs::read(&path).unwrap();
        for i in 0..rounds as usize {
            assert!(bytes[2 * i * len..(2 * i + 1) * len]
                .iter()
                .all(|b| *b == i as u8 + 1));
            assert!(bytes[(2 * i + 1) * len..(2 * i + 2) * len]
                .iter()
                .all(|b| *b == i as u8 + 101));
        }
    }

    #[test]
    fn a_write_error_is_returned_by_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"").unwrap();
        // A descriptor opened read-only: every write fails with EBADF.
        let file = File::open(&path).unwrap();
        let mut pool = WritePool::new(&file, 4096, 4096, 2).unwrap();
        let buffer = pool.take().unwrap();
        pool.submit(buffer, 0, 4096, false).unwrap();
        let err = pool.drain().unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EBADF),
            "the writer's error: {err}"
        );
        assert!(pool.take().is_err(), "the pool stays failed");
        assert!(pool.drain().is_err());
    }
}
