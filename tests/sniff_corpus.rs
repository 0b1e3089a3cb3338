//! Format and compression sniffing on the real images of the shared corpus
//! (`../shared/corpus/`, described in its README): each file with a known
//! format must be named correctly, through the public API only
//! ([`decode_all`], [`sniff_format`], [`sniff_trailer`]).
//!
//! The expected formats come from the corpus README (its "format" column and
//! notes), not from running the sniffer. Every file in the corpus must be
//! listed here, so a file added to the corpus makes this test fail until its
//! expectation is written down.
//!
//! Without the corpus the tests are skipped, except in CI (`CI` set, as CI
//! services do), where a missing corpus is a failure.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use diskimport::decode::{decode_all, stream_error, Compression};
use diskimport::format::sniff::{sniff_trailer, TRAILER_LEN};
use diskimport::format::{sniff_format, ImageFormat, SNIFF_LEN};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");

/// What sniffing must say about a file.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `sniff_format` on the decoded head; for raw and iso, no trailer either.
    Format(ImageFormat),
    /// The head looks raw, the trailer names the format.
    Trailer(&'static str),
    /// Decoding fails before the end with a decoding error of this text.
    DecodeFails(&'static str),
}

use Compression::{Bzip2, Gzip, Xz};
use Expect::{DecodeFails, Format, Trailer};
use ImageFormat::{Iso, Qcow2, Raw, Unsupported};

const NONE: &[Compression] = &[];

/// Every third-party file of the corpus, with its wrappers and format.
const EXPECTED: &[(&str, &[Compression], Expect)] = &[
    // qemu-iotests sample images
    (
        "qemu-sample-images/afl5.img",
        NONE,
        Format(Unsupported("vhd")),
    ),
    (
        "qemu-sample-images/afl9.vmdk",
        NONE,
        Format(Unsupported("vmdk")),
    ),
    (
        "qemu-sample-images/d2v-zerofilled.vhd.bz2",
        &[Bzip2],
        Format(Unsupported("vhd")),
    ),
    (
        "qemu-sample-images/empty.bochs",
        NONE,
        Format(Unsupported("bochs")),
    ),
    ("qemu-sample-images/grub_mbr.raw", NONE, Format(Raw)),
    (
        "qemu-sample-images/hyperv2012r2-dynamic.vhd",
        NONE,
        Format(Unsupported("vhd")),
    ),
    (
        "qemu-sample-images/iotest-dirtylog-10G-4M.vhdx.bz2",
        &[Bzip2],
        Format(Unsupported("vhdx")),
    ),
    (
        "qemu-sample-images/iotest-dynamic-1G.vhdx.bz2",
        &[Bzip2],
        Format(Unsupported("vhdx")),
    ),
    (
        "qemu-sample-images/iotest-version3.vmdk",
        NONE,
        Format(Unsupported("vmdk")),
    ),
    (
        "qemu-sample-images/parallels-v1",
        NONE,
        Format(Unsupported("parallels")),
    ),
    (
        "qemu-sample-images/parallels-v2",
        NONE,
        Format(Unsupported("parallels")),
    ),
    (
        "qemu-sample-images/parallels-with-bitmap",
        NONE,
        Format(Unsupported("parallels")),
    ),
    ("qemu-sample-images/simple-dmg.dmg", NONE, Trailer("dmg")),
    (
        "qemu-sample-images/simple-pattern.cloop",
        NONE,
        Format(Unsupported("cloop")),
    ),
    (
        "qemu-sample-images/test-disk2vhd.vhdx.bz2",
        &[Bzip2],
        Format(Unsupported("vhdx")),
    ),
    (
        "qemu-sample-images/virtualpc-dynamic.vhd",
        NONE,
        Format(Unsupported("vhd")),
    ),
    // dfvfs
    ("dfvfs/ext2.qcow2", NONE, Format(Qcow2)),
    ("dfvfs/windows_volume.qcow2", NONE, Format(Qcow2)),
    ("dfvfs/ext2.vmdk", NONE, Format(Unsupported("vmdk"))),
    ("dfvfs/ext2.vhd", NONE, Format(Unsupported("vhd"))),
    ("dfvfs/image.vhd", NONE, Format(Unsupported("vhd"))),
    (
        "dfvfs/image-differential.vhd",
        NONE,
        Format(Unsupported("vhd")),
    ),
    (
        "dfvfs/fat-differential.vhd",
        NONE,
        Format(Unsupported("vhd")),
    ),
    ("dfvfs/hfsplus_zlib.dmg", NONE, Trailer("dmg")),
    (
        "dfvfs/corrupt1.gz",
        &[Gzip],
        DecodeFails("gzip stream ended early (truncated download?)"),
    ),
    ("dfvfs/syslog.gz", &[Gzip], Format(Raw)),
    ("dfvfs/syslog.xz", &[Xz], Format(Raw)),
    ("dfvfs/iso9660.raw", NONE, Format(Iso)),
    ("dfvfs/lvm.qcow2", NONE, Format(Qcow2)),
    ("dfvfs/lvmtest.qcow2", NONE, Format(Qcow2)),
    ("dfvfs-2020/ext2.qcow2", NONE, Format(Qcow2)),
    // plaso
    ("plaso/image.qcow2", NONE, Format(Qcow2)),
    ("plaso/vsstest.qcow2", NONE, Format(Qcow2)),
    ("plaso/image.vmdk", NONE, Format(Unsupported("vmdk"))),
    ("plaso/image.vhd", NONE, Format(Unsupported("vhd"))),
    ("plaso/syslog_image.dd", NONE, Format(Raw)),
    // sleuthkit
    (
        "sleuthkit/image.qcow",
        NONE,
        Format(Unsupported("qcow (version 1)")),
    ),
    ("sleuthkit/image.vhd", NONE, Format(Unsupported("vhd"))),
    ("sleuthkit/image.dd", NONE, Format(Raw)),
    ("sleuthkit/image.iso", NONE, Format(Iso)),
    // virtnbdbackup
    ("virtnbdbackup/vm1-sda.qcow2.gz", &[Gzip], Format(Qcow2)),
    ("virtnbdbackup/vm3-sda.qcow2", NONE, Format(Qcow2)),
    ("virtnbdbackup/vm4-sdb.qcow2", NONE, Format(Raw)), // named .qcow2, raw ext2
    ("virtnbdbackup/vm5-sda.qcow2", NONE, Format(Qcow2)),
    ("virtnbdbackup/vm6-sda.qcow2", NONE, Format(Qcow2)),
    // CDI
    ("cdi/cirros-snapshot1.qcow2", NONE, Format(Qcow2)),
    ("cdi/cirros-snapshot2.qcow2", NONE, Format(Qcow2)),
    ("cdi/fs-overhead.qcow2", NONE, Format(Qcow2)),
    (
        "cdi/invalid-qcow-large-memory.img",
        NONE,
        Format(Unsupported("vmdk")),
    ),
    ("cdi/content.tar", NONE, Format(Raw)),
    ("cdi/bootc-registry-image.tar", NONE, Format(Raw)),
    // libqcow: a truncated qcow2 header is still qcow2 (the reader refuses it)
    ("libqcow/file_header.1", NONE, Format(Qcow2)),
];

/// The corpus directory, or `None` (skip) outside CI when it is missing.
fn corpus() -> Option<PathBuf> {
    let dir = PathBuf::from(CORPUS);
    if dir.is_dir() {
        return Some(dir);
    }
    common::skip(&format!("corpus not found at {}", dir.display()));
    None
}

/// Opens `path` and peels its compression.
fn open_decoded(path: &Path) -> (Vec<Compression>, diskimport::piece::Input) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decode_all(diskimport::piece::plain(file)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first `SNIFF_LEN` decoded bytes (fewer at EOF).
fn read_head(reader: &mut dyn Read, name: &str) -> Vec<u8> {
    let mut head = Vec::new();
    reader
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .unwrap_or_else(|e| panic!("{name}: reading the head: {e}"));
    head
}

/// Reads the rest of the stream, keeping the last `TRAILER_LEN` bytes
/// (of `head` followed by the rest).
fn read_tail(reader: &mut dyn Read, head: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tail = head[head.len().saturating_sub(TRAILER_LEN)..].to_vec();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(tail);
        }
        tail.extend_from_slice(&buf[..n]);
        let excess = tail.len().saturating_sub(TRAILER_LEN);
        tail.drain(..excess);
    }
}

#[test]
fn every_known_corpus_file_is_named_correctly() {
    let Some(dir) = corpus() else { return };
    let mut failures = Vec::new();
    for &(name, wrappers, expect) in EXPECTED {
        let path = dir.join(name);
        let (layers, mut reader) = open_decoded(&path);
        if layers != wrappers {
            failures.push(format!(
                "{name}: compression {layers:?}, expected {wrappers:?}"
            ));
            continue;
        }
        let head = read_head(&mut reader, name);
        let format = sniff_format(&head);
        match expect {
            Format(want) => {
                if format != want {
                    failures.push(format!("{name}: sniffed {format}, expected {want}"));
                }
                if matches!(want, Raw | Iso) {
                    let tail = read_tail(&mut reader, &head)
                        .unwrap_or_else(|e| panic!("{name}: reading: {e}"));
                    if let Some(found) = sniff_trailer(&tail) {
                        failures.push(format!("{name}: raw, but the trailer says {found}"));
                    }
                }
            }
            Trailer(want) => {
                if format != Raw {
                    failures.push(format!("{name}: head sniffed as {format}, expected raw"));
                }
                let tail = read_tail(&mut reader, &head)
                    .unwrap_or_else(|e| panic!("{name}: reading: {e}"));
                let found = sniff_trailer(&tail);
                if found != Some(want) {
                    failures.push(format!("{name}: trailer {found:?}, expected {want}"));
                }
            }
            DecodeFails(want) => match read_tail(&mut reader, &head) {
                Ok(_) => failures.push(format!("{name}: decoded without error")),
                Err(e) => {
                    if stream_error(&e).map(|se| se.to_string()).as_deref() != Some(want) {
                        failures.push(format!("{name}: error {e}, expected {want}"));
                    }
                }
            },
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The hostile qcow2 variants all start with a qcow2 header (one has a
/// damaged magic, one says version 1): each must go to the qcow2 reader or
/// be refused by name, never be imported as raw.
#[test]
fn hostile_qcow2_variants_are_never_raw() {
    let Some(dir) = corpus() else { return };
    let hostile = dir.join("hostile");
    let mut seen = 0;
    for entry in std::fs::read_dir(&hostile).expect("hostile/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "qcow2") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (layers, mut reader) = open_decoded(&path);
        assert!(layers.is_empty(), "{name}: {layers:?}");
        let format = sniff_format(&read_head(&mut reader, &name));
        let want = if name == "h02_version_1.qcow2" {
            Unsupported("qcow (version 1)")
        } else {
            Qcow2
        };
        assert_eq!(format, want, "{name}");
        seen += 1;
    }
    assert!(seen >= 70, "only {seen} hostile qcow2 files found");
}

/// Every file of the corpus (apart from its descriptions) is covered above.
#[test]
fn every_corpus_file_has_an_expectation() {
    let Some(dir) = corpus() else { return };
    let mut unlisted = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let described = rel.ends_with(".md") || rel.ends_with(".json");
            let hostile = rel.starts_with("hostile/") && rel.ends_with(".qcow2");
            if !described && !hostile && !EXPECTED.iter().any(|&(n, _, _)| n == rel) {
                unlisted.push(rel);
            }
        }
    }
    unlisted.sort();
    assert!(
        unlisted.is_empty(),
        "corpus files without an expectation: {unlisted:?}"
    );
}
