//! The VHDX matrix: images made by `testdata/make_vhdx_matrix.sh` with qemu-img /
//! qemu-io (every block size 1-256 MiB, fixed and dynamic, scattered writes, zero
//! runs, blocks out of guest order, NOT_PRESENT and ZERO states, a 4 MiB log, an
//! image larger than 4 GiB, an odd size, an empty image), each also wrapped in gzip,
//! xz and zstd. Every input must convert to exactly the bytes of `qemu-img convert
//! -O raw`, sparsely.
//!
//! Also here:
//! - 4096-byte logical sector twins: qemu cannot open them, so each is made from a
//!   512-byte-sector image (the metadata patched, the BAT re-laid for the other chunk
//!   ratio) and must convert to the 512-byte image's qemu-img output;
//! - `info --map`: qemu has no block status for VHDX and maps the whole disk as one
//!   data range, so the map is checked against the image instead (every data range
//!   holds the oracle's bytes at its host offset; every other range reads as zeroes
//!   in the oracle), and its total length against qemu's;
//! - `info --json` fields; convert onto real loop devices (512 and 4096 sectors);
//! - hostile variants made here, one defect each: refused naming the defect, no
//!   panic, no target left, within the time limit (or, where qemu-img converts the
//!   variant, identical to its output).
//!
//! The matrix is built once per run of this binary into
//! `$CARGO_TARGET_TMPDIR/vhdx_matrix`; set `DISKIMPORT_VHDX_MATRIX_DIR` to reuse one.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use common::loop_device::LoopDevice;
use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const WRAPPERS: &[&str] = &["", ".gz", ".xz", ".zst"];

struct Entry {
    name: String,
    tags: Vec<String>,
}

impl Entry {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

struct Matrix {
    dir: PathBuf,
    entries: Vec<Entry>,
}

impl Matrix {
    fn image(&self, name: &str, wrapper: &str) -> PathBuf {
        self.dir.join(format!("{name}.vhdx{wrapper}"))
    }
    fn oracle(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.raw"))
    }
}

static MATRIX: OnceLock<Matrix> = OnceLock::new();

fn matrix() -> &'static Matrix {
    MATRIX.get_or_init(|| {
        let dir = generated_matrix(
            "DISKIMPORT_VHDX_MATRIX_DIR",
            "vhdx_matrix",
            "make_vhdx_matrix.sh",
        );
        let manifest = std::fs::read_to_string(dir.join("manifest.txt"))
            .unwrap_or_else(|e| panic!("{}/manifest.txt: {e}", dir.display()));
        let entries = manifest
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 2, "bad manifest line {l:?}");
                Entry {
                    name: f[0].into(),
                    tags: if f[1] == "-" {
                        vec![]
                    } else {
                        f[1].split(',').map(String::from).collect()
                    },
                }
            })
            .collect();
        Matrix { dir, entries }
    })
}

/// A successful conversion identical to `oracle`, and sparse.
fn check_output(run: &Run, target: &Path, oracle: &Path) -> Result<(), String> {
    if !run.ok() {
        return Err(run.describe());
    }
    if run.panicked() {
        return Err(format!("exit 0 but a panic message: {}", run.describe()));
    }
    compare_files(target, oracle)?;
    check_sparse(target, nonzero(oracle))
}

/// Non-zero bytes (4 KiB blocks) of an oracle, computed once per file.
fn nonzero(oracle: &Path) -> u64 {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, u64>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(n) = cache.lock().unwrap().get(oracle) {
        return *n;
    }
    let n = nonzero_4k_bytes(oracle);
    cache.lock().unwrap().insert(oracle.to_path_buf(), n);
    n
}

#[test]
fn every_image_plain_and_wrapped_converts_like_qemu_img() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut identical = 0;
    for e in &m.entries {
        for wrapper in WRAPPERS {
            let target = tmp.path().join(format!("{}{wrapper}.out", e.name));
            let run = convert(&m.image(&e.name, wrapper), &target, &[]);
            match check_output(&run, &target, &m.oracle(&e.name)) {
                Ok(()) => identical += 1,
                Err(why) => failures.push(format!("{}.vhdx{wrapper}: {why}", e.name)),
            }
            let _ = std::fs::remove_file(&target);
        }
    }
    note(&format!(
        "vhdx_matrix: {identical} of {} conversions ({} images x {} wrappers) identical to \
         qemu-img convert -O raw",
        m.entries.len() * WRAPPERS.len(),
        m.entries.len(),
        WRAPPERS.len()
    ));
    finish("vhdx matrix", failures);
}

#[test]
fn stdin_source() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let cases = [("dyn_reverse_order", ".xz"), ("fixed_from_raw", "")];
    for (name, wrapper) in cases {
        let target = tmp.path().join(format!("{name}.out"));
        let run = convert_stdin(&m.image(name, wrapper), &target, &[]);
        if let Err(why) = check_output(&run, &target, &m.oracle(name)) {
            failures.push(format!("stdin {name}{wrapper}: {why}"));
        }
    }
    note(&format!(
        "vhdx_matrix stdin: {} of {} identical",
        cases.len() - failures.len(),
        cases.len()
    ));
    finish("vhdx from stdin", failures);
}

fn info_json(path: &Path, extra: &[&str]) -> Result<Value, String> {
    let mut args = vec!["info".to_string(), path.to_string_lossy().into_owned()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = diskimport(&args);
    if !run.ok() {
        return Err(run.describe());
    }
    serde_json::from_slice(&run.stdout).map_err(|e| format!("not JSON ({e}): {}", run.stdout_str()))
}

fn qemu_info(path: &Path) -> Value {
    let run = qemu_img(&["info", "--output=json", path.to_str().unwrap()]);
    assert!(run.ok(), "{}", run.describe());
    serde_json::from_slice(&run.stdout).unwrap()
}

#[test]
fn info_json_fields() {
    let m = matrix();
    let mut failures = Vec::new();
    for e in &m.entries {
        let path = m.image(&e.name, "");
        let ours = match info_json(&path, &["--json"]) {
            Ok(v) => v,
            Err(why) => {
                failures.push(format!("{}: {why}", e.name));
                continue;
            }
        };
        let qemu = qemu_info(&path);
        let subformat = if e.has("fixed") { "fixed" } else { "dynamic" };
        let checks = [
            ("format", ours["format"] == "vhdx"),
            ("subformat", ours["subformat"] == subformat),
            ("virtual_size", ours["virtual_size"] == qemu["virtual-size"]),
            ("block_size", ours["block_size"] == qemu["cluster-size"]),
            ("sector_size", ours["sector_size"] == 512),
            ("streaming", ours["streaming"]["mode"] == "streamed"),
            (
                "allocated_bytes",
                ours["allocated_bytes"]
                    .as_u64()
                    .is_some_and(|a| a >= nonzero(&m.oracle(&e.name))),
            ),
        ];
        for (field, ok) in checks {
            if !ok {
                failures.push(format!(
                    "{}: field {field} wrong: ours {ours}, qemu-img info {qemu}",
                    e.name
                ));
            }
        }
    }
    note(&format!(
        "vhdx_matrix info: {} images, {} field mismatches",
        m.entries.len(),
        failures.len()
    ));
    finish("vhdx info --json", failures);
}

fn read_at(file: &mut File, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut buf).unwrap();
    buf
}

/// Checks a map against the image and the oracle; returns how many ranges.
fn check_map(map: &Value, image: &Path, oracle: &Path, size: u64) -> Result<usize, String> {
    let entries = map.as_array().ok_or("map is not an array")?;
    let mut img = File::open(image).unwrap();
    let mut raw = File::open(oracle).unwrap();
    let mut at = 0;
    for e in entries {
        let start = e["start"].as_u64().ok_or("no start")?;
        let length = e["length"].as_u64().ok_or("no length")?;
        if start != at {
            return Err(format!("gap or overlap at {at:#x}: next entry {e}"));
        }
        at += length;
        // Bounded reads: long zero ranges of the 4160 MiB image are sampled.
        let mut pos = start;
        while pos < start + length {
            let n = (start + length - pos).min(MIB) as usize;
            let expected = read_at(&mut raw, pos, n);
            if e["data"] == true {
                let host = e["offset"].as_u64().ok_or("data without offset")? + (pos - start);
                if read_at(&mut img, host, n) != expected {
                    return Err(format!(
                        "{e}: host bytes at {host:#x} differ from the oracle"
                    ));
                }
            } else if expected.iter().any(|&b| b != 0) {
                return Err(format!("{e}: the oracle has data at {pos:#x}"));
            }
            pos += if length > 64 * MIB {
                16 * MIB
            } else {
                n as u64
            };
        }
    }
    if at != size {
        return Err(format!("map covers {at} bytes, the disk has {size}"));
    }
    Ok(entries.len())
}

#[test]
fn map_matches_image_and_oracle() {
    let m = matrix();
    let mut failures = Vec::new();
    let mut checked = 0;
    for e in &m.entries {
        let qemu: Value = serde_json::from_slice(
            &std::fs::read(m.dir.join(format!("{}.map.json", e.name))).unwrap(),
        )
        .unwrap();
        let size: u64 = qemu
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["length"].as_u64().unwrap())
            .sum();
        for wrapper in ["", ".zst"] {
            let image = m.image(&e.name, wrapper);
            let what = format!("{}.vhdx{wrapper}", e.name);
            match info_json(&image, &["--map"]) {
                Err(why) => failures.push(format!("{what}: {why}")),
                Ok(map) => match check_map(&map, &m.image(&e.name, ""), &m.oracle(&e.name), size) {
                    Ok(_) => checked += 1,
                    Err(why) => failures.push(format!("{what}: {why}")),
                },
            }
        }
    }
    note(&format!(
        "vhdx_matrix map: {checked} maps consistent with the image and qemu-img's output \
         (qemu-img map has no VHDX block status: one data range per disk)"
    ));
    finish("vhdx info --map", failures);
}

// ---- structure helpers for the 4K twins and the hostile variants ----

/// A GUID's on-disk bytes from its text form.
fn guid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    out[4..6].copy_from_slice(&[b[5], b[4]]);
    out[6..8].copy_from_slice(&[b[7], b[6]]);
    out[8..].copy_from_slice(&b[8..]);
    out
}

const BAT_GUID: &str = "2DC27766-F623-4200-9D64-115E9BFD4A08";
const METADATA_GUID: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
const FILE_PARAMETERS: &str = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
const VIRTUAL_DISK_SIZE: &str = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
const LOGICAL_SECTOR: &str = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";
const PHYSICAL_SECTOR: &str = "CDA348C7-445D-4471-9CC9-E9885251C556";

const HEADER_1: usize = 64 << 10;
const HEADER_2: usize = 128 << 10;
const REGION_TABLE: usize = 192 << 10;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Rewrites the CRC-32C at offset 4 of the `len` bytes at `at`.
fn fix_crc(b: &mut [u8], at: usize, len: usize) {
    set_u32(b, at + 4, 0);
    let crc = crc32c::crc32c(&b[at..at + len]);
    set_u32(b, at + 4, crc);
}

/// Where the structures of a (valid) image are.
struct Layout {
    /// The current header's offset.
    header: usize,
    bat: usize,
    bat_entry: usize,
    metadata: usize,
    metadata_entry: usize,
    /// Item GUID -> (absolute offset of its value, index of its table entry).
    items: HashMap<[u8; 16], (usize, usize)>,
    block_size: u64,
    virtual_size: u64,
    log_offset: usize,
}

impl Layout {
    fn of(b: &[u8]) -> Layout {
        let seq = |at: usize| u64_at(b, at + 8);
        let header = if seq(HEADER_1) >= seq(HEADER_2) {
            HEADER_1
        } else {
            HEADER_2
        };
        let count = u32_at(b, REGION_TABLE + 8) as usize;
        let mut bat = (0, 0);
        let mut md = (0, 0);
        for i in 0..count {
            let e = REGION_TABLE + 16 + 32 * i;
            let off = u64_at(b, e + 16) as usize;
            if b[e..e + 16] == guid(BAT_GUID) {
                bat = (off, e);
            } else if b[e..e + 16] == guid(METADATA_GUID) {
                md = (off, e);
            }
        }
        let mut items = HashMap::new();
        for i in 0..u16::from_le_bytes([b[md.0 + 10], b[md.0 + 11]]) as usize {
            let e = md.0 + 32 + 32 * i;
            let g: [u8; 16] = b[e..e + 16].try_into().unwrap();
            items.insert(g, (md.0 + u32_at(b, e + 16) as usize, i));
        }
        let fp = items[&guid(FILE_PARAMETERS)].0;
        let vs = items[&guid(VIRTUAL_DISK_SIZE)].0;
        Layout {
            header,
            bat: bat.0,
            bat_entry: bat.1,
            metadata: md.0,
            metadata_entry: md.1,
            block_size: u32_at(b, fp) as u64,
            virtual_size: u64_at(b, vs),
            log_offset: u64_at(b, header + 72) as usize,
            items,
        }
    }
    fn item(&self, g: &str) -> usize {
        self.items[&guid(g)].0
    }
    fn item_entry(&self, g: &str) -> usize {
        self.metadata + 32 + 32 * self.items[&guid(g)].1
    }
    fn chunk_ratio(&self, sector: u64) -> u64 {
        (1 << 23) * sector / self.block_size
    }
    /// (BAT index, entry) of every FULLY_PRESENT payload block.
    fn present(&self, b: &[u8]) -> Vec<(usize, u64)> {
        let ratio = self.chunk_ratio(512);
        let blocks = self.virtual_size.div_ceil(self.block_size);
        (0..blocks)
            .map(|blk| (blk + blk / ratio) as usize)
            .map(|i| (i, u64_at(b, self.bat + 8 * i)))
            .filter(|(_, e)| e & 7 == 6)
            .collect()
    }
}

/// The same disk with 4096-byte logical (and physical) sectors: the BAT re-laid for
/// the larger chunk ratio, the sector size items patched.
fn to_4k_sectors(src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    let l = Layout::of(&b);
    assert_eq!(l.virtual_size % 4096, 0);
    let (old, new) = (l.chunk_ratio(512), l.chunk_ratio(4096));
    let blocks = l.virtual_size.div_ceil(l.block_size);
    let entries: Vec<u64> = (0..blocks)
        .map(|blk| u64_at(src, l.bat + 8 * (blk + blk / old) as usize))
        .collect();
    let old_len = (blocks + blocks.saturating_sub(1) / old) as usize * 8;
    b[l.bat..l.bat + old_len].fill(0);
    for (blk, e) in entries.into_iter().enumerate() {
        let blk = blk as u64;
        set_u64(&mut b, l.bat + 8 * (blk + blk / new) as usize, e);
    }
    set_u32(&mut b, l.item(LOGICAL_SECTOR), 4096);
    set_u32(&mut b, l.item(PHYSICAL_SECTOR), 4096);
    b
}

#[test]
fn four_k_sector_twins_convert_like_their_512_byte_twins() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut identical = 0;
    let mut total = 0;
    let mut qemu_opened = 0;
    for e in m.entries.iter().filter(|e| e.has("k4")) {
        let twin = tmp.path().join(format!("{}_4k.vhdx", e.name));
        std::fs::write(
            &twin,
            to_4k_sectors(&std::fs::read(m.image(&e.name, "")).unwrap()),
        )
        .unwrap();
        let status = Command::new("zstd")
            .args(["-q", "-k", "-f"])
            .arg(&twin)
            .status()
            .unwrap();
        assert!(status.success());
        if qemu_img(&["info", twin.to_str().unwrap()]).ok() {
            qemu_opened += 1;
        }
        for wrapper in ["", ".zst"] {
            total += 1;
            let input = PathBuf::from(format!("{}{wrapper}", twin.display()));
            let target = tmp.path().join(format!("{}_4k{wrapper}.out", e.name));
            let run = convert(&input, &target, &[]);
            match check_output(&run, &target, &m.oracle(&e.name)) {
                Ok(()) => identical += 1,
                Err(why) => failures.push(format!("{}_4k.vhdx{wrapper}: {why}", e.name)),
            }
            let _ = std::fs::remove_file(&target);
        }
        match info_json(&twin, &["--json"]) {
            Ok(v) if v["sector_size"] == 4096 && v["physical_sector_size"] == 4096 => {}
            Ok(v) => failures.push(format!("{}_4k: info says {v}", e.name)),
            Err(why) => failures.push(format!("{}_4k info: {why}", e.name)),
        }
    }
    note(&format!(
        "vhdx_matrix 4K sectors: {identical} of {total} conversions identical to the \
         512-byte twin's qemu-img output (qemu-img opened {qemu_opened} of the 4K twins)"
    ));
    finish("vhdx 4096-byte sectors", failures);
}

// ---- block devices ----

fn onto_block_device(sector: u32) {
    let Some(dev) = LoopDevice::new(32 * MIB, sector) else {
        return;
    };
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut done = 0;
    for name in ["dyn_1m", "dyn_reverse_order", "fixed_from_raw", "odd_size"] {
        let mut inputs = vec![(m.image(name, ""), name.to_string())];
        if name != "odd_size" {
            let twin = tmp.path().join(format!("{name}_4k.vhdx"));
            std::fs::write(
                &twin,
                to_4k_sectors(&std::fs::read(m.image(name, "")).unwrap()),
            )
            .unwrap();
            inputs.push((twin, format!("{name}_4k")));
        }
        for (input, what) in inputs {
            let run = convert(&input, &dev.device, &[]);
            let oracle = m.oracle(name);
            let len = std::fs::metadata(&oracle).unwrap().len();
            let result = if run.ok() {
                compare_prefix(&dev.device, &oracle, len)
            } else {
                Err(run.describe())
            };
            match result {
                Ok(()) => done += 1,
                Err(why) => failures.push(format!("{what} onto {sector}-byte sectors: {why}")),
            }
        }
    }
    note(&format!(
        "vhdx_matrix block device ({sector}-byte sectors): {done} images read back exactly"
    ));
    finish("vhdx onto a block device", failures);
}

#[test]
fn onto_a_512_byte_sector_device() {
    onto_block_device(512);
}

#[test]
fn onto_a_4096_byte_sector_device() {
    onto_block_device(4096);
}

// ---- hostile variants ----

/// What a variant must do.
enum Expect {
    /// Refused, the message naming one of these words.
    Refuse(&'static [&'static str]),
    /// Converted identically to qemu-img's conversion of the variant.
    LikeQemu,
}

type Defect = fn(&mut Vec<u8>, &Layout);

/// Sets the current header's log fields and fixes its CRC.
fn set_header(b: &mut [u8], l: &Layout, f: impl Fn(&mut [u8])) {
    f(&mut b[l.header..l.header + 4096]);
    fix_crc(b, l.header, 4096);
}

fn first_present(b: &[u8], l: &Layout) -> (usize, u64) {
    l.present(b)[0]
}

fn set_bat(b: &mut [u8], l: &Layout, index: usize, entry: u64) {
    set_u64(b, l.bat + 8 * index, entry);
}

fn variants() -> Vec<(&'static str, &'static str, Defect, Expect)> {
    use Expect::*;
    vec![
        (
            "both_headers_corrupt",
            "dyn_1m",
            |b, _| {
                b[HEADER_1 + 200] ^= 1;
                b[HEADER_2 + 200] ^= 1;
            },
            Refuse(&["no valid vhdx header"]),
        ),
        (
            "current_header_corrupt",
            "dyn_1m",
            |b, l| b[l.header + 200] ^= 1,
            LikeQemu,
        ),
        (
            "header_version_2",
            "dyn_1m",
            |b, _| {
                for h in [HEADER_1, HEADER_2] {
                    set_u16(b, h + 66, 2);
                    fix_crc(b, h, 4096);
                }
            },
            Refuse(&["version other than 1"]),
        ),
        (
            "log_version_1",
            "dyn_1m",
            |b, l| set_header(b, l, |h| set_u16(h, 64, 1)),
            Refuse(&["log version"]),
        ),
        (
            "log_offset_unaligned",
            "dyn_1m",
            |b, l| set_header(b, l, |h| set_u64(h, 72, 3 * MIB / 2)),
            Refuse(&["log at offset"]),
        ),
        (
            "log_active_entry",
            "dyn_1m",
            |b, l| {
                let g = [0x5a; 16];
                set_header(b, l, |h| h[48..64].copy_from_slice(&g));
                let at = l.log_offset;
                let e = &mut b[at..at + 4096];
                e.fill(0);
                e[..4].copy_from_slice(b"loge");
                set_u32(e, 8, 4096);
                set_u64(e, 16, 3);
                e[32..48].copy_from_slice(&g);
                fix_crc(b, at, 4096);
            },
            Refuse(&["replay"]),
        ),
        (
            "log_guid_stale",
            "dyn_1m",
            |b, l| set_header(b, l, |h| h[48..64].fill(0x77)),
            LikeQemu,
        ),
        (
            "region_table_corrupt",
            "dyn_1m",
            |b, _| b[REGION_TABLE + 100] ^= 1,
            Refuse(&["region table"]),
        ),
        (
            "region_table_2_corrupt",
            "dyn_1m",
            |b, _| b[REGION_TABLE + (64 << 10) + 100] ^= 1,
            LikeQemu,
        ),
        (
            "region_count_5000",
            "dyn_1m",
            |b, _| {
                set_u32(b, REGION_TABLE + 8, 5000);
                fix_crc(b, REGION_TABLE, 64 << 10);
            },
            Refuse(&["2047"]),
        ),
        (
            "regions_overlap",
            "dyn_1m",
            |b, l| {
                let md = u64_at(b, l.metadata_entry + 16);
                set_u64(b, l.bat_entry + 16, md);
                fix_crc(b, REGION_TABLE, 64 << 10);
            },
            Refuse(&["overlaps"]),
        ),
        (
            "region_on_log",
            "dyn_1m",
            |b, l| {
                set_u64(b, l.bat_entry + 16, l.log_offset as u64);
                fix_crc(b, REGION_TABLE, 64 << 10);
            },
            Refuse(&["overlaps log"]),
        ),
        (
            "region_unknown_required",
            "dyn_1m",
            |b, _| {
                let n = u32_at(b, REGION_TABLE + 8) as usize;
                let e = REGION_TABLE + 16 + 32 * n;
                b[e..e + 16].copy_from_slice(&[0x42; 16]);
                set_u64(b, e + 16, 1 << 30);
                set_u32(b, e + 24, MIB as u32);
                set_u32(b, e + 28, 1);
                set_u32(b, REGION_TABLE + 8, n as u32 + 1);
                fix_crc(b, REGION_TABLE, 64 << 10);
            },
            Refuse(&["unknown required region"]),
        ),
        (
            "bat_entry_into_optional_region",
            "dyn_1m",
            |b, l| {
                let (_, e) = first_present(b, l);
                let n = u32_at(b, REGION_TABLE + 8) as usize;
                let r = REGION_TABLE + 16 + 32 * n;
                b[r..r + 16].copy_from_slice(&[0x42; 16]);
                set_u64(b, r + 16, e >> 20 << 20);
                set_u32(b, r + 24, MIB as u32);
                set_u32(b, REGION_TABLE + 8, n as u32 + 1);
                fix_crc(b, REGION_TABLE, 64 << 10);
            },
            Refuse(&["region the reader does not use"]),
        ),
        (
            "region_bat_missing",
            "dyn_1m",
            |b, l| {
                b[l.bat_entry..l.bat_entry + 16].copy_from_slice(&[0x43; 16]);
                set_u32(b, l.bat_entry + 28, 0);
                fix_crc(b, REGION_TABLE, 64 << 10);
            },
            Refuse(&["no bat region"]),
        ),
        (
            "metadata_bad_signature",
            "dyn_1m",
            |b, l| b[l.metadata] = b'X',
            Refuse(&["metadata table"]),
        ),
        (
            "metadata_count_5000",
            "dyn_1m",
            |b, l| set_u16(b, l.metadata + 10, 5000),
            Refuse(&["2047"]),
        ),
        (
            "metadata_unknown_required",
            "dyn_1m",
            |b, l| {
                let e = l.item_entry(VIRTUAL_DISK_SIZE);
                b[e..e + 16].copy_from_slice(&[0x44; 16]);
            },
            Refuse(&["unknown required metadata"]),
        ),
        (
            "metadata_item_missing",
            "dyn_1m",
            |b, l| {
                let e = l.item_entry(VIRTUAL_DISK_SIZE);
                b[e..e + 16].copy_from_slice(&[0x44; 16]);
                set_u32(b, e + 24, 0);
            },
            Refuse(&["missing"]),
        ),
        (
            "metadata_item_outside_region",
            "dyn_1m",
            |b, l| set_u32(b, l.item_entry(VIRTUAL_DISK_SIZE) + 16, 2 << 20),
            Refuse(&["not inside the metadata region"]),
        ),
        (
            "metadata_item_wrong_length",
            "dyn_1m",
            |b, l| set_u32(b, l.item_entry(LOGICAL_SECTOR) + 20, 8),
            Refuse(&["length"]),
        ),
        (
            "block_size_zero",
            "dyn_1m",
            |b, l| set_u32(b, l.item(FILE_PARAMETERS), 0),
            Refuse(&["block size"]),
        ),
        (
            "block_size_512m",
            "dyn_1m",
            |b, l| set_u32(b, l.item(FILE_PARAMETERS), 512 << 20),
            Refuse(&["block size"]),
        ),
        (
            "logical_sector_1024",
            "dyn_1m",
            |b, l| set_u32(b, l.item(LOGICAL_SECTOR), 1024),
            Refuse(&["logical sector"]),
        ),
        (
            "has_parent",
            "dyn_1m",
            |b, l| set_u32(b, l.item(FILE_PARAMETERS) + 4, 2),
            Refuse(&["differencing"]),
        ),
        (
            "virtual_size_2p62",
            "dyn_1m",
            |b, l| set_u64(b, l.item(VIRTUAL_DISK_SIZE), 1 << 62),
            Refuse(&["64 tib"]),
        ),
        (
            "virtual_size_not_sector_multiple",
            "dyn_1m",
            |b, l| set_u64(b, l.item(VIRTUAL_DISK_SIZE), 5 * MIB + 100),
            Refuse(&["multiple"]),
        ),
        (
            "bat_for_64t_in_1m_region",
            "dyn_1m",
            |b, l| set_u64(b, l.item(VIRTUAL_DISK_SIZE), 64 << 40),
            Refuse(&["bat region"]),
        ),
        (
            "virtual_size_shrunk",
            "dyn_2m",
            |b, l| set_u64(b, l.item(VIRTUAL_DISK_SIZE), 3 * MIB),
            LikeQemu,
        ),
        (
            "bat_entry_past_eof",
            "dyn_1m",
            |b, l| {
                let (i, _) = first_present(b, l);
                set_bat(b, l, i, (1 << 40) | 6);
            },
            Refuse(&["truncated"]),
        ),
        (
            "bat_entry_into_metadata",
            "dyn_1m",
            |b, l| {
                let (i, _) = first_present(b, l);
                set_bat(b, l, i, l.metadata as u64 | 6);
            },
            Refuse(&["metadata region"]),
        ),
        (
            "bat_entry_into_bat",
            "dyn_1m",
            |b, l| {
                let (i, _) = first_present(b, l);
                set_bat(b, l, i, l.bat as u64 | 6);
            },
            Refuse(&["bat region"]),
        ),
        (
            "bat_entry_into_log",
            "dyn_1m",
            |b, l| {
                let (i, _) = first_present(b, l);
                set_bat(b, l, i, l.log_offset as u64 | 6);
            },
            Refuse(&["inside the log"]),
        ),
        (
            "bat_entry_offset_0",
            "dyn_1m",
            |b, l| {
                let (i, _) = first_present(b, l);
                set_bat(b, l, i, 6);
            },
            Refuse(&["file offset 0"]),
        ),
        (
            "bat_blocks_overlap",
            "dyn_1m",
            |b, l| {
                let p = l.present(b);
                set_bat(b, l, p[1].0, p[0].1);
            },
            Refuse(&["overlap"]),
        ),
        (
            "bat_partially_present",
            "dyn_1m",
            |b, l| {
                let (i, e) = first_present(b, l);
                set_bat(b, l, i, e | 7);
            },
            Refuse(&["partially_present"]),
        ),
        (
            "bat_state_4",
            "dyn_1m",
            |b, l| set_bat(b, l, 0, 4),
            Refuse(&["undefined"]),
        ),
        (
            "bat_reserved_bits",
            "dyn_1m",
            |b, l| {
                let (i, e) = first_present(b, l);
                set_bat(b, l, i, e | 0x100);
            },
            Refuse(&["reserved"]),
        ),
        (
            "sector_bitmap_present",
            "big_4160m",
            |b, l| {
                let (_, e) = first_present(b, l);
                set_bat(b, l, l.chunk_ratio(512) as usize, e);
            },
            Refuse(&["sector bitmap"]),
        ),
        (
            "truncated_in_headers",
            "dyn_1m",
            |b, _| b.truncate(100 << 10),
            Refuse(&["truncated"]),
        ),
        (
            "truncated_before_metadata",
            "dyn_1m",
            |b, l| b.truncate(l.metadata + 4096),
            Refuse(&["truncated"]),
        ),
        (
            "truncated_in_a_block",
            "dyn_1m",
            |b, l| {
                let last = l
                    .present(b)
                    .iter()
                    .map(|(_, e)| e >> 20 << 20)
                    .max()
                    .unwrap();
                b.truncate(last as usize + 100_000);
            },
            Refuse(&["truncated"]),
        ),
    ]
}

#[test]
fn hostile_variants() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut refused = 0;
    let mut like_qemu = 0;
    let all = variants();
    for (name, base, defect, expect) in &all {
        let mut bytes = std::fs::read(m.image(base, "")).unwrap();
        let layout = Layout::of(&bytes);
        defect(&mut bytes, &layout);
        let input = tmp.path().join(format!("{name}.vhdx"));
        std::fs::write(&input, &bytes).unwrap();
        let target = tmp.path().join(format!("{name}.out"));
        let run = convert(&input, &target, &[]);
        let result = match expect {
            Expect::Refuse(words) => check_refusal(&run, &target, words).map(|()| refused += 1),
            Expect::LikeQemu => {
                let oracle = tmp.path().join(format!("{name}.raw"));
                match qemu_convert("vhdx", &input, &oracle) {
                    Err(why) => Err(format!("qemu-img refuses this accept variant: {why}")),
                    Ok(()) => check_output(&run, &target, &oracle).map(|()| like_qemu += 1),
                }
            }
        };
        if let Err(why) = result {
            failures.push(format!("{name}: {why}"));
        }
        let _ = std::fs::remove_file(&target);
    }
    note(&format!(
        "vhdx_matrix hostile: {} variants, {refused} refused naming the defect, {like_qemu} \
         converted identically to qemu-img",
        all.len()
    ));
    finish("vhdx hostile variants", failures);
}
