//! `docker://` sources against a real registry: Debian's docker-registry
//! (distribution 2.8) started by each test on 127.0.0.1 (plain, or TLS + basic
//! auth) with `../shared/servers/registry_start.sh`, images built with
//! `make_containerdisk.py` and pushed with skopeo, imported with the real
//! binary and compared byte for byte with `qemu-img convert -O raw`.
//!
//! Needs docker-registry, skopeo, apache2-utils (htpasswd), openssl, python3,
//! qemu-img, xz and zstd. Without them the tests are skipped with a message;
//! with `CI` set they fail.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_diskimport");
/// Longest any one external command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn servers_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/servers"))
}

fn shared_corpus() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus"))
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
}

/// True when every tool and the shared helper scripts are there. Otherwise
/// skips (prints why), or panics under CI.
fn tools_present() -> bool {
    let tools = [
        "docker-registry",
        "skopeo",
        "htpasswd",
        "openssl",
        "python3",
        "qemu-img",
        "xz",
        "zstd",
    ];
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| !on_path(t))
        .map(|t| t.to_string())
        .collect();
    if !servers_dir().join("registry_start.sh").is_file() {
        missing.push(format!(
            "{}",
            servers_dir().join("registry_start.sh").display()
        ));
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {} (apt-get install docker-registry skopeo apache2-utils qemu-utils xz-utils zstd; \
         the shared servers dir must sit next to the repository)",
        missing.join(", ")
    );
    common::skip(&why);
    false
}

/// Runs `cmd` to its end, killed after [`COMMAND_TIMEOUT`].
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let started = Instant::now();
    // Drain the pipes on threads so a chatty child cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!("{what} did not finish in {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A docker-registry child process, killed (by PID) and reaped on drop.
struct Registry {
    child: Child,
    port: u16,
    data: PathBuf,
    /// Directory holding the test CA as `ca.crt` (TLS only).
    ca_dir: Option<PathBuf>,
    creds: Option<(String, String)>,
}

impl Registry {
    fn start(work: &Path, tls: bool, auth: bool) -> Registry {
        std::fs::create_dir_all(work).unwrap();
        let log = std::fs::File::create(work.join("registry.log")).unwrap();
        let mut cmd = Command::new(servers_dir().join("registry_start.sh"));
        cmd.arg(work).env("FOREGROUND", "1");
        if tls {
            cmd.arg("tls");
        }
        if auth {
            cmd.arg("auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting registry_start.sh");
        let mut registry = Registry {
            child,
            port: 0,
            data: work.join("data"),
            ca_dir: None,
            creds: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let env_file = work.join("env");
        let env = loop {
            if let Ok(text) = std::fs::read_to_string(&env_file) {
                break text;
            }
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!(
                    "registry exited early ({status}): {}",
                    std::fs::read_to_string(work.join("registry.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "registry_start.sh wrote no env file"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let get = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or("")
                .to_string()
        };
        registry.port = get("REG_PORT").parse().expect("REG_PORT");
        if tls {
            let ca_dir = work.join("trust");
            std::fs::create_dir_all(&ca_dir).unwrap();
            std::fs::copy(get("REG_CA"), ca_dir.join("ca.crt")).unwrap();
            registry.ca_dir = Some(ca_dir);
        }
        if auth {
            registry.creds = Some((get("REG_USER"), get("REG_PASS")));
        }
        while TcpStream::connect(("127.0.0.1", registry.port)).is_err() {
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!("registry exited ({status})");
            }
            assert!(Instant::now() < deadline, "registry did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    fn image(&self, repo_tag: &str) -> String {
        format!("docker://127.0.0.1:{}/{repo_tag}", self.port)
    }

    /// Pushes `oci:layout:tag` with skopeo.
    fn push(&self, layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q"]);
        match &self.ca_dir {
            Some(dir) => {
                cmd.arg("--dest-cert-dir").arg(dir);
            }
            None => {
                cmd.arg("--dest-tls-verify=false");
            }
        }
        if let Some((user, pass)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{user}:{pass}"));
        }
        cmd.args(extra)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(self.image(dest));
        run_ok(&mut cmd);
    }

    /// Pushes a layout's image as it is, blobs and manifest byte for byte
    /// (skopeo would gzip an uncompressed layer). Plain registry only.
    fn push_verbatim(&self, layout: &Path, manifest_digest: &str, repo: &str, tag: &str) {
        let client = reqwest::blocking::Client::new();
        let base = format!("http://127.0.0.1:{}/v2/{repo}", self.port);
        let blob = |digest: &str| {
            std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(digest.trim_start_matches("sha256:")),
            )
            .unwrap()
        };
        let manifest_bytes = blob(manifest_digest);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
        for layer in manifest["layers"].as_array().unwrap() {
            digests.push(layer["digest"].as_str().unwrap().to_string());
        }
        for digest in digests {
            let started = client
                .post(format!("{base}/blobs/uploads/"))
                .send()
                .unwrap();
            assert_eq!(started.status().as_u16(), 202, "starting an upload");
            let location = started.headers()["location"].to_str().unwrap().to_string();
            let location = if location.starts_with('/') {
                format!("http://127.0.0.1:{}{location}", self.port)
            } else {
                location
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let put = client
                .put(format!("{location}{sep}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(blob(&digest))
                .send()
                .unwrap();
            assert_eq!(put.status().as_u16(), 201, "uploading {digest}");
        }
        let put = client
            .put(format!("{base}/manifests/{tag}"))
            .header("content-type", manifest["mediaType"].as_str().unwrap())
            .body(manifest_bytes)
            .send()
            .unwrap();
        assert_eq!(put.status().as_u16(), 201, "putting the manifest");
    }

    /// The registry's stored file of a blob.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A temp dir with a test disk: raw, its qcow2, and the raw reference made by
/// `qemu-img convert -O raw` of the qcow2.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::Builder::new()
                .prefix("registry-source")
                .tempdir()
                .unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A 6 MiB raw disk with data in a few places (`seed` varies it) and
    /// holes elsewhere.
    fn raw_disk(&self, name: &str, seed: u8) -> PathBuf {
        let path = self.path(name);
        let mut data = vec![0u8; 6 << 20];
        let mut x = 0x9e37_79b9u32 ^ u32::from(seed);
        for (start, len) in [
            (0usize, 70_000usize),
            (1 << 20, 4096),
            (3 << 20, 300_000),
            ((6 << 20) - 512, 512),
        ] {
            for b in &mut data[start..start + len] {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
        }
        data[..8].copy_from_slice(b"DISKTEST");
        data[8] = seed;
        std::fs::write(&path, data).unwrap();
        path
    }

    fn qcow2_of(&self, raw: &Path, name: &str) -> PathBuf {
        let path = self.path(name);
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(raw)
                .arg(&path),
        );
        path
    }

    /// What qemu-img makes of `image` as raw.
    fn reference_raw(&self, image: &Path, name: &str) -> Vec<u8> {
        let path = self.path(name);
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(image)
                .arg(&path),
        );
        std::fs::read(path).unwrap()
    }

    /// Runs make_containerdisk.py into `layout`; returns its JSON summary.
    fn containerdisk(&self, disk: &Path, layout: &str, tag: &str, extra: &[&str]) -> Value {
        let out = run_ok(
            Command::new("python3")
                .arg(servers_dir().join("make_containerdisk.py"))
                .arg("--disk")
                .arg(disk)
                .arg("--out")
                .arg(self.path(layout))
                .args(["--tag", tag])
                .args(extra),
        );
        serde_json::from_slice(&out.stdout).expect("make_containerdisk.py summary")
    }
}

/// Runs `diskimport convert SOURCE TARGET --quiet ARGS`.
fn convert(source: &str, target: &Path, args: &[&str]) -> Output {
    run(Command::new(BIN)
        .arg("convert")
        .arg(source)
        .arg(target)
        .arg("--quiet")
        .args(args)
        .env_remove("DISKIMPORT_USERNAME")
        .env_remove("DISKIMPORT_PASSWORD"))
}

fn assert_imported(out: &Output, target: &Path, expected: &[u8]) {
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(target).unwrap();
    assert_eq!(got.len(), expected.len(), "target size");
    assert!(
        got == expected,
        "target differs from qemu-img's raw conversion"
    );
}

fn assert_failed_with(out: &Output, target: &Path, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "import should fail; stderr: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr lacks {needle:?}: {stderr}"
        );
    }
    assert!(
        !target.exists(),
        "a failed import left {}",
        target.display()
    );
    eprintln!("failed as expected: {}", stderr.trim());
    stderr
}

#[test]
fn qcow2_gzip_layer_imports_byte_identical() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let raw = fx.raw_disk("raw.img", 1);
    let qcow2 = fx.qcow2_of(&raw, "disk.qcow2");
    let expected = fx.reference_raw(&qcow2, "ref.raw");
    let summary = fx.containerdisk(&qcow2, "layout", "v1", &[]);
    assert!(summary["layers"][0]["mediaType"]
        .as_str()
        .unwrap()
        .ends_with("+gzip"));
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push(&fx.path("layout"), "v1", "containerdisks/test:v1", &[]);
    let target = fx.path("out.raw");
    let out = convert(
        &registry.image("containerdisks/test:v1"),
        &target,
        &["--insecure"],
    );
    assert_imported(&out, &target, &expected);
}

#[test]
fn qcow2_zstd_layer_as_docker_v2_manifest_with_extra_layers_imports() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let raw = fx.raw_disk("raw.img", 2);
    let qcow2 = fx.qcow2_of(&raw, "disk.qcow2");
    let expected = fx.reference_raw(&qcow2, "ref.raw");
    fx.containerdisk(&qcow2, "layout", "layered", &["--extra-layers", "2"]);
    fx.containerdisk(&qcow2, "layout", "zstd", &["--compression", "zstd"]);
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push(
        &fx.path("layout"),
        "layered",
        "cd/layered:v2s2",
        &["--format", "v2s2"],
    );
    registry.push(&fx.path("layout"), "zstd", "cd/zstd:v1", &[]);
    for image in ["cd/layered:v2s2", "cd/zstd:v1"] {
        let target = fx.path(&format!("{}.raw", image.replace(['/', ':'], "_")));
        let out = convert(&registry.image(image), &target, &["--insecure"]);
        assert_imported(&out, &target, &expected);
    }
}

#[test]
fn uncompressed_layer_with_xz_raw_disk_imports_byte_identical() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let raw = fx.raw_disk("raw.img", 3);
    let expected = fx.reference_raw(&raw, "ref.raw");
    run_ok(Command::new("xz").args(["-k", "-T1", "-3"]).arg(&raw));
    let xz = fx.path("raw.img.xz");
    let summary = fx.containerdisk(&xz, "layout", "xz", &["--compression", "none"]);
    let manifest = summary["top_digest"].as_str().unwrap();
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push_verbatim(&fx.path("layout"), manifest, "cd/xz", "v1");
    let target = fx.path("out.raw");
    let out = convert(&registry.image("cd/xz:v1"), &target, &["--insecure"]);
    assert_imported(&out, &target, &expected);
    // The same image pinned by digest.
    let pinned = fx.path("pinned.raw");
    let out = convert(
        &registry.image(&format!("cd/xz@{manifest}")),
        &pinned,
        &["--insecure"],
    );
    assert_imported(&out, &pinned, &expected);
}

/// Builds an OCI index in `layout` under `tag` from single-arch tags.
fn write_index(layout: &Path, tag: &str, parts: &[(&str, &str)]) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let manifests = index["manifests"].as_array().unwrap().clone();
    let entries: Vec<Value> = parts
        .iter()
        .map(|(part_tag, arch)| {
            let d = manifests
                .iter()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == *part_tag)
                .unwrap();
            json!({"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"],
                   "platform": {"architecture": arch, "os": "linux"}})
        })
        .collect();
    let body = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
    )
    .unwrap();
    let hex = hex::encode(Sha256::digest(&body));
    std::fs::write(layout.join("blobs/sha256").join(&hex), &body).unwrap();
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": OCI_INDEX, "digest": format!("sha256:{hex}"), "size": body.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}}));
    std::fs::File::create(&index_path)
        .unwrap()
        .write_all(&serde_json::to_vec(&index).unwrap())
        .unwrap();
}

#[test]
fn multi_arch_index_is_resolved_by_arch() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let amd = fx.qcow2_of(&fx.raw_disk("amd.img", 10), "amd.qcow2");
    let arm = fx.qcow2_of(&fx.raw_disk("arm.img", 11), "arm.qcow2");
    let expected_amd = fx.reference_raw(&amd, "amd.ref");
    let expected_arm = fx.reference_raw(&arm, "arm.ref");
    fx.containerdisk(&amd, "layout", "amd", &["--arch", "amd64"]);
    fx.containerdisk(&arm, "layout", "arm", &["--arch", "arm64"]);
    write_index(
        &fx.path("layout"),
        "multi",
        &[("amd", "amd64"), ("arm", "arm64")],
    );
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push(
        &fx.path("layout"),
        "multi",
        "cd/multi:v1",
        &["--multi-arch", "all"],
    );
    registry.push(&fx.path("layout"), "amd", "cd/single:amd64", &[]);
    let image = registry.image("cd/multi:v1");

    let target = fx.path("arm.raw");
    assert_imported(
        &convert(&image, &target, &["--insecure", "--arch", "arm64"]),
        &target,
        &expected_arm,
    );
    let target = fx.path("amd.raw");
    assert_imported(
        &convert(&image, &target, &["--insecure", "--arch", "amd64"]),
        &target,
        &expected_amd,
    );
    if cfg!(target_arch = "x86_64") || cfg!(target_arch = "aarch64") {
        // Default: the machine's architecture.
        let want = if cfg!(target_arch = "x86_64") {
            &expected_amd
        } else {
            &expected_arm
        };
        let target = fx.path("default.raw");
        assert_imported(&convert(&image, &target, &["--insecure"]), &target, want);
    }
    let target = fx.path("s390x.raw");
    let out = convert(&image, &target, &["--insecure", "--arch", "s390x"]);
    assert_failed_with(&out, &target, &["linux/s390x", "linux/amd64, linux/arm64"]);
    // A single-arch image for another architecture than asked is refused, as CDI does.
    let target = fx.path("mismatch.raw");
    let out = convert(
        &registry.image("cd/single:amd64"),
        &target,
        &["--insecure", "--arch", "arm64"],
    );
    assert_failed_with(&out, &target, &["doesn't match requested architecture"]);
}

#[test]
fn tls_auth_registry_imports_with_ca_dir_and_credentials() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let qcow2 = fx.qcow2_of(&fx.raw_disk("raw.img", 20), "disk.qcow2");
    let expected = fx.reference_raw(&qcow2, "ref.raw");
    fx.containerdisk(&qcow2, "layout", "v1", &[]);
    let registry = Registry::start(&fx.path("reg"), true, true);
    registry.push(&fx.path("layout"), "v1", "cd/secure:v1", &[]);
    let (user, pass) = registry.creds.clone().unwrap();
    let ca_dir = registry.ca_dir.clone().unwrap();
    let image = registry.image("cd/secure:v1");
    let target = fx.path("out.raw");
    let out = convert(
        &image,
        &target,
        &[
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--username",
            &user,
            "--password",
            &pass,
        ],
    );
    assert_imported(&out, &target, &expected);
    // --insecure skips verification instead of trusting the CA.
    let target = fx.path("insecure.raw");
    let out = convert(
        &image,
        &target,
        &["--insecure", "--username", &user, "--password", &pass],
    );
    assert_imported(&out, &target, &expected);
}

#[test]
fn wrong_password_is_an_auth_error() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let qcow2 = fx.qcow2_of(&fx.raw_disk("raw.img", 21), "disk.qcow2");
    fx.containerdisk(&qcow2, "layout", "v1", &[]);
    let registry = Registry::start(&fx.path("reg"), true, true);
    registry.push(&fx.path("layout"), "v1", "cd/secure:v1", &[]);
    let (user, _) = registry.creds.clone().unwrap();
    let ca_dir = registry.ca_dir.clone().unwrap();
    let image = registry.image("cd/secure:v1");
    let target = fx.path("out.raw");
    let out = convert(
        &image,
        &target,
        &[
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--username",
            &user,
            "--password",
            "wrong",
        ],
    );
    assert_failed_with(
        &out,
        &target,
        &["failed to pull image", "authentication failed"],
    );
    let out = convert(&image, &target, &["--ca-dir", ca_dir.to_str().unwrap()]);
    assert_failed_with(&out, &target, &["authentication failed"]);
}

#[test]
fn tls_registry_signed_by_unknown_ca_is_refused() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let qcow2 = fx.qcow2_of(&fx.raw_disk("raw.img", 22), "disk.qcow2");
    fx.containerdisk(&qcow2, "layout", "v1", &[]);
    let registry = Registry::start(&fx.path("reg"), true, false);
    registry.push(&fx.path("layout"), "v1", "cd/tls:v1", &[]);
    let other = fx.path("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(fx.path("reg/certs/other-ca.crt"), other.join("other.crt")).unwrap();
    let target = fx.path("out.raw");
    let out = convert(
        &registry.image("cd/tls:v1"),
        &target,
        &["--ca-dir", other.to_str().unwrap()],
    );
    assert_failed_with(&out, &target, &["failed to pull image"]);
}

/// Flips one byte in the middle of a stored blob, keeping its name and size.
fn tamper(path: &Path) {
    let mut data = std::fs::read(path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(path, data).unwrap();
}

#[test]
fn tampered_uncompressed_layer_is_a_digest_mismatch_and_no_target() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let raw = fx.raw_disk("raw.img", 30);
    let summary = fx.containerdisk(&raw, "layout", "raw", &["--compression", "none"]);
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push_verbatim(
        &fx.path("layout"),
        summary["top_digest"].as_str().unwrap(),
        "cd/raw",
        "v1",
    );
    tamper(&registry.blob_file(summary["layers"][0]["digest"].as_str().unwrap()));
    let target = fx.path("out.raw");
    let out = convert(&registry.image("cd/raw:v1"), &target, &["--insecure"]);
    assert_failed_with(&out, &target, &["digest mismatch"]);
}

/// Non-zero bytes in the first and last MiB of the loop device made over a
/// file of `size` bytes filled with random bytes, after `write` ran on it.
fn loop_device_edges_after(
    sector: u32,
    size: u64,
    write: impl FnOnce(&Path),
) -> Option<(usize, usize)> {
    use std::io::{Read, Seek, SeekFrom};
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("device.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(size)
        .unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show", "--sector-size", &sector.to_string()])
        .arg(&backing)
        .output()
        .unwrap();
    if !out.status.success() {
        common::skip(&format!(
            "no loop device (run as root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return None;
    }
    let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
    let _detach = Detach(device.clone());
    let _ = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "oflag=direct", "status=none"])
        .arg(format!("of={}", device.display()))
        .stderr(Stdio::null())
        .status();
    write(&device);
    let _ = Command::new("blockdev")
        .arg("--flushbufs")
        .arg(&device)
        .status();
    let read = |at: u64| {
        let mut f = std::fs::File::open(&device).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        f.read_exact(&mut buf).unwrap();
        buf.iter().filter(|&&b| b != 0).count()
    };
    Some((read(0), read(size - (1 << 20))))
}

#[test]
fn a_digest_mismatch_onto_512_and_4k_block_devices_leaves_their_edges_zero() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let raw = fx.raw_disk("raw.img", 32);
    let summary = fx.containerdisk(&raw, "layout", "raw", &["--compression", "none"]);
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push_verbatim(
        &fx.path("layout"),
        summary["top_digest"].as_str().unwrap(),
        "cd/blk",
        "v1",
    );
    tamper(&registry.blob_file(summary["layers"][0]["digest"].as_str().unwrap()));
    for sector in [512, 4096] {
        let mut stderr = String::new();
        let edges = loop_device_edges_after(sector, 16 << 20, |device| {
            let out = convert(&registry.image("cd/blk:v1"), device, &["--insecure"]);
            assert!(!out.status.success(), "a tampered layer must fail");
            stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        });
        let Some(edges) = edges else { return };
        assert!(stderr.contains("digest mismatch"), "{stderr}");
        assert_eq!(
            edges,
            (0, 0),
            "{sector} B sectors: first/last MiB must be zero"
        );
    }
}

#[test]
fn tampered_gzip_layer_is_a_digest_mismatch_and_no_target() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let qcow2 = fx.qcow2_of(&fx.raw_disk("raw.img", 31), "disk.qcow2");
    let summary = fx.containerdisk(&qcow2, "layout", "v1", &[]);
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push(&fx.path("layout"), "v1", "cd/gz:v1", &[]);
    tamper(&registry.blob_file(summary["layers"][0]["digest"].as_str().unwrap()));
    let target = fx.path("out.raw");
    let out = convert(&registry.image("cd/gz:v1"), &target, &["--insecure"]);
    assert_failed_with(&out, &target, &["digest mismatch"]);
}

#[test]
fn image_without_disk_dir_is_no_disk_image() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let qcow2 = fx.qcow2_of(&fx.raw_disk("raw.img", 40), "disk.qcow2");
    fx.containerdisk(
        &qcow2,
        "layout",
        "nodisk",
        &["--dir", "images", "--extra-layers", "1"],
    );
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push(&fx.path("layout"), "nodisk", "cd/nodisk:v1", &[]);
    let target = fx.path("out.raw");
    let image = registry.image("cd/nodisk:v1");
    let out = convert(&image, &target, &["--insecure"]);
    assert_failed_with(
        &out,
        &target,
        &["no disk image", image.trim_start_matches("docker://")],
    );
}

#[test]
fn bootc_image_without_disk_is_no_disk_image() {
    if !tools_present() {
        return;
    }
    let archive = shared_corpus().join("cdi/bootc-registry-image.tar");
    assert!(archive.is_file(), "{} missing", archive.display());
    let fx = Fixture::new();
    let registry = Registry::start(&fx.path("reg"), false, false);
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(registry.image("cd/bootc:v1")),
    );
    let target = fx.path("out.raw");
    let image = registry.image("cd/bootc:v1");
    let out = convert(&image, &target, &["--insecure"]);
    assert_failed_with(
        &out,
        &target,
        &["no disk image", image.trim_start_matches("docker://")],
    );
}

#[test]
fn unknown_tag_is_manifest_unknown() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let qcow2 = fx.qcow2_of(&fx.raw_disk("raw.img", 50), "disk.qcow2");
    fx.containerdisk(&qcow2, "layout", "v1", &[]);
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push(&fx.path("layout"), "v1", "cd/known:v1", &[]);
    let target = fx.path("out.raw");
    let out = convert(&registry.image("cd/known:nope"), &target, &["--insecure"]);
    assert_failed_with(&out, &target, &["manifest unknown"]);
    let out = convert(
        &registry.image("cd/unknown-repo:v1"),
        &target,
        &["--insecure"],
    );
    assert_failed_with(&out, &target, &["failed to pull image"]);
}

#[test]
fn plain_http_registry_needs_insecure() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let qcow2 = fx.qcow2_of(&fx.raw_disk("raw.img", 60), "disk.qcow2");
    fx.containerdisk(&qcow2, "layout", "v1", &[]);
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push(&fx.path("layout"), "v1", "cd/plain:v1", &[]);
    let target = fx.path("out.raw");
    let out = convert(&registry.image("cd/plain:v1"), &target, &[]);
    assert_failed_with(&out, &target, &["failed to pull image"]);
}

/// Writes an OCI manifest into `layout` whose layers are those of the given
/// manifests, in order (config of the first); returns its digest.
fn write_stacked_manifest(layout: &Path, manifests: &[&str]) -> String {
    let read = |digest: &str| -> Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let first = read(manifests[0]);
    let layers: Vec<Value> = manifests
        .iter()
        .flat_map(|m| read(m)["layers"].as_array().unwrap().clone())
        .collect();
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": first["config"],
        "layers": layers,
    }))
    .unwrap();
    let hex = hex::encode(Sha256::digest(&body));
    std::fs::write(layout.join("blobs/sha256").join(&hex), &body).unwrap();
    format!("sha256:{hex}")
}

#[test]
fn first_layer_with_a_disk_wins_as_in_cdi() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let base = fx.raw_disk("base.img", 70);
    let top = fx.raw_disk("top.img", 71);
    let expected = fx.reference_raw(&base, "base.ref");
    let a = fx.containerdisk(&base, "layout", "base", &["--compression", "none"]);
    let b = fx.containerdisk(&top, "layout", "top", &["--compression", "none"]);
    let stacked = write_stacked_manifest(
        &fx.path("layout"),
        &[
            a["top_digest"].as_str().unwrap(),
            b["top_digest"].as_str().unwrap(),
        ],
    );
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push_verbatim(&fx.path("layout"), &stacked, "cd/stacked", "v1");
    // Layers are walked base first and the walk stops at the first disk
    // (contract §8), so the later layer is never read.
    let target = fx.path("out.raw");
    let out = convert(&registry.image("cd/stacked:v1"), &target, &["--insecure"]);
    assert_imported(&out, &target, &expected);
}

/// Sets `Env` in the image config of `layout:tag`, rewriting the config and
/// manifest blobs and the index entry (their digests change).
fn set_config_env(layout: &Path, tag: &str, env: &[&str]) {
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let put = |body: Vec<u8>| -> (String, usize) {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        std::fs::write(blob(&digest), &body).unwrap();
        (digest, body.len())
    };
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(entry["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let mut config: Value = serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    if !config["config"].is_object() {
        config["config"] = json!({});
    }
    config["config"]["Env"] = json!(env);
    let (digest, size) = put(serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = json!(digest);
    manifest["config"]["size"] = json!(size);
    let (digest, size) = put(serde_json::to_vec(&manifest).unwrap());
    entry["digest"] = json!(digest);
    entry["size"] = json!(size);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn import_puts_the_images_kubevirt_io_env_into_the_termination_labels() {
    if !tools_present() {
        return;
    }
    let fx = Fixture::new();
    let qcow2 = fx.qcow2_of(&fx.raw_disk("raw.img", 3), "disk.qcow2");
    let expected = fx.reference_raw(&qcow2, "ref.raw");
    fx.containerdisk(&qcow2, "layout", "v1", &[]);
    set_config_env(
        &fx.path("layout"),
        "v1",
        &[
            "PATH=/usr/bin",
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora",
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.small",
        ],
    );
    let registry = Registry::start(&fx.path("reg"), false, false);
    registry.push(&fx.path("layout"), "v1", "containerdisks/labelled:v1", &[]);
    let root = fx.path("root");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let out = run(Command::new(BIN)
        .args(["import", "--status-port", "0", "--root"])
        .arg(&root)
        .env("IMPORTER_SOURCE", "registry")
        .env(
            "IMPORTER_ENDPOINT",
            registry.image("containerdisks/labelled:v1"),
        )
        .env("INSECURE_TLS", "true"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let message = std::fs::read_to_string(root.join("dev/termination-log")).unwrap();
    assert_eq!(
        message,
        r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"labels":{"instancetype.kubevirt.io/default-instancetype":"u1.small","instancetype.kubevirt.io/default-preference":"fedora"},"message":"Import Complete"}"#
    );
    let disk = std::fs::read(root.join("data/disk.img")).unwrap();
    assert!(disk.starts_with(&expected), "disk differs from qemu-img's");
}
