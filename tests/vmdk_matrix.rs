//! The VMDK matrix: images made by `testdata/make_vmdk_matrix.sh` with qemu-img /
//! qemu-io (monolithicSparse and streamOptimized, scattered writes in random order,
//! zero writes, zeroed grains, a 6 GiB disk with little data, odd and tiny sizes,
//! empty disks), plus layouts qemu-img cannot write, built here from those images
//! (`vmdk_writer`): other grain sizes, VMware's stream layout (tables after the
//! grains, footer at the end) and ESX COWD. Each is also wrapped in gzip, xz and
//! zstd. Every input must convert to exactly the bytes of `qemu-img convert -O raw`,
//! sparsely, to a file and onto real loop devices; `info --map` must equal
//! `qemu-img map --output=json`; `info --json` must report what qemu-img info does.
//! Hostile variants (one defect each) must be refused naming the defect, with no
//! panic and no target left behind. Descriptor files and descriptors that name
//! other files must be refused naming those files, which are never opened.
//!
//! The matrix is built once per run, into `$CARGO_TARGET_TMPDIR/vmdk_matrix`.

mod common;
mod vmdk_writer;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::loop_device::LoopDevice;
use common::*;
use serde_json::Value;
use vmdk_writer::{u32_at, u64_at, SECTOR};

/// One image: its name (NAME.vmdk in the matrix dir) and the sub-format.
struct Entry {
    name: String,
    subformat: String,
}

struct Matrix {
    dir: PathBuf,
    entries: Vec<Entry>,
}

const WRAPPERS: &[(&str, Option<&str>)] = &[
    ("", None),
    (".gz", Some("gzip")),
    (".xz", Some("xz")),
    (".zst", Some("zstd")),
];

static MATRIX: OnceLock<Matrix> = OnceLock::new();

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run a tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn matrix() -> &'static Matrix {
    MATRIX.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmdk_matrix");
        let _ = std::fs::remove_dir_all(&dir);
        let started = std::time::Instant::now();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/make_vmdk_matrix.sh");
        run_ok(Command::new("bash").arg(script).arg(&dir));
        let manifest = std::fs::read_to_string(dir.join("manifest.txt")).unwrap();
        let mut entries: Vec<Entry> = manifest
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (name, sub) = l.split_once(' ').expect("NAME SUBFORMAT");
                Entry {
                    name: name.into(),
                    subformat: sub.into(),
                }
            })
            .collect();
        entries.extend(build_derived(&dir, &entries));
        note(&format!(
            "vmdk_matrix: {} images built in {:.1} s",
            entries.len(),
            started.elapsed().as_secs_f64()
        ));
        Matrix { dir, entries }
    })
}

/// Builds the layouts qemu-img does not write, with their oracles, maps, info and
/// wrappers made exactly as the script makes them.
fn build_derived(dir: &Path, made: &[Entry]) -> Vec<Entry> {
    let mut built: Vec<(String, &str, Vec<u8>)> = Vec::new();
    for e in made.iter().filter(|e| e.subformat == "streamOptimized") {
        let qemu = std::fs::read(dir.join(format!("{}.vmdk", e.name))).unwrap();
        built.push((
            format!("{}_vmware", e.name),
            "streamOptimized",
            vmdk_writer::vmware_layout(&qemu),
        ));
    }
    let conv = std::fs::read(dir.join("conv_sparse.raw")).unwrap();
    let odd = std::fs::read(dir.join("odd_sparse.raw")).unwrap();
    for (grain, gtes) in [
        (8u64, 512u64),
        (16, 512),
        (256, 512),
        (2048, 512),
        (128, 64),
    ] {
        built.push((
            format!("grain{grain}_gt{gtes}_sparse"),
            "monolithicSparse",
            vmdk_writer::sparse_extent(&conv, grain, gtes, false),
        ));
        built.push((
            format!("grain{grain}_gt{gtes}_stream"),
            "streamOptimized",
            vmdk_writer::sparse_extent(&conv, grain, gtes, true),
        ));
    }
    built.push((
        "odd_grain8_stream".into(),
        "streamOptimized",
        vmdk_writer::sparse_extent(&odd, 8, 512, true),
    ));
    built.push(("cowd_g1".into(), "COWD", vmdk_writer::cowd(&odd, 1, None)));
    built.push(("cowd_g8".into(), "COWD", vmdk_writer::cowd(&conv, 8, None)));
    let mut entries = Vec::new();
    for (name, subformat, bytes) in built {
        let image = dir.join(format!("{name}.vmdk"));
        std::fs::write(&image, bytes).unwrap();
        let raw = dir.join(format!("{name}.raw"));
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(&image)
                .arg(&raw),
        );
        for (what, file) in [("map", "map.json"), ("info", "info.json")] {
            let out = Command::new("qemu-img")
                .args([what, "--output=json"])
                .arg(&image)
                .output()
                .unwrap();
            assert!(out.status.success(), "qemu-img {what} {name}");
            std::fs::write(dir.join(format!("{name}.{file}")), out.stdout).unwrap();
        }
        run_ok(Command::new("gzip").args(["-k", "-1", "-f"]).arg(&image));
        run_ok(
            Command::new("xz")
                .args(["-k", "-0", "-T1", "-f"])
                .arg(&image),
        );
        run_ok(
            Command::new("zstd")
                .args(["-q", "-k", "-1", "-f"])
                .arg(&image),
        );
        entries.push(Entry {
            name,
            subformat: subformat.into(),
        });
    }
    entries
}

/// Data ranges of a file (SEEK_DATA / SEEK_HOLE): the rest reads as zeroes. The
/// 6 GiB images are compared through these, not byte by byte over their holes.
fn data_ranges(file: &std::fs::File) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut ranges = Vec::new();
    let mut pos = 0i64;
    loop {
        // SAFETY: lseek on a file descriptor we own; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        assert!(hole > data, "SEEK_HOLE");
        ranges.push((data as u64, hole as u64));
        pos = hole;
    }
    ranges
}

/// `compare_files`, reading only the ranges where either file has data.
fn compare_sparse(actual: &Path, expected: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let (a, b) = (
        std::fs::File::open(actual).map_err(|e| e.to_string())?,
        std::fs::File::open(expected).map_err(|e| e.to_string())?,
    );
    let (alen, blen) = (a.metadata().unwrap().len(), b.metadata().unwrap().len());
    if alen != blen {
        return Err(format!("size {alen} but expected {blen}"));
    }
    let mut ranges = data_ranges(&a);
    ranges.extend(data_ranges(&b));
    ranges.sort_unstable();
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut done = 0u64;
    for (start, end) in ranges {
        let mut at = start.max(done);
        while at < end {
            let n = ((end - at) as usize).min(x.len());
            a.read_exact_at(&mut x[..n], at)
                .map_err(|e| e.to_string())?;
            b.read_exact_at(&mut y[..n], at)
                .map_err(|e| e.to_string())?;
            if x[..n] != y[..n] {
                let i = (0..n).find(|&i| x[i] != y[i]).unwrap();
                return Err(format!("first difference at byte {}", at + i as u64));
            }
            at += n as u64;
        }
        done = done.max(end);
    }
    Ok(())
}

/// Non-zero bytes of a file in 4 KiB blocks, reading only its data ranges.
fn nonzero_sparse(path: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut block = vec![0u8; 4096];
    let mut total = 0;
    for (start, end) in data_ranges(&f) {
        let mut at = start / 4096 * 4096;
        while at < end {
            let n = f.read_at(&mut block, at).unwrap();
            if block[..n].iter().any(|&b| b != 0) {
                total += 4096;
            }
            at += 4096;
        }
    }
    total
}

impl Matrix {
    fn image(&self, e: &Entry, wrapper: &str) -> PathBuf {
        self.dir.join(format!("{}.vmdk{wrapper}", e.name))
    }
    fn oracle(&self, e: &Entry) -> PathBuf {
        self.dir.join(format!("{}.raw", e.name))
    }
    fn json(&self, e: &Entry, what: &str) -> Value {
        let path = self.dir.join(format!("{}.{what}.json", e.name));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }
    fn entry(&self, name: &str) -> &Entry {
        self.entries.iter().find(|e| e.name == name).unwrap()
    }
}

#[test]
fn every_image_and_wrapper_converts_like_qemu_img() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut identical = 0;
    for e in &m.entries {
        let nonzero = nonzero_sparse(&m.oracle(e));
        for (wrapper, _) in WRAPPERS {
            let target = tmp.path().join("out.raw");
            let run = convert(&m.image(e, wrapper), &target, &[]);
            let result = if !run.ok() || run.panicked() {
                Err(run.describe())
            } else {
                compare_sparse(&target, &m.oracle(e)).and_then(|_| check_sparse(&target, nonzero))
            };
            match result {
                Ok(()) => identical += 1,
                Err(why) => failures.push(format!("{}.vmdk{wrapper}: {why}", e.name)),
            }
            let _ = std::fs::remove_file(&target);
        }
    }
    let count = |sub: &str| m.entries.iter().filter(|e| e.subformat == sub).count();
    note(&format!(
        "vmdk_matrix: {identical} of {} conversions identical to qemu-img convert -O raw and sparse \
         ({} monolithicSparse, {} streamOptimized, {} COWD images x {} wrappers)",
        m.entries.len() * WRAPPERS.len(),
        count("monolithicSparse"),
        count("streamOptimized"),
        count("COWD"),
        WRAPPERS.len()
    ));
    finish("vmdk conversions", failures);
}

#[test]
fn info_map_equals_qemu_img_map() {
    let m = matrix();
    let mut failures = Vec::new();
    let mut equal = 0;
    for e in &m.entries {
        let qemu = m.json(e, "map");
        for wrapper in ["", ".gz"] {
            let image = m.image(e, wrapper);
            let run = diskimport(&["info".as_ref(), image.as_os_str(), "--map".as_ref()]);
            let ours: Option<Value> = serde_json::from_slice(&run.stdout).ok();
            match ours {
                Some(ours) if run.ok() && ours == qemu => equal += 1,
                Some(ours) if run.ok() => failures.push(format!(
                    "{}.vmdk{wrapper}: map differs:\n    ours {ours}\n    qemu {qemu}",
                    e.name
                )),
                _ => failures.push(format!("{}.vmdk{wrapper}: {}", e.name, run.describe())),
            }
        }
    }
    note(&format!(
        "vmdk_matrix map: {equal} of {} maps equal to qemu-img map --output=json",
        m.entries.len() * 2
    ));
    finish("vmdk maps", failures);
}

#[test]
fn info_json_reports_what_qemu_img_info_does() {
    let m = matrix();
    let mut failures = Vec::new();
    let mut checked = 0;
    for e in &m.entries {
        let qemu = m.json(e, "info");
        for (wrapper, compression) in WRAPPERS {
            let image = m.image(e, wrapper);
            let run = diskimport(&["info".as_ref(), image.as_os_str(), "--json".as_ref()]);
            let Ok(info) = serde_json::from_slice::<Value>(&run.stdout) else {
                failures.push(format!("{}.vmdk{wrapper}: {}", e.name, run.describe()));
                continue;
            };
            let want_compression: Vec<&str> = compression.iter().copied().collect();
            let checks = [
                ("format", info["format"] == "vmdk"),
                ("subformat", info["subformat"] == e.subformat.as_str()),
                ("virtual_size", info["virtual_size"] == qemu["virtual-size"]),
                ("grain_size", info["grain_size"] == qemu["cluster-size"]),
                ("allocated_bytes", info["allocated_bytes"].is_u64()),
                (
                    "compression",
                    info["compression"] == serde_json::json!(want_compression),
                ),
                // Every layout streams: tables first, or grains placed by their markers.
                ("streaming.mode", info["streaming"]["mode"] == "streamed"),
                ("spilled_bytes", info["streaming"]["spilled_bytes"] == 0),
            ];
            let bad: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
            if bad.is_empty() {
                checked += 1;
            } else {
                failures.push(format!("{}.vmdk{wrapper}: wrong {bad:?} in {info}", e.name));
            }
        }
    }
    note(&format!(
        "vmdk_matrix info --json: {checked} inputs as expected"
    ));
    finish("vmdk info --json", failures);
}

fn onto_block_device(sector: u32) {
    let m = matrix();
    let Some(dev) = LoopDevice::new(48 << 20, sector) else {
        return;
    };
    let mut failures = Vec::new();
    let names = [
        "scattered",
        "scattered_stream",
        "scattered_stream_vmware",
        "odd_stream",
        "zeroed",
        "grain8_gt512_stream",
        "cowd_g1",
    ];
    for name in names {
        let e = m.entry(name);
        let run = convert(&m.image(e, ".zst"), &dev.device, &[]);
        let len = std::fs::metadata(m.oracle(e)).unwrap().len();
        if !run.ok() {
            failures.push(format!("{name}: {}", run.describe()));
        } else if let Err(why) = compare_prefix(&dev.device, &m.oracle(e), len) {
            failures.push(format!("{name} on {sector}-byte sectors: {why}"));
        }
    }
    note(&format!(
        "vmdk_matrix block device ({sector}-byte sectors): {} of {} images read back exactly",
        names.len() - failures.len(),
        names.len()
    ));
    finish("vmdk onto a block device", failures);
}

#[test]
fn converts_onto_a_512_byte_sector_loop_device() {
    onto_block_device(512);
}

#[test]
fn converts_onto_a_4096_byte_sector_loop_device() {
    onto_block_device(4096);
}

// ---------------------------------------------------------------------------------
// Hostile variants: one defect each.

fn set_u32(b: &mut [u8], at: u64, v: u32) {
    b[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_u64(b: &mut [u8], at: u64, v: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// Header facts of a `KDMV` image.
struct Facts {
    gd: u64,
    first_gt: u64,
    first_grain: u64,
    last_grain: u64,
}

fn facts(image: &[u8]) -> Facts {
    let gd = u64_at(image, 56) * SECTOR;
    let first_gt = u64::from(u32_at(image, gd as usize)) * SECTOR;
    let entries: Vec<u64> = (0..512)
        .map(|j| u64::from(u32_at(image, first_gt as usize + j * 4)) * SECTOR)
        .filter(|&s| s > SECTOR)
        .collect();
    Facts {
        gd,
        first_gt,
        first_grain: *entries.iter().min().unwrap(),
        last_grain: *entries.iter().max().unwrap(),
    }
}

type Mutation = fn(&mut Vec<u8>);

/// (base image, what is wrong, mutation, words the message must contain one of).
const HOSTILE: &[(&str, &str, Mutation, &[&str])] = &[
    (
        "conv_sparse",
        "grain size not a power of two",
        |b| set_u64(b, 20, 96),
        &["granularity"],
    ),
    (
        "conv_sparse",
        "grain size 4 GiB",
        |b| set_u64(b, 20, 1 << 23),
        &["granularity"],
    ),
    (
        "conv_sparse",
        "grain directory of 2^34 entries",
        |b| set_u64(b, 12, 1 << 50),
        &["L1 size too big"],
    ),
    (
        "conv_sparse",
        "grain directory of 120 MiB",
        |b| {
            // 1-sector grains, 1 entry per grain table: 30 Mi GD entries for 15 GiB.
            set_u64(b, 20, 1);
            set_u32(b, 44, 1);
            set_u64(b, 12, 30 << 20);
        },
        &["budget"],
    ),
    (
        "conv_sparse",
        "4096 entries per grain table",
        |b| set_u32(b, 44, 4096),
        &["grain table size"],
    ),
    (
        "conv_sparse",
        "version 4",
        |b| set_u32(b, 4, 4),
        &["version"],
    ),
    (
        "conv_sparse",
        "compression flag without algorithm",
        |b| set_u32(b, 8, 0x10003),
        &["compressAlgorithm"],
    ),
    (
        "conv_sparse",
        "newline bytes damaged",
        |b| b[75] = b'\n',
        &["newline"],
    ),
    (
        "conv_sparse",
        "capacity 2^60 sectors",
        |b| set_u64(b, 12, 1 << 60),
        &["capacity", "L1 size"],
    ),
    (
        "conv_sparse",
        "grain directory past the end",
        |b| set_u64(b, 56, 1 << 20),
        &["truncat"],
    ),
    (
        "conv_sparse",
        "grain directory inside the header",
        |b| set_u64(b, 56, 0),
        &["inside the header"],
    ),
    (
        "conv_sparse",
        "overHead past the end",
        |b| set_u64(b, 64, 1 << 24),
        &["truncat", "overHead"],
    ),
    (
        "conv_sparse",
        "grain table past the end",
        |b| {
            let f = facts(b);
            set_u32(b, f.gd, 1 << 24);
        },
        &["truncat"],
    ),
    (
        "conv_sparse",
        "grain table on the header",
        |b| {
            let f = facts(b);
            set_u32(b, f.gd, 1);
        },
        &["invalid grain table", "descriptor"],
    ),
    (
        "scattered",
        "grain table overlapping another",
        |b| {
            let f = facts(b);
            set_u32(b, f.gd + 4, (f.first_gt / SECTOR + 1) as u32);
        },
        &["overlap"],
    ),
    (
        "conv_sparse",
        "grain entry into the grain directory",
        |b| {
            let f = facts(b);
            set_u32(b, f.first_gt, (f.gd / SECTOR) as u32);
        },
        &["metadata"],
    ),
    (
        "scattered",
        "grain entry on its own grain table",
        |b| {
            let f = facts(b);
            let gt = u64::from(u32_at(b, f.gd as usize + 4)) * SECTOR;
            set_u32(b, f.first_gt + 4, 0);
            set_u32(b, f.first_gt, (gt / SECTOR) as u32);
        },
        &["metadata", "grain table"],
    ),
    (
        "conv_sparse",
        "grain past the end",
        |b| {
            let f = facts(b);
            let past = (b.len() as u64 / SECTOR + 1000) as u32;
            set_u32(b, f.first_gt, past);
        },
        &["truncat"],
    ),
    (
        "conv_sparse",
        "grain entry 1 without the zeroed-grain flag",
        |b| {
            let f = facts(b);
            set_u32(b, f.first_gt, 1);
        },
        &["zeroed grain"],
    ),
    (
        "conv_sparse",
        "truncated inside the data",
        |b| {
            let f = facts(b);
            b.truncate((f.last_grain + 1000) as usize);
        },
        &["truncat"],
    ),
    (
        "conv_sparse",
        "truncated inside the tables",
        |b| {
            let f = facts(b);
            b.truncate((f.first_gt + 100) as usize);
        },
        &["truncat"],
    ),
    (
        "conv_sparse",
        "embedded descriptor names a parent",
        |b| {
            replace_text(b, b"parentCID=ffffffff", b"parentCID=12345678");
        },
        &["parent"],
    ),
    (
        "conv_sparse",
        "embedded descriptor names a flat extent",
        |b| {
            replace_text(
                b,
                b"SPARSE \"conv_sparse.vmdk\"",
                b"FLAT \"/etc/hostname\" 0\n",
            );
        },
        &["/etc/hostname"],
    ),
    (
        "conv_sparse",
        "capacity 0 and an embedded extent list",
        |b| {
            set_u64(b, 12, 0);
        },
        &["conv_sparse.vmdk"],
    ),
    (
        "conv_stream",
        "grain marker with a size past a grain",
        |b| {
            let f = facts(b);
            set_u32(b, f.first_grain + 8, 70000);
        },
        &["compressed bytes"],
    ),
    (
        "conv_stream",
        "grain marker LBA of another grain",
        |b| {
            let f = facts(b);
            let lba = u64_at(b, f.first_grain as usize);
            set_u64(b, f.first_grain, lba + 128 * 4);
        },
        &["grain table maps"],
    ),
    (
        "conv_stream",
        "grain marker LBA inside a grain",
        |b| {
            let f = facts(b);
            let lba = u64_at(b, f.first_grain as usize);
            set_u64(b, f.first_grain, lba + 1);
        },
        &["start of a grain"],
    ),
    (
        "conv_stream",
        "grain marker LBA past the disk",
        |b| {
            let f = facts(b);
            set_u64(b, f.first_grain, 1 << 40);
        },
        &["end of the disk"],
    ),
    (
        "conv_stream",
        "corrupt deflate data",
        |b| {
            let f = facts(b);
            for i in 14..40 {
                b[(f.first_grain + i) as usize] ^= 0x5a;
            }
        },
        &["zlib", "compressed grain"],
    ),
    (
        "conv_stream",
        "grain table entry missing for a grain",
        |b| {
            let f = facts(b);
            set_u32(b, f.first_gt, 0);
        },
        &["in no grain table"],
    ),
    (
        "conv_stream",
        "not a marker where one must be",
        |b| {
            let f = facts(b);
            set_u32(b, f.first_grain + 8, 0);
            set_u32(b, f.first_grain + 12, 9);
        },
        &["marker"],
    ),
    (
        "conv_stream",
        "truncated inside a grain",
        |b| {
            let f = facts(b);
            b.truncate((f.last_grain + 100) as usize);
        },
        &["truncat"],
    ),
    (
        "conv_stream",
        "truncated at a grain boundary",
        |b| {
            let f = facts(b);
            b.truncate(f.last_grain as usize);
        },
        &["truncat"],
    ),
    (
        "conv_stream",
        "grain table past overHead",
        |b| {
            let f = facts(b);
            set_u32(b, f.gd, (f.first_grain / SECTOR) as u32);
        },
        &["overHead"],
    ),
    (
        "scattered_stream_vmware",
        "footer cut off",
        |b| {
            b.truncate(b.len() - 1536);
        },
        &["footer"],
    ),
    (
        "scattered_stream_vmware",
        "footer names another grain directory",
        |b| {
            let at = b.len() as u64 - 1024 + 56;
            let gd = u64_at(b, at as usize);
            set_u64(b, at, gd + 1);
        },
        &["footer"],
    ),
    (
        "scattered_stream_vmware",
        "end-of-stream marker replaced",
        |b| {
            let at = b.len() as u64 - 512 + 12;
            set_u32(b, at, 7);
        },
        &["marker type 7"],
    ),
    (
        "scattered_stream_vmware",
        "grain table disagrees with a marker",
        |b| {
            let gd = u64_at(b, b.len() - 1024 + 56) * SECTOR;
            let gt = u64::from(u32_at(b, gd as usize)) * SECTOR;
            let (j, sector) = (0..512)
                .map(|j| (j, u32_at(b, gt as usize + j * 4)))
                .find(|&(_, s)| s != 0)
                .unwrap();
            set_u32(b, gt + j as u64 * 4, 0);
            set_u32(b, gt + ((j as u64 + 1) % 512) * 4, sector);
        },
        &["grain table maps", "in no grain table"],
    ),
    (
        "cowd_g8",
        "COWD without CID",
        |b| {
            replace_text(b, b"CID=12345678", b"XXX=12345678");
        },
        &["CID"],
    ),
    (
        "cowd_g8",
        "COWD with a parent",
        |b| {
            replace_text(b, b"parentCID=ffffffff\n", b"parentFileNameHint=\"/p\"\n");
        },
        &["parent"],
    ),
];

/// Overwrites the first `from` with `to` (which may run on over the bytes after it).
fn replace_text(b: &mut [u8], from: &[u8], to: &[u8]) {
    let at = b
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in the image", String::from_utf8_lossy(from)));
    b[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn hostile_variants_are_refused_naming_the_defect() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (base, what, mutate, words) in HOSTILE {
        let mut bytes = std::fs::read(m.image(m.entry(base), "")).unwrap();
        mutate(&mut bytes);
        let image = tmp.path().join("hostile.vmdk");
        std::fs::write(&image, &bytes).unwrap();
        let target = tmp.path().join("out.raw");
        let run = convert(&image, &target, &[]);
        if let Err(why) = check_refusal(&run, &target, words) {
            failures.push(format!("{base}, {what}: {why}"));
        }
        let _ = std::fs::remove_file(&target);
    }
    note(&format!(
        "vmdk_matrix hostile: {} of {} one-defect variants refused naming the defect",
        HOSTILE.len() - failures.len(),
        HOSTILE.len()
    ));
    finish("vmdk hostile variants", failures);
}

/// Descriptor files (the disk is in other files) are refused naming those files; a
/// descriptor whose extent is a host file is refused without reading it (the file
/// is made unreadable by its name only: it does not exist).
#[test]
fn descriptor_files_are_refused_naming_their_extents() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut cases: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for sub in [
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        let image = tmp.path().join(format!("{sub}.vmdk"));
        let run = qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            image.to_str().unwrap(),
            "3G",
        ]);
        assert!(run.ok(), "{}", run.describe());
        let text = std::fs::read_to_string(&image).unwrap();
        let extents: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("RW "))
            .map(|l| l.split('"').nth(1).unwrap().to_string())
            .collect();
        assert!(!extents.is_empty(), "{sub}: no extent lines");
        cases.push((image, extents));
    }
    let host_path = tmp.path().join("never-opened");
    let evil = tmp.path().join("evil.vmdk");
    std::fs::write(
        &evil,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"{}\" 0\n",
            host_path.display()
        ),
    )
    .unwrap();
    cases.push((evil, vec![host_path.display().to_string()]));
    let bare = tmp.path().join("qemu-probe.vmdk");
    std::fs::write(&bare, "version=1\nRW 8 VMFS \"other.vmdk\"\n").unwrap();
    cases.push((bare, vec!["other.vmdk".into()]));
    for (image, extents) in &cases {
        let target = tmp.path().join("out.raw");
        let run = convert(image, &target, &[]);
        let words: Vec<&str> = extents.iter().map(String::as_str).collect();
        if let Err(why) = check_refusal(&run, &target, &words) {
            failures.push(format!("{}: {why}", image.display()));
        }
        let _ = std::fs::remove_file(&target);
        let missing: Vec<&&str> = words.iter().filter(|w| !run.stderr.contains(**w)).collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{}: extents not named: {missing:?}",
                image.display()
            ));
        }
    }
    assert!(!host_path.exists());
    note(&format!(
        "vmdk_matrix descriptors: {} of {} descriptor files refused naming every extent",
        cases.len() - failures.len().min(cases.len()),
        cases.len()
    ));
    finish("vmdk descriptor files", failures);
}
