//! Recognizes the image format from its first bytes (never from a file name).
//!
//! This module owns format detection on the *decoded* stream (compression is
//! peeled off first, by [`crate::decode`]): [`sniff_format`] looks at the first
//! [`SNIFF_LEN`] bytes, [`sniff_trailer`] at the last 512 bytes for the two
//! formats that only have a trailer (DMG, fixed VHD).
//!
//! The magics and offsets follow the probe functions of qemu's block drivers
//! (`block/*.c`, `*_probe`), which decide what `qemu-img` thinks a file is.
//! Where qemu checks more than the magic (a version field, a header size), the
//! formats we do not convert are recognized by their magic alone: naming a
//! format we refuse is cheap, while importing a container's bytes as if they
//! were the disk would silently produce a broken disk. qcow2 is the exception
//! that matters: the magic with version 1 is the older qcow format, which
//! must not reach the qcow2 reader as qcow2; and "QFI" with a wrong fourth
//! byte is sent to the qcow2 reader (which refuses the bad magic) rather than
//! imported as raw bytes.
//!
//! Everything not recognized is raw, as in qemu and CDI; that includes tar
//! files (CDI imports a tar served as a disk image as the raw disk bytes).

use std::fmt;

/// How many leading bytes [`sniff_format`] wants to see (fewer is fine at EOF).
pub const SNIFF_LEN: usize = 64 * 1024;

/// How many trailing bytes [`sniff_trailer`] wants to see.
pub const TRAILER_LEN: usize = 512;

/// A recognized image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// qcow2, version 2 or 3.
    Qcow2,
    /// Bytes that are the disk.
    Raw,
    /// An ISO 9660 image (copied as raw).
    Iso,
    /// A format recognized but not converted; the name says which.
    Unsupported(&'static str),
}

impl ImageFormat {
    /// The short lower-case name: `"qcow2"`, `"raw"`, `"iso"`, or the name of
    /// the unsupported format (`"vmdk"`, `"qcow (version 1)"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
            ImageFormat::Iso => "iso",
            ImageFormat::Unsupported(name) => name,
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Magics at offset 0 of formats we recognize and do not convert.
const MAGICS_AT_ZERO: &[(&[u8], &str)] = &[
    // vmdk: sparse extent (VMDK4_MAGIC "KDMV") and ESX COW disk ("COWD").
    (b"KDMV", "vmdk"),
    (b"COWD", "vmdk"),
    // A vmdk text descriptor as VMware writes it (see also vmdk_descriptor).
    (b"# Disk DescriptorFile", "vmdk"),
    // vpc: dynamic and differencing VHDs carry a footer copy at offset 0.
    (b"conectix", "vhd"),
    (b"vhdxfile", "vhdx"),
    // parallels: HEADER_MAGIC and HEADER_MAGIC2.
    (b"WithoutFreeSpace", "parallels"),
    (b"WithouFreSpacExt", "parallels"),
    (b"Bochs Virtual HD Image", "bochs"),
    // cloop: the start of the V2.0 shell-script header.
    (b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop", "cloop"),
    (b"QED\0", "qed"),
    // LUKS1 and LUKS2 share the magic.
    (b"LUKS\xba\xbe", "luks (encrypted)"),
];

const QCOW_MAGIC: &[u8] = b"QFI\xfb";
/// VDI_SIGNATURE, little-endian, at offset 0x40 of the VDI header.
const VDI_SIGNATURE: &[u8] = &[0x7f, 0x10, 0xda, 0xbe];
const VDI_SIGNATURE_OFFSET: usize = 0x40;
/// ISO 9660 standard identifier, at byte 1 of a volume descriptor.
const ISO_ID: &[u8] = b"CD001";
/// Where the identifier may sit: the first volume descriptor (sector 16 of
/// 2048 bytes), and where libmagic also looks (0x8801, 0x9001).
const ISO_ID_OFFSETS: [usize; 3] = [0x8001, 0x8801, 0x9001];

/// Names the format of an image from its first bytes.
pub fn sniff_format(head: &[u8]) -> ImageFormat {
    if head.starts_with(QCOW_MAGIC) {
        // Too short to hold a version: let the qcow2 reader say so.
        return match head.get(4..8) {
            Some(&[0, 0, 0, 1]) => ImageFormat::Unsupported("qcow (version 1)"),
            _ => ImageFormat::Qcow2,
        };
    }
    if head.len() >= QCOW_MAGIC.len() && head.starts_with(&QCOW_MAGIC[..3]) {
        // "QFI" and a wrong fourth byte: a damaged qcow2 header, not a disk
        // (no boot sector or file system starts with "QFI"). The qcow2 reader
        // refuses it naming the bad magic; as raw it would be imported.
        return ImageFormat::Qcow2;
    }
    for &(magic, name) in MAGICS_AT_ZERO {
        if head.starts_with(magic) {
            return ImageFormat::Unsupported(name);
        }
    }
    if is_vdi(head) {
        return ImageFormat::Unsupported("vdi");
    }
    if vmdk_descriptor(head) {
        return ImageFormat::Unsupported("vmdk");
    }
    if ISO_ID_OFFSETS
        .iter()
        .any(|&at| head.get(at..at + ISO_ID.len()) == Some(ISO_ID))
    {
        return ImageFormat::Iso;
    }
    ImageFormat::Raw
}

/// VDI: the signature at 0x40 (what qemu checks), or the text line VirtualBox
/// and qemu write at offset 0 (`"<<< Oracle VM VirtualBox Disk Image >>>\n"`,
/// `"<<< QEMU VM Virtual Disk Image >>>\n"`, ...).
fn is_vdi(head: &[u8]) -> bool {
    let at = VDI_SIGNATURE_OFFSET;
    if head.get(at..at + VDI_SIGNATURE.len()) == Some(VDI_SIGNATURE) {
        return true;
    }
    let text = &head[..head.len().min(VDI_SIGNATURE_OFFSET)];
    text.starts_with(b"<<< ")
        && text
            .windows(b"Disk Image >>>".len())
            .any(|w| w == b"Disk Image >>>")
}

/// qemu's rule for a text vmdk descriptor (`vmdk_probe`): after comment lines
/// (`#...`) and blank lines made of spaces, a line `version=1`, `2` or `3`.
pub(crate) fn vmdk_descriptor(head: &[u8]) -> bool {
    let mut p = 0;
    while p < head.len() {
        match head[p] {
            b'#' => {
                while p < head.len() && head[p] != b'\n' {
                    p += 1;
                }
                p += 1;
            }
            b' ' => {
                while p < head.len() && head[p] == b' ' {
                    p += 1;
                }
                if head.get(p) == Some(&b'\r') {
                    p += 1;
                }
                if head.get(p) != Some(&b'\n') {
                    return false;
                }
                p += 1;
            }
            _ => {
                let rest = &head[p..];
                return [b'1', b'2', b'3'].iter().any(|&v| {
                    let line = [b"version=".as_slice(), &[v]].concat();
                    rest.starts_with(&line)
                        && (rest[line.len()..].starts_with(b"\n")
                            || rest[line.len()..].starts_with(b"\r\n"))
                });
            }
        }
    }
    false
}

/// Names a format recognized by its trailer, given the last up to
/// [`TRAILER_LEN`] bytes of the decoded stream (all of it if shorter).
///
/// A stream sees these only at EOF, so the raw reader calls this at the end
/// and refuses what it names: a DMG (UDIF "koly" block in the last 512 bytes)
/// or a fixed VHD (a raw disk followed by a 512-byte "conectix" footer; 511
/// bytes in images written by old Virtual PC versions). Dynamic VHDs have a
/// copy of the footer at offset 0 and are named by [`sniff_format`] already.
pub fn sniff_trailer(tail: &[u8]) -> Option<&'static str> {
    let last = |n: usize| tail.len().checked_sub(n).map(|at| &tail[at..]);
    if let Some(sector) = last(512) {
        if sector.starts_with(b"koly") {
            return Some("dmg");
        }
        if sector.starts_with(b"conectix") {
            return Some("vhd (fixed)");
        }
    }
    if last(511).is_some_and(|footer| footer.starts_with(b"conectix")) {
        return Some("vhd (fixed)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` zero bytes with `bytes` written at `at`.
    fn head_with(len: usize, at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; len.max(at + bytes.len())];
        head[at..at + bytes.len()].copy_from_slice(bytes);
        head
    }

    fn unsupported(head: &[u8]) -> &'static str {
        match sniff_format(head) {
            ImageFormat::Unsupported(name) => name,
            other => panic!("expected an unsupported format, got {other:?}"),
        }
    }

    #[test]
    fn qcow2_versions() {
        for version in [2u32, 3] {
            let head = [QCOW_MAGIC, &version.to_be_bytes()].concat();
            assert_eq!(sniff_format(&head), ImageFormat::Qcow2);
        }
        // Unknown versions go to the qcow2 reader, which names the version.
        for version in [0u32, 4, 0xffff_ffff] {
            let head = [QCOW_MAGIC, &version.to_be_bytes()].concat();
            assert_eq!(sniff_format(&head), ImageFormat::Qcow2);
        }
        let v1 = [QCOW_MAGIC, &1u32.to_be_bytes()].concat();
        assert_eq!(unsupported(&v1), "qcow (version 1)");
        // Magic alone: the reader reports the short header.
        assert_eq!(sniff_format(QCOW_MAGIC), ImageFormat::Qcow2);
        // A damaged magic goes to the reader too, which refuses it.
        assert_eq!(sniff_format(b"QFI\xfa\0\0\0\x03"), ImageFormat::Qcow2);
        assert_eq!(sniff_format(b"QFI\0"), ImageFormat::Qcow2);
    }

    #[test]
    fn magics_at_offset_zero() {
        let cases: &[(&[u8], &str)] = &[
            (b"KDMV\x01\0\0\0", "vmdk"),
            (b"COWD\x01\0\0\0", "vmdk"),
            (b"# Disk DescriptorFile\nversion=1\n", "vmdk"),
            (b"conectix\0\0\0\x02", "vhd"),
            (b"vhdxfile", "vhdx"),
            (b"WithoutFreeSpace\x02\0\0\0", "parallels"),
            (b"WithouFreSpacExt\x02\0\0\0", "parallels"),
            (b"Bochs Virtual HD Image\0\0", "bochs"),
            (
                b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$IMAGE && mount -r -t iso9660 \
                  /dev/cloop $1\n",
                "cloop",
            ),
            (b"QED\0", "qed"),
            (b"LUKS\xba\xbe\0\x01", "luks (encrypted)"),
            (b"LUKS\xba\xbe\0\x02", "luks (encrypted)"),
        ];
        for &(magic, name) in cases {
            let head = head_with(4096, 0, magic);
            assert_eq!(
                unsupported(&head),
                name,
                "{:?}",
                String::from_utf8_lossy(magic)
            );
            // The magic alone is enough.
            assert_eq!(unsupported(magic), name);
        }
    }

    #[test]
    fn near_misses_are_raw() {
        let cases: &[&[u8]] = &[
            b"KDM",
            b"conecti",
            b"vhdxfil",
            b"WithoutFreeSpac",
            b"QED",
            b"QED\x01",
            b"LUKS\xba",
            b"QFI",
            b"#!/bin/sh\n#V2.0 Format\n",
            b"# Disk Descriptor",
            b"<<< not a disk image >>>",
        ];
        for &bytes in cases {
            assert_eq!(sniff_format(bytes), ImageFormat::Raw, "{bytes:?}");
        }
    }

    #[test]
    fn vdi_signature_and_text() {
        let head = head_with(512, VDI_SIGNATURE_OFFSET, VDI_SIGNATURE);
        assert_eq!(unsupported(&head), "vdi");
        let text = b"<<< Oracle VM VirtualBox Disk Image >>>\n";
        assert_eq!(unsupported(&head_with(512, 0, text)), "vdi");
        let qemu_text = b"<<< QEMU VM Virtual Disk Image >>>\n";
        let mut head = head_with(512, 0, qemu_text);
        head[VDI_SIGNATURE_OFFSET..][..4].copy_from_slice(VDI_SIGNATURE);
        assert_eq!(unsupported(&head), "vdi");
        // Signature cut off by EOF.
        assert_eq!(
            sniff_format(&head_with(0x42, VDI_SIGNATURE_OFFSET, &[0x7f, 0x10])),
            ImageFormat::Raw
        );
    }

    #[test]
    fn vmdk_text_descriptor_as_qemu_probes_it() {
        for text in [
            &b"version=1\n"[..],
            b"# comment\nversion=2\n",
            b"   \n# Disk DescriptorFile\r\nversion=3\r\nCID=fffffffe\r\n",
            b"    \r\nversion=1\r\n",
        ] {
            assert_eq!(
                unsupported(text),
                "vmdk",
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        for text in [
            &b"version=4\n"[..],
            b"version=1",
            b"\nversion=1\n",
            b"  x\nversion=1\n",
            b"# only comments\n",
        ] {
            assert_eq!(
                sniff_format(text),
                ImageFormat::Raw,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn iso9660_at_each_offset() {
        for at in ISO_ID_OFFSETS {
            let head = head_with(SNIFF_LEN, at, ISO_ID);
            assert_eq!(sniff_format(&head), ImageFormat::Iso, "at {at:#x}");
        }
        assert_eq!(
            sniff_format(&head_with(0x8004, 0x8001, b"CD0")),
            ImageFormat::Raw
        );
        assert_eq!(
            sniff_format(&head_with(SNIFF_LEN, 0x8002, ISO_ID)),
            ImageFormat::Raw
        );
    }

    #[test]
    fn everything_else_is_raw() {
        assert_eq!(sniff_format(b""), ImageFormat::Raw);
        assert_eq!(sniff_format(&[0]), ImageFormat::Raw);
        assert_eq!(sniff_format(&vec![0u8; SNIFF_LEN]), ImageFormat::Raw);
        // An MBR boot sector.
        let mut mbr = head_with(512, 0, &[0xeb, 0x63, 0x90]);
        mbr[510..].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(sniff_format(&mbr), ImageFormat::Raw);
        // A tar file (ustar at 0x101) is imported as raw bytes, as CDI does.
        assert_eq!(
            sniff_format(&head_with(1024, 0x101, b"ustar\0")),
            ImageFormat::Raw
        );
    }

    #[test]
    fn names() {
        assert_eq!(ImageFormat::Qcow2.to_string(), "qcow2");
        assert_eq!(ImageFormat::Iso.name(), "iso");
        assert_eq!(ImageFormat::Unsupported("vhdx").to_string(), "vhdx");
    }

    #[test]
    fn trailer_dmg_and_fixed_vhd() {
        let mut disk = vec![0u8; 4096];
        assert_eq!(sniff_trailer(&disk[disk.len() - 512..]), None);
        disk[4096 - 512..][..4].copy_from_slice(b"koly");
        assert_eq!(sniff_trailer(&disk[disk.len() - 512..]), Some("dmg"));
        assert_eq!(sniff_trailer(&disk), Some("dmg"));

        let mut vhd = vec![0u8; 2048];
        vhd[2048 - 512..][..8].copy_from_slice(b"conectix");
        assert_eq!(sniff_trailer(&vhd[2048 - 512..]), Some("vhd (fixed)"));
        // Old Virtual PC: a 511-byte footer.
        let mut old = vec![0u8; 2047];
        old[2047 - 511..][..8].copy_from_slice(b"conectix");
        assert_eq!(sniff_trailer(&old[old.len() - 512..]), Some("vhd (fixed)"));
        assert_eq!(sniff_trailer(&old[old.len() - 511..]), Some("vhd (fixed)"));

        // Short streams and near misses.
        assert_eq!(sniff_trailer(b""), None);
        assert_eq!(sniff_trailer(b"koly"), None);
        assert_eq!(sniff_trailer(b"conectix"), None);
        let mut elsewhere = vec![0u8; 512];
        elsewhere[1..5].copy_from_slice(b"koly");
        assert_eq!(sniff_trailer(&elsewhere), None);
    }
}
