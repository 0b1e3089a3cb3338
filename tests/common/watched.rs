//! A running `diskimport import` watched through its progress endpoint: the
//! address comes from its stderr line "status endpoint listening on https://…",
//! and `/status` (JSON: phase, bytes_read, bytes_total, bytes_written, …) is
//! polled until a condition holds. Tests wait for such an observable state —
//! "mid-transfer", "everything read" — never for a fixed time.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The longest any wait here may take; reaching it is a failure (a hang).
const LIMIT: Duration = Duration::from_secs(120);

/// A child import and what it printed.
pub struct WatchedImport {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    client: reqwest::blocking::Client,
}

impl WatchedImport {
    /// Starts `command` (its stderr is captured here).
    pub fn spawn(mut command: Command) -> WatchedImport {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the import");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let client = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        WatchedImport {
            child,
            stderr,
            reader: Some(reader),
            client,
        }
    }

    /// What the import printed so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn address(&self) -> Option<String> {
        let text = self.stderr();
        let at = text.find("status endpoint listening on https://")?;
        let rest = &text[at + "status endpoint listening on https://".len()..];
        Some(rest.lines().next()?.trim().to_string())
    }

    /// The `/status` document, if the endpoint answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let address = self.address()?;
        let response = self
            .client
            .get(format!("https://{address}/status"))
            .send()
            .ok()?;
        serde_json::from_str(&response.text().ok()?).ok()
    }

    /// Polls `/status` until `condition` holds and returns that document, or
    /// `None` when the import ended first. Panics after [`LIMIT`].
    pub fn wait_for(
        &mut self,
        what: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.status() {
                if condition(&status) {
                    return Some(status);
                }
            }
            if self.child.try_wait().unwrap().is_some() {
                return None;
            }
            assert!(
                started.elapsed() < LIMIT,
                "import never reached {what}; stderr: {}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the end (panics after [`LIMIT`]); returns the status and stderr.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > LIMIT {
                self.kill9();
                panic!("import did not finish; stderr: {}", self.stderr());
            }
            thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.stderr())
    }
}

impl Drop for WatchedImport {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}
