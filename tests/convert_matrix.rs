//! The qcow2 matrix: images made by `testdata/make_matrix.sh` with qemu-img / qemu-io
//! (versions, cluster sizes, deflate and zstd clusters, extended L2, zero clusters,
//! discards, preallocation, internal snapshots, resize, empty and odd-sized images, raw
//! and ISO inputs), each also wrapped in gzip, xz, zstd and bzip2. Every input must convert to
//! exactly the bytes of `qemu-img convert -O raw`, sparsely; `info --map` must equal
//! `qemu-img map --output=json`.
//!
//! The matrix is built once per run of this test binary, into
//! `$CARGO_TARGET_TMPDIR/convert_matrix` (wiped first; left there afterwards so a
//! failure can be inspected). Set `DISKIMPORT_MATRIX_DIR` to use an already built
//! matrix instead.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use common::*;
use serde_json::Value;

struct Entry {
    family: String,
    name: String,
    /// qcow2, img or iso
    ext: String,
    tags: Vec<String>,
}

impl Entry {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
    fn is_qcow2(&self) -> bool {
        self.ext == "qcow2"
    }
}

struct Matrix {
    dir: PathBuf,
    entries: Vec<Entry>,
    /// non-zero bytes (4 KiB blocks) of each oracle, computed once
    nonzero: Mutex<HashMap<String, u64>>,
}

/// The wrappers every input also comes in: (suffix, name in `info --json` "compression").
const WRAPPERS: &[(&str, Option<&str>)] = &[
    ("", None),
    (".gz", Some("gzip")),
    (".xz", Some("xz")),
    (".zst", Some("zstd")),
    (".bz2", Some("bzip2")),
];

static MATRIX: OnceLock<Matrix> = OnceLock::new();

fn matrix() -> &'static Matrix {
    MATRIX.get_or_init(|| {
        let dir = generated_matrix("DISKIMPORT_MATRIX_DIR", "convert_matrix", "make_matrix.sh");
        let manifest = std::fs::read_to_string(dir.join("manifest.txt"))
            .unwrap_or_else(|e| panic!("{}/manifest.txt: {e}", dir.display()));
        let entries = manifest
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 4, "bad manifest line {l:?}");
                Entry {
                    family: f[0].into(),
                    name: f[1].into(),
                    ext: f[2].into(),
                    tags: if f[3] == "-" {
                        vec![]
                    } else {
                        f[3].split(',').map(String::from).collect()
                    },
                }
            })
            .collect();
        Matrix {
            dir,
            entries,
            nonzero: Mutex::new(HashMap::new()),
        }
    })
}

impl Matrix {
    fn family(&self, family: &str) -> Vec<&Entry> {
        let v: Vec<&Entry> = self.entries.iter().filter(|e| e.family == family).collect();
        assert!(
            !v.is_empty(),
            "no images of family {family} in the manifest"
        );
        v
    }
    fn input(&self, e: &Entry, wrapper: &str) -> PathBuf {
        self.dir.join(format!("{}.{}{}", e.name, e.ext, wrapper))
    }
    fn oracle(&self, e: &Entry) -> PathBuf {
        self.dir.join(format!("{}.raw", e.name))
    }
    fn nonzero(&self, e: &Entry) -> u64 {
        if let Some(n) = self.nonzero.lock().unwrap().get(&e.name) {
            return *n;
        }
        let n = nonzero_4k_bytes(&self.oracle(e));
        self.nonzero.lock().unwrap().insert(e.name.clone(), n);
        n
    }
}

/// Check one finished conversion against the oracle: success, same bytes, sparse.
fn check_output(m: &Matrix, e: &Entry, run: &Run, target: &Path) -> Result<(), String> {
    if !run.ok() {
        return Err(run.describe());
    }
    if run.panicked() {
        return Err(format!("exit 0 but a panic message: {}", run.describe()));
    }
    compare_files(target, &m.oracle(e))?;
    check_sparse(target, m.nonzero(e))
}

/// Convert every input of `family`, in every wrapper, and compare with the oracle.
fn convert_family(family: &str) {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut identical = 0;
    let entries = m.family(family);
    for e in &entries {
        for (wrapper, _) in WRAPPERS {
            let input = m.input(e, wrapper);
            let target = tmp.path().join(format!("{}{}.out", e.name, wrapper));
            let run = convert(&input, &target, &[]);
            match check_output(m, e, &run, &target) {
                Ok(()) => identical += 1,
                Err(why) => failures.push(format!("{}.{}{wrapper}: {why}", e.name, e.ext)),
            }
            let _ = std::fs::remove_file(&target);
        }
    }
    note(&format!(
        "convert_matrix {family}: {identical} of {} conversions ({} inputs x {} wrappers) \
         identical to qemu-img convert -O raw",
        entries.len() * WRAPPERS.len(),
        entries.len(),
        WRAPPERS.len()
    ));
    finish(
        &format!("family {family} (matrix in {})", m.dir.display()),
        failures,
    );
}

/// First difference between two `qemu-img map --output=json` style arrays.
fn map_difference(ours: &Value, qemu: &Value) -> Option<String> {
    let (Some(a), Some(b)) = (ours.as_array(), qemu.as_array()) else {
        return Some(format!("not a JSON array: ours {ours}"));
    };
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            return Some(format!("entry {i}: ours {x}, qemu-img {y}"));
        }
    }
    if a.len() != b.len() {
        let extra = if a.len() > b.len() {
            format!("first extra of ours: {}", a[b.len()])
        } else {
            format!("first missing: {}", b[a.len()])
        };
        return Some(format!(
            "{} entries, qemu-img has {}; {extra}",
            a.len(),
            b.len()
        ));
    }
    None
}

/// `diskimport info --map` of each qcow2 of `family` (plain and gzip-wrapped) must equal
/// `qemu-img map --output=json` as JSON values.
fn map_family(family: &str) {
    let m = matrix();
    let mut failures = Vec::new();
    let mut compared = 0;
    for e in m.family(family) {
        if !e.is_qcow2() {
            continue;
        }
        if e.has("nomap") {
            // preallocation=metadata: qemu-img map looks at the host file's holes and
            // reports zero, not data, for the preallocated clusters; a stream cannot
            // see holes, so the two maps legitimately differ.
            continue;
        }
        let qemu: Value = serde_json::from_slice(
            &std::fs::read(m.dir.join(format!("{}.map.json", e.name))).unwrap(),
        )
        .expect("qemu-img map json");
        for wrapper in ["", ".gz"] {
            let input = m.input(e, wrapper);
            let run = diskimport(&["info".as_ref(), input.as_os_str(), "--map".as_ref()]);
            let what = format!("{}.{}{wrapper}", e.name, e.ext);
            if !run.ok() {
                failures.push(format!("{what}: {}", run.describe()));
                continue;
            }
            let ours: Value = match serde_json::from_slice(&run.stdout) {
                Ok(v) => v,
                Err(err) => {
                    failures.push(format!(
                        "{what}: info --map is not JSON ({err}): {:?}",
                        run.stdout_str().chars().take(300).collect::<String>()
                    ));
                    continue;
                }
            };
            match map_difference(&ours, &qemu) {
                None => compared += 1,
                Some(d) => failures.push(format!("{what}: map differs from qemu-img map: {d}")),
            }
        }
    }
    note(&format!(
        "convert_matrix map {family}: {compared} maps equal to qemu-img map"
    ));
    finish(&format!("map of family {family}"), failures);
}

macro_rules! families {
    ($($convert:ident $(, $map:ident)? => $family:literal;)*) => {$(
        #[test]
        fn $convert() {
            convert_family($family);
        }
        $(
            #[test]
            fn $map() {
                map_family($family);
            }
        )?
    )*};
}

families! {
    versions_and_cluster_sizes, map_versions_and_cluster_sizes => "convert";
    compressed_clusters, map_compressed_clusters => "compressed";
    extended_l2, map_extended_l2 => "extended_l2";
    zero_clusters, map_zero_clusters => "zero";
    discarded_ranges, map_discarded_ranges => "discard";
    preallocation_metadata => "preallocation";
    internal_snapshots, map_internal_snapshots => "snapshot";
    resized_l1_at_end, map_resized_l1_at_end => "resize";
    empty_images, map_empty_images => "empty";
    odd_virtual_size, map_odd_virtual_size => "odd_size";
    raw_and_iso_passthrough => "raw";
}

#[test]
fn stdin_source() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("conv_v3_64k", ".gz"),
        ("comp_zstd_64k", ".xz"),
        ("io_extl2", ""),
        ("snapshot", ".zst"),
        ("resize", ""),
        ("raw_zero_runs", ".xz"),
    ];
    let mut failures = Vec::new();
    let mut identical = 0;
    for (name, wrapper) in cases {
        let e = m.entries.iter().find(|e| e.name == name).unwrap();
        let target = tmp.path().join(format!("{name}{wrapper}.out"));
        let run = convert_stdin(&m.input(e, wrapper), &target, &[]);
        match check_output(m, e, &run, &target) {
            Ok(()) => identical += 1,
            Err(why) => failures.push(format!("stdin {}.{}{wrapper}: {why}", e.name, e.ext)),
        }
        let _ = std::fs::remove_file(&target);
    }
    note(&format!(
        "convert_matrix stdin: {identical} of {} conversions from `-` identical",
        cases.len()
    ));
    finish("convert from stdin", failures);
}

/// Images whose tables come after their data, with a 64 KiB memory budget: the reader
/// must spill to the scratch directory and still produce the same bytes, and leave no
/// spill file behind.
#[test]
fn spill_with_small_memory_budget() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let scratch_arg = scratch.path().to_str().unwrap().to_string();
    let mut failures = Vec::new();
    let mut identical = 0;
    let mut total = 0;
    for e in m.entries.iter().filter(|e| e.has("spill")) {
        for wrapper in ["", ".zst"] {
            for stdin in [false, true] {
                total += 1;
                let target = tmp.path().join(format!("{}{wrapper}.out", e.name));
                let extra = ["--memory-budget", "64K", "--scratch-dir", &scratch_arg];
                let input = m.input(e, wrapper);
                let run = if stdin {
                    convert_stdin(&input, &target, &extra)
                } else {
                    convert(&input, &target, &extra)
                };
                let what = format!(
                    "{}.{}{wrapper}{}",
                    e.name,
                    e.ext,
                    if stdin { " (stdin)" } else { "" }
                );
                match check_output(m, e, &run, &target) {
                    Ok(()) => identical += 1,
                    Err(why) => failures.push(format!("{what}: {why}")),
                }
                let _ = std::fs::remove_file(&target);
                let left: Vec<_> = std::fs::read_dir(scratch.path())
                    .unwrap()
                    .map(|d| d.unwrap().file_name())
                    .collect();
                if !left.is_empty() {
                    failures.push(format!("{what}: scratch dir not cleaned up: {left:?}"));
                    for f in left {
                        let _ = std::fs::remove_file(scratch.path().join(f));
                    }
                }
            }
        }
    }
    assert!(
        total >= 8,
        "expected the snapshot and resize images to be tagged spill"
    );
    note(&format!(
        "convert_matrix spill (--memory-budget 64K): {identical} of {total} conversions identical"
    ));
    finish("spill path", failures);
}

/// `info --json`: format, compression chain, virtual and cluster size as qemu-img info
/// reports them.
#[test]
fn info_json() {
    let m = matrix();
    let mut failures = Vec::new();
    let mut checked = 0;
    for e in &m.entries {
        let qemu: Option<Value> = e.is_qcow2().then(|| {
            serde_json::from_slice(
                &std::fs::read(m.dir.join(format!("{}.info.json", e.name))).unwrap(),
            )
            .unwrap()
        });
        let virtual_size = match &qemu {
            Some(q) => q["virtual-size"].as_u64().unwrap(),
            None => std::fs::metadata(m.oracle(e)).unwrap().len(),
        };
        let format = match e.ext.as_str() {
            "qcow2" => "qcow2",
            "iso" => "iso",
            _ => "raw",
        };
        for (wrapper, compression) in WRAPPERS {
            let input = m.input(e, wrapper);
            let what = format!("{}.{}{wrapper}", e.name, e.ext);
            let run = diskimport(&["info".as_ref(), input.as_os_str(), "--json".as_ref()]);
            if !run.ok() {
                failures.push(format!("{what}: {}", run.describe()));
                continue;
            }
            let info: Value = match serde_json::from_slice(&run.stdout) {
                Ok(v) => v,
                Err(err) => {
                    failures.push(format!("{what}: not JSON ({err}): {}", run.stdout_str()));
                    continue;
                }
            };
            let mut bad = Vec::new();
            if info["format"] != format {
                bad.push(format!("format {} (expected {format:?})", info["format"]));
            }
            let want_comp: Vec<&str> = compression.iter().copied().collect();
            if info["compression"] != serde_json::json!(want_comp) {
                bad.push(format!(
                    "compression {} (expected {want_comp:?})",
                    info["compression"]
                ));
            }
            if info["virtual_size"].as_u64() != Some(virtual_size) {
                bad.push(format!(
                    "virtual_size {} (expected {virtual_size})",
                    info["virtual_size"]
                ));
            }
            if let Some(q) = &qemu {
                if info["cluster_size"] != q["cluster-size"] {
                    bad.push(format!(
                        "cluster_size {} (expected {})",
                        info["cluster_size"], q["cluster-size"]
                    ));
                }
            }
            if !info["allocated_bytes"].is_u64() {
                bad.push(format!("allocated_bytes {}", info["allocated_bytes"]));
            }
            if bad.is_empty() {
                checked += 1;
            } else {
                failures.push(format!("{what}: {}", bad.join(", ")));
            }
        }
    }
    note(&format!(
        "convert_matrix info --json: {checked} inputs as expected"
    ));
    finish("info --json", failures);
}

/// A wrapper cut short must fail cleanly: no target created, and an existing target
/// left untouched.
#[test]
fn truncated_wrappers_fail_cleanly() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let e = m.entries.iter().find(|e| e.name == "conv_v3_64k").unwrap();
    for wrapper in [".gz", ".xz", ".zst", ""] {
        let full = std::fs::read(m.input(e, wrapper)).unwrap();
        let cut = tmp.path().join(format!("cut{wrapper}"));
        std::fs::write(&cut, &full[..full.len() * 3 / 5]).unwrap();
        let what = format!("{}.{}{wrapper} cut to 60%", e.name, e.ext);

        let target = tmp.path().join("new.out");
        let run = convert(&cut, &target, &[]);
        let keywords = [
            "truncat",
            "end of",
            "eof",
            "unexpected end",
            "ended",
            "incomplete",
        ];
        if let Err(why) = check_refusal(&run, &target, &keywords) {
            failures.push(format!("{what}: {why}"));
        }

        let existing = tmp.path().join("existing.out");
        std::fs::write(&existing, b"keep me").unwrap();
        let run = convert(&cut, &existing, &[]);
        if run.ok() {
            failures.push(format!("{what} over an existing target: exit 0"));
        }
        match std::fs::read(&existing) {
            Ok(b) if b == b"keep me" => {}
            Ok(_) => failures.push(format!("{what}: existing target was modified")),
            Err(err) => failures.push(format!("{what}: existing target gone: {err}")),
        }
    }
    finish("truncated inputs", failures);
}

/// The example the README opens with converts to the raw disk whose sha256 is committed
/// next to it.
#[test]
fn bundled_example() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/example"));
    let sums = std::fs::read_to_string(dir.join("example-ext4.raw.sha256")).unwrap();
    let want = sums.split_whitespace().next().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("example.raw");
    let run = convert(&dir.join("example-ext4.qcow2.xz"), &target, &[]);
    assert!(run.ok(), "{}", run.describe());
    assert_eq!(
        sha256_file(&target).unwrap(),
        want,
        "sha256 of the converted example"
    );
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 16 << 20);
    check_sparse(&target, nonzero_4k_bytes(&target)).unwrap();
}

/// Wrappers inside wrappers are peeled outermost first.
#[test]
fn nested_wrappers() {
    let m = matrix();
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (name, wrapper, chain) in [
        ("conv_v3_64k", ".gz.xz", ["xz", "gzip"]),
        ("comp_zlib_4k", ".bz2.zst", ["zstd", "bzip2"]),
    ] {
        let e = m.entries.iter().find(|e| e.name == name).unwrap();
        let input = m.input(e, wrapper);
        let what = format!("{}.{}{wrapper}", e.name, e.ext);
        let target = tmp.path().join("nested.out");
        let run = convert(&input, &target, &[]);
        if let Err(why) = check_output(m, e, &run, &target) {
            failures.push(format!("{what}: {why}"));
        }
        let run = diskimport(&["info".as_ref(), input.as_os_str(), "--json".as_ref()]);
        match serde_json::from_slice::<Value>(&run.stdout) {
            Ok(info) if info["compression"] == serde_json::json!(chain) => {}
            Ok(info) => failures.push(format!(
                "{what}: info compression {} (expected {chain:?})",
                info["compression"]
            )),
            Err(_) => failures.push(format!("{what}: info --json: {}", run.describe())),
        }
    }
    finish("nested wrappers", failures);
}
