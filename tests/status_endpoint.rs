//! The progress endpoint of `diskimport import`, scraped as CDI's controller
//! scrapes it: the real binary with CDI's environment imports a qcow2 from
//! nginx through `gate_proxy.py`, which holds the body part-way until the
//! test has scraped the transfer three times, while this test reads
//! `https://127.0.0.1:PORT/metrics` every 200 ms with a client that skips
//! certificate checks, and parses the value with the controller's regex.
//!
//! The termination log is a FIFO here: the importer blocks writing the
//! termination message until the test reads it, so the final state
//! (succeeded, 100) is scraped deterministically while the endpoint is still
//! up, as it must be until that message is written.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{qemu_img, BIN};
use servers::{require_servers, GateProxy, Nginx};

const OWNER_UID: &str = "some-uid";
/// The whole import run, scrapes included, must end within this.
const LIMIT: Duration = Duration::from_secs(60);

/// The controller's parser (`GetProgressReportFromURL`).
fn controller_regex() -> regex::Regex {
    regex::Regex::new(&format!(
        r#"(kubevirt_cdi_import_progress_total)\{{ownerUID\="{OWNER_UID}"\}} (\d{{1,3}}\.?\d*)"#
    ))
    .unwrap()
}

/// A ~2 MiB qcow2 of incompressible data, served by nginx.
struct Served {
    nginx: Nginx,
    size: u64,
    _dir: tempfile::TempDir,
}

fn serve_image() -> Option<Served> {
    let mut needs = Nginx::NEEDS.to_vec();
    needs.push("qemu-img");
    let servers_dir = require_servers(&needs)?;
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    fs::create_dir_all(&www).unwrap();
    let raw = dir.path().join("source.raw");
    let mut data = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut().take(2 << 20) {
        // xorshift: nothing for qcow2 to leave out.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(&raw, &data).unwrap();
    let image = www.join("disk.qcow2");
    let run = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    let size = fs::metadata(&image).unwrap().len();
    let nginx = Nginx::start(&servers_dir, &dir.path().join("nginx"), &www);
    Some(Served {
        nginx,
        size,
        _dir: dir,
    })
}

/// A CDI-shaped root whose termination log is a FIFO.
fn fifo_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("data")).unwrap();
    fs::create_dir_all(dir.path().join("dev")).unwrap();
    nix::unistd::mkfifo(
        &dir.path().join("dev/termination-log"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    dir
}

/// The importer; killed (by PID) and reaped on drop.
struct Importer {
    child: Child,
    started: Instant,
    port: u16,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    release: Option<mpsc::Sender<()>>,
    termination: mpsc::Receiver<String>,
}

impl Importer {
    /// Starts `diskimport import` under `root` from `endpoint` and waits for
    /// the endpoint's port on its stderr.
    fn start(root: &Path, endpoint: &str) -> Importer {
        let mut child = Command::new(BIN)
            .args(["import", "--root"])
            .arg(root)
            .args(["--status-port", "0", "--status-addr", "127.0.0.1"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("IMPORTER_SOURCE", "http")
            .env("IMPORTER_ENDPOINT", endpoint)
            .env("IMPORTER_CONTENTTYPE", "kubevirt")
            .env("IMPORTER_IMAGE_SIZE", "64Mi")
            .env("FILESYSTEM_OVERHEAD", "0")
            .env("OWNER_UID", OWNER_UID)
            .env("PREALLOCATION", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let (tx, stderr) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The FIFO's reader: the importer's write of the termination message
        // blocks until this opens it, which `finish` allows.
        let (text_tx, termination) = mpsc::channel();
        let (release, go) = mpsc::channel::<()>();
        let log: PathBuf = root.join("dev/termination-log");
        std::thread::spawn(move || {
            if go.recv().is_ok() {
                let mut text = String::new();
                if let Ok(mut f) = fs::File::open(&log) {
                    let _ = f.read_to_string(&mut text);
                }
                let _ = text_tx.send(text);
            }
        });
        let mut importer = Importer {
            child,
            started,
            port: 0,
            stderr,
            stderr_seen: Vec::new(),
            release: Some(release),
            termination,
        };
        importer.port = importer.wait_for_port();
        importer
    }

    fn wait_for_port(&mut self) -> u16 {
        const PREFIX: &str = "status endpoint listening on https://127.0.0.1:";
        loop {
            match self.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let port = line
                        .find(PREFIX)
                        .and_then(|at| line[at + PREFIX.len()..].trim().parse().ok());
                    self.stderr_seen.push(line);
                    if let Some(port) = port {
                        return port;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("importer exited before listening: {:?}", self.stderr_seen)
                }
            }
            assert!(
                self.started.elapsed() < Duration::from_secs(30),
                "no endpoint port on stderr within 30 s: {:?}",
                self.stderr_seen
            );
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Panics once the run took longer than [`LIMIT`].
    fn check_time(&mut self) {
        if self.started.elapsed() > LIMIT {
            self.stderr_seen.extend(self.stderr.try_iter());
            panic!(
                "import not done within {LIMIT:?}; stderr: {:?}",
                self.stderr_seen
            );
        }
    }

    /// Lets the termination message be written; returns it and the exit code.
    fn finish(&mut self) -> (String, Option<i32>) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        let left = LIMIT.saturating_sub(self.started.elapsed()) + Duration::from_secs(5);
        let text = self
            .termination
            .recv_timeout(left)
            .expect("termination message");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "importer did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        (text, status.code())
    }
}

impl Drop for Importer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client as the controller's: no certificate checks, 2 s timeout.
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn get(client: &reqwest::blocking::Client, url: &str) -> (u16, String) {
    let response = client
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let code = response.status().as_u16();
    (code, response.text().unwrap())
}

/// The progress value from a /metrics body, as the controller reads it, after
/// checking that the line carries a plain decimal and nothing the regex would
/// misread (an exponent).
fn progress_value(body: &str) -> Option<f64> {
    let caps = controller_regex().captures(body)?;
    let value = caps.get(2).unwrap();
    let rest = body[value.end()..].lines().next().unwrap_or("");
    assert!(
        rest.is_empty(),
        "the value must be a plain decimal, got {:?}{rest:?}",
        value.as_str()
    );
    Some(value.as_str().parse().unwrap())
}

fn status_json(client: &reqwest::blocking::Client, url: &str) -> serde_json::Value {
    let (code, text) = get(client, url);
    assert_eq!(code, 200, "{text}");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in [
        "phase",
        "bytes_read",
        "bytes_total",
        "bytes_written",
        "percent",
        "rate_bytes_per_second",
        "eta_seconds",
        "error",
    ] {
        assert!(value.get(field).is_some(), "/status lacks {field}: {text}");
    }
    value
}

#[test]
fn progress_is_scraped_over_https_during_a_held_import_and_reaches_100() {
    let Some(served) = serve_image() else { return };
    let root = fifo_root();
    // The body is held at three quarters (past the first 1 MiB chunk the
    // reader takes) until three scrapes saw it transferring.
    let hold = (served.size / 4 * 3).to_string();
    let gate = GateProxy::start(
        &served._dir.path().join("gate"),
        served.nginx.http_port,
        &["--hold-after", &hold],
    );
    let url = gate.url("disk.qcow2");
    let mut importer = Importer::start(root.path(), &url);
    let client = client();

    let (code, body) = get(&client, &importer.url("/healthz"));
    assert_eq!((code, body.as_str()), (200, "ok"));

    let mut values: Vec<f64> = Vec::new();
    let mut transferring = 0;
    let last_status = loop {
        importer.check_time();
        let (code, body) = get(&client, &importer.url("/metrics"));
        assert_eq!(code, 200);
        if let Some(v) = progress_value(&body) {
            values.push(v);
        }
        let status = status_json(&client, &importer.url("/status"));
        let phase = status["phase"].as_str().unwrap().to_string();
        if phase == "transferring" {
            transferring += 1;
            assert_eq!(
                status["bytes_total"].as_u64(),
                Some(served.size),
                "{status}"
            );
            let read = status["bytes_read"].as_u64().unwrap();
            assert!(read <= served.size, "{status}");
            let percent = status["percent"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&percent), "{status}");
            assert!(status["rate_bytes_per_second"].as_f64().unwrap() >= 0.0);
            assert!(status["error"].is_null(), "{status}");
            if transferring == 3 {
                gate.release();
            }
        }
        if phase == "succeeded" || phase == "failed" {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Still up while the termination message waits: one more scrape.
    let (_, body) = get(&client, &importer.url("/metrics"));
    values.push(progress_value(&body).expect("series at the end"));
    // Unknown paths serve the metrics too, as CDI's Go server does.
    let (code, body) = get(&client, &importer.url("/any/other/path"));
    assert_eq!(code, 200);
    assert_eq!(progress_value(&body), Some(100.0));
    assert!(
        body.contains("diskimport_source_read_bytes_total "),
        "{body}"
    );

    let (text, code) = importer.finish();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Import Complete"), "{text}");

    assert_eq!(last_status["phase"], "succeeded", "{last_status}");
    assert_eq!(last_status["percent"].as_f64(), Some(100.0));
    assert_eq!(last_status["bytes_read"].as_u64(), Some(served.size));
    assert_eq!(last_status["bytes_total"].as_u64(), Some(served.size));
    assert!(last_status["error"].is_null());
    assert!(
        transferring >= 3,
        "scraped while transferring: {transferring}"
    );

    common::note(&format!(
        "status endpoint: {} scrapes, {transferring} while transferring, progress {values:?}",
        values.len()
    ));
    assert!(!values.is_empty(), "the progress series never appeared");
    for pair in values.windows(2) {
        assert!(pair[0] <= pair[1], "progress went back: {values:?}");
    }
    assert!(
        values.iter().any(|v| *v > 0.0 && *v < 100.0),
        "no value strictly between 0 and 100: {values:?}"
    );
    assert_eq!(values.last(), Some(&100.0), "{values:?}");
}

#[test]
fn a_failed_import_reports_failed_and_the_error_until_the_message_is_written() {
    let Some(served) = serve_image() else { return };
    let root = fifo_root();
    let url = served.nginx.http("status/404");
    let mut importer = Importer::start(root.path(), &url);
    let client = client();
    let status = loop {
        importer.check_time();
        let status = status_json(&client, &importer.url("/status"));
        if status["phase"] == "failed" {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let error = status["error"].as_str().expect("an error message");
    assert!(!error.is_empty());
    assert!(status["eta_seconds"].is_null(), "{status}");
    let (_, body) = get(&client, &importer.url("/metrics"));
    assert!(
        body.contains("diskimport_phase{phase=\"failed\"} 1"),
        "{body}"
    );
    // Never 100 for a failed import; absent (N/A) when the size was never known.
    let value = progress_value(&body);
    assert!(value.is_none_or(|v| v < 100.0), "{value:?}");
    let (text, code) = importer.finish();
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.is_empty());
}

#[test]
fn an_endpoint_port_in_use_is_a_warning_and_the_import_still_runs() {
    let Some(served) = serve_image() else { return };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("data")).unwrap();
    fs::create_dir_all(root.path().join("dev")).unwrap();
    let mut child = Command::new(BIN)
        .args(["import", "--root"])
        .arg(root.path())
        .args(["--status-port", &port, "--status-addr", "127.0.0.1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("IMPORTER_SOURCE", "http")
        .env("IMPORTER_ENDPOINT", served.nginx.http("disk.qcow2"))
        .env("IMPORTER_CONTENTTYPE", "kubevirt")
        .env("IMPORTER_IMAGE_SIZE", "64Mi")
        .env("FILESYSTEM_OVERHEAD", "0")
        .env("OWNER_UID", OWNER_UID)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("import did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("status endpoint") && stderr.contains("not started"),
        "{stderr}"
    );
    let text = fs::read_to_string(root.path().join("dev/termination-log")).unwrap();
    assert!(text.contains("Import Complete"), "{text}");
    drop(taken);
}
