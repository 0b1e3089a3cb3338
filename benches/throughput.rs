//! Criterion throughput benchmarks of the core stages, each in bytes per
//! second: the qcow2 and VHDX readers (images made with qemu-img),
//! the decoders, zero detection, the sparse file sink (through the page cache
//! and with O_DIRECT), the inflate pool (one thread against all cores, on
//! zlib and zstd compressed qcow2) and the http reader (from a server on
//! 127.0.0.1 started by the benchmark).
//!
//! Run with `cargo bench`; the qemu-img comparison on a real 2 GiB filesystem
//! image is `bench/compare-qemu.sh`.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use diskimport::decode::decode_all;
use diskimport::extent::Extent;
use diskimport::format::qcow2::convert_stream;
use diskimport::format::StreamOptions;
use diskimport::piece::PieceRead;
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
                let input = diskimport::piece::plain(std::io::Cursor::new(packed.clone()));
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

/// The file sink, through the page cache and with O_DIRECT, each made
/// durable at the end. The target directory is the build's own (`target/`,
/// on the disk), not the system temporary directory, which may be a tmpfs.
fn file_sink(c: &mut Criterion) {
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let dir = tempfile::tempdir_in(&target_dir).unwrap();
    let data = Bytes::from(disk_content());
    let mut group = c.benchmark_group("file_sink");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    for (name, direct) in [
        ("buffered_64MiB_half_zero", false),
        ("direct_64MiB_half_zero", true),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let target = dir.path().join("disk.raw");
                let mut sink = SparseFileSink::create(&target)
                    .unwrap()
                    .with_direct_io(direct);
                sink.set_size(data.len() as u64).unwrap();
                for (i, piece) in data.chunks(MIB).enumerate() {
                    let at = (i * MIB) as u64;
                    sink.write(Extent::data(at, data.slice_ref(piece))).unwrap();
                }
                assert_eq!(sink.is_direct(), direct, "O_DIRECT refused here");
                sink.finish().unwrap()
            })
        });
    }
    group.finish();
}

/// 64 MiB of words drawn at random from a small vocabulary: every cluster
/// compresses (about 3:1) and takes real work to inflate.
fn compressible_content() -> Vec<u8> {
    const WORDS: [&[u8]; 16] = [
        b"disk ",
        b"image ",
        b"sector ",
        b"cluster ",
        b"table ",
        b"import ",
        b"volume ",
        b"kernel ",
        b"block ",
        b"the ",
        b"of ",
        b"and ",
        b"stream ",
        b"file\n",
        b"42 ",
        b"zero ",
    ];
    let mut data = Vec::with_capacity(64 * MIB + 16);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while data.len() < 64 * MIB {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(WORDS[(state % 16) as usize]);
    }
    data.truncate(64 * MIB);
    data
}

/// The inflate pool: compressed qcow2 (deflate and zstd, 64 KiB clusters)
/// inflated on the reader's thread (1) and on a pool of one thread per core
/// (0); throughput in guest (output) bytes per second.
fn inflate_pool(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let raw = compressible_content();
    let mut group = c.benchmark_group("inflate_pool");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.sample_size(10);
    for (name, extra) in [
        ("zlib", vec!["-c"]),
        ("zstd", vec!["-c", "-o", "compression_type=zstd"]),
    ] {
        let image = Bytes::from(qcow2_of(dir.path(), &raw, &extra));
        for threads in [1usize, 0] {
            let label = match threads {
                0 => format!("{name}_all_cores"),
                n => format!("{name}_{n}_thread"),
            };
            let options = StreamOptions {
                inflate_threads: threads,
                ..StreamOptions::default()
            };
            group.bench_function(label, |b| {
                b.iter(|| {
                    let mut stream = ChunkStream::from_bytes(image.clone());
                    let mut sink = NullSink::default();
                    convert_stream(&mut stream, &mut sink, &options).unwrap()
                })
            });
        }
    }
    group.finish();
}

/// Serves `body` over HTTP/1.1 on 127.0.0.1 (any port) to every connection
/// until the process ends: a plain `200` with a length, no ranges.
fn serve(body: Bytes) -> std::net::SocketAddr {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut request = String::new();
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        request.push_str(&line);
                        line.clear();
                    }
                    if request.is_empty() {
                        return;
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                        body.len()
                    );
                    if writer.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    if !request.starts_with("HEAD ") && writer.write_all(&body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The http source: bytes per second read from a server on 127.0.0.1.
fn http_reader(c: &mut Criterion) {
    let body = Bytes::from(disk_content());
    let addr = serve(body.clone());
    let url = format!("http://{addr}/disk.raw");
    let mut group = c.benchmark_group("http_reader");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.sample_size(10);
    group.bench_function("get_64MiB", |b| {
        b.iter(|| {
            let progress = std::sync::Arc::new(diskimport::progress::Progress::default());
            let mut reader = diskimport::source::http::open(
                &url,
                &diskimport::source::SourceOptions::default(),
                &progress,
            )
            .unwrap();
            // By pieces, as the stream takes a download's chunks.
            let mut copied = 0;
            loop {
                let piece = reader
                    .read_piece(1 << 20)
                    .unwrap()
                    .expect("a download shares");
                if piece.is_empty() {
                    break;
                }
                copied += piece.len() as u64;
            }
            assert_eq!(copied, body.len() as u64);
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
                diskimport::piece::plain(std::io::Cursor::new(ova.clone())),
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
    file_sink,
    inflate_pool,
    http_reader
);
criterion_main!(benches);
