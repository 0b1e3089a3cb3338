//! The forward-only byte stream between the decoder and the format reader.
//!
//! A producer thread reads the (decoded) input into chunks of [`CHUNK_SIZE`]
//! bytes and sends them over a bounded channel, so decoding and parsing run on
//! different cores and memory stays bounded at `CHANNEL_DEPTH` chunks in flight.
//! The consumer side, [`ChunkStream`], hands out whole chunks (zero-copy) and
//! lets a reader push bytes back after peeking at them, which format sniffing
//! needs.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::aligned_pool::AlignedPool;
use crate::piece::Input;
use crate::progress::Progress;
use crate::stages::{Stage, Stages};

/// Size of the chunks the producer sends.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Chunks that may wait in the channel.
const CHANNEL_DEPTH: usize = 2;

/// Consumer end of a byte stream: chunks in order, with push-back.
pub struct ChunkStream {
    receiver: Option<Receiver<io::Result<Bytes>>>,
    pushed_back: VecDeque<Bytes>,
    position: u64,
    producer: Option<JoinHandle<()>>,
    /// Where the time spent waiting for chunks is counted (the reader's wait).
    stages: Option<Arc<Stages>>,
}

impl ChunkStream {
    /// Starts a producer thread that reads `input` to its end.
    /// `progress` is told how many decoded bytes were produced.
    pub fn spawn(input: Input, progress: Arc<Progress>) -> Self {
        let (sender, receiver) = sync_channel(CHANNEL_DEPTH);
        let stages = progress.stages().clone();
        let consumer_stages = stages.clone();
        let producer = std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || {
                let mut producer = Producer::new(input);
                loop {
                    // The source's reads run inside the decoder's: its share is
                    // taken out of the decoder's busy time.
                    let started = std::time::Instant::now();
                    let source_before = stages.busy_time(Stage::Source);
                    let read = producer.next_chunk();
                    let source_share = stages.busy_time(Stage::Source) - source_before;
                    stages.busy(
                        Stage::Decode,
                        started.elapsed().saturating_sub(source_share),
                    );
                    match read {
                        Ok(chunk) if chunk.is_empty() => {
                            // The end marker: without it the consumer takes a
                            // closed channel for a decoder that died.
                            let _ = sender.send(Ok(chunk));
                            break;
                        }
                        Ok(chunk) => {
                            progress.add_decoded(chunk.len() as u64);
                            let sent =
                                stages.time_waiting(Stage::Decode, || sender.send(Ok(chunk)));
                            if sent.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = sender.send(Err(e));
                            break;
                        }
                    }
                }
            })
            .expect("spawning the decode thread");
        ChunkStream {
            receiver: Some(receiver),
            pushed_back: VecDeque::new(),
            position: 0,
            producer: Some(producer),
            stages: Some(consumer_stages),
        }
    }

    /// A stream fed by another stage (a container reader such as OVA, sending one
    /// member's bytes): the sender sends chunks in order, then an empty chunk as
    /// the end marker, or an error to stop the stream. Bounded like
    /// [`spawn`](Self::spawn)'s channel; dropping the stream makes sends fail.
    pub fn channel() -> (SyncSender<io::Result<Bytes>>, Self) {
        let (sender, receiver) = sync_channel(CHANNEL_DEPTH);
        let stream = ChunkStream {
            receiver: Some(receiver),
            pushed_back: VecDeque::new(),
            position: 0,
            producer: None,
            stages: None,
        };
        (sender, stream)
    }

    /// A stream over bytes already in memory (tests, fuzzing, benchmarks).
    pub fn from_bytes(data: Bytes) -> Self {
        let mut pushed_back = VecDeque::new();
        let mut data = data;
        while !data.is_empty() {
            let n = data.len().min(CHUNK_SIZE);
            pushed_back.push_back(data.split_to(n));
        }
        ChunkStream {
            receiver: None,
            pushed_back,
            position: 0,
            producer: None,
            stages: None,
        }
    }

    /// Stream offset of the next byte [`next_chunk`](Self::next_chunk) returns.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let chunk = match self.pushed_back.pop_front() {
            Some(c) => Some(c),
            None => match &self.receiver {
                None => None,
                Some(rx) => match self.timed_recv(rx) {
                    Ok(Ok(c)) if c.is_empty() => {
                        self.receiver = None;
                        None
                    }
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(io::Error::other(
                            "the decoding thread stopped before the end of the stream",
                        ))
                    }
                },
            },
        };
        if let Some(c) = &chunk {
            self.position += c.len() as u64;
        }
        Ok(chunk)
    }

    /// Waits for the producer's next chunk, counting the wait as the reader's.
    fn timed_recv(
        &self,
        rx: &Receiver<io::Result<Bytes>>,
    ) -> Result<io::Result<Bytes>, std::sync::mpsc::RecvError> {
        let started = std::time::Instant::now();
        let got = rx.recv();
        if let Some(stages) = &self.stages {
            stages.waited(Stage::Reader, started.elapsed());
        }
        got
    }

    /// Gives back the tail of the chunk last returned, to be returned again next.
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.position -= bytes.len() as u64;
        self.pushed_back.push_front(bytes);
    }

    /// Reads up to `n` bytes (fewer only at the end of the stream), copying
    /// only when they span chunks.
    pub fn read_up_to(&mut self, n: usize) -> io::Result<Bytes> {
        let mut first = match self.next_chunk()? {
            None => return Ok(Bytes::new()),
            Some(c) => c,
        };
        if first.len() >= n {
            let rest = first.split_off(n);
            self.unread(rest);
            return Ok(first);
        }
        let mut out = BytesMut::with_capacity(n);
        out.extend_from_slice(&first);
        while out.len() < n {
            let Some(mut c) = self.next_chunk()? else {
                break;
            };
            let take = (n - out.len()).min(c.len());
            out.extend_from_slice(&c.split_to(take));
            self.unread(c);
        }
        Ok(out.freeze())
    }

    /// Looks at up to `n` bytes without consuming them.
    pub fn peek(&mut self, n: usize) -> io::Result<Bytes> {
        let head = self.read_up_to(n)?;
        self.unread(head.clone());
        Ok(head)
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        // Closing the receiver makes a blocked producer's send fail, so it exits.
        self.receiver.take();
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}

impl Read for ChunkStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(mut c) = self.next_chunk()? else {
            return Ok(0);
        };
        let n = buf.len().min(c.len());
        c.copy_to_slice(&mut buf[..n]);
        self.unread(c);
        Ok(n)
    }
}

/// Alignment of chunk buffers in memory. Chunks start at multiples of
/// [`CHUNK_SIZE`] in the stream, so any part of a chunk at a 4 KiB-aligned
/// stream offset (a raw image's data, a qcow2 cluster) is 4 KiB-aligned in
/// memory too, and an O_DIRECT sink can write it without a copy.
pub const CHUNK_ALIGN: usize = 4096;

/// Fills the stream's chunks from the input. A piece the input shares that
/// is a whole aligned chunk (a download's buffer) becomes the chunk as it
/// is; anything else is copied into a buffer of the pool, which gets its
/// buffers back when the last [`Bytes`] into them is dropped, so the
/// producer reuses them instead of allocating and zeroing one per chunk.
struct Producer {
    input: Input,
    pool: AlignedPool,
}

impl Producer {
    fn new(input: Input) -> Self {
        Producer {
            input,
            pool: AlignedPool::new(CHUNK_SIZE, CHUNK_ALIGN),
        }
    }

    /// The next chunk of `CHUNK_SIZE` bytes, shorter only at the end (empty
    /// there).
    fn next_chunk(&mut self) -> io::Result<Bytes> {
        let mut buffer = None;
        let mut filled = 0;
        while filled < CHUNK_SIZE {
            match self.input.read_piece(CHUNK_SIZE - filled) {
                Ok(Some(piece)) if piece.is_empty() => break,
                Ok(Some(piece)) if filled == 0 && Self::is_whole_chunk(&piece) => {
                    return Ok(piece);
                }
                Ok(Some(piece)) => {
                    let buffer = buffer.get_or_insert_with(|| self.pool.take());
                    buffer.as_mut_slice()[filled..filled + piece.len()].copy_from_slice(&piece);
                    filled += piece.len();
                }
                Ok(None) => {
                    let buffer = buffer.get_or_insert_with(|| self.pool.take());
                    match self
                        .input
                        .read(&mut buffer.as_mut_slice()[filled..CHUNK_SIZE])
                    {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(match buffer {
            Some(buffer) => self.pool.share(buffer, filled),
            None => Bytes::new(),
        })
    }

    /// A piece that can be a chunk without a copy: all of one, and aligned
    /// in memory as the chunk's own buffer would be.
    fn is_whole_chunk(piece: &Bytes) -> bool {
        piece.len() == CHUNK_SIZE && piece.as_ptr() as usize % CHUNK_ALIGN == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `good` bytes, then panics as a buggy decoder might.
    struct PanicsAfter {
        good: usize,
    }

    impl Read for PanicsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                panic!("decoder bug (expected by the test)");
            }
            let n = buf.len().min(self.good);
            buf[..n].fill(7);
            self.good -= n;
            Ok(n)
        }
    }

    fn drain(stream: &mut ChunkStream) -> io::Result<u64> {
        let mut total = 0;
        while let Some(c) = stream.next_chunk()? {
            total += c.len() as u64;
        }
        Ok(total)
    }

    #[test]
    fn whole_input_arrives_and_end_is_repeatable() {
        let input = io::Cursor::new(vec![1u8; CHUNK_SIZE * 2 + 5]);
        let mut stream =
            ChunkStream::spawn(crate::piece::plain(input), Arc::new(Progress::default()));
        assert_eq!(drain(&mut stream).unwrap(), (CHUNK_SIZE * 2 + 5) as u64);
        assert!(stream.next_chunk().unwrap().is_none());
    }

    #[test]
    fn a_decoder_that_dies_is_an_error_not_an_end() {
        let input = PanicsAfter {
            good: CHUNK_SIZE + 10,
        };
        let mut stream =
            ChunkStream::spawn(crate::piece::plain(input), Arc::new(Progress::default()));
        let error = drain(&mut stream).expect_err("a dead decoder must not look like the end");
        assert!(error.to_string().contains("decoding thread"), "{error}");
    }
}
