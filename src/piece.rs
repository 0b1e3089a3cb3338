//! The reader type between the source and the format reader: a [`Read`] that
//! can also hand over bytes it already holds in a buffer, as [`Bytes`],
//! instead of copying them into the caller's buffer ([`PieceRead`]).
//!
//! A download fills aligned 1 MiB buffers from the network; the stream takes
//! those buffers as its chunks and the O_DIRECT sink writes from them, so an
//! uncompressed image is copied once in user space (out of the HTTP client)
//! instead of three times. Every layer in between (counting, checksum,
//! timing, the sniffed head handed back) passes pieces on; a reader with no
//! buffer to share (a file, a decoder) answers `None` and is read as usual.

use std::io::{self, Read};

use bytes::{Buf, Bytes};

/// A reader that may hand over its next bytes without copying them.
pub trait PieceRead: Read + Send {
    /// Up to `max` (more than 0) of the next bytes, from a buffer the reader
    /// holds: `Some` non-empty bytes, `Some` empty bytes at the end of the
    /// stream, or `None` when it holds none to share right now (then [`read`]
    /// them). Pieces and reads may be mixed; both advance the same stream.
    ///
    /// [`read`]: Read::read
    fn read_piece(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        let _ = max;
        Ok(None)
    }
}

/// The input of a conversion: the source's bytes, as pieces where it can.
pub type Input = Box<dyn PieceRead>;

impl<P: PieceRead + ?Sized> PieceRead for Box<P> {
    fn read_piece(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        (**self).read_piece(max)
    }
}

/// A reader that never shares buffers: every byte is read.
pub struct Plain<R>(pub R);

impl<R: Read> Read for Plain<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + Send> PieceRead for Plain<R> {}

/// `reader` as an [`Input`] that is read, never shared.
pub fn plain(reader: impl Read + Send + 'static) -> Input {
    Box::new(Plain(reader))
}

/// Bytes already taken from a reader (a sniffed head), then the rest of it.
pub struct Replay<R> {
    head: Bytes,
    rest: R,
}

impl<R> Replay<R> {
    /// `head`, then `rest`.
    pub fn new(head: Bytes, rest: R) -> Replay<R> {
        Replay { head, rest }
    }
}

impl<R: Read> Read for Replay<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.head.is_empty() {
            return self.rest.read(buf);
        }
        let n = buf.len().min(self.head.len());
        self.head.copy_to_slice(&mut buf[..n]);
        Ok(n)
    }
}

impl<R: PieceRead> PieceRead for Replay<R> {
    fn read_piece(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        if self.head.is_empty() {
            return self.rest.read_piece(max);
        }
        let n = max.min(self.head.len());
        Ok(Some(self.head.split_to(n)))
    }
}

/// Reads `input` to its end, by pieces where it offers them (tests and
/// tools that want every byte).
pub fn read_all(input: &mut dyn PieceRead) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match input.read_piece(buf.len())? {
            Some(piece) if piece.is_empty() => return Ok(out),
            Some(piece) => out.extend_from_slice(&piece),
            None => match input.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shares pieces of its bytes, at most `piece` at a time.
    struct Shares {
        data: Bytes,
        piece: usize,
    }

    impl Read for Shares {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.data.len());
            self.data.copy_to_slice(&mut buf[..n]);
            Ok(n)
        }
    }

    impl PieceRead for Shares {
        fn read_piece(&mut self, max: usize) -> io::Result<Option<Bytes>> {
            let n = max.min(self.piece).min(self.data.len());
            Ok(Some(self.data.split_to(n)))
        }
    }

    #[test]
    fn a_replayed_head_comes_first_then_the_pieces_of_the_rest() {
        let data: Bytes = (0..1000u32).map(|i| i as u8).collect::<Vec<_>>().into();
        let mut rest = Shares {
            data: data.clone(),
            piece: 300,
        };
        let mut head = vec![0u8; 10];
        rest.read_exact(&mut head).unwrap();
        let mut replay = Replay::new(Bytes::from(head), rest);
        let first = replay.read_piece(4).unwrap().unwrap();
        assert_eq!(&first[..], &data[..4]);
        let second = replay.read_piece(100).unwrap().unwrap();
        assert_eq!(&second[..], &data[4..10], "the head ends a piece");
        let third = replay.read_piece(1000).unwrap().unwrap();
        assert_eq!(&third[..], &data[10..310]);
        let mut all = data[..310].to_vec();
        all.extend(read_all(&mut replay).unwrap());
        assert_eq!(all, &data[..]);
    }

    #[test]
    fn a_plain_reader_shares_nothing_and_is_read_whole() {
        let mut input = plain(io::Cursor::new(vec![5u8; 200_000]));
        assert!(input.read_piece(10).unwrap().is_none());
        assert_eq!(read_all(&mut input).unwrap(), vec![5u8; 200_000]);
    }
}
