//! Direct I/O for the sparse file target, as `qemu-img convert -t none`
//! does: the file is opened a second time with O_DIRECT, consecutive data is
//! gathered into aligned buffers and written by a [`WritePool`], bypassing
//! the page cache (no copy into it, no write-back to start or wait for, and a
//! bounded cache whatever the image size).
//!
//! Data already aligned in memory (the stream's chunks) is written from where
//! it is, several pieces per `pwritev`, without that copy.
//!
//! Buffers start at [`ALIGN`]-aligned file offsets; the bytes of an extent
//! before the first aligned offset of its run, and after the last one, go
//! through the ordinary descriptor (a block is only ever written one way: the
//! extents of a disk do not overlap). All-zero blocks are not written, so the
//! file stays sparse. File systems that refuse O_DIRECT (ramfs, some FUSE
//! file systems) are found by [`DirectFile::open`], which then answers `None`
//! and the sink writes through the page cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use bytes::Bytes;

use super::write_pool::WritePool;
use super::zero_detect::is_zero;
use crate::aligned::AlignedBuf;

/// Alignment of direct writes, in memory and in the file: 4 KiB covers file
/// systems on 512-byte and 4K-sector devices alike.
pub const ALIGN: usize = 4096;

/// Bytes per direct write buffer.
const BUFFER: usize = 2 << 20;

/// Writer threads. Two, as measured in `../shared/bench/vs_anchors.sh`: four
/// did not help a file (2 GiB dense raw over http to ext4, alternating runs:
/// 5.0-6.2 s with four against 3.8 s with two in one series, equal in
/// another), whose direct writes into holes allocate under the inode lock.
const WRITERS: usize = 2;

/// Writes to one file with O_DIRECT where aligned, buffered elsewhere.
pub struct DirectFile {
    /// The file's ordinary descriptor, for unaligned edges.
    buffered: File,
    pool: WritePool,
    /// The open run, `[pending_start, pending_start + pending_len)`, is
    /// either copied into `current` or made of the `borrowed` pieces.
    current: Option<AlignedBuf>,
    /// Pieces of the caller's buffers, aligned in memory and length, which
    /// are written from where they are (see [`DirectFile::write`]).
    borrowed: Vec<Bytes>,
    pending_start: u64,
    pending_len: usize,
    /// Non-zero bytes written through `buffered`.
    edge_written: u64,
}

/// Whether `bytes`, to be written at an aligned offset, can be written from
/// where it is: aligned in memory and at least one block long.
fn can_borrow(bytes: &[u8]) -> bool {
    bytes.as_ptr() as usize % ALIGN == 0 && bytes.len() >= ALIGN
}

impl DirectFile {
    /// Opens `path` (whose ordinary descriptor is `buffered`, an empty file)
    /// for direct writes. `None` when its file system refuses O_DIRECT: the
    /// open, or a first aligned write (undone), fails with EINVAL.
    pub fn open(path: &Path, buffered: &File) -> io::Result<Option<Self>> {
        let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
        let direct = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if refused(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let probe = AlignedBuf::new(ALIGN, ALIGN);
        let probed = direct.write_all_at(probe.as_slice(), 0);
        buffered.set_len(0)?;
        match probed {
            Ok(()) => {}
            Err(e) if refused(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(Some(DirectFile {
            buffered: buffered.try_clone()?,
            pool: WritePool::new(&direct, BUFFER, ALIGN, WRITERS)?,
            current: None,
            borrowed: Vec::new(),
            pending_start: 0,
            pending_len: 0,
            edge_written: 0,
        }))
    }

    fn pending_end(&self) -> u64 {
        self.pending_start + self.pending_len as u64
    }

    fn run_is_open(&self) -> bool {
        self.current.is_some() || !self.borrowed.is_empty()
    }

    /// Writes `bytes` at file offset `at`; all-zero blocks stay holes.
    ///
    /// Bytes that are aligned in memory where they fall on aligned file
    /// offsets (the stream's chunks are, so a raw image's data and a qcow2's
    /// clusters are) are not copied: the write pool writes them from the
    /// caller's buffer, which it keeps until written. Others are gathered
    /// into the pool's aligned buffers.
    pub fn write(&mut self, at: u64, bytes: &Bytes) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.run_is_open() && at == self.pending_end() {
            if self.current.is_some() {
                return self.copy_in(bytes);
            }
            if can_borrow(bytes) {
                return self.borrow(bytes.clone());
            }
        }
        self.flush()?;
        let mut at = at;
        let mut bytes = bytes.clone();
        let aligned = at.next_multiple_of(ALIGN as u64);
        if aligned > at {
            let edge = ((aligned - at) as usize).min(bytes.len());
            self.write_edge(at, &bytes[..edge])?;
            at += edge as u64;
            bytes = bytes.slice(edge..);
            if bytes.is_empty() {
                return Ok(());
            }
        }
        self.pending_start = at;
        self.pending_len = 0;
        if can_borrow(&bytes) {
            return self.borrow(bytes);
        }
        self.current = Some(self.pool.take()?);
        self.copy_in(&bytes)
    }

    /// Adds `bytes` (aligned in memory, at the end of the open run, which is
    /// aligned) to the borrowed run; a partial last block ends the run and
    /// goes through the ordinary descriptor.
    fn borrow(&mut self, bytes: Bytes) -> io::Result<()> {
        let whole = bytes.len() - bytes.len() % ALIGN;
        let tail_at = self.pending_end() + whole as u64;
        let tail = bytes.slice(whole..);
        self.borrowed.push(bytes.slice(..whole));
        self.pending_len += whole;
        if !tail.is_empty() {
            self.flush()?;
            return self.write_edge(tail_at, &tail);
        }
        if self.pending_len >= BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    /// Copies `bytes` (at the end of the open, copied run) into the pool's
    /// buffers, queueing each one that fills up.
    fn copy_in(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let buffer = self.current.as_mut().expect("a run is open");
            let room = buffer.len() - self.pending_len;
            let take = room.min(bytes.len());
            buffer.as_mut_slice()[self.pending_len..self.pending_len + take]
                .copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len == buffer.len() {
                let full = self.current.take().expect("a run is open");
                let len = self.pending_len;
                self.pool.submit(full, self.pending_start, len, true)?;
                self.pending_start += len as u64;
                self.pending_len = 0;
                self.current = Some(self.pool.take()?);
            }
        }
        Ok(())
    }

    /// Queues the open run: its aligned part as a direct write, its last
    /// partial block (of a copied run) through the ordinary descriptor.
    fn flush(&mut self) -> io::Result<()> {
        if !self.borrowed.is_empty() {
            let pieces = std::mem::take(&mut self.borrowed);
            self.pending_len = 0;
            return self.pool.submit_pieces(pieces, self.pending_start, true);
        }
        let Some(buffer) = self.current.take() else {
            return Ok(());
        };
        let aligned = self.pending_len - self.pending_len % ALIGN;
        if aligned < self.pending_len {
            let tail = &buffer.as_slice()[aligned..self.pending_len];
            let at = self.pending_start + aligned as u64;
            if let Err(e) = self.write_edge(at, tail) {
                self.pool.give_back(buffer);
                return Err(e);
            }
        }
        if aligned > 0 {
            self.pool
                .submit(buffer, self.pending_start, aligned, true)?;
        } else {
            self.pool.give_back(buffer);
        }
        self.pending_len = 0;
        Ok(())
    }

    /// An unaligned piece (within one block), unless it is all zero.
    fn write_edge(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if is_zero(bytes) {
            return Ok(());
        }
        self.buffered.write_all_at(bytes, at)?;
        self.edge_written += bytes.len() as u64;
        Ok(())
    }

    /// Writes everything gathered and waits for it: the data is in the file
    /// (not yet durable: the caller syncs). Returns the non-zero bytes
    /// written in all.
    pub fn complete(&mut self) -> io::Result<u64> {
        self.flush()?;
        self.pool.drain()?;
        Ok(self.pool.written() + self.edge_written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed | 1)
            .collect()
    }

    #[test]
    fn unaligned_and_out_of_order_pieces_land_where_they_belong() {
        let (_dir, path, file) = crate::sink::test_file::empty_file("disk");
        let Some(mut direct) = DirectFile::open(&path, &file).unwrap() else {
            panic!("the test directory's file system refuses O_DIRECT");
        };
        let size = 3 * BUFFER + 12345;
        file.set_len(size as u64).unwrap();
        let data = pattern(size, 7);
        let mut expected = vec![0u8; size];
        // Pieces of odd sizes, out of order, contiguous within each half so
        // that runs cross buffer boundaries; a zero block in the middle.
        let half = size / 2 + 333;
        let mut pieces: Vec<(usize, usize)> = Vec::new();
        for (from, to) in [(half, size), (0, half)] {
            let mut at = from;
            while at < to {
                let len = (100_003).min(to - at);
                pieces.push((at, len));
                at += len;
            }
        }
        for (at, len) in pieces {
            let mut piece = data[at..at + len].to_vec();
            if at == 0 {
                piece[8192..12288].fill(0);
            }
            expected[at..at + len].copy_from_slice(&piece);
            direct.write(at as u64, &Bytes::from(piece)).unwrap();
        }
        let written = direct.complete().unwrap();
        assert_eq!(written, size as u64 - 4096, "the zero block is a hole");
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn aligned_pieces_are_written_in_place_and_others_copied_with_the_same_result() {
        let (_dir, path, file) = crate::sink::test_file::empty_file("disk");
        let Some(mut direct) = DirectFile::open(&path, &file).unwrap() else {
            panic!("the test directory's file system refuses O_DIRECT");
        };
        // One aligned buffer, as a stream chunk is: a slice of it at a
        // 4 KiB-aligned offset is aligned in memory too.
        let size = 3 * BUFFER + 7 * ALIGN;
        let mut memory = AlignedBuf::new(size, ALIGN);
        memory.as_mut_slice().copy_from_slice(&pattern(size, 3));
        // A 64 KiB zero area inside an aligned piece, and one zero block at
        // the start of a piece that begins mid-block.
        memory.as_mut_slice()[BUFFER..BUFFER + (64 << 10)].fill(0);
        memory.as_mut_slice()[2 * BUFFER + 5000..2 * BUFFER + 5000 + 2 * ALIGN].fill(0);
        let expected = memory.as_slice().to_vec();
        let whole = Bytes::from_owner(memory);
        file.set_len(size as u64).unwrap();
        // Piece lengths: whole blocks, odd lengths (a partial last block, so
        // the next piece starts mid-block), a piece longer than a buffer.
        let lengths = [
            64 << 10,
            3 * ALIGN + 17,
            5000 - 17,
            8192,
            BUFFER + ALIGN,
            100,
            ALIGN - 100,
        ];
        let mut pieces = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < size {
            let len = lengths[i % lengths.len()].min(size - at);
            pieces.push((at, len));
            at += len;
            i += 1;
        }
        // The second half first: writes land in any order.
        let (first, second) = pieces.split_at(pieces.len() / 2);
        for &(at, len) in second.iter().chain(first) {
            direct.write(at as u64, &whole.slice(at..at + len)).unwrap();
        }
        let written = direct.complete().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert!(
            written <= (size - (64 << 10)) as u64,
            "zero blocks are holes"
        );
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated <= (size - (64 << 10)) as u64,
            "allocated {allocated}"
        );
    }
}
