//! `cdi-source-update-poller` against real parts: docker-registry over TLS
//! with basic auth holding a multi-arch image pushed by skopeo, and a small
//! fake Kubernetes API server (`tests/support/fake_kube_api.py`, HTTPS with a
//! test CA) that serves the DataImportCron and records the PATCH. The digest
//! written must be the sha256 of the top-level manifest bytes skopeo reports
//! (the index, not a platform's manifest). Through CDI's import proxy
//! (tinyproxy, `https_proxy` as the CronJob sets it) the registry is reached
//! only through the proxy's tunnel, and the API server around it.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

use common::BIN;
use servers::{parse_env, require_servers, wait_port, Server, Tinyproxy, START_TIMEOUT};

const TOKEN: &str = "test-service-account-token-d41d8cd9";
const NS: &str = "golden";
const CRON: &str = "fedora-cron";

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    out
}

struct Setup {
    _registry: Server,
    api: Server,
    root: PathBuf,
    reg_port: u16,
    api_port: u16,
    ca_dir: PathBuf,
    user: String,
    pass: String,
    api_log: PathBuf,
    index_digest: String,
}

impl Setup {
    fn start(servers: &Path, work: &Path) -> Setup {
        // The registry, TLS + basic auth.
        let reg_work = work.join("registry");
        fs::create_dir_all(&reg_work).unwrap();
        let mut registry = Server::spawn(
            "docker-registry",
            &servers.join("registry_start.sh"),
            &[reg_work.as_os_str(), "tls".as_ref(), "auth".as_ref()],
            &[("FOREGROUND", "1")],
            &work.join("registry.log"),
        );
        let env_file = reg_work.join("env");
        registry.wait_until("registry env", START_TIMEOUT, || env_file.is_file());
        let env = parse_env(&fs::read_to_string(&env_file).unwrap());
        let reg_port: u16 = env["REG_PORT"].parse().unwrap();
        wait_port(&mut registry, reg_port);
        let ca_dir = PathBuf::from(&env["REG_CA_DIR"]);
        let (user, pass) = (env["REG_USER"].clone(), env["REG_PASS"].clone());

        // A two-platform containerDisk, pushed with its index.
        let disk = work.join("disk.img");
        fs::write(&disk, vec![7u8; 64 << 10]).unwrap();
        let layout = work.join("layout");
        run_ok(
            Command::new("python3")
                .arg(servers.join("make_containerdisk.py"))
                .arg("--disk")
                .arg(&disk)
                .arg("--out")
                .arg(&layout)
                .args(["--tag", "v1", "--arch", "amd64,arm64"]),
        );
        let image = format!("docker://127.0.0.1:{reg_port}/containerdisks/fedora:v1");
        let creds = format!("{user}:{pass}");
        run_ok(
            Command::new("skopeo")
                .args(["copy", "-q", "--all", "--dest-cert-dir"])
                .arg(&ca_dir)
                .args(["--dest-creds", &creds])
                .arg(format!("oci:{}:v1", layout.display()))
                .arg(&image),
        );
        let raw = run_ok(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--cert-dir"])
                .arg(&ca_dir)
                .args(["--creds", &creds, &image]),
        )
        .stdout;
        let top: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(
            top["manifests"].as_array().map(Vec::len),
            Some(2),
            "skopeo reports an index: {top}"
        );
        let index_digest = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));

        // The fake API server and the pod's service account.
        let pki = work.join("api-pki");
        run_ok(
            Command::new("sh")
                .arg(servers.join("mk_certs.sh"))
                .arg(&pki),
        );
        let root = work.join("root");
        let sa = root.join("var/run/secrets/kubernetes.io/serviceaccount");
        fs::create_dir_all(&sa).unwrap();
        fs::write(sa.join("token"), format!("{TOKEN}\n")).unwrap();
        fs::copy(pki.join("ca.crt"), sa.join("ca.crt")).unwrap();
        let cron = serde_json::json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataImportCron",
            "metadata": {"name": CRON, "namespace": NS, "annotations": {"keep": "me"}},
            "spec": {"schedule": "*/5 * * * *"},
        });
        fs::write(work.join("cron.json"), cron.to_string()).unwrap();
        let api_log = work.join("api-requests.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fake_kube_api.py");
        let args: Vec<std::ffi::OsString> = vec![
            script.into(),
            "--cert".into(),
            pki.join("server.crt").into(),
            "--key".into(),
            pki.join("server.key").into(),
            "--token".into(),
            TOKEN.into(),
            "--namespace".into(),
            NS.into(),
            "--name".into(),
            CRON.into(),
            "--cron".into(),
            work.join("cron.json").into(),
            "--log".into(),
            api_log.clone().into(),
        ];
        let arg_refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let api_out = work.join("api.log");
        let mut api = Server::spawn(
            "fake kube api",
            Path::new("python3"),
            &arg_refs,
            &[],
            &api_out,
        );
        api.wait_until("its port", START_TIMEOUT, || {
            fs::read_to_string(&api_out).is_ok_and(|t| t.contains("PORT="))
        });
        let api_port: u16 = parse_env(&fs::read_to_string(&api_out).unwrap())["PORT"]
            .parse()
            .unwrap();
        wait_port(&mut api, api_port);
        Setup {
            _registry: registry,
            api,
            root,
            reg_port,
            api_port,
            ca_dir,
            user,
            pass,
            api_log,
            index_digest,
        }
    }

    /// Runs the poller as CDI's CronJob does, with `creds`.
    fn poll(&self, creds: (&str, &str)) -> Output {
        self.poll_with(creds, &[])
    }

    /// [`Setup::poll`] with more environment (the CronJob's proxy variables).
    fn poll_with(&self, creds: (&str, &str), extra_env: &[(&str, &str)]) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("cdi-source-update-poller");
        std::os::unix::fs::symlink(BIN, &program).unwrap();
        let url = format!(
            "docker://127.0.0.1:{}/containerdisks/fedora:v1",
            self.reg_port
        );
        let mut cmd = Command::new(&program);
        cmd.args(["-ns", NS, "-cron", CRON, "-url", &url, "-certdir"])
            .arg(&self.ca_dir)
            .env_clear()
            .env("DISKIMPORT_ROOT", &self.root)
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", self.api_port.to_string())
            .env("IMPORTER_ACCESS_KEY_ID", creds.0)
            .env("IMPORTER_SECRET_KEY", creds.1)
            .envs(extra_env.iter().copied());
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains(TOKEN), "the token leaked: {stderr}");
        assert!(
            !stderr.contains(creds.1) || creds.1.is_empty(),
            "the password leaked: {stderr}"
        );
        out
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.api_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn poller_patches_the_index_digest_into_the_cron() {
    let Some(servers) = require_servers(&[
        "docker-registry",
        "skopeo",
        "htpasswd",
        "openssl",
        "python3",
    ]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut setup = Setup::start(&servers, work.path());
    let rfc3339 = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$").unwrap();

    // Wrong credentials: exit 1, and the cron is not touched.
    let out = setup.poll((&setup.user.clone(), "wrong-password"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(setup.requests().is_empty(), "no API call before a digest");

    let (user, pass) = (setup.user.clone(), setup.pass.clone());
    let out = setup.poll((&user, &pass));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("Digest is {}", setup.index_digest)),
        "{stderr}"
    );
    assert!(stderr.contains("Digest updated"), "{stderr}");
    let requests = setup.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let path = format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/dataimportcrons/{CRON}");
    assert_eq!(
        (requests[0]["method"].as_str(), requests[0]["path"].as_str()),
        (Some("GET"), Some(path.as_str()))
    );
    let patch = &requests[1];
    assert_eq!(patch["method"], "PATCH");
    assert_eq!(patch["path"], path.as_str());
    assert_eq!(patch["content_type"], "application/json-patch+json");
    assert_eq!(patch["token_ok"], true);
    let ops: serde_json::Value = serde_json::from_str(patch["body"].as_str().unwrap()).unwrap();
    let ops = ops.as_array().unwrap();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(ops[0]["op"], "add");
    assert_eq!(
        ops[0]["path"],
        "/metadata/annotations/cdi.kubevirt.io~1storage.import.lastCronTime"
    );
    assert!(
        rfc3339.is_match(ops[0]["value"].as_str().unwrap()),
        "{ops:?}"
    );
    assert_eq!(
        ops[1]["path"],
        "/metadata/annotations/cdi.kubevirt.io~1storage.import.sourceDesiredDigest"
    );
    assert_eq!(ops[1]["value"], setup.index_digest.as_str());

    // Polling again: the digest is current, only the time is patched.
    let out = setup.poll((&user, &pass));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("No digest update"), "{stderr}");
    let requests = setup.requests();
    assert_eq!(requests.len(), 4, "{requests:?}");
    let ops: serde_json::Value =
        serde_json::from_str(requests[3]["body"].as_str().unwrap()).unwrap();
    assert_eq!(ops.as_array().map(Vec::len), Some(1), "{ops}");
    assert_eq!(
        ops[0]["path"],
        "/metadata/annotations/cdi.kubevirt.io~1storage.import.lastCronTime"
    );
    setup.api.check_alive();
}

/// With the CronJob's lower-case proxy variables, the registry is reached
/// through the proxy: tinyproxy logs a CONNECT to the registry, the digest is
/// the index's, and the Kubernetes API calls do not go through it (CDI's API
/// client bypasses the import proxy). With the proxy down the poll fails
/// (exit 1, the cron untouched) instead of going around it.
#[test]
fn poller_reaches_the_registry_through_the_import_proxy() {
    let mut needs = vec![
        "docker-registry",
        "skopeo",
        "htpasswd",
        "openssl",
        "python3",
    ];
    needs.extend(Tinyproxy::NEEDS);
    let Some(servers) = require_servers(&needs) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut setup = Setup::start(&servers, work.path());
    let (user, pass) = (setup.user.clone(), setup.pass.clone());

    // A port nothing listens on: the proxy is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let down = format!("http://127.0.0.1:{closed}");
    let out = setup.poll_with(
        (&user, &pass),
        &[("https_proxy", &down), ("http_proxy", &down)],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(setup.requests().is_empty(), "no API call before a digest");

    let proxy = Tinyproxy::start(&work.path().join("tinyproxy"));
    let out = setup.poll_with(
        (&user, &pass),
        &[
            ("https_proxy", &proxy.url()),
            ("http_proxy", &proxy.url()),
            ("no_proxy", ""),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("Digest is {}", setup.index_digest)),
        "{stderr}"
    );
    let log = proxy.requests();
    let tunnels = log
        .lines()
        .filter(|l| l.contains(&format!("CONNECT 127.0.0.1:{}", setup.reg_port)))
        .count();
    assert!(
        tunnels >= 1,
        "the registry was not reached through the proxy:\n{log}"
    );
    assert!(
        !log.contains(&format!(":{}", setup.api_port)),
        "the API calls went through the proxy:\n{log}"
    );
    let requests = setup.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1]["method"], "PATCH");
    let ops: serde_json::Value =
        serde_json::from_str(requests[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(ops[1]["value"], setup.index_digest.as_str(), "{ops}");
    setup.api.check_alive();
}

#[test]
fn poller_without_its_flags_fails() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("cdi-source-update-poller");
    std::os::unix::fs::symlink(BIN, &program).unwrap();
    let out = Command::new(&program).args(["-ns", NS]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-cron"),
        "{out:?}"
    );
    let help = Command::new(&program).arg("-help").output().unwrap();
    assert_eq!(help.status.code(), Some(0), "{help:?}");
}
