//! Real faults, real devices: nothing wrong ever looks finished.
//!
//! - ENOSPC: a tmpfs with a size fills up during an import (filled by the test
//!   while `gate_proxy.py` holds the body part-way, after the import measured
//!   the free space), and
//!   during a `convert`: exit 1 with CDI's "no space left on device", no file.
//! - EIO: a loop device over a 64 MiB sparse file on a 16 MiB tmpfs; O_DIRECT
//!   writes fail once the tmpfs is full: the device's first and last MiB read
//!   back as zeroes afterwards.
//! - Checksum mismatch on 512 B and 4 KiB sector loop devices filled with random
//!   bytes: exit 0 with CDI's fatal "checksum mismatch" message, first and last
//!   MiB zero.
//! - kill -9 mid-transfer and once everything was read (the final flush and
//!   rename or the first MiB's write), on a file and on a block target: the
//!   target never looks finished, and the next attempt with the same
//!   environment is byte-identical to `qemu-img convert -O raw`.
//!
//! Each waits for an observable state (the status endpoint's byte counts, the
//! gate proxy holding the body part-way), not for a time. Everything needs root (mounts, loop devices); without it the
//! tests are skipped visibly, and fail under CI.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{compare_files, qemu_img, require_root, WatchedImport, BIN};
use servers::{require_servers, Faulty, GateProxy};

const MIB: u64 = 1 << 20;

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A loop device over `backing`; detached on drop.
struct Loop {
    device: PathBuf,
}

impl Loop {
    fn attach(backing: &Path, sector: u32) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show", "--sector-size", &sector.to_string()])
            .arg(backing)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            device: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }

    /// Fills the device with random bytes, as a used volume would be.
    fn fill_random(&self) {
        let status = Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "oflag=direct", "status=none"])
            .arg(format!("of={}", self.device.display()))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        // dd stops with "No space left on device" at the end of the device.
        let _ = status;
    }

    fn size(&self) -> u64 {
        let out = Command::new("blockdev")
            .arg("--getsize64")
            .arg(&self.device)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Non-zero bytes in the device's first and last MiB.
    fn edges_nonzero(&self) -> (usize, usize) {
        let size = self.size();
        let read = |at: u64| {
            let mut f = fs::File::open(&self.device).unwrap();
            f.seek(SeekFrom::Start(at)).unwrap();
            let mut buf = vec![0u8; MIB as usize];
            f.read_exact(&mut buf).unwrap();
            buf.iter().filter(|&&b| b != 0).count()
        };
        // Drop cached pages: the sink wrote with O_DIRECT.
        let _ = Command::new("blockdev")
            .arg("--flushbufs")
            .arg(&self.device)
            .status();
        (read(0), read(size - MIB))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// `data` bytes of random content at the start of a `virtual_mib` disk, as
/// qcow2, with its qemu-img raw oracle.
struct Image {
    dir: tempfile::TempDir,
    qcow2: PathBuf,
    oracle: PathBuf,
}

fn make_image(data_mib: u64, virtual_mib: u64) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("source.raw");
    let mut bytes = vec![0u8; (data_mib * MIB) as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(&raw, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&raw)
        .unwrap()
        .set_len(virtual_mib * MIB)
        .unwrap();
    let qcow2 = dir.path().join("disk.qcow2");
    let run = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    let oracle = dir.path().join("oracle.raw");
    let run = qemu_img(&[
        "convert",
        "-O",
        "raw",
        qcow2.to_str().unwrap(),
        oracle.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    fs::remove_file(&raw).unwrap();
    Image { dir, qcow2, oracle }
}

/// What every test here needs: root, qemu-img, python3 and the servers.
fn ready() -> Option<PathBuf> {
    if !require_root("mounting tmpfs and attaching loop devices") {
        return None;
    }
    require_servers(&["python3", "qemu-img", "losetup", "mount", "dd", "blockdev"])
}

/// A CDI-shaped root (data/, dev/) for `diskimport import`.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("data")).unwrap();
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        Root { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn termination(&self) -> String {
        fs::read_to_string(self.path().join("dev/termination-log")).unwrap_or_default()
    }
    fn data_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
    /// The entrypoint as CDI starts it, with exactly `env`.
    fn command(&self, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["-alsologtostderr", "-v=1"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DISKIMPORT_ROOT", self.path())
            .env("DISKIMPORT_STATUS_ADDR", "127.0.0.1")
            .env("DISKIMPORT_STATUS_PORT", "0")
            .env("IMPORTER_SOURCE", "http")
            .env("IMPORTER_CONTENTTYPE", "kubevirt")
            .env("OWNER_UID", "faults")
            .env("PREALLOCATION", "false")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }
    /// Runs the import to its end: (exit code, stderr).
    fn import(&self, env: &[(&str, &str)]) -> (i32, String) {
        let (status, stderr) = WatchedImport::spawn(self.command(env)).wait();
        (status.code().unwrap_or(-1), stderr)
    }
}

fn bytes_read(status: &serde_json::Value) -> u64 {
    status["bytes_read"].as_u64().unwrap_or(0)
}

fn bytes_total(status: &serde_json::Value) -> u64 {
    status["bytes_total"].as_u64().unwrap_or(u64::MAX)
}

// ---- ENOSPC ------------------------------------------------------------------

#[test]
fn enospc_during_an_import_fails_with_cdis_message_and_leaves_no_disk() {
    let Some(servers) = ready() else { return };
    let image = make_image(12, 32);
    let server = Faulty::start(&servers, &image.dir.path().join("srv"), &image.qcow2, &[]);
    // The body stops after 4 MB until the volume is full: the import is
    // provably mid-transfer when the space goes, whatever the speed.
    let mut gate = GateProxy::start(
        &image.dir.path().join("gate"),
        server.port,
        &["--hold-after", "4000000"],
    );
    let root = Root::new();
    let volume = Tmpfs::mount("48m");
    fs::remove_dir(root.path().join("data")).unwrap();
    std::os::unix::fs::symlink(volume.path(), root.path().join("data")).unwrap();
    let url = gate.url("disk.qcow2");
    let mut import = WatchedImport::spawn(root.command(&[
        ("IMPORTER_ENDPOINT", &url),
        ("IMPORTER_IMAGE_SIZE", "32Mi"),
        ("FILESYSTEM_OVERHEAD", "0"),
    ]));
    // The free space was measured before the transfer began; now another
    // writer takes all of it. The held first MiB alone needs space later.
    let held = gate.wait_holding(|| import.child.try_wait().unwrap().is_some());
    assert!(held, "the body never reached the gate: {}", import.stderr());
    let transferring = import.wait_for("transferring", |s| {
        s["phase"] == "transferring" && bytes_read(s) > 0
    });
    assert!(transferring.is_some(), "ended early: {}", import.stderr());
    let filler = volume.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    gate.release();
    let (status, stderr) = import.wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let text = root.termination();
    assert!(
        text.contains("no space left on device"),
        "CDI keys on this text: {text}"
    );
    fs::remove_file(&filler).unwrap();
    assert_eq!(
        root.data_entries(),
        Vec::<String>::new(),
        "nothing may be left"
    );
}

#[test]
fn enospc_during_a_convert_fails_naming_it_and_leaves_no_file() {
    let Some(_) = ready() else { return };
    let image = make_image(40, 40);
    let volume = Tmpfs::mount("24m");
    let target = volume.path().join("disk.img");
    let run = common::convert(&image.qcow2, &target, &[]);
    assert!(!run.ok(), "{}", run.describe());
    assert!(
        run.stderr
            .to_lowercase()
            .contains("no space left on device"),
        "{}",
        run.describe()
    );
    let left: Vec<_> = fs::read_dir(volume.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

// ---- EIO ---------------------------------------------------------------------

#[test]
fn eio_part_way_leaves_a_block_device_that_does_not_look_like_a_disk() {
    let Some(_) = ready() else { return };
    let image = make_image(40, 48);
    let backing_fs = Tmpfs::mount("16m");
    let backing = backing_fs.path().join("device.img");
    fs::File::create(&backing)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let device = Loop::attach(&backing, 512);
    let run = common::convert(&image.qcow2, &device.device, &[]);
    assert!(!run.ok(), "writes past the full tmpfs must fail");
    assert!(
        run.stderr.contains("Input/output error") || run.stderr.contains("No space left"),
        "{}",
        run.describe()
    );
    assert_eq!(
        device.edges_nonzero(),
        (0, 0),
        "first/last MiB must be zero"
    );
}

// ---- checksum mismatch on block devices --------------------------------------------

fn checksum_mismatch_on_block(sector: u32) {
    let Some(servers) = ready() else { return };
    let image = make_image(6, 16);
    let server = Faulty::start(&servers, &image.dir.path().join("srv"), &image.qcow2, &[]);
    let backing = image.dir.path().join("device.img");
    fs::File::create(&backing)
        .unwrap()
        .set_len(24 * MIB)
        .unwrap();
    let device = Loop::attach(&backing, sector);
    device.fill_random();
    let root = Root::new();
    std::os::unix::fs::symlink(&device.device, root.path().join("dev/cdi-block-volume")).unwrap();
    let url = server.url("disk.qcow2");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (code, stderr) = root.import(&[
        ("IMPORTER_ENDPOINT", &url),
        ("IMPORTER_CHECKSUM", &wrong),
        ("FILESYSTEM_OVERHEAD", "0"),
    ]);
    // CDI: exit 0, the JSON message carries "checksum mismatch" (fatal).
    assert_eq!(code, 0, "{stderr}");
    let text = root.termination();
    assert!(
        text.starts_with('{') && text.contains("checksum mismatch"),
        "{text}"
    );
    assert!(!text.contains("Import Complete"), "{text}");
    assert_eq!(
        device.edges_nonzero(),
        (0, 0),
        "first/last MiB must be zero"
    );
}

#[test]
fn checksum_mismatch_on_a_512_byte_sector_device_leaves_its_edges_zero() {
    checksum_mismatch_on_block(512);
}

#[test]
fn checksum_mismatch_on_a_4k_sector_device_leaves_its_edges_zero() {
    checksum_mismatch_on_block(4096);
}

// ---- a raw stream's trailer is judged before its tail reaches the device ---------------

#[test]
fn a_dmg_served_as_raw_is_refused_and_never_written_as_a_disk() {
    let Some(_) = ready() else { return };
    let image = make_image(6, 8);
    // A DMG (UDIF) is recognized only by its 512-byte "koly" trailer at the end,
    // after everything before it streamed through as raw bytes. (A fixed VHD,
    // recognized the same way, is converted: its footer is dropped.)
    let dmg = image.dir.path().join("disk.dmg");
    let mut bytes = fs::read(&image.oracle).unwrap();
    let mut trailer = vec![0u8; 512];
    trailer[..4].copy_from_slice(b"koly");
    trailer[4..8].copy_from_slice(&4u32.to_be_bytes());
    trailer[8..12].copy_from_slice(&512u32.to_be_bytes());
    bytes.extend_from_slice(&trailer);
    fs::write(&dmg, &bytes).unwrap();
    let backing = image.dir.path().join("device.img");
    fs::File::create(&backing)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let device = Loop::attach(&backing, 4096);
    device.fill_random();
    let run = common::convert(&dmg, &device.device, &[]);
    assert!(!run.ok(), "{}", run.describe());
    assert!(run.stderr.contains("dmg"), "{}", run.describe());
    assert_eq!(
        device.edges_nonzero(),
        (0, 0),
        "first/last MiB must be zero"
    );
}

// ---- kill -9, then the same import again -----------------------------------------

/// When to kill the first attempt.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// A third of the source read.
    MidTransfer,
    /// All of the source read: the last writes, the flush, the first MiB.
    FinalSync,
}

fn kill_then_retry(block: bool, point: KillPoint) {
    let Some(servers) = ready() else { return };
    let image = make_image(16, 32);
    let server = Faulty::start(&servers, &image.dir.path().join("srv"), &image.qcow2, &[]);
    // Mid-transfer is made, not waited for: the body stops at a third until
    // the kill (the gate holds only that first connection).
    let third = (fs::metadata(&image.qcow2).unwrap().len() / 3).to_string();
    let mut gate = matches!(point, KillPoint::MidTransfer).then(|| {
        GateProxy::start(
            &image.dir.path().join("gate"),
            server.port,
            &["--hold-after", &third],
        )
    });
    let root = Root::new();
    let device = block.then(|| {
        let backing = image.dir.path().join("device.img");
        fs::File::create(&backing)
            .unwrap()
            .set_len(40 * MIB)
            .unwrap();
        let device = Loop::attach(&backing, 4096);
        device.fill_random();
        std::os::unix::fs::symlink(&device.device, root.path().join("dev/cdi-block-volume"))
            .unwrap();
        device
    });
    let url = match &gate {
        Some(gate) => gate.url("disk.qcow2"),
        None => server.url("disk.qcow2"),
    };
    let env = [
        ("IMPORTER_ENDPOINT", url.as_str()),
        ("IMPORTER_IMAGE_SIZE", "32Mi"),
        ("FILESYSTEM_OVERHEAD", "0"),
    ];
    let mut first = WatchedImport::spawn(root.command(&env));
    let reached = match (point, &mut gate) {
        (KillPoint::MidTransfer, Some(gate)) => {
            let held = gate.wait_holding(|| first.child.try_wait().unwrap().is_some());
            assert!(held, "the body never reached the gate: {}", first.stderr());
            let reached = first.wait_for("mid-transfer", |s| bytes_read(s) > 0);
            assert!(reached.is_some(), "ended early: {}", first.stderr());
            reached
        }
        _ => first.wait_for(&format!("{point:?}"), |s| bytes_read(s) >= bytes_total(s)),
    };
    first.kill9();
    if reached.is_some() {
        // Killed: nothing may look finished.
        match &device {
            Some(device) => {
                let (head, _) = device.edges_nonzero();
                let complete =
                    common::compare_prefix(&device.device, &image.oracle, 32 * MIB).is_ok();
                assert!(
                    head == 0 || complete,
                    "a killed import left a first MiB on an unfinished device ({point:?})"
                );
            }
            None => assert!(
                !root.path().join("data/disk.img").exists()
                    || point_was_too_late(&root, &image.oracle),
                "a killed import left disk.img ({point:?})"
            ),
        }
    } else {
        common::note(&format!(
            "kill -9 ({point:?}): the first attempt finished before the kill"
        ));
    }
    let (code, stderr) = root.import(&env);
    assert_eq!(code, 0, "{stderr}");
    match &device {
        Some(device) => {
            common::compare_prefix(&device.device, &image.oracle, 32 * MIB).unwrap();
        }
        None => compare_files(&root.path().join("data/disk.img"), &image.oracle).unwrap(),
    }
}

/// A disk.img present after the kill is acceptable only if it is the whole,
/// correct disk (the kill came after the rename).
fn point_was_too_late(root: &Root, oracle: &Path) -> bool {
    compare_files(&root.path().join("data/disk.img"), oracle).is_ok()
}

#[test]
fn kill9_mid_transfer_into_a_file_then_a_retry_matches_qemu_img() {
    kill_then_retry(false, KillPoint::MidTransfer);
}

#[test]
fn kill9_at_the_final_sync_of_a_file_then_a_retry_matches_qemu_img() {
    kill_then_retry(false, KillPoint::FinalSync);
}

#[test]
fn kill9_mid_transfer_onto_a_block_device_then_a_retry_matches_qemu_img() {
    kill_then_retry(true, KillPoint::MidTransfer);
}

#[test]
fn kill9_at_the_final_sync_of_a_block_device_then_a_retry_matches_qemu_img() {
    kill_then_retry(true, KillPoint::FinalSync);
}
