//! The xz container around the compressed data: stream header and footer,
//! block headers, the index, and single-block streams built for one block.
//!
//! The block-parallel decoder ([`super::xz_parallel`]) cuts a stream into its
//! blocks by the sizes their headers state, hands each block to liblzma as a
//! stream of its own (this stream's header, the block verbatim, an index of
//! that one block and a footer: [`single_block_stream`]), and checks the real
//! index against the blocks it saw ([`IndexTally`]). liblzma thus checks every
//! block (header CRC, filters, sizes, the integrity check); this file checks
//! what only the whole stream shows: the index and the footer.
//!
//! Everything here is read from untrusted bytes: every size is bounded by
//! the slice or by what the format allows, and a claim is only ever used to
//! frame bytes read one by one, never to allocate.

use std::io::{self, BufRead};

use sha2::{Digest, Sha256};

/// Length of a stream header and of a stream footer.
pub const STREAM_HEADER_LEN: usize = 12;

/// The stream header's magic.
pub const MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// The stream footer's magic.
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];

/// LZMA2's filter ID.
const LZMA2: u64 = 0x21;

/// Largest value of a variable-length integer (2^63 - 1).
const VLI_MAX: u64 = u64::MAX / 2;

/// The two flag bytes of a stream header (and footer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFlags(pub [u8; 2]);

impl StreamFlags {
    /// Bytes of the integrity check after each block.
    pub fn check_len(self) -> u64 {
        match self.0[1] & 0x0f {
            0 => 0,
            id => 4 << ((id - 1) / 3),
        }
    }
}

/// The flags of a stream header, if `header` is one (magic, reserved bits
/// clear, CRC32 right).
pub fn stream_header(header: &[u8; STREAM_HEADER_LEN]) -> Result<StreamFlags, String> {
    if header[..6] != MAGIC {
        return Err("not an xz stream (bad magic)".into());
    }
    let flags = [header[6], header[7]];
    if crc32(&flags) != u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) {
        return Err("the stream header's CRC32 does not match".into());
    }
    if flags[0] != 0 || flags[1] & 0xf0 != 0 {
        return Err("unsupported stream header flags".into());
    }
    Ok(StreamFlags(flags))
}

/// Checks a stream footer against the stream's flags and the size of the
/// index read before it.
pub fn stream_footer(
    footer: &[u8; STREAM_HEADER_LEN],
    flags: StreamFlags,
    index_len: u64,
) -> Result<(), String> {
    if footer[10..] != FOOTER_MAGIC {
        return Err("the stream footer is missing (bad magic)".into());
    }
    if crc32(&footer[4..10]) != u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")) {
        return Err("the stream footer's CRC32 does not match".into());
    }
    if footer[8..10] != flags.0 {
        return Err("the stream footer's flags differ from the header's".into());
    }
    let backward = u64::from(u32::from_le_bytes(
        footer[4..8].try_into().expect("4 bytes"),
    ));
    if (backward + 1) * 4 != index_len {
        return Err("the stream footer's index size does not match the index".into());
    }
    Ok(())
}

/// After xz stream number `streams_done`: skips stream padding (zero bytes,
/// a multiple of four); `Ok(true)` if more bytes follow, `Ok(false)` at the
/// end; padding of the wrong length is the inner `Err`, naming it.
pub fn skip_padding(
    input: &mut impl BufRead,
    streams_done: u64,
) -> io::Result<Result<bool, String>> {
    let mut padding: u64 = 0;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let zeros = buf.iter().take_while(|&&b| b == 0).count();
        let more = zeros < buf.len();
        input.consume(zeros);
        padding += zeros as u64;
        if more {
            if padding % 4 != 0 {
                return Ok(Err(format!(
                    "{padding} zero bytes after xz stream {streams_done} (stream padding \
                     must be a multiple of 4)"
                )));
            }
            return Ok(Ok(true));
        }
    }
    if padding % 4 != 0 {
        return Ok(Err(format!(
            "{padding} zero bytes at the end (stream padding must be a multiple of 4)"
        )));
    }
    Ok(Ok(false))
}

/// What a block header states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// Bytes of the header itself.
    pub len: u64,
    /// Bytes of compressed data, when stated.
    pub compressed: Option<u64>,
    /// Bytes it decodes to, when stated.
    pub uncompressed: Option<u64>,
    /// LZMA2 dictionary size, when LZMA2 is among the filters.
    pub dictionary: Option<u64>,
}

impl BlockHeader {
    /// Length of the header whose first byte is `size_byte` (not 0, which
    /// starts the index instead).
    pub fn len_from_first_byte(size_byte: u8) -> usize {
        (usize::from(size_byte) + 1) * 4
    }

    /// Parses a whole block header (`header.len()` as its first byte says);
    /// the CRC32 is checked.
    pub fn parse(header: &[u8]) -> Result<BlockHeader, String> {
        let bad = |what: &str| Err(format!("malformed block header: {what}"));
        let Some(&size_byte) = header.first() else {
            return bad("empty");
        };
        if size_byte == 0 || header.len() != Self::len_from_first_byte(size_byte) {
            return bad("wrong size");
        }
        let (body, crc) = header.split_at(header.len() - 4);
        if crc32(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err("a block header's CRC32 does not match".into());
        }
        Self::parse_fields(body).ok_or_else(|| "malformed block header".to_string())
    }

    /// The fields of a header (without its CRC32, which is not checked here):
    /// `None` if they run past `body` or break the format's rules.
    pub fn parse_fields(body: &[u8]) -> Option<BlockHeader> {
        let flags = *body.get(1)?;
        if flags & 0x3c != 0 {
            return None;
        }
        let mut at = 2;
        let compressed = if flags & 0x40 != 0 {
            Some(vli(body, &mut at).filter(|&n| n > 0)?)
        } else {
            None
        };
        let uncompressed = if flags & 0x80 != 0 {
            Some(vli(body, &mut at)?)
        } else {
            None
        };
        let mut dictionary = None;
        for _ in 0..=(flags & 0x03) {
            let id = vli(body, &mut at)?;
            let props_len = usize::try_from(vli(body, &mut at)?).ok()?;
            let props = body.get(at..at.checked_add(props_len)?)?;
            at += props_len;
            if id == LZMA2 {
                dictionary = Some(lzma2_dictionary(*props.first()?)?);
            }
        }
        Some(BlockHeader {
            len: (usize::from(body[0]) + 1) as u64 * 4,
            compressed,
            uncompressed,
            dictionary,
        })
    }
}

/// Bytes of padding after `compressed` bytes of block data.
pub fn block_padding(compressed: u64) -> u64 {
    (4 - compressed % 4) % 4
}

/// The record the index keeps of a block: (unpadded size, uncompressed size).
pub type IndexRecord = (u64, u64);

/// The blocks of one stream as the decoder saw them, kept as a count and a
/// digest (constant memory however many blocks there are), to compare with
/// the stream's index.
#[derive(Default)]
pub struct IndexTally {
    records: u64,
    digest: Sha256,
}

impl IndexTally {
    /// One more block.
    pub fn add(&mut self, record: IndexRecord) {
        self.records += 1;
        self.digest.update(record.0.to_le_bytes());
        self.digest.update(record.1.to_le_bytes());
    }

    /// Blocks added.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether `other` holds the same records in the same order.
    pub fn same_as(self, other: IndexTally) -> bool {
        self.records == other.records && self.digest.finalize() == other.digest.finalize()
    }
}

/// A single-block stream for `block` (its header, data, padding and check,
/// verbatim) of a stream with `stream_header`: the prefix before the block
/// and the suffix after it.
pub fn single_block_stream(
    stream_header: &[u8; STREAM_HEADER_LEN],
    record: IndexRecord,
) -> Vec<u8> {
    let mut index = vec![0u8];
    put_vli(&mut index, 1);
    put_vli(&mut index, record.0);
    put_vli(&mut index, record.1);
    index.resize(index.len().next_multiple_of(4), 0);
    let crc = crc32(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    let mut footer = Vec::with_capacity(STREAM_HEADER_LEN);
    let backward = (index.len() as u32 / 4) - 1;
    footer.extend_from_slice(&backward.to_le_bytes());
    footer.extend_from_slice(&stream_header[6..8]);
    let crc = crc32(&footer);
    index.extend_from_slice(&crc.to_le_bytes());
    index.extend_from_slice(&footer);
    index.extend_from_slice(&FOOTER_MAGIC);
    index
}

/// Reads an index, from its indicator byte on, through `next` (one byte at
/// a time), and tallies its records; also returns its length in bytes.
/// Fails as soon as it cannot list the `blocks_seen` blocks of the stream.
pub fn read_index(
    next: impl FnMut() -> Result<u8, String>,
    blocks_seen: u64,
) -> Result<(IndexTally, u64), String> {
    let mut index = IndexBytes {
        next,
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    if index.byte()? != 0 {
        return Err("malformed index".into());
    }
    let records = index.vli()?;
    if records != blocks_seen {
        return Err(format!(
            "the index lists {records} blocks, the stream held {blocks_seen}"
        ));
    }
    let mut tally = IndexTally::default();
    for _ in 0..records {
        let unpadded = index.vli()?;
        let uncompressed = index.vli()?;
        tally.add((unpadded, uncompressed));
    }
    while index.len % 4 != 0 {
        if index.byte()? != 0 {
            return Err("malformed index padding".into());
        }
    }
    let expected = index.crc.clone().finalize();
    let mut stored = [0u8; 4];
    for b in &mut stored {
        *b = index.byte()?;
    }
    if u32::from_le_bytes(stored) != expected {
        return Err("the index's CRC32 does not match".into());
    }
    Ok((tally, index.len))
}

/// An index being read: its bytes so far, as a CRC32 and a length.
struct IndexBytes<F> {
    next: F,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<F: FnMut() -> Result<u8, String>> IndexBytes<F> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = (self.next)()?;
        self.crc.update(&[b]);
        self.len += 1;
        Ok(b)
    }

    fn vli(&mut self) -> Result<u64, String> {
        let mut bytes = [0u8; 9];
        for i in 0..bytes.len() {
            bytes[i] = self.byte()?;
            if bytes[i] & 0x80 == 0 {
                return vli(&bytes[..=i], &mut 0).ok_or_else(|| "malformed index".into());
            }
        }
        Err("malformed index".into())
    }
}

/// A variable-length integer of the xz format (7 bits per byte, at most 9
/// bytes, no redundant trailing zero byte).
pub fn vli(bytes: &[u8], at: &mut usize) -> Option<u64> {
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

/// Appends `value` as a variable-length integer.
fn put_vli(out: &mut Vec<u8>, mut value: u64) {
    debug_assert!(value <= VLI_MAX);
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The dictionary size LZMA2's property byte encodes.
pub fn lzma2_dictionary(props: u8) -> Option<u64> {
    match props {
        0..=39 => Some((2 | u64::from(props & 1)) << (props / 2 + 11)),
        40 => Some(u64::from(u32::MAX)),
        _ => None,
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_block_stream_of_a_real_block_decodes() {
        // One block as xz writes it, cut out by its sizes and wrapped again.
        let data = vec![5u8; 200_000];
        let whole = liblzma::encode_all(&data[..], 1).unwrap();
        let header: [u8; 12] = whole[..12].try_into().unwrap();
        let flags = stream_header(&header).unwrap();
        assert_eq!(flags.check_len(), 8, "CRC64 by default");
        let block_len = BlockHeader::len_from_first_byte(whole[12]);
        let block = BlockHeader::parse(&whole[12..12 + block_len]).unwrap();
        assert_eq!(block.dictionary, Some(1 << 20));
        // The single-threaded encoder states no sizes: take them from the
        // real index, which read_index must accept.
        let footer: [u8; 12] = whole[whole.len() - 12..].try_into().unwrap();
        let backward = u32::from_le_bytes(footer[4..8].try_into().unwrap());
        let index_len = (backward as usize + 1) * 4;
        let index_at = whole.len() - 12 - index_len;
        let mut at = index_at;
        let mut next = || {
            at += 1;
            whole.get(at - 1).copied().ok_or("cut".to_string())
        };
        let (tally, len) = read_index(&mut next, 1).unwrap();
        assert_eq!(len, index_len as u64);
        stream_footer(&footer, flags, len).unwrap();
        let mut at = index_at + 2;
        let unpadded = vli(&whole, &mut at).unwrap();
        let uncompressed = vli(&whole, &mut at).unwrap();
        assert_eq!(uncompressed, 200_000);
        let mut mine = IndexTally::default();
        mine.add((unpadded, uncompressed));
        assert!(mine.same_as(tally));
        let mut rebuilt = header.to_vec();
        rebuilt.extend_from_slice(&whole[12..index_at]);
        rebuilt.extend(single_block_stream(&header, (unpadded, uncompressed)));
        assert_eq!(rebuilt, whole, "the same bytes xz wrote");
    }

    #[test]
    fn damaged_frames_are_named() {
        let whole = liblzma::encode_all(&b"abc"[..], 1).unwrap();
        let mut header: [u8; 12] = whole[..12].try_into().unwrap();
        header[7] ^= 1;
        assert!(stream_header(&header).unwrap_err().contains("CRC32"));
        header[0] = 0;
        assert!(stream_header(&header).unwrap_err().contains("magic"));
        let block_len = BlockHeader::len_from_first_byte(whole[12]);
        let mut block = whole[12..12 + block_len].to_vec();
        block[1] |= 0x04;
        assert!(BlockHeader::parse(&block).is_err());
        assert!(BlockHeader::parse(&block[..3]).is_err());
        let mut next = || Ok(0u8);
        assert!(read_index(&mut next, 1).err().unwrap().contains("0 blocks"));
        assert_eq!(vli(&[0x80, 0x00], &mut 0), None, "redundant zero byte");
        assert_eq!(vli(&[0xff; 10], &mut 0), None, "more than nine bytes");
        assert_eq!(vli(&[0x81, 0x01], &mut 0), Some(129));
        assert_eq!(lzma2_dictionary(41), None);
        assert_eq!(lzma2_dictionary(0), Some(4096));
        assert_eq!(StreamFlags([0, 0x0a]).check_len(), 32);
        assert_eq!(StreamFlags([0, 0x01]).check_len(), 4);
    }
}
