//! Fuzz target: arbitrary bytes as a VHD image stream, through the dynamic VHD
//! reader and through the raw reader (which checks the last sector for a fixed
//! VHD footer), into a sink that drops everything. Both must refuse what they
//! cannot read with an error: no panic, no hang, memory bounded by the options
//! whatever the footer and header claim.

#![no_main]

use bytes::Bytes;
use diskimport::format::StreamOptions;
use diskimport::format::{raw, vhd};
use diskimport::sink::null::NullSink;
use diskimport::stream::ChunkStream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The allocation map (`info --map`) is collected for half the inputs.
    let options = StreamOptions {
        collect_map: data.len() % 2 == 1,
        ..StreamOptions::default()
    };
    let mut stream = ChunkStream::from_bytes(Bytes::copy_from_slice(data));
    let _ = vhd::convert_stream(&mut stream, &mut NullSink::default(), &options);
    let mut stream = ChunkStream::from_bytes(Bytes::copy_from_slice(data));
    let _ = raw::convert_stream("raw", &mut stream, &mut NullSink::default(), &options);
});
