//! Every way a VMDK image can be refused, one variant per check, each message
//! naming the field, sector or extent at fault. Failures that are not about VMDK
//! (truncation of a claimed range, budget, spill, sink) are the engine's
//! [`StreamError`](crate::format::engine::StreamError).

/// A VMDK image that is refused, broken, or not fully present.
#[derive(Debug, thiserror::Error)]
pub enum VmdkError {
    /// Fewer bytes than a header.
    #[error("header truncated: the image has only {len} bytes")]
    HeaderTruncated {
        /// Bytes available.
        len: usize,
    },
    /// Neither `KDMV` nor `COWD`.
    #[error("bad magic: not a VMDK sparse extent")]
    BadMagic,
    /// A version this reader does not know.
    #[error("unsupported VMDK version {0} (versions 1 to 3 are read)")]
    UnsupportedVersion(u32),
    /// Flags bit 0 is set but the newline-detection bytes are wrong.
    #[error("the newline-detection bytes of the header are damaged (the file went through a text-mode transfer?)")]
    NewlineBytes,
    /// grainSize out of range or not a power of two.
    #[error("Invalid granularity: grainSize {grain_sectors} sectors (must be a power of two, at most {max_sectors} sectors)")]
    InvalidGranularity {
        /// The grainSize field.
        grain_sectors: u64,
        /// The largest accepted for this sub-format.
        max_sectors: u64,
    },
    /// numGTEsPerGT out of range.
    #[error("grain table size {0} entries is invalid (must be 1 to 512)")]
    GtSize(u64),
    /// Capacity zero, or past what a disk can be.
    #[error("capacity of {sectors} sectors is out of range ({reason})")]
    Capacity {
        /// The capacity field.
        sectors: u64,
        /// Why.
        reason: &'static str,
    },
    /// The grain directory needs more entries than qemu accepts.
    #[error("L1 size too big: the grain directory needs {entries} entries (limit {limit})")]
    GdTooLarge {
        /// Entries needed.
        entries: u64,
        /// The limit.
        limit: u64,
    },
    /// Compression flag, marker flag and algorithm do not describe a known layout.
    #[error("flags {flags:#x} and compressAlgorithm {algorithm} disagree (compressed grains need flags bits 16 and 17 and algorithm 1 = deflate)")]
    CompressionMismatch {
        /// The flags field.
        flags: u32,
        /// The compressAlgorithm field.
        algorithm: u16,
    },
    /// The embedded descriptor's place is not inside the metadata area.
    #[error(
        "the embedded descriptor at sector {offset} ({sectors} sectors) is out of range: {reason}"
    )]
    DescriptorRange {
        /// descriptorOffset.
        offset: u64,
        /// descriptorSize.
        sectors: u64,
        /// Why.
        reason: &'static str,
    },
    /// A descriptor whose disk lives in other files.
    #[error("the descriptor (createType {create_type:?}) references other files, which are never opened: it needs {extents}")]
    ReferencesOtherFiles {
        /// createType, or "none".
        create_type: String,
        /// The extents it would need, listed.
        extents: String,
    },
    /// A text descriptor file (no data at all).
    #[error("this is a VMDK descriptor file (createType {create_type:?}), not a disk: its data is in other files, which are never opened; it needs {extents}")]
    DescriptorFile {
        /// createType, or "none".
        create_type: String,
        /// The extents it would need, listed.
        extents: String,
    },
    /// A child image (parentCID / parentFileNameHint).
    #[error("the image is a snapshot child ({what}); images that depend on a parent are refused")]
    Parent {
        /// What names the parent.
        what: String,
    },
    /// An embedded createType this reader does not convert.
    #[error("embedded createType {0:?} is not a self-contained disk (monolithicSparse or streamOptimized)")]
    CreateType(String),
    /// A COWD image without the `CID=` text qemu requires.
    #[error("the COWD image has no descriptor text with a CID= line at byte 512 (qemu-img cannot open it either)")]
    CowdWithoutCid,
    /// The grain directory's offset is unusable.
    #[error("grain directory at sector {sector} is invalid: {reason}")]
    GdOffset {
        /// Sector of the GD.
        sector: u64,
        /// Why.
        reason: &'static str,
    },
    /// A GD entry names an unusable grain table.
    #[error("grain directory entry {index} points to an invalid grain table at sector {sector}: {reason}")]
    GtOffset {
        /// GD index.
        index: u64,
        /// Sector of the GT.
        sector: u64,
        /// Why.
        reason: &'static str,
    },
    /// Two grain tables overlap without being the same table.
    #[error("grain tables at sectors {first} and {second} overlap")]
    GtOverlap {
        /// One GT.
        first: u64,
        /// The other.
        second: u64,
    },
    /// A grain entry points into the header/descriptor/table area.
    #[error("grain table entry for guest offset {guest:#x} points to sector {sector}, inside the metadata before overHead (sector {overhead})")]
    GrainInMetadata {
        /// Guest offset.
        guest: u64,
        /// The entry.
        sector: u64,
        /// overHead, in sectors.
        overhead: u64,
    },
    /// GTE 1 without the zeroed-grain flag.
    #[error("grain table entry for guest offset {guest:#x} is 1 (a zeroed grain) but the header does not enable zeroed grains (flags bit 2): it would point at the descriptor")]
    ZeroedGrainWithoutFlag {
        /// Guest offset.
        guest: u64,
    },
    /// The file is shorter than overHead.
    #[error("the image is truncated: overHead says grains start at byte {overhead}, but the image ends at byte {stream_end}")]
    OverheadPastEnd {
        /// overHead in bytes.
        overhead: u64,
        /// Where the stream ended.
        stream_end: u64,
    },
    /// A sector in the marker area is not a marker.
    #[error("byte {offset:#x} should hold a stream marker but does not: {reason}")]
    NotAMarker {
        /// Host offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A grain marker's LBA is unusable.
    #[error("grain marker at byte {offset:#x} has LBA {lba}: {reason}")]
    GrainLba {
        /// Host offset.
        offset: u64,
        /// The LBA.
        lba: u64,
        /// Why.
        reason: &'static str,
    },
    /// A compressed grain's size is zero or too large.
    #[error(
        "grain marker at byte {offset:#x} claims {size} compressed bytes (must be 1 to {max})"
    )]
    CompressedSize {
        /// Host offset.
        offset: u64,
        /// The size field.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// A marker LBA disagrees with the grain table.
    #[error("grain marker at sector {sector} says LBA {marker_lba}, but the grain table maps that grain to LBA {table_lba}")]
    MarkerDisagrees {
        /// Sector of the marker.
        sector: u64,
        /// What the marker says.
        marker_lba: u64,
        /// What the GT says.
        table_lba: u64,
    },
    /// A grain marker that no grain table maps.
    #[error("grain marker at sector {sector} (LBA {lba}) is in no grain table")]
    GrainNotInTable {
        /// Sector of the marker.
        sector: u64,
        /// Its LBA.
        lba: u64,
    },
    /// A grain table entry names a sector where no grain marker was.
    #[error("grain table maps guest offset {guest:#x} to sector {sector}, where the stream has no grain marker{}", if *.past_end { " (past the end of the image: truncated)" } else { "" })]
    TableGrainMissing {
        /// Guest offset.
        guest: u64,
        /// The entry.
        sector: u64,
        /// The sector lies past the end of the stream.
        past_end: bool,
    },
    /// Two grain table entries name one compressed grain.
    #[error("grain table entries for guest offsets {first:#x} and {second:#x} both name the grain at sector {sector}")]
    SharedGrain {
        /// One guest offset.
        first: u64,
        /// The other.
        second: u64,
        /// The grain.
        sector: u64,
    },
    /// A GD entry names a grain table the stream does not contain.
    #[error("grain directory entry {index} names a grain table at sector {sector} that the stream does not contain")]
    GtMissing {
        /// GD index.
        index: u64,
        /// Sector named.
        sector: u64,
    },
    /// No grain directory at all.
    #[error("the stream has no grain directory{}", if *.truncated { " (the header puts it at the end, and the stream ends without one: truncated)" } else { "" })]
    GdMissing {
        /// The stream ended inside its marker chain.
        truncated: bool,
    },
    /// A second grain directory.
    #[error("a second grain directory at sector {0}")]
    SecondGd(u64),
    /// The footer layout at the end is wrong or missing.
    #[error("Invalid footer: {0}")]
    Footer(String),
    /// The stream ends inside a marker or a metadata block behind one.
    #[error("the image is truncated: it ends at byte {stream_end} inside the {what} at byte {offset:#x}")]
    MarkerTruncated {
        /// Where the stream ended.
        stream_end: u64,
        /// Where the structure starts.
        offset: u64,
        /// What it is.
        what: &'static str,
    },
}

impl From<VmdkError> for crate::format::engine::Fault {
    fn from(e: VmdkError) -> Self {
        crate::format::engine::Fault::format(e)
    }
}
