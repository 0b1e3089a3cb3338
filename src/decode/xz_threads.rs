//! How many threads an xz stream is decoded on, decided from its first block
//! header.
//!
//! liblzma's threaded decoder gives each thread a whole block's input and
//! output besides the dictionary. Under a memory limit that fits one such
//! thread but not two, it decodes one block at a time all the same: the speed
//! of one thread with the memory of threading (measured on the bench corpus's
//! multi-block xz, 12 MiB blocks: the same time as the direct decoder, at a
//! 70 MiB peak instead of 32 MiB). So a stream is decoded on threads only when
//! at least two of them fit under the limit; otherwise directly, on the
//! calling thread, with only its dictionary.
//!
//! The header is only read here, never trusted: a size it claims only
//! chooses between two decoders that both enforce the hard memory limit.

/// Bytes of a stream's start that hold its header and its first block
/// header (12 + at most 1024).
pub const HEAD_LEN: usize = 12 + 1024;

/// What a thread decoding blocks like the first needs, besides its state.
const THREAD_OVERHEAD: u64 = 1 << 20;

/// LZMA2's filter ID.
const LZMA2: u64 = 0x21;

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
    /// Memory one decoder thread holds for such a block.
    pub fn per_thread(&self) -> u64 {
        self.compressed
            .saturating_add(self.uncompressed)
            .saturating_add(self.dictionary)
            .saturating_add(THREAD_OVERHEAD)
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
    let header = block.get(..(usize::from(size_byte) + 1) * 4)?;
    let flags = header[1];
    if flags & 0xc0 != 0xc0 {
        return None; // the sizes are not in the header
    }
    let filters = usize::from(flags & 0x03) + 1;
    let mut at = 2;
    let compressed = vli(header, &mut at)?;
    let uncompressed = vli(header, &mut at)?;
    let mut dictionary = None;
    for _ in 0..filters {
        let id = vli(header, &mut at)?;
        let props_len = usize::try_from(vli(header, &mut at)?).ok()?;
        let props = header.get(at..at.checked_add(props_len)?)?;
        at += props_len;
        if id == LZMA2 {
            dictionary = Some(lzma2_dictionary(*props.first()?)?);
        }
    }
    Some(FirstBlock {
        compressed,
        uncompressed,
        dictionary: dictionary?,
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

/// A variable-length integer of the xz format (7 bits per byte, at most 9
/// bytes, no redundant trailing zero byte).
fn vli(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (i == 0 || byte != 0).then_some(value);
        }
    }
    None
}

/// The dictionary size LZMA2's property byte encodes.
fn lzma2_dictionary(props: u8) -> Option<u64> {
    match props {
        0..=39 => Some((2 | u64::from(props & 1)) << (props / 2 + 11)),
        40 => Some(u64::from(u32::MAX)),
        _ => None,
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
        assert_eq!(vli(&[0x80, 0x00], &mut 0), None, "redundant zero byte");
        assert_eq!(vli(&[0xff; 10], &mut 0), None, "more than nine bytes");
        assert_eq!(vli(&[0x81, 0x01], &mut 0), Some(129));
        assert_eq!(lzma2_dictionary(41), None);
        assert_eq!(lzma2_dictionary(0), Some(4096));
    }
}
