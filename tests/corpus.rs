//! Third-party images from `../shared/corpus` (see its README.md): what each must convert
//! to, or why it must be refused. The expected bytes are computed at test time
//! (`qemu-img convert -O raw`, `gzip -dc`, `xz -dc`, or the file itself); nothing from
//! the corpus is copied into this repository.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;

#[derive(Clone, Copy)]
enum Expect {
    /// qcow2: identical to `qemu-img convert -f qcow2 -O raw`.
    Qemu,
    /// VHD: identical to `qemu-img convert -f vpc -O raw` (after `bzip2 -dc` when
    /// the name ends in .bz2); disks of 127 GiB are compared by `qemu-img compare`.
    QemuVpc,
    /// Another format: identical to `qemu-img convert -f FORMAT -O raw`.
    QemuAs(&'static str),
    /// The bytes are the disk (raw, iso, dd, tar, a raw file named .qcow2).
    Verbatim,
    /// `gzip -dc`, then `qemu-img convert -O raw` of the qcow2 inside.
    GunzipQemu,
    /// Identical to `TOOL -dc FILE` (a compressed raw file).
    Decompressed(&'static str),
    /// `TOOL -dc`, then `qemu-img convert -f FORMAT -O raw` of the image inside.
    DecompressedQemu(&'static str, &'static str),
    /// Non-zero exit, no panic, no target; stderr names one of these (case-insensitive).
    Refuse(&'static [&'static str]),
}
use Expect::*;

const BACKING: &[&str] = &["backing"];
const DATA_FILE: &[&str] = &["data file", "data-file", "data_file"];
const TRUNCATED: &[&str] = &["truncat", "end of", "eof", "past the end", "beyond the end"];
const FOOTER_CHECKSUM: &[&str] = &["footer checksum"];
const DIFFERENCING: &[&str] = &["differencing"];
const PARALLELS: &[&str] = &["parallels"];
const DMG: &[&str] = &["dmg"];

/// Every third-party file in the corpus and what diskimport must do with it.
const CORPUS: &[(&str, Expect)] = &[
    // qcow2 images qemu-img converts.
    ("dfvfs/ext2.qcow2", Qemu),
    ("dfvfs/windows_volume.qcow2", Qemu),
    ("dfvfs/lvm.qcow2", Qemu),
    ("dfvfs/lvmtest.qcow2", Qemu),
    ("dfvfs-2020/ext2.qcow2", Qemu),
    ("plaso/image.qcow2", Qemu),   // v2
    ("plaso/vsstest.qcow2", Qemu), // v2, compressed, data before its 2nd L2 table
    ("virtnbdbackup/vm3-sda.qcow2", Qemu),
    ("virtnbdbackup/vm5-sda.qcow2", Qemu), // bitmaps, file size not cluster aligned
    ("cdi/fs-overhead.qcow2", Qemu),       // virtual size not a cluster multiple
    // The bytes are the disk.
    ("qemu-sample-images/grub_mbr.raw", Verbatim),
    ("dfvfs/iso9660.raw", Verbatim),
    ("plaso/syslog_image.dd", Verbatim),
    ("sleuthkit/image.dd", Verbatim),
    ("sleuthkit/image.iso", Verbatim),
    ("virtnbdbackup/vm4-sdb.qcow2", Verbatim), // named .qcow2, is raw ext2
    ("cdi/content.tar", Verbatim),
    ("cdi/bootc-registry-image.tar", Verbatim),
    // Compressed wrappers.
    ("virtnbdbackup/vm1-sda.qcow2.gz", GunzipQemu),
    ("dfvfs/syslog.gz", Decompressed("gzip")),
    ("dfvfs/syslog.xz", Decompressed("xz")),
    (
        "qemu-sample-images/iotest-dynamic-1G.vhdx.bz2", // Windows 8, 32 MiB blocks
        DecompressedQemu("bzip2", "vhdx"),
    ),
    (
        "qemu-sample-images/test-disk2vhd.vhdx.bz2", // Disk2VHD, identical headers
        DecompressedQemu("bzip2", "vhdx"),
    ),
    // Must refuse: what an importer must not follow, or cannot read.
    ("cdi/cirros-snapshot1.qcow2", Refuse(BACKING)),
    ("cdi/cirros-snapshot2.qcow2", Refuse(BACKING)),
    ("virtnbdbackup/vm6-sda.qcow2", Refuse(DATA_FILE)),
    ("libqcow/file_header.1", Refuse(TRUNCATED)), // L1 table past EOF
    (
        "cdi/invalid-qcow-large-memory.img",
        Refuse(&["granularity"]),
    ), // a VMDK memory bomb
    ("qemu-sample-images/afl5.img", Refuse(TRUNCATED)), // fuzzed VHD header, 1028 bytes
    (
        "qemu-sample-images/afl9.vmdk",
        Refuse(&["L1 size too big", "capacity"]),
    ),
    ("dfvfs/corrupt1.gz", Refuse(&["gzip"])),
    ("sleuthkit/image.qcow", Refuse(&["version 1"])), // "qcow (version 1)"
    (
        "qemu-sample-images/iotest-dirtylog-10G-4M.vhdx.bz2", // qemu refuses it too
        Refuse(&["needs to be replayed"]),
    ),
    // VHD and VMDK: identical to qemu-img, or refused naming the defect.
    ("qemu-sample-images/hyperv2012r2-dynamic.vhd", QemuVpc), // "win ": current size
    ("qemu-sample-images/virtualpc-dynamic.vhd", QemuVpc),    // "vpc ": CHS geometry
    ("dfvfs/ext2.vhd", QemuVpc),
    ("dfvfs/image.vhd", Refuse(FOOTER_CHECKSUM)), // qemu: "Incorrect header checksum"
    ("dfvfs/image-differential.vhd", Refuse(FOOTER_CHECKSUM)),
    ("dfvfs/fat-differential.vhd", Refuse(DIFFERENCING)), // qemu drops the parent's data
    ("plaso/image.vhd", QemuVpc),
    ("sleuthkit/image.vhd", QemuVpc),
    ("qemu-sample-images/d2v-zerofilled.vhd.bz2", QemuVpc), // "d2v\0", blocks not in guest order
    ("dfvfs/ext2.vmdk", QemuAs("vmdk")),
    ("plaso/image.vmdk", QemuAs("vmdk")),
    ("qemu-sample-images/iotest-version3.vmdk", QemuAs("vmdk")), // GTs after grains
    ("qemu-sample-images/parallels-v1", Refuse(PARALLELS)),
    ("qemu-sample-images/parallels-v2", Refuse(PARALLELS)),
    (
        "qemu-sample-images/parallels-with-bitmap",
        Refuse(PARALLELS),
    ),
    ("qemu-sample-images/empty.bochs", Refuse(&["bochs"])),
    (
        "qemu-sample-images/simple-pattern.cloop",
        Refuse(&["cloop"]),
    ),
    ("qemu-sample-images/simple-dmg.dmg", Refuse(DMG)),
    ("dfvfs/hfsplus_zlib.dmg", Refuse(DMG)),
];

fn corpus() -> Option<PathBuf> {
    require_shared().map(|s| s.join("corpus"))
}

/// The table above, the README's table and the files on disk agree.
#[test]
fn table_covers_the_whole_corpus() {
    let Some(dir) = corpus() else { return };
    let ours: BTreeSet<&str> = CORPUS.iter().map(|(f, _)| *f).collect();
    assert_eq!(ours.len(), CORPUS.len(), "duplicate entries in CORPUS");

    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let listed: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .filter(|f| f.contains('/') && !f.contains(' '))
        .map(String::from)
        .collect();

    let mut on_disk = BTreeSet::new();
    for sub in std::fs::read_dir(&dir).unwrap() {
        let sub = sub.unwrap();
        if !sub.file_type().unwrap().is_dir() || sub.file_name() == "hostile" {
            continue;
        }
        for f in std::fs::read_dir(sub.path()).unwrap() {
            let f = f.unwrap();
            on_disk.insert(format!(
                "{}/{}",
                sub.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }

    let mut failures = Vec::new();
    for f in &listed {
        if !ours.contains(f.as_str()) {
            failures.push(format!("{f}: in corpus/README.md but not in CORPUS"));
        }
    }
    for f in &on_disk {
        if !ours.contains(f.as_str()) {
            failures.push(format!("{f}: in the corpus directory but not in CORPUS"));
        }
    }
    for f in &ours {
        if !on_disk.contains(*f) {
            failures.push(format!("{f}: in CORPUS but missing from {}", dir.display()));
        }
    }
    finish("corpus table", failures);
}

/// Build the expected output for `file`, or None if this expectation has none.
fn expected(dir: &Path, file: &str, how: Expect, tmp: &Path) -> Result<Option<PathBuf>, String> {
    let src = dir.join(file);
    let out = tmp.join(format!("{}.expected", file.replace('/', "_")));
    match how {
        Qemu => qemu_convert("qcow2", &src, &out).map(|_| Some(out)),
        QemuVpc if file.ends_with(".bz2") => {
            let inner = tmp.join(format!("{}.inner", file.replace('/', "_")));
            decompress_with("bzip2", &src, &inner);
            let r = qemu_convert("vpc", &inner, &out).map(|_| Some(out));
            let _ = std::fs::remove_file(inner);
            r
        }
        QemuVpc => qemu_convert("vpc", &src, &out).map(|_| Some(out)),
        QemuAs(format) => qemu_convert(format, &src, &out).map(|_| Some(out)),
        Verbatim => Ok(Some(src)),
        GunzipQemu => {
            let inner = tmp.join(format!("{}.inner", file.replace('/', "_")));
            decompress_with("gzip", &src, &inner);
            let r = qemu_convert("qcow2", &inner, &out).map(|_| Some(out));
            let _ = std::fs::remove_file(inner);
            r
        }
        Decompressed(tool) => {
            decompress_with(tool, &src, &out);
            Ok(Some(out))
        }
        DecompressedQemu(tool, format) => {
            let inner = tmp.join(format!("{}.inner", file.replace('/', "_")));
            decompress_with(tool, &src, &inner);
            let r = qemu_convert(format, &inner, &out).map(|_| Some(out));
            let _ = std::fs::remove_file(inner);
            r
        }
        Refuse(_) => Ok(None),
    }
}

fn convert_matching(select: fn(Expect) -> bool, what: &str) {
    let Some(dir) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut identical = 0;
    let mut total = 0;
    for &(file, how) in CORPUS.iter().filter(|(_, how)| select(*how)) {
        total += 1;
        let want = match expected(&dir, file, how, tmp.path()) {
            Ok(Some(p)) => p,
            Ok(None) => unreachable!(),
            Err(e) => {
                failures.push(format!("{file}: cannot make the expected output: {e}"));
                continue;
            }
        };
        let target = tmp.path().join("out.raw");
        let run = convert(&dir.join(file), &target, &[]);
        let result = if !run.ok() {
            Err(run.describe())
        } else {
            compare_large_or_small(&target, &want)
        };
        match result {
            Ok(()) => identical += 1,
            Err(why) => failures.push(format!("{file}: {why}")),
        }
        let _ = std::fs::remove_file(&target);
        if want.starts_with(tmp.path()) {
            let _ = std::fs::remove_file(&want);
        }
    }
    note(&format!(
        "corpus {what}: {identical} of {total} files converted identically"
    ));
    finish(&format!("corpus {what}"), failures);
}

/// Byte comparison; outputs above 1 GiB (the 127 GiB empty VHDs) by size and
/// `qemu-img compare`, which skips holes.
fn compare_large_or_small(actual: &Path, expected: &Path) -> Result<(), String> {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if len(expected) <= 1 << 30 {
        return compare_files(actual, expected);
    }
    if len(actual) != len(expected) {
        return Err(format!(
            "size {} but expected {}",
            len(actual),
            len(expected)
        ));
    }
    let run = qemu_img(&[
        std::ffi::OsStr::new("compare"),
        std::ffi::OsStr::new("-f"),
        std::ffi::OsStr::new("raw"),
        std::ffi::OsStr::new("-F"),
        std::ffi::OsStr::new("raw"),
        actual.as_os_str(),
        expected.as_os_str(),
    ]);
    if run.ok() {
        Ok(())
    } else {
        Err(format!("qemu-img compare: {}", run.describe()))
    }
}

#[test]
fn vhd_images_match_qemu_img() {
    convert_matching(|h| matches!(h, QemuVpc), "vhd vs qemu-img convert");
}

#[test]
fn other_formats_match_qemu_img() {
    convert_matching(|h| matches!(h, QemuAs(_)), "vmdk vs qemu-img convert");
}

#[test]
fn qcow2_images_match_qemu_img() {
    convert_matching(|h| matches!(h, Qemu), "qcow2 vs qemu-img convert");
}

#[test]
fn raw_iso_dd_tar_copied_verbatim() {
    convert_matching(|h| matches!(h, Verbatim), "raw/iso/dd/tar verbatim");
}

#[test]
fn compressed_files_decoded() {
    convert_matching(
        |h| matches!(h, GunzipQemu | Decompressed(_) | DecompressedQemu(..)),
        "gzip/xz/bzip2 wrapped",
    );
}

#[test]
fn refused_with_a_reason() {
    let Some(dir) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut refused = 0;
    let mut total = 0;
    for &(file, how) in CORPUS {
        let Refuse(keywords) = how else { continue };
        total += 1;
        let target = tmp.path().join("out.raw");
        let run = convert(&dir.join(file), &target, &[]);
        match check_refusal(&run, &target, keywords) {
            Ok(()) => refused += 1,
            Err(why) => failures.push(format!("{file}: {why}")),
        }
        let _ = std::fs::remove_file(&target);
    }
    note(&format!(
        "corpus refusals: {refused} of {total} files refused with a reason"
    ));
    finish("corpus refusals", failures);
}
