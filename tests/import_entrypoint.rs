//! `diskimport import`, run as CDI runs its importer: the real binary with
//! CDI's environment, paths under a temporary root, a real nginx as the http
//! source. Checks the bytes of `/data/disk.img` (or of a loop device behind
//! `/dev/cdi-block-volume`) against `qemu-img convert`, the exact termination
//! message, and the exit status, for success and for each failure kind.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{compare_prefix, qemu_img, BIN};
use servers::{require_servers, GateProxy, Nginx};

const SUCCESS: &str =
    r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"message":"Import Complete"}"#;

/// A CDI-shaped root: data/, dev/ (and a termination log written there).
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
    fn disk(&self) -> PathBuf {
        self.path().join("data/disk.img")
    }
    fn termination(&self) -> String {
        fs::read_to_string(self.path().join("dev/termination-log")).unwrap_or_default()
    }

    /// The entrypoint as CDI starts it (`-alsologtostderr -v=1`, no
    /// subcommand) with exactly `env`, the status endpoint on loopback.
    fn command(&self, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["-alsologtostderr", "-v=1"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DISKIMPORT_ROOT", self.path())
            .env("DISKIMPORT_STATUS_ADDR", "127.0.0.1")
            .env("DISKIMPORT_STATUS_PORT", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// Runs the entrypoint to its end; returns (exit code, stderr).
    fn import(&self, env: &[(&str, &str)]) -> (i32, String) {
        let mut child = self.command(env).stderr(Stdio::piped()).spawn().unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("import did not finish in 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (status.code().unwrap_or(-1), stderr)
    }
}

/// A small qcow2 image, a VHDX of the same disk, and their raw oracle, served by nginx.
struct Served {
    nginx: Nginx,
    base: String,
    oracle: PathBuf,
    /// nginx's document root.
    www: PathBuf,
    _dir: tempfile::TempDir,
}

fn serve_image() -> Option<Served> {
    let mut needs = Nginx::NEEDS.to_vec();
    needs.push("qemu-img");
    let servers_dir = require_servers(&needs)?;
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    fs::create_dir_all(&www).unwrap();
    let image = www.join("disk.qcow2");
    let raw = dir.path().join("source.raw");
    let mut data = vec![0u8; 3 << 20];
    for (i, b) in data.iter_mut().enumerate().take(2 << 20) {
        *b = (i as u64).wrapping_mul(2_654_435_761).to_le_bytes()[3];
    }
    fs::write(&raw, &data).unwrap();
    let run = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-c",
        raw.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    let vhdx = www.join("disk.vhdx");
    let run = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vhdx",
        "-o",
        "block_size=1M",
        raw.to_str().unwrap(),
        vhdx.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    for (file, format, options) in [
        ("disk.vmdk", "vmdk", "subformat=streamOptimized"),
        ("disk.vdi", "vdi", "static=off"),
    ] {
        let out = www.join(file);
        let run = qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            format,
            "-o",
            options,
            raw.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(run.ok(), "{}", run.describe());
    }
    let oracle = dir.path().join("oracle.raw");
    let run = qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        oracle.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    let nginx = Nginx::start(&servers_dir, &dir.path().join("nginx"), &www);
    let base = nginx.http("");
    Some(Served {
        nginx,
        base,
        oracle,
        www,
        _dir: dir,
    })
}

#[test]
fn http_import_to_a_filesystem_volume_matches_qemu_img_and_fills_the_volume() {
    import_to_a_filesystem_volume("disk.qcow2");
}

#[test]
fn http_import_of_a_vhdx_to_a_filesystem_volume_matches_qemu_img() {
    import_to_a_filesystem_volume("disk.vhdx");
}

#[test]
fn http_import_of_a_vmdk_to_a_filesystem_volume_matches_qemu_img() {
    import_to_a_filesystem_volume("disk.vmdk");
}

#[test]
fn http_import_of_a_vdi_to_a_filesystem_volume_matches_qemu_img() {
    import_to_a_filesystem_volume("disk.vdi");
}

fn import_to_a_filesystem_volume(file: &str) {
    let Some(served) = serve_image() else { return };
    let root = Root::new();
    let url = format!("{}{file}", served.base);
    let (code, stderr) = root.import(&[
        ("IMPORTER_SOURCE", "http"),
        ("IMPORTER_ENDPOINT", &url),
        ("IMPORTER_CONTENTTYPE", "kubevirt"),
        ("IMPORTER_IMAGE_SIZE", "64Mi"),
        ("FILESYSTEM_OVERHEAD", "0"),
        ("OWNER_UID", "uid-1"),
        ("PREALLOCATION", "false"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(root.termination(), SUCCESS);
    let oracle_len = fs::metadata(&served.oracle).unwrap().len();
    compare_prefix(&root.disk(), &served.oracle, oracle_len).unwrap();
    let disk = fs::read(root.disk()).unwrap();
    assert_eq!(
        disk.len() as u64,
        64 << 20,
        "grown to the volume's usable size"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(root.disk()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "CDI's mode for disk.img");
    assert!(disk[oracle_len as usize..].iter().all(|b| *b == 0));
}

#[test]
fn leftovers_of_a_killed_attempt_are_cleared_before_sizing() {
    let Some(served) = serve_image() else { return };
    let root = Root::new();
    // A killed attempt: its disk (sparse, far larger than the volume) and the
    // temporary file it was writing.
    fs::File::create(root.disk())
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let stale = root.disk().with_file_name(".diskimport-Ab12Cd.partial");
    fs::write(&stale, vec![9u8; 1 << 20]).unwrap();
    let url = format!("{}disk.qcow2", served.base);
    let (code, stderr) = root.import(&[
        ("IMPORTER_ENDPOINT", &url),
        ("IMPORTER_IMAGE_SIZE", "64Mi"),
        ("FILESYSTEM_OVERHEAD", "0"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(root.termination(), SUCCESS);
    assert!(!stale.exists(), "the stale temporary file must go");
    assert_eq!(fs::metadata(root.disk()).unwrap().len(), 64 << 20);
    let oracle_len = fs::metadata(&served.oracle).unwrap().len();
    compare_prefix(&root.disk(), &served.oracle, oracle_len).unwrap();
}

#[test]
fn node_pull_waits_for_the_ready_file_fetches_the_named_file_and_signals_done() {
    let Some(served) = serve_image() else { return };
    let root = Root::new();
    let shared = root.path().join("shared");
    fs::create_dir_all(&shared).unwrap();
    // The sidecar's /info: the image's environment, for the PVC labels.
    fs::write(
        served.www.join("info"),
        r#"{"env":["PATH=/bin","INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora"]}"#,
    )
    .unwrap();
    // The controller's endpoint names disk.img; the ready file says which
    // file the sidecar really serves.
    let url = format!("{}disk.img", served.base);
    let mut import = common::WatchedImport::spawn(root.command(&[
        ("IMPORTER_SOURCE", "http"),
        ("IMPORTER_ENDPOINT", &url),
        ("IMPORTER_PULL_METHOD", "node"),
        ("IMPORTER_READY_FILE", "/shared/ready"),
        ("IMPORTER_DONE_FILE", "/shared/done"),
    ]));
    // The sidecar comes up after the importer: the importer is running (its
    // endpoint answers) and has not started on the source (pending).
    let waiting = import.wait_for("waiting for the ready file", |s| s["phase"] == "pending");
    assert!(
        waiting.is_some(),
        "ended without the ready file: {}",
        import.stderr()
    );
    fs::write(shared.join("ready"), "disk.qcow2").unwrap();
    let (status, stderr) = import.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        root.termination(),
        r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"labels":{"instancetype.kubevirt.io/default-preference":"fedora"},"message":"Import Complete"}"#
    );
    let oracle_len = fs::metadata(&served.oracle).unwrap().len();
    compare_prefix(&root.disk(), &served.oracle, oracle_len).unwrap();
    assert!(
        shared.join("done").exists(),
        "the sidecar must be told to exit"
    );
}

#[test]
fn a_checksum_mismatch_exits_0_with_the_fatal_message_and_removes_the_disk() {
    let Some(served) = serve_image() else { return };
    let root = Root::new();
    let url = format!("{}disk.qcow2", served.base);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (code, stderr) = root.import(&[("IMPORTER_ENDPOINT", &url), ("IMPORTER_CHECKSUM", &wrong)]);
    assert_eq!(code, 0, "{stderr}");
    let message = root.termination();
    assert!(
        message.starts_with('{') && message.contains("checksum mismatch"),
        "{message}"
    );
    assert!(!root.disk().exists(), "the disk must be removed");
}

#[test]
fn an_image_larger_than_the_requested_size_fails_with_cdis_too_small_text() {
    let Some(served) = serve_image() else { return };
    let root = Root::new();
    let url = format!("{}disk.qcow2", served.base);
    let (code, _) = root.import(&[("IMPORTER_ENDPOINT", &url), ("IMPORTER_IMAGE_SIZE", "1Mi")]);
    assert_eq!(code, 1);
    let text = root.termination();
    assert!(
        text.contains("is larger than the reported available"),
        "{text}"
    );
    assert!(!root.disk().exists());
}

#[test]
fn a_broken_stream_fails_as_a_pull_failure() {
    let Some(served) = serve_image() else { return };
    // The qcow2 gzipped, then cut: the decoder fails mid-stream.
    let image = fs::read(served.www.join("disk.qcow2")).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &image).unwrap();
    let gz = encoder.finish().unwrap();
    fs::write(served.www.join("cut.qcow2.gz"), &gz[..gz.len() / 2]).unwrap();
    let root = Root::new();
    let url = format!("{}cut.qcow2.gz", served.base);
    let (code, _) = root.import(&[("IMPORTER_ENDPOINT", &url)]);
    assert_eq!(code, 1);
    let text = root.termination();
    assert!(
        text.starts_with("Unable to process data: failed to pull image: ") && text.contains("gzip"),
        "{text}"
    );
    assert!(!root.disk().exists());
}

#[test]
fn a_missing_file_fails_with_exit_1_and_names_the_source() {
    let Some(served) = serve_image() else { return };
    let root = Root::new();
    let url = format!("{}nothing-here.qcow2", served.base);
    let (code, _) = root.import(&[("IMPORTER_ENDPOINT", &url)]);
    assert_eq!(code, 1);
    let text = root.termination();
    assert!(text.contains("404"), "{text}");
    assert!(!text.contains('\n'));
}

#[test]
fn invalid_environment_values_exit_1_with_a_clear_message() {
    let root = Root::new();
    let (code, _) = root.import(&[("IMPORTER_SOURCE", "ftp"), ("IMPORTER_ENDPOINT", "x")]);
    assert_eq!(code, 1);
    assert_eq!(root.termination(), "Unknown data source: ftp");
    let (code, _) = root.import(&[
        ("IMPORTER_ENDPOINT", "http://127.0.0.1:9/x"),
        ("PREALLOCATION", "perhaps"),
    ]);
    assert_eq!(code, 1);
    assert!(root.termination().contains("PREALLOCATION"));
}

#[test]
fn a_blank_disk_gets_the_usable_size_after_overhead() {
    let root = Root::new();
    let (code, stderr) = root.import(&[
        ("IMPORTER_SOURCE", "none"),
        ("IMPORTER_IMAGE_SIZE", "106Mi"),
        ("FILESYSTEM_OVERHEAD", "0.06"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        root.termination(),
        r#"{"preallocationApplied":false,"message":"Import Complete"}"#
    );
    // ceil(106 MiB / 1.06) = 100 MiB exactly.
    assert_eq!(fs::metadata(root.disk()).unwrap().len(), 100 << 20);
}

#[test]
fn http_import_to_a_block_volume_on_a_4k_loop_device_matches_qemu_img() {
    import_to_a_4k_block_volume("disk.qcow2");
}

#[test]
fn http_import_of_a_vhdx_to_a_block_volume_on_a_4k_loop_device_matches_qemu_img() {
    import_to_a_4k_block_volume("disk.vhdx");
}

#[test]
fn http_import_of_a_vmdk_to_a_block_volume_on_a_4k_loop_device_matches_qemu_img() {
    import_to_a_4k_block_volume("disk.vmdk");
}

#[test]
fn http_import_of_a_vdi_to_a_block_volume_on_a_4k_loop_device_matches_qemu_img() {
    import_to_a_4k_block_volume("disk.vdi");
}

fn import_to_a_4k_block_volume(file: &str) {
    let Some(served) = serve_image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing.img");
    fs::File::create(&backing)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show", "--sector-size", "4096"])
        .arg(&backing)
        .output();
    let device = match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        other => {
            common::skip(&format!("no loop device (run as root): {other:?}"));
            return;
        }
    };
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
    let _detach = Detach(device.clone());
    let root = Root::new();
    std::os::unix::fs::symlink(&device, root.path().join("dev/cdi-block-volume")).unwrap();
    let url = format!("{}{file}", served.base);
    let (code, stderr) = root.import(&[("IMPORTER_ENDPOINT", &url), ("FILESYSTEM_OVERHEAD", "0")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(root.termination(), SUCCESS);
    let len = fs::metadata(&served.oracle).unwrap().len();
    compare_prefix(&device, &served.oracle, len).unwrap();
    assert!(
        !root.disk().exists(),
        "nothing written to /data on a block volume"
    );
}

#[test]
fn sigterm_stops_an_import_promptly_and_a_second_attempt_starts_cleanly() {
    let Some(served) = serve_image() else { return };
    let root = Root::new();
    // 4 MiB of incompressible bytes, held after 3 MB (the reader has taken
    // its first 1 MiB chunks) by the gate until the signal went: the import
    // is provably still transferring when signalled.
    let mut noise = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in noise.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    fs::write(served.www.join("noise.raw"), &noise).unwrap();
    let mut gate = GateProxy::start(
        &served.www.with_file_name("gate"),
        served.nginx.http_port,
        &["--hold-after", "3000000"],
    );
    let held_url = gate.url("noise.raw");
    let mut import =
        common::WatchedImport::spawn(root.command(&[("IMPORTER_ENDPOINT", &held_url)]));
    let held = gate.wait_holding(|| import.child.try_wait().unwrap().is_some());
    assert!(held, "the body never reached the gate: {}", import.stderr());
    // Mid-transfer: bytes arrived, not all of them.
    let transferring = import.wait_for("mid-transfer", |s| {
        s["phase"] == "transferring"
            && s["bytes_read"].as_u64().unwrap_or(0) > 0
            && s["bytes_total"]
                .as_u64()
                .is_none_or(|t| s["bytes_read"].as_u64().unwrap_or(0) < t)
    });
    assert!(
        transferring.is_some(),
        "still importing: {}",
        import.stderr()
    );
    let sent = Command::new("kill")
        .args(["-TERM", &import.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // A hang is a failure; how fast it stops is not measured here.
    let (status, _) = import.wait();
    assert_eq!(status.code(), Some(1));
    let text = root.termination();
    assert!(text.contains("termination signal"), "{text}");
    let leftovers: Vec<_> = fs::read_dir(root.path().join("data")).unwrap().collect();
    assert!(leftovers.is_empty(), "nothing left in /data: {leftovers:?}");

    let url = format!("{}disk.qcow2", served.base);
    let (code, stderr) = root.import(&[("IMPORTER_ENDPOINT", &url)]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(root.termination(), SUCCESS);
    let len = fs::metadata(&served.oracle).unwrap().len();
    compare_prefix(&root.disk(), &served.oracle, len).unwrap();
}

/// nginx serving files copied from the shared corpus.
fn serve_corpus(files: &[&str]) -> Option<(Nginx, String, tempfile::TempDir)> {
    let mut needs = Nginx::NEEDS.to_vec();
    needs.push("gzip");
    let servers_dir = require_servers(&needs)?;
    let corpus = common::require_shared()?.join("corpus");
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    fs::create_dir_all(&www).unwrap();
    for file in files {
        let name = Path::new(file).file_name().unwrap();
        fs::copy(corpus.join(file), www.join(name)).unwrap();
    }
    let nginx = Nginx::start(&servers_dir, &dir.path().join("nginx"), &www);
    let base = nginx.http("");
    Some((nginx, base, dir))
}

#[test]
fn archive_content_is_unpacked_into_data_plain_and_gzipped() {
    let Some((_nginx, base, dir)) = serve_corpus(&["cdi/content.tar"]) else {
        return;
    };
    let www = dir.path().join("www");
    let status = Command::new("sh")
        .arg("-c")
        .arg("gzip -c content.tar > content.tar.gz")
        .current_dir(&www)
        .status()
        .unwrap();
    assert!(status.success());
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(www.join("content.tar"))
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!names.is_empty());
    for file in ["content.tar", "content.tar.gz"] {
        let root = Root::new();
        let url = format!("{base}{file}");
        let (code, stderr) = root.import(&[
            ("IMPORTER_ENDPOINT", &url),
            ("IMPORTER_CONTENTTYPE", "archive"),
        ]);
        assert_eq!(code, 0, "{file}: {stderr}");
        assert_eq!(root.termination(), SUCCESS);
        for name in &names {
            assert!(
                root.path().join("data").join(name).exists(),
                "{file}: {name} missing"
            );
        }
        assert!(!root.disk().exists(), "archive imports make no disk.img");
    }
}

/// An image rewritten after an internal snapshot: its active L2 table is
/// copied to the end, after 8 MiB of the data it maps.
fn snapshot_rewritten_image(www: &Path) -> PathBuf {
    let image = www.join("rewritten.qcow2");
    let path = image.to_str().unwrap();
    let run = qemu_img(&["create", "-q", "-f", "qcow2", path, "16M"]);
    assert!(run.ok(), "{}", run.describe());
    for commands in [
        vec!["qemu-io", "-c", "write -P 0x5a 0 8M", path],
        vec!["qemu-img", "snapshot", "-c", "snap", path],
        vec!["qemu-io", "-c", "write -P 0x6b 1M 64k", path],
    ] {
        let status = Command::new(commands[0])
            .args(&commands[1..])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{commands:?}");
    }
    image
}

#[test]
fn an_image_needing_more_than_memory_asks_for_scratch_then_uses_it() {
    let Some((_nginx, base, dir)) = serve_corpus(&[]) else {
        return;
    };
    let image = snapshot_rewritten_image(&dir.path().join("www"));
    let url = format!("{base}rewritten.qcow2");
    let env = [
        ("IMPORTER_ENDPOINT", url.as_str()),
        ("DISKIMPORT_MEMORY_BUDGET", "65536"),
    ];
    let root = Root::new();
    let (code, stderr) = root.import(&env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        root.termination(),
        r#"{"scratchSpaceRequired":true,"preallocationApplied":false,"message":"Import Complete"}"#
    );
    assert!(!root.disk().exists());

    // CDI mounts /scratch and starts the pod again.
    fs::create_dir(root.path().join("scratch")).unwrap();
    let (code, stderr) = root.import(&env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(root.termination(), SUCCESS);
    let oracle = dir.path().join("oracle.raw");
    let run = qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        oracle.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    let len = fs::metadata(&oracle).unwrap().len();
    compare_prefix(&root.disk(), &oracle, len).unwrap();
}
