//! `diskimport upload-server` end to end: the real binary serving HTTPS on
//! 127.0.0.1 with a CA, server and client certificates made at test time
//! (`../shared/servers/mk_certs.sh`), and curl uploading the way virtctl does
//! (`Content-Type: application/octet-stream`, exact `Content-Length`, `HEAD`
//! on `upload-async` first). Every disk is compared byte for byte with
//! `qemu-img convert -O raw`; the scratch directory must stay empty.
//!
//! Needs curl, openssl, qemu-img/qemu-io, gzip/xz/zstd, tar, and for the
//! block tests root and loop devices. A test that cannot run says so and
//! fails when `CI` is set.

mod common;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::loop_device::LoopDevice;
use common::{compare_files, compare_prefix, note, qemu_convert, sha256_file, BIN};

const CLIENT_NAME: &str = "client.upload-server.cdi.kubevirt.io";
const MIB: u64 = 1 << 20;

/// Skips (outside CI) or fails (under CI) when `programs` are missing.
fn require(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !in_path(p)).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but {missing:?} are not installed");
    }
    note(&format!("skipped: {missing:?} not installed"));
    false
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// The test PKI: CA, server pair, and client pairs.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let script = common::shared_dir().join("servers/mk_certs.sh");
        run(
            "sh",
            &[script.to_str().unwrap(), dir.path().to_str().unwrap()],
        );
        let pki = Pki { dir };
        pki.client("good", CLIENT_NAME, "ca");
        pki.client("wrong-cn", "someone.else", "ca");
        pki.client("foreign", CLIENT_NAME, "other-ca");
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// A client certificate `name` with `cn`, signed by the CA `signer`.
    fn client(&self, name: &str, cn: &str, signer: &str) {
        let key = self.path(&format!("{name}.key"));
        let csr = self.path(&format!("{name}.csr"));
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        run(
            "openssl",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ],
        );
        run(
            "openssl",
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &csr,
            ],
        );
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &self.path(&format!("{signer}.crt")),
                "-CAkey",
                &self.path(&format!("{signer}.key")),
                "-CAcreateserial",
                "-days",
                "2",
                "-sha256",
                "-extfile",
                &ext,
                "-out",
                &self.path(&format!("{name}.crt")),
            ],
        );
    }
}

/// A running upload server in its own root (`data/`, `dev/`, `scratch/`).
struct Server {
    child: Child,
    port: u16,
    root: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// What the server is started with.
struct Setup<'a> {
    env: Vec<(&'a str, String)>,
    scratch: bool,
    /// A block device to be `/dev/cdi-block-volume`.
    block: Option<&'a Path>,
    /// Run as `cdi-uploadserver` (argv[0]) with klog flags only.
    as_cdi_program: bool,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            env: vec![
                ("UPLOAD_IMAGE_SIZE", "64Mi".into()),
                ("FILESYSTEM_OVERHEAD", "0".into()),
                ("PREALLOCATION", "false".into()),
            ],
            scratch: true,
            block: None,
            as_cdi_program: false,
        }
    }
}

impl<'a> Setup<'a> {
    fn with(mut self, name: &'a str, value: &str) -> Self {
        self.env.retain(|(k, _)| *k != name);
        self.env.push((name, value.to_string()));
        self
    }
}

impl Server {
    fn start(pki: &Pki, setup: Setup) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for sub in ["data", "dev"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        if setup.scratch {
            std::fs::create_dir_all(root.join("scratch")).unwrap();
        }
        std::fs::write(root.join("dev/termination-log"), "").unwrap();
        let mut env = setup.env;
        if let Some(device) = setup.block {
            std::os::unix::fs::symlink(device, root.join("dev/cdi-block-volume")).unwrap();
            env.push(("DESTINATION", "/dev/cdi-block-volume".into()));
        }
        let log = dir.path().join("server.log");
        let program = if setup.as_cdi_program {
            let link = dir.path().join("cdi-uploadserver");
            std::os::unix::fs::symlink(BIN, &link).unwrap();
            link
        } else {
            PathBuf::from(BIN)
        };
        let mut command = Command::new(&program);
        if setup.as_cdi_program {
            command.args(["-alsologtostderr", "-v=3"]);
        } else {
            command
                .arg("upload-server")
                .arg("--root")
                .arg(&root)
                .args(["-alsologtostderr", "-v=1"]);
        }
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DISKIMPORT_ROOT", &root)
            .env("TLS_KEY_FILE", pki.path("server.key"))
            .env("TLS_CERT_FILE", pki.path("server.crt"))
            .env("CLIENT_CERT_FILE", pki.path("ca.crt"))
            .env("CLIENT_NAME", CLIENT_NAME)
            .env("LISTEN_ADDRESS", "127.0.0.1")
            .env("LISTEN_PORT", "0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().expect("starting the upload server");
        let mut server = Server {
            child,
            port: 0,
            root,
            log,
            _dir: dir,
        };
        server.port = server.wait_for_port();
        server
    }

    /// The port from the "listening on" line.
    fn wait_for_port(&mut self) -> u16 {
        let started = Instant::now();
        loop {
            let text = self.log();
            // Only a whole line: the write may be seen half done.
            let line = text
                .split_once("listening on https://")
                .and_then(|(_, rest)| rest.split_once('\n'));
            if let Some((addr, _)) = line {
                return addr.trim().rsplit(':').next().unwrap().parse().unwrap();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the upload server exited ({status}): {text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the server never listened: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn termination(&self) -> String {
        std::fs::read_to_string(self.root.join("dev/termination-log")).unwrap_or_default()
    }

    fn disk(&self) -> PathBuf {
        self.root.join("data/disk.img")
    }

    fn data_entries(&self) -> Vec<String> {
        entries(&self.root.join("data"))
    }

    fn scratch_entries(&self) -> Vec<String> {
        entries(&self.root.join("scratch"))
    }

    /// Waits for the process to exit (it must, after a success or the deadline).
    fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `/status` JSON.
    fn status(&self) -> serde_json::Value {
        let reply = curl(self, &[], "/status", None);
        assert_eq!(reply.code, 200, "GET /status: {reply:?}");
        serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What curl got.
#[derive(Debug)]
struct Reply {
    /// HTTP status; 0 when there was no answer (failed handshake).
    code: u16,
    body: String,
    /// Body bytes curl sent.
    uploaded: u64,
}

/// curl ARGS URL(path) with the test CA, as `client` (a Pki pair name).
fn curl(server: &Server, args: &[OsString], path: &str, client: Option<(&Pki, &str)>) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let mut command = Command::new("curl");
    command
        .args(["-s", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code} %{size_upload}"]);
    if let Some((pki, name)) = client {
        command
            .arg("--cacert")
            .arg(pki.path("ca.crt"))
            .arg("--cert")
            .arg(pki.path(&format!("{name}.crt")))
            .arg("--key")
            .arg(pki.path(&format!("{name}.key")));
    } else {
        command.arg("-k");
    }
    let out = command
        .args(args)
        .arg(server.url(path))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = text.split_whitespace();
    let code = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let uploaded = fields
        .next()
        .and_then(|c| c.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    Reply {
        code,
        body: std::fs::read_to_string(&body).unwrap_or_default(),
        uploaded,
    }
}

/// Uploads `file` to `path` as virtctl does: octet-stream, exact length.
fn upload(server: &Server, pki: &Pki, path: &str, file: &Path, headers: &[&str]) -> Reply {
    let mut args: Vec<OsString> =
        vec!["-H".into(), "Content-Type: application/octet-stream".into()];
    for h in headers {
        args.push("-H".into());
        args.push(h.into());
    }
    args.push("--data-binary".into());
    args.push(format!("@{}", file.display()).into());
    curl(server, &args, path, Some((pki, "good")))
}

/// virtctl: HEAD on upload-async, then POST there.
fn virtctl_upload(server: &Server, pki: &Pki, file: &Path) -> Reply {
    let head = curl(
        server,
        &["-I".into()],
        "/v1beta1/upload-async",
        Some((pki, "good")),
    );
    assert_eq!(head.code, 200, "HEAD upload-async: {head:?}");
    upload(server, pki, "/v1beta1/upload-async", file, &[])
}

/// Images made with qemu-img from one raw disk, and their references.
struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Images {
        let images = Images {
            dir: tempfile::tempdir().unwrap(),
        };
        // 64 MiB: random data, a hole, more data, zeroes to the end.
        let raw = images.path("disk.raw");
        let mut data = vec![0u8; (64 * MIB) as usize];
        fill_random(&mut data[..(6 * MIB) as usize], 1);
        fill_random(&mut data[(40 * MIB) as usize..(41 * MIB) as usize], 2);
        std::fs::write(&raw, &data).unwrap();
        images
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The raw disk every image holds.
    fn raw(&self) -> PathBuf {
        self.path("disk.raw")
    }

    fn qcow2(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.path(name);
        let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
        args.extend(extra);
        let raw = self.raw();
        args.push(raw.to_str().unwrap());
        args.push(out.to_str().unwrap());
        run("qemu-img", &args);
        out
    }

    /// A qcow2 whose L1 table lies after the data (grown with qemu-img resize).
    fn qcow2_tables_at_end(&self) -> PathBuf {
        let out = self.path("tables-at-end.qcow2");
        let p = out.to_str().unwrap();
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4k",
                p,
                "16M",
            ],
        );
        run(
            "qemu-io",
            &[
                "-c",
                "write -q -P 0x61 0 512k",
                "-c",
                "write -q -P 0x62 15M 1M",
                p,
            ],
        );
        run("qemu-img", &["resize", "-q", p, "64M"]);
        run(
            "qemu-io",
            &[
                "-c",
                "write -q -P 0x63 40M 256k",
                "-c",
                "write -q -P 0x64 10M 8k",
                p,
            ],
        );
        out
    }

    /// `file` compressed with `tool`.
    fn compressed(&self, file: &Path, tool: &str, suffix: &str) -> PathBuf {
        let out = self.path(&format!(
            "{}.{suffix}",
            file.file_name().unwrap().to_string_lossy()
        ));
        let status = Command::new(tool)
            .arg("-c")
            .arg(file)
            .stdout(std::fs::File::create(&out).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "{tool}");
        out
    }

    /// A raw disk that sniffs as ISO 9660 (`CD001` at 32769).
    fn iso(&self) -> PathBuf {
        let out = self.path("disk.iso");
        let mut data = std::fs::read(self.raw()).unwrap();
        data.truncate((32 * MIB) as usize);
        data[32768..32774].copy_from_slice(b"\x01CD001");
        std::fs::write(&out, data).unwrap();
        out
    }

    /// `qemu-img convert -O raw` of `image` (format guessed by qemu-img).
    fn reference(&self, image: &Path, format: &str) -> PathBuf {
        let out = self.path(&format!(
            "{}.ref",
            image.file_name().unwrap().to_string_lossy()
        ));
        qemu_convert(format, image, &out).unwrap();
        out
    }
}

/// Deterministic pseudo-random bytes (xorshift), so nothing reads as zero.
fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// What a successful upload leaves, as a list of problems (empty when all is
/// well): a 200; the disk equal to `reference` (`/data/disk.img`, or the
/// first bytes of `device` for a Block target, with nothing in `/data`); an
/// empty scratch directory; exit 0; CDI's termination message; a completion
/// line in the log.
fn finished_upload(
    server: &mut Server,
    reply: &Reply,
    device: Option<&Path>,
    reference: &Path,
) -> Vec<String> {
    if reply.code != 200 {
        return vec![format!("{reply:?}; log: {}", server.log())];
    }
    let mut problems = Vec::new();
    let (compared, data) = match device {
        None => (
            compare_files(&server.disk(), reference),
            vec!["disk.img".to_string()],
        ),
        Some(device) => {
            let len = std::fs::metadata(reference).unwrap().len();
            (compare_prefix(device, reference, len), Vec::new())
        }
    };
    if let Err(e) = compared {
        problems.push(e);
    }
    if !server.scratch_entries().is_empty() {
        problems.push(format!("scratch used: {:?}", server.scratch_entries()));
    }
    if server.data_entries() != data {
        problems.push(format!("/data holds {:?}", server.data_entries()));
    }
    let status = server.wait_exit();
    if !status.success() {
        problems.push(format!("exit {status}"));
    }
    if server.termination() != r#"{"preallocationApplied":false,"message":"Upload Complete"}"# {
        problems.push(format!("termination {:?}", server.termination()));
    }
    if !server.log().contains("upload complete") {
        problems.push("no completion line in the log".to_string());
    }
    problems
}

/// Every format, virtctl-style, each to a fresh server on a Filesystem
/// target: the disk equals qemu-img's conversion, scratch stays empty, the
/// termination message says "Upload Complete" and the process exits 0.
#[test]
fn every_format_converts_in_the_stream_to_a_filesystem_target() {
    if !require(&[
        "curl", "openssl", "qemu-img", "qemu-io", "gzip", "xz", "zstd",
    ]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    let plain = images.qcow2("plain.qcow2", &[]);
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("qcow2", plain.clone(), "qcow2"),
        (
            "qcow2 compressed",
            images.qcow2("compressed.qcow2", &["-c"]),
            "qcow2",
        ),
        ("qcow2 tables at end", images.qcow2_tables_at_end(), "qcow2"),
        ("raw", images.raw(), "raw"),
        ("iso", images.iso(), "raw"),
        ("qcow2.gz", images.compressed(&plain, "gzip", "gz"), "qcow2"),
        ("qcow2.xz", images.compressed(&plain, "xz", "xz"), "qcow2"),
        (
            "raw.zst",
            images.compressed(&images.raw(), "zstd", "zst"),
            "raw",
        ),
    ];
    let mut failures = Vec::new();
    for (name, image, format) in &cases {
        // The reference is of the uncompressed image.
        let reference = match *name {
            "qcow2.gz" | "qcow2.xz" => images.reference(&plain, "qcow2"),
            "raw.zst" => images.raw(),
            _ => images.reference(image, format),
        };
        let size = std::fs::metadata(&reference).unwrap().len();
        let mut server = Server::start(
            &pki,
            Setup::default().with("UPLOAD_IMAGE_SIZE", &size.to_string()),
        );
        let reply = virtctl_upload(&server, &pki, image);
        failures.extend(
            finished_upload(&mut server, &reply, None, &reference)
                .into_iter()
                .map(|e| format!("{name}: {e}")),
        );
    }
    note(&format!(
        "upload formats: {} of {} identical to qemu-img",
        cases.len() - failures.len(),
        cases.len()
    ));
    common::finish("upload formats", failures);
}

/// One image per format beyond qcow2/raw/ISO (`testdata/make_upload_formats.sh`:
/// VMDK monolithicSparse and streamOptimized, VHD dynamic and fixed, VHDX, VDI,
/// and an OVA around a streamOptimized VMDK), each uploaded virtctl-style to a
/// fresh server twice: on a Filesystem target and on a fresh 4 KiB-sector loop
/// device full of random bytes. Each disk equals qemu-img's conversion, the
/// scratch directory stays empty, and the device's bytes past the disk are
/// untouched but for its last MiB, zeroed.
#[test]
fn every_new_format_uploads_to_a_filesystem_and_a_4k_block_target() {
    if !require(&["curl", "openssl", "qemu-img", "tar", "losetup"]) {
        return;
    }
    let dir = common::generated_matrix(
        "DISKIMPORT_UPLOAD_FORMATS_DIR",
        "upload_formats",
        "make_upload_formats.sh",
    );
    let manifest = std::fs::read_to_string(dir.join("manifest.txt")).unwrap();
    let cases: Vec<(&str, PathBuf, PathBuf)> = manifest
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 3, "manifest line {line:?}");
            (fields[0], dir.join(fields[1]), dir.join(fields[2]))
        })
        .collect();
    let labels: Vec<&str> = cases.iter().map(|(label, ..)| *label).collect();
    for wanted in [
        "vmdk-monolithicSparse",
        "vmdk-streamOptimized",
        "vhd-dynamic",
        "vhd-fixed",
        "vhdx",
        "vdi",
        "ova-streamOptimized",
    ] {
        assert!(labels.contains(&wanted), "{wanted} missing from {labels:?}");
    }
    const DEVICE: u64 = 32 * MIB;
    let pki = Pki::new();
    let mut failures = Vec::new();
    for (label, image, reference) in &cases {
        let size = std::fs::metadata(reference).unwrap().len();
        assert!(
            size <= DEVICE - MIB && size % 4096 == 0,
            "{label}: size {size}"
        );

        // A fixed VHD streams as raw until its footer, the last 512 bytes,
        // arrives: it is sized from Content-Length, so its volume must hold
        // the footer too (as CDI's, which keeps the footer, must); disk.img
        // is then the volume rounded down, the disk's size.
        let volume = if *label == "vhd-fixed" {
            std::fs::metadata(image).unwrap().len()
        } else {
            size
        };
        let mut server = Server::start(
            &pki,
            Setup::default().with("UPLOAD_IMAGE_SIZE", &volume.to_string()),
        );
        let reply = virtctl_upload(&server, &pki, image);
        failures.extend(
            finished_upload(&mut server, &reply, None, reference)
                .into_iter()
                .map(|e| format!("{label} (filesystem): {e}")),
        );

        let Some(device) = LoopDevice::new(DEVICE, 4096) else {
            return;
        };
        // Past the disk the device keeps its bytes, except its last MiB,
        // which the block sink zeroes (no stale backup GPT).
        let kept = DEVICE - MIB - size;
        let kept_before = read_range(&device.device, size, kept);
        let mut server = Server::start(
            &pki,
            Setup {
                block: Some(device.device.as_path()),
                ..Setup::default()
            }
            .with("UPLOAD_IMAGE_SIZE", &DEVICE.to_string()),
        );
        let reply = virtctl_upload(&server, &pki, image);
        let mut problems = finished_upload(&mut server, &reply, Some(&device.device), reference);
        if read_range(&device.device, size, kept) != kept_before {
            problems.push("bytes past the disk changed on the device".to_string());
        }
        if read_range(&device.device, DEVICE - MIB, MIB)
            .iter()
            .any(|&b| b != 0)
        {
            problems.push("the device's last MiB is not zero".to_string());
        }
        failures.extend(
            problems
                .into_iter()
                .map(|e| format!("{label} (4K block): {e}")),
        );
    }
    note(&format!(
        "upload of the new formats: {} images x 2 targets, {} failure(s)",
        cases.len(),
        failures.len()
    ));
    common::finish("upload of the new formats", failures);
}

/// `len` bytes of `path` from `offset`.
fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    file.read_exact(&mut buf).unwrap();
    buf
}

/// A qcow2 onto a 4 KiB-sector loop device (Block volume): the device
/// starts with exactly qemu-img's bytes (holes written as zeroes over the
/// random bytes it held).
#[test]
fn a_qcow2_upload_lands_on_a_4k_block_device() {
    if !require(&["curl", "openssl", "qemu-img", "losetup"]) {
        return;
    }
    let Some(device) = LoopDevice::new(80 * MIB, 4096) else {
        return;
    };
    let pki = Pki::new();
    let images = Images::new();
    let image = images.qcow2("c.qcow2", &["-c"]);
    let reference = images.reference(&image, "qcow2");
    let mut server = Server::start(
        &pki,
        Setup {
            block: Some(device.device.as_path()),
            ..Setup::default()
        }
        .with("FILESYSTEM_OVERHEAD", "0")
        .with("UPLOAD_IMAGE_SIZE", "80Mi"),
    );
    let reply = virtctl_upload(&server, &pki, &image);
    assert_eq!(reply.code, 200, "{reply:?}: {}", server.log());
    compare_prefix(&device.device, &reference, 64 * MIB).unwrap();
    assert!(server.wait_exit().success());
    assert!(server.termination().contains("Upload Complete"));
    assert!(
        server.data_entries().is_empty(),
        "{:?}",
        server.data_entries()
    );
}

/// Probes and certificates: /healthz and HEAD upload-async need none; an
/// upload without a certificate or with the wrong CN is 401; a certificate
/// from another CA fails the handshake; nothing is written; other paths and
/// methods are 404 as in CDI.
#[test]
fn client_certificates_are_required_and_checked() {
    if !require(&["curl", "openssl", "qemu-img"]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    let image = images.qcow2("d.qcow2", &[]);
    let server = Server::start(&pki, Setup::default());
    let health = curl(&server, &["-X".into(), "DELETE".into()], "/healthz", None);
    assert_eq!((health.code, health.body.as_str()), (200, "OK"));
    for route in ["/v1beta1/upload-async", "/v1alpha1/upload-form-async"] {
        let head = curl(&server, &["-I".into()], route, None);
        assert_eq!(head.code, 200, "HEAD {route} without a certificate");
    }
    let data: Vec<OsString> = vec![
        "--data-binary".into(),
        format!("@{}", image.display()).into(),
    ];
    let anonymous = curl(&server, &data, "/v1beta1/upload", None);
    assert_eq!(anonymous.code, 401, "{anonymous:?}");
    let wrong_cn = curl(&server, &data, "/v1beta1/upload", Some((&pki, "wrong-cn")));
    assert_eq!(wrong_cn.code, 401, "{wrong_cn:?}");
    let other_ca = curl(&server, &data, "/v1beta1/upload", Some((&pki, "foreign")));
    assert_eq!(
        other_ca.code, 0,
        "a foreign CA's certificate must fail the handshake"
    );
    let head_sync = curl(
        &server,
        &["-I".into()],
        "/v1beta1/upload",
        Some((&pki, "good")),
    );
    assert_eq!(head_sync.code, 404);
    let get = curl(&server, &[], "/v1beta1/upload-async", Some((&pki, "good")));
    assert_eq!((get.code, get.body.as_str()), (404, ""));
    let unknown = curl(&server, &data, "/v1beta1/elsewhere", Some((&pki, "good")));
    assert_eq!(
        (unknown.code, unknown.body.as_str()),
        (404, "404 page not found\n")
    );
    assert!(
        server.data_entries().is_empty(),
        "{:?}",
        server.data_entries()
    );
    // The server still takes the real upload.
    let good = upload(&server, &pki, "/v1alpha1/upload", &image, &[]);
    assert_eq!(good.code, 200, "{good:?}");
}

/// One upload at a time: a second POST while the first is streaming is 503;
/// after success a POST is 409. Progress is on /status meanwhile.
#[test]
fn busy_is_503_and_done_is_409() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    let raw = images.raw();
    let server = Server::start(
        &pki,
        Setup::default().with("DISKIMPORT_UPLOAD_LINGER", "60"),
    );
    // The first upload streams from a pipe the test controls (chunked).
    let mut first = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(pki.path("ca.crt"))
        .arg("--cert")
        .arg(pki.path("good.crt"))
        .arg("--key")
        .arg(pki.path("good.key"))
        .args(["-X", "POST", "-T", "-"])
        .arg(server.url("/v1beta1/upload"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let data = std::fs::read(&raw).unwrap();
    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(&data[..(8 * MIB) as usize]).unwrap();
    stdin.flush().unwrap();
    let started = Instant::now();
    loop {
        let status = server.status();
        if status["phase"] == "transferring" && status["bytes_read"].as_u64() > Some(0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{status}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = upload(&server, &pki, "/v1beta1/upload", &images.raw(), &[]);
    assert_eq!(second.code, 503, "{second:?}");
    stdin.write_all(&data[(8 * MIB) as usize..]).unwrap();
    drop(stdin);
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        server.log()
    );
    compare_files(&server.disk(), &raw).unwrap();
    let after = upload(&server, &pki, "/v1beta1/upload", &raw, &[]);
    assert_eq!(after.code, 409, "{after:?}");
    let status = server.status();
    assert_eq!(status["phase"], "succeeded", "{status}");
    assert_eq!(status["percent"], 100.0, "{status}");
    assert_eq!(status["bytes_read"].as_u64(), Some(64 * MIB), "{status}");
}

/// Progress from Content-Length: the metric and /status report the size.
#[test]
fn progress_is_reported_from_content_length() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    let server = Server::start(
        &pki,
        Setup::default().with("DISKIMPORT_UPLOAD_LINGER", "60"),
    );
    let reply = upload(&server, &pki, "/v1beta1/upload", &images.raw(), &[]);
    assert_eq!(reply.code, 200, "{reply:?}");
    let status = server.status();
    assert_eq!(status["bytes_total"].as_u64(), Some(64 * MIB), "{status}");
    let metrics = curl(&server, &[], "/metrics", None);
    assert!(
        metrics
            .body
            .contains("kubevirt_cdi_import_progress_total{ownerUID=\"\"} 100"),
        "{}",
        metrics.body
    );
}

/// The deadline with nothing uploaded: CDI's "Deadline Passed" message and
/// exit 0. Started as `cdi-uploadserver -alsologtostderr -v=3`.
#[test]
fn the_deadline_ends_an_idle_server() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let pki = Pki::new();
    let deadline = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let mut server = Server::start(
        &pki,
        Setup {
            as_cdi_program: true,
            ..Setup::default()
        }
        .with("DEADLINE", &deadline),
    );
    let status = server.wait_exit();
    assert!(status.success(), "{status}: {}", server.log());
    assert_eq!(
        server.termination(),
        r#"{"deadlinePassed":true,"message":"Deadline Passed"}"#
    );
    assert!(server.data_entries().is_empty());
}

/// A qcow2 whose virtual size exceeds the volume is refused from its header
/// with CDI's 400, before the body is read: the server reads a few MiB of a
/// 64 MiB body. The same for a raw body longer than the volume. No disk.
#[test]
fn a_too_small_volume_is_refused_before_the_body_is_read() {
    if !require(&["curl", "openssl", "qemu-img"]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    // 64 MiB of random data in a 1 GiB disk.
    let big_raw = images.path("big.raw");
    let mut data = vec![0u8; (64 * MIB) as usize];
    fill_random(&mut data, 7);
    std::fs::write(&big_raw, &data).unwrap();
    let qcow2 = images.path("big.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            big_raw.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ],
    );
    run("qemu-img", &["resize", "-q", qcow2.to_str().unwrap(), "1G"]);
    let body_len = std::fs::metadata(&qcow2).unwrap().len();
    let server = Server::start(&pki, Setup::default().with("UPLOAD_IMAGE_SIZE", "32Mi"));
    let mut failures = Vec::new();
    for (name, file) in [("qcow2", &qcow2), ("raw", &big_raw)] {
        let reply = upload(&server, &pki, "/v1beta1/upload", file, &[]);
        let read = server.status()["bytes_read"].as_u64().unwrap_or(u64::MAX);
        note(&format!(
            "too small ({name}): the server read {read} of {body_len} body bytes \
             (curl sent {})",
            reply.uploaded
        ));
        if reply.code != 400
            || !reply.body.starts_with(
                "Saving stream failed: effective image size is larger than the reported available storage: ",
            )
        {
            failures.push(format!("{name}: {reply:?}"));
        }
        if read > 8 * MIB {
            failures.push(format!("{name}: the server read {read} bytes of the body"));
        }
        if !server.data_entries().is_empty() {
            failures.push(format!("{name}: /data holds {:?}", server.data_entries()));
        }
    }
    common::finish("too small", failures);
}

/// `upload-archive`: a gzip'd tar unpacked into /data. `upload-form`: the
/// `file` part, after another part, converted; a non-multipart body is 400.
#[test]
fn archive_and_form_uploads() {
    if !require(&["curl", "openssl", "qemu-img", "tar"]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    let tree = images.path("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(tree.join("sub/b.bin"), vec![9u8; 100_000]).unwrap();
    let tarball = images.path("tree.tar.gz");
    run(
        "tar",
        &[
            "-czf",
            tarball.to_str().unwrap(),
            "-C",
            tree.to_str().unwrap(),
            "a.txt",
            "sub",
        ],
    );
    let archive_server = Server::start(&pki, Setup::default());
    let reply = upload(
        &archive_server,
        &pki,
        "/v1beta1/upload-archive",
        &tarball,
        &[],
    );
    assert_eq!(reply.code, 200, "{reply:?}");
    let data = archive_server.root.join("data");
    assert_eq!(
        std::fs::read_to_string(data.join("a.txt")).unwrap(),
        "alpha\n"
    );
    assert_eq!(
        std::fs::read(data.join("sub/b.bin")).unwrap(),
        vec![9u8; 100_000]
    );
    drop(archive_server);

    let image = images.qcow2("f.qcow2", &["-c"]);
    let reference = images.reference(&image, "qcow2");
    let mut form_server = Server::start(&pki, Setup::default());
    let not_form = upload(&form_server, &pki, "/v1beta1/upload-form", &image, &[]);
    assert_eq!(not_form.code, 400, "{not_form:?}");
    assert!(
        not_form.body.starts_with("Saving stream failed: "),
        "{not_form:?}"
    );
    let form: Vec<OsString> = vec![
        "-F".into(),
        "note=first part".into(),
        "-F".into(),
        format!("file=@{};type=application/octet-stream", image.display()).into(),
    ];
    let reply = curl(
        &form_server,
        &form,
        "/v1beta1/upload-form-async",
        Some((&pki, "good")),
    );
    assert_eq!(reply.code, 200, "{reply:?}: {}", form_server.log());
    compare_files(&form_server.disk(), &reference).unwrap();
    assert!(form_server.wait_exit().success());
}

/// A form without a `file` part is a client error and leaves no disk.
#[test]
fn a_form_without_a_file_part_is_400() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let pki = Pki::new();
    let server = Server::start(&pki, Setup::default());
    let form: Vec<OsString> = vec!["-F".into(), "image=nothing here".into()];
    let reply = curl(&server, &form, "/v1beta1/upload-form", Some((&pki, "good")));
    assert_eq!(reply.code, 400, "{reply:?}");
    assert!(reply.body.contains("no part named"), "{reply:?}");
    assert!(server.data_entries().is_empty());
}

/// `bytes` in the snappy framing format, as CDI's cloner sends them.
fn snappy_framed(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = snap::write::FrameEncoder::new(Vec::new());
    encoder.write_all(bytes).unwrap();
    encoder.into_inner().unwrap()
}

/// POSTs a clone stream (chunked, as the cloner does) of `kind`.
fn clone_upload(server: &Server, pki: &Pki, kind: &str, path: &str, body: &Path) -> Reply {
    let args: Vec<OsString> = vec![
        "-H".into(),
        format!("x-cdi-content-type: {kind}").into(),
        "-H".into(),
        "Transfer-Encoding: chunked".into(),
        "--data-binary".into(),
        format!("@{}", body.display()).into(),
    ];
    curl(server, &args, path, Some((pki, "good")))
}

/// A source volume for a filesystem clone: a sparse disk.img and other files.
fn clone_source(images: &Images) -> PathBuf {
    let dir = images.path("volume");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let disk = dir.join("disk.img");
    let file = std::fs::File::create(&disk).unwrap();
    file.set_len(64 * MIB).unwrap();
    let mut chunk = vec![0u8; MIB as usize];
    for (at, seed) in [(0u64, 11u64), (20, 12), (63, 13)] {
        fill_random(&mut chunk, seed);
        std::os::unix::fs::FileExt::write_all_at(&file, &chunk, at * MIB).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "clone me\n").unwrap();
    std::fs::write(dir.join("sub/more.bin"), vec![3u8; 5000]).unwrap();
    dir
}

/// `tar -S` of the volume, snappy-framed.
fn framed_tar(images: &Images, volume: &Path) -> PathBuf {
    let tar = images.path("volume.tar");
    run(
        "tar",
        &[
            "-S",
            "-cf",
            tar.to_str().unwrap(),
            "-C",
            volume.to_str().unwrap(),
            "disk.img",
            "notes.txt",
            "sub",
        ],
    );
    let framed = images.path("volume.tar.sz");
    std::fs::write(&framed, snappy_framed(&std::fs::read(&tar).unwrap())).unwrap();
    framed
}

/// Both clone kinds to a Filesystem target: a raw stream to disk.img, and a
/// `tar -S` stream unpacked (sparse members expanded, holes kept); async
/// clone is refused as in CDI.
#[test]
fn clone_streams_to_a_filesystem_target() {
    if !require(&["curl", "openssl", "tar"]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    let framed_raw = images.path("disk.raw.sz");
    std::fs::write(
        &framed_raw,
        snappy_framed(&std::fs::read(images.raw()).unwrap()),
    )
    .unwrap();
    let mut block = Server::start(&pki, Setup::default());
    let refused = clone_upload(
        &block,
        &pki,
        "blockdevice-clone",
        "/v1beta1/upload-async",
        &framed_raw,
    );
    assert_eq!(
        (refused.code, refused.body.as_str()),
        (500, "Saving stream failed: async clone not supported")
    );
    let reply = clone_upload(
        &block,
        &pki,
        "BlockDevice-Clone",
        "/v1beta1/upload",
        &framed_raw,
    );
    assert_eq!(reply.code, 200, "{reply:?}: {}", block.log());
    compare_files(&block.disk(), &images.raw()).unwrap();
    assert!(block.wait_exit().success());
    assert_eq!(
        block.termination(),
        r#"{"preallocationApplied":false,"message":"Clone Complete"}"#
    );

    let volume = clone_source(&images);
    let framed = framed_tar(&images, &volume);
    let mut fs = Server::start(&pki, Setup::default());
    let reply = clone_upload(&fs, &pki, "filesystem-clone", "/v1beta1/upload", &framed);
    assert_eq!(reply.code, 200, "{reply:?}: {}", fs.log());
    let data = fs.root.join("data");
    compare_files(&data.join("disk.img"), &volume.join("disk.img")).unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("notes.txt")).unwrap(),
        "clone me\n"
    );
    assert_eq!(
        std::fs::read(data.join("sub/more.bin")).unwrap(),
        vec![3u8; 5000]
    );
    let allocated = common::allocated_bytes(&data.join("disk.img"));
    assert!(
        allocated < 16 * MIB,
        "holes filled: {allocated} bytes allocated"
    );
    assert!(fs.wait_exit().success());
    assert_eq!(
        fs.termination(),
        r#"{"preallocationApplied":true,"message":"Clone Complete"}"#
    );
}

/// A clone stream whose frame CRC is corrupt is refused and leaves no disk.
#[test]
fn a_corrupt_clone_stream_is_refused() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    let mut framed = snappy_framed(&std::fs::read(images.raw()).unwrap());
    // The CRC of the first data chunk (after the 10-byte stream identifier
    // and the chunk's 4-byte header).
    framed[14] ^= 0x5a;
    let path = images.path("bad.sz");
    std::fs::write(&path, framed).unwrap();
    let server = Server::start(&pki, Setup::default());
    let reply = clone_upload(&server, &pki, "blockdevice-clone", "/v1beta1/upload", &path);
    assert_eq!(reply.code, 500, "{reply:?}");
    assert!(
        server.data_entries().is_empty(),
        "{:?}",
        server.data_entries()
    );
}

/// A filesystem clone to a Block target: the disk.img member, expanded, on
/// the device.
#[test]
fn a_filesystem_clone_lands_on_a_block_device() {
    if !require(&["curl", "openssl", "tar", "losetup"]) {
        return;
    }
    let Some(device) = LoopDevice::new(64 * MIB, 4096) else {
        return;
    };
    let pki = Pki::new();
    let images = Images::new();
    let volume = clone_source(&images);
    let framed = framed_tar(&images, &volume);
    let mut server = Server::start(
        &pki,
        Setup {
            block: Some(device.device.as_path()),
            ..Setup::default()
        },
    );
    let reply = clone_upload(
        &server,
        &pki,
        "filesystem-clone",
        "/v1beta1/upload",
        &framed,
    );
    assert_eq!(reply.code, 200, "{reply:?}: {}", server.log());
    compare_prefix(&device.device, &volume.join("disk.img"), 64 * MIB).unwrap();
    assert!(server.wait_exit().success());
    assert!(server.termination().contains("Clone Complete"));
}

/// The optional checksum: a wrong `x-diskimport-checksum` is 400 with no
/// disk left; the right one (or an RFC 9530 Content-Digest) succeeds.
#[test]
fn the_checksum_header_is_verified() {
    if !require(&["curl", "openssl", "qemu-img"]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    let image = images.qcow2("sum.qcow2", &[]);
    let sha = sha256_file(&image).unwrap();
    let server = Server::start(&pki, Setup::default());
    let wrong = format!("x-diskimport-checksum: sha256:{}", "0".repeat(64));
    let reply = upload(&server, &pki, "/v1beta1/upload", &image, &[&wrong]);
    assert_eq!(reply.code, 400, "{reply:?}");
    assert!(reply.body.contains("checksum mismatch"), "{reply:?}");
    assert!(
        server.data_entries().is_empty(),
        "{:?}",
        server.data_entries()
    );
    let malformed = upload(
        &server,
        &pki,
        "/v1beta1/upload",
        &image,
        &["x-diskimport-checksum: sha256:12"],
    );
    assert_eq!(malformed.code, 400, "{malformed:?}");
    let right = format!("x-diskimport-checksum: sha256:{sha}");
    let reply = upload(&server, &pki, "/v1beta1/upload", &image, &[&right]);
    assert_eq!(reply.code, 200, "{reply:?}");
    drop(server);

    use base64::Engine as _;
    let digest = base64::engine::general_purpose::STANDARD.encode(hex::decode(&sha).unwrap());
    let server = Server::start(&pki, Setup::default());
    let bad_digest = format!(
        "Content-Digest: sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode([1u8; 32])
    );
    let reply = upload(&server, &pki, "/v1beta1/upload", &image, &[&bad_digest]);
    assert_eq!(reply.code, 400, "{reply:?}");
    let good_digest = format!("Content-Digest: sha-256=:{digest}:");
    let reply = upload(&server, &pki, "/v1beta1/upload", &image, &[&good_digest]);
    assert_eq!(reply.code, 200, "{reply:?}");
    compare_files(&server.disk(), &images.reference(&image, "qcow2")).unwrap();
}

/// A qcow2 that cannot be streamed within the memory budget, with no
/// scratch volume mounted: CDI's "scratch space required" 500, no disk.
#[test]
fn without_scratch_an_unstreamable_qcow2_asks_for_it() {
    if !require(&["curl", "openssl", "qemu-img", "qemu-io"]) {
        return;
    }
    let pki = Pki::new();
    let images = Images::new();
    let image = images.qcow2_tables_at_end();
    let server = Server::start(
        &pki,
        Setup {
            scratch: false,
            ..Setup::default()
        }
        .with("DISKIMPORT_MEMORY_BUDGET", "0"),
    );
    let reply = upload(&server, &pki, "/v1beta1/upload", &image, &[]);
    assert_eq!(
        (reply.code, reply.body.as_str()),
        (
            500,
            "Saving stream failed: scratch space required and none found"
        ),
        "{}",
        server.log()
    );
    assert!(
        server.data_entries().is_empty(),
        "{:?}",
        server.data_entries()
    );
}
