//! The block-device target: the disk is written straight to the device with
//! O_DIRECT, buffers and offsets aligned to the device's logical block size
//! (512 or 4096), consecutive extents coalesced into large writes, unaligned
//! edges read-modify-written, zero ranges made zero with `BLKZEROOUT`, and the
//! device flushed before success is reported. An image larger than the device
//! is refused by [`ExtentSink::set_size`], before any byte is written.
//!
//! The device's first and last MiB are zeroed and flushed before the first
//! byte of an image reaches it, and again when the sink is dropped unfinished
//! after that (a failed import), so that the device never looks like a disk
//! unless the import finished (a refusal before any write, such as an image
//! larger than the device, leaves the device as it was); the
//! [`HoldBack`](super::hold_back::HoldBack) wrapper writes the image's own
//! first and last MiB last (the rule in [`crate::sink`]).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::aligned::AlignedBuf;
use super::hold_back::HELD;
use super::{ExtentSink, SinkError, SinkSummary};
use crate::extent::{Extent, ExtentKind};

/// Bytes gathered before one write is issued.
const COALESCE: usize = 4 << 20;

// From linux/fs.h: _IO(0x12, 104), _IOR(0x12, 114, size_t), _IO(0x12, 127).
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// A block device opened for direct I/O.
pub struct BlockSink {
    device: File,
    path: PathBuf,
    /// Logical block size: the alignment of every offset, length and buffer.
    block: u64,
    device_size: u64,
    size: Option<u64>,
    /// Bytes gathered for the next write: they belong at `pending_start`
    /// (block aligned); when the run began mid-block, its first bytes are the
    /// device's own contents, read back.
    buffer: AlignedBuf,
    pending_start: u64,
    pending_len: usize,
    summary: SinkSummary,
    /// The edges were cleared and the image's writes began.
    touched: bool,
    /// `finish` succeeded: the device holds the image.
    finished: bool,
}

impl BlockSink {
    /// Opens the block device at `path`.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| io_error("opening", path, e))?;
        let mut block: libc::c_int = 0;
        let mut device_size: u64 = 0;
        // SAFETY: both ioctls write one integer of the given type through the
        // pointer, which points at a live local of that type.
        let ok = unsafe {
            libc::ioctl(device.as_raw_fd(), BLKSSZGET, &mut block) == 0
                && libc::ioctl(device.as_raw_fd(), BLKGETSIZE64, &mut device_size) == 0
        };
        if !ok {
            return Err(io_error(
                "reading the block size of",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        let block = block.max(512) as u64;
        let sink = BlockSink {
            buffer: AlignedBuf::new(COALESCE, block as usize),
            device,
            path: path.to_path_buf(),
            block,
            device_size,
            size: None,
            pending_start: 0,
            pending_len: 0,
            summary: SinkSummary::default(),
            touched: false,
            finished: false,
        };
        Ok(sink)
    }

    /// Zeroes the device's first and last [`HELD`] bytes and flushes: what
    /// makes it look like a disk (partition tables, boot sector, superblocks,
    /// backup GPT) is gone.
    fn clear_edges(&mut self) -> Result<(), SinkError> {
        self.pending_len = 0;
        let size = self.device_size - self.device_size % self.block;
        let head = HELD.min(size);
        let tail_start = size.saturating_sub(HELD).max(head);
        self.zero(0, head)?;
        self.zero(tail_start, size - tail_start)?;
        self.flush()?;
        self.device
            .sync_all()
            .map_err(|e| io_error("flushing", &self.path, e))
    }

    /// The device's logical block size.
    pub fn logical_block_size(&self) -> u64 {
        self.block
    }

    /// The device's size in bytes.
    pub fn device_size(&self) -> u64 {
        self.device_size
    }

    fn pending_end(&self) -> u64 {
        self.pending_start + self.pending_len as u64
    }

    /// Appends bytes that belong at guest offset `at`.
    fn put(&mut self, mut at: u64, mut bytes: &[u8]) -> Result<(), SinkError> {
        while !bytes.is_empty() {
            if self.pending_len == 0 || at != self.pending_end() {
                self.flush()?;
                self.begin(at)?;
            }
            let room = self.buffer.len() - self.pending_len;
            let take = room.min(bytes.len());
            let from = self.pending_len;
            self.buffer.as_mut_slice()[from..from + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            at += take as u64;
            bytes = &bytes[take..];
            if self.pending_len == self.buffer.len() {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Starts a new pending run at `at`, reading the device's bytes in front of
    /// it when `at` is not block aligned.
    fn begin(&mut self, at: u64) -> Result<(), SinkError> {
        let start = at - at % self.block;
        self.pending_start = start;
        self.pending_len = (at - start) as usize;
        if self.pending_len > 0 {
            let block = self.block as usize;
            self.device
                .read_exact_at(&mut self.buffer.as_mut_slice()[..block], start)
                .map_err(|e| io_error("reading (to merge a partial block) from", &self.path, e))?;
        }
        Ok(())
    }

    /// Writes the pending run, completing a partial last block from the device.
    fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending_len == 0 {
            return Ok(());
        }
        let block = self.block as usize;
        let tail = self.pending_len % block;
        let write_len = self.pending_len.next_multiple_of(block);
        if tail != 0 {
            let last = self.pending_len - tail;
            let mut scratch = AlignedBuf::new(block, block);
            self.device
                .read_exact_at(scratch.as_mut_slice(), self.pending_start + last as u64)
                .map_err(|e| io_error("reading (to merge a partial block) from", &self.path, e))?;
            self.buffer.as_mut_slice()[last + tail..last + block]
                .copy_from_slice(&scratch.as_slice()[tail..]);
        }
        self.device
            .write_all_at(&self.buffer.as_slice()[..write_len], self.pending_start)
            .map_err(|e| io_error("writing", &self.path, e))?;
        self.pending_len = 0;
        Ok(())
    }

    /// Makes `[at, at + len)` read as zeroes.
    fn zero(&mut self, at: u64, len: u64) -> Result<(), SinkError> {
        let end = at + len;
        let first_full = at.next_multiple_of(self.block).min(end);
        let last_full = (end - end % self.block).max(first_full);
        let zeros = vec![0u8; self.block as usize];
        if first_full > at {
            self.put(at, &zeros[..(first_full - at) as usize])?;
        }
        if last_full > first_full {
            self.flush()?;
            let range: [u64; 2] = [first_full, last_full - first_full];
            // SAFETY: BLKZEROOUT reads one [u64; 2] (start, length) through the
            // pointer, which points at a live local array.
            let rc = unsafe { libc::ioctl(self.device.as_raw_fd(), BLKZEROOUT, &range) };
            if rc != 0 {
                return Err(io_error(
                    "zeroing a range of",
                    &self.path,
                    std::io::Error::last_os_error(),
                ));
            }
        }
        if end > last_full {
            self.put(last_full, &zeros[..(end - last_full) as usize])?;
        }
        Ok(())
    }
}

impl ExtentSink for BlockSink {
    fn set_size(&mut self, size: u64) -> Result<(), SinkError> {
        if size > self.device_size {
            return Err(SinkError::TargetTooSmall {
                needed: size,
                available: self.device_size,
            });
        }
        self.size = Some(size);
        self.summary.size = size;
        Ok(())
    }

    fn write(&mut self, extent: Extent) -> Result<(), SinkError> {
        if !self.touched {
            // From here on the device is changing: first make it not a disk.
            self.clear_edges()?;
            self.touched = true;
        }
        let limit = self.size.unwrap_or(self.device_size);
        let len = extent.len();
        let end = extent.guest_offset.checked_add(len);
        if end.is_none_or(|end| end > limit) {
            if let (None, Some(end)) = (self.size, end) {
                // A stream of unknown length outgrew the device: the image
                // is too big for the volume, as CDI's controller should hear.
                return Err(SinkError::TargetTooSmall {
                    needed: end,
                    available: self.device_size,
                });
            }
            return Err(SinkError::OutOfRange {
                offset: extent.guest_offset,
                len,
                size: limit,
            });
        }
        match extent.kind {
            ExtentKind::Data(bytes) => {
                self.put(extent.guest_offset, &bytes)?;
                self.summary.bytes_written += len;
            }
            ExtentKind::Zero(n) => {
                self.zero(extent.guest_offset, n)?;
                self.summary.bytes_zero += n;
            }
        }
        Ok(())
    }

    fn flush_data(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        self.device
            .sync_all()
            .map_err(|e| io_error("flushing", &self.path, e))
    }

    fn finish(&mut self) -> Result<SinkSummary, SinkError> {
        self.flush_data()?;
        if self.size.is_none() {
            self.summary.size = self.device_size;
        }
        self.finished = true;
        Ok(self.summary)
    }
}

impl Drop for BlockSink {
    /// An unfinished import must not leave a device that looks like a disk.
    fn drop(&mut self) {
        if self.finished || !self.touched {
            return;
        }
        if let Err(e) = self.clear_edges() {
            tracing::error!(
                device = %self.path.display(),
                error = %crate::error::describe_chain(&e),
                "cannot zero the first and last MiB of the device after a failed import"
            );
        }
    }
}

fn io_error(what: &'static str, path: &Path, source: std::io::Error) -> SinkError {
    SinkError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}
