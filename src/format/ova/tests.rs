//! Unit tests of the OVA container on tars built here: the descriptor's disks,
//! the choice among several, and every OVA-level refusal.

use bytes::Bytes;

use super::{probe, read_disk, OvaError};
use crate::stream::ChunkStream;

fn ovf(files: &[(&str, &str)], disks: &[&str]) -> String {
    let refs: String = files
        .iter()
        .map(|(id, href)| format!(r#"<File ovf:id="{id}" ovf:href="{href}"/>"#))
        .collect();
    let disks: String = disks
        .iter()
        .map(|f| format!(r#"<Disk ovf:diskId="d-{f}" ovf:fileRef="{f}" ovf:capacity="1"/>"#))
        .collect();
    format!(
        r#"<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References>{refs}</References><DiskSection><Info>d</Info>{disks}</DiskSection></Envelope>"#
    )
}

fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, body) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, *body).unwrap();
    }
    builder.into_inner().unwrap()
}

/// The chosen disk's name and bytes, as the caller's reader sees them.
fn disk_of(ova: Vec<u8>, choice: Option<&str>) -> Result<(String, Vec<u8>), OvaError> {
    let mut stream = ChunkStream::from_bytes(Bytes::from(ova));
    read_disk(&mut stream, choice, |disk_stream, disk| {
        let mut bytes = Vec::new();
        // A truncated tar fails this read; read_disk then reports the tar's error.
        let _ = std::io::Read::read_to_end(disk_stream, &mut bytes);
        (disk.name.clone(), bytes)
    })
}

fn two_disks() -> Vec<u8> {
    let xml = ovf(
        &[("f1", "a.vmdk"), ("f2", "b.vdi"), ("f3", "x.iso")],
        &["f1", "f2"],
    );
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    tar(&[
        ("vm.ovf", xml.as_bytes()),
        ("vm.mf", b"SHA256(a.vmdk)= 00\n"),
        ("a.vmdk", b"disk a"),
        ("x.iso", b"an iso"),
        ("b.vdi", &big),
    ])
}

#[test]
fn the_probe_wants_a_ustar_whose_first_member_is_an_ovf() {
    assert!(probe(&two_disks()));
    let not_ovf = tar(&[("readme.txt", b"hi")]);
    assert!(!probe(&not_ovf));
    assert!(!probe(&[0u8; 1024]));
    assert!(!probe(b"short"));
}

#[test]
fn one_disk_converts_that_disk() {
    let xml = ovf(&[("file1", "disk1.img")], &["file1"]);
    let ova = tar(&[("vm.ovf", xml.as_bytes()), ("disk1.img", b"the disk bytes")]);
    let (name, bytes) = disk_of(ova, None).unwrap();
    assert_eq!(name, "disk1.img");
    assert_eq!(bytes, b"the disk bytes");
}

#[test]
fn several_disks_are_refused_naming_them_unless_one_is_chosen() {
    match disk_of(two_disks(), None) {
        Err(OvaError::SeveralDisks { disks }) => assert_eq!(disks, ["a.vmdk", "b.vdi"]),
        other => panic!("{other:?}"),
    }
    let (name, bytes) = disk_of(two_disks(), Some("b.vdi")).unwrap();
    assert_eq!(name, "b.vdi");
    assert_eq!(bytes.len(), 3_000_000);
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == (i % 253) as u8));
    assert_eq!(disk_of(two_disks(), Some("a.vmdk")).unwrap().1, b"disk a");
    match disk_of(two_disks(), Some("x.iso")) {
        Err(OvaError::UnknownDisk { name, disks }) => {
            assert_eq!(name, "x.iso");
            assert_eq!(disks.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

/// A defective OVA, and what its refusal must be.
type Case = (&'static str, Vec<u8>, fn(&OvaError) -> bool);

#[test]
fn ova_level_defects_are_refused() {
    let one = ovf(&[("f", "d.img")], &["f"]);
    let cases: Vec<Case> = vec![
        ("empty tar", tar(&[]), |e| {
            matches!(e, OvaError::Empty | OvaError::Tar(_))
        }),
        (
            "first member not ovf",
            tar(&[("d.img", b"x"), ("vm.ovf", one.as_bytes())]),
            |e| matches!(e, OvaError::FirstNotDescriptor { .. }),
        ),
        (
            "disk missing",
            tar(&[("vm.ovf", one.as_bytes()), ("other.img", b"x")]),
            |e| matches!(e, OvaError::DiskMissing { .. }),
        ),
        (
            "no disks",
            tar(&[("vm.ovf", ovf(&[("f", "d.img")], &[]).as_bytes())]),
            |e| matches!(e, OvaError::NoDisks),
        ),
        (
            "bad xml",
            tar(&[(
                "vm.ovf",
                b"<Envelope><File ovf:id='f' ovf:href='d'></Envelope>",
            )]),
            |e| matches!(e, OvaError::BadDescriptor { .. }),
        ),
        (
            "dangling fileRef",
            tar(&[("vm.ovf", ovf(&[("f", "d.img")], &["g"]).as_bytes())]),
            |e| matches!(e, OvaError::BadDescriptor { .. }),
        ),
        (
            "compressed disk",
            tar(&[(
                "vm.ovf",
                one.replace("ovf:href=", "ovf:compression=\"gzip\" ovf:href=")
                    .as_bytes(),
            )]),
            |e| matches!(e, OvaError::UnsupportedStorage { .. }),
        ),
        (
            "descriptor too large",
            tar(&[(
                "vm.ovf",
                &vec![b' '; (super::pump::DESCRIPTOR_LIMIT + 1) as usize],
            )]),
            |e| matches!(e, OvaError::DescriptorTooLarge { .. }),
        ),
    ];
    for (what, ova, expected) in cases {
        match disk_of(ova, None) {
            Err(e) => assert!(expected(&e), "{what}: {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
}

#[test]
fn a_tar_ending_inside_the_disk_is_truncated() {
    let xml = ovf(&[("f", "d.img")], &["f"]);
    let mut ova = tar(&[("vm.ovf", xml.as_bytes()), ("d.img", &vec![7u8; 100_000])]);
    ova.truncate(ova.len() - 2048 - 50_000);
    match disk_of(ova, None) {
        Err(OvaError::Truncated { got, size, .. }) => {
            assert_eq!(size, 100_000);
            assert!(got < size);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reader_that_stops_early_does_not_hang_the_tar_side() {
    let xml = ovf(&[("f", "d.img")], &["f"]);
    let ova = tar(&[("vm.ovf", xml.as_bytes()), ("d.img", &vec![7u8; 20 << 20])]);
    let mut stream = ChunkStream::from_bytes(Bytes::from(ova));
    let first = read_disk(&mut stream, None, |disk_stream, _| {
        disk_stream.next_chunk().unwrap().map(|c| c.len())
    })
    .unwrap();
    assert_eq!(first, Some(crate::stream::CHUNK_SIZE));
}
