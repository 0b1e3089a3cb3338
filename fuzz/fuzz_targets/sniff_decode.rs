//! Fuzz target: arbitrary bytes through compression sniffing and decoding
//! (`decode_all_with`), a bounded read of the decoded stream, then format
//! sniffing of its head and trailer. Nothing may panic, hang or allocate
//! without bound; a stream without compression must come out unchanged.

#![no_main]

use std::io::{Cursor, Read};

use diskimport::decode::{decode_all_with, DecodeOptions};
use diskimport::format::sniff::{sniff_trailer, TRAILER_LEN};
use diskimport::format::{sniff_format, SNIFF_LEN};
use libfuzzer_sys::fuzz_target;

/// Decoded bytes read per input at most (decompression bombs stop here).
const MAX_DECODED: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    // Smaller memory limits than the defaults (2 GiB), which would trip
    // libFuzzer's malloc limit on a header that asks for a huge window; the
    // code paths are the same. Two xz threads keep the threaded decoder in.
    let options = DecodeOptions {
        xz_threads: 2,
        xz_memlimit_threading: 64 << 20,
        xz_memlimit: 256 << 20,
        zstd_window_log_max: 27,
        ..DecodeOptions::default()
    };
    let input = diskimport::piece::plain(Cursor::new(data.to_vec()));
    let Ok((layers, reader)) = decode_all_with(input, &options) else {
        return;
    };
    assert!(layers.len() <= options.max_layers);
    let mut reader = reader.take(MAX_DECODED);

    let mut head = Vec::new();
    if (&mut reader)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .is_err()
    {
        return;
    }
    let _ = sniff_format(&head);

    let mut tail = head[head.len().saturating_sub(TRAILER_LEN)..].to_vec();
    let mut total = head.len();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                tail.extend_from_slice(&buf[..n]);
                let excess = tail.len().saturating_sub(TRAILER_LEN);
                tail.drain(..excess);
            }
            Err(_) => return,
        }
    }
    let _ = sniff_trailer(&tail);

    if layers.is_empty() {
        // Pass-through: the same bytes, in full.
        assert_eq!(total, data.len());
        assert_eq!(&head[..], &data[..head.len()]);
        assert_eq!(&tail[..], &data[data.len() - tail.len()..]);
    }
});
