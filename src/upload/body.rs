//! The request body as one more forward-only source: the async side (the
//! HTTP handler) sends the body's bytes over a bounded channel, the blocking
//! side (the pipeline's thread) reads them through [`BodyReader`], which is an
//! ordinary `Read`. At most [`DEPTH`] pieces wait, so a slow target slows the
//! client down (TCP backpressure) instead of filling memory.
//!
//! The end of the body is an explicit [`Piece::End`]: a channel that closes
//! without it (the connection went away, the handler was dropped) is a read
//! error, never a short image that looks complete.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// Pieces of body that may wait for the pipeline.
pub const DEPTH: usize = 16;

/// What travels from the handler to the reader.
#[derive(Debug)]
pub enum Piece {
    /// Bytes of the body, in order.
    Data(Bytes),
    /// The body ended where it should.
    End,
    /// Reading the body failed.
    Failed(io::Error),
}

/// The sending end, for the handler.
pub type BodySender = mpsc::Sender<Piece>;

/// A channel for one upload.
pub fn channel() -> (BodySender, BodyReader) {
    let (sender, receiver) = mpsc::channel(DEPTH);
    (
        sender,
        BodyReader {
            receiver,
            current: Bytes::new(),
            ended: false,
        },
    )
}

/// The connection ended before the body did.
#[derive(Debug, thiserror::Error)]
#[error("the upload connection closed before the whole body was received")]
pub struct BodyCutShort;

/// The blocking end: the body as a `Read`. Call only outside the async runtime.
#[derive(Debug)]
pub struct BodyReader {
    receiver: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.receiver.blocking_recv() {
                Some(Piece::Data(bytes)) => self.current = bytes,
                Some(Piece::End) => self.ended = true,
                Some(Piece::Failed(e)) => return Err(e),
                None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, BodyCutShort)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Most body bytes read and dropped after an early answer (see [`discard`]).
pub const DISCARD_LIMIT: u64 = 16 << 20;
/// Longest time spent on that.
pub const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and drops what the client still sends after it was answered early
/// (an error, 401, 503), up to [`DISCARD_LIMIT`] bytes and [`DISCARD_TIME`].
/// Closing a socket with unread bytes makes the kernel send a reset, which
/// can destroy the answer before the client reads it; clients stop sending
/// once they see the answer, so this costs little. Returns the bytes dropped.
pub async fn discard<B>(mut body: B) -> u64
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut dropped = 0u64;
    let reading = async {
        while dropped < DISCARD_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    dropped += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, reading).await;
    dropped
}

/// Sends the whole of `body` to `sender`, then [`Piece::End`]. When the
/// reader is gone (the upload ended early) the rest is [`discard`]ed.
pub async fn feed<B>(mut body: B, sender: BodySender)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        let piece = match body.frame().await {
            None => Piece::End,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => Piece::Data(data),
                // Trailers carry no body bytes.
                Err(_) => continue,
            },
            Some(Err(e)) => {
                Piece::Failed(io::Error::other(format!("reading the request body: {e}")))
            }
        };
        let last = !matches!(piece, Piece::Data(_));
        if sender.send(piece).await.is_err() {
            let dropped = discard(body).await;
            tracing::info!("dropped {dropped} body bytes sent after the upload ended");
            return;
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_read_in_order_and_end_only_at_the_end_marker() {
        let (sender, mut reader) = channel();
        let feeder = std::thread::spawn(move || {
            sender
                .blocking_send(Piece::Data(Bytes::from_static(b"hello ")))
                .unwrap();
            sender
                .blocking_send(Piece::Data(Bytes::from_static(b"world")))
                .unwrap();
            sender.blocking_send(Piece::End).unwrap();
        });
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello world");
        feeder.join().unwrap();
    }

    #[test]
    fn a_channel_closed_without_the_end_marker_is_an_error() {
        let (sender, mut reader) = channel();
        sender
            .blocking_send(Piece::Data(Bytes::from_static(b"partial")))
            .unwrap();
        drop(sender);
        let mut out = Vec::new();
        let error = reader.read_to_end(&mut out).unwrap_err();
        assert!(error.get_ref().is_some_and(|e| e.is::<BodyCutShort>()));
        assert_eq!(out, b"partial");
    }
}
