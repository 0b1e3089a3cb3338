//! The `diskimport` command line: `convert`, `info`, `import`, and the other
//! programs of the CDI image (see `programs`), chosen by subcommand or by the
//! name the binary was started as. Library errors become a message on stderr
//! and a non-zero exit status here, and only here.

mod cli_progress;
mod cli_size;
mod programs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use diskimport::error::describe_chain;
use diskimport::format::DEFAULT_MEMORY_BUDGET;
use diskimport::pipeline::{self, ConvertOptions, Report};
use diskimport::progress::Progress;
use diskimport::sink::block::BlockSink;
use diskimport::sink::file::SparseFileSink;
use diskimport::sink::hold_back;
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
        /// Print how long each stage (source, decode, reader, inflate, sink) was
        /// busy and how long it waited, to find the bottleneck of a run.
        #[arg(long)]
        stats: bool,
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
    /// CDI's cdi-containerimage-server (node-pull sidecar), with its Go-style
    /// flags: -p PORT -image-dir DIR -ready-file F -done-file F. Also what
    /// runs when the binary is started as `server` or `cdi-containerimage-server`.
    ContainerimageServer {
        /// The program's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        flags: Vec<std::ffi::OsString>,
    },
    /// CDI's cdi-image-size-detection: -image-path P writes the virtual size
    /// to the termination log (exit 1 bad arguments, 2 invalid file, 3
    /// invalid path, 4 termination log not writable).
    ImageSizeDetection {
        /// The program's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        flags: Vec<std::ffi::OsString>,
    },
    /// CDI's cdi-source-update-poller: -ns NS -cron NAME -url docker://…
    /// [-certdir DIR] records the registry digest in the DataImportCron.
    SourceUpdatePoller {
        /// The program's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        flags: Vec<std::ffi::OsString>,
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
        /// Read the whole image, data too (counts non-zero bytes, finds data
        /// missing at the end). Without it (and without --map) reading stops
        /// once the image's tables are in.
        #[arg(long)]
        scan: bool,
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
    /// Threads that decompress compressed clusters and grains (0: one per
    /// available core, as the CPU quota allows).
    #[arg(long, default_value_t = 0)]
    inflate_threads: usize,
    /// The disk to convert from an OVA that holds several (its file name as
    /// the OVA's descriptor lists it).
    #[arg(long, value_name = "NAME")]
    ova_disk: Option<String>,
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
    /// Connections for a parallel ranged download of a large http or S3
    /// object whose server honours ranges [default: up to 4, kept only if a
    /// trial shows them faster than one; 1 turns it off].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=16))]
    connections: Option<u16>,
    /// Seconds a read may wait for a byte before the connection counts as
    /// dropped and is resumed [default: 30].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    stall_timeout: Option<u64>,
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
            connections: self.connections.map(usize::from),
            stall_timeout: self.stall_timeout.map(std::time::Duration::from_secs),
        })
    }
}

impl Tuning {
    fn options(&self, collect_map: bool) -> ConvertOptions {
        let mut options = ConvertOptions {
            memory_budget: self.memory_budget,
            collect_map,
            inflate_threads: self.inflate_threads,
            ova_disk: self.ova_disk.clone(),
            ..ConvertOptions::default()
        };
        if let Some(dir) = &self.scratch_dir {
            options.scratch_dir = dir.clone();
        }
        options
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = PathBuf::from(args.first().cloned().unwrap_or_default());
    let first = args.get(1).and_then(|a| a.to_str());
    let by_name = programs::Program::from_invocation(&argv0, first);
    let by_subcommand = first.and_then(programs::Program::from_subcommand);
    // The image's helper programs log what they do, as CDI's do.
    let helper = by_name
        .or(by_subcommand)
        .is_some_and(|p| p != programs::Program::Importer);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DISKIMPORT_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if helper { "info" } else { "warn" })
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let name = argv0.file_name().map_or_else(
        || "diskimport".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match (by_name, by_subcommand) {
        (Some(programs::Program::Importer), _) => {}
        (Some(program), _) => return program.run(&name, &args[1..]),
        (None, Some(program)) => return program.run(&name, &args[2..]),
        (None, None) => {}
    }
    let as_importer = by_name == Some(programs::Program::Importer);
    let cli = Cli::parse_from(klog_compatible_args(
        named_upload_server(args.into_iter()).into_iter(),
        as_importer,
    ));
    let result = match cli.command {
        Command::ContainerimageServer { flags } => {
            return programs::Program::ContainerImageServer.run(&name, &flags)
        }
        Command::ImageSizeDetection { flags } => {
            return programs::Program::SizeDetection.run(&name, &flags)
        }
        Command::SourceUpdatePoller { flags } => {
            return programs::Program::SourceUpdatePoller.run(&name, &flags)
        }
        Command::Convert {
            source,
            target,
            tuning,
            source_args,
            quiet,
            stats,
        } => convert(&source, &target, &tuning, &source_args, quiet, stats),
        Command::Info {
            source,
            json,
            map,
            scan,
            tuning,
            source_args,
        } => info(&source, json, map, scan, &tuning, &source_args),
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
/// klog flags and, when no subcommand is left, run `import` (always, when
/// started as `cdi-importer`).
fn klog_compatible_args(
    args: impl Iterator<Item = std::ffi::OsString>,
    as_importer: bool,
) -> Vec<std::ffi::OsString> {
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
    if (saw_klog || as_importer) && !has_subcommand {
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
    stats: bool,
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
    if stats {
        eprint!("{}", progress.stages().table());
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
/// sparse regular file. Either is held back (the rule in `diskimport::sink`).
fn open_target(
    target: &std::path::Path,
) -> Result<Box<dyn diskimport::sink::ExtentSink>, diskimport::sink::SinkError> {
    use std::os::unix::fs::FileTypeExt;
    let is_block = std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device());
    Ok(if is_block {
        hold_back::wrap(BlockSink::open(target)?)
    } else {
        hold_back::wrap(SparseFileSink::create(target)?)
    })
}

fn summary_line(source: &str, target: &std::path::Path, report: &Report, seconds: f64) -> String {
    let mut what = vec![report.format().to_string()];
    what.extend(
        report
            .compression
            .iter()
            .map(|c| format!("{c:?}").to_lowercase()),
    );
    let rate = report.virtual_size() as f64 / seconds.max(1e-6);
    format!(
        "converted {source} ({}) to {}: {} virtual, {} written, {} left sparse, in {:.2} s ({}/s)",
        what.join(" in "),
        target.display(),
        cli_size::human(report.virtual_size()),
        cli_size::human(report.sink.bytes_written),
        cli_size::human(report.sink.bytes_zero),
        seconds,
        cli_size::human(rate as u64),
    )
}

fn info(
    source: &str,
    json: bool,
    map: bool,
    scan: bool,
    tuning: &Tuning,
    source_args: &SourceArgs,
) -> Result<(), String> {
    let progress = Arc::new(Progress::default());
    let input = pipeline::open_source(source, &source_args.options()?, &progress)
        .map_err(|e| describe_chain(&e))?;
    let mut sink = NullSink::default();
    let mut options = tuning.options(map);
    options.metadata_only = !map && !scan;
    let report =
        pipeline::run(input, &mut sink, &options, progress).map_err(|e| describe_chain(&e))?;
    if map {
        let entries = report.image.map.clone().unwrap_or_default();
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

fn info_json(report: &Report) -> serde_json::Value {
    let image = &report.image;
    let mut value = serde_json::json!({
        "format": image.format,
        "compression": report.compression,
        "virtual_size": image.virtual_size,
        "stream_size": image.stream_len,
        "allocated_bytes": image.allocated_bytes.unwrap_or(report.sink.bytes_written),
        "read_to_end": image.read_to_end,
        "streaming": {
            "mode": image.streaming_mode(),
            "retained_peak_bytes": image.retained_peak,
            "spilled_bytes": image.spilled_bytes,
        },
    });
    if image.read_to_end {
        value["nonzero_bytes"] = report.sink.bytes_written.into();
    }
    if let Some(sub) = &image.subformat {
        value["subformat"] = sub.clone().into();
    }
    for detail in &image.details {
        value[detail.key] = detail.value.clone();
    }
    value
}

fn print_info_text(source: &str, report: &Report) {
    let image = &report.image;
    println!("image: {source}");
    println!("format: {}", image.format);
    if let Some(sub) = &image.subformat {
        println!("subformat: {sub}");
    }
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
        cli_size::human(image.virtual_size),
        image.virtual_size
    );
    for detail in &image.details {
        println!("{}: {}", detail.label, detail_text(&detail.value));
    }
    if let Some(allocated) = image.allocated_bytes {
        println!("allocated: {}", cli_size::human(allocated));
    }
    if image.read_to_end {
        println!(
            "non-zero data: {}",
            cli_size::human(report.sink.bytes_written)
        );
    } else {
        println!("read: the tables only (--scan reads the data too)");
    }
    if image.spilled_bytes > 0 {
        println!(
            "streaming: spilled {} (tables after their data)",
            cli_size::human(image.spilled_bytes)
        );
    }
}

/// A detail's value as text: strings bare, lists joined ("none" when empty).
fn detail_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) if items.is_empty() => "none".into(),
        serde_json::Value::Array(items) => {
            items.iter().map(detail_text).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}
