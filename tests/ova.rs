//! OVA (a tar of an `.ovf` descriptor and its disks), built here with the `tar`
//! crate from disks made by qemu-img / qemu-io (VDI, qcow2, raw): an OVA with one
//! disk converts that disk exactly as `qemu-img convert -O raw` converts the disk
//! itself, plain and gzip-wrapped, from a file and from stdin; with two disks it
//! is refused naming both, and `--ova-disk` picks either; `info --json` names the
//! disk; OVA-level defects are refused naming the defect, leaving no target.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// A disk made by qemu: (file name in the OVA, path, oracle).
struct Disk {
    name: &'static str,
    path: PathBuf,
    oracle: PathBuf,
}

fn qemu_io(format: &str, image: &Path, commands: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", format]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let status = cmd
        .arg(image)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "qemu-io {commands:?}");
}

fn make_disk(dir: &Path, name: &'static str, format: &str, size: &str, writes: &[&str]) -> Disk {
    let path = dir.join(name);
    let run = qemu_img(&["create", "-q", "-f", format, path.to_str().unwrap(), size]);
    assert!(run.ok(), "{}", run.describe());
    qemu_io(format, &path, writes);
    let oracle = dir.join(format!("{name}.oracle"));
    let run = qemu_img(&[
        "convert",
        "-O",
        "raw",
        path.to_str().unwrap(),
        oracle.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    Disk { name, path, oracle }
}

fn descriptor(disks: &[&str]) -> String {
    let files: String = disks
        .iter()
        .enumerate()
        .map(|(i, d)| format!(r#"    <File ovf:href="{d}" ovf:id="file{i}"/>"#))
        .collect::<Vec<_>>()
        .join("\n");
    let disk_lines: String = disks
        .iter()
        .enumerate()
        .map(|(i, _)| {
            format!(
                r#"    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}"/>"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References>
{files}
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
{disk_lines}
  </DiskSection>
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// vm.ovf, vm.mf, then the disks, as ovftool and VirtualBox order them.
fn make_ova(path: &Path, disks: &[&Disk]) {
    let names: Vec<&str> = disks.iter().map(|d| d.name).collect();
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, body: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, body).unwrap();
    };
    add("vm.ovf", descriptor(&names).as_bytes());
    let manifest: String = names.iter().map(|n| format!("SHA256({n})= 00\n")).collect();
    add("vm.mf", manifest.as_bytes());
    for d in disks {
        add(d.name, &std::fs::read(&d.path).unwrap());
    }
    builder.finish().unwrap();
}

fn gzip(path: &Path) -> PathBuf {
    let status = Command::new("gzip")
        .arg("-k")
        .arg("-f")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
    PathBuf::from(format!("{}.gz", path.display()))
}

struct Fixture {
    dir: tempfile::TempDir,
    vdi: Disk,
    qcow2: Disk,
    raw: Disk,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let vdi = make_disk(
        dir.path(),
        "disk1.vdi",
        "vdi",
        "12M",
        &[
            "write -P 0x31 9M 64k",
            "write -P 0x32 0 4k",
            "write -z 9M 4k",
        ],
    );
    let qcow2 = make_disk(
        dir.path(),
        "disk2.qcow2",
        "qcow2",
        "10M",
        &["write -P 0x41 1M 128k", "write -P 0x42 7M 4k"],
    );
    let raw = make_disk(
        dir.path(),
        "data.img",
        "raw",
        "3M",
        &["write -P 0x51 512 1k"],
    );
    Fixture {
        dir,
        vdi,
        qcow2,
        raw,
    }
}

fn converts_to(input: &Path, extra: &[&str], oracle: &Path, what: &str) {
    let target = input.with_extension("out");
    let run = convert(input, &target, extra);
    assert!(run.ok(), "{what}: {}", run.describe());
    compare_files(&target, oracle).unwrap_or_else(|e| panic!("{what}: {e}"));
    check_sparse(&target, nonzero_4k_bytes(oracle)).unwrap_or_else(|e| panic!("{what}: {e}"));
    std::fs::remove_file(&target).unwrap();
}

#[test]
fn an_ova_with_one_disk_converts_that_disk() {
    let f = fixture();
    let mut count = 0;
    for disk in [&f.vdi, &f.qcow2, &f.raw] {
        let ova = f.dir.path().join(format!("one-{}.ova", disk.name));
        make_ova(&ova, &[disk]);
        converts_to(&ova, &[], &disk.oracle, disk.name);
        converts_to(&gzip(&ova), &[], &disk.oracle, disk.name);
        let target = f.dir.path().join("stdin.out");
        let run = convert_stdin(&ova, &target, &[]);
        assert!(run.ok(), "stdin {}: {}", disk.name, run.describe());
        compare_files(&target, &disk.oracle).unwrap();
        count += 3;
    }
    note(&format!(
        "ova: {count} one-disk OVAs (vdi, qcow2, raw disks; plain, gzip, stdin) identical to \
         qemu-img convert of the disk"
    ));
}

#[test]
fn info_names_the_ova_disk_and_its_format() {
    let f = fixture();
    let ova = f.dir.path().join("one.ova");
    make_ova(&ova, &[&f.vdi]);
    let run = diskimport(&["info".as_ref(), ova.as_os_str(), "--json".as_ref()]);
    assert!(run.ok(), "{}", run.describe());
    let info: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(info["format"], "vdi", "{info}");
    assert_eq!(info["subformat"], "dynamic", "{info}");
    assert_eq!(info["container"], "ova", "{info}");
    assert_eq!(info["ova_disk"], "disk1.vdi", "{info}");
    assert_eq!(info["virtual_size"], 12 << 20, "{info}");
    let run = diskimport(&["info".as_ref(), ova.as_os_str(), "--map".as_ref()]);
    assert!(run.ok(), "{}", run.describe());
    let ours: Value = serde_json::from_slice(&run.stdout).unwrap();
    let qemu = qemu_img(&["map", "--output=json", f.vdi.path.to_str().unwrap()]);
    let qemu: Value = serde_json::from_slice(&qemu.stdout).unwrap();
    assert_eq!(ours, qemu, "the OVA disk's map is the disk's map");
}

#[test]
fn an_ova_with_two_disks_is_refused_naming_them_unless_one_is_chosen() {
    let f = fixture();
    let ova = f.dir.path().join("two.ova");
    make_ova(&ova, &[&f.vdi, &f.qcow2]);
    let target = f.dir.path().join("two.out");
    let run = convert(&ova, &target, &[]);
    check_refusal(&run, &target, &["--ova-disk"]).unwrap();
    assert!(
        run.stderr.contains("disk1.vdi") && run.stderr.contains("disk2.qcow2"),
        "both disks named: {}",
        run.describe()
    );
    for disk in [&f.vdi, &f.qcow2] {
        converts_to(&ova, &["--ova-disk", disk.name], &disk.oracle, disk.name);
    }
    let run = convert(&ova, &target, &["--ova-disk", "vm.mf"]);
    check_refusal(&run, &target, &["no disk \"vm.mf\""]).unwrap();
    let run = diskimport(&[
        "info".as_ref(),
        ova.as_os_str(),
        "--json".as_ref(),
        "--ova-disk".as_ref(),
        "disk2.qcow2".as_ref(),
    ]);
    let info: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    note("ova: two-disk OVA refused naming both disks; --ova-disk converted each exactly");
}

#[test]
fn ova_defects_are_refused_naming_the_defect() {
    let f = fixture();
    let ova = f.dir.path().join("good.ova");
    make_ova(&ova, &[&f.vdi]);
    let good = std::fs::read(&ova).unwrap();
    let mut variants: Vec<(&str, Vec<u8>, &[&str])> = Vec::new();
    // The tar ends inside the disk: the disk's bytes stop half way.
    variants.push((
        "truncated inside the disk",
        good[..good.len() - 1024 - (1 << 20)].to_vec(),
        &["truncated"],
    ));
    // A descriptor naming a disk the tar does not hold.
    let mut missing = good.clone();
    let at = find(&missing, b"ovf:href=\"disk1.vdi\"").unwrap();
    missing[at + 10..at + 19].copy_from_slice(b"diskX.vdi");
    fix_checksum(&mut missing, 0);
    variants.push(("a disk not in the tar", missing, &["not a member"]));
    // A corrupt tar header checksum on the disk's member.
    let mut corrupt = good.clone();
    let member = find(&corrupt, b"disk1.vdi\0").unwrap();
    corrupt[member + 148] ^= 0x01;
    variants.push(("a corrupt tar header", corrupt, &["checksum", "tar"]));
    // The disk inside is itself hostile: a VDI differencing image.
    let mut child = good.clone();
    let vdi = member + 512;
    child[vdi + 76] = 4;
    variants.push(("a differencing VDI inside", child, &["differencing"]));
    let mut failures = Vec::new();
    for (i, (what, bytes, keywords)) in variants.iter().enumerate() {
        let input = f.dir.path().join(format!("bad{i}.ova"));
        std::fs::write(&input, bytes).unwrap();
        let target = f.dir.path().join(format!("bad{i}.out"));
        let run = convert(&input, &target, &[]);
        if let Err(why) = check_refusal(&run, &target, keywords) {
            failures.push(format!("{what}: {why}"));
        }
    }
    note(&format!(
        "ova: {} of {} defective OVAs refused naming the defect",
        variants.len() - failures.len(),
        variants.len()
    ));
    finish("ova defects", failures);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Recomputes the ustar header checksum of the member whose header is at `at`.
fn fix_checksum(tar: &mut [u8], at: usize) {
    let header = &mut tar[at..at + 512];
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
}
