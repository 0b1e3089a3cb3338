//! The programs CDI runs from the importer image, chosen by the name the
//! binary was started as (`/usr/bin/cdi-image-size-detection`, a copy at
//! `/shared/server`, ...) or by a `diskimport` subcommand of the same name.
//! Each takes Go-style flags (`-flag value`, `-flag=value`, `--flag`), as
//! CDI passes them; klog's flags are accepted and ignored. Library errors
//! become messages and CDI's exit codes here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use diskimport::error::describe_chain;
use diskimport::tools::containerimage_server::{self, ServerConfig};
use diskimport::tools::size_detection;
use diskimport::tools::source_update_poller::{self, PollerConfig};

/// A program of the image, other than the importer and the diskimport CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// The importer entrypoint (`diskimport import`).
    Importer,
    /// `cdi-containerimage-server`, also run as `server`.
    ContainerImageServer,
    /// `cdi-image-size-detection`.
    SizeDetection,
    /// `cdi-source-update-poller`.
    SourceUpdatePoller,
}

impl Program {
    /// The program a binary named `argv0` plays, if any. An unknown name
    /// whose first argument is one of the server's flags is the server: CDI
    /// copies the binary to a path of its choosing and runs it there.
    pub fn from_invocation(argv0: &Path, first_arg: Option<&str>) -> Option<Program> {
        let name = argv0.file_name()?.to_string_lossy();
        match name.as_ref() {
            "cdi-importer" => Some(Program::Importer),
            "cdi-containerimage-server" | "server" => Some(Program::ContainerImageServer),
            "cdi-image-size-detection" => Some(Program::SizeDetection),
            "cdi-source-update-poller" => Some(Program::SourceUpdatePoller),
            "diskimport" => None,
            _ => {
                let flag = first_arg?.trim_start_matches('-');
                let flag = flag.split('=').next().unwrap_or(flag);
                let server_flags = ["p", "image-dir", "ready-file", "done-file"];
                (first_arg?.starts_with('-') && server_flags.contains(&flag))
                    .then_some(Program::ContainerImageServer)
            }
        }
    }

    /// The `diskimport` subcommand for a program.
    pub fn from_subcommand(name: &str) -> Option<Program> {
        match name {
            "containerimage-server" | "cdi-containerimage-server" => {
                Some(Program::ContainerImageServer)
            }
            "image-size-detection" | "cdi-image-size-detection" => Some(Program::SizeDetection),
            "source-update-poller" | "cdi-source-update-poller" => {
                Some(Program::SourceUpdatePoller)
            }
            _ => None,
        }
    }

    /// Runs a program other than the importer with its arguments (without
    /// the program name).
    pub fn run(self, name: &str, args: &[OsString]) -> ExitCode {
        let argv = go_style_args(name, args);
        match self {
            Program::Importer => unreachable!("the importer runs through the CLI"),
            Program::ContainerImageServer => containerimage_server_main(argv),
            Program::SizeDetection => size_detection_main(argv),
            Program::SourceUpdatePoller => poller_main(argv),
        }
    }
}

/// Go's flag syntax in clap's: `-name` becomes `--name` (a Go flag is long
/// whatever its length), klog flags are dropped, `-h`/`-help` stay help.
fn go_style_args(name: &str, args: &[OsString]) -> Vec<OsString> {
    let mut out = vec![OsString::from(name)];
    let mut rest = args.iter();
    for arg in rest.by_ref() {
        let text = arg.to_string_lossy();
        if text == "--" {
            out.push(arg.clone());
            break;
        }
        let bare = text.trim_start_matches('-');
        let flag = bare.split('=').next().unwrap_or(bare);
        if text.starts_with('-') && is_klog_flag(flag) {
            continue;
        }
        if text.starts_with('-') && !text.starts_with("--") && text.len() > 1 {
            out.push(OsString::from(format!("-{text}")));
        } else {
            out.push(arg.clone());
        }
    }
    out.extend(rest.cloned());
    out
}

/// klog's flags, which CDI may add to any program's command line.
fn is_klog_flag(flag: &str) -> bool {
    [
        "v",
        "alsologtostderr",
        "logtostderr",
        "stderrthreshold",
        "log_dir",
        "log_file",
        "log_file_max_size",
        "skip_headers",
        "skip_log_headers",
        "one_output",
        "add_dir_header",
        "vmodule",
        "log_backtrace_at",
    ]
    .contains(&flag)
}

/// How parsing ended without flags to run with.
enum ParseExit {
    /// `-h`/`-help`: usage printed, exit 0 (Go's behaviour).
    Help,
    /// A bad flag: message printed.
    Bad,
}

/// Parses Go-style flags, printing usage or the error.
fn parse_flags<T: Parser>(argv: Vec<OsString>) -> Result<T, ParseExit> {
    T::try_parse_from(argv).map_err(|e| {
        // Go's flag package prints usage to stderr, for -h too.
        eprint!("{}", e.render());
        match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                ParseExit::Help
            }
            _ => ParseExit::Bad,
        }
    })
}

/// The exit status of a parse that ended the program: 0 for help, else
/// `bad` (Go's flag package: 2).
fn parse_exit(exit: ParseExit, bad: u8) -> ExitCode {
    match exit {
        ParseExit::Help => ExitCode::SUCCESS,
        ParseExit::Bad => ExitCode::from(bad),
    }
}

/// Serves a containerDisk's one disk file for CDI's node-pull importer.
#[derive(Parser)]
#[command(disable_help_flag = true)]
struct ServerFlags {
    /// Port to listen on (127.0.0.1).
    #[arg(long = "p", default_value_t = 8100)]
    port: u16,
    /// Directory holding the one disk file.
    #[arg(long = "image-dir", default_value = ".")]
    image_dir: PathBuf,
    /// File to create, holding the disk's name, once listening.
    #[arg(long = "ready-file", default_value = "/shared/ready")]
    ready_file: PathBuf,
    /// File whose appearance ends the server.
    #[arg(long = "done-file", default_value = "/shared/done")]
    done_file: PathBuf,
    /// Print this help.
    #[arg(long = "help", visible_alias = "h", action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Go's flag package ignores what follows the flags.
    #[arg(hide = true, trailing_var_arg = true)]
    rest: Vec<String>,
}

fn containerimage_server_main(argv: Vec<OsString>) -> ExitCode {
    let flags: ServerFlags = match parse_flags(argv) {
        Ok(flags) => flags,
        Err(exit) => return parse_exit(exit, 2),
    };
    let config = ServerConfig {
        port: flags.port,
        image_dir: flags.image_dir,
        ready_file: flags.ready_file,
        done_file: flags.done_file,
    };
    let env: Vec<String> = std::env::vars_os()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    match containerimage_server::run(&config, env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Writes the virtual size of an image as the termination message.
#[derive(Parser)]
#[command(disable_help_flag = true)]
struct SizeFlags {
    /// Path of the image (CDI: /data/disk.img).
    #[arg(long = "image-path", default_value = "")]
    image_path: String,
    /// URL scheme put before the path (only file:// is supported).
    #[arg(long = "scheme", default_value = "file://")]
    scheme: String,
    /// Print this help.
    #[arg(long = "help", visible_alias = "h", action = clap::ArgAction::Help)]
    help: Option<bool>,
    #[arg(hide = true, trailing_var_arg = true)]
    rest: Vec<String>,
}

fn size_detection_main(argv: Vec<OsString>) -> ExitCode {
    // CDI's exit code for bad arguments is 1.
    let flags: SizeFlags = match parse_flags(argv) {
        Ok(flags) => flags,
        Err(exit) => return parse_exit(exit, 1),
    };
    let root = pod_root();
    let result = size_detection::image_file(&root, &flags.scheme, &flags.image_path)
        .and_then(|path| size_detection::virtual_size(&path))
        .and_then(|size| {
            size_detection::write_termination_message(&root.join("dev/termination-log"), size)
                .map(|()| size)
        });
    match result {
        Ok(size) => {
            eprintln!("virtual size: {size}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", describe_chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Polls a DataImportCron's registry source once.
#[derive(Parser)]
#[command(disable_help_flag = true)]
struct PollerFlags {
    /// Namespace of the DataImportCron.
    #[arg(long = "ns", default_value = "")]
    namespace: String,
    /// Name of the DataImportCron.
    #[arg(long = "cron", default_value = "")]
    cron: String,
    /// Registry image (docker://host/repo:tag).
    #[arg(long = "url", default_value = "")]
    url: String,
    /// Directory of CA certificates for the registry.
    #[arg(long = "certdir")]
    cert_dir: Option<PathBuf>,
    /// Kubeconfig file (not supported: the poller runs in-cluster).
    #[arg(long = "kubeconfig", env = "KUBECONFIG", default_value = "")]
    kubeconfig: String,
    /// API server URL, overriding the in-cluster address.
    #[arg(long = "server")]
    server: Option<String>,
    /// Print this help.
    #[arg(long = "help", visible_alias = "h", action = clap::ArgAction::Help)]
    help: Option<bool>,
    #[arg(hide = true, trailing_var_arg = true)]
    rest: Vec<String>,
}

fn poller_main(argv: Vec<OsString>) -> ExitCode {
    let flags: PollerFlags = match parse_flags(argv) {
        Ok(flags) => flags,
        Err(exit) => return parse_exit(exit, 2),
    };
    if !flags.kubeconfig.is_empty() {
        eprintln!(
            "error: -kubeconfig / KUBECONFIG is not supported; the poller uses the pod's service account"
        );
        return ExitCode::FAILURE;
    }
    let config = PollerConfig {
        namespace: flags.namespace,
        cron: flags.cron,
        url: flags.url,
        cert_dir: flags.cert_dir,
        server: flags.server,
        root: pod_root(),
    };
    let now = rfc3339_now();
    let env = |name: &str| std::env::var(name).ok();
    match source_update_poller::run(&config, &env, &now) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The directory CDI's fixed paths are relative to: `DISKIMPORT_ROOT`, or `/`
/// (as for `diskimport import --root`).
fn pod_root() -> PathBuf {
    std::env::var_os("DISKIMPORT_ROOT")
        .filter(|r| !r.is_empty())
        .map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// Now, as Go's `time.RFC3339` prints it in UTC (whole seconds).
fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    now.format(&time::format_description::well_known::Rfc3339)
        .expect("a UTC time formats as RFC 3339")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn names_pick_programs() {
        let pick =
            |name: &str, first: Option<&str>| Program::from_invocation(Path::new(name), first);
        assert_eq!(pick("/usr/bin/cdi-importer", None), Some(Program::Importer));
        assert_eq!(
            pick("/shared/server", Some("-h")),
            Some(Program::ContainerImageServer)
        );
        assert_eq!(
            pick("/usr/bin/cdi-image-size-detection", None),
            Some(Program::SizeDetection)
        );
        assert_eq!(
            pick("cdi-source-update-poller", None),
            Some(Program::SourceUpdatePoller)
        );
        assert_eq!(
            pick("/x/copied", Some("-image-dir=/disk")),
            Some(Program::ContainerImageServer)
        );
        assert_eq!(pick("/x/copied", Some("convert")), None);
        assert_eq!(pick("target/release/diskimport", Some("-p")), None);
    }

    #[test]
    fn go_flags_become_long_flags_and_klog_flags_go() {
        assert_eq!(
            go_style_args(
                "server",
                &args(&[
                    "-p",
                    "8100",
                    "-image-dir=/disk",
                    "--done-file",
                    "d",
                    "-v=3",
                    "-alsologtostderr"
                ])
            ),
            args(&[
                "server",
                "--p",
                "8100",
                "--image-dir=/disk",
                "--done-file",
                "d"
            ])
        );
        let flags: ServerFlags = ServerFlags::try_parse_from(go_style_args(
            "server",
            &args(&["-p", "9", "-image-dir", "/disk"]),
        ))
        .unwrap();
        assert_eq!((flags.port, flags.image_dir), (9, PathBuf::from("/disk")));
        let help = ServerFlags::try_parse_from(go_style_args("server", &args(&["-h"])))
            .err()
            .unwrap();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        let unknown = ServerFlags::try_parse_from(go_style_args("server", &args(&["-bogus"])))
            .err()
            .unwrap();
        assert_eq!(unknown.exit_code(), 2);
    }
}
