//! What the CLI reports about a run:
//! - `info` reads only what it needs: without `--map` or `--scan` it stops once the
//!   image's tables are in, so describing a large image over a slow link costs its
//!   header and tables, not its data. Shown with a pipe: the writer can push only as
//!   much as diskimport reads (plus the pipe and channel buffers) before diskimport
//!   exits and the next write fails; no timing is involved.
//! - `convert --stats` prints each stage's busy and waiting time.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// A `format` image (qcow2, vhdx) with 192 MiB of data after its tables, made by
/// qemu-img and qemu-io.
fn data_heavy_image(dir: &std::path::Path, format: &str) -> std::path::PathBuf {
    let image = dir.join(format!("heavy.{format}"));
    let created = qemu_img(&[
        "create",
        "-q",
        "-f",
        format,
        image.to_str().unwrap(),
        "256M",
    ]);
    assert!(created.ok(), "{}", created.describe());
    let wrote = run_cmd(
        "qemu-io",
        &[
            "-f",
            format,
            "-c",
            "write -P 0xab 0 192M",
            image.to_str().unwrap(),
        ],
        None,
        TIMEOUT,
    );
    assert!(wrote.ok(), "{}", wrote.describe());
    image
}

#[test]
fn info_stops_once_the_tables_are_in() {
    info_stops_once_the_tables_of_a_format_are_in("qcow2");
}

#[test]
fn info_stops_once_the_vhdx_tables_are_in() {
    info_stops_once_the_tables_of_a_format_are_in("vhdx");
}

fn info_stops_once_the_tables_of_a_format_are_in(format: &str) {
    let dir = tempfile::tempdir().unwrap();
    let image = data_heavy_image(dir.path(), format);
    let bytes = std::fs::read(&image).unwrap();
    let mut child = Command::new(BIN)
        .args(["info", "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut written = 0usize;
    for piece in bytes.chunks(64 << 10) {
        if stdin.write_all(piece).is_err() {
            break; // diskimport is gone: it read all it needed
        }
        written += piece.len();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["read_to_end"], false, "{info}");
    assert_eq!(info["allocated_bytes"].as_u64(), Some(192 << 20), "{info}");
    assert_eq!(info["virtual_size"].as_u64(), Some(256 << 20), "{info}");
    // The tables are in the first MiB (VHDX: 4 MiB); the decoder thread reads at most a few 1 MiB
    // chunks ahead, and the pipe holds 64 KiB.
    assert!(
        written < 32 << 20,
        "info took {written} of {} bytes before it exited",
        bytes.len()
    );
    note(&format!(
        "cli_reporting: info --json took {} KiB of a {} MiB {format} image",
        written >> 10,
        bytes.len() >> 20
    ));

    // --scan reads everything, and counts the data.
    let scan = diskimport(&["info", "--json", "--scan", image.to_str().unwrap()]);
    assert!(scan.ok(), "{}", scan.describe());
    let info: serde_json::Value = serde_json::from_slice(&scan.stdout).unwrap();
    assert_eq!(info["read_to_end"], true, "{info}");
    assert_eq!(info["nonzero_bytes"].as_u64(), Some(192 << 20), "{info}");
}

#[test]
fn convert_stats_name_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let image = data_heavy_image(dir.path(), "qcow2");
    let target = dir.path().join("out.raw");
    let run = diskimport(&[
        "convert",
        "--quiet",
        "--stats",
        image.to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    let stderr = run.stderr.clone();
    for stage in ["source", "decode", "reader", "inflate", "sink"] {
        let line = stderr
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("no {stage} line in {stderr}"));
        let fields: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(fields.len(), 2, "{line}");
    }
    // 192 MiB went through the sink: it was busy for some time.
    let sink: f64 = stderr
        .lines()
        .find(|l| l.starts_with("sink"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(sink > 0.0, "{stderr}");
}

/// Formats whose tables are not all named up front (or that the early stop does not
/// cover) still read only what `info` needs without keeping the data: nothing is
/// spilled even with a tiny memory budget.
#[test]
fn info_keeps_no_data_whatever_the_format() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["vmdk", "vdi", "vpc", "qcow2", "vhdx"] {
        let image = data_heavy_image(dir.path(), format);
        let run = diskimport(&[
            "info",
            "--json",
            "--memory-budget",
            "1M",
            image.to_str().unwrap(),
        ]);
        assert!(run.ok(), "{format}: {}", run.describe());
        let info: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(info["streaming"]["spilled_bytes"], 0, "{format}: {info}");
        assert!(
            info["allocated_bytes"].as_u64().unwrap() >= 192 << 20,
            "{format}: {info}"
        );
    }
}
