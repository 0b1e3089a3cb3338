//! Reused aligned buffers of one size, shared as [`Bytes`]. A stage fills a
//! buffer, hands it on as `Bytes`, and the buffer comes back here when the
//! last `Bytes` over it is dropped (by the sink, stages later, on another
//! thread). Taking a returned buffer costs no allocation and no page faults:
//! a fresh 1 MiB buffer is a new mapping whose pages fault in on first write,
//! which profiling showed as a large share of a download's CPU time.
//!
//! The pool keeps every buffer given back, so it holds at most as many as
//! were ever in use at once: the bounds of the stages that hold them bound it.
//! A user whose need shrinks for good (a download going back from parallel
//! ranges to one connection) caps what it keeps with [`AlignedPool::keep_at_most`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::aligned::AlignedBuf;

/// A pool of [`AlignedBuf`]s of `size` bytes aligned to `align`.
#[derive(Clone)]
pub struct AlignedPool {
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    align: usize,
    free: Mutex<Vec<AlignedBuf>>,
    /// Idle buffers kept at most; any more given back are freed.
    keep: AtomicUsize,
}

impl AlignedPool {
    /// An empty pool of buffers of `size` bytes (rounded up to `align`).
    pub fn new(size: usize, align: usize) -> AlignedPool {
        AlignedPool {
            shared: Arc::new(Shared {
                size,
                align,
                free: Mutex::new(Vec::new()),
                keep: AtomicUsize::new(usize::MAX),
            }),
        }
    }

    /// A buffer: one given back, else a new one.
    pub fn take(&self) -> AlignedBuf {
        let reused = self.free().pop();
        reused.unwrap_or_else(|| AlignedBuf::new(self.shared.size, self.shared.align))
    }

    /// The first `len` bytes of `buffer` as `Bytes`; the buffer returns to
    /// the pool when the last of them is dropped.
    pub fn share(&self, buffer: AlignedBuf, len: usize) -> Bytes {
        assert!(
            len <= buffer.len(),
            "{len} bytes shared of a {} byte buffer",
            buffer.len()
        );
        Bytes::from_owner(Pooled {
            buffer: Some(buffer),
            len,
            pool: self.shared.clone(),
        })
    }

    /// From now on keeps at most `n` idle buffers: frees those beyond it
    /// now, and any given back beyond it later.
    pub fn keep_at_most(&self, n: usize) {
        self.shared.keep.store(n, Ordering::Relaxed);
        self.free().truncate(n);
    }

    /// Buffers waiting to be taken again.
    pub fn idle(&self) -> usize {
        self.free().len()
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<AlignedBuf>> {
        // A panic while holding the lock leaves the list intact.
        self.shared.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A filled buffer lent out as `Bytes`.
struct Pooled {
    buffer: Option<AlignedBuf>,
    len: usize,
    pool: Arc<Shared>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer.as_ref().expect("held until dropped").as_slice()[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < self.pool.keep.load(Ordering::Relaxed) {
                free.push(buffer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_buffer_comes_back_when_its_last_bytes_are_dropped() {
        let pool = AlignedPool::new(8192, 4096);
        let mut buffer = pool.take();
        let address = buffer.as_slice().as_ptr() as usize;
        assert_eq!(address % 4096, 0);
        buffer.as_mut_slice()[..3].copy_from_slice(b"abc");
        let shared = pool.share(buffer, 3);
        let tail = shared.slice(1..);
        assert_eq!(&shared[..], b"abc");
        drop(shared);
        assert_eq!(pool.idle(), 0, "a slice still holds it");
        assert_eq!(&tail[..], b"bc");
        drop(tail);
        assert_eq!(pool.idle(), 1);
        let again = pool.take();
        assert_eq!(again.as_slice().as_ptr() as usize, address, "reused");
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn a_capped_pool_frees_what_it_does_not_keep() {
        let pool = AlignedPool::new(4096, 4096);
        let mut lent: Vec<Bytes> = (0..5).map(|_| pool.share(pool.take(), 1)).collect();
        lent.truncate(3); // two given back
        assert_eq!(pool.idle(), 2);
        pool.keep_at_most(1);
        assert_eq!(pool.idle(), 1, "the one beyond it freed now");
        drop(lent);
        assert_eq!(pool.idle(), 1, "and those given back later");
    }

    #[test]
    fn buffers_given_back_from_another_thread_are_reused() {
        let pool = AlignedPool::new(4096, 4096);
        let shared = pool.share(pool.take(), 4096);
        std::thread::spawn(move || drop(shared)).join().unwrap();
        assert_eq!(pool.idle(), 1);
    }
}
