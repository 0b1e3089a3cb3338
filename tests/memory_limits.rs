//! Hostile streams inside a real memory cgroup limited to 600M, as CDI's
//! importer pod is: each is refused with a message naming the limit, and none
//! is OOM-killed (the cgroup's own OOM-kill counter stays 0). A real 2 GiB
//! conversion runs in the same limit and its peak memory is printed.
//!
//! The cgroup is made and removed by the test: cgroup v1
//! (`/sys/fs/cgroup/memory/NAME`, `memory.limit_in_bytes`) where the memory
//! controller is mounted so, else v2 (`/sys/fs/cgroup/NAME`, `memory.max`).
//! Needs root; without it (or without either hierarchy) the tests are skipped
//! visibly, and fail under CI.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{qemu_img, require_root, run_cmd, skip, Run, BIN, TIMEOUT};

/// CDI's default importer memory limit.
const LIMIT: u64 = 600_000_000;

/// A memory cgroup this test made; removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    v1: bool,
}

impl MemoryCgroup {
    fn new(name: &str) -> Option<MemoryCgroup> {
        if !require_root("making a memory cgroup") {
            return None;
        }
        let unique = format!("diskimport-test-{name}-{}", std::process::id());
        let v1_root = Path::new("/sys/fs/cgroup/memory");
        let v2_root = Path::new("/sys/fs/cgroup");
        let (dir, v1, limit_file) = if v1_root.join("memory.limit_in_bytes").is_file() {
            (v1_root.join(&unique), true, "memory.limit_in_bytes")
        } else if fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
        {
            (v2_root.join(&unique), false, "memory.max")
        } else {
            skip("no cgroup v1 memory controller and no cgroup v2 with memory");
            return None;
        };
        if let Err(e) = fs::create_dir(&dir) {
            skip(&format!("cannot make {}: {e}", dir.display()));
            return None;
        }
        let cgroup = MemoryCgroup { dir, v1 };
        fs::write(cgroup.dir.join(limit_file), LIMIT.to_string()).unwrap();
        if !v1 {
            // No swapping around the limit either.
            let _ = fs::write(cgroup.dir.join("memory.swap.max"), "0");
        }
        Some(cgroup)
    }

    /// `diskimport ARGS` run inside the cgroup (the shell joins it, then execs).
    fn run(&self, args: &[&str]) -> Run {
        let procs = self.dir.join("cgroup.procs");
        let mut argv: Vec<String> = vec![
            "-c".into(),
            format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display()),
            BIN.into(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        run_cmd("sh", &argv, None, TIMEOUT * 3)
    }

    /// OOM kills inside this cgroup so far.
    fn oom_kills(&self) -> u64 {
        let file = if self.v1 {
            "memory.oom_control"
        } else {
            "memory.events"
        };
        fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Peak memory charged to the cgroup (page cache included).
    fn peak(&self) -> u64 {
        let file = if self.v1 {
            "memory.max_usage_in_bytes"
        } else {
            "memory.peak"
        };
        fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The run was refused in time with a message naming `words`, not killed.
fn assert_refused(cgroup: &MemoryCgroup, run: &Run, target: &Path, words: &[&str]) {
    assert!(!run.timed_out(), "{}", run.describe());
    let code = run.status.and_then(|s| s.code());
    assert_eq!(code, Some(1), "refused with exit 1: {}", run.describe());
    assert_eq!(cgroup.oom_kills(), 0, "OOM-killed: {}", run.describe());
    for word in words {
        assert!(run.stderr.contains(word), "{word:?}: {}", run.describe());
    }
    assert!(!target.exists(), "no target after a refusal");
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        skip(&format!("{tool} is not installed"));
    }
    found
}

#[test]
fn a_zstd_stream_with_a_2_gib_window_is_refused_naming_the_limit() {
    if !have("zstd") {
        return;
    }
    let Some(cgroup) = MemoryCgroup::new("zstd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.raw.zst");
    // Streamed (size unknown), so the frame asks for the full 2^31 window.
    let mut zstd = Command::new("zstd")
        .args(["-q", "-1", "--long=31", "-c"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&bomb).unwrap())
        .spawn()
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut stdin = zstd.stdin.take().unwrap();
    for _ in 0..64 {
        stdin.write_all(&zeros).unwrap();
    }
    drop(stdin);
    assert!(zstd.wait().unwrap().success());
    let target = dir.path().join("out.raw");
    let run = cgroup.run(&[
        "convert",
        "--quiet",
        bomb.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert_refused(
        &cgroup,
        &run,
        &target,
        &[
            "zstd stream needs more than the 128 MiB window limit",
            "memory limit",
        ],
    );
}

/// An xz stream whose block header asks for a 1.5 GiB LZMA2 dictionary (the
/// largest `xz` writes, accepted by the old fixed 2 GiB limit): a small
/// stream re-labelled (dictionary-size byte and header CRC32 rewritten), since
/// an encoder with that dictionary would need far more memory than a test has.
fn xz_with_huge_dictionary() -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
    e.write_all(&vec![7u8; 100_000]).unwrap();
    let mut xz = e.finish().unwrap();
    // Stream header: 12 bytes. Block header: size byte, flags, optional
    // sizes, then the filter flags of the single LZMA2 filter (id 0x21,
    // properties size 1, the dictionary-size byte), padding, CRC32.
    let start = 12;
    let header_len = (xz[start] as usize + 1) * 4;
    let flags = xz[start + 1];
    assert_eq!(flags & 0x03, 0, "one filter");
    let mut at = start + 2;
    let skip_varint = |at: &mut usize, bytes: &[u8]| {
        while bytes[*at] & 0x80 != 0 {
            *at += 1;
        }
        *at += 1;
    };
    if flags & 0x40 != 0 {
        skip_varint(&mut at, &xz);
    }
    if flags & 0x80 != 0 {
        skip_varint(&mut at, &xz);
    }
    assert_eq!(&xz[at..at + 2], &[0x21, 0x01], "LZMA2 filter flags");
    xz[at + 2] = 37; // 3 * 2^29 bytes = 1.5 GiB
    let crc_at = start + header_len - 4;
    let mut crc = flate2::Crc::new();
    crc.update(&xz[start..crc_at]);
    xz[crc_at..crc_at + 4].copy_from_slice(&crc.sum().to_le_bytes());
    xz
}

#[test]
fn an_xz_stream_demanding_a_1_5_gib_dictionary_is_refused_naming_the_limit() {
    let Some(cgroup) = MemoryCgroup::new("xz") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("huge-dict.raw.xz");
    fs::write(&source, xz_with_huge_dictionary()).unwrap();
    let target = dir.path().join("out.raw");
    let run = cgroup.run(&[
        "convert",
        "--quiet",
        source.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert_refused(
        &cgroup,
        &run,
        &target,
        &[
            "xz stream needs more than the 286 MiB memory limit",
            "memory limit",
        ],
    );
}

#[test]
fn a_qcow2_with_a_huge_l1_table_is_refused_or_read_within_the_limit() {
    let Some(cgroup) = MemoryCgroup::new("qcow2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The largest L1 qemu-img makes: 2 PiB virtual, 4 Mi entries (32 MiB).
    let largest = dir.path().join("largest-l1.qcow2");
    let run = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        largest.to_str().unwrap(),
        "2P",
    ]);
    assert!(run.ok(), "{}", run.describe());
    let info = cgroup.run(&["info", "--json", largest.to_str().unwrap()]);
    assert!(info.ok(), "{}", info.describe());
    assert!(info
        .stdout_str()
        .contains("\"virtual_size\": 2251799813685248"));
    assert_eq!(cgroup.oom_kills(), 0);
    // The same header claiming an L1 table of 2^31 entries (16 GiB) for a
    // virtual size of 2^60 bytes: refused from the header, before any table.
    let mut bytes = fs::read(&largest).unwrap();
    bytes[24..32].copy_from_slice(&(1u64 << 60).to_be_bytes());
    bytes[36..40].copy_from_slice(&(1u32 << 31).to_be_bytes());
    let hostile = dir.path().join("huge-l1.qcow2");
    fs::write(&hostile, &bytes).unwrap();
    let target = dir.path().join("out.raw");
    let run = cgroup.run(&[
        "convert",
        "--quiet",
        hostile.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert_refused(&cgroup, &run, &target, &["L1 entries (limit 4194304)"]);
}

#[test]
fn a_2_gib_conversion_fits_in_600m_and_reports_its_peak() {
    let Some(cgroup) = MemoryCgroup::new("peak") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 2 GiB virtual, 256 MiB of data spread over it.
    let raw = dir.path().join("source.raw");
    let file = fs::File::create(&raw).unwrap();
    file.set_len(2 << 30).unwrap();
    let chunk: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    use std::os::unix::fs::FileExt;
    for i in 0..16u64 {
        file.write_all_at(&chunk, i * (128 << 20)).unwrap();
    }
    drop(file);
    let qcow2 = dir.path().join("big.qcow2");
    let run = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    fs::remove_file(&raw).unwrap();
    let target = dir.path().join("out.raw");
    let run = cgroup.run(&[
        "convert",
        "--quiet",
        qcow2.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    assert_eq!(cgroup.oom_kills(), 0);
    assert_eq!(fs::metadata(&target).unwrap().len(), 2 << 30);
    common::note(&format!(
        "2 GiB qcow2 conversion in a {} MB memory cgroup: peak {} MiB (page cache included)",
        LIMIT / 1_000_000,
        cgroup.peak() >> 20
    ));
}
