//! qcow2 files broken on purpose (`../shared/corpus/hostile`, one defect each; what a
//! safe importer must do with each is in its RESULTS.json):
//! - `accept`: the output is identical to `qemu-img convert -O raw` of the variant
//!   (where qemu-img itself fails on an accept entry, a clean refusal is fine too);
//! - `reject`: non-zero exit within the time limit, no panic, an `error: ` message that
//!   names the defect (the keyword table below), and no target file;
//! - `accept-or-reject`: either, but a conversion must match qemu-img's output of the
//!   variant (or of its base, where qemu-img fails on the variant), and must finish.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// Truncation / a referenced byte range beyond the end of the file.
const EOF: &[&str] = &[
    "truncat",
    "end of",
    "eof",
    "past the end",
    "beyond the end",
    "beyond end",
];

/// For every `reject` entry: the words of which the error message must contain at least
/// one (case-insensitive), i.e. what the defect is.
const REJECT_KEYWORDS: &[(&str, &[&str])] = &[
    ("base_luks.qcow2", &["encrypt", "luks"]),
    ("h01_bad_magic.qcow2", &["magic"]),
    ("h02_version_1.qcow2", &["version"]),
    ("h04_cluster_bits_8.qcow2", &["cluster"]),
    ("h05_cluster_bits_22.qcow2", &["cluster"]),
    (
        "h07_header_length_100.qcow2",
        &["header_length", "header length"],
    ),
    (
        "h08_header_length_huge.qcow2",
        &["header_length", "header length"],
    ),
    (
        "h11_virtual_size_2p63.qcow2",
        &["virtual size", "virtual_size"],
    ),
    ("h13b_virtual_size_beyond_l1.qcow2", &["l1"]),
    ("h16_l1_size_zero.qcow2", &["l1"]),
    ("h18_l1_offset_unaligned.qcow2", &["l1"]),
    ("h19_l1_offset_zero.qcow2", &["l1"]),
    ("h25_refcount_order_7.qcow2", &["refcount"]),
    (
        "f04_external_data_file_host_path.qcow2",
        &["data file", "data-file", "data_file"],
    ),
    (
        "f05_external_data_file_json.qcow2",
        &["data file", "data-file", "data_file"],
    ),
    (
        "f07_compression_type_2.qcow2",
        &["compression type", "compression_type"],
    ),
    (
        "f08_zstd_without_bit.qcow2",
        &["compression type", "compression_type"],
    ),
    ("f10_unknown_incompat_bit_5.qcow2", &["incompatible"]),
    ("f11_unknown_incompat_bit_63.qcow2", &["incompatible"]),
    (
        "f16_crypt_method_luks_no_header.qcow2",
        &["encrypt", "crypt"],
    ),
    ("f17_crypt_method_3.qcow2", &["encrypt", "crypt"]),
    ("f19_backing_file_missing.qcow2", &["backing"]),
    ("f20_backing_file_json.qcow2", &["backing"]),
    ("f22_backing_offset_beyond_cluster.qcow2", &["backing"]),
    ("f23_header_extension_huge_length.qcow2", &["extension"]),
    ("t01_l1_entry_beyond_eof.qcow2", &["l2"]),
    ("t02_l1_entry_unaligned.qcow2", &["l2"]),
    ("t04_l1_entry_points_to_refcount_table.qcow2", &["refcount"]),
    ("t07_l2_data_beyond_eof.qcow2", EOF),
    ("t08_l2_data_unaligned.qcow2", &["align"]),
    ("t10_l2_data_points_into_l1.qcow2", &["l1"]),
    ("t11_l2_data_points_into_own_l2.qcow2", &["l2"]),
    ("t13_l2_data_points_into_header.qcow2", &["header"]),
    ("c02_compressed_offset_beyond_eof.qcow2", EOF),
    (
        "c04_compressed_garbage.qcow2",
        &["compressed", "deflate", "inflate"],
    ),
    ("c05_compressed_offset_zero.qcow2", &["header"]),
    (
        "c08_compressed_with_zlib_header.qcow2",
        &["compressed", "deflate", "inflate"],
    ),
    (
        "e02_extl2_alloc_bits_without_offset.qcow2",
        &["subcluster", "allocat"],
    ),
    ("x02_truncated_before_l2.qcow2", EOF),
    ("x03_truncated_mid_data.qcow2", EOF),
];

struct Case {
    file: String,
    base: String,
    breaks: String,
    expect: String,
}

fn cases(dir: &Path) -> Vec<Case> {
    let results: Value =
        serde_json::from_slice(&std::fs::read(dir.join("RESULTS.json")).unwrap()).unwrap();
    results
        .as_array()
        .expect("RESULTS.json is an array")
        .iter()
        .map(|e| {
            let s = |k: &str| {
                e[k].as_str()
                    .unwrap_or_else(|| panic!("{k} in {e}"))
                    .to_string()
            };
            Case {
                file: s("file"),
                base: s("base"),
                breaks: s("breaks"),
                expect: s("expect"),
            }
        })
        .collect()
}

fn hostile_dir() -> Option<PathBuf> {
    require_shared().map(|s| s.join("corpus/hostile"))
}

/// qemu-img outputs, made once per test.
struct Oracles {
    dir: PathBuf,
    tmp: tempfile::TempDir,
    made: HashMap<String, Result<PathBuf, String>>,
}

impl Oracles {
    fn new(dir: &Path) -> Self {
        Oracles {
            dir: dir.to_path_buf(),
            tmp: tempfile::tempdir().unwrap(),
            made: HashMap::new(),
        }
    }
    /// `qemu-img convert -f qcow2 -O raw FILE`, or qemu's error message.
    fn get(&mut self, file: &str) -> Result<PathBuf, String> {
        if let Some(r) = self.made.get(file) {
            return r.clone();
        }
        let out = self.tmp.path().join(format!("{file}.raw"));
        let r = qemu_convert("qcow2", &self.dir.join(file), &out).map(|_| out);
        self.made.insert(file.to_string(), r.clone());
        r
    }
}

/// Compare an accepted conversion with qemu-img's output. qemu floors a virtual size
/// that is not a multiple of 512 (h13: 4 MiB - 1000 bytes gives 4 MiB - 1024); an
/// output of the exact virtual size is also right when the extra tail bytes are the
/// base image's bytes there.
fn compare_accepted(target: &Path, qemu: &Path, base: Option<&Path>) -> Result<(), String> {
    let got = std::fs::metadata(target).map_err(|e| e.to_string())?.len();
    let want = std::fs::metadata(qemu).map_err(|e| e.to_string())?.len();
    if got > want && got - want < 512 {
        if let Some(base) = base {
            compare_prefix(target, qemu, want)?;
            let tail: Vec<u8> = std::fs::read(target).unwrap()[want as usize..].to_vec();
            let base_bytes = std::fs::read(base).unwrap();
            return match base_bytes.get(want as usize..got as usize) {
                Some(b) if b == tail.as_slice() => Ok(()),
                _ => Err(format!(
                    "size {got}, qemu-img gives {want} (a partial last sector); \
                     the extra {} bytes differ from the base image's",
                    got - want
                )),
            };
        }
    }
    compare_files(target, qemu)
}

/// A refusal that is allowed (accept-or-reject, or qemu failing too): it still must be
/// clean.
fn clean_refusal(run: &Run, target: &Path) -> Result<(), String> {
    let mut problems = Vec::new();
    if run.timed_out() {
        problems.push("did not finish in time");
    }
    if run.panicked() {
        problems.push("panicked");
    }
    if !run.stderr.lines().any(|l| l.starts_with("error: ")) {
        problems.push("no stderr line starts with `error: `");
    }
    if target.exists() {
        problems.push("target exists afterwards");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", problems.join("; "), run.describe()))
    }
}

#[derive(Default)]
struct Tally {
    identical: usize,
    refused: usize,
    failures: Vec<String>,
}

fn run_cases(expect: &str) -> Option<Tally> {
    let dir = hostile_dir()?;
    let keywords: BTreeMap<&str, &[&str]> = REJECT_KEYWORDS.iter().copied().collect();
    let mut oracles = Oracles::new(&dir);
    let out = tempfile::tempdir().unwrap();
    let mut tally = Tally::default();
    for case in cases(&dir).into_iter().filter(|c| c.expect == expect) {
        let what = format!("{} ({}; expect {})", case.file, case.breaks, case.expect);
        let src = dir.join(&case.file);
        if !src.exists() {
            tally.failures.push(format!("{what}: file missing"));
            continue;
        }
        let target = out.path().join("out.raw");
        let run = convert(&src, &target, &[]);
        let base_file = if case.base == "-" {
            &case.file
        } else {
            &case.base
        };
        let result = match expect {
            "reject" => {
                let kw = keywords.get(case.file.as_str()).copied().unwrap_or(&[]);
                check_refusal(&run, &target, kw).map(|_| false)
            }
            "accept" | "accept-or-reject" => {
                if run.ok() {
                    let base = oracles.get(base_file).ok();
                    let expected = match oracles.get(&case.file) {
                        Ok(p) => Ok(p),
                        // qemu-img fails on the variant: the base image's bytes are the
                        // only reference (refcount / snapshot defects leave the data be).
                        Err(qemu_err) => base.clone().ok_or_else(|| {
                            format!("qemu-img fails on the variant ({qemu_err}) and its base")
                        }),
                    };
                    expected
                        .and_then(|e| compare_accepted(&target, &e, base.as_deref()))
                        .map(|_| true)
                } else if expect == "accept" && oracles.get(&case.file).is_ok() {
                    Err(format!("must convert (qemu-img does): {}", run.describe()))
                } else {
                    clean_refusal(&run, &target).map(|_| false)
                }
            }
            other => Err(format!("unknown expectation {other:?} in RESULTS.json")),
        };
        match result {
            Ok(true) => tally.identical += 1,
            Ok(false) => tally.refused += 1,
            Err(why) => tally.failures.push(format!("{what}: {why}")),
        }
        let _ = std::fs::remove_file(&target);
    }
    Some(tally)
}

#[test]
fn keyword_table_covers_every_reject() {
    let Some(dir) = hostile_dir() else { return };
    let rejects: BTreeSet<String> = cases(&dir)
        .into_iter()
        .filter(|c| c.expect == "reject")
        .map(|c| c.file)
        .collect();
    let table: BTreeSet<String> = REJECT_KEYWORDS.iter().map(|(f, _)| f.to_string()).collect();
    let missing: Vec<_> = rejects.difference(&table).collect();
    let stale: Vec<_> = table.difference(&rejects).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "REJECT_KEYWORDS out of date: no keywords for {missing:?}; not a reject any more: {stale:?}"
    );
}

#[test]
fn accept_entries_match_qemu_img() {
    let Some(t) = run_cases("accept") else { return };
    note(&format!(
        "hostile accept: {} identical to qemu-img convert, {} refused where qemu-img fails too, {} failures",
        t.identical,
        t.refused,
        t.failures.len()
    ));
    finish("hostile accept entries", t.failures);
}

#[test]
fn reject_entries_are_refused_by_name() {
    let Some(t) = run_cases("reject") else { return };
    note(&format!(
        "hostile reject: {} refused with a message naming the defect, {} failures",
        t.refused,
        t.failures.len()
    ));
    finish("hostile reject entries", t.failures);
}

#[test]
fn accept_or_reject_entries_finish_cleanly() {
    let Some(t) = run_cases("accept-or-reject") else {
        return;
    };
    note(&format!(
        "hostile accept-or-reject: {} converted identically, {} refused cleanly, {} failures",
        t.identical,
        t.refused,
        t.failures.len()
    ));
    finish("hostile accept-or-reject entries", t.failures);
}

/// A refused conversion must never create the target or replace an existing one, however
/// the threads are scheduled: repeat a few early and late failures many times (a writer
/// thread that finishes the target when its channel closes only loses this race
/// sometimes).
#[test]
fn failed_conversions_never_leave_a_target() {
    let Some(dir) = hostile_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut runs = 0;
    for file in [
        "h19_l1_offset_zero.qcow2",             // refused at the header
        "t11_l2_data_points_into_own_l2.qcow2", // refused at the L2 table
        "x03_truncated_mid_data.qcow2",         // refused after data was written
    ] {
        for i in 0..100 {
            runs += 1;
            let target = tmp.path().join(format!("new-{i}.raw"));
            let run = convert(&dir.join(file), &target, &[]);
            if run.ok() || target.exists() {
                failures.push(format!(
                    "{file} run {i}: target {} after a failed conversion: {}",
                    if target.exists() { "exists" } else { "absent" },
                    run.describe()
                ));
            }
            let existing = tmp.path().join(format!("existing-{i}.raw"));
            std::fs::write(&existing, b"keep me").unwrap();
            let run = convert(&dir.join(file), &existing, &[]);
            match std::fs::read(&existing) {
                Ok(b) if b == b"keep me" && !run.ok() => {}
                Ok(b) => failures.push(format!(
                    "{file} run {i}: existing target now has {} bytes (was 7): {}",
                    b.len(),
                    run.describe()
                )),
                Err(e) => failures.push(format!("{file} run {i}: existing target: {e}")),
            }
        }
    }
    note(&format!(
        "hostile: {runs} x 2 failed conversions checked for a leftover target, {} bad",
        failures.len()
    ));
    finish("leftover targets", failures);
}
