//! Every way a VHDX image can be refused, one variant per check, each message
//! naming the structure or field at fault. Failures that are not about VHDX
//! (truncation, budget, spill, sink, a block on metadata) are the engine's
//! [`StreamError`](crate::format::engine::StreamError).

/// A VHDX image that is refused or broken.
#[derive(Debug, thiserror::Error)]
pub enum VhdxError {
    /// The stream ends inside the header section.
    #[error("header section truncated: the image has only {len} bytes, the headers and region table need {needed}")]
    HeaderTruncated {
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// No `vhdxfile` signature at offset 0.
    #[error("bad file type identifier: no \"vhdxfile\" signature at offset 0")]
    BadSignature,
    /// Neither header is usable.
    #[error("no valid VHDX header: header 1 {first}; header 2 {second}")]
    NoValidHeader {
        /// Why header 1 is not usable.
        first: &'static str,
        /// Why header 2 is not usable.
        second: &'static str,
    },
    /// Both headers are valid, with the same sequence number, but differ.
    #[error("the two headers are both valid with sequence number {sequence} but differ; the current one cannot be chosen")]
    AmbiguousHeaders {
        /// The shared sequence number.
        sequence: u64,
    },
    /// The metadata region starts too far into the file to be read before the data.
    #[error("the metadata region at offset {offset:#x} lies past the first {limit} bytes of the image; the virtual size must be known before the BAT and data, so an image laid out like this is not streamed")]
    MetadataTooFar {
        /// Where the metadata ends that must be read first.
        offset: u64,
        /// How far the reader looks ahead (the memory budget).
        limit: u64,
    },
    /// Log version other than 0.
    #[error("unsupported log version {0} (only 0 is defined)")]
    LogVersion(u16),
    /// Log offset or length not where the format allows.
    #[error("log at offset {offset:#x} with length {length:#x} is invalid: {reason}")]
    BadLogPlacement {
        /// The header's log offset.
        offset: u64,
        /// The header's log length.
        length: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The log holds entries that must be replayed before the image is consistent.
    #[error("the log holds an active entry (sequence number {sequence}, at log offset {at:#x}) that needs to be replayed; open the image read-write once with Hyper-V or run `qemu-img check -r all` on it first")]
    LogNeedsReplay {
        /// Sequence number of the entry.
        sequence: u64,
        /// Where in the log it starts.
        at: u64,
    },
    /// A log entry header is valid but one of its descriptors is not.
    #[error(
        "log entry at log offset {at:#x} has an invalid descriptor {index}; the log is corrupt"
    )]
    BadLogDescriptor {
        /// Where in the log the entry starts.
        at: u64,
        /// Descriptor index.
        index: u32,
    },
    /// Region table 1 fails its checks.
    #[error("region table is invalid: {0}")]
    BadRegionTable(&'static str),
    /// A region is not where the format allows.
    #[error("region {guid} at offset {offset:#x} with length {length:#x} is invalid: {reason}")]
    BadRegion {
        /// The region's GUID.
        guid: String,
        /// File offset.
        offset: u64,
        /// Length.
        length: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two regions (or a region and the log) overlap.
    #[error("region {first} ({first_start:#x}..{first_end:#x}) overlaps {second} ({second_start:#x}..{second_end:#x})")]
    RegionOverlap {
        /// One region.
        first: String,
        /// Its start.
        first_start: u64,
        /// Its end.
        first_end: u64,
        /// The other.
        second: String,
        /// Its start.
        second_start: u64,
        /// Its end.
        second_end: u64,
    },
    /// The BAT or the metadata region is listed twice.
    #[error("the {0} region is listed twice in the region table")]
    DuplicateRegion(&'static str),
    /// The BAT or the metadata region is missing.
    #[error("the region table has no {0} region")]
    MissingRegion(&'static str),
    /// A region this reader does not know is marked required.
    #[error("unknown required region {0}; the image cannot be read safely")]
    UnknownRequiredRegion(String),
    /// The metadata table fails its checks.
    #[error("metadata table is invalid: {0}")]
    BadMetadataTable(String),
    /// A metadata item this reader does not know is marked required.
    #[error("unknown required metadata item {0}; the image cannot be read safely")]
    UnknownRequiredMetadata(String),
    /// A metadata item is missing, misplaced or has a wrong value.
    #[error("metadata item {item} is invalid: {reason}")]
    BadMetadataItem {
        /// The item's name.
        item: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The image is a differencing disk.
    #[error("the image is a differencing disk (HasParent is set{}); images that depend on another image are refused", if *.locator { ", with a parent locator" } else { ", but it has no parent locator" })]
    Differencing {
        /// Whether a parent locator item is present.
        locator: bool,
    },
    /// The BAT region is smaller than the disk needs.
    #[error("BAT region of {region_len} bytes is too small: the disk needs {entries} entries ({needed} bytes)")]
    BatTooSmall {
        /// The region's length.
        region_len: u64,
        /// Entries needed.
        entries: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// A BAT entry is invalid.
    #[error("BAT entry {index} ({what}, entry {entry:#018x}) is invalid: {reason}")]
    BadBatEntry {
        /// Index in the BAT.
        index: u64,
        /// "payload block N" or "sector bitmap of chunk N".
        what: String,
        /// The raw entry.
        entry: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two payload blocks share host bytes.
    #[error("payload blocks {first} and {second} overlap in the file (host offsets {first_offset:#x} and {second_offset:#x}, block size {block_size})")]
    BlocksOverlap {
        /// One block.
        first: u64,
        /// Its host offset.
        first_offset: u64,
        /// The other.
        second: u64,
        /// Its host offset.
        second_offset: u64,
        /// Block size.
        block_size: u64,
    },
}

impl From<VhdxError> for crate::format::engine::Fault {
    fn from(e: VhdxError) -> Self {
        crate::format::engine::Fault::format(e)
    }
}
