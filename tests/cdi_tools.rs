//! The image's helper programs, run as CDI runs them: the real binary started
//! under each program's name (a symbolic link, as in the image), Go-style
//! flags, CDI's paths under a temporary root.
//!
//! - `server` (cdi-containerimage-server): `-h`, the one-file rule, the ready
//!   file, HEAD/range/`/info`, exit 0 after the done file, and an import by
//!   `diskimport import` in node-pull mode against it, checked against
//!   `qemu-img convert`.
//! - `cdi-image-size-detection`: one table row per format the library reads
//!   (qemu-img makes the image and says its virtual size), one per format it
//!   refuses, and CDI's exit codes.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{compare_files, qemu_img, BIN};

/// The binary under `name` in `dir` (a symbolic link, as in the image).
fn as_program(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    link
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) for `cond`, failing with `what`.
fn wait_for(what: &str, child: &mut Child, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("waiting for {what}: the program exited with {status}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) for the child to exit.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the program did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request; returns (status line, headers, body).
fn http(port: u16, request: &str) -> (String, String, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (
        status.to_string(),
        headers.to_lowercase(),
        raw[split + 4..].to_vec(),
    )
}

fn get(port: u16, path: &str, extra: &str) -> (String, String, Vec<u8>) {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n"),
    )
}

/// A containerDisk-like layout: `disk/<name>` and an empty `shared/`.
struct Pod {
    dir: tempfile::TempDir,
}

impl Pod {
    fn new(disk_name: &str, disk: &Path) -> Pod {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("disk")).unwrap();
        fs::create_dir_all(dir.path().join("shared")).unwrap();
        fs::copy(disk, dir.path().join("disk").join(disk_name)).unwrap();
        Pod { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn server(&self, port: u16) -> Child {
        let server = as_program(self.dir.path(), "server");
        Command::new(server)
            .arg("-p")
            .arg(port.to_string())
            .arg("-image-dir")
            .arg(self.path("disk"))
            .arg(format!(
                "-ready-file={}",
                self.path("shared/ready").display()
            ))
            .arg("--done-file")
            .arg(self.path("shared/done"))
            .env("KUBEVIRT_IO_OS", "fedora")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

fn qcow2_image(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("src.raw");
    let mut data = vec![0u8; 6 << 20];
    for (i, b) in data.iter_mut().enumerate().take(3 << 20) {
        *b = (i * 7 % 251) as u8;
    }
    fs::write(&raw, &data).unwrap();
    let qcow2 = dir.join("src.qcow2");
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
    (raw, qcow2)
}

#[test]
fn server_help_exits_zero_and_bad_flags_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = as_program(dir.path(), "server");
    let help = Command::new(&server).arg("-h").output().unwrap();
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    assert!(
        String::from_utf8_lossy(&help.stderr).contains("image-dir"),
        "{help:?}"
    );
    let long = Command::new(&server).arg("--help").output().unwrap();
    assert_eq!(long.status.code(), Some(0), "{long:?}");
    let bogus = Command::new(&server).arg("-bogus").output().unwrap();
    assert_eq!(bogus.status.code(), Some(2), "{bogus:?}");
}

#[test]
fn server_refuses_an_image_dir_without_exactly_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = as_program(dir.path(), "cdi-containerimage-server");
    let disk = dir.path().join("disk");
    fs::create_dir(&disk).unwrap();
    fs::write(disk.join("a.img"), b"a").unwrap();
    fs::write(disk.join("b.img"), b"b").unwrap();
    let out = Command::new(&server)
        .args(["-p", &free_port().to_string(), "-image-dir"])
        .arg(&disk)
        .arg("-ready-file")
        .arg(dir.path().join("ready"))
        .arg("-done-file")
        .arg(dir.path().join("done"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid container image"),
        "{out:?}"
    );
    assert!(
        !dir.path().join("ready").exists(),
        "no ready file on failure"
    );
}

#[test]
fn server_speaks_cdis_protocol_and_exits_after_the_done_file() {
    let work = tempfile::tempdir().unwrap();
    let (_, qcow2) = qcow2_image(work.path());
    let pod = Pod::new("fedora.qcow2", &qcow2);
    let port = free_port();
    let mut child = pod.server(port);
    let ready = pod.path("shared/ready");
    wait_for("the ready file", &mut child, || {
        fs::read(&ready).is_ok_and(|r| !r.is_empty())
    });
    assert_eq!(fs::read_to_string(&ready).unwrap(), "fedora.qcow2");
    let mode = fs::metadata(&ready).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "ready file mode");

    let expected = fs::read(&qcow2).unwrap();
    let (status, headers, body) = http(
        port,
        "HEAD /fedora.qcow2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(status.contains(" 200"), "{status}");
    assert!(body.is_empty());
    assert!(
        headers.contains(&format!("content-length: {}", expected.len())),
        "{headers}"
    );
    assert!(headers.contains("accept-ranges: bytes"), "{headers}");
    assert!(headers.contains("last-modified:"), "{headers}");

    let (status, headers, body) = get(port, "/fedora.qcow2", "Range: bytes=100-1123\r\n");
    assert!(status.contains(" 206"), "{status}");
    assert!(
        headers.contains(&format!("content-range: bytes 100-1123/{}", expected.len())),
        "{headers}"
    );
    assert_eq!(body, &expected[100..1124]);

    let (status, _, body) = get(port, "/fedora.qcow2", "");
    assert!(status.contains(" 200"), "{status}");
    assert_eq!(body, expected);

    let (status, headers, body) = get(port, "/info", "");
    assert!(status.contains(" 200"), "{status}");
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let env: Vec<&str> = info["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(env.contains(&"KUBEVIRT_IO_OS=fedora"), "{env:?}");
    assert_eq!(body.last(), Some(&b'\n'));

    // Several ranges: one multipart/byteranges body, laid out as Go's.
    let (status, headers, body) = get(port, "/fedora.qcow2", "Range: bytes=0-9,20-29\r\n");
    assert!(status.contains(" 206"), "{status}");
    let boundary = headers
        .split_once("content-type: multipart/byteranges; boundary=")
        .and_then(|(_, rest)| rest.lines().next())
        .unwrap_or_else(|| panic!("{headers}"))
        .trim()
        .to_string();
    let mut want = Vec::new();
    for (i, (from, to)) in [(0usize, 9usize), (20, 29)].into_iter().enumerate() {
        let lead = if i == 0 { "" } else { "\r\n" };
        want.extend_from_slice(
            format!(
                "{lead}--{boundary}\r\nContent-Range: bytes {from}-{to}/{}\r\n\
                 Content-Type: application/octet-stream\r\n\r\n",
                expected.len()
            )
            .as_bytes(),
        );
        want.extend_from_slice(&expected[from..=to]);
    }
    want.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&want)
    );
    assert!(
        headers.contains(&format!("content-length: {}", want.len())),
        "{headers}"
    );

    // Go's 416s: reason phrase, plain-text body, Content-Range only when
    // nothing overlaps.
    let (status, headers, body) = get(port, "/fedora.qcow2", "Range: bytes=99999999-\r\n");
    assert_eq!(status, "HTTP/1.1 416 Requested Range Not Satisfiable");
    assert_eq!(body, b"invalid range: failed to overlap\n");
    assert!(
        headers.contains(&format!("content-range: bytes */{}", expected.len())),
        "{headers}"
    );
    let (status, headers, body) = get(port, "/fedora.qcow2", "Range: pages=1-2\r\n");
    assert!(status.contains(" 416"), "{status}");
    assert_eq!(body, b"invalid range\n");
    assert!(!headers.contains("content-range"), "{headers}");

    // Unclean paths are redirected to their clean form (which is then a
    // 404), a slash after the file to the file, as Go's mux and file server do.
    let (status, headers, _) = get(port, "/../disk/fedora.qcow2", "");
    assert!(status.contains(" 301"), "{status}");
    assert!(
        headers.contains("location: /disk/fedora.qcow2\r\n")
            || headers.ends_with("location: /disk/fedora.qcow2"),
        "{headers}"
    );
    let (status, _, _) = get(port, "/disk/fedora.qcow2", "");
    assert!(status.contains(" 404"), "{status}");
    let (status, headers, _) = get(port, "/fedora.qcow2/", "");
    assert!(status.contains(" 301"), "{status}");
    assert!(headers.contains("location: ../fedora.qcow2"), "{headers}");
    let (status, headers, _) = get(port, "/other.img", "");
    assert!(status.contains(" 404"), "{status}");
    assert!(
        headers.contains("x-content-type-options: nosniff"),
        "{headers}"
    );

    fs::write(pod.path("shared/done"), b"").unwrap();
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0));
    assert!(!ready.exists(), "ready file removed");
    assert!(!pod.path("shared/done").exists(), "done file removed");
}

#[test]
fn node_pull_import_against_our_server_matches_qemu_img() {
    let work = tempfile::tempdir().unwrap();
    let (raw, qcow2) = qcow2_image(work.path());
    // The importer's root: /data, /dev and /shared (the shared emptyDir).
    let pod = Pod::new("disk.qcow2", &qcow2);
    fs::create_dir_all(pod.path("data")).unwrap();
    fs::create_dir_all(pod.path("dev")).unwrap();
    let port = free_port();
    let mut server = pod.server(port);
    let endpoint = format!("http://localhost:{port}/disk.img");
    let import = Command::new(BIN)
        .args(["-alsologtostderr", "-v=1"])
        .env_clear()
        .env("DISKIMPORT_ROOT", pod.dir.path())
        .env("DISKIMPORT_STATUS_ADDR", "127.0.0.1")
        .env("DISKIMPORT_STATUS_PORT", "0")
        .envs([
            ("IMPORTER_SOURCE", "http"),
            ("IMPORTER_ENDPOINT", endpoint.as_str()),
            ("IMPORTER_CONTENTTYPE", "kubevirt"),
            ("IMPORTER_IMAGE_SIZE", "6Mi"),
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
    let termination = fs::read_to_string(pod.path("dev/termination-log")).unwrap_or_default();
    assert!(
        import.status.success(),
        "{:?}: {}",
        import.status,
        String::from_utf8_lossy(&import.stderr)
    );
    assert!(termination.contains("Import Complete"), "{termination}");
    compare_files(&pod.path("data/disk.img"), &raw).unwrap();
    // The importer created the done file: the sidecar ends, successfully.
    assert_eq!(wait_exit(&mut server).code(), Some(0));
}

/// Formats the library reads: qemu-img creates the image (`create` options
/// after the format), its `info` gives the expected virtual size. A format
/// reader added to the library gets a row here.
const SIZED: &[(&str, &[&str], &str)] = &[
    ("raw", &[], "1000000"),
    ("raw", &[], "8M"),
    ("qcow2", &[], "8M"),
    ("qcow2", &["-o", "cluster_size=4096"], "10G"),
    ("qcow2", &["-o", "compat=0.10"], "3000000"),
    ("vmdk", &[], "8M"),
    ("vmdk", &["-o", "subformat=streamOptimized"], "10G"),
    ("vhdx", &[], "8M"),
    ("vhdx", &["-o", "block_size=1M"], "3000000"),
    ("vdi", &[], "8M"),
    ("vdi", &["-o", "static=on"], "3000000"),
    ("vpc", &[], "8M"),
    ("vpc", &["-o", "subformat=fixed"], "3000000"),
];

/// Formats the library does not read: refused as an invalid file (2). Move a
/// row to [`SIZED`] when its reader lands.
const REFUSED: &[&str] = &["qed", "parallels"];

fn detect(root: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let program = as_program(dir.path(), "cdi-image-size-detection");
    let out = Command::new(program)
        .args(args)
        .env("DISKIMPORT_ROOT", root)
        .output()
        .unwrap();
    let message = fs::read_to_string(root.join("dev/termination-log")).unwrap_or_default();
    (
        out.status.code(),
        message,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cdi_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("data")).unwrap();
    fs::create_dir_all(root.path().join("dev")).unwrap();
    root
}

/// qemu-img's virtual size of `path` read as `format` (named, not probed: qemu's
/// probe takes a fixed VHD for raw, footer included, where diskimport strips the
/// footer as `-f vpc` does; README says so).
fn qemu_virtual_size(path: &Path, format: &str) -> u64 {
    let info = qemu_img(&[
        "info",
        "-f",
        format,
        "--output=json",
        path.to_str().unwrap(),
    ]);
    assert!(info.ok(), "{}", info.describe());
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

#[test]
fn size_detection_reports_qemu_imgs_virtual_size_for_every_format_read() {
    let mut failures = Vec::new();
    for (format, options, size) in SIZED {
        let root = cdi_root();
        let disk = root.path().join("data/disk.img");
        let mut args = vec!["create", "-q", "-f", format];
        args.extend_from_slice(options);
        args.extend([disk.to_str().unwrap(), size]);
        let made = qemu_img(&args);
        assert!(made.ok(), "{}", made.describe());
        if *format == "raw" {
            // Some data, so the file is not all holes.
            let mut f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
            f.write_all(b"data at the start").unwrap();
        }
        let expected = qemu_virtual_size(&disk, format);
        let (code, message, stderr) = detect(root.path(), &["-image-path", "/data/disk.img"]);
        if code != Some(0) || message != expected.to_string() {
            failures.push(format!(
                "{format} {options:?} {size}: exit {code:?}, message {message:?}, expected {expected}; {stderr}"
            ));
        }
    }
    common::finish("size detection of readable formats", failures);
}

#[test]
fn size_detection_refuses_formats_not_read_yet() {
    let mut failures = Vec::new();
    for format in REFUSED {
        let root = cdi_root();
        let disk = root.path().join("data/disk.img");
        let made = qemu_img(&["create", "-q", "-f", format, disk.to_str().unwrap(), "8M"]);
        assert!(made.ok(), "{}", made.describe());
        let (code, message, stderr) = detect(root.path(), &["-image-path=/data/disk.img"]);
        if code != Some(2) || !message.is_empty() || !stderr.contains("unsupported image format") {
            failures.push(format!(
                "{format}: exit {code:?}, message {message:?}; {stderr}"
            ));
        }
    }
    common::finish("size detection of unread formats", failures);
}

#[test]
fn size_detection_exit_codes_are_cdis() {
    let root = cdi_root();
    let (code, _, stderr) = detect(root.path(), &[]);
    assert_eq!(code, Some(1), "no -image-path: {stderr}");
    assert!(stderr.contains("mandatory parameters"), "{stderr}");
    let (code, _, stderr) = detect(root.path(), &["-image-path", "/data/missing.img"]);
    assert_eq!(code, Some(2), "missing file: {stderr}");
    let (code, _, stderr) = detect(
        root.path(),
        &["-image-path", "/data/x", "-scheme", "nbd+unix://"],
    );
    assert_eq!(code, Some(3), "unsupported scheme: {stderr}");
    fs::write(root.path().join("data/disk.img"), vec![1u8; 4096]).unwrap();
    fs::remove_dir(root.path().join("dev")).unwrap();
    let (code, _, stderr) = detect(root.path(), &["-image-path", "/data/disk.img", "-v=3"]);
    assert_eq!(code, Some(4), "no termination log: {stderr}");
}

#[test]
fn helper_programs_are_subcommands_too() {
    let root = cdi_root();
    fs::write(root.path().join("data/disk.img"), vec![1u8; 12345]).unwrap();
    let out = Command::new(BIN)
        .args(["image-size-detection", "-image-path", "/data/disk.img"])
        .env("DISKIMPORT_ROOT", root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fs::read_to_string(root.path().join("dev/termination-log")).unwrap(),
        "12345"
    );
    let help = Command::new(BIN)
        .args(["containerimage-server", "-h"])
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0), "{help:?}");
}
