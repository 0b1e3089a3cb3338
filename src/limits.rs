//! Memory limits of the decoders and format readers, in one table, derived
//! from the memory the process may use.
//!
//! An importer pod runs in a memory cgroup (CDI's default limit is 600M); a
//! decoder that allocates what a stream header asks for (a 2 GiB zstd window,
//! a 1.5 GiB xz dictionary) gets the pod OOM-killed instead of failing with a
//! message. So the limits are fractions of the *basis*: the cgroup's memory
//! limit (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`, the smallest
//! along the cgroup's ancestors), else the machine's physical memory, else
//! [`DEFAULT_BASIS`]. [`current`] computes them once per process.
//!
//! | what | limit | at a 600M basis |
//! |---|---|---|
//! | xz dictionary and decoder state (hard, [`MemoryLimits::xz_memlimit`]) | basis / 2, within 64 MiB ..= 2 GiB | 300 MiB |
//! | xz block-parallel decoder (soft: fewer threads above it, one at the end) | xz limit / 2, at most [`XZ_THREADING_MAX`] (24 MiB) | 24 MiB |
//! | zstd window ([`MemoryLimits::zstd_window_log_max`]) | largest power of two <= basis / 4, within 2^20 ..= 2^31 | 128 MiB (2^27) |
//! | registry layer decoders | the same xz limit and zstd window | |
//! | qcow2 L1 table | fixed: 4 Mi entries (32 MiB) (`format::qcow2::header::MAX_L1_ENTRIES`) | 32 MiB |
//! | qcow2 bytes held before their table | fixed: `--memory-budget`, default 64 MiB, then spilled | 64 MiB |
//! | hold-back of the target's first and last MiB (`sink::hold_back`) | fixed: 2 MiB | 2 MiB |
//!
//! A stream that needs more fails with a message naming the limit and where
//! it comes from (e.g. "zstd stream needs a window larger than the 128 MiB
//! limit (a quarter of the 600 MiB cgroup v1 memory limit)").

use std::path::Path;
use std::sync::OnceLock;

/// Most memory the block-parallel xz decoder may use; where two threads do
/// not fit, a stream is decoded on one. Each thread holds its dictionary,
/// and all share bounded input and output queues
/// (`decode::xz_parallel::per_thread`): about 10.5 MiB per thread for
/// `xz -3 -T0`'s 4 MiB dictionary, so two fit; `-6`'s 8 MiB dictionary
/// needs 14.5, so its streams are decoded on one thread. 24 MiB keeps the
/// importer's peak RSS under 64 MiB with the pipeline's own buffers
/// (liblzma's own threaded decoder holds each block's whole input and
/// output, over 20 MiB per thread for `-3 -T0`'s 12 MiB blocks).
pub const XZ_THREADING_MAX: u64 = 24 << 20;

/// The basis when neither a cgroup limit nor the physical memory is known.
pub const DEFAULT_BASIS: u64 = 2 << 30;

/// cgroup v1 reports "no limit" as a huge number (`PAGE_COUNTER_MAX` pages);
/// anything at or above this is taken as unlimited.
const UNLIMITED_V1: u64 = 1 << 60;

/// Where the basis came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasisOrigin {
    /// cgroup v2 `memory.max`.
    CgroupV2,
    /// cgroup v1 `memory.limit_in_bytes`.
    CgroupV1,
    /// No cgroup limit: the machine's physical memory.
    PhysicalMemory,
    /// Nothing known: [`DEFAULT_BASIS`].
    Default,
}

impl std::fmt::Display for BasisOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BasisOrigin::CgroupV2 => "cgroup v2 memory limit",
            BasisOrigin::CgroupV1 => "cgroup v1 memory limit",
            BasisOrigin::PhysicalMemory => "physical memory",
            BasisOrigin::Default => "default memory basis",
        })
    }
}

/// The limits, and what they were derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Bytes the limits are fractions of.
    pub basis: u64,
    /// Where `basis` came from.
    pub origin: BasisOrigin,
    /// Above this much memory xz decoding fails.
    pub xz_memlimit: u64,
    /// Above this much memory the threaded xz decoder uses fewer threads.
    pub xz_memlimit_threading: u64,
    /// Largest zstd window accepted, as a power of two.
    pub zstd_window_log_max: u32,
}

impl MemoryLimits {
    /// The table for a given basis.
    pub fn from_basis(basis: u64, origin: BasisOrigin) -> Self {
        let xz_memlimit = (basis / 2).clamp(64 << 20, 2 << 30);
        let quarter = (basis / 4).max(1);
        let zstd_window_log_max = (63 - quarter.leading_zeros()).clamp(20, 31);
        MemoryLimits {
            basis,
            origin,
            xz_memlimit,
            xz_memlimit_threading: (xz_memlimit / 2).min(XZ_THREADING_MAX),
            zstd_window_log_max,
        }
    }

    /// Words for messages: "the 600 MiB cgroup v1 memory limit".
    pub fn basis_text(&self) -> String {
        format!("{} MiB {}", self.basis >> 20, self.origin)
    }
}

/// The limits of this process, computed on first use.
pub fn current() -> &'static MemoryLimits {
    static LIMITS: OnceLock<MemoryLimits> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| cgroup_limit(&text, Path::new("/sys/fs/cgroup")));
        let (basis, origin) = match cgroup {
            Some(found) => found,
            None => match physical_memory() {
                Some(bytes) => (bytes, BasisOrigin::PhysicalMemory),
                None => (DEFAULT_BASIS, BasisOrigin::Default),
            },
        };
        let limits = MemoryLimits::from_basis(basis, origin);
        tracing::debug!(?limits, "memory limits");
        limits
    })
}

/// The memory limit of the cgroup described by `proc_self_cgroup` (the text
/// of `/proc/self/cgroup`), with the cgroup file systems mounted under
/// `mount_root`: the smallest limit along the cgroup's path up to the root.
/// cgroup v1's memory controller wins when present (hybrid machines mount
/// v2 too, without controllers).
pub fn cgroup_limit(proc_self_cgroup: &str, mount_root: &Path) -> Option<(u64, BasisOrigin)> {
    let mut v1_path = None;
    let mut v2_path = None;
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            v1_path = Some(path);
        } else if controllers.is_empty() {
            v2_path = Some(path);
        }
    }
    if let Some(path) = v1_path {
        let limit = smallest_along(&mount_root.join("memory"), path, "memory.limit_in_bytes")
            .filter(|&l| l < UNLIMITED_V1);
        return limit.map(|l| (l, BasisOrigin::CgroupV1));
    }
    let path = v2_path?;
    smallest_along(mount_root, path, "memory.max").map(|l| (l, BasisOrigin::CgroupV2))
}

/// The smallest numeric value of `file` in `root/path` and its ancestors up
/// to `root` (a value such as "max" counts as no limit; missing directories,
/// as inside a container that sees only its own subtree, are skipped).
fn smallest_along(root: &Path, path: &str, file: &str) -> Option<u64> {
    let mut smallest: Option<u64> = None;
    let mut dir = Path::new(path.trim_start_matches('/'));
    loop {
        let value = std::fs::read_to_string(root.join(dir).join(file))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok());
        if let Some(v) = value {
            smallest = Some(smallest.map_or(v, |s| s.min(v)));
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => break,
        }
    }
    smallest
}

/// Physical memory of the machine.
fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value; no memory is passed.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    u64::try_from(pages)
        .ok()?
        .checked_mul(u64::try_from(page).ok()?)
        .filter(|&bytes| bytes > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, dir: &str, file: &str, text: &str) {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(file), text).unwrap();
    }

    #[test]
    fn cdi_default_limit_gives_bounded_decoders() {
        let limits = MemoryLimits::from_basis(600_000_000, BasisOrigin::CgroupV1);
        assert_eq!(limits.zstd_window_log_max, 27);
        assert_eq!(limits.xz_memlimit, 300_000_000);
        assert!(limits.xz_memlimit_threading <= limits.xz_memlimit);
        assert_eq!(limits.xz_memlimit_threading, XZ_THREADING_MAX);
        let big = MemoryLimits::from_basis(64 << 30, BasisOrigin::PhysicalMemory);
        assert_eq!(big.zstd_window_log_max, 31);
        assert_eq!(big.xz_memlimit, 2 << 30);
        let tiny = MemoryLimits::from_basis(16 << 20, BasisOrigin::CgroupV2);
        assert_eq!(tiny.zstd_window_log_max, 22);
        assert_eq!(tiny.xz_memlimit, 64 << 20);
        assert_eq!(tiny.xz_memlimit_threading, 24 << 20);
    }

    #[test]
    fn v1_limit_is_the_smallest_along_the_path() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            "memory",
            "memory.limit_in_bytes",
            "9223372036854771712",
        );
        write(
            root.path(),
            "memory/pods",
            "memory.limit_in_bytes",
            "1073741824",
        );
        write(
            root.path(),
            "memory/pods/p1",
            "memory.limit_in_bytes",
            "629145600",
        );
        let text = "12:pids:/pods/p1\n5:cpu,memory:/pods/p1\n0::/pods/p1\n";
        assert_eq!(
            cgroup_limit(text, root.path()),
            Some((629145600, BasisOrigin::CgroupV1))
        );
        // An unlimited cgroup (the v1 "no limit" value) has no limit.
        let text = "5:memory:/\n";
        assert_eq!(cgroup_limit(text, root.path()), None);
    }

    #[test]
    fn v2_limit_reads_memory_max_and_ignores_max() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "", "memory.max", "max");
        write(root.path(), "kubepods", "memory.max", "max");
        write(root.path(), "kubepods/pod", "memory.max", "600000000\n");
        assert_eq!(
            cgroup_limit("0::/kubepods/pod\n", root.path()),
            Some((600000000, BasisOrigin::CgroupV2))
        );
        assert_eq!(cgroup_limit("0::/kubepods\n", root.path()), None);
        // Inside a container only the root of its own subtree is mounted.
        let inner = tempfile::tempdir().unwrap();
        write(inner.path(), "", "memory.max", "314572800");
        assert_eq!(
            cgroup_limit("0::/kubepods/pod/not-mounted-here\n", inner.path()),
            Some((314572800, BasisOrigin::CgroupV2))
        );
    }

    #[test]
    fn this_process_has_limits() {
        let limits = current();
        assert!(limits.basis > 0);
        assert!((20..=31).contains(&limits.zstd_window_log_max));
    }
}
