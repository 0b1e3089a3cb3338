//! Helpers shared by the integration tests: run the `diskimport` binary (with a time
//! limit), run `qemu-img`, compare output files with an oracle, check sparseness, find
//! the shared corpus, record a test that cannot run here ([`skip`]), and watch a
//! running import through its progress endpoint ([`WatchedImport`]).
#![allow(dead_code)] // each test binary uses a different subset

pub mod loop_device;
pub mod watched;
#[allow(unused_imports)] // not every test binary watches an import
pub use watched::WatchedImport;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_diskimport");

/// Default time limit for one `diskimport` run: no input in the tests needs more than a
/// few seconds; a hang is a failure.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// `../shared` next to the repository: the corpus and docs (never copied into the repo).
pub fn shared_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"))
}

/// The shared directory if present. Without it the corpus tests are skipped
/// ([`skip`]: counted, printed, and a failure under CI).
pub fn require_shared() -> Option<PathBuf> {
    let dir = shared_dir();
    if dir.join("corpus").is_dir() {
        return Some(dir);
    }
    skip(&format!(
        "{} not found: check out the shared data next to the repository",
        dir.display()
    ));
    None
}

/// The file every skipped test appends one line to (`DISKIMPORT_SKIP_LOG`, else
/// `target/test-skips.log`); `scripts/test-all.sh` empties it first and prints it
/// with a count at the end.
pub fn skip_log() -> PathBuf {
    std::env::var_os("DISKIMPORT_SKIP_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/test-skips.log"
            ))
        })
}

/// The one way a test says it cannot run here (no root, no loop device, a missing
/// program or corpus): with `CI` set it panics, so CI never passes by skipping;
/// otherwise it prints `SKIPPED <binary>::<test>: <why>` (past the harness's
/// capture) and appends that line to [`skip_log`]. The caller then returns.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_string();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => stem,
        })
        .unwrap_or_default();
    if under_ci() {
        panic!("{binary}::{test} cannot run here: {why} (CI is set, so every test must run)");
    }
    let line = format!("SKIPPED {binary}::{test}: {why}");
    note(&line);
    let log = skip_log();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// True when `CI` is set (to anything but "", "0" or "false"): every test must run.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// True when running as root (loop devices, mounts, cgroups); otherwise the
/// test is [`skip`]ped.
pub fn require_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(&format!("{what} needs root"));
    false
}

/// Write a line straight to the test process's stderr. Unlike `eprintln!` this is not
/// captured by the test harness, so summaries show up in a normal `cargo test` run.
pub fn note(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// What a child process did.
#[derive(Debug)]
pub struct Run {
    pub cmdline: String,
    /// `None` when it was killed after the time limit.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
    pub fn panicked(&self) -> bool {
        self.stderr.contains("panicked")
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// One line for failure messages: command, exit status, stderr.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => format!("KILLED after {:?} (time limit)", self.elapsed),
        };
        let stderr = self.stderr.trim();
        let stderr = if stderr.len() > 2000 {
            format!("{}...", &stderr[..stderr.floor_char_boundary_compat(2000)])
        } else {
            stderr.to_string()
        };
        format!("`{}` -> {status}; stderr: {stderr:?}", self.cmdline)
    }
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}
impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Run `program args...`, stdin from `stdin` (a file) or empty, killed after `timeout`.
pub fn run_cmd<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    stdin: Option<&Path>,
    timeout: Duration,
) -> Run {
    let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_os_string()).collect();
    let cmdline = std::iter::once(program.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let stdin = match stdin {
        Some(p) => Stdio::from(File::open(p).unwrap_or_else(|e| panic!("open {p:?}: {e}"))),
        None => Stdio::null(),
    };
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(&args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_with_timeout(&mut child, timeout);
    let stdout = out.join().unwrap();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    Run {
        cmdline,
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// `diskimport ARGS...` with the default time limit.
pub fn diskimport<S: AsRef<OsStr>>(args: &[S]) -> Run {
    run_cmd(BIN, args, None, TIMEOUT)
}

/// `diskimport convert SOURCE TARGET EXTRA...`.
pub fn convert(source: &Path, target: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<OsString> = vec!["convert".into(), source.into(), target.into()];
    args.extend(extra.iter().map(OsString::from));
    args.push("--quiet".into());
    run_cmd(BIN, &args, None, TIMEOUT)
}

/// `diskimport convert - TARGET EXTRA...` with `source` on stdin.
pub fn convert_stdin(source: &Path, target: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<OsString> = vec!["convert".into(), "-".into(), target.into()];
    args.extend(extra.iter().map(OsString::from));
    args.push("--quiet".into());
    run_cmd(BIN, &args, Some(source), TIMEOUT)
}

/// `qemu-img ARGS...`; panics when qemu-img is not installed.
pub fn qemu_img<S: AsRef<OsStr>>(args: &[S]) -> Run {
    run_cmd("qemu-img", args, None, Duration::from_secs(300))
}

/// `qemu-img convert -f FMT -O raw SRC DST`: Ok(()) or Err(qemu's message).
pub fn qemu_convert(fmt: &str, src: &Path, dst: &Path) -> Result<(), String> {
    let run = qemu_img(&[
        OsStr::new("convert"),
        OsStr::new("-f"),
        OsStr::new(fmt),
        OsStr::new("-O"),
        OsStr::new("raw"),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    if run.ok() {
        Ok(())
    } else {
        let _ = std::fs::remove_file(dst);
        Err(run.stderr.trim().to_string())
    }
}

/// Decompress `src` into `dst` with `tool -dc` (gzip, xz, zstd, bzip2).
pub fn decompress_with(tool: &str, src: &Path, dst: &Path) {
    let out = Command::new(tool)
        .arg("-dc")
        .arg(src)
        .stdout(Stdio::from(File::create(dst).expect("create")))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(out.success(), "{tool} -dc {} failed", src.display());
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Read as much as possible into `buf` (short only at EOF).
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Byte-for-byte comparison. Err names the first differing offset or the sizes.
pub fn compare_files(actual: &Path, expected: &Path) -> Result<(), String> {
    let alen = std::fs::metadata(actual)
        .map_err(|e| format!("{}: {e}", actual.display()))?
        .len();
    let elen = std::fs::metadata(expected)
        .map_err(|e| format!("{}: {e}", expected.display()))?
        .len();
    if alen != elen {
        return Err(format!(
            "size {alen} but expected {elen} ({})",
            expected.display()
        ));
    }
    compare_prefix(actual, expected, alen)
}

/// Compare the first `len` bytes of two files.
pub fn compare_prefix(actual: &Path, expected: &Path, len: u64) -> Result<(), String> {
    let mut a = File::open(actual).map_err(|e| format!("{}: {e}", actual.display()))?;
    let mut b = File::open(expected).map_err(|e| format!("{}: {e}", expected.display()))?;
    const CHUNK: usize = 1 << 20;
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        let want = CHUNK.min((len - off) as usize);
        let na = read_full(&mut a, &mut ba[..want]).map_err(|e| e.to_string())?;
        let nb = read_full(&mut b, &mut bb[..want]).map_err(|e| e.to_string())?;
        if na != want || nb != want {
            return Err(format!("short read at {off}"));
        }
        if ba[..want] != bb[..want] {
            let i = ba[..want]
                .iter()
                .zip(&bb[..want])
                .position(|(x, y)| x != y)
                .unwrap();
            let at = off + i as u64;
            let differing = ba[..want]
                .iter()
                .zip(&bb[..want])
                .filter(|(x, y)| x != y)
                .count();
            return Err(format!(
                "first difference at byte {at} (0x{at:x}): got 0x{:02x}, expected 0x{:02x}; \
                 {differing} bytes differ in the 1 MiB chunk at 0x{off:x} ({})",
                ba[i],
                bb[i],
                expected.display()
            ));
        }
        off += want as u64;
    }
    Ok(())
}

/// Bytes of disk space a file occupies (st_blocks * 512).
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Bytes in the 4 KiB blocks of `path` that hold anything but zeroes: what a sparse
/// copy needs to allocate at most (at 4 KiB granularity).
pub fn nonzero_4k_bytes(path: &Path) -> u64 {
    let mut f = File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        total += buf[..n]
            .chunks(4096)
            .filter(|c| c.iter().any(|&b| b != 0))
            .count() as u64
            * 4096;
        if n < buf.len() {
            break;
        }
    }
    total
}

/// The output must not allocate much more than its non-zero content (zero runs become
/// holes). Slack: 1 MiB plus a quarter, for a coarser zero-detection granularity or
/// file-system preallocation.
pub fn check_sparse(actual: &Path, nonzero: u64) -> Result<(), String> {
    let alloc = allocated_bytes(actual);
    let limit = nonzero + nonzero / 4 + (1 << 20);
    if alloc > limit {
        let size = std::fs::metadata(actual).map(|m| m.len()).unwrap_or(0);
        return Err(format!(
            "not sparse: {alloc} bytes allocated for {size} bytes of which only {nonzero} \
             (in 4 KiB blocks) are non-zero (limit {limit})"
        ));
    }
    Ok(())
}

/// A refused conversion: non-zero exit in time, no panic, an `error: ` line naming the
/// problem (one of `keywords`, case-insensitive), and no target file left behind.
pub fn check_refusal(run: &Run, target: &Path, keywords: &[&str]) -> Result<(), String> {
    let mut problems = Vec::new();
    if run.timed_out() {
        problems.push("did not finish in time".to_string());
    } else if run.ok() {
        problems.push("converted (exit 0) but must be refused".to_string());
    }
    if run.panicked() {
        problems.push("panicked".to_string());
    }
    if !run.ok() && !run.timed_out() {
        if !run.stderr.lines().any(|l| l.starts_with("error: ")) {
            problems.push("no stderr line starts with `error: `".to_string());
        }
        let lower = run.stderr.to_lowercase();
        if !keywords.iter().any(|k| lower.contains(&k.to_lowercase())) {
            problems.push(format!(
                "the message names none of {keywords:?} (the defect)"
            ));
        }
    }
    if target.exists() {
        problems.push(format!("target {} exists afterwards", target.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", problems.join("; "), run.describe()))
    }
}

/// Panic with every collected failure, one per line.
pub fn finish(what: &str, failures: Vec<String>) {
    if !failures.is_empty() {
        panic!(
            "{what}: {} failure(s):\n  - {}",
            failures.len(),
            failures.join("\n  - ")
        );
    }
}

/// The directory of a generated test matrix: `$env` when set (a matrix made
/// earlier), else `testdata/SCRIPT` run into a fresh `name` directory under
/// Cargo's test temporary directory. The script's failure fails the test.
pub fn generated_matrix(env: &str, name: &str, script: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(env) {
        return PathBuf::from(dir);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(script);
    let out = Command::new("bash")
        .arg(&path)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("run testdata/{script}: {e}"));
    assert!(
        out.status.success(),
        "testdata/{script} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}
