//! The allocation map of a qcow2 image, in the shape `qemu-img map
//! --output=json` prints, so the two can be compared. Pieces arrive in stream
//! order (L2 table by L2 table); [`MapBuilder::finish`] sorts and merges them as
//! qemu does: neighbours merge when all flags agree and, where both have a host
//! offset, the offsets are contiguous.

use super::table::Mapping;

/// One run of the allocation map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MapEntry {
    /// First guest byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Layer depth (always 0: no backing chains).
    pub depth: u32,
    /// Allocated in this image (data, zero flag, or compressed).
    pub present: bool,
    /// Reads as zeroes.
    pub zero: bool,
    /// Stored data.
    pub data: bool,
    /// Stored compressed.
    pub compressed: bool,
    /// Host offset, where the bytes have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl MapEntry {
    fn from_mapping(start: u64, length: u64, mapping: Mapping) -> Self {
        let (present, zero, data, compressed, offset) = match mapping {
            Mapping::Unallocated { host } => (false, true, false, false, host),
            Mapping::Zero { host } => (true, true, false, false, host),
            Mapping::Data { host } => (true, false, true, false, Some(host)),
            Mapping::Compressed { .. } => (true, false, true, true, None),
        };
        MapEntry {
            start,
            length,
            depth: 0,
            present,
            zero,
            data,
            compressed,
            offset,
        }
    }

    /// Appends `next` to `self` if qemu would print them as one entry.
    fn try_merge(&mut self, next: &MapEntry) -> bool {
        let same_flags = (
            self.present,
            self.zero,
            self.data,
            self.compressed,
            self.depth,
        ) == (
            next.present,
            next.zero,
            next.data,
            next.compressed,
            next.depth,
        );
        let offsets_fit = match (self.offset, next.offset) {
            (None, None) => true,
            (Some(a), Some(b)) => a + self.length == b,
            _ => false,
        };
        if same_flags && offsets_fit && self.start + self.length == next.start {
            self.length += next.length;
            true
        } else {
            false
        }
    }
}

/// Collects map pieces in any order.
#[derive(Debug, Default)]
pub struct MapBuilder {
    entries: Vec<MapEntry>,
}

impl MapBuilder {
    /// Records that `[start, start + length)` holds `mapping`.
    pub fn record(&mut self, start: u64, length: u64, mapping: Mapping) {
        let entry = MapEntry::from_mapping(start, length, mapping);
        if let Some(last) = self.entries.last_mut() {
            if last.try_merge(&entry) {
                return;
            }
        }
        self.entries.push(entry);
    }

    /// The map in guest order, merged.
    pub fn finish(mut self) -> Vec<MapEntry> {
        self.entries.sort_by_key(|e| e.start);
        let mut merged: Vec<MapEntry> = Vec::with_capacity(self.entries.len());
        for entry in self.entries {
            let absorbed = merged.last_mut().is_some_and(|last| last.try_merge(&entry));
            if !absorbed {
                merged.push(entry);
            }
        }
        merged
    }
}
