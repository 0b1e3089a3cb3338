//! Fuzz target: the VHDX reader on images laid out from the fuzzer's bytes. Raw
//! bytes would almost never pass the headers' CRC-32C, so the input is spread
//! over the places a VHDX reader looks (headers, region table, the regions at 2
//! and 3 MiB, data from 4 MiB) and, for most inputs, the checksums are then made
//! right. The reader must refuse what it cannot read with an error: no panic, no
//! hang, memory bounded by its options whatever the structures claim.

#![no_main]

use bytes::Bytes;
use diskimport::format::vhdx::convert_stream;
use diskimport::format::StreamOptions;
use diskimport::sink::null::NullSink;
use diskimport::stream::ChunkStream;
use libfuzzer_sys::fuzz_target;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// (image offset, bytes taken from the input) in input order.
const PIECES: &[(usize, usize)] = &[
    (64 * KIB, 80),            // header 1
    (128 * KIB, 80),           // header 2
    (192 * KIB, 16 + 32 * 4),  // region table 1
    (MIB, 256),                // log
    (2 * MIB, 256),            // BAT (qemu's layout) or metadata (Hyper-V's)
    (2 * MIB + 64 * KIB, 64),  // metadata items, Hyper-V layout
    (3 * MIB, 256),            // metadata (qemu's layout) or BAT
    (3 * MIB + 64 * KIB, 64),  // metadata items, qemu layout
];

fn fix_crc(image: &mut [u8], at: usize, len: usize) {
    image[at + 4..at + 8].fill(0);
    let crc = crc32c::crc32c(&image[at..at + len]);
    image[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut image = vec![0u8; 4 * MIB];
    image[..8].copy_from_slice(b"vhdxfile");
    for &(at, len) in PIECES {
        let n = len.min(rest.len());
        image[at..at + n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    image.extend_from_slice(rest);
    if flags & 1 == 0 {
        fix_crc(&mut image, 64 * KIB, 4 * KIB);
        fix_crc(&mut image, 128 * KIB, 4 * KIB);
        fix_crc(&mut image, 192 * KIB, 64 * KIB);
    }
    if flags & 2 == 0 {
        image.truncate(image.len() - (flags as usize >> 2) * 4 * KIB % image.len());
    }
    let mut stream = ChunkStream::from_bytes(Bytes::from(image));
    let mut sink = NullSink::default();
    let options = StreamOptions {
        collect_map: flags & 4 != 0,
        ..StreamOptions::default()
    };
    let _ = convert_stream(&mut stream, &mut sink, &options);
});
