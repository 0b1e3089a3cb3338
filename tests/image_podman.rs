//! The importer image, built and run in a real container runtime (podman with
//! runc and vfs storage, no daemon): the runtime stage (`image/Dockerfile.host`
//! over `image/make-rootfs.sh`'s layout) from the release binary under test.
//!
//! 1. As CDI's import pod: `--user 107 --network host`, the controller's
//!    environment, `/data` and `/dev/termination-log` bind-mounted, a CA dir
//!    at `/certs`; nginx on 127.0.0.1 serves a qcow2 over https. The disk
//!    must equal `qemu-img convert`'s, the termination message CDI's.
//! 2. As CDI's node pull: the init container's `sh -c 'cp …'` copies the
//!    server out of the image; the copy runs as `/shared/server` inside a
//!    different, FROM-scratch containerDisk image (a disk under `/disk`,
//!    nothing else); `diskimport import` in node-pull mode imports from it,
//!    and the sidecar exits 0 once the importer is done.
//!
//! Skipped (visibly) without podman, runc or a static busybox; a failure
//! under `CI`.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{compare_files, qemu_img, BIN};
use servers::{require_servers, Nginx};

const SUCCESS: &str =
    r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"message":"Import Complete"}"#;
/// Bound on every podman call (builds with vfs take a few seconds here).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `podman` with the runtime and storage this machine supports.
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--storage-driver", "vfs"]);
    cmd
}

/// Runs `cmd` to its end within [`PODMAN_TIMEOUT`].
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let out = std::thread::spawn(move || {
        let deadline = Instant::now() + PODMAN_TIMEOUT;
        loop {
            if child.try_wait().unwrap().is_some() {
                return Some(child.wait_with_output().unwrap());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .join()
    .unwrap();
    out.unwrap_or_else(|| panic!("{what} did not finish within {PODMAN_TIMEOUT:?}"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Images built by the test, removed on drop.
struct Images(Vec<String>);

impl Images {
    fn build(&mut self, tag: &str, containerfile: &Path, context: &Path) -> String {
        let name = format!("localhost/diskimport-test-{tag}:{}", std::process::id());
        run_ok(
            podman()
                .args(["build", "-q", "-f"])
                .arg(containerfile)
                .args(["-t", &name])
                .arg(context),
        );
        self.0.push(name.clone());
        name
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = podman().args(["rmi", "-f", name]).output();
        }
    }
}

/// `podman run` as CDI runs its pods: uid 107, host network, limits.
fn pod_run() -> Command {
    let mut cmd = podman();
    cmd.args([
        "run",
        "--rm",
        "--network",
        "host",
        "--user",
        "107",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);
    cmd
}

fn world_writable(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn make_qcow2(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("ref.raw");
    let mut data = vec![0u8; 8 << 20];
    for (i, b) in data.iter_mut().enumerate().take(3 << 20) {
        *b = (i * 13 % 241) as u8;
    }
    fs::write(&raw, &data).unwrap();
    let qcow2 = dir.join("disk.qcow2");
    let made = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    assert!(made.ok(), "{}", made.describe());
    (raw, qcow2)
}

/// Waits (bounded) for `path` to exist while `child` runs.
fn wait_for_file(child: &mut Child, path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the sidecar container exited ({status}) before writing {path:?}");
        }
        assert!(Instant::now() < deadline, "no {path:?} within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_image_runs_as_cdis_importer_and_node_pull_sidecar() {
    let needs = [
        Nginx::NEEDS,
        &["podman", "runc", "/bin/busybox", "qemu-img"],
    ]
    .concat();
    let Some(servers) = require_servers(&needs) else {
        return;
    };
    if
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the image test as root"
        );
        common::note("skipped: podman here needs root");
        return;
    }
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    world_writable(work.path(), 0o755);
    let mut images = Images(Vec::new());

    // The runtime image from the binary under test.
    let rootfs = work.path().join("rootfs");
    run_ok(
        Command::new("sh")
            .arg(repo().join("image/make-rootfs.sh"))
            .arg(BIN)
            .arg("/bin/busybox")
            .arg("/etc/ssl/certs/ca-certificates.crt")
            .arg(&rootfs),
    );
    let image = images.build("importer", &repo().join("image/Dockerfile.host"), &rootfs);

    let docroot = work.path().join("docroot");
    fs::create_dir_all(&docroot).unwrap();
    let (raw, qcow2) = make_qcow2(&docroot);
    let nginx = Nginx::start(&servers, &work.path().join("nginx"), &docroot);

    // 1. The import pod.
    let vol = work.path().join("vol");
    for sub in ["data", "certs"] {
        fs::create_dir_all(vol.join(sub)).unwrap();
    }
    world_writable(&vol.join("data"), 0o777);
    fs::write(vol.join("termination-log"), "").unwrap();
    world_writable(&vol.join("termination-log"), 0o666);
    fs::copy(&nginx.ca_bundle, vol.join("certs/ca.crt")).unwrap();
    world_writable(&vol.join("certs/ca.crt"), 0o644);
    let endpoint = nginx.https("disk.qcow2");
    let mut import = pod_run();
    for (k, v) in [
        ("IMPORTER_SOURCE", "http"),
        ("IMPORTER_ENDPOINT", endpoint.as_str()),
        ("IMPORTER_CONTENTTYPE", "kubevirt"),
        ("IMPORTER_IMAGE_SIZE", "8Mi"),
        ("IMPORTER_CERT_DIR", "/certs"),
        ("IMPORTER_ACCESS_KEY_ID", ""),
        ("IMPORTER_SECRET_KEY", ""),
        ("IMPORTER_CHECKSUM", ""),
        ("OWNER_UID", "0e6e5d4b-3d1f-4b8e-9c6a-1f7a2b3c4d5e"),
        ("FILESYSTEM_OVERHEAD", "0"),
        ("INSECURE_TLS", "false"),
        ("PREALLOCATION", "false"),
        ("DISKIMPORT_STATUS_PORT", "0"),
    ] {
        import.arg("-e").arg(format!("{k}={v}"));
    }
    let out = run(import
        .arg("-v")
        .arg(format!("{}:/data", vol.join("data").display()))
        .arg("-v")
        .arg(format!(
            "{}:/dev/termination-log",
            vol.join("termination-log").display()
        ))
        .arg("-v")
        .arg(format!("{}:/certs:ro", vol.join("certs").display()))
        .arg(&image)
        .arg("-v=1"));
    let message = fs::read_to_string(vol.join("termination-log")).unwrap();
    assert!(
        out.status.success(),
        "import container: {}; message {message:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(message, SUCCESS);
    compare_files(&vol.join("data/disk.img"), &raw).unwrap();

    // 2. Node pull: the init container copies the server out of the image.
    let root = work.path().join("importer-root");
    let shared = root.join("shared");
    for dir in [&shared, &root.join("data"), &root.join("dev")] {
        fs::create_dir_all(dir).unwrap();
    }
    world_writable(&shared, 0o777);
    run_ok(
        pod_run()
            .arg("-v")
            .arg(format!("{}:/shared", shared.display()))
            .args(["--entrypoint", "sh", &image, "-c"])
            .arg("cp /usr/bin/cdi-containerimage-server /shared/server"),
    );
    let copied = fs::metadata(shared.join("server")).expect("the init container copied the server");
    assert!(
        copied.permissions().mode() & 0o111 != 0,
        "the copy is executable"
    );

    // A containerDisk image with no libc: the disk under /disk, nothing else.
    let cd = work.path().join("containerdisk");
    fs::create_dir_all(cd.join("disk")).unwrap();
    fs::copy(&qcow2, cd.join("disk/fedora.qcow2")).unwrap();
    world_writable(&cd.join("disk/fedora.qcow2"), 0o644);
    fs::write(
        cd.join("Containerfile"),
        "FROM scratch\nCOPY disk/ /disk/\n",
    )
    .unwrap();
    let disk_image = images.build("containerdisk", &cd.join("Containerfile"), &cd);
    let shared_mount = format!("{}:/shared", shared.display());

    // The DataImportCron poll runs it with -h only: it must exit 0.
    run_ok(pod_run().args([
        "-v",
        &shared_mount,
        "--entrypoint",
        "/shared/server",
        &disk_image,
        "-h",
    ]));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sidecar = pod_run()
        .args([
            "-v",
            &shared_mount,
            "--entrypoint",
            "/shared/server",
            &disk_image,
        ])
        .args(["-p", &port.to_string(), "-image-dir", "/disk"])
        .args(["-ready-file", "/shared/ready", "-done-file", "/shared/done"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&mut sidecar, &shared.join("ready"));
    let endpoint = format!("http://localhost:{port}/disk.img");
    let out = Command::new(BIN)
        .args(["import", "--status-addr", "127.0.0.1", "--status-port", "0"])
        .env_clear()
        .env("DISKIMPORT_ROOT", &root)
        .envs([
            ("IMPORTER_SOURCE", "http"),
            ("IMPORTER_ENDPOINT", endpoint.as_str()),
            ("IMPORTER_CONTENTTYPE", "kubevirt"),
            ("IMPORTER_IMAGE_SIZE", "8Mi"),
            ("IMPORTER_PULL_METHOD", "node"),
            ("IMPORTER_READY_FILE", "/shared/ready"),
            ("IMPORTER_DONE_FILE", "/shared/done"),
            ("OWNER_UID", "1"),
            ("FILESYSTEM_OVERHEAD", "0"),
            ("PREALLOCATION", "false"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let message = fs::read_to_string(root.join("dev/termination-log")).unwrap_or_default();
    let finished = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = sidecar.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = sidecar.kill();
                let _ = sidecar.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(
        out.status.success(),
        "node-pull import: {}; message {message:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(message, SUCCESS);
    compare_files(&root.join("data/disk.img"), &raw).unwrap();
    assert_eq!(
        finished.map(|s| s.code()),
        Some(Some(0)),
        "the sidecar exits 0 after the done file"
    );
}
