//! The blocking end of a download: the decoder thread reads the object in
//! order from here. One connection streams the whole object; with several
//! (`--connections N`, for a large object whose server honours ranges and
//! names it by a validator), N consecutive segments are fetched at once, each
//! resumed on its own when its connection drops, and read in order. The
//! segments share one window of [`WINDOW`] bytes (a segment is the window
//! divided by N, whole chunks, at least one), so the download holds about
//! [`WINDOW`] bytes whatever the object's size and the number of
//! connections. When no number was asked for, the download starts on one
//! connection and [`Steer`] decides whether parallel segments are worth it
//! (a trial from the current offset, kept only if clearly faster).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

use super::gather::Gather;
use super::request::Opened;
use super::resume::Identity;
use super::steer::{Steer, Turn};
use super::transfer::{deliver, probe_end, Opener, Span, CHUNK};
use super::{runtime, Net, NetError};
use crate::aligned_pool::AlignedPool;
use crate::piece::PieceRead;

/// Bytes a parallel download holds at most, waiting or in flight, across
/// its segments (with one connection: [`QUEUE`] chunks).
pub const WINDOW: u64 = 8 << 20;
/// Objects smaller than this are fetched over one connection.
pub const PARALLEL_MIN: u64 = 32 << 20;
/// Connections a download may use when none are asked for (if they prove
/// faster than one).
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Chunks waiting between a single-connection download and the reader.
const QUEUE: usize = 4;

/// How a download is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Connections to use at most (1: sequential).
    pub connections: usize,
    /// Whether they were asked for: if not, they are used only where they
    /// prove faster than one ([`Steer`]).
    pub asked: bool,
    /// Check at the end that the server has nothing beyond the length.
    pub probe_end: bool,
}

/// The download of one object, read in order.
pub struct BodyReader {
    net: Arc<Net>,
    opener: Arc<dyn Opener>,
    identity: Identity,
    /// The buffers every span's chunks are gathered in.
    pool: AlignedPool,
    segments: VecDeque<Segment>,
    /// Next segment start, in parallel mode.
    next: Option<u64>,
    /// Bytes per segment, in parallel mode.
    segment: u64,
    /// Connections of parallel mode.
    connections: usize,
    /// Bytes handed to the reader so far (the offset of `current`'s end).
    offset: u64,
    /// Deciding between one connection and several, when nobody said.
    steer: Option<Steer>,
    current: Bytes,
    probe_end: bool,
    state: State,
}

struct Segment {
    rx: mpsc::Receiver<Result<Bytes, NetError>>,
    /// Bytes the segment must deliver, when known.
    expected: Option<u64>,
    got: u64,
}

enum State {
    Reading,
    Done,
    Failed(io::ErrorKind, String),
}

impl BodyReader {
    /// Starts downloading the object whose first answer is `first`.
    pub fn start(
        net: Arc<Net>,
        opener: Arc<dyn Opener>,
        first: Opened,
        plan: Plan,
    ) -> io::Result<BodyReader> {
        let identity = Identity::of(&first);
        let parallel = plan.connections > 1
            && identity.accepts_ranges
            && !identity.validators.is_empty()
            && identity.total.is_some_and(|t| t >= PARALLEL_MIN);
        let mut reader = BodyReader {
            net,
            opener,
            identity,
            pool: Gather::pool(),
            segments: VecDeque::new(),
            next: None,
            segment: segment_len(plan.connections),
            connections: plan.connections,
            offset: 0,
            steer: None,
            current: Bytes::new(),
            probe_end: plan.probe_end,
            state: State::Reading,
        };
        if parallel && plan.asked {
            reader.spawn_segments(0, Some(first))?;
        } else {
            if parallel {
                reader.steer = Some(Steer::new(PARALLEL_MIN));
            }
            let span = Span {
                start: 0,
                end: None,
            };
            reader.spawn(span, Some(first))?;
        }
        Ok(reader)
    }

    fn spawn(&mut self, span: Span, first: Option<Opened>) -> io::Result<()> {
        let total = self.identity.total;
        let expected = match span.end {
            Some(end) => Some(end - span.start),
            None => total.map(|t| t - span.start),
        };
        let depth = match span.end {
            Some(end) => ((end - span.start) as usize).div_ceil(CHUNK) + 1,
            None => QUEUE,
        };
        let (tx, rx) = mpsc::channel(depth);
        let net = self.net.clone();
        let opener = self.opener.clone();
        let identity = self.identity.clone();
        let pool = self.pool.clone();
        runtime()?.spawn(async move {
            if let Err(error) = deliver(&net, &*opener, &identity, span, first, pool, &tx).await {
                let _ = tx.send(Err(error)).await;
            }
        });
        self.segments.push_back(Segment {
            rx,
            expected,
            got: 0,
        });
        Ok(())
    }

    /// Parallel mode from `from` on (a whole number of chunks into the
    /// object): one segment per connection, the first served by `first` if
    /// given (an answer for `from` on, cut at the segment's end).
    fn spawn_segments(&mut self, from: u64, mut first: Option<Opened>) -> io::Result<()> {
        tracing::debug!(
            connections = self.connections,
            from,
            total = self.identity.total,
            "parallel ranged download"
        );
        self.next = Some(from);
        for _ in 0..self.connections {
            self.spawn_next(first.take())?;
        }
        Ok(())
    }

    /// Starts the next parallel segment, if any is left.
    fn spawn_next(&mut self, first: Option<Opened>) -> io::Result<()> {
        let (Some(start), Some(total)) = (self.next, self.identity.total) else {
            return Ok(());
        };
        if start >= total {
            self.next = None;
            return Ok(());
        }
        let end = (start + self.segment).min(total);
        self.spawn(
            Span {
                start,
                end: Some(end),
            },
            first,
        )?;
        self.next = Some(end);
        Ok(())
    }

    /// Acts on what [`Steer`] says now that `offset` bytes were handed on
    /// (the last chunk after waiting for it, if `waited`).
    fn steer(&mut self, waited: bool) -> io::Result<()> {
        let (Some(steer), Some(total)) = (self.steer.as_mut(), self.identity.total) else {
            return Ok(());
        };
        let left = total.saturating_sub(self.offset);
        let turn = steer.observe(self.offset, left, Instant::now(), waited);
        if steer.settled() {
            self.steer = None;
        }
        match turn {
            // Only the one open-ended span is running: it is dropped (its
            // queued chunks with it) and the rest is fetched in segments
            // from the first byte not handed on, a whole number of chunks
            // into the object.
            Some(Turn::Parallel) if self.segments.len() == 1 && left > 0 => {
                self.segments.clear();
                self.spawn_segments(self.offset, None)?;
            }
            // The segments already started finish; one open-ended span
            // takes the rest after them.
            Some(Turn::Sequential) => {
                // The trial's buffers beyond what one connection queues are
                // freed as its segments hand them back.
                self.pool.keep_at_most(QUEUE + 2);
                if let Some(start) = self.next.take().filter(|s| *s < total) {
                    self.spawn(Span { start, end: None }, None)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn fail(&mut self, error: io::Error) -> io::Error {
        self.state = State::Failed(error.kind(), crate::error::describe_chain(&error));
        self.segments.clear();
        error
    }

    /// Next chunk into `current`; false at the end.
    fn fill(&mut self) -> io::Result<bool> {
        loop {
            match &self.state {
                State::Done => return Ok(false),
                State::Failed(kind, text) => return Err(io::Error::new(*kind, text.clone())),
                State::Reading => {}
            }
            let Some(segment) = self.segments.front_mut() else {
                if self.probe_end {
                    let (net, opener, identity) =
                        (self.net.clone(), self.opener.clone(), self.identity.clone());
                    let probe = block_on(async move { probe_end(&net, &*opener, &identity).await });
                    if let Err(error) = probe.and_then(|r| r.map_err(NetError::into_io)) {
                        return Err(self.fail(error));
                    }
                }
                self.state = State::Done;
                return Ok(false);
            };
            let (next, waited) = match segment.rx.try_recv() {
                Ok(next) => (Some(next), false),
                Err(mpsc::error::TryRecvError::Empty) => (segment.rx.blocking_recv(), true),
                Err(mpsc::error::TryRecvError::Disconnected) => (None, false),
            };
            match next {
                Some(Ok(chunk)) => {
                    segment.got += chunk.len() as u64;
                    self.offset += chunk.len() as u64;
                    self.current = chunk;
                    self.steer(waited)?;
                    return Ok(true);
                }
                Some(Err(error)) => return Err(self.fail(error.into_io())),
                None => {
                    if let Some(expected) = segment.expected.filter(|e| segment.got < *e) {
                        let error = io::Error::other(format!(
                            "{}: the download task ended after {} of {expected} bytes",
                            self.opener.shown(),
                            segment.got
                        ));
                        return Err(self.fail(error));
                    }
                    self.segments.pop_front();
                    self.spawn_next(None)?;
                }
            }
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Bytes per segment of a download over `connections`: its share of the
/// window, in whole chunks.
fn segment_len(connections: usize) -> u64 {
    let chunks = (WINDOW / CHUNK as u64 / connections.max(1) as u64).max(1);
    chunks * CHUNK as u64
}

impl PieceRead for BodyReader {
    /// The chunks as they came from the network (aligned, a whole MiB of the
    /// object each but the last), or the part of one left by a `read`.
    fn read_piece(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        while self.current.is_empty() {
            if !self.fill()? {
                return Ok(Some(Bytes::new()));
            }
        }
        let n = max.min(self.current.len());
        Ok(Some(self.current.split_to(n)))
    }
}

/// Runs `work` on the shared runtime and waits for it from a blocking thread
/// (which may itself belong to another runtime).
pub fn block_on<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv()
        .map_err(|_| io::Error::other("the network task stopped without a result"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_share_the_window_in_whole_chunks() {
        assert_eq!(segment_len(1), WINDOW);
        assert_eq!(segment_len(4), WINDOW / 4);
        let chunk = CHUNK as u64;
        assert_eq!(
            segment_len(3),
            (WINDOW / chunk / 3).max(1) * chunk,
            "rounded down to chunks"
        );
        assert_eq!(segment_len(64), CHUNK as u64, "at least one chunk");
        for connections in 1..=32 {
            let segment = segment_len(connections);
            assert_eq!(segment % CHUNK as u64, 0);
            assert!(segment * connections as u64 <= WINDOW.max(connections as u64 * CHUNK as u64));
        }
    }
}
