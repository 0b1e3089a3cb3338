//! The network layer against real servers and real faults: the team's
//! docker-registry (basic auth over TLS, and bearer tokens from
//! `token_server.py`), nginx and s3s-fs, behind `fault_proxy.py` (drops, RST),
//! `stall_proxy.py` (a silent, open socket) and `status_front.py` (503/429 with
//! Retry-After), all from `../shared/servers` on 127.0.0.1. Every import that
//! survives a fault must end identical to `qemu-img convert -O raw`; wrong
//! credentials must fail without a retry and say so; SIGTERM during a stalled
//! read must end `diskimport import` with its termination message within the
//! kubelet's grace; and no password, token or query string may appear in any
//! output, debug log lines included.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use servers::{
    find_program, parse_env, port_open, require_servers, FaultProxy, Server, START_TIMEOUT,
};

/// The grace period a stalled import must end within after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

/// A started helper script on a kernel-chosen port (it prints its port file).
struct Helper {
    _server: Server,
    port: u16,
}

/// Starts `python3 SERVERS/script args... --port 0 --port-file F` and waits
/// for its port file.
fn helper(servers: &Path, work: &Path, name: &str, script: &str, args: &[String]) -> Helper {
    fs::create_dir_all(work).unwrap();
    let port_file = work.join(format!("{name}.port"));
    // A name used before must not hand back the previous helper's port.
    let _ = fs::remove_file(&port_file);
    let mut argv: Vec<String> = vec![servers.join(script).display().to_string()];
    argv.extend(args.iter().cloned());
    argv.extend([
        "--port".into(),
        "0".into(),
        "--port-file".into(),
        port_file.display().to_string(),
        "--max-seconds".into(),
        "120".into(),
    ]);
    let argv: Vec<&std::ffi::OsStr> = argv.iter().map(std::ffi::OsStr::new).collect();
    let python = find_program("python3").expect("python3");
    let mut server = Server::spawn(name, &python, &argv, &[], &work.join(format!("{name}.log")));
    server.wait_until("its port file", START_TIMEOUT, || {
        fs::read_to_string(&port_file).is_ok_and(|t| t.trim().parse::<u16>().is_ok())
    });
    let port = fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Helper {
        _server: server,
        port,
    }
}

/// A registry from `registry_start.sh` (FOREGROUND: the child is the registry).
struct Registry {
    _server: Server,
    env: std::collections::HashMap<String, String>,
    work: PathBuf,
}

impl Registry {
    fn start(servers: &Path, work: &Path, mode: &[&str]) -> Registry {
        fs::create_dir_all(work).unwrap();
        let mut args: Vec<&std::ffi::OsStr> = vec![work.as_os_str()];
        args.extend(mode.iter().map(std::ffi::OsStr::new));
        let mut server = Server::spawn(
            "registry",
            &servers.join("registry_start.sh"),
            &args,
            &[("FOREGROUND", "1")],
            &work.join("registry.log"),
        );
        let env_file = work.join("env");
        server.wait_until("its env file", START_TIMEOUT, || {
            fs::read_to_string(&env_file).is_ok_and(|t| t.contains("REG_PORT="))
        });
        let env = parse_env(&fs::read_to_string(&env_file).unwrap())
            .into_iter()
            .map(|(k, v)| (k, v.trim_matches('"').to_string()))
            .collect::<std::collections::HashMap<_, _>>();
        let port: u16 = env["REG_PORT"].parse().unwrap();
        server.wait_until("its port", START_TIMEOUT, || port_open(port));
        Registry {
            _server: server,
            env,
            work: work.to_path_buf(),
        }
    }

    fn port(&self) -> u16 {
        self.env["REG_PORT"].parse().unwrap()
    }

    fn ca_dir(&self) -> PathBuf {
        PathBuf::from(&self.env["REG_CA_DIR"])
    }

    fn user(&self) -> &str {
        &self.env["REG_USER"]
    }

    fn pass(&self) -> &str {
        &self.env["REG_PASS"]
    }

    fn push(&self, layout: &Path, repo_tag: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--dest-cert-dir"])
            .arg(self.ca_dir())
            .arg("--dest-creds")
            .arg(format!("{}:{}", self.user(), self.pass()))
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://127.0.0.1:{}/{repo_tag}", self.port()))
            .stdin(Stdio::null())
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The certificate directory `mk_certs.sh` made (server chain and key).
    fn certs(&self) -> PathBuf {
        self.work.join("certs")
    }
}

/// A 16 MiB qcow2 of random data, its qemu-img raw conversion, and a
/// containerDisk layout of it (one gzip layer); returns (layout, reference
/// raw, layer digest).
fn image(work: &Path) -> (PathBuf, PathBuf, String) {
    let raw = work.join("raw.img");
    let mut data = vec![0u8; 16 << 20];
    let mut x = 0x2545_f491_u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(&raw, data).unwrap();
    let qcow2 = work.join("disk.qcow2");
    let reference = work.join("ref.raw");
    let run = common::qemu_img(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        raw.as_os_str(),
        qcow2.as_os_str(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    common::qemu_convert("qcow2", &qcow2, &reference).unwrap();
    let layout = work.join("layout");
    let out = Command::new("python3")
        .arg(servers::servers_dir().join("make_containerdisk.py"))
        .arg("--disk")
        .arg(&qcow2)
        .arg("--out")
        .arg(&layout)
        .args(["--tag", "v1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = summary["layers"].as_array().unwrap();
    let digest = layers.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    (layout, reference, digest)
}

/// `diskimport convert --quiet ... SPEC TARGET` with a debug log (so every
/// log line is checked for secrets too), killed after [`common::TIMEOUT`].
fn convert(spec: &str, target: &Path, extra: &[&str]) -> common::Run {
    let mut args: Vec<String> = vec!["convert".into(), "--quiet".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(spec.into());
    args.push(target.display().to_string());
    let mut cmd = Command::new(common::BIN);
    cmd.args(&args)
        .env("DISKIMPORT_LOG", "debug")
        .env_remove("DISKIMPORT_USERNAME")
        .env_remove("DISKIMPORT_PASSWORD");
    run_logged(cmd, format!("diskimport {}", args.join(" ")))
}

/// `diskimport import` in `root` with CDI's environment plus `env` and a
/// debug log; returns the run and the termination message.
fn import(root: &Path, env: &[(&str, String)]) -> (common::Run, String) {
    fs::create_dir_all(root.join("data")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    let _ = fs::remove_file(root.join("dev/termination-log"));
    let mut cmd = Command::new(common::BIN);
    cmd.args([
        "import",
        "--status-port",
        "0",
        "--status-addr",
        "127.0.0.1",
        "--root",
    ])
    .arg(root)
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("DISKIMPORT_LOG", "debug")
    .env("IMPORTER_CONTENTTYPE", "kubevirt")
    .env("OWNER_UID", "uid-net-faults")
    .env("IMPORTER_IMAGE_SIZE", "64Mi")
    .env("FILESYSTEM_OVERHEAD", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = run_logged(cmd, format!("diskimport import with {env:?}"));
    let message = fs::read_to_string(root.join("dev/termination-log")).unwrap_or_default();
    (run, message)
}

/// Runs `cmd` with its output captured, killed after [`common::TIMEOUT`].
fn run_logged(mut cmd: Command, cmdline: String) -> common::Run {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > common::TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    common::Run {
        cmdline,
        status,
        stdout: out.join().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// The secrets a run must never print.
fn assert_no_secret(run: &common::Run, secrets: &[&str], failures: &mut Vec<String>, what: &str) {
    let text = format!("{}{}", run.stderr, run.stdout_str());
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret) {
            failures.push(format!(
                "{what}: {secret:?} appears in the output: {}",
                run.describe()
            ));
        }
    }
    // A JWT (the bearer token) starts with the base64 of `{"`.
    if text.contains("eyJ") {
        failures.push(format!(
            "{what}: a token appears in the output: {}",
            run.describe()
        ));
    }
}

fn check_identical(
    run: &common::Run,
    target: &Path,
    reference: &Path,
    what: &str,
    failures: &mut Vec<String>,
) {
    if !run.ok() {
        failures.push(format!("{what}: {}", run.describe()));
    } else if let Err(e) = common::compare_files(target, reference) {
        failures.push(format!("{what}: output differs from qemu-img's: {e}"));
    } else {
        eprintln!("{what}: identical");
    }
}

/// Every fault the issue lists, against one registry mode.
fn registry_survives_faults(mode: &[&str], repo: &str, with_credentials: bool) {
    let Some(servers) = require_servers(&[
        "docker-registry",
        "skopeo",
        "htpasswd",
        "qemu-img",
        "python3",
    ]) else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("net-faults")
        .tempdir()
        .unwrap();
    let work = dir.path();
    let (layout, reference, layer) = image(work);
    let registry = Registry::start(&servers, &work.join("reg"), mode);
    registry.push(&layout, repo);
    let ca = registry.ca_dir();
    let ca = ca.display().to_string();
    let mut auth: Vec<&str> = vec!["--ca-dir", &ca];
    if with_credentials {
        auth.extend(["--username", registry.user(), "--password", registry.pass()]);
    }
    let mut failures = Vec::new();
    let secrets = [registry.pass()];
    let up = format!("127.0.0.1:{}", registry.port());

    // Drops and a reset through fault_proxy: cut the connections that reach 3 MB.
    for (name, args) in [
        ("one drop", vec!["--drops", "1"]),
        ("five drops", vec!["--drops", "5"]),
        ("a reset", vec!["--drops", "1", "--drop-rst"]),
    ] {
        let mut argv: Vec<String> = vec![
            "--upstream".into(),
            up.clone(),
            "--drop-after".into(),
            "3000000".into(),
            "--drop-times".into(),
            "0".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let proxy = helper(&servers, work, "fault", "fault_proxy.py", &argv);
        let target = work.join("out.raw");
        let _ = fs::remove_file(&target);
        let run = convert(
            &format!("docker://127.0.0.1:{}/{repo}", proxy.port),
            &target,
            &auth,
        );
        let cuts = fs::read_to_string(work.join("fault.log"))
            .unwrap_or_default()
            .matches("dropped")
            .count();
        if cuts == 0 {
            failures.push(format!("{name}: the proxy cut nothing"));
        }
        check_identical(&run, &target, &reference, name, &mut failures);
        assert_no_secret(&run, &secrets, &mut failures, name);
        drop(proxy);
    }

    // A stall: the first connection that reaches 3 MB goes silent, socket open.
    {
        let argv: Vec<String> = vec![
            "--upstream".into(),
            up.clone(),
            "--stall-after".into(),
            "3000000".into(),
            "--stall-times".into(),
            "1".into(),
        ];
        let proxy = helper(&servers, work, "stall", "stall_proxy.py", &argv);
        let target = work.join("out.raw");
        let _ = fs::remove_file(&target);
        let mut args = auth.clone();
        args.extend(["--stall-timeout", "2"]);
        let run = convert(
            &format!("docker://127.0.0.1:{}/{repo}", proxy.port),
            &target,
            &args,
        );
        let stalls = fs::read_to_string(work.join("stall.log"))
            .unwrap_or_default()
            .matches("stalled")
            .count();
        if stalls == 0 {
            failures.push("a stall: the proxy never stalled".into());
        }
        check_identical(&run, &target, &reference, "a stall", &mut failures);
        drop(proxy);
    }

    // Two 503s on the manifest, two 429s on the layer, each with Retry-After 1.
    for (name, status, matching) in [
        ("two 503 on the manifest", "503", "/manifests/".to_string()),
        ("two 429 on the layer", "429", format!("/blobs/{layer}")),
    ] {
        let certs = registry.certs();
        let argv: Vec<String> = vec![
            "--upstream".into(),
            format!("https://{up}"),
            "--upstream-ca".into(),
            format!("{ca}/ca.crt"),
            "--tls-cert".into(),
            certs.join("server-chain.crt").display().to_string(),
            "--tls-key".into(),
            certs.join("server.key").display().to_string(),
            "--match".into(),
            matching,
            "--count".into(),
            "2".into(),
            "--status".into(),
            status.into(),
            "--retry-after".into(),
            "1".into(),
            "--log".into(),
            work.join("front.jsonl").display().to_string(),
        ];
        let _ = fs::remove_file(work.join("front.jsonl"));
        let front = helper(&servers, work, "front", "status_front.py", &argv);
        let target = work.join("out.raw");
        let _ = fs::remove_file(&target);
        let run = convert(
            &format!("docker://127.0.0.1:{}/{repo}", front.port),
            &target,
            &auth,
        );
        let injected = fs::read_to_string(work.join("front.jsonl"))
            .unwrap_or_default()
            .matches("\"injected\"")
            .count();
        if injected != 2 {
            failures.push(format!("{name}: {injected} injected instead of 2"));
        }
        if !run.stderr.contains(&format!("HTTP {status}")) {
            failures.push(format!(
                "{name}: the retry line does not name the status: {}",
                run.describe()
            ));
        }
        check_identical(&run, &target, &reference, name, &mut failures);
        drop(front);
    }

    // Wrong credentials: refused without a single retry, and said so.
    {
        let target = work.join("out.raw");
        let _ = fs::remove_file(&target);
        let wrong = format!("not-{}", registry.pass());
        let args = vec![
            "--ca-dir",
            &ca,
            "--username",
            registry.user(),
            "--password",
            &wrong,
        ];
        let run = convert(&registry_spec(&registry, repo), &target, &args);
        if run.ok()
            || !run.stderr.contains("authentication failed")
            || run.stderr.contains("retrying")
        {
            failures.push(format!("wrong password: {}", run.describe()));
        }
        if target.exists() {
            failures.push("wrong password: a target was left".into());
        }
        assert_no_secret(&run, &[&wrong], &mut failures, "wrong password");
    }
    common::finish(&format!("registry {mode:?}"), failures);
}

fn registry_spec(registry: &Registry, repo: &str) -> String {
    format!("docker://127.0.0.1:{}/{repo}", registry.port())
}

#[test]
fn registry_with_basic_auth_over_tls_survives_drops_resets_stalls_503_and_429() {
    registry_survives_faults(&["tls", "auth"], "cd/test:v1", true);
}

#[test]
fn registry_with_bearer_tokens_survives_drops_resets_stalls_503_and_429() {
    registry_survives_faults(&["token"], "private/test:v1", true);
}

/// `diskimport import` with CDI's environment for `endpoint`, SIGTERMed once
/// `stall_log` says the transfer stalled: it must exit within [`GRACE`] with
/// a termination message.
fn sigterm_during_stall(
    root: &Path,
    env: &[(&str, String)],
    stall_log: &Path,
    what: &str,
    failures: &mut Vec<String>,
) {
    fs::create_dir_all(root.join("data")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    let mut cmd = Command::new(common::BIN);
    cmd.args([
        "import",
        "--status-port",
        "0",
        "--status-addr",
        "127.0.0.1",
        "--root",
    ])
    .arg(root)
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("IMPORTER_CONTENTTYPE", "kubevirt")
    .env("OWNER_UID", "uid-net-faults")
    .env("IMPORTER_IMAGE_SIZE", "64Mi")
    .env("FILESYSTEM_OVERHEAD", "0")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(stall_log)
        .unwrap_or_default()
        .contains("stalled")
    {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            failures.push(format!("{what}: the transfer never stalled"));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if sent.elapsed() > GRACE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let message = fs::read_to_string(root.join("dev/termination-log")).unwrap_or_default();
    match status {
        None => failures.push(format!("{what}: still running {GRACE:?} after SIGTERM")),
        Some(s) if s.success() => failures.push(format!("{what}: exit 0 after SIGTERM")),
        Some(_) if !message.contains("termination signal") => {
            failures.push(format!("{what}: termination message {message:?}"))
        }
        Some(_) => eprintln!("{what}: ended after SIGTERM: {message}"),
    }
}

#[test]
fn sigterm_during_a_stalled_read_ends_the_import_with_its_message_for_each_source() {
    let Some(servers) = require_servers(&[
        "docker-registry",
        "skopeo",
        "htpasswd",
        "nginx",
        "qemu-img",
        "python3",
    ]) else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("net-sigterm")
        .tempdir()
        .unwrap();
    let work = dir.path();
    let (layout, _reference, _) = image(work);
    let mut failures = Vec::new();

    // Registry (bearer tokens).
    let registry = Registry::start(&servers, &work.join("reg"), &["token"]);
    registry.push(&layout, "containerdisks/test:v1");
    let argv: Vec<String> = vec![
        "--upstream".into(),
        format!("127.0.0.1:{}", registry.port()),
        "--stall-after".into(),
        "3000000".into(),
        "--stall-times".into(),
        "1".into(),
    ];
    let proxy = helper(&servers, work, "stall-reg", "stall_proxy.py", &argv);
    let root = work.join("root-reg");
    fs::create_dir_all(root.join("certs")).unwrap();
    fs::copy(registry.ca_dir().join("ca.crt"), root.join("certs/ca.crt")).unwrap();
    sigterm_during_stall(
        &root,
        &[
            ("IMPORTER_SOURCE", "registry".into()),
            (
                "IMPORTER_ENDPOINT",
                format!("docker://127.0.0.1:{}/containerdisks/test:v1", proxy.port),
            ),
            ("IMPORTER_CERT_DIR", "/certs".into()),
        ],
        &work.join("stall-reg.log"),
        "registry",
        &mut failures,
    );
    drop(proxy);

    // http (nginx).
    let www = work.join("www");
    fs::create_dir_all(&www).unwrap();
    fs::copy(work.join("disk.qcow2"), www.join("disk.qcow2")).unwrap();
    let nginx = servers::Nginx::start(&servers, &work.join("nginx"), &www);
    let argv: Vec<String> = vec![
        "--upstream".into(),
        format!("127.0.0.1:{}", nginx.http_port),
        "--stall-after".into(),
        "3000000".into(),
        "--stall-times".into(),
        "1".into(),
    ];
    let proxy = helper(&servers, work, "stall-http", "stall_proxy.py", &argv);
    sigterm_during_stall(
        &work.join("root-http"),
        &[
            ("IMPORTER_SOURCE", "http".into()),
            (
                "IMPORTER_ENDPOINT",
                format!("http://127.0.0.1:{}/disk.qcow2", proxy.port),
            ),
        ],
        &work.join("stall-http.log"),
        "http",
        &mut failures,
    );
    drop(proxy);

    // S3 (s3s-fs), when installed; the other sources do not wait for it.
    if let Some(s3) = S3::start(&servers, &work.join("s3")) {
        s3.put("images/disk.qcow2", &work.join("disk.qcow2"));
        let argv: Vec<String> = vec![
            "--upstream".into(),
            format!("127.0.0.1:{}", s3.port),
            "--stall-after".into(),
            "3000000".into(),
            "--stall-times".into(),
            "1".into(),
        ];
        let proxy = helper(&servers, work, "stall-s3", "stall_proxy.py", &argv);
        sigterm_during_stall(
            &work.join("root-s3"),
            &[
                ("IMPORTER_SOURCE", "s3".into()),
                (
                    "IMPORTER_ENDPOINT",
                    format!("http://127.0.0.1:{}/images/disk.qcow2", proxy.port),
                ),
                ("IMPORTER_ACCESS_KEY_ID", s3.access_key.clone()),
                ("IMPORTER_SECRET_KEY", s3.secret_key.clone()),
            ],
            &work.join("stall-s3.log"),
            "s3",
            &mut failures,
        );
        drop(proxy);
    }
    common::finish("SIGTERM during a stall", failures);
}

/// s3s-fs from `s3_start.sh` (it backgrounds the server and prints its PID),
/// stopped by that PID on drop.
struct S3 {
    pid: i32,
    port: u16,
    access_key: String,
    secret_key: String,
    /// Bucket `B`, key `K` is the file `root/B/K`.
    root: PathBuf,
}

impl S3 {
    /// The server, or `None` (a visible skip; a failure under CI) without s3s-fs.
    fn start(servers: &Path, work: &Path) -> Option<S3> {
        let Some(bin) = std::env::var_os("S3S_FS")
            .map(PathBuf::from)
            .or_else(|| find_program("s3s-fs"))
        else {
            common::skip("s3s-fs not found (set S3S_FS): its part is not run");
            return None;
        };
        fs::create_dir_all(work).unwrap();
        let out = Command::new(servers.join("s3_start.sh"))
            .arg(work)
            .env("S3S_FS", &bin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "s3_start.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = parse_env(&fs::read_to_string(work.join("env")).unwrap());
        let get = |k: &str| env[k].trim_matches('"').to_string();
        Some(S3 {
            pid: get("S3_PID").parse().unwrap(),
            port: get("S3_PORT").parse().unwrap(),
            access_key: get("S3_ACCESS_KEY"),
            secret_key: get("S3_SECRET_KEY"),
            root: PathBuf::from(get("S3_ROOT")),
        })
    }

    fn put(&self, bucket_key: &str, file: &Path) {
        let path = self.root.join(bucket_key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::copy(file, path).unwrap();
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// What stands between the importer and the real server in one case.
#[derive(Clone, Copy, Debug)]
enum Front {
    /// Nothing: the server itself.
    Direct,
    /// `fault_proxy.py`: the first connection that carries 3 MB is cut.
    Drop,
    /// `stall_proxy.py`: the first connection that carries 3 MB goes silent.
    Stall,
    /// `status_front.py` (plain http): the first two GETs get 503 + Retry-After.
    Fail503,
}

/// One row of the secrets table: a source, a fault, the credentials it is
/// given, and the texts that must never be printed.
struct SecretCase {
    what: &'static str,
    /// CDI's `IMPORTER_SOURCE`.
    cdi_source: &'static str,
    /// The real server's port.
    upstream: u16,
    front: Front,
    /// The spec, for the port the importer connects to.
    spec: Box<dyn Fn(u16) -> String>,
    /// `--username/--password`, `IMPORTER_ACCESS_KEY_ID/_SECRET_KEY`.
    credentials: Option<(String, String)>,
    /// A directory holding the server's CA (`--ca-dir`, `IMPORTER_CERT_DIR`).
    ca_dir: Option<PathBuf>,
    /// Extra CLI arguments (`--source-kind s3`).
    cli: Vec<&'static str>,
    /// Whether the import must succeed (else: fail).
    succeeds: bool,
    /// Also run through `diskimport import` (a stall costs it the 30 s
    /// default stall timeout, so only one stalled case does).
    through_import: bool,
    secrets: Vec<String>,
}

/// The front of `case` on a fresh helper (each fault fires once per run).
fn start_front(servers: &Path, work: &Path, case: &SecretCase) -> (Option<Helper>, u16) {
    let up = format!("127.0.0.1:{}", case.upstream);
    let (name, script, args): (&str, &str, Vec<String>) = match case.front {
        Front::Direct => return (None, case.upstream),
        Front::Drop => (
            "drop",
            "fault_proxy.py",
            vec![
                "--upstream".into(),
                up,
                "--drop-after".into(),
                "3000000".into(),
                "--drop-times".into(),
                "0".into(),
                "--drops".into(),
                "1".into(),
            ],
        ),
        Front::Stall => (
            "stall",
            "stall_proxy.py",
            vec![
                "--upstream".into(),
                up,
                "--stall-after".into(),
                "3000000".into(),
                "--stall-times".into(),
                "1".into(),
            ],
        ),
        Front::Fail503 => (
            "fail503",
            "status_front.py",
            vec![
                "--upstream".into(),
                format!("http://{up}"),
                "--methods".into(),
                "GET".into(),
                "--count".into(),
                "2".into(),
                "--status".into(),
                "503".into(),
                "--retry-after".into(),
                "1".into(),
            ],
        ),
    };
    let helper = helper(servers, work, name, script, &args);
    let port = helper.port;
    (Some(helper), port)
}

/// Basic auth's header value for `user:pass`, which must not be printed either.
fn basic_value(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

#[test]
fn no_password_token_signature_or_query_is_printed_by_any_source() {
    let Some(servers) = require_servers(&[
        "nginx",
        "htpasswd",
        "python3",
        "qemu-img",
        "docker-registry",
        "skopeo",
    ]) else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("net-secrets")
        .tempdir()
        .unwrap();
    let work = dir.path();
    let (layout, reference, _) = image(work);
    let www = work.join("www");
    fs::create_dir_all(&www).unwrap();
    fs::copy(work.join("disk.qcow2"), www.join("disk.qcow2")).unwrap();
    let nginx = servers::Nginx::start(&servers, &work.join("nginx"), &www);
    let basic = Registry::start(&servers, &work.join("reg-basic"), &["tls", "auth"]);
    basic.push(&layout, "cd/test:v1");
    let token = Registry::start(&servers, &work.join("reg-token"), &["token"]);
    token.push(&layout, "private/test:v1");
    let s3 = S3::start(&servers, &work.join("s3"));
    let mut failures = Vec::new();

    // A URL with user info and a token query, and a presigned S3 URL (every
    // value in its query is a secret; the names alone show the query leaked).
    let userinfo = "someone:pa55word@";
    let query = "?token=tok3n-value&X-Amz-Signature=sig-value";
    let presigned = concat!(
        "?X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "&X-Amz-Credential=AKIAPRESIGNED7%2F20261201%2Fus-east-1%2Fs3%2Faws4_request",
        "&X-Amz-Date=20261201T000000Z&X-Amz-Expires=3600",
        "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLESESSION",
        "&X-Amz-SignedHeaders=host",
        "&X-Amz-Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
    );
    let http_secrets: Vec<String> = [
        "pa55word",
        "tok3n-value",
        "sig-value",
        "token=",
        "X-Amz-",
        "AKIAPRESIGNED7",
        "FwoGZXIvYXdzEXAMPLESESSION",
        "0f1e2d3c4b5a6978",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        basic_value("someone", "pa55word"),
        basic_value(&nginx.user, &nginx.pass),
        nginx.pass.clone(),
    ])
    .collect();
    let n = nginx.http_port;
    let http =
        |what, front, spec: Box<dyn Fn(u16) -> String>, credentials, succeeds, through_import| {
            SecretCase {
                what,
                cdi_source: "http",
                upstream: n,
                front,
                spec,
                credentials,
                ca_dir: None,
                cli: vec![],
                succeeds,
                through_import,
                secrets: http_secrets.clone(),
            }
        };
    let right = Some((nginx.user.clone(), nginx.pass.clone()));
    let wrong = Some(("someone".to_string(), "pa55word".to_string()));
    let mut cases = vec![
        http(
            "http: user info and ?token= through a drop",
            Front::Drop,
            Box::new(move |p| format!("http://{userinfo}127.0.0.1:{p}/disk.qcow2{query}")),
            None,
            true,
            true,
        ),
        http(
            "http: ?token= on a 404",
            Front::Direct,
            Box::new(move |p| format!("http://127.0.0.1:{p}/missing.qcow2{query}")),
            None,
            false,
            true,
        ),
        http(
            "http: basic auth refused (401)",
            Front::Direct,
            Box::new(move |p| format!("http://127.0.0.1:{p}/private/disk.qcow2{query}")),
            wrong.clone(),
            false,
            true,
        ),
        http(
            "http: basic auth through a drop",
            Front::Drop,
            Box::new(move |p| format!("http://127.0.0.1:{p}/private/disk.qcow2{query}")),
            right,
            true,
            true,
        ),
        http(
            "http: an unparsable URL with user info",
            Front::Direct,
            Box::new(move |_| format!("http://{userinfo}[::1/x{query}")),
            None,
            false,
            true,
        ),
        http(
            "http: a refused connection",
            Front::Direct,
            Box::new(move |_| format!("http://{userinfo}127.0.0.1:1/x{query}")),
            None,
            false,
            true,
        ),
        http(
            "presigned S3 URL: 404",
            Front::Direct,
            Box::new(move |p| format!("http://127.0.0.1:{p}/bucket/missing.qcow2{presigned}")),
            None,
            false,
            true,
        ),
        http(
            "presigned S3 URL: two 503s",
            Front::Fail503,
            Box::new(move |p| format!("http://127.0.0.1:{p}/disk.qcow2{presigned}")),
            None,
            true,
            true,
        ),
        http(
            "presigned S3 URL: a stall",
            Front::Stall,
            Box::new(move |p| format!("http://127.0.0.1:{p}/disk.qcow2{presigned}")),
            None,
            true,
            true,
        ),
    ];
    // The registry: its password, its Basic value, and bearer tokens (JWTs,
    // caught by their `eyJ` prefix in [`assert_no_secret`]).
    for (registry, repo, mode) in [
        (&basic, "cd/test:v1", "basic"),
        (&token, "private/test:v1", "token"),
    ] {
        let secrets = vec![
            registry.pass().to_string(),
            basic_value(registry.user(), registry.pass()),
            format!("not-{}", registry.pass()),
        ];
        let port = registry.port();
        let row = |what, front, pass: String, succeeds| SecretCase {
            what,
            cdi_source: "registry",
            upstream: port,
            front,
            spec: Box::new(move |p| format!("docker://127.0.0.1:{p}/{repo}")),
            credentials: Some((registry.user().to_string(), pass)),
            ca_dir: Some(registry.ca_dir()),
            cli: vec![],
            succeeds,
            through_import: !matches!(front, Front::Stall),
            secrets: secrets.clone(),
        };
        let (drop_case, stall_case, wrong_case) = match mode {
            "basic" => (
                "registry basic: a drop",
                "registry basic: a stall",
                "registry basic: a wrong password",
            ),
            _ => (
                "registry token: a drop",
                "registry token: a stall",
                "registry token: a wrong password",
            ),
        };
        cases.push(row(
            drop_case,
            Front::Drop,
            registry.pass().to_string(),
            true,
        ));
        cases.push(row(
            stall_case,
            Front::Stall,
            registry.pass().to_string(),
            true,
        ));
        cases.push(row(
            wrong_case,
            Front::Direct,
            format!("not-{}", registry.pass()),
            false,
        ));
    }
    // An S3 spec that does not parse, with keys in its user info.
    cases.push(SecretCase {
        what: "s3: an unparsable URL with user info",
        cdi_source: "s3",
        upstream: 1,
        front: Front::Direct,
        spec: Box::new(|_| {
            "http://AKIAINURL:s3cr3t-in-url@[::1/images/disk.qcow2?X-Amz-Signature=sig-value".into()
        }),
        credentials: None,
        ca_dir: None,
        cli: vec!["--source-kind", "s3"],
        succeeds: false,
        through_import: true,
        secrets: vec!["s3cr3t-in-url".into(), "sig-value".into()],
    });
    // S3 with SigV4: the secret key, and no request signature either.
    if let Some(s3) = &s3 {
        s3.put("images/disk.qcow2", &work.join("disk.qcow2"));
        let secrets = vec![
            s3.secret_key.clone(),
            "not-the-secret".to_string(),
            "Signature=".to_string(),
            "X-Amz-".to_string(),
        ];
        let row = |what, front, secret: &str, succeeds| SecretCase {
            what,
            cdi_source: "s3",
            upstream: s3.port,
            front,
            spec: Box::new(|p| format!("http://127.0.0.1:{p}/images/disk.qcow2")),
            credentials: Some((s3.access_key.clone(), secret.to_string())),
            ca_dir: None,
            cli: vec!["--source-kind", "s3"],
            succeeds,
            through_import: !matches!(front, Front::Stall),
            secrets: secrets.clone(),
        };
        cases.push(row("s3: a drop", Front::Drop, &s3.secret_key, true));
        cases.push(row("s3: a stall", Front::Stall, &s3.secret_key, true));
        cases.push(row(
            "s3: a wrong secret",
            Front::Direct,
            "not-the-secret",
            false,
        ));
    }

    for (i, case) in cases.iter().enumerate() {
        let secrets: Vec<&str> = case.secrets.iter().map(String::as_str).collect();
        // The CLI, with a debug log.
        let (front, port) = start_front(&servers, work, case);
        let target = work.join(format!("out-{i}.raw"));
        let mut args: Vec<String> = case.cli.iter().map(|s| s.to_string()).collect();
        args.extend(["--stall-timeout".into(), "2".into()]);
        if let Some((user, pass)) = &case.credentials {
            args.extend([
                "--username".into(),
                user.clone(),
                "--password".into(),
                pass.clone(),
            ]);
        }
        if let Some(ca) = &case.ca_dir {
            args.extend(["--ca-dir".into(), ca.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let spec = (case.spec)(port);
        let run = convert(&spec, &target, &args);
        let what = format!("{} (CLI)", case.what);
        if case.succeeds {
            check_identical(&run, &target, &reference, &what, &mut failures);
        } else if run.ok() {
            failures.push(format!("{what}: succeeded: {}", run.describe()));
        }
        assert_no_secret(&run, &secrets, &mut failures, &what);
        // What was checked holds the debug log, and the retry lines (with
        // the URL) where the front broke the transfer.
        let parses = !spec.contains("[::1/"); // the unparsable rows fail before any request
        if parses && !run.stderr.contains(" DEBUG ") {
            failures.push(format!("{what}: no debug log line: {}", run.describe()));
        }
        let broke = matches!(case.front, Front::Drop | Front::Stall | Front::Fail503);
        if broke && !run.stderr.contains(" WARN ") {
            failures.push(format!("{what}: no retry line: {}", run.describe()));
        }
        let _ = fs::remove_file(&target);
        drop(front);
        if !case.through_import {
            continue;
        }
        // `diskimport import`: its termination message and its log.
        let (front, port) = start_front(&servers, work, case);
        let root = work.join(format!("root-{i}"));
        let mut env = vec![
            ("IMPORTER_SOURCE", case.cdi_source.to_string()),
            ("IMPORTER_ENDPOINT", (case.spec)(port)),
        ];
        if let Some((user, pass)) = &case.credentials {
            env.push(("IMPORTER_ACCESS_KEY_ID", user.clone()));
            env.push(("IMPORTER_SECRET_KEY", pass.clone()));
        }
        if let Some(ca) = &case.ca_dir {
            fs::create_dir_all(root.join("certs")).unwrap();
            fs::copy(ca.join("ca.crt"), root.join("certs/ca.crt")).unwrap();
            env.push(("IMPORTER_CERT_DIR", "/certs".into()));
        }
        let (mut run, message) = import(&root, &env);
        let what = format!("{} (import)", case.what);
        let complete = message.contains("Import Complete");
        if case.succeeds != (run.ok() && complete) {
            failures.push(format!(
                "{what}: termination message {message:?}: {}",
                run.describe()
            ));
        }
        if message.is_empty() {
            failures.push(format!("{what}: no termination message"));
        }
        run.stderr.push_str(&message);
        assert_no_secret(&run, &secrets, &mut failures, &what);
        eprintln!("{what}: {message}");
        drop(front);
        let _ = fs::remove_dir_all(&root);
    }
    common::note(&format!("secrets: {} cases", cases.len()));
    common::finish("no secret in any output", failures);
}

/// An object of `mib` MiB served by nginx behind fault_proxy (with
/// `proxy_args`), for the tests of parallel ranges; `None` when the servers
/// are missing (counted by `require_servers`).
struct Ranged {
    _dir: tempfile::TempDir,
    work: PathBuf,
    nginx: servers::Nginx,
    proxy: FaultProxy,
    data: Vec<u8>,
}

impl Ranged {
    fn start(mib: u32, proxy_args: &[&str]) -> Option<Ranged> {
        let servers = require_servers(&["nginx", "htpasswd", "python3"])?;
        let dir = tempfile::Builder::new()
            .prefix("net-ranged")
            .tempdir()
            .unwrap();
        let work = dir.path().to_path_buf();
        let www = work.join("www");
        fs::create_dir_all(&www).unwrap();
        let data: Vec<u8> = (0..(mib << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        fs::write(www.join("disk.raw"), &data).unwrap();
        let nginx = servers::Nginx::start(&servers, &work.join("nginx"), &www);
        let proxy = FaultProxy::start(&servers, &work.join("fp"), nginx.http_port, proxy_args);
        Some(Ranged {
            _dir: dir,
            work,
            nginx,
            proxy,
            data,
        })
    }

    /// Converts the object through the proxy with `extra` into `name`,
    /// recording a failure unless the output is the object.
    fn convert(&self, name: &str, extra: &[&str], failures: &mut Vec<String>) -> common::Run {
        let target = self.work.join(name);
        let run = convert(&self.proxy.url("disk.raw"), &target, extra);
        if !run.ok() || fs::read(&target).map(|t| t != self.data).unwrap_or(true) {
            failures.push(format!("download {extra:?}: {}", run.describe()));
        }
        run
    }

    /// Status and size of every GET of the object in nginx's access log
    /// (nginx logs a request when it ends, so a cut one comes late).
    fn gets(&self) -> Vec<(u16, u64)> {
        self.nginx
            .access_log()
            .lines()
            .filter(|l| l.contains("GET /disk.raw "))
            .filter_map(|l| {
                // ... "GET /disk.raw HTTP/1.1" STATUS BYTES ...
                let after = l.split('"').nth(2)?;
                let mut fields = after.split_whitespace();
                Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
            })
            .collect()
    }
}

/// Counts of whole answers (200), 2 MiB segments and longer ranges in `gets`.
fn shapes(gets: &[(u16, u64)]) -> (usize, usize, usize) {
    let (mut whole, mut segments, mut longer) = (0, 0, 0);
    for &(status, bytes) in gets {
        match status {
            200 => whole += 1,
            206 if bytes == 2 << 20 => segments += 1,
            206 if bytes > 2 << 20 => longer += 1,
            _ => {}
        }
    }
    (whole, segments, longer)
}

#[test]
fn a_large_object_comes_over_parallel_ranges_and_a_dropped_range_is_resumed_alone() {
    // 40 MiB, above the size from which ranges are fetched in parallel; the
    // first two connections that carry 3 MB are cut. Two, because the first
    // may be the whole-object answer the reader leaves after 2 MiB: the proxy
    // can push its third MB into the socket buffers before the reader closes
    // it (seen on a loaded machine), and that drop cuts nothing being read.
    // The other lands on a connection carrying ranges (they are reused, so
    // each carries several 2 MiB segments) and must be resumed.
    let proxy_args = [
        "--drop-after",
        "3000000",
        "--drop-times",
        "0",
        "--drops",
        "2",
    ];
    let Some(ranged) = Ranged::start(40, &proxy_args) else {
        return;
    };
    let mut failures = Vec::new();
    let run = ranged.convert("out.raw", &["--connections", "4"], &mut failures);
    let (_, segments, _) = shapes(&ranged.gets());
    if segments < 8 {
        failures.push(format!(
            "only {segments} ranged GETs in nginx's log:\n{}",
            ranged.nginx.access_log()
        ));
    }
    if !run.stderr.contains("resuming") {
        failures.push(format!("no range was resumed: {}", run.describe()));
    }
    // One connection, straight to nginx: a single GET and no range.
    let before = ranged.gets().len();
    let direct = format!("http://127.0.0.1:{}/disk.raw", ranged.nginx.http_port);
    let run = convert(
        &direct,
        &ranged.work.join("one.raw"),
        &["--connections", "1"],
    );
    let new = ranged.gets().split_off(before);
    // The whole object, then the probe for bytes beyond its length.
    if !run.ok() || new.len() != 2 || new[0] != (200, ranged.data.len() as u64) {
        failures.push(format!("--connections 1 made {new:?}: {}", run.describe()));
    }
    common::finish("parallel ranges", failures);
}

/// A server that limits every connection (fault_proxy's per-connection
/// throttle): without `--connections`, the download tries parallel ranges,
/// finds them about four times as fast, and keeps them to the end.
#[test]
fn without_connections_asked_ranges_are_kept_where_they_are_faster() {
    // 8 MB/s per connection: one connection reads 8 MB/s, four 32 MB/s,
    // well past the 1.25x a trial must show.
    let Some(ranged) = Ranged::start(96, &["--throttle", "8000000"]) else {
        return;
    };
    let mut failures = Vec::new();
    let run = ranged.convert("out.raw", &[], &mut failures);
    let gets = ranged.gets();
    // One GET streams from 0 until the trial; the rest (at least 50 MiB)
    // comes in 2 MiB segments.
    let (whole, segments, open_ended) = shapes(&gets);
    if whole != 1 || segments < 25 || open_ended != 0 {
        failures.push(format!(
            "expected a 200, then only 2 MiB ranges: {gets:?}\n{}",
            run.describe()
        ));
    }
    common::finish("ranges kept", failures);
}

/// A server whose every new connection answers only after 1.5 s: the trial's
/// fresh connections have delivered at most two chunks when it ends (a second
/// and two chunks), slower than the one already streaming at 8 MB/s, so the
/// download gives them up and fetches the rest as one open-ended range.
#[test]
fn without_connections_asked_ranges_are_given_up_where_they_are_slower() {
    // Large enough that, after the first measurement, more is left than a
    // trial is worth starting for (32 MiB).
    let Some(ranged) = Ranged::start(64, &["--throttle", "8000000", "--delay", "1.5"]) else {
        return;
    };
    let mut failures = Vec::new();
    let run = ranged.convert("out.raw", &[], &mut failures);
    let gets = ranged.gets();
    // A 200 cut at the trial, at most the trial's segments (the four
    // started and those that followed before the verdict), then the rest.
    let (whole, segments, open_ended) = shapes(&gets);
    if whole != 1 || segments == 0 || segments > 8 || open_ended != 1 {
        failures.push(format!(
            "expected a 200, a few 2 MiB ranges, one open-ended range: {gets:?}\n{}",
            run.describe()
        ));
    }
    common::finish("ranges given up", failures);
}
