//! BAT entries: 3 state bits, 17 reserved bits, and the file offset in MiB. The BAT
//! interleaves payload entries with one sector-bitmap entry after every
//! `chunk_ratio` payload entries; this file says which entry is which and what each
//! state means for a disk without a parent.

use super::error::VhdxError;
use super::header::MIB;

/// Bits 3..=19 must be zero.
const RESERVED_MASK: u64 = 0x000F_FFF8;

/// What one BAT entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatEntry {
    /// A payload block that reads as zeroes without being stored: NOT_PRESENT (0),
    /// UNDEFINED (1), UNMAPPED (3), or UNMAPPED as spec 0.95 numbered it (5), all
    /// of which qemu reads as zeroes.
    Unallocated,
    /// ZERO (2): zeroes by state.
    Zero,
    /// FULLY_PRESENT (6): the block is stored at this file offset.
    Present(u64),
    /// A sector-bitmap entry that is NOT_PRESENT.
    NoBitmap,
}

/// Where BAT entry `index` belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Payload block number.
    Payload(u64),
    /// Sector bitmap of chunk number.
    Bitmap(u64),
}

impl Slot {
    /// Entry `index` of a BAT whose chunks hold `chunk_ratio` payload blocks.
    pub fn of(index: u64, chunk_ratio: u64) -> Slot {
        let group = chunk_ratio + 1;
        if index % group == chunk_ratio {
            Slot::Bitmap(index / group)
        } else {
            Slot::Payload(index - index / group)
        }
    }

    fn describe(self) -> String {
        match self {
            Slot::Payload(b) => format!("payload block {b}"),
            Slot::Bitmap(c) => format!("sector bitmap of chunk {c}"),
        }
    }
}

/// Decodes entry `index` (raw value `entry`) of a disk without a parent.
pub fn decode(index: u64, entry: u64, chunk_ratio: u64) -> Result<BatEntry, VhdxError> {
    let slot = Slot::of(index, chunk_ratio);
    let bad = |reason| VhdxError::BadBatEntry {
        index,
        what: slot.describe(),
        entry,
        reason,
    };
    if entry & RESERVED_MASK != 0 {
        return Err(bad("reserved bits 3-19 are set"));
    }
    let state = entry & 7;
    let offset = (entry >> 20) * MIB;
    match (slot, state) {
        (Slot::Bitmap(_), 0) => Ok(BatEntry::NoBitmap),
        (Slot::Bitmap(_), 6) => Err(bad(
            "a present sector bitmap belongs to a differencing disk, and this one has no parent",
        )),
        (Slot::Bitmap(_), _) => Err(bad("undefined sector bitmap state")),
        (Slot::Payload(_), 0 | 1 | 3 | 5) => Ok(BatEntry::Unallocated),
        (Slot::Payload(_), 2) => Ok(BatEntry::Zero),
        (Slot::Payload(_), 6) if offset == 0 => Err(bad("a present block at file offset 0")),
        (Slot::Payload(_), 6) => Ok(BatEntry::Present(offset)),
        (Slot::Payload(_), 7) => Err(bad(
            "PARTIALLY_PRESENT is only valid in a differencing disk, and this one has no parent",
        )),
        (Slot::Payload(_), _) => Err(bad("undefined payload block state 4")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_follows_the_chunk_ratio() {
        // 512-byte sectors, 32 MiB blocks: 128 payload entries, then a bitmap.
        assert_eq!(Slot::of(0, 128), Slot::Payload(0));
        assert_eq!(Slot::of(127, 128), Slot::Payload(127));
        assert_eq!(Slot::of(128, 128), Slot::Bitmap(0));
        assert_eq!(Slot::of(129, 128), Slot::Payload(128));
        assert_eq!(Slot::of(257, 128), Slot::Bitmap(1));
    }

    #[test]
    fn states() {
        assert_eq!(decode(0, 0, 4).unwrap(), BatEntry::Unallocated);
        assert_eq!(decode(0, 5, 4).unwrap(), BatEntry::Unallocated);
        assert_eq!(decode(0, 2, 4).unwrap(), BatEntry::Zero);
        assert_eq!(
            decode(0, (9 << 20) | 6, 4).unwrap(),
            BatEntry::Present(9 * MIB)
        );
        assert_eq!(decode(4, 0, 4).unwrap(), BatEntry::NoBitmap);
        assert!(decode(0, 7, 4).is_err());
        assert!(decode(0, 4, 4).is_err());
        assert!(decode(0, 6, 4).is_err());
        assert!(decode(4, (9 << 20) | 6, 4).is_err());
        assert!(decode(0, (9 << 20) | 0x10 | 6, 4).is_err());
    }
}
