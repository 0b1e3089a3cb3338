//! Every way a VDI image can be refused, one variant per check, each message
//! naming the field or entry at fault. Failures that are not about VDI
//! (truncation, budget, spill, sink) are the engine's
//! [`StreamError`](crate::format::engine::StreamError).

/// A VDI image that is refused or broken.
#[derive(Debug, thiserror::Error)]
pub enum VdiError {
    /// Fewer bytes than the 512-byte header sector.
    #[error("header truncated: the image has only {len} bytes (a VDI header sector is 512)")]
    HeaderTruncated {
        /// Bytes available.
        len: usize,
    },
    /// No VDI signature at offset 64.
    #[error("bad signature {0:#010x} at offset 64: not a VDI image")]
    BadSignature(u32),
    /// A version other than 1.1.
    #[error("unsupported VDI version {major}.{minor} (only 1.1 is read)")]
    UnsupportedVersion {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// The header size field cannot hold the fields read.
    #[error("header size {0} is too small (a VDI 1.1 header is at least 384 bytes)")]
    HeaderSizeTooSmall(u32),
    /// Undo and differencing images depend on another image.
    #[error("{kind} image (type {image_type}): it depends on another image, so it is refused")]
    DependentImage {
        /// "undo" or "differencing".
        kind: &'static str,
        /// The image type field.
        image_type: u32,
    },
    /// An image type VirtualBox does not define.
    #[error("unknown image type {0} (known: 1 dynamic, 2 static, 3 undo, 4 differencing)")]
    UnknownImageType(u32),
    /// A non-null parent or link UUID.
    #[error(
        "the image has a {which} UUID ({uuid}): it depends on another image, so it is refused"
    )]
    HasParent {
        /// "parent" or "link".
        which: &'static str,
        /// The UUID, as text.
        uuid: String,
    },
    /// A sector size other than 512.
    #[error("unsupported sector size {0} (only 512 is read)")]
    UnsupportedSectorSize(u32),
    /// A block size other than 1 MiB.
    #[error("unsupported block size {0} (only 1 MiB blocks are read, as qemu)")]
    UnsupportedBlockSize(u32),
    /// Bytes in front of each block.
    #[error("unsupported block extra data of {0} bytes (only 0 is read, as qemu)")]
    BlockExtra(u32),
    /// blocks_in_image above qemu's limit.
    #[error("too many blocks: {blocks} blocks in the image (limit {limit})")]
    TooManyBlocks {
        /// The blocks_in_image field.
        blocks: u32,
        /// The limit.
        limit: u32,
    },
    /// The disk size is beyond what the block map covers.
    #[error("disk size {disk_size} is larger than the block map covers ({blocks} blocks of {block_size} bytes)")]
    DiskSizeBeyondMap {
        /// The (rounded) disk size.
        disk_size: u64,
        /// blocks_in_image.
        blocks: u32,
        /// The block size.
        block_size: u32,
    },
    /// The disk size is beyond qemu's maximum.
    #[error("disk size {disk_size} is too large (limit {limit})")]
    DiskSizeTooLarge {
        /// The (rounded) disk size.
        disk_size: u64,
        /// The limit.
        limit: u64,
    },
    /// blocks_allocated above blocks_in_image.
    #[error("{allocated} blocks allocated but the block map has only {blocks} entries")]
    AllocatedBeyondMap {
        /// blocks_allocated.
        allocated: u32,
        /// blocks_in_image.
        blocks: u32,
    },
    /// An offset that is not a multiple of 512.
    #[error("{what} offset {offset:#x} is not sector aligned")]
    Unaligned {
        /// "block map" or "data".
        what: &'static str,
        /// The offset.
        offset: u32,
    },
    /// The block map or the data area overlaps the header.
    #[error("{what} at offset {offset:#x} overlaps the header (which ends at {header_end:#x})")]
    OverlapsHeader {
        /// "block map" or "data area".
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// End of the header.
        header_end: u64,
    },
    /// The block map overlaps the data area.
    #[error("the block map {map_start:#x}..{map_end:#x} overlaps the data area {data_start:#x}..{data_end:#x}")]
    MapOverlapsData {
        /// Map start.
        map_start: u64,
        /// Map end.
        map_end: u64,
        /// Data area start.
        data_start: u64,
        /// Data area end.
        data_end: u64,
    },
    /// A block map entry names a block past the allocated ones.
    #[error("block map entry {index} names data block {block}, but only {allocated} blocks are allocated")]
    BlockBeyondAllocated {
        /// Guest block index.
        index: u64,
        /// The entry.
        block: u32,
        /// blocks_allocated.
        allocated: u32,
    },
    /// Two block map entries name the same data block.
    #[error("block map entries {first} and {second} both name data block {block}")]
    SharedBlock {
        /// The first guest block naming it.
        first: u64,
        /// The second.
        second: u64,
        /// The data block.
        block: u32,
    },
}

impl From<VdiError> for crate::format::engine::Fault {
    fn from(e: VdiError) -> Self {
        crate::format::engine::Fault::format(e)
    }
}
