//! Block-parallel xz decoding with bounded memory.
//!
//! `xz -T0` writes a stream in blocks whose headers state their sizes, so the
//! blocks can be found without decoding them and decoded side by side.
//! liblzma's own threaded decoder holds each block's whole input and output
//! (over 20 MiB per thread for `xz -3 -T0`'s 12 MiB blocks); this one keeps
//! a bounded queue of each block's output instead, and only the front block's
//! output is handed on, in order:
//!
//! - a *framer* thread reads the compressed stream, cuts it into blocks by
//!   their headers, checks the index and footer of every stream against the
//!   blocks it cut ([`super::xz_frame`]), and hands the blocks to the workers
//!   in turn (block `k` to worker `k % n`; a worker takes its next block only
//!   when it is done with the last, so at most `n` blocks are in flight);
//! - each *worker* decodes a block with liblzma, as a single-block stream
//!   (this stream's header, the block verbatim, an index and footer of that
//!   block), so that liblzma checks the block's header, sizes and integrity
//!   check; its output goes into the block's own queue. The workers share
//!   [`OUTPUT_BUDGET`] pieces of output: a worker ahead of the front waits
//!   when they are all taken; the front block's worker may take
//!   [`FRONT_PIECES`] more (so the reader always gets on). A piece that
//!   comes out all zero (a sparse disk's free space) is queued as its
//!   length and its buffer filled again, so runs of zeroes take no budget
//!   and a worker ahead is not held up by them;
//! - the reader ([`ParallelXz`]) hands on the front block's pieces, then
//!   the next block's.
//!
//! A stream whose first block states no sizes (a single-threaded encoder
//! writes none) is decoded whole by the framer itself, in order with the
//! rest. Errors come out in stream order: a corrupt block fails when the
//! reader reaches it, after everything before it.
//!
//! Memory: per thread, one dictionary and its output
//! queue; the input queued for all blocks together is bounded by
//! [`INPUT_BUDGET`]. [`per_thread`] is what the caller budgets with.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use liblzma::stream::{Action, Status, Stream};

use super::xz_frame::{
    self, block_padding, BlockHeader, IndexTally, StreamFlags, STREAM_HEADER_LEN,
};
use super::{Compression, StreamError};
use crate::sink::zero_detect::is_zero;

/// Bytes of compressed input sent to a worker at a time.
const INPUT_PIECE: usize = 256 << 10;

/// Most compressed input queued for the workers, all blocks together: what
/// lets a worker start on the next block while the front one is decoded.
pub const INPUT_BUDGET: u64 = 4 << 20;

/// Bytes of output a worker hands on at a time.
const OUTPUT_PIECE: usize = 256 << 10;

/// Output pieces the workers ahead of the front may hold, all together
/// (the front block's worker takes pieces beyond them): 6 MiB, half of
/// `xz -3 -T0`'s 12 MiB blocks, so that the worker ahead is half done when
/// its block comes to the front.
const OUTPUT_BUDGET: usize = 24;

/// Output pieces beyond the budget the front block may hold at most (the
/// reader's, the one being filled, and two queued).
const FRONT_PIECES: usize = 4;

/// Messages a block's queue holds: its data pieces (bounded by the budget)
/// and its zero pieces, which hold no memory. 64 cover a whole block of
/// `xz -3 -T0` (12 MiB), so a worker ahead of the front goes through a block
/// of zeroes (most of a sparse disk) without waiting for the reader.
const BLOCK_QUEUE: usize = 64;

/// What a thread's decoder holds besides its dictionary.
const DECODER_OVERHEAD: u64 = 1 << 20;

/// Memory one of two or more threads decoding blocks with an LZMA2
/// dictionary of `dictionary` bytes holds at most: its decoder, and half of
/// the shared budgets of input ([`INPUT_BUDGET`]) and output
/// ([`OUTPUT_BUDGET`] and the front's pieces), so that `n >= 2` threads are
/// never counted short.
pub fn per_thread(dictionary: u64) -> u64 {
    let output = ((OUTPUT_BUDGET + FRONT_PIECES) * OUTPUT_PIECE) as u64;
    dictionary
        .saturating_add(DECODER_OVERHEAD)
        .saturating_add(output / 2)
        .saturating_add(INPUT_BUDGET / 2)
}

/// How errors are worded: the hard memory limit per decoder and its basis.
#[derive(Clone)]
pub struct Limits {
    /// Hard limit of each decoder (one per thread).
    pub memlimit: u64,
    /// What the limit was derived from.
    pub basis: String,
}

/// One piece of a block's output, or how the block ended.
enum Piece {
    Data(Vec<u8>),
    /// This many zero bytes: a piece found all zero by its worker, whose
    /// buffer the worker keeps filling, so that zeroes cost no budget.
    Zeros(usize),
    Failed(io::Error),
}

/// The next thing in stream order.
enum Next {
    /// A block (or a whole stream decoded by the framer): its pieces, until
    /// the sender is dropped.
    Block(Receiver<Piece>),
    /// The framer failed here.
    Failed(io::Error),
    /// The input ended after complete streams.
    End,
}

/// A block for a worker.
struct Job {
    /// Its place in stream order.
    seq: u64,
    input: Receiver<io::Result<InputPiece>>,
    output: SyncSender<Piece>,
    /// What the block decodes to, as its header states (and liblzma checks).
    uncompressed: u64,
}

/// Decoded bytes of a multi-block xz input, in order (see the module doc).
pub struct ParallelXz {
    order: Receiver<Next>,
    front: Option<Receiver<Piece>>,
    /// The piece being handed on, and how much of it is.
    piece: Vec<u8>,
    at: usize,
    /// Zero bytes still to hand on (a zero piece), before `piece`'s rest.
    zeros: usize,
    /// Blocks started so far (the front's place in stream order is the last).
    blocks: u64,
    pool: Arc<Pool>,
    failed: Option<io::ErrorKind>,
    done: bool,
}

impl ParallelXz {
    /// Starts the framer and `threads` workers over `input` (the stream from
    /// its first byte on); fails only if a thread cannot be started.
    pub fn new<R: BufRead + Send + 'static>(
        input: R,
        threads: u32,
        limits: Limits,
    ) -> io::Result<Self> {
        let threads = threads.max(1) as usize;
        // Bounded, so that a stream of many tiny blocks cannot queue up
        // finished blocks without end ahead of a slow reader.
        let (order_tx, order) = mpsc::sync_channel(2 * threads + 2);
        let pool = Arc::new(Pool::new());
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (tx, rx) = mpsc::sync_channel::<Job>(0);
            let limits = limits.clone();
            let pool = Arc::clone(&pool);
            thread::Builder::new()
                .name("xz-worker".into())
                .spawn(move || work(rx, &limits, &pool))?;
            workers.push(tx);
        }
        let framer_pool = Arc::clone(&pool);
        thread::Builder::new()
            .name("xz-framer".into())
            .spawn(move || {
                let mut framer = Framer {
                    input,
                    workers,
                    order: order_tx,
                    next_worker: 0,
                    blocks: 0,
                    limits,
                    pool: framer_pool,
                };
                let last = match framer.run() {
                    Ok(()) => Next::End,
                    Err(e) => Next::Failed(e),
                };
                let _ = framer.order.send(last);
            })?;
        Ok(ParallelXz {
            order,
            front: None,
            piece: Vec::new(),
            at: 0,
            zeros: 0,
            blocks: 0,
            pool,
            failed: None,
            done: false,
        })
    }

    /// The next non-empty piece (data or zeroes), `None` at the end.
    fn next_piece(&mut self) -> io::Result<Option<Piece>> {
        if let Some(kind) = self.failed {
            return Err(io::Error::new(kind, "the xz stream failed before"));
        }
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(front) = &self.front else {
                match self.order.recv() {
                    Ok(Next::Block(block)) => {
                        self.pool.set_front(self.blocks);
                        self.blocks += 1;
                        self.front = Some(block);
                    }
                    Ok(Next::Failed(e)) => return Err(self.fail(e)),
                    Ok(Next::End) => self.done = true,
                    Err(_) => return Err(self.fail(io::Error::other("the xz framer stopped"))),
                }
                continue;
            };
            match front.recv() {
                Ok(Piece::Data(data)) if data.is_empty() => self.pool.give_output(data),
                Ok(Piece::Zeros(0)) => {}
                Ok(Piece::Failed(e)) => return Err(self.fail(e)),
                Ok(piece) => return Ok(Some(piece)),
                // The block's sender is dropped after its last piece.
                Err(_) => self.front = None,
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        self.failed = Some(e.kind());
        e
    }
}

impl Drop for ParallelXz {
    fn drop(&mut self) {
        self.pool.close();
    }
}

impl Read for ParallelXz {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.zeros == 0 && self.at == self.piece.len() {
            self.pool.give_output(std::mem::take(&mut self.piece));
            self.at = 0;
            match self.next_piece()? {
                None => return Ok(0),
                Some(Piece::Data(next)) => self.piece = next,
                Some(Piece::Zeros(len)) => self.zeros = len,
                Some(Piece::Failed(_)) => unreachable!("next_piece returns failures as errors"),
            }
        }
        if self.zeros > 0 {
            let n = buf.len().min(self.zeros);
            buf[..n].fill(0);
            self.zeros -= n;
            return Ok(n);
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The framer's state (see the module doc).
struct Framer<R> {
    input: R,
    workers: Vec<SyncSender<Job>>,
    order: SyncSender<Next>,
    next_worker: usize,
    /// Blocks handed on so far, in stream order.
    blocks: u64,
    limits: Limits,
    pool: Arc<Pool>,
}

/// The reader was dropped: nothing more to do.
struct Gone;

impl<R: BufRead> Framer<R> {
    fn run(&mut self) -> io::Result<()> {
        let mut streams = 0u64;
        loop {
            let Some((header, flags)) = self.stream_header(streams)? else {
                return Ok(());
            };
            match self.stream(&header, flags) {
                Ok(Ok(())) => streams += 1,
                Ok(Err(Gone)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// After `streams` streams: skips stream padding and reads the next
    /// stream header, `None` at the end of the input.
    fn stream_header(
        &mut self,
        streams: u64,
    ) -> io::Result<Option<([u8; STREAM_HEADER_LEN], StreamFlags)>> {
        if streams > 0 && !xz_frame::skip_padding(&mut self.input, streams)?.map_err(corrupt)? {
            return Ok(None);
        }
        let mut header = [0u8; STREAM_HEADER_LEN];
        let mut got = 0;
        while got < header.len() {
            match self.input.read(&mut header[got..])? {
                0 => break,
                n => got += n,
            }
        }
        let magic_len = got.min(xz_frame::MAGIC.len());
        let garbage = header[..magic_len] != xz_frame::MAGIC[..magic_len];
        if got < header.len() && !garbage {
            return Err(truncated());
        }
        let flags = xz_frame::stream_header(&header).map_err(|e| {
            if streams > 0 && garbage {
                corrupt(format!(
                    "the data after xz stream {streams} is not another xz stream (trailing \
                     garbage)"
                ))
            } else {
                corrupt(e)
            }
        })?;
        Ok(Some((header, flags)))
    }

    /// One stream, after its header: its blocks, index and footer.
    fn stream(
        &mut self,
        header: &[u8; STREAM_HEADER_LEN],
        flags: StreamFlags,
    ) -> io::Result<Result<(), Gone>> {
        let mut tally = IndexTally::default();
        loop {
            let mut size_byte = [0u8];
            self.read_exact(&mut size_byte)?;
            if size_byte[0] == 0 {
                return self.index_and_footer(flags, tally).map(Ok);
            }
            let mut block_header = vec![0u8; BlockHeader::len_from_first_byte(size_byte[0])];
            block_header[0] = size_byte[0];
            self.read_exact(&mut block_header[1..])?;
            let block = BlockHeader::parse(&block_header).map_err(corrupt)?;
            let (Some(compressed), Some(uncompressed)) = (block.compressed, block.uncompressed)
            else {
                if tally.records() == 0 {
                    return self.whole_stream(header, &block_header);
                }
                return Err(corrupt(
                    "a block without sizes in its header after blocks with them (not \
                     supported by the parallel decoder)",
                ));
            };
            let unpadded = block
                .len
                .checked_add(compressed)
                .and_then(|n| n.checked_add(flags.check_len()))
                .filter(|&n| n <= u64::MAX / 4)
                .ok_or_else(|| corrupt("a block header states an impossible size"))?;
            tally.add((unpadded, uncompressed));
            let rest = compressed + block_padding(compressed) + flags.check_len();
            if self
                .block(header, &block_header, rest, (unpadded, uncompressed))?
                .is_err()
            {
                return Ok(Err(Gone));
            }
        }
    }

    /// Hands one block to the next worker: its header, then `rest` bytes of
    /// the input (data, padding, check), then the end of a single-block
    /// stream for `record`.
    fn block(
        &mut self,
        stream_header: &[u8; STREAM_HEADER_LEN],
        block_header: &[u8],
        rest: u64,
        record: xz_frame::IndexRecord,
    ) -> io::Result<Result<(), Gone>> {
        let queue = (INPUT_BUDGET as usize).div_ceil(INPUT_PIECE) + 3;
        let (input_tx, input) = mpsc::sync_channel(queue);
        let (output, pieces) = mpsc::sync_channel(BLOCK_QUEUE);
        if self.order.send(Next::Block(pieces)).is_err() {
            return Ok(Err(Gone));
        }
        let seq = self.blocks;
        self.blocks += 1;
        let worker = &self.workers[self.next_worker];
        self.next_worker = (self.next_worker + 1) % self.workers.len();
        let job = Job {
            seq,
            input,
            output,
            uncompressed: record.1,
        };
        if worker.send(job).is_err() {
            return Ok(Err(Gone));
        }
        let Some(first) = self.pool.input_from(&head(stream_header, block_header)) else {
            return Ok(Err(Gone));
        };
        if input_tx.send(Ok(first)).is_err() {
            return Ok(Err(Gone));
        }
        let mut left = rest;
        while left > 0 {
            let Some(mut piece) = self.pool.input(left.min(INPUT_PIECE as u64) as usize) else {
                return Ok(Err(Gone));
            };
            if let Err(e) = self.read_exact(&mut piece.bytes) {
                // The worker fails with it, in order; the framer stops.
                let kind = e.kind();
                let _ = input_tx.send(Err(e));
                return Err(io::Error::new(kind, "the xz input failed"));
            }
            left -= piece.bytes.len() as u64;
            if input_tx.send(Ok(piece)).is_err() {
                return Ok(Err(Gone));
            }
        }
        let end = xz_frame::single_block_stream(stream_header, record);
        if let Some(last) = self.pool.input_from(&end) {
            let _ = input_tx.send(Ok(last));
        }
        Ok(Ok(()))
    }

    /// A stream whose first block states no sizes, decoded here in order
    /// from its header on (`block_header` already read).
    fn whole_stream(
        &mut self,
        stream_header: &[u8; STREAM_HEADER_LEN],
        block_header: &[u8],
    ) -> io::Result<Result<(), Gone>> {
        let (output, pieces) = mpsc::sync_channel(BLOCK_QUEUE);
        if self.order.send(Next::Block(pieces)).is_err() {
            return Ok(Err(Gone));
        }
        let mut decoder = Decoder::new(&self.limits, &self.pool, 0);
        decoder.seq = self.blocks;
        self.blocks += 1;
        match decoder.feed(&head(stream_header, block_header), &output) {
            Fed::Taken => {}
            Fed::Ended(_) | Fed::Stopped => return Ok(Err(Gone)),
        }
        loop {
            let buf = match self.input.fill_buf() {
                Ok(buf) => buf,
                Err(e) => {
                    let kind = e.kind();
                    decoder.fail(&output, e);
                    return Err(io::Error::new(kind, "the xz input failed"));
                }
            };
            if buf.is_empty() {
                decoder.finish(&output);
                return Ok(Ok(()));
            }
            let len = buf.len();
            match decoder.feed(buf, &output) {
                Fed::Stopped => return Ok(Err(Gone)),
                Fed::Ended(used) => {
                    self.input.consume(used);
                    return Ok(Ok(()));
                }
                Fed::Taken => self.input.consume(len),
            }
        }
    }

    /// The index (its indicator byte already read) and the footer.
    fn index_and_footer(&mut self, flags: StreamFlags, tally: IndexTally) -> io::Result<()> {
        let blocks = tally.records();
        let mut failure = None;
        let mut next = || {
            let mut byte = [0u8];
            match self.read_exact(&mut byte) {
                Ok(()) => Ok(byte[0]),
                Err(e) => {
                    let text = e.to_string();
                    failure = Some(e);
                    Err(text)
                }
            }
        };
        // The indicator byte was read by the caller: give it back.
        let mut indicator = Some(0u8);
        let result = xz_frame::read_index(
            || match indicator.take() {
                Some(b) => Ok(b),
                None => next(),
            },
            blocks,
        );
        if let Some(e) = failure {
            return Err(e);
        }
        let (index, index_len) = result.map_err(corrupt)?;
        if !tally.same_as(index) {
            return Err(corrupt("the index does not match the blocks"));
        }
        let mut footer = [0u8; STREAM_HEADER_LEN];
        self.read_exact(&mut footer)?;
        xz_frame::stream_footer(&footer, flags, index_len).map_err(corrupt)
    }

    /// Exactly `buf.len()` bytes; the end of the input before them is a
    /// truncated stream.
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof && e.get_ref().is_none() {
                truncated()
            } else {
                e
            }
        })
    }
}

/// A worker: decodes its blocks one after the other on one liblzma decoder
/// in concatenated mode, so that the dictionary and the decoder's state are
/// allocated once, not once per block.
fn work(jobs: Receiver<Job>, limits: &Limits, pool: &Pool) {
    let mut decoder = Decoder::new(limits, pool, CONCATENATED);
    for job in jobs {
        decoder.block(job);
    }
}

/// liblzma's flag: decode streams one after the other as one.
const CONCATENATED: u32 = 0x08;

/// How a piece of input went.
enum Fed {
    /// All of it was taken.
    Taken,
    /// The stream ended after this many bytes of it.
    Ended(usize),
    /// The block failed (reported) or the reader is gone.
    Stopped,
}

/// liblzma's stream decoder, sending its output in pieces.
struct Decoder<'a> {
    /// The place in stream order of the block being decoded.
    seq: u64,
    stream: Option<Stream>,
    flags: u32,
    out: Vec<u8>,
    limits: &'a Limits,
    pool: &'a Pool,
}

impl<'a> Decoder<'a> {
    fn new(limits: &'a Limits, pool: &'a Pool, flags: u32) -> Self {
        Decoder {
            seq: 0,
            stream: None,
            flags,
            out: Vec::new(),
            limits,
            pool,
        }
    }

    /// One block's single-block stream, from the job's input to its output;
    /// the piece it was filling goes back after it, so that a worker holds
    /// none between blocks.
    fn block(&mut self, job: Job) {
        self.seq = job.seq;
        self.decode(job);
        if self.out.capacity() > 0 {
            self.pool.give_output(std::mem::take(&mut self.out));
        }
    }

    fn decode(&mut self, job: Job) {
        let start = self.stream.as_ref().map_or(0, |s| s.total_out());
        for input in job.input {
            let bytes = match input {
                Ok(bytes) => bytes,
                Err(e) => return self.fail(&job.output, e),
            };
            match self.feed(&bytes.bytes, &job.output) {
                Fed::Taken => {}
                // Concatenated mode: a stream never ends by itself.
                Fed::Ended(_) => unreachable!("no stream end in concatenated mode"),
                Fed::Stopped => return,
            }
        }
        // All of the block's stream is taken (liblzma checked its index and
        // footer on taking them); what it still holds comes out now.
        if matches!(self.drain(&job.output), Fed::Stopped) {
            return;
        }
        let made = self.stream.as_ref().map_or(0, |s| s.total_out()) - start;
        if made != job.uncompressed {
            return self.fail(
                &job.output,
                corrupt("a block's size differs from its header"),
            );
        }
        let _ = self.send(&job.output);
    }

    /// Decodes `input`.
    fn feed(&mut self, mut input: &[u8], output: &SyncSender<Piece>) -> Fed {
        let total = input.len();
        let mut stalls = 0;
        while !input.is_empty() {
            if self.stream.is_none() {
                match Stream::new_stream_decoder(self.limits.memlimit, self.flags) {
                    Ok(stream) => self.stream = Some(stream),
                    Err(e) => {
                        let e = lzma_error(e, self.limits);
                        self.fail(output, e);
                        return Fed::Stopped;
                    }
                }
            }
            if self.out.capacity() == 0 {
                match self.pool.take_output(self.seq) {
                    Some(piece) => self.out = piece,
                    None => return Fed::Stopped,
                }
            }
            let stream = self.stream.as_mut().expect("set above");
            let (in_before, out_before) = (stream.total_in(), stream.total_out());
            let status = stream.process_vec(input, &mut self.out, Action::Run);
            let used = (stream.total_in() - in_before) as usize;
            let made = stream.total_out() - out_before;
            input = &input[used..];
            match status {
                Err(e) => {
                    let e = lzma_error(e, self.limits);
                    self.fail(output, e);
                    return Fed::Stopped;
                }
                Ok(Status::StreamEnd) => {
                    if self.send(output).is_none() {
                        return Fed::Stopped;
                    }
                    self.stream = None;
                    return Fed::Ended(total - input.len());
                }
                Ok(_) => {
                    if self.out.len() == self.out.capacity() && self.send(output).is_none() {
                        return Fed::Stopped;
                    }
                    if used == 0 && made == 0 {
                        stalls += 1;
                        if stalls > 3 {
                            self.fail(output, corrupt("the decoder makes no progress"));
                            return Fed::Stopped;
                        }
                    } else {
                        stalls = 0;
                    }
                }
            }
        }
        Fed::Taken
    }

    /// With all input given: the output liblzma still holds.
    fn drain(&mut self, output: &SyncSender<Piece>) -> Fed {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Fed::Taken;
            };
            if self.out.capacity() == 0 {
                match self.pool.take_output(self.seq) {
                    Some(piece) => self.out = piece,
                    None => return Fed::Stopped,
                }
            }
            let before = stream.total_out();
            if let Err(e) = stream.process_vec(&[], &mut self.out, Action::Run) {
                let e = lzma_error(e, self.limits);
                self.fail(output, e);
                return Fed::Stopped;
            }
            if stream.total_out() == before {
                return Fed::Taken;
            }
            if self.out.len() == self.out.capacity() && self.send(output).is_none() {
                return Fed::Stopped;
            }
        }
    }

    /// The input ended inside a stream (the framer's whole-stream mode):
    /// whatever liblzma still holds comes out with LZMA_FINISH, and the
    /// stream must end with it.
    fn finish(&mut self, output: &SyncSender<Piece>) {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            if self.out.capacity() == 0 {
                match self.pool.take_output(self.seq) {
                    Some(piece) => self.out = piece,
                    None => return,
                }
            }
            let before = stream.total_out();
            match stream.process_vec(&[], &mut self.out, Action::Finish) {
                Ok(Status::StreamEnd) => {
                    let _ = self.send(output);
                    self.stream = None;
                    return;
                }
                Ok(_) if stream.total_out() > before => {
                    if self.out.len() == self.out.capacity() && self.send(output).is_none() {
                        return;
                    }
                }
                Ok(_) => return self.fail(output, truncated()),
                Err(e) => {
                    let e = lzma_error(e, self.limits);
                    return self.fail(output, e);
                }
            }
        }
    }

    /// Hands on the output so far; `None` if the reader is gone. Output
    /// that is all zero goes as its length, and the piece is filled again.
    fn send(&mut self, output: &SyncSender<Piece>) -> Option<()> {
        if self.out.is_empty() {
            return Some(());
        }
        if is_zero(&self.out) {
            let len = self.out.len();
            self.out.clear();
            return output.send(Piece::Zeros(len)).ok();
        }
        let full = std::mem::take(&mut self.out);
        output.send(Piece::Data(full)).ok()
    }

    /// Hands on the output so far, then `e`; the decoder starts afresh for
    /// the next block (liblzma's state after an error is of no use).
    fn fail(&mut self, output: &SyncSender<Piece>, e: io::Error) {
        if self.send(output).is_some() {
            let _ = output.send(Piece::Failed(e));
        }
        self.stream = None;
    }
}

/// Buffers handed back for reuse, so that the pieces flowing between the
/// threads do not grow each thread's heap; and the budget of queued input.
struct Pool {
    output: Mutex<Taken>,
    output_room: Condvar,
    input: Mutex<Queued>,
    room: Condvar,
}

/// The output pieces handed out and not yet given back.
struct Taken {
    pieces: usize,
    spare: Vec<Vec<u8>>,
    /// The place in stream order of the block the reader is at.
    front: u64,
    closed: bool,
}

/// The input pieces handed out and not yet dropped.
struct Queued {
    bytes: u64,
    spare: Vec<Vec<u8>>,
    /// The reader is gone: nobody waits for input any more.
    closed: bool,
}

/// A piece of compressed input, counted against [`INPUT_BUDGET`] until
/// dropped.
struct InputPiece {
    bytes: Vec<u8>,
    pool: Arc<Pool>,
}

impl Drop for InputPiece {
    fn drop(&mut self) {
        self.pool.give_input(std::mem::take(&mut self.bytes));
    }
}

impl Pool {
    fn new() -> Self {
        Pool {
            output: Mutex::new(Taken {
                pieces: 0,
                spare: Vec::new(),
                front: 0,
                closed: false,
            }),
            output_room: Condvar::new(),
            input: Mutex::new(Queued {
                bytes: 0,
                spare: Vec::new(),
                closed: false,
            }),
            room: Condvar::new(),
        }
    }

    /// An empty output piece for block `seq`, once the budget (with
    /// [`FRONT_PIECES`] more for the front) has room; `None` when the reader
    /// is gone.
    fn take_output(&self, seq: u64) -> Option<Vec<u8>> {
        let mut taken = self.output.lock().expect("pool lock");
        loop {
            let limit = if seq == taken.front {
                OUTPUT_BUDGET + FRONT_PIECES
            } else {
                OUTPUT_BUDGET
            };
            if taken.closed || taken.pieces < limit {
                break;
            }
            taken = self.output_room.wait(taken).expect("pool lock");
        }
        if taken.closed {
            return None;
        }
        taken.pieces += 1;
        let spare = taken.spare.pop();
        Some(spare.unwrap_or_else(|| Vec::with_capacity(OUTPUT_PIECE)))
    }

    fn give_output(&self, mut piece: Vec<u8>) {
        if piece.capacity() == 0 {
            return; // the reader's empty start, never taken
        }
        let mut taken = self.output.lock().expect("pool lock");
        taken.pieces -= 1;
        if piece.capacity() == OUTPUT_PIECE {
            piece.clear();
            taken.spare.push(piece);
        }
        self.output_room.notify_all();
    }

    /// The reader is at block `seq` now.
    fn set_front(&self, seq: u64) {
        self.output.lock().expect("pool lock").front = seq;
        self.output_room.notify_all();
    }

    /// An input buffer of `len` bytes (at most [`INPUT_PIECE`]), once the
    /// budget has room for it (always, when nothing is queued); `None` when
    /// the reader is gone.
    fn input(self: &Arc<Self>, len: usize) -> Option<InputPiece> {
        let mut queued = self.input.lock().expect("pool lock");
        while !queued.closed && queued.bytes > 0 && queued.bytes + len as u64 > INPUT_BUDGET {
            queued = self.room.wait(queued).expect("pool lock");
        }
        if queued.closed {
            return None;
        }
        queued.bytes += len as u64;
        let mut bytes = queued
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(INPUT_PIECE));
        bytes.resize(len, 0);
        Some(InputPiece {
            bytes,
            pool: Arc::clone(self),
        })
    }

    /// `bytes` as an input piece (a short one the framer made).
    fn input_from(self: &Arc<Self>, bytes: &[u8]) -> Option<InputPiece> {
        let mut piece = self.input(bytes.len())?;
        piece.bytes.copy_from_slice(bytes);
        Some(piece)
    }

    fn give_input(&self, mut bytes: Vec<u8>) {
        let mut queued = self.input.lock().expect("pool lock");
        queued.bytes -= bytes.len() as u64;
        if bytes.capacity() == INPUT_PIECE
            && queued.spare.len() < INPUT_BUDGET as usize / INPUT_PIECE + 4
        {
            bytes.clear();
            queued.spare.push(bytes);
        }
        self.room.notify_all();
    }

    /// The reader is gone: wakes the framer if it waits for room.
    fn close(&self) {
        self.input.lock().expect("pool lock").closed = true;
        self.room.notify_all();
        self.output.lock().expect("pool lock").closed = true;
        self.output_room.notify_all();
    }
}

/// What a single-block stream starts with: the stream's header, then the
/// block's.
fn head(stream_header: &[u8; STREAM_HEADER_LEN], block_header: &[u8]) -> Vec<u8> {
    [&stream_header[..], block_header].concat()
}

fn corrupt(detail: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        StreamError::Corrupt {
            format: Compression::Xz,
            detail: detail.into(),
        },
    )
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        StreamError::Truncated {
            format: Compression::Xz,
        },
    )
}

/// liblzma's error for a block, as the sequential decoder words it.
fn lzma_error(e: liblzma::stream::Error, limits: &Limits) -> io::Error {
    super::xz_error(e, limits.memlimit, &limits.basis, 0)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{xz_check_fields, xz_in_blocks as blocks, FailsAfter};
    use super::*;
    use std::io::Cursor;

    /// Compressible, not trivially: bytes of a counter's low bits mixed.
    fn sample(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| ((i / 7) ^ (i.wrapping_mul(2_654_435_761) >> 29)) as u8)
            .collect()
    }

    fn limits() -> Limits {
        Limits {
            memlimit: 256 << 20,
            basis: "test".into(),
        }
    }

    /// Everything the decoder hands on, and how it ended.
    fn decode(bytes: Vec<u8>, threads: u32) -> (Vec<u8>, io::Result<()>) {
        let mut reader = ParallelXz::new(Cursor::new(bytes), threads, limits()).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 100_000];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return (out, Ok(())),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Err(e)),
            }
        }
    }

    fn detail(result: io::Result<()>) -> String {
        let e = result.expect_err("must fail");
        match e.get_ref().and_then(|r| r.downcast_ref::<StreamError>()) {
            Some(s) => s.to_string(),
            None => panic!("not a stream error: {e}"),
        }
    }

    #[test]
    fn blocks_decode_in_order_on_any_number_of_threads() {
        let data = sample(3 << 20);
        let bytes = blocks(&data, 100_000);
        for threads in [1, 2, 3, 8] {
            let (out, end) = decode(bytes.clone(), threads);
            end.unwrap();
            assert!(out == data, "{threads} threads");
        }
    }

    #[test]
    fn workers_far_ahead_of_a_slow_reader_wait_and_the_front_goes_on() {
        // 32 MiB in 8 MiB blocks (larger than the output budget), read 4 KiB
        // at a time: the worker ahead of the front fills the budget.
        let data: Vec<u8> = (0..32u32 << 20).map(|i| (i >> 12) as u8).collect();
        let bytes = blocks(&data, 8 << 20);
        for threads in [2, 3] {
            let bytes = bytes.clone();
            let (done, finished) = mpsc::channel();
            thread::spawn(move || {
                let mut reader = ParallelXz::new(Cursor::new(bytes), threads, limits()).unwrap();
                let mut out = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match reader.read(&mut buf).unwrap() {
                        0 => break,
                        n => out.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = done.send(out);
            });
            // A deadlock shows as no answer at all; the bound only keeps a
            // stuck run from hanging the suite (decoding takes a second).
            let out = finished
                .recv_timeout(std::time::Duration::from_secs(300))
                .expect("the decoder stopped making progress");
            assert!(out == data, "{threads} threads");
        }
    }

    /// Data with zero runs of every shape: whole blocks, pieces, partial
    /// pieces at block ends, a block that is zero but for one byte.
    fn sparse_sample() -> Vec<u8> {
        let mut data = vec![0u8; 3 << 20];
        data[..300_000].copy_from_slice(&sample(300_000));
        data[1_000_000..1_000_100].fill(7);
        data[(2 << 20) + 5] = 1;
        data
    }

    #[test]
    fn zero_runs_come_out_as_zeroes_on_any_number_of_threads() {
        let data = sparse_sample();
        for block in [100_000, 256 << 10, 1 << 20] {
            let bytes = blocks(&data, block);
            for threads in [1, 2, 3] {
                let (out, end) = decode(bytes.clone(), threads);
                end.unwrap();
                assert!(out == data, "blocks of {block}, {threads} threads");
            }
        }
    }

    #[test]
    fn reads_of_any_size_get_zeroes_and_data_in_order() {
        let data = sparse_sample();
        let mut reader = ParallelXz::new(Cursor::new(blocks(&data, 300_000)), 2, limits()).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 300_001];
        // Reads shorter and longer than a piece: zero pieces are handed on
        // in parts and end in the middle of a read's room.
        for want in [1, 7, 4096, 100_000, 300_001].into_iter().cycle() {
            match reader.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(out == data);
    }

    #[test]
    fn many_tiny_blocks_decode() {
        let data = sample(200_000);
        let bytes = blocks(&data, 100); // 2000 blocks
        let (out, end) = decode(bytes, 2);
        end.unwrap();
        assert!(out == data);
    }

    #[test]
    fn streams_with_and_without_sizes_and_padding_follow_each_other() {
        let a = sample(700_000);
        let b = sample(123_457);
        let mut bytes = blocks(&a, 64 << 10);
        bytes.extend([0u8; 8]);
        bytes.extend(liblzma::encode_all(&b[..], 1).unwrap()); // no sizes
        bytes.extend(blocks(b"", 64 << 10));
        bytes.extend([0u8; 4]);
        bytes.extend(blocks(&a[..1000], 64 << 10));
        let (out, end) = decode(bytes, 2);
        end.unwrap();
        assert!(out == [&a[..], &b[..], &a[..1000]].concat());
    }

    #[test]
    fn a_corrupt_block_fails_after_the_blocks_before_it() {
        let data = sample(1 << 20);
        let good = blocks(&data, 100_000);
        // The fourth block starts after the third block's check.
        let at = xz_check_fields(&good)[2].end;
        let mut bad = good.clone();
        bad[at + 40] ^= 0x55; // inside the fourth block's data
        let (out, end) = decode(bad, 2);
        assert!(detail(end).contains("corrupt"));
        // The first three blocks came out whole (of the fourth, liblzma may
        // hand on bytes before its check fails, as the sequential decoder
        // does: the error is what marks the import failed).
        assert!(out.len() >= 300_000 && out[..300_000] == data[..300_000]);
    }

    #[test]
    fn every_cut_is_an_error_never_a_short_stream() {
        let data = sample(400_000);
        let bytes = blocks(&data, 50_000);
        let step = bytes.len() / 97;
        for cut in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
            let (out, end) = decode(bytes[..cut].to_vec(), 2);
            assert!(end.is_err(), "cut at {cut} of {}", bytes.len());
            assert!(data.starts_with(&out));
        }
    }

    #[test]
    fn a_wrong_index_footer_or_trailing_garbage_is_named() {
        let data = sample(300_000);
        let good = blocks(&data, 50_000);
        let footer = good.len() - 12;
        let backward = u32::from_le_bytes(good[footer + 4..footer + 8].try_into().unwrap());
        let index = footer - (backward as usize + 1) * 4;
        // An index record's uncompressed size changed, CRC32 made right.
        let mut bad = good.clone();
        bad[index + 3] ^= 0x01;
        let crc = crc32fast::hash(&bad[index..footer - 4]);
        bad[footer - 4..footer].copy_from_slice(&crc.to_le_bytes());
        let (_, end) = decode(bad, 2);
        assert!(detail(end).contains("index does not match"));
        let mut bad = good.clone();
        bad[footer + 8] ^= 0x01;
        assert!(detail(decode(bad, 2).1).contains("footer"));
        let mut bad = good.clone();
        bad.extend(b"junk");
        assert!(detail(decode(bad, 2).1).contains("trailing garbage"));
        let mut bad = good.clone();
        bad.extend([0u8; 3]);
        assert!(detail(decode(bad, 2).1).contains("multiple of 4"));
        // A block header that states a larger compressed size than it has.
        let mut bad = good;
        let size_byte = bad[12];
        let header_len = BlockHeader::len_from_first_byte(size_byte);
        bad[14] = bad[14].wrapping_add(4);
        let crc = crc32fast::hash(&bad[12..12 + header_len - 4]);
        bad[12 + header_len - 4..12 + header_len].copy_from_slice(&crc.to_le_bytes());
        assert!(decode(bad, 2).1.is_err());
    }

    #[test]
    fn an_upstream_error_comes_out_as_it_was() {
        let data = sample(500_000);
        let mut bytes = blocks(&data, 50_000);
        bytes.truncate(bytes.len() / 2);
        let input = io::BufReader::new(FailsAfter(Cursor::new(bytes)));
        let mut reader = ParallelXz::new(input, 2, limits()).unwrap();
        let e = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
        assert!(e.to_string().contains("network gone"));
    }

    #[test]
    fn dropping_the_reader_midway_stops_its_threads() {
        let data = sample(4 << 20);
        let bytes = blocks(&data, 64 << 10);
        let mut reader = ParallelXz::new(Cursor::new(bytes), 2, limits()).unwrap();
        let mut buf = [0u8; 1000];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..], &data[..1000]);
        drop(reader); // the threads see closed channels and return
    }

    #[test]
    fn a_block_needing_more_than_the_limit_is_a_memory_error() {
        let data = sample(200_000);
        let bytes = blocks(&data, 50_000); // preset 1: 1 MiB dictionary
        let limits = Limits {
            memlimit: 512 << 10,
            basis: "a test limit".into(),
        };
        let mut reader = ParallelXz::new(Cursor::new(bytes), 2, limits).unwrap();
        let e = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("a test limit"), "{text}");
    }
}
