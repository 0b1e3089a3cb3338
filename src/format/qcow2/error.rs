//! Every way a qcow2 image can be refused, one variant per check, each message
//! naming the field or offset at fault. Failures that are not about qcow2
//! (truncation, budget, spill, sink) are the engine's
//! [`StreamError`](crate::format::engine::StreamError).

/// A qcow2 image that is refused, broken, or not fully present.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// Fewer bytes than a header.
    #[error("header truncated: the image has only {len} bytes")]
    HeaderTruncated {
        /// Bytes available.
        len: usize,
    },
    /// Not the qcow2 magic.
    #[error("bad magic: not a qcow2 image")]
    BadMagic,
    /// Version other than 2 or 3.
    #[error("unsupported qcow2 version {0} (only versions 2 and 3 are read)")]
    UnsupportedVersion(u32),
    /// cluster_bits outside 9..=21.
    #[error("unsupported cluster size 2^{0} (cluster_bits must be 9 to 21: 512 B to 2 MiB)")]
    UnsupportedClusterBits(u32),
    /// v3 header_length outside [104, cluster_size].
    #[error(
        "header length {length} is out of range (must be 104 to the cluster size {cluster_size})"
    )]
    HeaderLength {
        /// The header_length field.
        length: u32,
        /// The cluster size.
        cluster_size: u64,
    },
    /// A header extension reaches past the extension area.
    #[error("header extension 0x{kind:08x} at offset {offset} claims {length} bytes, past the end of the header cluster")]
    HeaderExtensionTooLarge {
        /// Extension type.
        kind: u32,
        /// Claimed length.
        length: u32,
        /// Where it starts.
        offset: u64,
    },
    /// More header extensions than any real image has.
    #[error("too many header extensions")]
    TooManyHeaderExtensions,
    /// A backing file is named.
    #[error("the image has a backing file{}; images that depend on another image are refused", .name.as_ref().map(|n| format!(" ({n:?})")).unwrap_or_default())]
    BackingFile {
        /// The backing file name, when it could be read safely.
        name: Option<String>,
    },
    /// An external data file is used.
    #[error("the image uses an external data file{}; its data lives outside the image, so it is refused", .name.as_ref().map(|n| format!(" ({n:?})")).unwrap_or_default())]
    ExternalDataFile {
        /// The data file name, if given.
        name: Option<String>,
    },
    /// Encrypted image.
    #[error("the image is encrypted ({}); encrypted images are refused", match .crypt_method { 1 => "AES-CBC".to_string(), 2 => "LUKS".to_string(), 0 => "encryption header extension".to_string(), n => format!("unknown method {n}") })]
    Encrypted {
        /// The crypt_method field.
        crypt_method: u32,
    },
    /// Incompatible feature bits this reader does not know.
    #[error(
        "unknown incompatible feature {names} (bits 0x{bits:x}); the image cannot be read safely"
    )]
    UnknownIncompatibleFeatures {
        /// The unknown bits.
        bits: u64,
        /// Their names, from the feature name table where present.
        names: String,
    },
    /// Incompatible bit 3 disagrees with the compression type byte.
    #[error("compression type {compression_type} disagrees with incompatible feature bit 3")]
    CompressionTypeBit {
        /// The compression_type byte.
        compression_type: u8,
    },
    /// Unknown compression type.
    #[error("unknown compression type {0} (known: 0 = deflate, 1 = zstd)")]
    UnknownCompressionType(u8),
    /// refcount_order above 6.
    #[error("refcount order {0} is out of range (at most 6: 64-bit refcounts)")]
    RefcountOrder(u32),
    /// Extended L2 with clusters too small for 32 subclusters.
    #[error("extended L2 entries need clusters of at least 16 KiB, not 2^{cluster_bits}")]
    ExtendedL2ClusterTooSmall {
        /// The cluster_bits field.
        cluster_bits: u32,
    },
    /// The virtual size needs more than 4 Mi L1 entries.
    #[error("image is too big: virtual size {virtual_size} needs {l1_entries} L1 entries (limit 4194304)")]
    VirtualSizeTooLarge {
        /// The header's virtual size.
        virtual_size: u64,
        /// L1 entries it needs.
        l1_entries: u64,
    },
    /// l1_size above what qemu opens.
    #[error("L1 table is too large: l1_size {l1_size} entries (limit 4194304)")]
    L1TooLarge {
        /// The l1_size field.
        l1_size: u64,
    },
    /// l1_size smaller than the virtual size needs.
    #[error("L1 table is too small: {l1_size} entries for a virtual size that needs {needed}")]
    L1TooSmall {
        /// The l1_size field.
        l1_size: u64,
        /// Entries needed.
        needed: u64,
    },
    /// L1 table offset not cluster aligned.
    #[error("L1 table offset {0:#x} is not cluster aligned")]
    L1Unaligned(u64),
    /// L1 table inside the header cluster.
    #[error("L1 table offset {0:#x} lies inside the header cluster")]
    L1InHeader(u64),
    /// A table offset in the header beyond what a qcow2 host offset can be.
    #[error("{table} offset {offset:#x} is out of range (qcow2 host offsets stop at 2^56)")]
    TableOffsetOutOfRange {
        /// Which table.
        table: &'static str,
        /// The offset the header gives.
        offset: u64,
    },
    /// L1 table overlaps the refcount table.
    #[error("L1 table at {l1:#x} overlaps the refcount table at {refcount:#x}")]
    L1OverlapsRefcountTable {
        /// L1 offset.
        l1: u64,
        /// Refcount table offset.
        refcount: u64,
    },
    /// Refcount table offset not cluster aligned.
    #[error("refcount table offset {0:#x} is not cluster aligned")]
    RefcountTableUnaligned(u64),
    /// Refcount table larger than 8 MiB.
    #[error("refcount table of {0} bytes is too large (limit 8 MiB)")]
    RefcountTableTooLarge(u64),
    /// More than 65536 snapshots.
    #[error("{0} internal snapshots is too many (limit 65536)")]
    TooManySnapshots(u32),
    /// Snapshot table offset not cluster aligned.
    #[error("snapshot table offset {0:#x} is not cluster aligned")]
    SnapshotTableUnaligned(u64),
    /// An L1 entry names an invalid L2 table.
    #[error("L1 entry {index} points to an invalid L2 table offset {offset:#x}: {reason}")]
    BadL2Offset {
        /// L1 index.
        index: u64,
        /// The L2 offset.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// An L2 entry is invalid.
    #[error("L2 entry for guest offset {guest:#x} is invalid (entry {entry:#018x}): {reason}")]
    BadL2Entry {
        /// Guest offset of the cluster.
        guest: u64,
        /// The raw entry.
        entry: u64,
        /// What is wrong.
        reason: String,
    },
}

impl From<Qcow2Error> for crate::format::engine::Fault {
    fn from(e: Qcow2Error) -> Self {
        crate::format::engine::Fault::format(e)
    }
}
