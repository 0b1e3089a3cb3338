//! Fuzz target: arbitrary bytes as a VMDK image stream (KDMV sparse or stream,
//! COWD, descriptor text), through the streaming VMDK reader into a sink that
//! drops everything. The reader must refuse what it cannot read with an error: no
//! panic, no hang, memory bounded by its options whatever the header claims.

#![no_main]

use bytes::Bytes;
use diskimport::format::vmdk::convert_stream;
use diskimport::format::StreamOptions;
use diskimport::sink::null::NullSink;
use diskimport::stream::ChunkStream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut stream = ChunkStream::from_bytes(Bytes::copy_from_slice(data));
    let mut sink = NullSink::default();
    // The allocation map (`info --map`) is collected for half the inputs.
    let options = StreamOptions {
        collect_map: data.len() % 2 == 1,
        ..StreamOptions::default()
    };
    let _ = convert_stream(&mut stream, &mut sink, &options);
});
