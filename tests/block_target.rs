//! The block-device target on real loop devices (512- and 4096-byte logical
//! sectors): images converted onto a device that holds random bytes read back
//! exactly as `qemu-img convert -O raw` writes them, and an image larger than
//! the device is refused before any byte of the device changes.
//!
//! Needs root and loop devices. Without them the tests say so and pass only
//! outside CI; with `CI` set they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{compare_prefix, convert, qemu_img, sha256_file};

/// A loop device over a sparse file, detached on drop.
struct LoopDevice {
    device: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    /// A device of `size` bytes with `sector` logical sectors, filled with
    /// random bytes so that nothing reads as zero by accident.
    fn new(size: u64, sector: u32) -> Option<LoopDevice> {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing.img");
        let file = std::fs::File::create(&backing).unwrap();
        file.set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show", "--sector-size", &sector.to_string()])
            .arg(&backing)
            .output();
        let device = match out {
            Ok(o) if o.status.success() => {
                PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
            }
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                common::skip(&format!("no loop device ({}); run as root", why.trim()));
                return None;
            }
        };
        let dev = LoopDevice { device, _dir: dir };
        let status = Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "status=none", "oflag=direct"])
            .arg(format!("of={}", dev.device.display()))
            .arg(format!("count={}", size >> 20))
            .status()
            .unwrap();
        assert!(status.success(), "filling the device");
        Some(dev)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn qemu_io(image: &Path, commands: &[&str]) {
    let mut cmd = Command::new("qemu-io");
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

/// Images whose extents start and end off 4 KiB boundaries: extended L2 with
/// 2 KiB subclusters, 512-byte clusters, compressed clusters, zero clusters.
fn make_images(dir: &Path) -> Vec<PathBuf> {
    let mut images = Vec::new();
    let specs: [(&str, &str, &[&str]); 3] = [
        (
            "extl2.qcow2",
            "extended_l2=on,cluster_size=64k",
            &[
                "write -P 0x11 2k 2k",
                "write -z 8k 2k",
                "write -P 0x22 70k 6k",
                "write -P 0x33 1m 300k",
            ],
        ),
        (
            "small-clusters.qcow2",
            "cluster_size=512",
            &[
                "write -P 0x44 512 1536",
                "write -P 0x55 100k 3k",
                "write -z 200k 4k",
            ],
        ),
        (
            "plain.qcow2",
            "cluster_size=65536",
            &[
                "write -P 0x66 0 192k",
                "write -z 2m 128k",
                "write -P 0x77 3m 64k",
            ],
        ),
    ];
    for (name, opts, writes) in specs {
        let path = dir.join(name);
        let run = qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            opts,
            path.to_str().unwrap(),
            "6M",
        ]);
        assert!(run.ok(), "{}", run.describe());
        qemu_io(&path, writes);
        images.push(path);
    }
    // A compressed copy of the plain one.
    let compressed = dir.join("compressed.qcow2");
    let run = qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        dir.join("plain.qcow2").to_str().unwrap(),
        compressed.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    images.push(compressed);
    images
}

fn converts_exactly_onto(sector: u32) {
    let Some(dev) = LoopDevice::new(16 << 20, sector) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for image in make_images(dir.path()) {
        let oracle = dir.path().join("oracle.raw");
        let run = qemu_img(&[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            oracle.to_str().unwrap(),
        ]);
        assert!(run.ok(), "{}", run.describe());
        let run = convert(&image, &dev.device, &[]);
        assert!(run.ok(), "{}: {}", image.display(), run.describe());
        let len = std::fs::metadata(&oracle).unwrap().len();
        if let Err(e) = compare_prefix(&dev.device, &oracle, len) {
            panic!("{} on {sector}-byte sectors: {e}", image.display());
        }
    }
}

#[test]
fn qcow2_images_read_back_exactly_from_a_512_byte_sector_device() {
    converts_exactly_onto(512);
}

#[test]
fn qcow2_images_read_back_exactly_from_a_4096_byte_sector_device() {
    converts_exactly_onto(4096);
}

#[test]
fn an_image_larger_than_the_device_is_refused_before_writing() {
    let Some(dev) = LoopDevice::new(8 << 20, 4096) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("big.qcow2");
    let run = qemu_img(&["create", "-f", "qcow2", image.to_str().unwrap(), "32M"]);
    assert!(run.ok(), "{}", run.describe());
    qemu_io(&image, &["write -P 0x99 0 1m"]);
    let before = sha256_file(&dev.device).unwrap();
    let run = convert(&image, &dev.device, &[]);
    assert!(!run.ok(), "a 32 MiB image must not fit an 8 MiB device");
    assert!(
        run.stderr
            .contains("is larger than the reported available storage"),
        "{}",
        run.describe()
    );
    assert_eq!(
        sha256_file(&dev.device).unwrap(),
        before,
        "the device changed"
    );
}

#[test]
fn a_compressed_raw_stream_larger_than_the_device_fails_as_too_small() {
    let Some(dev) = LoopDevice::new(8 << 20, 4096) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 12 MiB of raw data, gzip-compressed: its size is known only at the end.
    let raw: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    let image = dir.path().join("big.raw.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&image).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut encoder, &raw).unwrap();
    encoder.finish().unwrap();
    let run = convert(&image, &dev.device, &[]);
    assert!(!run.ok(), "12 MiB must not fit an 8 MiB device");
    assert!(
        run.stderr
            .contains("is larger than the reported available storage"),
        "CDI's too-small wording expected: {}",
        run.describe()
    );
}
