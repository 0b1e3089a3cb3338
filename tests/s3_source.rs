//! The s3 source against a real S3 server: s3s-fs 0.14.1 (SigV4 checked), started
//! per test on 127.0.0.1 with a kernel-chosen port and killed by PID at the end.
//!
//! s3s-fs stores bucket `B`, key `K` as the plain file `ROOT/B/K`, so objects are
//! seeded by writing files. The images are made at test time with qemu-img and xz;
//! every import runs the real binary and is compared byte for byte with
//! `qemu-img convert -O raw`.
//!
//! s3s-fs is found via `S3S_FS`, then `PATH`, then `$CARGO_HOME/bin`
//! (install: `cargo install s3s-fs --version 0.14.1 --features binary --locked`).
//! Without it the tests are skipped with a message, except under CI (`CI` set),
//! where a missing s3s-fs is a failure.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_diskimport");
const ACCESS_KEY: &str = "AKIAIMPORTERTEST";
const SECRET_KEY: &str = "importer-test-secret-key";
const BUCKET: &str = "images";
/// Time limit of one diskimport or helper run.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// The s3s-fs binary, or `None` (skip) outside CI.
fn s3s_fs_binary() -> Option<PathBuf> {
    let candidates = std::env::var_os("S3S_FS")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("s3s-fs"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .chain(
            std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
                .map(|d| d.join("bin/s3s-fs")),
        );
    for candidate in candidates {
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let install = "cargo install s3s-fs --version 0.14.1 --features binary --locked";
    common::skip(&format!("s3s-fs not found (set S3S_FS, or: {install})"));
    None
}

/// A running s3s-fs, killed (by its PID) when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
    port: u16,
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl S3Server {
    fn start() -> Option<S3Server> {
        let binary = s3s_fs_binary()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        fs::create_dir_all(root.join(BUCKET)).unwrap();
        let log_path = dir.path().join("s3s-fs.log");
        let log = fs::File::create(&log_path).unwrap();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .env("RUST_LOG", "s3s_fs=info,s3s=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = S3Server {
            child,
            endpoint: String::new(),
            port: 0,
            root,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let marker = "server is running at http://127.0.0.1:";
        loop {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(at) = text.find(marker) {
                let digits: String = text[at + marker.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(port) = digits.parse() {
                    server.port = port;
                    server.endpoint = format!("http://127.0.0.1:{port}");
                    return Some(server);
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("s3s-fs exited ({status}) before listening; log:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not report its port within 20 s; log:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stores `file` as object `key` in the test bucket.
    fn put(&self, key: &str, file: &Path) {
        let path = self.root.join(BUCKET).join(key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::copy(file, &path).unwrap();
    }

    fn work(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a child process did.
struct Run {
    cmdline: String,
    status: Option<ExitStatus>,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("KILLED after {RUN_LIMIT:?}"),
        };
        format!(
            "`{}` -> {status}; stderr: {}",
            self.cmdline,
            self.stderr.trim()
        )
    }
}

/// Runs `program args` with `env` set and `env_remove` removed, killed after
/// [`RUN_LIMIT`].
fn run(program: &str, args: &[OsString], env: &[(&str, &str)], env_remove: &[&str]) -> Run {
    let cmdline = std::iter::once(program.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for k in env_remove {
        command.env_remove(k);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
    let mut stderr_pipe = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Run {
        cmdline,
        status,
        stderr: reader.join().unwrap(),
    }
}

/// AWS variables that would change which credentials the binary uses.
const AWS_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "DISKIMPORT_USERNAME",
    "DISKIMPORT_PASSWORD",
];

/// `diskimport convert SOURCE TARGET EXTRA... --quiet`, AWS environment cleared.
fn import(source: &str, target: &Path, extra: &[&str]) -> Run {
    import_env(source, target, extra, &[])
}

fn import_env(source: &str, target: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args: Vec<OsString> = vec!["convert".into(), source.into(), target.into()];
    args.extend(extra.iter().map(OsString::from));
    args.push("--quiet".into());
    run(BIN, &args, env, AWS_ENV)
}

fn credentials_args() -> Vec<&'static str> {
    vec!["--username", ACCESS_KEY, "--password", SECRET_KEY]
}

fn tool(program: &str, args: &[&str]) {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    let result = run(program, &args, &[], &[]);
    assert!(result.ok(), "{}", result.describe());
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A raw disk of `mib` MiB: data, a zero hole, a text pattern, more data.
fn make_raw(path: &Path, mib: usize, seed: u64) {
    let mib_bytes = 1 << 20;
    let mut disk = vec![0u8; mib * mib_bytes];
    let quarter = disk.len() / 4;
    disk[..quarter].copy_from_slice(&noise(seed, quarter));
    let pattern = b"diskimport s3 test pattern ";
    for (i, b) in disk[2 * quarter..3 * quarter].iter_mut().enumerate() {
        *b = pattern[i % pattern.len()];
    }
    let tail = disk.len() - 3 * quarter - 4096;
    disk[3 * quarter..3 * quarter + tail].copy_from_slice(&noise(seed + 1, tail));
    fs::write(path, disk).unwrap();
}

/// `qemu-img convert -O raw` of `image`: the expected output.
fn oracle(image: &Path, out: &Path) {
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
}

fn assert_same(actual: &Path, expected: &Path) {
    let a = fs::read(actual).unwrap_or_else(|e| panic!("{}: {e}", actual.display()));
    let b = fs::read(expected).unwrap();
    assert_eq!(a.len(), b.len(), "size of {}", actual.display());
    if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!(
            "{} differs from qemu-img's output at byte {at}",
            actual.display()
        );
    }
}

/// A qcow2 made by qemu-img from a 4 MiB raw disk, stored as `dir/disk.qcow2`.
fn seed_qcow2(server: &S3Server) -> PathBuf {
    let raw = server.work().join("src.raw");
    make_raw(&raw, 4, 7);
    let qcow2 = server.work().join("disk.qcow2");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ],
    );
    server.put("dir/disk.qcow2", &qcow2);
    qcow2
}

#[test]
fn qcow2_via_path_style_url_matches_qemu_img() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let qcow2 = seed_qcow2(&server);
    let expected = server.work().join("expected.raw");
    oracle(&qcow2, &expected);

    let target = server.work().join("out.raw");
    let url = format!("{}/{BUCKET}/dir/disk.qcow2", server.endpoint);
    let mut extra = vec!["--source-kind", "s3"];
    extra.extend(credentials_args());
    let result = import(&url, &target, &extra);
    assert!(result.ok(), "{}", result.describe());
    assert_same(&target, &expected);
}

#[test]
fn qcow2_via_s3_url_and_endpoint_matches_qemu_img() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let qcow2 = seed_qcow2(&server);
    let expected = server.work().join("expected.raw");
    oracle(&qcow2, &expected);

    let target = server.work().join("out.raw");
    let mut extra = vec![
        "--endpoint",
        server.endpoint.as_str(),
        "--region",
        "us-east-1",
    ];
    extra.extend(credentials_args());
    let result = import(&format!("s3://{BUCKET}/dir/disk.qcow2"), &target, &extra);
    assert!(result.ok(), "{}", result.describe());
    assert_same(&target, &expected);
}

#[test]
fn xz_raw_via_s3_url_with_env_credentials_matches_qemu_img() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let raw = server.work().join("disk.raw");
    make_raw(&raw, 3, 11);
    let expected = server.work().join("expected.raw");
    oracle(&raw, &expected);
    tool("xz", &["-k", "-T1", "-3", raw.to_str().unwrap()]);
    server.put("disk.raw.xz", &server.work().join("disk.raw.xz"));

    // s3://bucket/key with --endpoint and no --region (default us-east-1);
    // credentials from the AWS environment variables.
    let target = server.work().join("out.raw");
    let result = import_env(
        &format!("s3://{BUCKET}/disk.raw.xz"),
        &target,
        &["--endpoint", &server.endpoint],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ],
    );
    assert!(result.ok(), "{}", result.describe());
    assert_same(&target, &expected);

    // The same object by the path-style URL.
    let target2 = server.work().join("out2.raw");
    let url = format!("{}/{BUCKET}/disk.raw.xz", server.endpoint);
    let mut extra = vec!["--source-kind", "s3"];
    extra.extend(credentials_args());
    let result = import(&url, &target2, &extra);
    assert!(result.ok(), "{}", result.describe());
    assert_same(&target2, &expected);
}

#[test]
fn wrong_secret_fails_naming_signature_mismatch() {
    let Some(server) = S3Server::start() else {
        return;
    };
    seed_qcow2(&server);
    let target = server.work().join("out.raw");
    let url = format!("{}/{BUCKET}/dir/disk.qcow2", server.endpoint);
    let result = import(
        &url,
        &target,
        &[
            "--source-kind",
            "s3",
            "--username",
            ACCESS_KEY,
            "--password",
            "not-the-secret",
        ],
    );
    assert!(
        !result.ok(),
        "succeeded with a wrong secret: {}",
        result.describe()
    );
    assert!(result.status.is_some(), "{}", result.describe());
    assert!(
        result.stderr.contains("SignatureDoesNotMatch"),
        "error does not name the signature failure: {}",
        result.describe()
    );
    assert!(
        result.stderr.contains("s3://images/dir/disk.qcow2"),
        "error does not name the object: {}",
        result.describe()
    );
    assert!(!target.exists(), "target left behind after a failed import");
}

#[test]
fn missing_key_fails_naming_no_such_key() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let target = server.work().join("out.raw");
    let mut extra = vec!["--endpoint", server.endpoint.as_str()];
    extra.extend(credentials_args());
    let result = import(&format!("s3://{BUCKET}/no/such.img"), &target, &extra);
    assert!(
        !result.ok() && result.status.is_some(),
        "{}",
        result.describe()
    );
    assert!(
        result.stderr.contains("NoSuchKey") && result.stderr.contains("s3://images/no/such.img"),
        "error does not name NoSuchKey and the object: {}",
        result.describe()
    );
}

#[test]
fn anonymous_access_to_private_bucket_is_denied() {
    let Some(server) = S3Server::start() else {
        return;
    };
    seed_qcow2(&server);
    let target = server.work().join("out.raw");
    let url = format!("{}/{BUCKET}/dir/disk.qcow2", server.endpoint);
    let result = import(&url, &target, &["--source-kind", "s3"]);
    assert!(
        !result.ok() && result.status.is_some(),
        "{}",
        result.describe()
    );
    assert!(
        result.stderr.contains("AccessDenied"),
        "error does not name AccessDenied: {}",
        result.describe()
    );
}

/// fault_proxy.py in front of the server; killed by PID when dropped.
struct FaultProxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl FaultProxy {
    fn start(server: &S3Server, options: &[&str]) -> FaultProxy {
        FaultProxy::start_to(server, server.port, options)
    }

    /// The proxy in front of 127.0.0.1:`upstream` (another proxy in front of
    /// `server`).
    fn start_to(server: &S3Server, upstream: u16, options: &[&str]) -> FaultProxy {
        let script = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/servers/fault_proxy.py"
        ));
        assert!(
            script.is_file(),
            "{} is missing: the shared test servers must sit next to the repository",
            script.display()
        );
        let log = server.work().join("fault_proxy.log");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--upstream")
            .arg(format!("127.0.0.1:{upstream}"))
            .args(["--max-seconds", "120"])
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("python3 fault_proxy.py");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("fault_proxy.py did not print its port within 20 s");
        let port = line
            .trim()
            .strip_prefix("PORT=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fault_proxy.py printed {line:?}, not PORT=N"));
        FaultProxy { child, port, log }
    }

    fn drops(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("dropped after")
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 6 MiB mostly incompressible raw object and its expected conversion.
fn seed_big_raw(server: &S3Server) -> PathBuf {
    let raw = server.work().join("big.raw");
    make_raw(&raw, 6, 23);
    server.put("big.raw", &raw);
    let expected = server.work().join("expected.raw");
    oracle(&raw, &expected);
    expected
}

#[test]
fn stream_dropped_mid_body_is_resumed_to_identical_output() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let expected = seed_big_raw(&server);
    // The first connection is cut (FIN) after 1 MiB of response bytes.
    let proxy = FaultProxy::start(&server, &["--drop-after", "1048576", "--drop-times", "1"]);
    let target = server.work().join("out.raw");
    let url = format!("http://127.0.0.1:{}/{BUCKET}/big.raw", proxy.port);
    let mut extra = vec!["--source-kind", "s3"];
    extra.extend(credentials_args());
    let result = import(&url, &target, &extra);
    assert!(result.ok(), "{}", result.describe());
    assert_eq!(proxy.drops(), 1, "the proxy did not cut the stream");
    assert_same(&target, &expected);
}

#[test]
fn stream_reset_on_every_connection_is_resumed_to_identical_output() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let expected = seed_big_raw(&server);
    // Every connection is reset (RST) after 1 MiB: six resumes are needed.
    let proxy = FaultProxy::start(
        &server,
        &["--drop-after", "1048576", "--drop-times", "0", "--drop-rst"],
    );
    let target = server.work().join("out.raw");
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let mut extra = vec!["--endpoint", endpoint.as_str(), "--region", "us-east-1"];
    extra.extend(credentials_args());
    let result = import(&format!("s3://{BUCKET}/big.raw"), &target, &extra);
    assert!(result.ok(), "{}", result.describe());
    assert!(
        proxy.drops() >= 5,
        "expected the proxy to cut at least 5 streams, it cut {}",
        proxy.drops()
    );
    assert_same(&target, &expected);
}

/// A fake S3 endpoint (no auth) whose HEAD reports 1000 bytes but whose GETs
/// end, cleanly (close-delimited, no Content-Length), after 100 bytes.
fn short_body_server(etag: bool) -> u16 {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let validator = if etag { "ETag: \"e1\"\r\n" } else { "" };
            let head = format!(
                "HTTP/1.1 200 OK\r\n{validator}Content-Type: application/octet-stream\r\n\
                 Connection: close\r\n"
            );
            let _ = if request_line.starts_with("HEAD") {
                write!(stream, "{head}Content-Length: 1000\r\n\r\n")
            } else {
                write!(stream, "{head}\r\n").and_then(|()| stream.write_all(&[0x5a; 100]))
            };
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    port
}

#[test]
fn a_drop_is_not_resumed_without_etag_or_last_modified() {
    let dir = tempfile::tempdir().unwrap();
    let port = short_body_server(false);
    let target = dir.path().join("out.raw");
    let result = import(
        &format!("http://127.0.0.1:{port}/{BUCKET}/short.raw"),
        &target,
        &["--source-kind", "s3"],
    );
    assert!(!result.ok(), "{}", result.describe());
    assert!(
        result.stderr.contains("cannot resume") && result.stderr.contains("ETag"),
        "the refusal must say why: {}",
        result.describe()
    );
    assert!(!target.exists());
}

#[test]
fn body_ending_short_of_object_size_fails_instead_of_succeeding() {
    let dir = tempfile::tempdir().unwrap();
    let port = short_body_server(true);
    let target = dir.path().join("out.raw");
    let started = Instant::now();
    let result = import(
        &format!("http://127.0.0.1:{port}/{BUCKET}/short.raw"),
        &target,
        &["--source-kind", "s3"],
    );
    assert!(
        !result.ok() && result.status.is_some(),
        "{}",
        result.describe()
    );
    assert!(
        result.stderr.contains("s3://images/short.raw")
            && result.stderr.contains("after 100 of 1000 bytes"),
        "error does not say where the body stopped: {}",
        result.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "giving up took {:?}",
        started.elapsed()
    );
    assert!(!target.exists(), "target left behind after a failed import");
}

/// Uploads `data` as `key` through the API with the SDK (which sends a CRC32
/// checksum that s3s-fs stores and returns on full GETs).
fn sdk_put(server: &S3Server, key: &str, data: Vec<u8>) {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&server.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        tokio::time::timeout(
            Duration::from_secs(60),
            client
                .put_object()
                .bucket(BUCKET)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(data))
                .send(),
        )
        .await
        .expect("PutObject timed out")
        .expect("PutObject");
    });
}

#[test]
fn object_changed_on_disk_after_upload_fails_checksum_validation() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let raw = server.work().join("disk.raw");
    make_raw(&raw, 3, 31);
    let expected = server.work().join("expected.raw");
    oracle(&raw, &expected);
    sdk_put(&server, "api/disk.raw", fs::read(&raw).unwrap());

    let mut extra = vec!["--endpoint", server.endpoint.as_str()];
    extra.extend(credentials_args());
    let target = server.work().join("out.raw");
    let result = import(&format!("s3://{BUCKET}/api/disk.raw"), &target, &extra);
    assert!(result.ok(), "{}", result.describe());
    assert_same(&target, &expected);

    // Same size, different bytes: the stored CRC32 no longer matches.
    let stored = server.root.join(BUCKET).join("api/disk.raw");
    let mut bytes = fs::read(&stored).unwrap();
    bytes[5000..5004].copy_from_slice(b"XXXX");
    fs::write(&stored, bytes).unwrap();
    let target2 = server.work().join("out2.raw");
    let result = import(&format!("s3://{BUCKET}/api/disk.raw"), &target2, &extra);
    assert!(
        !result.ok() && result.status.is_some(),
        "{}",
        result.describe()
    );
    assert!(
        result.stderr.contains("checksum"),
        "error does not name the checksum failure: {}",
        result.describe()
    );
    assert!(
        !target2.exists(),
        "target left behind after a failed import"
    );
}

/// A TLS-terminating TCP proxy (python3 stdlib) in front of s3s-fs, with the test
/// PKI of `shared/servers/mk_certs.sh`; killed by PID when dropped.
struct TlsProxy {
    child: Child,
    endpoint: String,
    /// ca.crt (trusts the server), other-ca.crt (does not).
    pki: PathBuf,
}

const TLS_PROXY_PY: &str = r#"
import asyncio, ssl, sys
up_port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
async def pipe(r, w):
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        try:
            w.close()
        except Exception:
            pass
async def handle(cr, cw):
    try:
        ur, uw = await asyncio.open_connection("127.0.0.1", up_port)
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw))
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    print("PORT=%d" % srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[4]))
asyncio.run(main())
"#;

impl TlsProxy {
    fn start(server: &S3Server) -> TlsProxy {
        let pki = server.work().join("pki");
        let mk_certs = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/servers/mk_certs.sh"
        ));
        assert!(mk_certs.is_file(), "{} is missing", mk_certs.display());
        tool("sh", &[mk_certs.to_str().unwrap(), pki.to_str().unwrap()]);
        let mut child = Command::new("python3")
            .args(["-c", TLS_PROXY_PY])
            .arg(server.port.to_string())
            .arg(pki.join("server-chain.crt"))
            .arg(pki.join("server.key"))
            .arg("120")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("TLS proxy did not print its port within 20 s");
        let port: u16 = line
            .trim()
            .strip_prefix("PORT=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("TLS proxy printed {line:?}, not PORT=N"));
        TlsProxy {
            child,
            endpoint: format!("https://127.0.0.1:{port}"),
            pki,
        }
    }

    /// A CA directory the way CDI mounts a ConfigMap: any key names, plus an
    /// unrelated CA; with `trusted` false only the unrelated CA.
    fn ca_dir(&self, trusted: bool) -> PathBuf {
        let dir = self.pki.join(if trusted { "certs" } else { "wrong-certs" });
        fs::create_dir_all(&dir).unwrap();
        if trusted {
            fs::copy(self.pki.join("ca.crt"), dir.join("ca-bundle")).unwrap();
        }
        fs::copy(self.pki.join("other-ca.crt"), dir.join("other.pem")).unwrap();
        dir
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn https_import(proxy: &TlsProxy, target: &Path, tls_args: &[&str]) -> Run {
    let url = format!("{}/{BUCKET}/dir/disk.qcow2", proxy.endpoint);
    let mut extra = vec!["--source-kind", "s3"];
    extra.extend(credentials_args());
    extra.extend(tls_args);
    import(&url, target, &extra)
}

#[test]
fn https_endpoint_with_ca_dir_matches_qemu_img() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let qcow2 = seed_qcow2(&server);
    let expected = server.work().join("expected.raw");
    oracle(&qcow2, &expected);
    let proxy = TlsProxy::start(&server);
    let ca_dir = proxy.ca_dir(true);
    let target = server.work().join("out.raw");
    let result = https_import(&proxy, &target, &["--ca-dir", ca_dir.to_str().unwrap()]);
    assert!(result.ok(), "{}", result.describe());
    assert_same(&target, &expected);
}

#[test]
fn https_endpoint_with_unknown_ca_fails_naming_the_certificate() {
    let Some(server) = S3Server::start() else {
        return;
    };
    seed_qcow2(&server);
    let proxy = TlsProxy::start(&server);
    let ca_dir = proxy.ca_dir(false);
    let target = server.work().join("out.raw");
    let result = https_import(&proxy, &target, &["--ca-dir", ca_dir.to_str().unwrap()]);
    assert!(
        !result.ok() && result.status.is_some(),
        "{}",
        result.describe()
    );
    assert!(
        result.stderr.to_ascii_lowercase().contains("certificate"),
        "error does not name the certificate problem: {}",
        result.describe()
    );
    assert!(!target.exists(), "target left behind after a failed import");
}

#[test]
fn https_endpoint_with_insecure_skips_verification() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let qcow2 = seed_qcow2(&server);
    let expected = server.work().join("expected.raw");
    oracle(&qcow2, &expected);
    let proxy = TlsProxy::start(&server);
    let target = server.work().join("out.raw");
    let result = https_import(&proxy, &target, &["--insecure"]);
    assert!(result.ok(), "{}", result.describe());
    assert_same(&target, &expected);
}

#[test]
fn object_replaced_during_download_fails_naming_the_etag_change() {
    let Some(server) = S3Server::start() else {
        return;
    };
    seed_big_raw(&server);
    let replacement = server.work().join("replacement.raw");
    make_raw(&replacement, 6, 99);
    // The first connection is cut after 1 MiB; the resume, on the second,
    // waits at the gate (its request not sent) until the object is replaced.
    let mut gate = servers::GateProxy::start(
        &server.work().join("gate"),
        server.port,
        &["--hold-from-connection", "2"],
    );
    let proxy = FaultProxy::start_to(
        &server,
        gate.port,
        &["--drop-after", "1048576", "--drop-times", "1"],
    );
    let target = server.work().join("out.raw");
    let url = format!("http://127.0.0.1:{}/{BUCKET}/big.raw", proxy.port);
    let importer = {
        let target = target.clone();
        thread::spawn(move || {
            let mut extra = vec!["--source-kind", "s3"];
            extra.extend(credentials_args());
            import(&url, &target, &extra)
        })
    };
    let waiting = gate.wait_holding(|| importer.is_finished());
    fs::rename(&replacement, server.root.join(BUCKET).join("big.raw")).unwrap();
    gate.release();
    assert!(waiting, "no second connection reached the gate");

    let result = importer.join().unwrap();
    assert_eq!(proxy.drops(), 1, "the proxy did not cut the stream");
    assert!(
        !result.ok() && result.status.is_some(),
        "{}",
        result.describe()
    );
    assert!(
        result.stderr.contains("the object changed") && result.stderr.contains("ETag"),
        "error does not name the ETag change: {}",
        result.describe()
    );
}

#[test]
fn https_endpoint_trusts_proxy_ca_dir_too() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let qcow2 = seed_qcow2(&server);
    let expected = server.work().join("expected.raw");
    oracle(&qcow2, &expected);
    let proxy = TlsProxy::start(&server);
    let ca_dir = proxy.ca_dir(true);
    let target = server.work().join("out.raw");
    let result = https_import(
        &proxy,
        &target,
        &["--proxy-ca-dir", ca_dir.to_str().unwrap()],
    );
    assert!(result.ok(), "{}", result.describe());
    assert_same(&target, &expected);
}
