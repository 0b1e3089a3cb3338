//! A heap buffer aligned for O_DIRECT I/O: its address and length are
//! multiples of the alignment the device asks for. The sinks write from such
//! buffers, and the stream's chunks are such buffers, so that the data of a
//! chunk can go to an O_DIRECT descriptor without being copied first.

use std::alloc::{alloc_zeroed, dealloc, Layout};

/// Zero-initialised memory with a fixed alignment.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain owned memory with no interior references; it is
// as thread-safe as a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` bytes aligned to `align` (a power of two); `len` is rounded up to
    /// a multiple of `align`.
    pub fn new(len: usize, align: usize) -> Self {
        let len = len.next_multiple_of(align).max(align);
        let layout = Layout::from_size_align(len, align).expect("valid buffer layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Always false: buffers have at least one aligned block.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialised bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The whole buffer, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_rounded_up() {
        for align in [512usize, 4096] {
            let buf = AlignedBuf::new(1000, align);
            assert_eq!(buf.as_slice().as_ptr() as usize % align, 0);
            assert_eq!(buf.len() % align, 0);
            assert!(buf.len() >= 1000);
            assert!(buf.as_slice().iter().all(|b| *b == 0));
        }
    }
}
