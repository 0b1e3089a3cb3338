//! The VDI matrix: images made by `testdata/make_vdi_matrix.sh` with qemu-img /
//! qemu-io (dynamic and static, scattered writes, zero runs, allocation order
//! unlike guest order, an image larger than 4 GiB with little data, odd sizes),
//! each also wrapped in gzip, xz and zstd. Every input must convert to exactly the
//! bytes of `qemu-img convert -O raw`, sparsely; `info --map` must equal
//! `qemu-img map --output=json`; `info --json` must agree with `qemu-img info`;
//! conversion onto real loop devices (512- and 4096-byte sectors) must read back
//! exactly. Hostile variants, one defect each, are made here from a qemu-made
//! image and must be refused naming the defect, leaving no target.
//!
//! The matrix is built once per run into `$CARGO_TARGET_TMPDIR/vdi_matrix`;
//! `DISKIMPORT_VDI_MATRIX_DIR` uses an already built one.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::loop_device::LoopDevice;
use common::*;
use serde_json::Value;

const WRAPPERS: &[(&str, Option<&str>)] = &[
    ("", None),
    (".gz", Some("gzip")),
    (".xz", Some("xz")),
    (".zst", Some("zstd")),
];

struct Entry {
    family: String,
    name: String,
    tags: Vec<String>,
}

struct Matrix {
    dir: PathBuf,
    entries: Vec<Entry>,
}

impl Matrix {
    fn input(&self, e: &Entry, wrapper: &str) -> PathBuf {
        self.dir.join(format!("{}.vdi{wrapper}", e.name))
    }
    fn oracle(&self, e: &Entry) -> PathBuf {
        self.dir.join(format!("{}.raw", e.name))
    }
    fn json(&self, e: &Entry, what: &str) -> Value {
        let path = self.dir.join(format!("{}.{what}.json", e.name));
        serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("qemu-img json")
    }
    fn entry(&self, name: &str) -> &Entry {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} is not in the manifest"))
    }
}

static MATRIX: OnceLock<Matrix> = OnceLock::new();

fn matrix() -> &'static Matrix {
    MATRIX.get_or_init(|| {
        let dir = generated_matrix(
            "DISKIMPORT_VDI_MATRIX_DIR",
            "vdi_matrix",
            "make_vdi_matrix.sh",
        );
        let manifest = std::fs::read_to_string(dir.join("manifest.txt")).unwrap();
        let entries = manifest
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 4, "bad manifest line {l:?}");
                Entry {
                    family: f[0].into(),
                    name: f[1].into(),
                    tags: f[3]
                        .split(',')
                        .filter(|t| *t != "-")
                        .map(String::from)
                        .collect(),
                }
            })
            .collect();
        Matrix { dir, entries }
    })
}

#[test]
fn every_image_and_wrapper_converts_like_qemu_img() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut identical = 0;
    let mut families = std::collections::BTreeSet::new();
    for e in &m.entries {
        families.insert(e.family.as_str());
        let nonzero = nonzero_4k_bytes(&m.oracle(e));
        for (wrapper, _) in WRAPPERS {
            let target = tmp.path().join(format!("{}{wrapper}.out", e.name));
            let run = convert(&m.input(e, wrapper), &target, &[]);
            let checked = if !run.ok() || run.panicked() {
                Err(run.describe())
            } else {
                compare_files(&target, &m.oracle(e)).and_then(|()| check_sparse(&target, nonzero))
            };
            match checked {
                Ok(()) => identical += 1,
                Err(why) => failures.push(format!("{}.vdi{wrapper}: {why}", e.name)),
            }
            let _ = std::fs::remove_file(&target);
        }
    }
    for family in ["dynamic", "static", "zero", "empty", "big", "odd_size"] {
        assert!(
            families.contains(family),
            "no {family} images in the matrix"
        );
    }
    note(&format!(
        "vdi_matrix convert: {identical} of {} conversions ({} inputs x {} wrappers) identical \
         to qemu-img convert -O raw and sparse",
        m.entries.len() * WRAPPERS.len(),
        m.entries.len(),
        WRAPPERS.len()
    ));
    finish("vdi matrix", failures);
}

/// A map with the `zero` flag dropped and neighbours merged again: what a stream
/// can know about a static image (qemu-img map marks the host file's holes zero).
fn without_zero_flags(map: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for entry in map.as_array().expect("map array") {
        let mut entry = entry.clone();
        entry.as_object_mut().unwrap().remove("zero");
        if let Some(last) = out.last_mut() {
            let contiguous = match (last["offset"].as_u64(), entry["offset"].as_u64()) {
                (Some(a), Some(b)) => a + last["length"].as_u64().unwrap() == b,
                (None, None) => true,
                _ => false,
            };
            let same = ["present", "data", "compressed", "depth"]
                .iter()
                .all(|k| last[*k] == entry[*k]);
            if contiguous && same {
                let len = last["length"].as_u64().unwrap() + entry["length"].as_u64().unwrap();
                last["length"] = len.into();
                continue;
            }
        }
        out.push(entry);
    }
    out
}

#[test]
fn info_map_equals_qemu_img_map() {
    let m = matrix();
    let mut failures = Vec::new();
    let (mut exact, mut without_zero) = (0, 0);
    for e in &m.entries {
        let qemu = m.json(e, "map");
        for wrapper in ["", ".gz"] {
            let input = m.input(e, wrapper);
            let run = diskimport(&["info".as_ref(), input.as_os_str(), "--map".as_ref()]);
            if !run.ok() {
                failures.push(format!("{}: {}", input.display(), run.describe()));
                continue;
            }
            let ours: Value = match serde_json::from_slice(&run.stdout) {
                Ok(v) => v,
                Err(err) => {
                    failures.push(format!("{}: not JSON: {err}", input.display()));
                    continue;
                }
            };
            if e.tags.iter().any(|t| t == "nomap") {
                // Static: every block is data at its offset; qemu adds "zero" where the
                // host file has holes. Equal once that flag is dropped.
                if without_zero_flags(&ours) == without_zero_flags(&qemu) {
                    without_zero += 1;
                } else {
                    failures.push(format!(
                        "{}: map differs from qemu-img map (zero flags ignored): ours {ours}, qemu {qemu}",
                        input.display()
                    ));
                }
            } else if ours == qemu {
                exact += 1;
            } else {
                failures.push(format!(
                    "{}: map differs from qemu-img map: ours {ours}, qemu {qemu}",
                    input.display()
                ));
            }
        }
    }
    note(&format!(
        "vdi_matrix map: {exact} maps equal to qemu-img map, {without_zero} static maps equal \
         once qemu's host-hole zero flags are dropped"
    ));
    finish("vdi map", failures);
}

#[test]
fn info_json_agrees_with_qemu_img_info() {
    let m = matrix();
    let mut failures = Vec::new();
    let mut checked = 0;
    for e in &m.entries {
        let qemu = m.json(e, "info");
        for (wrapper, compression) in WRAPPERS {
            let input = m.input(e, wrapper);
            let run = diskimport(&["info".as_ref(), input.as_os_str(), "--json".as_ref()]);
            let info: Value = match serde_json::from_slice(&run.stdout) {
                Ok(v) if run.ok() => v,
                _ => {
                    failures.push(format!("{}: {}", input.display(), run.describe()));
                    continue;
                }
            };
            let subformat = if e.family == "static" || e.name.starts_with("st_") {
                "static"
            } else {
                "dynamic"
            };
            let want_compression: Vec<&str> = compression.iter().copied().collect();
            let expected = [
                ("format", Value::from("vdi")),
                ("subformat", Value::from(subformat)),
                ("virtual_size", qemu["virtual-size"].clone()),
                ("block_size", qemu["cluster-size"].clone()),
                ("sector_size", Value::from(512)),
                ("compression", serde_json::json!(want_compression)),
            ];
            for (key, want) in expected {
                if info[key] != want {
                    failures.push(format!(
                        "{}: {key} is {} (expected {want})",
                        input.display(),
                        info[key]
                    ));
                }
            }
            if info["streaming"]["mode"] != "streamed" {
                failures.push(format!("{}: not streamed: {info}", input.display()));
            }
            checked += 1;
        }
    }
    note(&format!(
        "vdi_matrix info --json: {checked} inputs agree with qemu-img info"
    ));
    finish("vdi info --json", failures);
}

fn onto_block_device(sector: u32) {
    let m = matrix();
    let Some(dev) = LoopDevice::new(32 << 20, sector) else {
        return;
    };
    let mut done = 0;
    for name in [
        "dyn_scatter",
        "dyn_random",
        "st_scatter",
        "odd_5m_plus",
        "dyn_zero",
    ] {
        let e = m.entry(name);
        let oracle = m.oracle(e);
        let run = convert(&m.input(e, ".zst"), &dev.device, &[]);
        assert!(run.ok(), "{name}: {}", run.describe());
        let len = std::fs::metadata(&oracle).unwrap().len();
        if let Err(e) = compare_prefix(&dev.device, &oracle, len) {
            panic!("{name} on {sector}-byte sectors: {e}");
        }
        done += 1;
    }
    note(&format!(
        "vdi_matrix block device ({sector}-byte sectors): {done} images read back exactly"
    ));
}

#[test]
fn images_read_back_exactly_from_a_512_byte_sector_device() {
    onto_block_device(512);
}

#[test]
fn images_read_back_exactly_from_a_4096_byte_sector_device() {
    onto_block_device(4096);
}

/// Little-endian field writes on a copy of an image.
fn patch(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// The block map entry of guest block `index` in a qemu-made image (map at 512).
fn map_entry(index: usize) -> usize {
    512 + index * 4
}

#[test]
fn hostile_variants_are_refused_naming_the_defect() {
    let m = matrix();
    // dyn_scatter: 24 blocks, some allocated, map at 512, data at 1024.
    let base = std::fs::read(m.input(m.entry("dyn_scatter"), "")).unwrap();
    assert_eq!(u32::from_le_bytes(base[384..388].try_into().unwrap()), 24);
    let allocated = u32::from_le_bytes(base[388..392].try_into().unwrap());
    assert!((2..24).contains(&allocated), "{allocated} blocks allocated");
    let first_allocated = (0..24)
        .find(|&i| {
            u32::from_le_bytes(base[map_entry(i)..map_entry(i) + 4].try_into().unwrap()) < allocated
        })
        .unwrap();
    let unallocated = (0..24)
        .find(|&i| {
            u32::from_le_bytes(base[map_entry(i)..map_entry(i) + 4].try_into().unwrap()) == u32::MAX
        })
        .unwrap();
    type Variant = (
        &'static str,
        Box<dyn Fn(&mut Vec<u8>)>,
        &'static [&'static str],
    );
    let variants: Vec<Variant> = vec![
        (
            "a block map that would need 8 GiB",
            Box::new(|b| {
                patch(b, 384, &le32(0x1fff_ff00));
                patch(b, 368, &(0x1fff_ff00u64 << 20).to_le_bytes());
                patch(b, 344, &le32(0x8000_0000));
            }),
            &["memory budget"],
        ),
        (
            "blocks_in_image above qemu's limit",
            Box::new(|b| patch(b, 384, &le32(0x2000_0000))),
            &["too many blocks"],
        ),
        (
            "a disk size larger than the map covers",
            Box::new(|b| patch(b, 368, &(25u64 << 20).to_le_bytes())),
            &["disk size"],
        ),
        (
            "a disk size beyond qemu's maximum",
            Box::new(|b| patch(b, 368, &u64::MAX.to_le_bytes())),
            &["too large"],
        ),
        (
            "more blocks allocated than the map has",
            Box::new(|b| patch(b, 388, &le32(25))),
            &["allocated"],
        ),
        (
            "a block map offset past the end of the file",
            Box::new(|b| patch(b, 340, &le32(0x4000_0000))),
            &["truncated"],
        ),
        (
            "a data offset past the end of the file",
            Box::new(|b| patch(b, 344, &le32(0x4000_0000))),
            &["truncated"],
        ),
        (
            "a block map overlapping the data area",
            Box::new(|b| patch(b, 344, &le32(512))),
            &["overlaps"],
        ),
        (
            "data inside the header",
            Box::new(|b| patch(b, 344, &le32(0))),
            &["overlaps the header"],
        ),
        (
            "an unaligned block map",
            Box::new(|b| patch(b, 340, &le32(516))),
            &["not sector aligned"],
        ),
        (
            "a map entry past the allocated blocks",
            Box::new(move |b| patch(b, map_entry(unallocated), &le32(allocated))),
            &["blocks are allocated"],
        ),
        (
            "two map entries naming one block",
            Box::new(move |b| {
                let e = b[map_entry(first_allocated)..map_entry(first_allocated) + 4].to_vec();
                patch(b, map_entry(unallocated), &e);
            }),
            &["both name data block"],
        ),
        (
            "a file truncated inside its last block",
            Box::new(|b| {
                let len = b.len() - 4096;
                b.truncate(len)
            }),
            &["truncated"],
        ),
        (
            "a file truncated inside the block map",
            Box::new(|b| b.truncate(530)),
            &["truncated"],
        ),
        (
            "a file truncated inside the header",
            Box::new(|b| b.truncate(300)),
            &["header truncated"],
        ),
        (
            "a differencing image",
            Box::new(|b| patch(b, 76, &le32(4))),
            &["differencing"],
        ),
        (
            "an undo image",
            Box::new(|b| patch(b, 76, &le32(3))),
            &["undo"],
        ),
        (
            "a parent UUID",
            Box::new(|b| patch(b, 440, &[0x42; 16])),
            &["parent uuid"],
        ),
        (
            "a link UUID",
            Box::new(|b| patch(b, 424, &[0x42; 16])),
            &["link uuid"],
        ),
        (
            "a 2 MiB block size",
            Box::new(|b| patch(b, 376, &le32(2 << 20))),
            &["block size"],
        ),
        (
            "4096-byte sectors",
            Box::new(|b| patch(b, 360, &le32(4096))),
            &["sector size"],
        ),
        (
            "version 1.2",
            Box::new(|b| patch(b, 68, &le32(0x0001_0002))),
            &["version"],
        ),
        (
            "block extra data",
            Box::new(|b| patch(b, 380, &le32(512))),
            &["block extra"],
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (what, make, keywords)) in variants.iter().enumerate() {
        let mut bytes = base.clone();
        make(&mut bytes);
        let input = tmp.path().join(format!("hostile{i}.vdi"));
        std::fs::write(&input, &bytes).unwrap();
        let target = tmp.path().join(format!("hostile{i}.raw"));
        let run = convert(&input, &target, &[]);
        if let Err(why) = check_refusal(&run, &target, keywords) {
            failures.push(format!("{what}: {why}"));
        }
    }
    note(&format!(
        "vdi_matrix hostile: {} of {} one-defect variants refused naming the defect",
        variants.len() - failures.len(),
        variants.len()
    ));
    finish("vdi hostile variants", failures);
}

/// A legal layout qemu does not write: the block map after the data. Rebuilt
/// from a qemu-made image; with a small memory budget it must spill, and still
/// convert exactly.
#[test]
fn a_block_map_after_the_data_spills_and_converts_exactly() {
    let m = matrix();
    let e = m.entry("dyn_random");
    let image = std::fs::read(m.input(e, "")).unwrap();
    let field = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) as usize;
    let (map_offset, data_offset, blocks) = (field(340), field(344), field(384));
    let map = &image[map_offset..map_offset + blocks * 4];
    let data = &image[data_offset..];
    let mut moved = image[..512].to_vec();
    moved.extend_from_slice(data);
    let new_map_offset = moved.len().next_multiple_of(512);
    moved.resize(new_map_offset, 0);
    moved.extend_from_slice(map);
    patch(&mut moved, 340, &le32(new_map_offset as u32));
    patch(&mut moved, 344, &le32(512));
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("map-at-end.vdi");
    std::fs::write(&input, &moved).unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let scratch_arg = scratch.to_str().unwrap();
    let budget = ["--memory-budget", "1M", "--scratch-dir", scratch_arg];
    let target = tmp.path().join("out.raw");
    let run = convert(&input, &target, &budget);
    assert!(run.ok(), "{}", run.describe());
    compare_files(&target, &m.oracle(e)).unwrap();
    let mut args: Vec<&str> = vec!["info", input.to_str().unwrap(), "--json"];
    args.extend(budget);
    let run = diskimport(&args);
    assert!(run.ok(), "{}", run.describe());
    let info: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(info["streaming"]["mode"], "spilled", "{info}");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "spill file left behind"
    );
    note("vdi_matrix spill: a block map after the data spilled and converted exactly");
}
