//! Decoding L1 and L2 table entries into what a guest cluster (or subcluster)
//! holds, with the per-entry checks of `qcow2-notes.md` sections 6-9 and 14.

use super::error::Qcow2Error;
use super::header::Header;
pub use crate::format::engine::Mapping;

const L1_OFFSET_MASK: u64 = 0x00FF_FFFF_FFFF_FE00;
const L2_OFFSET_MASK: u64 = 0x00FF_FFFF_FFFF_FE00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_COPIED: u64 = 1 << 63;
const L2_ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u64 = 32;

/// Decodes an L1 entry: the L2 table offset, or `None` when unallocated.
pub fn l1_entry(header: &Header, index: u64, raw: u64) -> Result<Option<u64>, Qcow2Error> {
    let offset = raw & L1_OFFSET_MASK;
    if offset == 0 {
        return Ok(None);
    }
    let bad = |reason| Qcow2Error::BadL2Offset {
        index,
        offset,
        reason,
    };
    if offset % header.cluster_size() != 0 {
        return Err(bad("not cluster aligned"));
    }
    if offset < header.cluster_size() {
        return Err(bad("inside the header cluster"));
    }
    let l1_start = header.l1_table_offset;
    let l1_end = l1_start
        + header
            .l1_bytes_needed()
            .next_multiple_of(header.cluster_size());
    if offset < l1_end && l1_start < offset + header.cluster_size() {
        return Err(bad("it is the L1 table"));
    }
    let rt_start = header.refcount_table_offset;
    let rt_end = rt_start + header.refcount_table_bytes;
    if offset < rt_end && rt_start < offset + header.cluster_size() {
        return Err(bad("it is inside the refcount table"));
    }
    Ok(Some(offset))
}

/// A decoded L2 entry: one mapping for the whole cluster, or 32 for subclusters.
#[derive(Debug, Clone, PartialEq, Eq)]
// Returned by value and consumed at once, never stored in bulk: boxing the
// subcluster array would only add an allocation per entry.
#[allow(clippy::large_enum_variant)]
pub enum ClusterMapping {
    /// The cluster as one piece.
    Whole(Mapping),
    /// 32 subclusters, each `cluster_size / 32` bytes.
    Subclusters([Mapping; SUBCLUSTERS as usize]),
}

/// Decodes the L2 entry at `bytes` (8 or 16 bytes) for the cluster at `guest`.
pub fn l2_entry(header: &Header, guest: u64, bytes: &[u8]) -> Result<ClusterMapping, Qcow2Error> {
    let raw = u64::from_be_bytes(bytes[0..8].try_into().expect("8 bytes"));
    let bad = |reason: String| Qcow2Error::BadL2Entry {
        guest,
        entry: raw,
        reason,
    };
    let cluster_size = header.cluster_size();

    if raw & L2_COMPRESSED != 0 {
        // Descriptor: x low bits of byte offset, then the extra-sector count.
        let x = 62 - (header.cluster_bits - 8);
        let host = raw & ((1u64 << x) - 1);
        if host >> 56 != 0 {
            return Err(bad("compressed data offset uses bits above 55".into()));
        }
        let extra_sectors = (raw >> x) & ((1u64 << (header.cluster_bits - 8)) - 1);
        let len = (extra_sectors + 1) * 512 - (host % 512);
        if host < cluster_size {
            return Err(bad(format!(
                "compressed data at host offset {host:#x} lies inside the header cluster"
            )));
        }
        return Ok(ClusterMapping::Whole(Mapping::Compressed { host, len }));
    }

    let host = raw & L2_OFFSET_MASK;
    let host_opt = (host != 0).then_some(host);
    if header.extended_l2() {
        let bitmap = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let alloc = bitmap & 0xFFFF_FFFF;
        let zero = bitmap >> 32;
        if alloc & zero != 0 {
            return Err(bad(format!(
                "subclusters {alloc_zero:#x} are marked both allocated and zero",
                alloc_zero = alloc & zero
            )));
        }
        if alloc != 0 && host == 0 {
            return Err(bad(
                "subclusters are allocated but the host offset is 0".into()
            ));
        }
        if alloc != 0 && host % cluster_size != 0 {
            return Err(bad(format!("host offset {host:#x} is not cluster aligned")));
        }
        let sub = cluster_size / SUBCLUSTERS;
        let mut maps = [Mapping::Unallocated { host: None }; SUBCLUSTERS as usize];
        for (k, map) in maps.iter_mut().enumerate() {
            let sub_host = host_opt.map(|h| h + k as u64 * sub);
            *map = if alloc & (1 << k) != 0 {
                Mapping::Data {
                    host: sub_host.expect("checked above"),
                }
            } else if zero & (1 << k) != 0 {
                Mapping::Zero { host: sub_host }
            } else {
                Mapping::Unallocated { host: sub_host }
            };
        }
        return Ok(ClusterMapping::Subclusters(maps));
    }

    if raw & L2_ZERO != 0 {
        if header.version < 3 {
            return Err(bad("zero flag set in a version 2 image".into()));
        }
        if host % cluster_size != 0 {
            return Err(bad(format!(
                "preallocated zero cluster at host offset {host:#x} is not cluster aligned"
            )));
        }
        return Ok(ClusterMapping::Whole(Mapping::Zero { host: host_opt }));
    }
    if host == 0 {
        if raw & L2_COPIED != 0 {
            return Err(bad(
                "marked allocated at host offset 0 (the header), which only an external data file allows"
                    .into(),
            ));
        }
        return Ok(ClusterMapping::Whole(Mapping::Unallocated { host: None }));
    }
    if host % cluster_size != 0 {
        return Err(bad(format!("host offset {host:#x} is not cluster aligned")));
    }
    Ok(ClusterMapping::Whole(Mapping::Data { host }))
}
