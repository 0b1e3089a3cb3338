//! Every way a VHD image can be refused, one variant per check, each message
//! naming the field or offset at fault. Failures that are not about VHD
//! (truncation, budget, spill, sink) are the engine's
//! [`StreamError`](crate::format::engine::StreamError).

/// A VHD image that is refused, broken, or not fully present.
#[derive(Debug, thiserror::Error)]
pub enum VhdError {
    /// Fewer bytes than a footer.
    #[error("footer truncated: the image has only {len} bytes, a footer needs 512")]
    FooterTruncated {
        /// Bytes available.
        len: usize,
    },
    /// Not the "conectix" cookie.
    #[error("bad footer cookie: not a VHD image")]
    BadFooterCookie,
    /// The footer checksum does not match its bytes.
    #[error("incorrect footer checksum: stored {stored:#010x}, computed {computed:#010x}")]
    FooterChecksum {
        /// The checksum field.
        stored: u32,
        /// The one's complement of the byte sum.
        computed: u32,
    },
    /// A format version other than 1.x.
    #[error("unsupported VHD format version {0:#010x} (only 1.x is read)")]
    UnsupportedVersion(u32),
    /// Disk type 4.
    #[error("differencing VHD (disk type 4): its data depends on a parent image, which is never opened; differencing images are refused")]
    Differencing,
    /// Disk type other than 2, 3 or 4.
    #[error("unknown disk type {0} (known: 2 fixed, 3 dynamic, 4 differencing)")]
    UnknownDiskType(u32),
    /// The footer at offset 0 says fixed: a fixed disk has no footer copy there.
    #[error("the footer at offset 0 says the disk is fixed; only dynamic disks have a footer copy at the start")]
    FixedFooterAtStart,
    /// The disk size is above qemu's limit.
    #[error("disk size {size} is too large (the limit is 2040 GiB)")]
    DiskTooLarge {
        /// The size from the footer.
        size: u64,
    },
    /// A dynamic footer at the end of a file that has no footer copy at 0.
    #[error(
        "the footer at the end says the disk is dynamic, but there is no footer copy at offset 0"
    )]
    NoFooterCopy,
    /// The dynamic header offset is not where a header can be.
    #[error("dynamic header offset {0:#x} is invalid: it must be a multiple of 512, after the footer copy")]
    BadHeaderOffset(u64),
    /// The dynamic header is incomplete.
    #[error("dynamic header truncated")]
    HeaderTruncated,
    /// Not the "cxsparse" cookie.
    #[error("bad dynamic header cookie (expected \"cxsparse\")")]
    BadHeaderCookie,
    /// The dynamic header checksum does not match.
    #[error("incorrect dynamic header checksum: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        /// The checksum field.
        stored: u32,
        /// The one's complement of the byte sum.
        computed: u32,
    },
    /// Block size not a power of two in range.
    #[error("invalid block size {0} (must be a power of two from 512 B to 256 MiB)")]
    BadBlockSize(u32),
    /// More BAT entries than qemu allows.
    #[error("max table entries {0} is too large (limit 536870911)")]
    TableTooLarge(u32),
    /// The BAT does not cover the disk.
    #[error("the BAT is too small: {entries} entries of {block_size} bytes do not cover the disk size {disk_size}")]
    TableTooSmall {
        /// max_table_entries.
        entries: u32,
        /// Block size.
        block_size: u32,
        /// Disk size.
        disk_size: u64,
    },
    /// The BAT is not where a BAT can be.
    #[error("BAT offset {offset:#x} is invalid: {reason}")]
    BadTableOffset {
        /// The table offset field.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A BAT entry points into the footer copy, dynamic header or BAT.
    #[error("BAT entry {index} puts block {index} at host offset {host:#x}, inside the {what}")]
    BlockInMetadata {
        /// BAT index.
        index: u64,
        /// Host offset of the block's bitmap.
        host: u64,
        /// Which structure.
        what: &'static str,
    },
    /// Two BAT entries' blocks overlap.
    #[error("BAT entries {first} and {second} overlap: blocks at host offsets {first_host:#x} and {second_host:#x} are {span} bytes long each")]
    BlocksOverlap {
        /// One BAT index.
        first: u64,
        /// The other.
        second: u64,
        /// Its host offset.
        first_host: u64,
        /// The other's.
        second_host: u64,
        /// Bitmap plus block bytes.
        span: u64,
    },
    /// The stream ended before the footer that follows the last block.
    #[error("the image is truncated: it ends at byte {stream_end}, before the footer expected at {footer_at:#x}")]
    MissingEndFooter {
        /// Where the stream ended.
        stream_end: u64,
        /// Where the footer should start at the earliest.
        footer_at: u64,
    },
    /// A fixed VHD whose footer sizes the disk differently from its data.
    #[error("fixed VHD: the footer sizes the disk at {disk_size} bytes ({size_source} of creator {creator:?}) but the file holds {data_len} bytes of data before it; such an image is refused instead of being cut or padded")]
    FixedSizeMismatch {
        /// Size by qemu's rule.
        disk_size: u64,
        /// Where the size came from.
        size_source: &'static str,
        /// Creator application.
        creator: String,
        /// Bytes before the footer.
        data_len: u64,
    },
}

impl From<VhdError> for crate::format::engine::Fault {
    fn from(e: VhdError) -> Self {
        crate::format::engine::Fault::format(e)
    }
}
