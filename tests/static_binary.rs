//! The release binary is fully static and imports from an empty root: a
//! directory holding only the binary (as `cdi-importer`), CDI's `/data`,
//! `/dev/termination-log` and `/certs`, and no libc, CA bundle or passwd,
//! entered with `chroot` as uid 107. Real nginx on 127.0.0.1 serves a qcow2;
//! the disk must equal `qemu-img convert`'s.
//!
//! Covers the FROM-scratch bug where even plain http failed for want of a
//! system CA bundle: plain http and https with `IMPORTER_CERT_DIR` work, and
//! https needing the system roots fails saying so. A host name resolved
//! through `/etc/hosts` checks the static resolver.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{compare_files, qemu_img, BIN};
use servers::{require_servers, Nginx};

#[test]
fn ldd_says_the_binary_is_not_dynamic() {
    let Some(_) = require_servers(&["ldd"]) else {
        return;
    };
    let out = Command::new("ldd").arg(BIN).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "ldd {BIN}: {text}"
    );
}

/// Where the test's DNS server listens (port 53: glibc's resolver has no
/// other); a loopback address of its own, to keep clear of a local resolver.
const DNS_ADDR: &str = "127.0.0.77";
/// The zone it answers for, with 127.0.0.1.
const DNS_ZONE: &str = "dns.test";

/// An empty root for one import, owned so uid 107 can write its outputs.
fn empty_root(dir: &Path, ca: &Path) {
    for sub in ["data", "dev", "certs", "etc"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::copy(BIN, dir.join("cdi-importer")).unwrap();
    fs::write(dir.join("dev/termination-log"), "").unwrap();
    fs::copy(ca, dir.join("certs/ca.crt")).unwrap();
    fs::write(dir.join("etc/hosts"), "127.0.0.1 images.test\n").unwrap();
    fs::write(
        dir.join("etc/resolv.conf"),
        format!("nameserver {DNS_ADDR}\noptions timeout:2 attempts:2\n"),
    )
    .unwrap();
    for sub in ["data", "dev", "dev/termination-log"] {
        fs::set_permissions(dir.join(sub), fs::Permissions::from_mode(0o777)).unwrap();
    }
}

/// Runs the importer in `root` under chroot as uid 107 with CDI's env.
fn chroot_import(root: &Path, endpoint: &str, cert_dir: Option<&str>) -> (bool, String, String) {
    let chroot = servers::find_program("chroot").expect("chroot");
    let mut cmd = Command::new(chroot);
    cmd.arg("--userspec=107:107")
        .arg(root)
        .args(["/cdi-importer", "-alsologtostderr", "-v=1"])
        .env_clear()
        .env("IMPORTER_SOURCE", "http")
        .env("IMPORTER_ENDPOINT", endpoint)
        .env("IMPORTER_CONTENTTYPE", "kubevirt")
        .env("IMPORTER_IMAGE_SIZE", "8Mi")
        .env("OWNER_UID", "1")
        .env("FILESYSTEM_OVERHEAD", "0")
        .env("PREALLOCATION", "false")
        .env("DISKIMPORT_STATUS_ADDR", "127.0.0.1")
        .env("DISKIMPORT_STATUS_PORT", "0")
        .stdin(Stdio::null());
    if let Some(dir) = cert_dir {
        cmd.env("IMPORTER_CERT_DIR", dir);
    }
    let out = cmd.output().unwrap();
    let message = fs::read_to_string(root.join("dev/termination-log")).unwrap_or_default();
    (
        out.status.success(),
        message,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_static_binary_imports_in_an_empty_root() {
    let Some(servers) = require_servers(&[Nginx::NEEDS, &["chroot", "qemu-img"]].concat()) else {
        return;
    };
    if
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root (chroot)"
        );
        common::note("skipped: the empty-root import needs root (chroot)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let docroot = work.path().join("docroot");
    fs::create_dir_all(&docroot).unwrap();
    let raw = work.path().join("ref.raw");
    let mut data = vec![0u8; 8 << 20];
    for (i, b) in data.iter_mut().enumerate().skip(1 << 20).take(2 << 20) {
        *b = (i % 253) as u8;
    }
    fs::write(&raw, &data).unwrap();
    let qcow2 = docroot.join("disk.qcow2");
    let made = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    assert!(made.ok(), "{}", made.describe());
    let nginx = Nginx::start(&servers, &work.path().join("nginx"), &docroot);
    let dns_log = work.path().join("dns-queries.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fake_dns.py");
    let dns_out = work.path().join("dns.log");
    let mut dns = servers::Server::spawn(
        "fake dns",
        Path::new("python3"),
        &[
            script.as_os_str(),
            "--addr".as_ref(),
            DNS_ADDR.as_ref(),
            "--zone".as_ref(),
            DNS_ZONE.as_ref(),
            "--answer".as_ref(),
            "127.0.0.1".as_ref(),
            "--log".as_ref(),
            dns_log.as_os_str(),
        ],
        &[],
        &dns_out,
    );
    dns.wait_until("READY", servers::START_TIMEOUT, || {
        fs::read_to_string(&dns_out).is_ok_and(|t| t.contains("READY"))
    });

    let cases: [(&str, String, Option<&str>); 4] = [
        (
            "plain http, no CA bundle anywhere",
            nginx.http("disk.qcow2"),
            None,
        ),
        (
            "https with IMPORTER_CERT_DIR",
            nginx.https("disk.qcow2"),
            Some("/certs"),
        ),
        (
            "a host name from /etc/hosts",
            format!("http://images.test:{}/disk.qcow2", nginx.http_port),
            None,
        ),
        (
            "a host name from DNS (resolv.conf)",
            format!("http://disk.{DNS_ZONE}:{}/disk.qcow2", nginx.http_port),
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (what, endpoint, cert_dir) in &cases {
        let root = tempfile::tempdir().unwrap();
        empty_root(root.path(), &nginx.ca_bundle);
        let (ok, message, stderr) = chroot_import(root.path(), endpoint, *cert_dir);
        if !ok || !message.contains("Import Complete") {
            failures.push(format!("{what}: ok={ok}, message {message:?}; {stderr}"));
            continue;
        }
        if let Err(e) = compare_files(&root.path().join("data/disk.img"), &raw) {
            failures.push(format!("{what}: {e}"));
        }
    }

    let queries = fs::read_to_string(&dns_log).unwrap_or_default();
    if !queries.contains(&format!("disk.{DNS_ZONE} 1")) {
        failures.push(format!("the DNS server saw no A query: {queries:?}"));
    }

    // https that needs the system roots: refused, and the message says why.
    let root = tempfile::tempdir().unwrap();
    empty_root(root.path(), &nginx.ca_bundle);
    let (ok, message, stderr) = chroot_import(root.path(), &nginx.https("disk.qcow2"), None);
    if ok || !message.contains("no CA certificates") {
        failures.push(format!(
            "https without a CA: ok={ok}, message {message:?}; {stderr}"
        ));
    }
    assert!(
        !root.path().join("data/disk.img").exists(),
        "no disk left after a failure"
    );
    common::finish("imports in an empty root", failures);
}
