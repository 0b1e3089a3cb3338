//! The `diskimport` command line: `convert` and `info`. Library errors become a
//! message on stderr and a non-zero exit status here, and only here.

mod cli_progress;
mod cli_size;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use diskimport::error::describe_chain;
use diskimport::format::qcow2::DEFAULT_MEMORY_BUDGET;
use diskimport::format::ImageFormat;
use diskimport::pipeline::{self, ConvertOptions, Report};
use diskimport::progress::Progress;
use diskimport::sink::block::BlockSink;
use diskimport::sink::file::SparseFileSink;
use diskimport::sink::null::NullSink;
use diskimport::sink::threaded::ThreadedSink;
use diskimport::source::{SourceKind, SourceOptions};

/// Streaming disk-image importer: qcow2, raw and ISO (optionally gzip, xz,
/// zstd or bzip2 compressed) to a sparse raw disk, reading the input once.
#[derive(Parser)]
#[command(name = "diskimport", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert SOURCE (a path, or - for stdin) to a sparse raw file TARGET.
    Convert {
        /// Image to read: a file path, or - for standard input.
        source: String,
        /// Raw file to write (replaced atomically if it exists).
        target: PathBuf,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        source_args: SourceArgs,
        /// No progress bar and no summary line.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Run one CDI import from the environment the CDI controller sets
    /// (IMPORTER_SOURCE, IMPORTER_ENDPOINT, ...), as the importer pod's
    /// entrypoint. Also what runs when the binary is started as CDI starts its
    /// importer (`-alsologtostderr -v=N`, no subcommand).
    Import {
        /// Directory that CDI's paths (/data, /dev/cdi-block-volume, /certs,
        /// /dev/termination-log, ...) are taken relative to.
        #[arg(long, env = "DISKIMPORT_ROOT", default_value = "/")]
        root: PathBuf,
        /// Port of the HTTPS progress endpoint CDI's controller scrapes
        /// (/metrics, /status, /healthz); 0 picks a free port.
        #[arg(long, env = "DISKIMPORT_STATUS_PORT", default_value_t = 8443)]
        status_port: u16,
        /// Address the progress endpoint listens on.
        #[arg(long, env = "DISKIMPORT_STATUS_ADDR", default_value = "0.0.0.0")]
        status_addr: std::net::IpAddr,
    },
    /// Serve CDI's upload and clone-target routes over TLS from the
    /// environment the upload controller sets (TLS_KEY_FILE, TLS_CERT_FILE,
    /// CLIENT_CERT_FILE, CLIENT_NAME, UPLOAD_IMAGE_SIZE, DEADLINE, ...),
    /// converting each body in the stream; exits after the first successful
    /// upload or at the deadline. What runs when the binary is started as
    /// `cdi-uploadserver`.
    UploadServer {
        /// Directory that CDI's paths (/data, /dev/cdi-block-volume,
        /// /scratch, /dev/termination-log) are taken relative to.
        #[arg(long, env = "DISKIMPORT_ROOT", default_value = "/")]
        root: PathBuf,
    },
    /// Describe SOURCE: format, compression, virtual size, allocation.
    Info {
        /// Image to read: a file path, or - for standard input.
        source: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Print the allocation map as `qemu-img map --output=json` does.
        #[arg(long)]
        map: bool,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        source_args: SourceArgs,
    },
}

#[derive(Args)]
struct Tuning {
    /// Memory for image bytes that arrive before the table mapping them
    /// (then they spill to --scratch-dir). Accepts K, M, G suffixes.
    #[arg(long, value_parser = cli_size::parse_size, default_value_t = DEFAULT_MEMORY_BUDGET)]
    memory_budget: u64,
    /// Directory for the spill file [default: the system temp directory].
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
}

/// Options of network sources (http, s3, docker).
#[derive(Args)]
struct SourceArgs {
    /// Treat SOURCE as this kind instead of guessing from its scheme (CDI's S3
    /// endpoints are http(s) URLs).
    #[arg(long, value_enum)]
    source_kind: Option<SourceKind>,
    /// Directory of extra CA certificates (PEM) to trust for TLS.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Do not verify TLS certificates (registries: also allow plain http).
    #[arg(long)]
    insecure: bool,
    /// User name (basic auth), or the S3 access key id.
    #[arg(long, env = "DISKIMPORT_USERNAME")]
    username: Option<String>,
    /// Password (basic auth), or the S3 secret key.
    #[arg(long, env = "DISKIMPORT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Extra request header "Name: value" (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Directory of CA certificates for the proxy.
    #[arg(long)]
    proxy_ca_dir: Option<PathBuf>,
    /// Expected digest of the source bytes as served: md5:HEX, sha1:HEX,
    /// sha256:HEX or sha512:HEX.
    #[arg(long)]
    checksum: Option<String>,
    /// Architecture to pick from a multi-platform registry image
    /// [default: this machine's].
    #[arg(long)]
    arch: Option<String>,
    /// S3 endpoint URL, for s3:// sources outside AWS.
    #[arg(long)]
    endpoint: Option<String>,
    /// S3 region.
    #[arg(long)]
    region: Option<String>,
}

impl SourceArgs {
    fn options(&self) -> Result<SourceOptions, String> {
        let headers = self
            .headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                    .filter(|(n, _)| !n.is_empty())
                    .ok_or_else(|| format!("header {h:?} is not \"Name: value\""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SourceOptions {
            kind: self.source_kind,
            ca_dir: self.ca_dir.clone(),
            insecure: self.insecure,
            username: self.username.clone(),
            password: self.password.clone(),
            headers,
            proxy_ca_dir: self.proxy_ca_dir.clone(),
            checksum: self.checksum.clone(),
            arch: self.arch.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
        })
    }
}

impl Tuning {
    fn options(&self, collect_map: bool) -> ConvertOptions {
        let mut options = ConvertOptions {
            memory_budget: self.memory_budget,
            collect_map,
            ..ConvertOptions::default()
        };
        if let Some(dir) = &self.scratch_dir {
            options.scratch_dir = dir.clone();
        }
        options
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DISKIMPORT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse_from(klog_compatible_args(
        named_upload_server(std::env::args_os()).into_iter(),
    ));
    let result = match cli.command {
        Command::Convert {
            source,
            target,
            tuning,
            source_args,
            quiet,
        } => convert(&source, &target, &tuning, &source_args, quiet),
        Command::Info {
            source,
            json,
            map,
            tuning,
            source_args,
        } => info(&source, json, map, &tuning, &source_args),
        Command::Import {
            root,
            status_port,
            status_addr,
        } => return import(&root, std::net::SocketAddr::new(status_addr, status_port)),
        Command::UploadServer { root } => return upload_server(&root),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// CDI starts its importer as `cdi-importer -alsologtostderr -v=N`: drop the
/// klog flags and, when no subcommand is left, run `import`.
fn klog_compatible_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut kept: Vec<std::ffi::OsString> = Vec::new();
    let mut saw_klog = false;
    for arg in args {
        let text = arg.to_string_lossy();
        let klog = [
            "-alsologtostderr",
            "-logtostderr",
            "--alsologtostderr",
            "--logtostderr",
        ]
        .contains(&text.as_ref())
            || text.starts_with("-v=")
            || text.starts_with("--v=");
        if klog {
            saw_klog = true;
        } else {
            kept.push(arg);
        }
    }
    let has_subcommand = kept.get(1).is_some_and(|a| {
        let a = a.to_string_lossy();
        ["convert", "info", "import", "upload-server", "help"].contains(&a.as_ref())
            || a == "--help"
            || a == "-h"
            || a == "--version"
            || a == "-V"
    });
    if saw_klog && !has_subcommand {
        kept.insert(1.min(kept.len()), "import".into());
    }
    kept
}

/// Started as `cdi-uploadserver` (CDI's image entrypoint): the
/// `upload-server` subcommand.
fn named_upload_server(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.collect();
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name().map(|n| n.to_owned()));
    if name.is_some_and(|n| n == "cdi-uploadserver") {
        args.insert(1, "upload-server".into());
    }
    args
}

/// The upload server's process: exit 0 once the termination message is
/// written, 1 when it could not serve.
fn upload_server(root: &std::path::Path) -> ExitCode {
    use diskimport::upload::{run_upload_server, Exit};
    let env: Vec<(String, String)> = std::env::vars().collect();
    match run_upload_server(&env, root) {
        Exit::Done(message) => {
            eprintln!("{message}");
            ExitCode::SUCCESS
        }
        Exit::Failed(text) => {
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

/// The importer pod's entrypoint: runs the import, writes the termination
/// message, and exits as CDI's controller expects (0 with JSON, or 1 with text).
/// The progress endpoint on `status` is up before any work and until the
/// termination message is written; when it cannot start the import runs anyway.
fn import(root: &std::path::Path, status: std::net::SocketAddr) -> ExitCode {
    use diskimport::cdi::import::{run_import, Outcome};
    let env: Vec<(String, String)> = std::env::vars().collect();
    let progress = Arc::new(Progress::default());
    let owner_uid = env
        .iter()
        .find(|(k, _)| k == "OWNER_UID")
        .map_or("", |(_, v)| v.as_str());
    let status_server =
        match diskimport::status::StatusServer::start(status, owner_uid, progress.clone()) {
            Ok(server) => {
                eprintln!(
                    "status endpoint listening on https://{}",
                    server.local_addr()
                );
                Some(server)
            }
            Err(e) => {
                eprintln!("warning: status endpoint on {status} not started: {e}");
                None
            }
        };
    // SIGTERM (pod deletion) and SIGINT stop the import at the next read; the
    // normal error path then removes the partial target and reports.
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, progress.cancel_flag()) {
            eprintln!("warning: cannot handle signal {signal}: {e}");
        }
    }
    let outcome = run_import(&env, root, progress);
    let (text, code) = match &outcome {
        Outcome::Done(message) => (message.to_json(), ExitCode::SUCCESS),
        Outcome::Failed(text) => (
            diskimport::cdi::termination::failure_text(text),
            ExitCode::FAILURE,
        ),
    };
    if let Outcome::Failed(text) = &outcome {
        eprintln!("error: {text}");
    } else {
        eprintln!("{text}");
    }
    let log = root.join("dev/termination-log");
    if let Err(e) = std::fs::write(&log, &text) {
        eprintln!(
            "error: writing the termination message to {}: {e}",
            log.display()
        );
    }
    drop(status_server);
    code
}

fn convert(
    source: &str,
    target: &std::path::Path,
    tuning: &Tuning,
    source_args: &SourceArgs,
    quiet: bool,
) -> Result<(), String> {
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let input = pipeline::open_source(source, &source_args.options()?, &progress)
        .map_err(|e| describe_chain(&e))?;
    let target_sink = open_target(target).map_err(|e| describe_chain(&e))?;
    let mut sink = ThreadedSink::spawn(target_sink, progress.clone());
    let bar = (!quiet).then(|| cli_progress::Bar::start(progress.clone()));
    let result = pipeline::run(input, &mut sink, &tuning.options(false), progress.clone());
    if let Some(bar) = bar {
        bar.stop();
    }
    let report = result.map_err(|e| describe_chain(&e))?;
    if !quiet {
        eprintln!(
            "{}",
            summary_line(source, target, &report, started.elapsed().as_secs_f64())
        );
    }
    Ok(())
}

/// A block device is written in place with O_DIRECT; anything else becomes a
/// sparse regular file.
fn open_target(
    target: &std::path::Path,
) -> Result<Box<dyn diskimport::sink::ExtentSink>, diskimport::sink::SinkError> {
    use std::os::unix::fs::FileTypeExt;
    let is_block = std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device());
    Ok(if is_block {
        Box::new(BlockSink::open(target)?)
    } else {
        Box::new(SparseFileSink::create(target)?)
    })
}

fn summary_line(source: &str, target: &std::path::Path, report: &Report, seconds: f64) -> String {
    let mut what = vec![format_name(report.format).to_string()];
    what.extend(
        report
            .compression
            .iter()
            .map(|c| format!("{c:?}").to_lowercase()),
    );
    let rate = report.virtual_size as f64 / seconds.max(1e-6);
    format!(
        "converted {source} ({}) to {}: {} virtual, {} written, {} left sparse, in {:.2} s ({}/s)",
        what.join(" in "),
        target.display(),
        cli_size::human(report.virtual_size),
        cli_size::human(report.sink.bytes_written),
        cli_size::human(report.sink.bytes_zero),
        seconds,
        cli_size::human(rate as u64),
    )
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Qcow2 => "qcow2",
        ImageFormat::Raw => "raw",
        ImageFormat::Iso => "iso",
        ImageFormat::Unsupported(name) => name,
    }
}

fn info(
    source: &str,
    json: bool,
    map: bool,
    tuning: &Tuning,
    source_args: &SourceArgs,
) -> Result<(), String> {
    let progress = Arc::new(Progress::default());
    let input = pipeline::open_source(source, &source_args.options()?, &progress)
        .map_err(|e| describe_chain(&e))?;
    let mut sink = NullSink::default();
    let report = pipeline::run(input, &mut sink, &tuning.options(map), progress)
        .map_err(|e| describe_chain(&e))?;
    if map {
        let entries = match &report.qcow2 {
            Some(q) => q.map.clone().unwrap_or_default(),
            None => vec![raw_map_entry(report.virtual_size)],
        };
        let lines: Vec<String> = entries
            .iter()
            .map(|e| serde_json::to_string(e).expect("map entries serialize"))
            .collect();
        println!("[{}]", lines.join(",\n"));
        return Ok(());
    }
    let value = info_json(&report);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serializable")
        );
    } else {
        print_info_text(source, &report);
    }
    Ok(())
}

/// A raw image is one data run at its own offsets.
fn raw_map_entry(size: u64) -> diskimport::format::qcow2::MapEntry {
    diskimport::format::qcow2::MapEntry {
        start: 0,
        length: size,
        depth: 0,
        present: true,
        zero: false,
        data: true,
        compressed: false,
        offset: Some(0),
    }
}

fn info_json(report: &Report) -> serde_json::Value {
    let mut value = serde_json::json!({
        "format": format_name(report.format),
        "compression": report.compression,
        "virtual_size": report.virtual_size,
        "stream_size": report.stream_len,
        "allocated_bytes": report.qcow2.as_ref().map_or(report.sink.bytes_written, |q| q.allocated_bytes),
        "nonzero_bytes": report.sink.bytes_written,
    });
    if let Some(q) = &report.qcow2 {
        let h = &q.header;
        value["version"] = h.version.into();
        value["cluster_size"] = h.cluster_size().into();
        value["features"] = serde_json::json!(h.feature_names());
        value["cluster_compression"] = serde_json::json!(h.compression);
        value["refcount_bits"] = (1u64 << h.refcount_order).into();
        value["l2_tables"] = q.l2_tables.into();
        value["compressed_clusters"] = q.compressed_clusters.into();
        value["snapshots"] = h.nb_snapshots.into();
        value["streaming"] = serde_json::json!({
            "retained_peak_bytes": q.retained_peak,
            "spilled_bytes": q.spilled_bytes,
        });
    }
    value
}

fn print_info_text(source: &str, report: &Report) {
    println!("image: {source}");
    println!("format: {}", format_name(report.format));
    if !report.compression.is_empty() {
        let names: Vec<String> = report
            .compression
            .iter()
            .map(|c| format!("{c:?}").to_lowercase())
            .collect();
        println!("compression: {}", names.join(", "));
    }
    println!(
        "virtual size: {} ({} bytes)",
        cli_size::human(report.virtual_size),
        report.virtual_size
    );
    if let Some(q) = &report.qcow2 {
        let h = &q.header;
        println!("qcow2 version: {}", h.version);
        println!("cluster size: {}", h.cluster_size());
        let features = h.feature_names();
        println!(
            "features: {}",
            if features.is_empty() {
                "none".to_string()
            } else {
                features.join(", ")
            }
        );
        println!("allocated: {}", cli_size::human(q.allocated_bytes));
        if q.compressed_clusters > 0 {
            println!("compressed clusters: {}", q.compressed_clusters);
        }
    }
    println!(
        "non-zero data: {}",
        cli_size::human(report.sink.bytes_written)
    );
}
