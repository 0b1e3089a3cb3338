//! Network reads (a few KiB to a few hundred KiB each) gathered into the
//! chunks the reader takes: aligned buffers of exactly [`CHUNK`] bytes from
//! one [`AlignedPool`], each filled to the brim before it is handed on (only
//! the last chunk of a span is shorter). A span starts at a multiple of
//! [`CHUNK`], so every chunk covers one aligned MiB of the object: the stream
//! passes such chunks on as its own and an O_DIRECT sink writes from them
//! without another copy. Buffers come back to the pool when the sink drops
//! them, so a download allocates (and faults in) only as many buffers as its
//! window holds at once.

use bytes::Bytes;

use super::transfer::CHUNK;
use crate::aligned::AlignedBuf;
use crate::aligned_pool::AlignedPool;
use crate::stream::CHUNK_ALIGN;

/// The chunk being filled.
pub struct Gather {
    pool: AlignedPool,
    pending: Option<AlignedBuf>,
    filled: usize,
}

impl Gather {
    /// A pool for the chunks of one download (shared by its spans).
    pub fn pool() -> AlignedPool {
        AlignedPool::new(CHUNK, CHUNK_ALIGN)
    }

    /// An empty gather taking its buffers from `pool` (the first on the
    /// first read).
    pub fn new(pool: AlignedPool) -> Gather {
        Gather {
            pool,
            pending: None,
            filled: 0,
        }
    }

    /// Copies the front of `data` into the chunk being filled, advancing
    /// `data` past what it took; returns the chunk if that filled it. Call
    /// again while `data` is not empty.
    pub fn fill(&mut self, data: &mut &[u8]) -> Option<Bytes> {
        if data.is_empty() {
            return None;
        }
        let buffer = self.pending.get_or_insert_with(|| self.pool.take());
        let n = data.len().min(CHUNK - self.filled);
        buffer.as_mut_slice()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        *data = &data[n..];
        (self.filled == CHUNK).then(|| self.hand_on())
    }

    /// The chunk so far; the next read starts a new buffer.
    fn hand_on(&mut self) -> Bytes {
        let buffer = self.pending.take().expect("a chunk is being filled");
        let len = std::mem::take(&mut self.filled);
        self.pool.share(buffer, len)
    }

    /// The partly filled chunk, if it holds anything (at the end of a span).
    pub fn take(&mut self) -> Option<Bytes> {
        (self.filled > 0).then(|| self.hand_on())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of `sizes` (cycled) adding up to `total` bytes: every chunk but
    /// the last is exactly CHUNK and aligned, and the bytes come out whole
    /// and in order.
    fn gather(sizes: &[usize], total: usize) -> Vec<Bytes> {
        let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
        let mut gather = Gather::new(Gather::pool());
        let mut out = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == total {
                break;
            }
            let end = (at + size).min(total);
            let mut read = &data[at..end];
            while !read.is_empty() {
                out.extend(gather.fill(&mut read));
            }
            at = end;
        }
        out.extend(gather.take());
        let joined: Vec<u8> = out.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, data);
        let (last, whole) = out.split_last().expect("some chunk");
        assert!(whole.iter().all(|c| c.len() == CHUNK));
        assert!(!last.is_empty() && last.len() <= CHUNK);
        assert!(out.iter().all(|c| c.as_ptr() as usize % CHUNK_ALIGN == 0));
        out
    }

    #[test]
    fn reads_that_do_not_divide_a_chunk_fill_whole_aligned_chunks() {
        let chunks = gather(&[16 * 1024 + 7, 3, 60_000], 5 * CHUNK + 123);
        assert_eq!(chunks.len(), 6);
    }

    #[test]
    fn a_read_larger_than_a_chunk_fills_several() {
        let chunks = gather(&[2 * CHUNK + 5], 3 * CHUNK);
        assert_eq!(chunks.len(), 3);
    }

    #[test]
    fn nothing_gathered_gives_no_chunk() {
        let mut gather = Gather::new(Gather::pool());
        assert!(gather.take().is_none());
        assert!(gather.fill(&mut &[][..]).is_none());
        assert!(gather.take().is_none());
    }

    #[test]
    fn buffers_of_dropped_chunks_are_reused() {
        let pool = Gather::pool();
        let mut gather = Gather::new(pool.clone());
        let data = vec![1u8; CHUNK];
        let first = gather.fill(&mut &data[..]).unwrap();
        let address = first.as_ptr();
        drop(first);
        let second = gather.fill(&mut &data[..]).unwrap();
        assert_eq!(second.as_ptr(), address);
    }
}
