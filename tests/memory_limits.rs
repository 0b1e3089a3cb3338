//! Hostile streams inside a real memory cgroup limited to 600M, as CDI's
//! importer pod is: each is refused with a message naming the limit, and none
//! is OOM-killed (the cgroup's own OOM-kill counter stays 0). A real 2 GiB
//! conversion runs in the same limit and its peak memory is printed.
//!
//! The cgroup is made and removed by the test: cgroup v1
//! (`/sys/fs/cgroup/memory/NAME`, `memory.limit_in_bytes`) where the memory
//! controller is mounted so, else v2 (`/sys/fs/cgroup/NAME`, `memory.max`).
//! Needs root; without it (or without either hierarchy) the tests are skipped
//! visibly, and fail under CI.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{qemu_img, require_root, run_cmd, skip, Run, BIN, TIMEOUT};

/// CDI's default importer memory limit.
const LIMIT: u64 = 600_000_000;

/// A memory cgroup this test made; removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    v1: bool,
}

impl MemoryCgroup {
    fn new(name: &str) -> Option<MemoryCgroup> {
        if !require_root("making a memory cgroup") {
            return None;
        }
        let unique = format!("diskimport-test-{name}-{}", std::process::id());
        let v1_root = Path::new("/sys/fs/cgroup/memory");
        let v2_root = Path::new("/sys/fs/cgroup");
        let (dir, v1, limit_file) = if v1_root.join("memory.limit_in_bytes").is_file() {
            (v1_root.join(&unique), true, "memory.limit_in_bytes")
        } else if fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
        {
            (v2_root.join(&unique), false, "memory.max")
        } else {
            skip("no cgroup v1 memory controller and no cgroup v2 with memory");
            return None;
        };
        if let Err(e) = fs::create_dir(&dir) {
            skip(&format!("cannot make {}: {e}", dir.display()));
            return None;
        }
        let cgroup = MemoryCgroup { dir, v1 };
        fs::write(cgroup.dir.join(limit_file), LIMIT.to_string()).unwrap();
        if !v1 {
            // No swapping around the limit either.
            let _ = fs::write(cgroup.dir.join("memory.swap.max"), "0");
        }
        Some(cgroup)
    }

    /// `diskimport ARGS` run inside the cgroup (the shell joins it, then execs).
    fn run(&self, args: &[&str]) -> Run {
        let procs = self.dir.join("cgroup.procs");
        let mut argv: Vec<String> = vec![
            "-c".into(),
            format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display()),
            BIN.into(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        run_cmd("sh", &argv, None, TIMEOUT * 3)
    }

    /// OOM kills inside this cgroup so far.
    fn oom_kills(&self) -> u64 {
        let file = if self.v1 {
            "memory.oom_control"
        } else {
            "memory.events"
        };
        fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Peak memory charged to the cgroup (page cache included).
    fn peak(&self) -> u64 {
        let file = if self.v1 {
            "memory.max_usage_in_bytes"
        } else {
            "memory.peak"
        };
        fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The run was refused in time with a message naming `words`, not killed.
fn assert_refused(cgroup: &MemoryCgroup, run: &Run, target: &Path, words: &[&str]) {
    assert!(!run.timed_out(), "{}", run.describe());
    let code = run.status.and_then(|s| s.code());
    assert_eq!(code, Some(1), "refused with exit 1: {}", run.describe());
    assert_eq!(cgroup.oom_kills(), 0, "OOM-killed: {}", run.describe());
    for word in words {
        assert!(run.stderr.contains(word), "{word:?}: {}", run.describe());
    }
    assert!(!target.exists(), "no target after a refusal");
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        skip(&format!("{tool} is not installed"));
    }
    found
}

#[test]
fn a_zstd_stream_with_a_2_gib_window_is_refused_naming_the_limit() {
    if !have("zstd") {
        return;
    }
    let Some(cgroup) = MemoryCgroup::new("zstd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.raw.zst");
    // Streamed (size unknown), so the frame asks for the full 2^31 window.
    let mut zstd = Command::new("zstd")
        .args(["-q", "-1", "--long=31", "-c"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&bomb).unwrap())
        .spawn()
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut stdin = zstd.stdin.take().unwrap();
    for _ in 0..64 {
        stdin.write_all(&zeros).unwrap();
    }
    drop(stdin);
    assert!(zstd.wait().unwrap().success());
    let target = dir.path().join("out.raw");
    let run = cgroup.run(&[
        "convert",
        "--quiet",
        bomb.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert_refused(
        &cgroup,
        &run,
        &target,
        &[
            "zstd stream needs more than the 128 MiB window limit",
            "memory limit",
        ],
    );
}

/// An xz stream whose block header asks for a 1.5 GiB LZMA2 dictionary (the
/// largest `xz` writes, accepted by the old fixed 2 GiB limit): a small
/// stream re-labelled (dictionary-size byte and header CRC32 rewritten), since
/// an encoder with that dictionary would need far more memory than a test has.
fn xz_with_huge_dictionary() -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
    e.write_all(&vec![7u8; 100_000]).unwrap();
    let mut xz = e.finish().unwrap();
    // Stream header: 12 bytes. Block header: size byte, flags, optional
    // sizes, then the filter flags of the single LZMA2 filter (id 0x21,
    // properties size 1, the dictionary-size byte), padding, CRC32.
    let start = 12;
    let header_len = (xz[start] as usize + 1) * 4;
    let flags = xz[start + 1];
    assert_eq!(flags & 0x03, 0, "one filter");
    let mut at = start + 2;
    let skip_varint = |at: &mut usize, bytes: &[u8]| {
        while bytes[*at] & 0x80 != 0 {
            *at += 1;
        }
        *at += 1;
    };
    if flags & 0x40 != 0 {
        skip_varint(&mut at, &xz);
    }
    if flags & 0x80 != 0 {
        skip_varint(&mut at, &xz);
    }
    assert_eq!(&xz[at..at + 2], &[0x21, 0x01], "LZMA2 filter flags");
    xz[at + 2] = 37; // 3 * 2^29 bytes = 1.5 GiB
    let crc_at = start + header_len - 4;
    let mut crc = flate2::Crc::new();
    crc.update(&xz[start..crc_at]);
    xz[crc_at..crc_at + 4].copy_from_slice(&crc.sum().to_le_bytes());
    xz
}

#[test]
fn an_xz_stream_demanding_a_1_5_gib_dictionary_is_refused_naming_the_limit() {
    let Some(cgroup) = MemoryCgroup::new("xz") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("huge-dict.raw.xz");
    fs::write(&source, xz_with_huge_dictionary()).unwrap();
    let target = dir.path().join("out.raw");
    let run = cgroup.run(&[
        "convert",
        "--quiet",
        source.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert_refused(
        &cgroup,
        &run,
        &target,
        &[
            "xz stream needs more than the 286 MiB memory limit",
            "memory limit",
        ],
    );
}

#[test]
fn a_qcow2_with_a_huge_l1_table_is_refused_or_read_within_the_limit() {
    let Some(cgroup) = MemoryCgroup::new("qcow2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The largest L1 qemu-img makes: 2 PiB virtual, 4 Mi entries (32 MiB).
    let largest = dir.path().join("largest-l1.qcow2");
    let run = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        largest.to_str().unwrap(),
        "2P",
    ]);
    assert!(run.ok(), "{}", run.describe());
    let info = cgroup.run(&["info", "--json", largest.to_str().unwrap()]);
    assert!(info.ok(), "{}", info.describe());
    assert!(info
        .stdout_str()
        .contains("\"virtual_size\": 2251799813685248"));
    assert_eq!(cgroup.oom_kills(), 0);
    // The same header claiming an L1 table of 2^31 entries (16 GiB) for a
    // virtual size of 2^60 bytes: refused from the header, before any table.
    let mut bytes = fs::read(&largest).unwrap();
    bytes[24..32].copy_from_slice(&(1u64 << 60).to_be_bytes());
    bytes[36..40].copy_from_slice(&(1u32 << 31).to_be_bytes());
    let hostile = dir.path().join("huge-l1.qcow2");
    fs::write(&hostile, &bytes).unwrap();
    let target = dir.path().join("out.raw");
    let run = cgroup.run(&[
        "convert",
        "--quiet",
        hostile.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert_refused(&cgroup, &run, &target, &["L1 entries (limit 4194304)"]);
}

#[test]
fn a_2_gib_conversion_fits_in_600m_and_reports_its_peak() {
    let Some(cgroup) = MemoryCgroup::new("peak") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 2 GiB virtual, 256 MiB of data spread over it.
    let raw = dir.path().join("source.raw");
    let file = fs::File::create(&raw).unwrap();
    file.set_len(2 << 30).unwrap();
    let chunk: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    use std::os::unix::fs::FileExt;
    for i in 0..16u64 {
        file.write_all_at(&chunk, i * (128 << 20)).unwrap();
    }
    drop(file);
    let qcow2 = dir.path().join("big.qcow2");
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
    fs::remove_file(&raw).unwrap();
    let target = dir.path().join("out.raw");
    let run = cgroup.run(&[
        "convert",
        "--quiet",
        qcow2.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    assert_eq!(cgroup.oom_kills(), 0);
    assert_eq!(fs::metadata(&target).unwrap().len(), 2 << 30);
    common::note(&format!(
        "2 GiB qcow2 conversion in a {} MB memory cgroup: peak {} MiB (page cache included)",
        LIMIT / 1_000_000,
        cgroup.peak() >> 20
    ));
}

/// A registry that lies: `/v2/` answers (200, or 401 pointing to its own
/// token realm), and the manifest, the token or an error body is a 1 GiB
/// stream, with or without a Content-Length, chunked or ended by the close.
/// Every response logs how many body bytes it managed to send before the
/// client hung up. Plain python3 (stdlib), 127.0.0.1, a kernel-chosen port.
const HUGE_REGISTRY: &str = r#"
import http.server, socketserver, sys

MODE, PORT_FILE, LOG = sys.argv[1], sys.argv[2], sys.argv[3]
GIB = 1 << 30
CHUNK = b'{"schemaVersion":2,"layers":[' + b" " * ((1 << 20) - 29)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def huge(self, status, content_type, framing):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        if framing == "length":
            self.send_header("Content-Length", str(GIB))
        elif framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        sent = 0
        try:
            while sent < GIB:
                if framing == "chunked":
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                else:
                    self.wfile.write(CHUNK)
                sent += len(CHUNK)
            if framing == "chunked":
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        with open(LOG, "a") as log:
            log.write("%s sent %d\n" % (self.path.split("?")[0], sent))
        self.close_connection = True

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path == "/v2/":
            if MODE == "token" and "authorization" not in self.headers:
                self.send_response(401)
                self.send_header("WWW-Authenticate",
                                 'Bearer realm="http://127.0.0.1:%d/token",service="huge"' % port)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        if self.path.startswith("/token"):
            self.huge(200, "application/json", "chunked")
            return
        if "/manifests/" in self.path:
            if MODE == "error-body":
                self.huge(404, "application/json", "close")
            else:
                self.huge(200, "application/vnd.oci.image.manifest.v1+json", MODE)
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

server = Server(("127.0.0.1", 0), Handler)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.timeout = 1
import time
deadline = time.time() + 300
while time.time() < deadline:
    server.handle_request()
"#;

/// The lying registry above, killed (by its PID) on drop.
struct HugeRegistry {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl HugeRegistry {
    fn start(dir: &Path, mode: &str) -> HugeRegistry {
        let script = dir.join("huge_registry.py");
        fs::write(&script, HUGE_REGISTRY).unwrap();
        let port_file = dir.join(format!("{mode}.port"));
        let log = dir.join(format!("{mode}.log"));
        let mut child = Command::new("python3")
            .arg(&script)
            .args([mode.as_ref(), port_file.as_os_str(), log.as_os_str()])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let port = loop {
            if let Some(port) = fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break port;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the registry script exited: {status}");
            }
            assert!(std::time::Instant::now() < deadline, "no port file");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        HugeRegistry { child, port, log }
    }

    /// Body bytes sent per response, once the client hung up.
    fn sent(&self) -> Vec<(String, u64)> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (path, n) = l.split_once(" sent ")?;
                Some((path.to_string(), n.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for HugeRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory the cgroup was refused (v1 `memory.failcnt`, v2 `max` events).
fn limit_hits(cgroup: &MemoryCgroup) -> u64 {
    if cgroup.v1 {
        fs::read_to_string(cgroup.dir.join("memory.failcnt"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    } else {
        fs::read_to_string(cgroup.dir.join("memory.events"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("max ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    }
}

#[test]
fn a_1_gib_registry_manifest_token_or_error_body_is_refused_naming_the_limit() {
    if !have("python3") {
        return;
    }
    let Some(cgroup) = MemoryCgroup::new("manifest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (mode, words, path) in [
        (
            "length",
            "manifest is larger than its size limit of 4194304 bytes",
            "/manifests/",
        ),
        (
            "chunked",
            "manifest is larger than its size limit of 4194304 bytes",
            "/manifests/",
        ),
        (
            "close",
            "manifest is larger than its size limit of 4194304 bytes",
            "/manifests/",
        ),
        (
            "token",
            "token response is larger than its size limit of 1048576 bytes",
            "/token",
        ),
        ("error-body", "HTTP 404", "/manifests/"),
    ] {
        let registry = HugeRegistry::start(dir.path(), mode);
        let target = dir.path().join(format!("{mode}.raw"));
        let spec = format!("docker://127.0.0.1:{}/huge/disk:v1", registry.port);
        let run = cgroup.run(&[
            "convert",
            "--quiet",
            "--insecure",
            &spec,
            target.to_str().unwrap(),
        ]);
        let what = format!("1 GiB {mode}");
        let code = run.status.and_then(|s| s.code());
        if code != Some(1) || !run.stderr.contains(words) {
            failures.push(format!(
                "{what}: wanted exit 1 naming {words:?}: {}",
                run.describe()
            ));
        }
        if target.exists() {
            failures.push(format!("{what}: a target was left"));
        }
        // The client hung up long before the GiB: at most the socket
        // buffers beyond the limit were ever sent.
        // (The server notices the hang-up on its next write: wait for its
        // line, bounded.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let sent = loop {
            let sent = registry
                .sent()
                .iter()
                .filter(|(p, _)| p.contains(path))
                .map(|(_, n)| *n)
                .max();
            match sent {
                Some(n) => break n,
                None if std::time::Instant::now() > deadline => break u64::MAX,
                None => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        if sent > 64 << 20 {
            failures.push(format!("{what}: the server sent {sent} bytes"));
        }
        common::note(&format!(
            "{what}: refused, {} KiB sent by the server",
            sent >> 10
        ));
    }
    if cgroup.oom_kills() != 0 || limit_hits(&cgroup) != 0 {
        failures.push(format!(
            "the cgroup hit its limit {} times, {} OOM kills",
            limit_hits(&cgroup),
            cgroup.oom_kills()
        ));
    }
    common::finish("1 GiB registry responses in 600M", failures);
}
