//! The allocation map of an image, in the shape `qemu-img map --output=json`
//! prints, so the two can be compared (moved here from the qcow2 reader: every
//! format records its pieces the same way). Pieces arrive in stream
//! order (L2 table by L2 table); [`MapBuilder::finish`] sorts and merges them as
//! qemu does: neighbours merge when all flags agree and, where both have a host
//! offset, the offsets are contiguous.

/// What one run of guest bytes holds, as a format's table says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated: reads as zeroes. `host` is set where a host unit is assigned
    /// but this part is not allocated in it (qcow2 subclusters).
    Unallocated {
        /// Host offset of the bytes, if a host unit is assigned.
        host: Option<u64>,
    },
    /// Reads as zeroes by flag; `host` is a preallocation that is not read.
    Zero {
        /// Host offset of the preallocated bytes, if any.
        host: Option<u64>,
    },
    /// Stored uncompressed at this host offset.
    Data {
        /// Host offset.
        host: u64,
    },
    /// Stored compressed: `len` bytes from `host` decompress to one unit.
    Compressed {
        /// Host byte offset of the compressed stream.
        host: u64,
        /// Bytes to read (an upper bound; the stream may end earlier).
        len: u64,
    },
}

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

/// Collects map pieces in any order, up to a number of entries fixed when it
/// is made (a hostile image can describe millions of unmergeable pieces).
#[derive(Debug)]
pub struct MapBuilder {
    entries: Vec<MapEntry>,
    max_entries: usize,
}

impl MapBuilder {
    /// A builder that holds at most `memory` bytes of entries.
    pub fn within(memory: u64) -> Self {
        let per_entry = std::mem::size_of::<MapEntry>() as u64;
        MapBuilder {
            entries: Vec::new(),
            max_entries: (memory / per_entry).max(MIN_MAP_ENTRIES) as usize,
        }
    }

    /// Records that `[start, start + length)` holds `mapping`; false when the
    /// piece would take the map past its size.
    #[must_use]
    pub fn record(&mut self, start: u64, length: u64, mapping: Mapping) -> bool {
        let entry = MapEntry::from_mapping(start, length, mapping);
        if let Some(last) = self.entries.last_mut() {
            if last.try_merge(&entry) {
                return true;
            }
        }
        if self.entries.len() >= self.max_entries {
            return false;
        }
        self.entries.push(entry);
        true
    }

    /// The map in guest order, merged in place.
    pub fn finish(mut self) -> Vec<MapEntry> {
        self.entries.sort_by_key(|e| e.start);
        self.entries.dedup_by(|next, kept| kept.try_merge(next));
        self.entries
    }
}

/// The map may always hold this many entries, whatever the budget.
const MIN_MAP_ENTRIES: u64 = 65536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_out_of_order_merge_like_qemu() {
        let mut map = MapBuilder::within(0);
        assert!(map.record(4096, 4096, Mapping::Data { host: 12288 }));
        assert!(map.record(0, 4096, Mapping::Data { host: 8192 }));
        assert!(map.record(8192, 4096, Mapping::Unallocated { host: None }));
        let entries = map.finish();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!((entries[0].start, entries[0].length), (0, 8192));
        assert_eq!(entries[0].offset, Some(8192));
        assert!(!entries[1].present && entries[1].zero);
    }

    #[test]
    fn the_map_stops_at_its_size() {
        let mut map = MapBuilder::within(0);
        let mut recorded = 0u64;
        // Alternating kinds never merge.
        while recorded < MIN_MAP_ENTRIES + 10 {
            let mapping = if recorded % 2 == 0 {
                Mapping::Zero { host: None }
            } else {
                Mapping::Unallocated { host: None }
            };
            if !map.record(recorded * 512, 512, mapping) {
                break;
            }
            recorded += 1;
        }
        assert_eq!(recorded, MIN_MAP_ENTRIES);
    }
}
