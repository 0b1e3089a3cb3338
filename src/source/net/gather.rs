//! Network reads (a few KiB each) gathered into the chunks of at most
//! [`CHUNK`] bytes the reader takes. A chunk is handed on *before* a read
//! would take it past [`CHUNK`], so the buffer under it never grows: every
//! chunk waiting in a download's queue pins one allocation of [`CHUNK`]
//! bytes, not the doubled one a growing buffer leaves (which made a parallel
//! download's window hold twice its bytes, and copied each chunk once more).

use bytes::{Bytes, BytesMut};

use super::transfer::CHUNK;

/// The chunk being filled.
pub struct Gather {
    pending: BytesMut,
}

impl Gather {
    /// An empty gather (its buffer is allocated on the first read).
    pub fn new() -> Gather {
        Gather {
            pending: BytesMut::new(),
        }
    }

    /// Adds `data`; returns the chunk that is full, if one is.
    pub fn push(&mut self, data: &[u8]) -> Option<Bytes> {
        let mut full = None;
        if !self.pending.is_empty() && self.pending.len() + data.len() > CHUNK {
            full = Some(self.hand_on());
        }
        if self.pending.is_empty() && self.pending.capacity() < data.len() {
            self.pending = BytesMut::with_capacity(CHUNK.max(data.len()));
        }
        self.pending.extend_from_slice(data);
        if full.is_none() && self.pending.len() >= CHUNK {
            full = Some(self.hand_on());
        }
        full
    }

    /// The chunk so far; the next read starts a new buffer.
    fn hand_on(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }

    /// The partly filled chunk, if it holds anything (at the end of a span).
    pub fn take(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.hand_on())
    }

    /// Bytes the buffer can hold without growing.
    pub fn capacity(&self) -> usize {
        self.pending.capacity()
    }
}

impl Default for Gather {
    fn default() -> Self {
        Gather::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of `sizes` (cycled) adding up to `total` bytes: every chunk is
    /// at most CHUNK, the buffer never grows past CHUNK, and the bytes come
    /// out whole and in order.
    fn gather(sizes: &[usize], total: usize) -> Vec<Bytes> {
        let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
        let mut gather = Gather::new();
        let mut out = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == total {
                break;
            }
            let end = (at + size).min(total);
            out.extend(gather.push(&data[at..end]));
            assert!(gather.capacity() <= CHUNK, "grew to {}", gather.capacity());
            at = end;
        }
        out.extend(gather.take());
        let joined: Vec<u8> = out.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, data);
        out
    }

    #[test]
    fn reads_that_do_not_divide_a_chunk_never_grow_the_buffer() {
        let chunks = gather(&[16 * 1024 + 7, 3, 60_000], 5 * CHUNK + 123);
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
        // Nearly full chunks, not many small ones.
        assert!(chunks.len() <= 7, "{} chunks", chunks.len());
    }

    #[test]
    fn reads_that_divide_a_chunk_fill_it_exactly() {
        let chunks = gather(&[64 * 1024], 3 * CHUNK);
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.len() == CHUNK));
    }

    #[test]
    fn nothing_gathered_gives_no_chunk() {
        let mut gather = Gather::new();
        assert!(gather.take().is_none());
        assert!(gather.push(&[]).is_none());
        assert!(gather.take().is_none());
    }
}
