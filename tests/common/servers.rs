//! Real test servers from `../shared/servers`, run as child processes bound to
//! 127.0.0.1 and stopped (SIGTERM to their PID, SIGKILL if they linger, then
//! waited for) when their handle is dropped, so a failing test never leaves a
//! server, or an nginx worker, behind.
//!
//! Use from an integration test with
//!
//! ```ignore
//! #[path = "common/servers.rs"]
//! mod servers;
//! ```
//!
//! The pattern for another server: [`require_servers`] (skip, or fail under
//! `CI`, when the scripts or binaries are missing), then [`Server::spawn`] with
//! the script and its arguments (`FOREGROUND=1` scripts `exec` the server, so
//! the child PID is the server's), then wait for its port with [`wait_port`].
//! Every wait is bounded.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `../shared/servers` next to the repository.
pub fn servers_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/servers"))
}

/// The servers directory, if it and every program in `programs` (absolute
/// paths, or names looked up in PATH) exist. Otherwise the test is skipped
/// (`common::skip`: counted and printed; a failure with `CI` set).
pub fn require_servers(programs: &[&str]) -> Option<PathBuf> {
    let dir = servers_dir();
    let mut missing: Vec<String> = Vec::new();
    if !dir.is_dir() {
        missing.push(dir.display().to_string());
    }
    for p in programs {
        if find_program(p).is_none() {
            missing.push((*p).to_string());
        }
    }
    if missing.is_empty() {
        return Some(dir);
    }
    crate::common::skip(&format!("missing: {}", missing.join(", ")));
    None
}

/// An absolute path, or `name` found in PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// A child server process; killed and reaped on drop.
pub struct Server {
    /// For messages.
    pub name: String,
    child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Server {
    /// Starts `program args...` with `envs`, stdout+stderr to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&std::ffi::OsStr],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> Server {
        let out = File::create(log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({program:?}): {e}"));
        Server {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (with the server's log) if the process has exited.
    pub fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); log:\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Polls until `cond` holds, the server dies (panic), or `timeout` (panic).
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return;
            }
            self.check_alive();
            if Instant::now() > deadline {
                panic!(
                    "{}: {what} not within {timeout:?}; log:\n{}",
                    self.name,
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first, to exactly this PID: nginx's master then stops its
        // workers (SIGKILL would leave them running without a parent).
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Still there: Child::kill sends SIGKILL to exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True once something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits (bounded) until `server` listens on `port`.
pub fn wait_port(server: &mut Server, port: u16) {
    server.wait_until(&format!("port {port}"), START_TIMEOUT, || port_open(port));
}

/// Parses `KEY=value` lines.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// nginx from `nginx_start.sh` (FOREGROUND=1): HTTP and HTTPS on 127.0.0.1
/// with the test CA, basic auth under `/private/`, `/slow/`, `/redirect/`.
pub struct Nginx {
    pub server: Server,
    pub http_port: u16,
    pub https_port: u16,
    /// The test CA that signed the server certificate.
    pub ca_bundle: PathBuf,
    /// An unrelated CA (from mk_certs.sh).
    pub other_ca: PathBuf,
    pub user: String,
    pub pass: String,
    /// nginx's work dir (config, certs, logs).
    pub work: PathBuf,
}

impl Nginx {
    /// Programs the nginx tests need.
    pub const NEEDS: &'static [&'static str] = &["/usr/sbin/nginx", "openssl", "python3", "sh"];

    /// Starts nginx serving `docroot`, its files under `work`.
    pub fn start(servers: &Path, work: &Path, docroot: &Path) -> Nginx {
        fs::create_dir_all(work).expect("nginx work dir");
        let script = servers.join("nginx_start.sh");
        let mut server = Server::spawn(
            "nginx",
            Path::new("/bin/sh"),
            &[script.as_os_str(), work.as_os_str(), docroot.as_os_str()],
            &[("FOREGROUND", "1")],
            &work.join("start.log"),
        );
        let env_file = work.join("env");
        server.wait_until("env file", START_TIMEOUT, || env_file.is_file());
        let env = parse_env(&fs::read_to_string(&env_file).expect("read nginx env"));
        let get = |k: &str| {
            env.get(k)
                .unwrap_or_else(|| panic!("nginx env lacks {k}: {env:?}"))
                .clone()
        };
        let http_port: u16 = get("HTTP_PORT").parse().expect("HTTP_PORT");
        let https_port: u16 = get("HTTPS_PORT").parse().expect("HTTPS_PORT");
        wait_port(&mut server, http_port);
        wait_port(&mut server, https_port);
        Nginx {
            server,
            http_port,
            https_port,
            ca_bundle: PathBuf::from(get("CA_BUNDLE")),
            other_ca: work.join("certs/other-ca.crt"),
            user: get("AUTH_USER"),
            pass: get("AUTH_PASS"),
            work: work.to_path_buf(),
        }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn http(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.http_port,
            path.trim_start_matches('/')
        )
    }

    /// `https://127.0.0.1:PORT/path`.
    pub fn https(&self, path: &str) -> String {
        format!(
            "https://127.0.0.1:{}/{}",
            self.https_port,
            path.trim_start_matches('/')
        )
    }

    /// The access log so far (combined format: `$remote_user` is the third field).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.work.join("logs/access.log")).unwrap_or_default()
    }
}

/// `faulty_http.py`: one file at every path, with injected faults.
pub struct Faulty {
    pub server: Server,
    pub port: u16,
    /// One line per request.
    pub request_log: PathBuf,
}

impl Faulty {
    /// Programs the faulty server needs.
    pub const NEEDS: &'static [&'static str] = &["python3"];

    /// Serves `file` with fault options `args` (see `faulty_http.py --help`);
    /// its files go to `work`. The server also exits by itself after 120 s.
    pub fn start(servers: &Path, work: &Path, file: &Path, args: &[&str]) -> Faulty {
        fs::create_dir_all(work).expect("faulty work dir");
        let script = servers.join("faulty_http.py");
        let port_file = work.join("port");
        let request_log = work.join("requests.log");
        let mut argv: Vec<std::ffi::OsString> = vec![
            script.into(),
            "--file".into(),
            file.into(),
            "--port".into(),
            "0".into(),
            "--port-file".into(),
            port_file.clone().into(),
            "--max-seconds".into(),
            "120".into(),
            "--log".into(),
            request_log.clone().into(),
        ];
        argv.extend(args.iter().map(|a| a.into()));
        let argv_ref: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let python = find_program("python3").expect("python3");
        let mut server = Server::spawn(
            "faulty_http.py",
            &python,
            &argv_ref,
            &[],
            &work.join("out.log"),
        );
        server.wait_until("port file", START_TIMEOUT, || port_file.is_file());
        let port: u16 = fs::read_to_string(&port_file)
            .expect("read port file")
            .trim()
            .parse()
            .expect("port number");
        wait_port(&mut server, port);
        Faulty {
            server,
            port,
            request_log,
        }
    }

    /// `http://127.0.0.1:PORT/name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// The request log so far.
    pub fn requests(&self) -> String {
        fs::read_to_string(&self.request_log).unwrap_or_default()
    }
}

/// `fault_proxy.py`: a TCP proxy in front of a plain-http server on
/// 127.0.0.1 that drops, throttles or resets the server->client stream.
pub struct FaultProxy {
    pub server: Server,
    pub port: u16,
}

impl FaultProxy {
    /// Programs the proxy needs.
    pub const NEEDS: &'static [&'static str] = &["python3"];

    /// Proxies to 127.0.0.1:`upstream` with fault options `args` (see
    /// `fault_proxy.py --help`); its files go to `work`. Exits by itself
    /// after 120 s.
    pub fn start(servers: &Path, work: &Path, upstream: u16, args: &[&str]) -> FaultProxy {
        fs::create_dir_all(work).expect("fault proxy work dir");
        let script = servers.join("fault_proxy.py");
        let port_file = work.join("port");
        let mut argv: Vec<std::ffi::OsString> = vec![
            script.into(),
            "--upstream".into(),
            format!("127.0.0.1:{upstream}").into(),
            "--port".into(),
            "0".into(),
            "--port-file".into(),
            port_file.clone().into(),
            "--max-seconds".into(),
            "120".into(),
        ];
        argv.extend(args.iter().map(|a| a.into()));
        let argv_ref: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let python = find_program("python3").expect("python3");
        let mut server = Server::spawn(
            "fault_proxy.py",
            &python,
            &argv_ref,
            &[],
            &work.join("out.log"),
        );
        server.wait_until("port file", START_TIMEOUT, || port_file.is_file());
        let port: u16 = fs::read_to_string(&port_file)
            .expect("read port file")
            .trim()
            .parse()
            .expect("port number");
        // No wait_port here: the port file is written once it listens, and a
        // probe connection would count against --drop-times/--refuse-first.
        server.check_alive();
        FaultProxy { server, port }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }
}

/// `tests/support/gate_proxy.py`: a TCP proxy that holds a transfer at a
/// known point until the test opens the gate, so a test acts while an import
/// is provably mid-transfer, whatever the machine's speed.
pub struct GateProxy {
    pub server: Server,
    pub port: u16,
    /// Its event log ("conn C held after B bytes", "conn C waiting", ...).
    pub log: PathBuf,
    release: PathBuf,
}

impl GateProxy {
    /// Proxies to 127.0.0.1:`upstream` with gate options `args` (see
    /// `gate_proxy.py --help`: `--hold-after BYTES`, `--hold-from-connection
    /// N`); its files go to `work`. Exits by itself after 300 s.
    pub fn start(work: &Path, upstream: u16, args: &[&str]) -> GateProxy {
        fs::create_dir_all(work).expect("gate proxy work dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/gate_proxy.py");
        let port_file = work.join("port");
        let log = work.join("gate.log");
        let release = work.join("open");
        let mut argv: Vec<std::ffi::OsString> = vec![
            script.into(),
            "--upstream".into(),
            format!("127.0.0.1:{upstream}").into(),
            "--release".into(),
            release.clone().into(),
            "--port".into(),
            "0".into(),
            "--port-file".into(),
            port_file.clone().into(),
            "--log".into(),
            log.clone().into(),
            "--max-seconds".into(),
            "300".into(),
        ];
        argv.extend(args.iter().map(|a| a.into()));
        let argv_ref: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let python = find_program("python3").expect("python3");
        let mut server = Server::spawn(
            "gate_proxy.py",
            &python,
            &argv_ref,
            &[],
            &work.join("out.log"),
        );
        server.wait_until("port file", START_TIMEOUT, || port_file.is_file());
        let port: u16 = fs::read_to_string(&port_file)
            .expect("read port file")
            .trim()
            .parse()
            .expect("port number");
        server.check_alive();
        GateProxy {
            server,
            port,
            log,
            release,
        }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Whether a connection is held at the gate now (held or waiting, and not
    /// released yet).
    pub fn holding(&self) -> bool {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let held = text.matches(" held after ").count() + text.matches(" waiting").count();
        held > text.matches(" released").count()
    }

    /// Waits (bounded) until a connection is held at the gate; false if
    /// `gave_up` says the client ended first, or after [`START_TIMEOUT`]
    /// times four.
    pub fn wait_holding(&mut self, mut gave_up: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + START_TIMEOUT * 4;
        while !self.holding() {
            if gave_up() || Instant::now() > deadline {
                return false;
            }
            self.server.check_alive();
            thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Opens the gate: every held connection goes on, and none is held again.
    pub fn release(&self) {
        fs::write(&self.release, b"").expect("open the gate");
    }
}

/// tinyproxy (Debian's `tinyproxy`), a real forward proxy on 127.0.0.1 that
/// tunnels `CONNECT` for https and logs every request it handles.
pub struct Tinyproxy {
    pub server: Server,
    pub port: u16,
    /// Its log: a `CONNECT host:port` line for every tunnel.
    pub log: PathBuf,
}

impl Tinyproxy {
    /// Programs the proxy tests need.
    pub const NEEDS: &'static [&'static str] = &["/usr/bin/tinyproxy"];

    /// Starts tinyproxy in the foreground with its config and log under `work`.
    pub fn start(work: &Path) -> Tinyproxy {
        fs::create_dir_all(work).expect("tinyproxy work dir");
        // A port the kernel just handed out; tinyproxy binds it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = work.join("tinyproxy.log");
        let config = work.join("tinyproxy.conf");
        // No ConnectPort line: CONNECT is allowed to any port (the test servers
        // use high ports).
        let text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\n\
             MaxClients 16\nAllow 127.0.0.1\n",
            log.display()
        );
        fs::write(&config, text).expect("tinyproxy config");
        let mut server = Server::spawn(
            "tinyproxy",
            Path::new("/usr/bin/tinyproxy"),
            &["-d".as_ref(), "-c".as_ref(), config.as_os_str()],
            &[],
            &work.join("tinyproxy.out"),
        );
        wait_port(&mut server, port);
        Tinyproxy { server, port, log }
    }

    /// `http://127.0.0.1:PORT`, for `https_proxy`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's log so far.
    pub fn requests(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}
