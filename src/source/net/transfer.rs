//! One object (or one range of it) delivered in order, whatever the network
//! does: the body is streamed into chunks of [`CHUNK`] bytes, and a drop, a
//! reset, a stall or a retryable status resumes at the first missing byte
//! through the source's [`Opener`], under the retry policy and the cancel
//! token. The answer to every resume is checked by [`Identity::check`].

use std::future::Future;
use std::pin::Pin;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::gather::Gather;
use super::request::Opened;
use super::resume::Identity;
use super::{DisplayUrl, Net, NetError, Retry};
use crate::aligned_pool::AlignedPool;
use crate::error::describe_chain;

/// Size of the chunks handed to the reader (one park/unpark per MiB, not per
/// network read); the stream's chunk size, so that they pass through it.
pub const CHUNK: usize = crate::stream::CHUNK_SIZE;

/// The future of [`Opener::open`].
pub type OpenFuture<'a> = Pin<Box<dyn Future<Output = Result<Opened, NetError>> + Send + 'a>>;

/// How a source asks for bytes of its object: http and registry blobs with a
/// GET, S3 with a signed GetObject.
pub trait Opener: Send + Sync {
    /// Asks for bytes `from..to` (`to` exclusive, `None` for the end; `0..None`
    /// is the plain request) of the object `identity` describes (the default
    /// identity before the first answer).
    fn open<'a>(&'a self, identity: &'a Identity, from: u64, to: Option<u64>) -> OpenFuture<'a>;

    /// The object's URL for messages.
    fn shown(&self) -> DisplayUrl;
}

/// A part of the object: `start..end`, `end` `None` for "to its end".
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// First byte.
    pub start: u64,
    /// One past the last byte, when bounded.
    pub end: Option<u64>,
}

/// Chunks of one span, or the error that ended it.
pub type ChunkSender = mpsc::Sender<Result<Bytes, NetError>>;

enum Ended {
    /// Every byte of the span was delivered.
    Done,
    /// The reader went away.
    Closed,
}

/// Delivers `span` of the object into `tx` in chunks from `pool`, resuming
/// as needed; `first` is an answer already received for the span's start.
/// Returns once the span is complete or the reader is gone; the error of a
/// failure that is final.
pub async fn deliver(
    net: &Net,
    opener: &dyn Opener,
    identity: &Identity,
    span: Span,
    mut first: Option<Opened>,
    pool: AlignedPool,
    tx: &ChunkSender,
) -> Result<(), NetError> {
    let shown = opener.shown();
    // A first answer without a length learns it from a later 206.
    let mut identity = identity.clone();
    let mut pos = span.start;
    let mut failures = 0u32;
    let mut pending = Gather::new(pool);
    loop {
        let before = pos;
        let attempt = Attempt {
            net,
            opener,
            span,
            shown: &shown,
        };
        let result = attempt
            .run(&mut identity, &mut pos, first.take(), &mut pending, tx)
            .await;
        match result {
            Ok(Ended::Closed) => return Ok(()),
            Ok(Ended::Done) => break,
            Err(error) => {
                if pos > before {
                    failures = 0;
                }
                failures += 1;
                let (wait, error) = net.policy.next(failures, error)?;
                tracing::warn!(
                    url = %shown,
                    offset = pos,
                    attempt = failures,
                    "{}; resuming in {wait:?}",
                    describe_chain(&error)
                );
                net.cancel.sleep(wait).await?;
            }
        }
    }
    if let Some(rest) = pending.take() {
        if tx.send(Ok(rest)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

struct Attempt<'a> {
    net: &'a Net,
    opener: &'a dyn Opener,
    span: Span,
    shown: &'a DisplayUrl,
}

impl Attempt<'_> {
    /// One request: reads its body into `pending` (sent on every full
    /// chunk), advancing `pos`.
    async fn run(
        &self,
        identity: &mut Identity,
        pos: &mut u64,
        first: Option<Opened>,
        pending: &mut Gather,
        tx: &ChunkSender,
    ) -> Result<Ended, NetError> {
        if self
            .span
            .end
            .or(identity.total)
            .is_some_and(|end| *pos >= end)
        {
            return Ok(Ended::Done);
        }
        let mut opened = match first {
            Some(opened) => opened,
            None => {
                let opening = self.opener.open(identity, *pos, self.span.end);
                match self.net.cancel.run(opening).await {
                    Ok(opened) => opened,
                    // Resumed past the real end: the length was a lie.
                    Err(NetError::Status { status: 416, .. }) if *pos > 0 => {
                        return Err(NetError::Length {
                            url: self.shown.clone(),
                            expected: identity.total.unwrap_or(*pos),
                            detail: format!(
                                "the connection ended after {} bytes and the server has nothing beyond (HTTP 416)",
                                *pos
                            ),
                        })
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        let mut skip = identity.check(&opened, *pos, self.shown)?;
        if identity.total.is_none() && opened.partial {
            identity.total = opened.total;
        }
        let end = self.span.end.or(identity.total);
        loop {
            let item = self
                .net
                .cancel
                .run(async { Ok(opened.body.next().await) })
                .await?;
            let mut chunk = match item {
                None => {
                    return match end {
                        Some(end) if *pos < end => Err(NetError::Short {
                            url: self.shown.clone(),
                            offset: *pos,
                            expected: end,
                        }),
                        _ => Ok(Ended::Done),
                    }
                }
                // Every byte arrived; only the end of the response broke (a
                // final error there, such as a failed checksum, still fails).
                Some(Err(error)) if end == Some(*pos) && error.retry() != Retry::No => {
                    tracing::debug!(error = %describe_chain(&error), "error after the whole body");
                    return Ok(Ended::Done);
                }
                Some(Err(error)) => return Err(error),
                Some(Ok(chunk)) => chunk,
            };
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                chunk.advance(n as usize);
                skip -= n;
                if chunk.is_empty() {
                    continue;
                }
            }
            let mut finished = false;
            if let Some(end) = end {
                if *pos + chunk.len() as u64 > end {
                    if self.span.end.is_none() {
                        return Err(NetError::Length {
                            url: self.shown.clone(),
                            expected: end,
                            detail: format!("received more than {end} bytes"),
                        });
                    }
                    // A bounded span served from a longer answer (the first,
                    // whole-object response of a parallel download).
                    chunk.truncate((end - *pos) as usize);
                    finished = true;
                }
            }
            *pos += chunk.len() as u64;
            finished |= end == Some(*pos) && self.span.end.is_some();
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                if let Some(full) = pending.fill(&mut rest) {
                    if tx.send(Ok(full)).await.is_err() {
                        return Ok(Ended::Closed);
                    }
                }
            }
            if finished {
                return Ok(Ended::Done);
            }
        }
    }
}

/// After the announced length was read: a server that serves ranges must
/// have nothing beyond it (a body longer than its Content-Length would
/// otherwise be cut silently).
pub async fn probe_end(
    net: &Net,
    opener: &dyn Opener,
    identity: &Identity,
) -> Result<(), NetError> {
    let Some(total) = identity.total.filter(|t| *t > 0) else {
        return Ok(());
    };
    if !identity.accepts_ranges {
        return Ok(());
    }
    match net.cancel.run(opener.open(identity, total, None)).await {
        Ok(opened) if opened.partial && opened.start == total => Err(NetError::Length {
            url: opener.shown(),
            expected: total,
            detail: match opened.total {
                Some(real) => format!("the object is longer ({real} bytes)"),
                None => "the server has bytes beyond it".into(),
            },
        }),
        Ok(_) => Ok(()),
        Err(NetError::Cancelled) => Err(NetError::Cancelled),
        Err(error) => {
            tracing::debug!(error = %describe_chain(&error), "end-of-body probe answered");
            Ok(())
        }
    }
}

/// The first answer for the whole object, retried under the policy.
pub async fn open_first(net: &Net, opener: &dyn Opener) -> Result<Opened, NetError> {
    let identity = Identity::default();
    super::retry::with_retries(net, || opener.open(&identity, 0, None)).await
}
