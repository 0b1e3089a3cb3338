//! The qcow2 header (cluster 0): parsing, and every check that must pass before
//! any other field is trusted. Field layout and limits: `qcow2-notes.md`
//! sections 2-5 and 13-14. The result, [`Header`], holds only validated values;
//! the geometry derived from it is computed with checked arithmetic.

use super::error::Qcow2Error;

/// qcow2 magic, "QFI\xfb".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Bytes of a version 2 header.
pub const V2_HEADER_LEN: usize = 72;
/// Smallest version 3 header.
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// Largest active L1 table qemu accepts: 32 MiB (4 Mi entries).
pub const MAX_L1_ENTRIES: u64 = 4 << 20;
/// Host offsets in qcow2 tables have 56 bits (bits 9..=55 of an L1/L2 entry);
/// a table the header places beyond that cannot be part of a valid image.
const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Largest refcount table qemu accepts.
const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots qemu accepts.
const MAX_SNAPSHOTS: u32 = 65536;
/// Most header extensions we walk before calling the list hostile.
const MAX_EXTENSIONS: usize = 1024;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;

const EXT_END: u32 = 0;
const EXT_FEATURE_NAMES: u32 = 0x6803_F857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_ENCRYPTION: u32 = 0x0537_BE77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// How compressed clusters are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterCompression {
    /// Raw deflate (RFC 1951), qemu's default ("zlib").
    Deflate,
    /// zstd frames.
    Zstd,
}

/// A validated qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Virtual size, rounded down to a multiple of 512 as qemu does.
    pub virtual_size: u64,
    /// Virtual size as written in the header.
    pub header_virtual_size: u64,
    /// Entries the L1 table must have for the virtual size (the only ones read).
    pub l1_entries_needed: u64,
    /// Host offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Size of the refcount table in bytes.
    pub refcount_table_bytes: u64,
    /// Incompatible feature bits.
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// Refcount width is `1 << refcount_order` bits.
    pub refcount_order: u32,
    /// Encoding of compressed clusters.
    pub compression: ClusterCompression,
    /// Internal snapshots present.
    pub nb_snapshots: u32,
    /// Header extension types seen (for `info`).
    pub extensions: Vec<u32>,
}

impl Header {
    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// True when L2 entries are 128 bits with subcluster bitmaps.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }
    /// Bytes of one L2 entry.
    pub fn l2_entry_bytes(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }
    /// Entries in one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_bytes()
    }
    /// Guest bytes mapped by one L2 table.
    pub fn bytes_per_l2(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }
    /// Bytes of the part of the L1 table that is read.
    pub fn l1_bytes_needed(&self) -> u64 {
        self.l1_entries_needed * 8
    }
    /// The dirty bit is set (refcounts may be stale; mappings are fine).
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }
    /// The corrupt bit is set.
    pub fn is_marked_corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    /// Names of the features in use, for `info`.
    pub fn feature_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.is_dirty() {
            names.push("dirty");
        }
        if self.is_marked_corrupt() {
            names.push("corrupt");
        }
        if self.compression == ClusterCompression::Zstd {
            names.push("compression-type-zstd");
        }
        if self.extended_l2() {
            names.push("extended-l2");
        }
        if self.compatible_features & 1 != 0 {
            names.push("lazy-refcounts");
        }
        if self.autoclear_features & 1 != 0 || self.extensions.contains(&EXT_BITMAPS) {
            names.push("bitmaps");
        }
        if self.nb_snapshots > 0 {
            names.push("internal-snapshots");
        }
        names
    }

    /// Parses and validates the header from the first bytes of the image.
    /// `cluster0` is the whole first cluster, or less when the stream ended
    /// inside it.
    pub fn parse(cluster0: &[u8]) -> Result<Header, Qcow2Error> {
        let field = Fields(cluster0);
        if cluster0.len() < V2_HEADER_LEN {
            return Err(Qcow2Error::HeaderTruncated {
                len: cluster0.len(),
            });
        }
        if cluster0[0..4] != MAGIC {
            return Err(Qcow2Error::BadMagic);
        }
        let version = field.u32(4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::UnsupportedVersion(version));
        }
        let cluster_bits = field.u32(20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(Qcow2Error::UnsupportedClusterBits(cluster_bits));
        }
        let cluster_size = 1u64 << cluster_bits;

        let (incompat, compat, autoclear, refcount_order, header_length, compression_byte) =
            if version == 2 {
                (0, 0, 0, 4, V2_HEADER_LEN as u32, 0)
            } else {
                if cluster0.len() < V3_MIN_HEADER_LEN as usize {
                    return Err(Qcow2Error::HeaderTruncated {
                        len: cluster0.len(),
                    });
                }
                let header_length = field.u32(100);
                if header_length < V3_MIN_HEADER_LEN || u64::from(header_length) > cluster_size {
                    return Err(Qcow2Error::HeaderLength {
                        length: header_length,
                        cluster_size,
                    });
                }
                if cluster0.len() < header_length as usize {
                    return Err(Qcow2Error::HeaderTruncated {
                        len: cluster0.len(),
                    });
                }
                let compression_byte = if header_length > 104 {
                    cluster0[104]
                } else {
                    0
                };
                (
                    field.u64(72),
                    field.u64(80),
                    field.u64(88),
                    field.u32(96),
                    header_length,
                    compression_byte,
                )
            };

        let extension_end = cluster0.len().min(cluster_size as usize);
        let extensions = walk_extensions(cluster0, header_length as usize, extension_end)?;
        let feature_names = extensions
            .iter()
            .find(|e| e.kind == EXT_FEATURE_NAMES)
            .map(|e| parse_feature_names(e.data))
            .unwrap_or_default();

        // What an importer must never follow.
        let backing_file_offset = field.u64(8);
        if backing_file_offset != 0 {
            let size = field.u32(16) as u64;
            let name = backing_file_offset
                .checked_add(size)
                .filter(|end| *end <= cluster0.len() as u64 && size <= 1023)
                .map(|end| {
                    String::from_utf8_lossy(&cluster0[backing_file_offset as usize..end as usize])
                        .into_owned()
                });
            return Err(Qcow2Error::BackingFile { name });
        }
        if incompat & INCOMPAT_DATA_FILE != 0 || extensions.iter().any(|e| e.kind == EXT_DATA_FILE)
        {
            let name = extensions
                .iter()
                .find(|e| e.kind == EXT_DATA_FILE)
                .map(|e| String::from_utf8_lossy(e.data).into_owned());
            return Err(Qcow2Error::ExternalDataFile { name });
        }
        let crypt_method = field.u32(32);
        if crypt_method != 0 || extensions.iter().any(|e| e.kind == EXT_ENCRYPTION) {
            return Err(Qcow2Error::Encrypted { crypt_method });
        }
        let unknown = incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let names = (5..64)
                .filter(|bit| unknown & (1u64 << bit) != 0)
                .map(|bit| {
                    feature_names
                        .iter()
                        .find(|(kind, b, _)| *kind == 0 && u32::from(*b) == bit)
                        .map(|(_, _, name)| format!("bit {bit} ({name})"))
                        .unwrap_or_else(|| format!("bit {bit}"))
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Qcow2Error::UnknownIncompatibleFeatures {
                bits: unknown,
                names,
            });
        }
        let compression = match (compression_byte, incompat & INCOMPAT_COMPRESSION != 0) {
            (0, false) => ClusterCompression::Deflate,
            (1, true) => ClusterCompression::Zstd,
            (0, true) | (1, false) => {
                return Err(Qcow2Error::CompressionTypeBit {
                    compression_type: compression_byte,
                })
            }
            (other, _) => return Err(Qcow2Error::UnknownCompressionType(other)),
        };
        if refcount_order > 6 {
            return Err(Qcow2Error::RefcountOrder(refcount_order));
        }
        if incompat & INCOMPAT_EXTL2 != 0 && cluster_bits < 14 {
            return Err(Qcow2Error::ExtendedL2ClusterTooSmall { cluster_bits });
        }

        // Geometry.
        let header_virtual_size = field.u64(24);
        let virtual_size = header_virtual_size & !511;
        let l2_entry_bytes: u64 = if incompat & INCOMPAT_EXTL2 != 0 {
            16
        } else {
            8
        };
        let bytes_per_l2 = (cluster_size / l2_entry_bytes) << cluster_bits;
        // qemu sizes the L1 check by the size as written, then floors the size.
        let l1_entries_for_header = header_virtual_size.div_ceil(bytes_per_l2);
        if l1_entries_for_header > MAX_L1_ENTRIES {
            return Err(Qcow2Error::VirtualSizeTooLarge {
                virtual_size: header_virtual_size,
                l1_entries: l1_entries_for_header,
            });
        }
        let l1_size = u64::from(field.u32(36));
        if l1_size > MAX_L1_ENTRIES {
            // qemu refuses the table at open ("Active L1 table too large"), however
            // few of its entries the virtual size needs.
            return Err(Qcow2Error::L1TooLarge { l1_size });
        }
        if l1_size < l1_entries_for_header {
            return Err(Qcow2Error::L1TooSmall {
                l1_size,
                needed: l1_entries_for_header,
            });
        }
        let l1_entries_needed = virtual_size.div_ceil(bytes_per_l2);
        let l1_table_offset = field.u64(40);
        if l1_entries_needed > 0 {
            if l1_table_offset % cluster_size != 0 {
                return Err(Qcow2Error::L1Unaligned(l1_table_offset));
            }
            if l1_table_offset < cluster_size {
                return Err(Qcow2Error::L1InHeader(l1_table_offset));
            }
        }
        let refcount_table_offset = field.u64(48);
        let refcount_table_clusters = u64::from(field.u32(56));
        let refcount_table_bytes = refcount_table_clusters << cluster_bits;
        if refcount_table_offset % cluster_size != 0 {
            return Err(Qcow2Error::RefcountTableUnaligned(refcount_table_offset));
        }
        if refcount_table_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Qcow2Error::RefcountTableTooLarge(refcount_table_bytes));
        }
        for (table, offset, used) in [
            ("L1 table", l1_table_offset, l1_entries_needed > 0),
            ("refcount table", refcount_table_offset, true),
        ] {
            if used && offset >= MAX_HOST_OFFSET {
                return Err(Qcow2Error::TableOffsetOutOfRange { table, offset });
            }
        }
        // Both offsets are below 2^56 and both sizes are bounded: no overflow.
        let l1_end = l1_table_offset + l1_entries_needed * 8;
        let refcount_end = refcount_table_offset + refcount_table_bytes;
        if l1_entries_needed > 0
            && refcount_table_bytes > 0
            && l1_table_offset < refcount_end
            && refcount_table_offset < l1_end
        {
            return Err(Qcow2Error::L1OverlapsRefcountTable {
                l1: l1_table_offset,
                refcount: refcount_table_offset,
            });
        }
        let nb_snapshots = field.u32(60);
        if nb_snapshots > MAX_SNAPSHOTS {
            return Err(Qcow2Error::TooManySnapshots(nb_snapshots));
        }
        let snapshots_offset = field.u64(64);
        if nb_snapshots > 0 && snapshots_offset % cluster_size != 0 {
            return Err(Qcow2Error::SnapshotTableUnaligned(snapshots_offset));
        }

        Ok(Header {
            version,
            cluster_bits,
            virtual_size,
            header_virtual_size,
            l1_entries_needed,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_bytes,
            incompatible_features: incompat,
            compatible_features: compat,
            autoclear_features: autoclear,
            refcount_order,
            compression,
            nb_snapshots,
            extensions: extensions.iter().map(|e| e.kind).collect(),
        })
    }
}

/// Big-endian field access on a byte slice whose length was checked.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
}

/// One header extension.
struct Extension<'a> {
    kind: u32,
    data: &'a [u8],
}

/// Walks the extension list in `[start, end)`, bounding every length.
fn walk_extensions(
    bytes: &[u8],
    start: usize,
    end: usize,
) -> Result<Vec<Extension<'_>>, Qcow2Error> {
    let mut found = Vec::new();
    let mut at = start;
    while at + 8 <= end {
        let kind = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let length = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if kind == EXT_END {
            return Ok(found);
        }
        let data_start = at + 8;
        let data_end = data_start
            .checked_add(length as usize)
            .filter(|e| *e <= end)
            .ok_or(Qcow2Error::HeaderExtensionTooLarge {
                kind,
                length,
                offset: at as u64,
            })?;
        if found.len() >= MAX_EXTENSIONS {
            return Err(Qcow2Error::TooManyHeaderExtensions);
        }
        found.push(Extension {
            kind,
            data: &bytes[data_start..data_end],
        });
        at = data_start + (length as usize).div_ceil(8) * 8;
    }
    Ok(found)
}

/// Feature name table entries: (type, bit, name).
fn parse_feature_names(data: &[u8]) -> Vec<(u8, u8, String)> {
    data.chunks_exact(48)
        .map(|entry| {
            let name = &entry[2..];
            let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            (
                entry[0],
                entry[1],
                String::from_utf8_lossy(&name[..len]).into_owned(),
            )
        })
        .collect()
}
