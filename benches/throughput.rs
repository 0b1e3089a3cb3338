//! Criterion throughput benchmarks of the core stages, each in bytes per
//! second: the qcow2 and VHDX readers (images made with qemu-img),
//! the decoders, zero detection and the sparse file sink.
//!
//! Run with `cargo bench`; the qemu-img comparison on a real 2 GiB filesystem
//! image is `bench/compare-qemu.sh`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use diskimport::decode::decode_all;
use diskimport::extent::Extent;
use diskimport::format::qcow2::convert_stream;
use diskimport::format::StreamOptions;
use diskimport::sink::file::SparseFileSink;
use diskimport::sink::null::NullSink;
use diskimport::sink::zero_detect::is_zero;
use diskimport::sink::ExtentSink;
use diskimport::stream::ChunkStream;

const MIB: usize = 1 << 20;

/// 64 MiB of disk-like content: text-ish, random and zero regions.
fn disk_content() -> Vec<u8> {
    let mut data = vec![0u8; 64 * MIB];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for (i, block) in data.chunks_mut(64 * 1024).enumerate() {
        match i % 4 {
            0 => {
                for b in block.iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *b = state as u8;
                }
            }
            1 => {
                for (j, b) in block.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog\n"[j % 44];
                }
            }
            _ => {}
        }
    }
    data
}

/// Builds a qcow2 from `raw` with qemu-img and returns its bytes.
fn qcow2_of(dir: &Path, raw: &[u8], extra: &[&str]) -> Vec<u8> {
    image_of(dir, raw, "qcow2", extra)
}

/// Builds an image of `format` from `raw` with qemu-img and returns its bytes.
fn image_of(dir: &Path, raw: &[u8], format: &str, extra: &[&str]) -> Vec<u8> {
    let raw_path = dir.join("in.raw");
    let out = dir.join(format!("out.{format}"));
    std::fs::write(&raw_path, raw).unwrap();
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", format])
        .args(extra)
        .arg(&raw_path)
        .arg(&out)
        .status()
        .expect("qemu-img is needed for the reader benchmarks");
    assert!(status.success());
    std::fs::read(out).unwrap()
}

fn qcow2_reader(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let raw = disk_content();
    let mut group = c.benchmark_group("qcow2_reader");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.sample_size(10);
    for (name, extra) in [
        ("plain_64k", vec![]),
        ("plain_4k", vec!["-o", "cluster_size=4096"]),
        ("deflate_64k", vec!["-c"]),
        ("zstd_64k", vec!["-c", "-o", "compression_type=zstd"]),
    ] {
        let image = Bytes::from(qcow2_of(dir.path(), &raw, &extra));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut stream = ChunkStream::from_bytes(image.clone());
                let mut sink = NullSink::default();
                convert_stream(&mut stream, &mut sink, &StreamOptions::default()).unwrap()
            })
        });
    }
    group.finish();
}

/// The VHDX reader on dynamic images (1 and 32 MiB blocks) and a fixed one.
fn vhdx_reader(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let raw = disk_content();
    let mut group = c.benchmark_group("vhdx_reader");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.sample_size(10);
    for (name, opts) in [
        ("dynamic_1m", "block_size=1M"),
        ("dynamic_32m", "block_size=32M"),
        ("fixed_8m", "subformat=fixed"),
    ] {
        let image = Bytes::from(image_of(dir.path(), &raw, "vhdx", &["-o", opts]));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut stream = ChunkStream::from_bytes(image.clone());
                let mut sink = NullSink::default();
                diskimport::format::vhdx::convert_stream(
                    &mut stream,
                    &mut sink,
                    &StreamOptions::default(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn decoders(c: &mut Criterion) {
    let raw = disk_content()[..16 * MIB].to_vec();
    let gzip = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).unwrap();
        e.finish().unwrap()
    };
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&raw).unwrap();
        e.finish().unwrap()
    };
    let zstd = zstd::bulk::compress(&raw, 3).unwrap();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.sample_size(10);
    for (name, packed) in [
        ("gzip", gzip),
        ("xz", xz),
        ("zstd", zstd),
        ("none", raw.clone()),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let input: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(packed.clone()));
                let (_, mut decoded) = decode_all(input).unwrap();
                std::io::copy(&mut decoded, &mut std::io::sink()).unwrap()
            })
        });
    }
    group.finish();
}

fn zero_detection(c: &mut Criterion) {
    let zeros = vec![0u8; 4 * MIB];
    let mut group = c.benchmark_group("zero_detect");
    group.throughput(Throughput::Bytes(zeros.len() as u64));
    group.bench_function("all_zero_4MiB", |b| b.iter(|| is_zero(&zeros)));
    group.finish();
}

fn file_sink(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let data = Bytes::from(disk_content());
    let mut group = c.benchmark_group("file_sink");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    group.bench_function("sparse_64MiB_half_zero", |b| {
        b.iter(|| {
            let target = dir.path().join("disk.raw");
            let mut sink = SparseFileSink::create(&target).unwrap();
            sink.set_size(data.len() as u64).unwrap();
            for (i, piece) in data.chunks(MIB).enumerate() {
                let at = (i * MIB) as u64;
                sink.write(Extent::data(at, data.slice_ref(piece))).unwrap();
            }
            sink.finish().unwrap()
        })
    });
    group.finish();
}

/// The VHD reader: a dynamic VHD (2 MiB blocks) and a fixed one (raw reader with
/// the footer held back) of the same content.
fn vhd_reader(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let raw = disk_content();
    let mut group = c.benchmark_group("vhd_reader");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.sample_size(10);
    for (name, subformat) in [("dynamic", "dynamic"), ("fixed", "fixed")] {
        let raw_path = dir.path().join("in.raw");
        let out = dir.path().join("out.vhd");
        std::fs::write(&raw_path, &raw).unwrap();
        let status = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vpc", "-o"])
            .arg(format!("subformat={subformat},force_size=on"))
            .arg(&raw_path)
            .arg(&out)
            .status()
            .expect("qemu-img is needed for the vhd benchmarks");
        assert!(status.success());
        let image = Bytes::from(std::fs::read(&out).unwrap());
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut stream = ChunkStream::from_bytes(image.clone());
                let mut sink = NullSink::default();
                let reader = match diskimport::format::probe(&image) {
                    diskimport::format::Probed::Reader(r) => r,
                    diskimport::format::Probed::Unsupported(n) => panic!("{n}"),
                };
                diskimport::format::ImageReader::convert(
                    reader,
                    &mut stream,
                    &mut sink,
                    &StreamOptions::default(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

/// The VDI reader on dynamic and static images made with qemu-img from the same
/// content, and the same dynamic image inside an OVA (through the pipeline, so
/// the tar thread and the re-probe are measured too).
fn vdi_reader(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let raw = disk_content();
    let raw_path = dir.path().join("in.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let mut group = c.benchmark_group("vdi_reader");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.sample_size(10);
    let mut dynamic = Bytes::new();
    for (name, extra) in [("dynamic", vec![]), ("static", vec!["-o", "static=on"])] {
        let out = dir.path().join(format!("{name}.vdi"));
        let status = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vdi"])
            .args(&extra)
            .arg(&raw_path)
            .arg(&out)
            .status()
            .expect("qemu-img is needed for the VDI benchmarks");
        assert!(status.success());
        let image = Bytes::from(std::fs::read(out).unwrap());
        if name == "dynamic" {
            dynamic = image.clone();
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut stream = ChunkStream::from_bytes(image.clone());
                let mut sink = NullSink::default();
                diskimport::format::vdi::convert_stream(
                    &mut stream,
                    &mut sink,
                    &StreamOptions::default(),
                )
                .unwrap()
            })
        });
    }
    let mut ova = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("vm.ovf", &br#"<Envelope><References><File ovf:id="f" ovf:href="d.vdi"/></References><DiskSection><Disk ovf:fileRef="f"/></DiskSection></Envelope>"#[..]),
        ("d.vdi", &dynamic[..]),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        ova.append_data(&mut header, name, body).unwrap();
    }
    let ova = ova.into_inner().unwrap();
    group.bench_function("ova_dynamic", |b| {
        b.iter(|| {
            let mut sink = NullSink::default();
            diskimport::pipeline::run(
                Box::new(std::io::Cursor::new(ova.clone())),
                &mut sink,
                &diskimport::pipeline::ConvertOptions::default(),
                Default::default(),
            )
            .unwrap()
        })
    });
    group.finish();
}

/// The VMDK reader on qemu-img images of the same content: monolithicSparse, and
/// streamOptimized (one deflated grain per 64 KiB, inflated as it arrives).
fn vmdk_reader(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let raw = disk_content();
    let raw_path = dir.path().join("in.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let mut group = c.benchmark_group("vmdk_reader");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.sample_size(10);
    for subformat in ["monolithicSparse", "streamOptimized"] {
        let out = dir.path().join(format!("{subformat}.vmdk"));
        let status = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vmdk", "-o"])
            .arg(format!("subformat={subformat}"))
            .arg(&raw_path)
            .arg(&out)
            .status()
            .expect("qemu-img is needed for the vmdk benchmarks");
        assert!(status.success());
        let image = Bytes::from(std::fs::read(out).unwrap());
        group.bench_function(subformat, |b| {
            b.iter(|| {
                let mut stream = ChunkStream::from_bytes(image.clone());
                let mut sink = NullSink::default();
                diskimport::format::vmdk::convert_stream(
                    &mut stream,
                    &mut sink,
                    &StreamOptions::default(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    vmdk_reader,
    vdi_reader,
    vhd_reader,
    qcow2_reader,
    vhdx_reader,
    decoders,
    zero_detection,
    file_sink
);
criterion_main!(benches);
