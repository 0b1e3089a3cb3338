//! How many threads an xz stream is decoded on, decided from its first block
//! header.
//!
//! The block-parallel decoder ([`super::xz_parallel`]) holds per thread a
//! dictionary, a block's queued input and a bounded output queue
//! ([`super::xz_parallel::per_thread`]). A stream is decoded on threads only
//! when its first block header states both sizes (without them the blocks
//! cannot be found without decoding) and at least two threads fit under the
//! threading limit; otherwise directly, on the calling thread, with only its
//! dictionary.
//!
//! The header is only read here, never trusted: a size it claims only
//! chooses between two decoders that both enforce the hard memory limit.

/// Bytes of a stream's start that hold its header and its first block
/// header (12 + at most 1024).
pub const HEAD_LEN: usize = 12 + 1024;

use super::xz_frame::BlockHeader;

/// The sizes the first block header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstBlock {
    /// Compressed size of the block.
    pub compressed: u64,
    /// Uncompressed size of the block.
    pub uncompressed: u64,
    /// LZMA2 dictionary size.
    pub dictionary: u64,
}

impl FirstBlock {
    /// Memory one decoder thread holds for such blocks.
    pub fn per_thread(&self) -> u64 {
        super::xz_parallel::per_thread(self.dictionary)
    }
}

/// The first block's sizes, when `head` (a stream's first bytes) holds a
/// block header that states both sizes and an LZMA2 filter; `None` for
/// anything else (sizes absent, as single-threaded xz writes them, an empty
/// stream, a header cut short or malformed).
pub fn first_block(head: &[u8]) -> Option<FirstBlock> {
    let block = head.get(12..)?;
    let size_byte = *block.first()?;
    if size_byte == 0 {
        return None; // the index: a stream without blocks
    }
    let header = block.get(..BlockHeader::len_from_first_byte(size_byte))?;
    let fields = BlockHeader::parse_fields(&header[..header.len() - 4])?;
    Some(FirstBlock {
        compressed: fields.compressed?,
        uncompressed: fields.uncompressed?,
        dictionary: fields.dictionary?,
    })
}

/// Threads to decode on: at most `cores`, as many as fit in
/// `memlimit_threading` for blocks like `first`; 1 means the direct
/// (single-threaded) decoder.
pub fn threads(first: Option<FirstBlock>, cores: u32, memlimit_threading: u64) -> u32 {
    let Some(first) = first else {
        return 1;
    };
    let fit = memlimit_threading / first.per_thread().max(1);
    let threads = fit.min(u64::from(cores)) as u32;
    if threads >= 2 {
        threads
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liblzma::stream::{Action, Filters, LzmaOptions, MtStreamBuilder};

    /// `data` compressed by the threaded encoder in blocks of `block` bytes
    /// at `preset` (so the block headers carry both sizes).
    fn threaded(data: &[u8], block: u64, preset: u32) -> Vec<u8> {
        let mut filters = Filters::new();
        filters.lzma2(&LzmaOptions::new_preset(preset).unwrap());
        let mut stream = MtStreamBuilder::new()
            .threads(2)
            .block_size(block)
            .filters(filters)
            .encoder()
            .unwrap();
        let mut out = Vec::with_capacity(data.len() + 4096);
        stream.process_vec(data, &mut out, Action::Run).unwrap();
        loop {
            out.reserve(4096);
            if stream.process_vec(&[], &mut out, Action::Finish).unwrap()
                == liblzma::stream::Status::StreamEnd
            {
                return out;
            }
        }
    }

    #[test]
    fn the_first_block_of_a_threaded_stream_is_read() {
        let data = vec![7u8; 300_000];
        let bytes = threaded(&data, 100_000, 1);
        let first = first_block(&bytes).expect("sizes in the header");
        assert_eq!(first.uncompressed, 100_000);
        assert!(first.compressed > 0 && first.compressed < 100_000);
        assert_eq!(first.dictionary, 1 << 20, "preset 1: 1 MiB");
    }

    #[test]
    fn a_single_threaded_stream_has_no_sizes_and_is_decoded_directly() {
        let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut encoder, &[1u8; 10_000]).unwrap();
        let bytes = encoder.finish().unwrap();
        assert_eq!(first_block(&bytes), None);
        assert_eq!(threads(first_block(&bytes), 8, 1 << 30), 1);
    }

    #[test]
    fn threads_only_when_two_fit() {
        let block = FirstBlock {
            compressed: 4 << 20,
            uncompressed: 12 << 20,
            dictionary: 4 << 20,
        };
        let each = block.per_thread();
        assert_eq!(threads(Some(block), 2, each), 1, "one fits: direct");
        assert_eq!(threads(Some(block), 2, 2 * each), 2);
        assert_eq!(threads(Some(block), 2, 10 * each), 2, "at most the cores");
        assert_eq!(threads(Some(block), 8, 3 * each), 3);
        assert_eq!(threads(Some(block), 1, 10 * each), 1);
    }

    #[test]
    fn xz_3_streams_get_two_threads_under_the_limit_and_xz_6_streams_one() {
        let like = |dictionary: u64| FirstBlock {
            compressed: 1 << 20,
            uncompressed: 3 * dictionary,
            dictionary,
        };
        let limit = crate::limits::XZ_THREADING_MAX;
        assert_eq!(threads(Some(like(4 << 20)), 2, limit), 2, "-3: 4 MiB");
        assert_eq!(threads(Some(like(8 << 20)), 2, limit), 1, "-6: 8 MiB");
    }

    #[test]
    fn cut_or_malformed_headers_are_not_read() {
        let bytes = threaded(&[3u8; 50_000], 20_000, 0);
        for cut in 0..40.min(bytes.len()) {
            let _ = first_block(&bytes[..cut]); // never panics
        }
        assert_eq!(first_block(&bytes[..13]), None);
        let mut huge_props = bytes.clone();
        // Size byte claims the longest header; the CRC is not checked here,
        // only bounds are: what lies beyond the input is never read.
        huge_props[12] = 0xff;
        assert_eq!(first_block(&huge_props[..200]), None);
    }
}
