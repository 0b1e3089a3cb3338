//! The sparse file target: a regular file of exactly the virtual size, written
//! with positional writes, zero blocks left as holes.
//!
//! Data goes around the page cache with O_DIRECT where the file system allows
//! it ([`DirectFile`], like `qemu-img convert -t none`, CDI's cache mode);
//! elsewhere, or when asked ([`SparseFileSink::with_direct_io`]), through the
//! page cache, with write-back started every [`WRITEBACK_EVERY`] bytes.
//!
//! The image is written to a temporary file beside the target and renamed over
//! it only after everything was written, the file was brought to its final
//! size (grown, preallocated) and synced, so an existing target is replaced
//! whole or not at all, and a failed import leaves nothing behind.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Name prefix of the temporary file a disk is written to before the rename.
pub const TEMP_PREFIX: &str = ".diskimport-";
/// Name suffix of that temporary file.
pub const TEMP_SUFFIX: &str = ".partial";

use super::direct_file::DirectFile;
use super::zero_detect::for_each_nonzero_run;
use super::{ExtentSink, SinkError, SinkSummary};
use crate::extent::{Extent, ExtentKind};

/// A sparse regular file, built beside its final path.
pub struct SparseFileSink {
    target: PathBuf,
    temp: Option<NamedTempFile>,
    size: Option<u64>,
    /// Highest guest byte written (for streams whose size comes at the end).
    high_water: u64,
    /// Direct writes, when the file system takes them.
    direct: Option<DirectFile>,
    /// Data bytes handed to `direct` (zero blocks in them included).
    direct_bytes: u64,
    /// Bytes written through the page cache since write-back last started.
    unflushed: u64,
    /// Where those bytes begin and end (write-back is started for that range).
    unflushed_range: Option<(u64, u64)>,
    /// Largest size the target may have (the space a volume offers).
    capacity: Option<u64>,
    /// Keep the page cache bounded: wait for each writeback and drop the
    /// written pages (CDI's `CACHE_MODE=TRYNONE`, set after an OOM kill).
    bounded_cache: bool,
    /// Permission bits of the finished file.
    mode: u32,
    /// Size to grow the finished file to (never shrunk below the image).
    grow_to: Option<u64>,
    /// Allocate every block of the finished file.
    preallocate: bool,
    summary: SinkSummary,
}

/// The directory holding `target` (`.` for a bare file name): where the
/// temporary file goes, and what is synced after the rename.
fn directory_of(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Start writeback to the device after this many written bytes, so that the
/// final sync finds little left to do and disk I/O overlaps the conversion.
const WRITEBACK_EVERY: u64 = 32 << 20;

impl SparseFileSink {
    /// Prepares to write `target`. Nothing at `target` changes until
    /// [`finish`](ExtentSink::finish) succeeds.
    pub fn create(target: &Path) -> Result<Self, SinkError> {
        if let Ok(meta) = std::fs::metadata(target) {
            if !meta.is_file() {
                return Err(io_error(
                    "refusing to replace",
                    target,
                    std::io::Error::other("the target exists and is not a regular file"),
                ));
            }
        }
        let dir = directory_of(target);
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(dir)
            .map_err(|e| io_error("creating a temporary file in", dir, e))?;
        let direct = DirectFile::open(temp.path(), temp.as_file())
            .map_err(|e| io_error("opening for direct I/O", target, e))?;
        if direct.is_none() {
            tracing::debug!(target = %target.display(), "the file system refuses O_DIRECT: writing through the page cache");
        }
        Ok(SparseFileSink {
            target: target.to_path_buf(),
            temp: Some(temp),
            size: None,
            high_water: 0,
            direct,
            direct_bytes: 0,
            unflushed: 0,
            unflushed_range: None,
            capacity: None,
            bounded_cache: false,
            mode: 0o644,
            grow_to: None,
            preallocate: false,
            summary: SinkSummary::default(),
        })
    }

    /// Refuses images larger than `capacity` bytes, before anything is written.
    pub fn with_capacity_limit(mut self, capacity: u64) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Permission bits of the finished file (default 0644; CDI uses 0660).
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Keeps the page cache this import uses bounded (see `bounded_cache`).
    pub fn with_bounded_cache(mut self, bounded: bool) -> Self {
        self.bounded_cache = bounded;
        self
    }

    /// Grows the finished file to `size` when the image is smaller (CDI's
    /// resize to the volume's usable size), before it is published.
    pub fn with_final_size(mut self, size: Option<u64>) -> Self {
        self.grow_to = size;
        self
    }

    /// Allocates every block of the finished file (`posix_fallocate`) before
    /// it is published: a volume too small fails here, not later.
    pub fn with_preallocation(mut self, preallocate: bool) -> Self {
        self.preallocate = preallocate;
        self
    }

    /// Writes through the page cache instead of O_DIRECT when `direct` is
    /// false (O_DIRECT is the default, used where the file system allows it).
    pub fn with_direct_io(mut self, direct: bool) -> Self {
        if !direct {
            self.direct = None;
        }
        self
    }

    /// Whether the data goes around the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn file(&self) -> &File {
        self.temp.as_ref().expect("used before finish").as_file()
    }
}

impl ExtentSink for SparseFileSink {
    fn set_size(&mut self, size: u64) -> Result<(), SinkError> {
        if let Some(available) = self.capacity.filter(|c| size > *c) {
            return Err(SinkError::TargetTooSmall {
                needed: size,
                available,
            });
        }
        if size < self.high_water {
            return Err(SinkError::OutOfRange {
                offset: 0,
                len: self.high_water,
                size,
            });
        }
        self.file()
            .set_len(size)
            .map_err(|e| io_error("sizing", &self.target, e))?;
        self.size = Some(size);
        self.summary.size = size;
        Ok(())
    }

    fn write(&mut self, extent: Extent) -> Result<(), SinkError> {
        let out_of_range = SinkError::OutOfRange {
            offset: extent.guest_offset,
            len: extent.len(),
            size: self.size.unwrap_or(u64::MAX),
        };
        let end = extent
            .guest_offset
            .checked_add(extent.len())
            .ok_or(out_of_range)?;
        match (self.size, self.capacity) {
            (Some(size), _) if end > size => {
                return Err(SinkError::OutOfRange {
                    offset: extent.guest_offset,
                    len: extent.len(),
                    size,
                })
            }
            // A stream of unknown length outgrew the volume.
            (None, Some(available)) if end > available => {
                return Err(SinkError::TargetTooSmall {
                    needed: end,
                    available,
                })
            }
            _ => {}
        }
        self.high_water = self.high_water.max(end);
        match extent.kind {
            // The file is new and sparse: zeroes cost nothing.
            ExtentKind::Zero(n) => self.summary.bytes_zero += n,
            ExtentKind::Data(bytes) => {
                let base = extent.guest_offset;
                if let Some(direct) = self.direct.as_mut() {
                    direct
                        .write(base, &bytes)
                        .map_err(|e| io_error("writing", &self.target, e))?;
                    self.direct_bytes += bytes.len() as u64;
                    return Ok(());
                }
                let file = self.file();
                let mut written = 0u64;
                let mut range: Option<(u64, u64)> = None;
                for_each_nonzero_run(&bytes, base, |start, len| {
                    written += len as u64;
                    let at = base + start as u64;
                    let (from, to) = range.get_or_insert((at, at + len as u64));
                    (*from, *to) = ((*from).min(at), (*to).max(at + len as u64));
                    file.write_all_at(&bytes[start..start + len], at)
                })
                .map_err(|e| io_error("writing", &self.target, e))?;
                self.summary.bytes_written += written;
                self.summary.bytes_zero += bytes.len() as u64 - written;
                self.unflushed += written;
                if let Some((from, to)) = range {
                    let (f, t) = self.unflushed_range.get_or_insert((from, to));
                    (*f, *t) = ((*f).min(from), (*t).max(to));
                }
                if self.unflushed >= WRITEBACK_EVERY {
                    self.unflushed = 0;
                    let (from, to) = self.unflushed_range.take().unwrap_or((0, 0));
                    start_writeback(self.file(), from, to - from);
                    if self.bounded_cache {
                        drop_written_pages(self.file(), from, to - from);
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<SinkSummary, SinkError> {
        if let Some(direct) = self.direct.as_mut() {
            let written = direct
                .complete()
                .map_err(|e| io_error("writing", &self.target, e))?;
            self.summary.bytes_written += written;
            self.summary.bytes_zero += self.direct_bytes - written;
            self.direct_bytes = 0;
        }
        if self.size.is_none() {
            self.set_size(self.high_water)?;
        }
        let image_size = self.summary.size;
        let final_size = self.grow_to.map_or(image_size, |g| g.max(image_size));
        let file = self.file();
        if final_size > image_size {
            file.set_len(final_size)
                .map_err(|e| io_error("growing", &self.target, e))?;
        }
        if self.preallocate && final_size > 0 {
            nix::fcntl::posix_fallocate(file, 0, final_size as i64)
                .map_err(|e| io_error("preallocating", &self.target, e.into()))?;
        }
        // The temporary file was made 0600; the disk gets its real mode.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| io_error("setting the permissions of", &self.target, e))?;
        file.sync_all()
            .map_err(|e| io_error("syncing", &self.target, e))?;
        let temp = self.temp.take().expect("finish called once");
        temp.persist(&self.target)
            .map_err(|e| io_error("renaming the finished file to", &self.target, e.error))?;
        // The rename is durable once the directory is; if that fails, the
        // disk is not published after all.
        if let Err(e) = File::open(directory_of(&self.target)).and_then(|d| d.sync_all()) {
            let _ = std::fs::remove_file(&self.target);
            return Err(io_error("syncing the directory of", &self.target, e));
        }
        Ok(self.summary)
    }
}

/// Asks the kernel to start writing the dirty pages of `len` bytes of
/// `file` from `offset`, without waiting (only that range: a whole-file
/// request walks every cached page of the file each time). Only a hint: the
/// final `sync_all` is what makes the data durable.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a valid, open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Waits for the written pages of `file` to reach the device and drops them
/// from the page cache, so that dirty and cached pages of the import stay
/// within about [`WRITEBACK_EVERY`] bytes. Only a hint, like `start_writeback`.
fn drop_written_pages(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain syscall on a valid, open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags);
    }
    let _ = nix::fcntl::posix_fadvise(
        file,
        offset as i64,
        len as i64,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

fn io_error(what: &'static str, path: &Path, source: std::io::Error) -> SinkError {
    SinkError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pattern(len: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
                .collect::<Vec<u8>>(),
        )
    }

    #[test]
    fn a_bounded_cache_import_writes_the_same_bytes_past_several_writeback_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.img");
        let mut sink = SparseFileSink::create(&target)
            .unwrap()
            .with_direct_io(false)
            .with_bounded_cache(true);
        assert!(!sink.is_direct());
        let piece = 4 << 20;
        let pieces = (WRITEBACK_EVERY as usize * 2 + piece) / piece;
        sink.set_size((pieces * piece) as u64).unwrap();
        for i in 0..pieces {
            let at = (i * piece) as u64;
            sink.write(Extent::data(at, pattern(piece, i as u8)))
                .unwrap();
        }
        let summary = sink.finish().unwrap();
        assert_eq!(summary.bytes_written, (pieces * piece) as u64);
        let written = std::fs::read(&target).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "not the temporary file's 0600");
        for i in 0..pieces {
            assert_eq!(
                &written[i * piece..(i + 1) * piece],
                &pattern(piece, i as u8)[..],
                "piece {i}"
            );
        }
    }

    #[test]
    fn the_disk_is_grown_never_shrunk_and_published_only_at_its_final_size() {
        let dir = tempfile::tempdir().unwrap();
        for (image, grow_to, expected) in [(8192, Some(1 << 20), 1 << 20), (8192, Some(4096), 8192)]
        {
            let target = dir.path().join(format!("disk-{expected}.img"));
            let mut sink = SparseFileSink::create(&target)
                .unwrap()
                .with_final_size(grow_to)
                .with_preallocation(true);
            sink.set_size(image).unwrap();
            sink.write(Extent::data(0, pattern(4096, 1))).unwrap();
            assert!(!target.exists(), "published before finish");
            sink.finish().unwrap();
            let meta = std::fs::metadata(&target).unwrap();
            assert_eq!(meta.len(), expected);
            use std::os::unix::fs::MetadataExt;
            assert!(meta.blocks() * 512 >= expected, "preallocated");
        }
    }

    #[test]
    fn a_failed_preallocation_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.img");
        let mut sink = SparseFileSink::create(&target)
            .unwrap()
            .with_final_size(Some(1 << 60))
            .with_preallocation(true);
        sink.set_size(4096).unwrap();
        assert!(sink.finish().is_err(), "no file system holds 1 EiB");
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_image_larger_than_the_capacity_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.img");
        let mut sink = SparseFileSink::create(&target)
            .unwrap()
            .with_capacity_limit(1 << 20);
        let err = sink.set_size(2 << 20).unwrap_err();
        assert!(
            err.to_string()
                .contains("is larger than the reported available"),
            "{err}"
        );
        drop(sink);
        assert!(!target.exists());
    }

    /// A directory on the build's disk (the system temporary directory may be
    /// a tmpfs, which takes O_DIRECT only on recent kernels).
    fn disk_dir() -> tempfile::TempDir {
        tempfile::tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("target")).unwrap()
    }

    /// Writes `pieces` (guest offset, bytes) through a sink and returns the
    /// summary; the target must then hold exactly `expected`.
    fn write_through(mut sink: SparseFileSink, size: u64, pieces: &[(u64, Bytes)]) -> SinkSummary {
        sink.set_size(size).unwrap();
        for (at, bytes) in pieces {
            sink.write(Extent::data(*at, bytes.clone())).unwrap();
        }
        sink.finish().unwrap()
    }

    /// Out-of-order, unaligned extents with zero blocks and zero extents:
    /// the same bytes and the same holes with O_DIRECT as through the cache.
    #[test]
    fn direct_and_buffered_writes_give_the_same_sparse_file() {
        let dir = disk_dir();
        let size: u64 = 9 << 20;
        let mut expected = vec![0u8; size as usize];
        let mut pieces = Vec::new();
        // 3 MiB + 100 bytes of data at an odd offset, guest [6 MiB, 7 MiB) of
        // it zero.
        let mut a = pattern((3 << 20) + 100, 1).to_vec();
        a[(1 << 20) - 333..(2 << 20) - 333].fill(0);
        pieces.push(((5 << 20) + 333, Bytes::from(a)));
        // Small pieces below, in reverse order, one of them within a block.
        for (i, at) in [3u64 << 20, (2 << 20) + 4096, 4097].into_iter().enumerate() {
            pieces.push((at, pattern(70_000, i as u8 + 2)));
        }
        pieces.push((size - 10, pattern(10, 9)));
        for (at, bytes) in &pieces {
            expected[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
        }
        let mut allocated = Vec::new();
        for direct in [true, false] {
            let target = dir.path().join(format!("disk-{direct}.img"));
            let sink = SparseFileSink::create(&target)
                .unwrap()
                .with_direct_io(direct);
            assert_eq!(
                sink.is_direct(),
                direct,
                "O_DIRECT refused on the build's disk"
            );
            let summary = write_through(sink, size, &pieces);
            let data: u64 = pieces.iter().map(|(_, b)| b.len() as u64).sum();
            assert_eq!(summary.bytes_written, data - (1 << 20), "direct: {direct}");
            assert_eq!(summary.bytes_written + summary.bytes_zero, data);
            assert_eq!(
                std::fs::read(&target).unwrap(),
                expected,
                "direct: {direct}"
            );
            use std::os::unix::fs::MetadataExt;
            allocated.push(std::fs::metadata(&target).unwrap().blocks() * 512);
        }
        assert_eq!(allocated[0], allocated[1], "the same holes either way");
        assert!(
            allocated[0] < 4 << 20,
            "zero blocks are holes: {allocated:?}"
        );
    }

    /// ramfs refuses O_DIRECT (tmpfs takes it since Linux 6.6): the sink
    /// falls back to the page cache and writes the same bytes.
    #[test]
    fn a_file_system_refusing_o_direct_gets_buffered_writes() {
        let mount = disk_dir();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(mount.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let why = "cannot mount a ramfs (needs root): O_DIRECT fallback not tested";
            eprintln!("SKIPPED: {why}");
            assert!(std::env::var_os("CI").is_none(), "{why}");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(mount.path());
        let target = mount.path().join("disk.img");
        let sink = SparseFileSink::create(&target).unwrap();
        assert!(!sink.is_direct(), "ramfs took O_DIRECT");
        let data = pattern(3 << 20, 4);
        let summary = write_through(sink, 4 << 20, &[(4096, data.clone())]);
        assert_eq!(summary.bytes_written, data.len() as u64);
        let written = std::fs::read(&target).unwrap();
        assert_eq!(written.len(), 4 << 20);
        assert_eq!(&written[4096..4096 + data.len()], &data[..]);
        assert!(written[..4096].iter().all(|b| *b == 0));
    }
}
