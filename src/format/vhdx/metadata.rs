//! The metadata region: its table (the first 64 KiB of the region) says where each
//! item is; the items give the block size, the flags (fixed, differencing), the
//! virtual size and the sector sizes. Every item is checked before the BAT can be
//! interpreted (CVE-2014-0148: qemu once looped forever on unchecked block and
//! sector sizes).

use super::error::VhdxError;
use super::guid::{self, Guid};
use super::header::MIB;

/// Bytes of the metadata table at the start of the region.
pub const TABLE_LEN: u64 = 64 << 10;
/// Most entries the table may hold.
const MAX_ENTRIES: u16 = 2047;
/// Largest virtual disk the format allows: 64 TiB.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Smallest and largest block sizes.
const BLOCK_SIZE_RANGE: std::ops::RangeInclusive<u64> = MIB..=256 * MIB;

/// A metadata item the reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// Block size and flags.
    FileParameters,
    /// Virtual disk size.
    VirtualDiskSize,
    /// Virtual disk identity.
    VirtualDiskId,
    /// Logical sector size.
    LogicalSectorSize,
    /// Physical sector size.
    PhysicalSectorSize,
    /// Parent locator (differencing disks only; never read).
    ParentLocator,
}

/// Every known item, in the order their tags are numbered.
pub const ITEMS: [Item; 6] = [
    Item::FileParameters,
    Item::VirtualDiskSize,
    Item::VirtualDiskId,
    Item::LogicalSectorSize,
    Item::PhysicalSectorSize,
    Item::ParentLocator,
];

impl Item {
    fn guid(self) -> Guid {
        match self {
            Item::FileParameters => guid::FILE_PARAMETERS,
            Item::VirtualDiskSize => guid::VIRTUAL_DISK_SIZE,
            Item::VirtualDiskId => guid::VIRTUAL_DISK_ID,
            Item::LogicalSectorSize => guid::LOGICAL_SECTOR_SIZE,
            Item::PhysicalSectorSize => guid::PHYSICAL_SECTOR_SIZE,
            Item::ParentLocator => guid::PARENT_LOCATOR,
        }
    }

    /// The item's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Item::FileParameters => "file parameters",
            Item::VirtualDiskSize => "virtual disk size",
            Item::VirtualDiskId => "virtual disk id",
            Item::LogicalSectorSize => "logical sector size",
            Item::PhysicalSectorSize => "physical sector size",
            Item::ParentLocator => "parent locator",
        }
    }

    /// The length the item must have; `None` for the parent locator.
    fn len(self) -> Option<u64> {
        match self {
            Item::FileParameters | Item::VirtualDiskSize => Some(8),
            Item::VirtualDiskId => Some(16),
            Item::LogicalSectorSize | Item::PhysicalSectorSize => Some(4),
            Item::ParentLocator => None,
        }
    }

    /// Position in [`ITEMS`].
    pub fn index(self) -> usize {
        ITEMS.iter().position(|i| *i == self).expect("listed")
    }
}

/// Where one item is, relative to the start of the metadata region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemPlace {
    /// Which item.
    pub item: Item,
    /// Offset from the region start.
    pub offset: u64,
    /// Length.
    pub length: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses the metadata table. Returns the places of the items to read: every item
/// but the parent locator (whose presence is returned instead).
pub fn parse_table(raw: &[u8], region_len: u64) -> Result<(Vec<ItemPlace>, bool), VhdxError> {
    let bad = |s: &str| VhdxError::BadMetadataTable(s.to_string());
    if &raw[..8] != b"metadata" {
        return Err(bad("no \"metadata\" signature"));
    }
    let count = u16::from_le_bytes([raw[10], raw[11]]);
    if count > MAX_ENTRIES {
        return Err(bad("more than 2047 entries (the format's limit)"));
    }
    let mut found: [Option<ItemPlace>; ITEMS.len()] = [None; ITEMS.len()];
    for i in 0..count as usize {
        let e = &raw[32 + 32 * i..32 + 32 * (i + 1)];
        let id = Guid::read(e);
        let offset = u32_at(e, 16) as u64;
        let length = u32_at(e, 20) as u64;
        let required = u32_at(e, 24) & 4 != 0;
        let Some(item) = ITEMS.iter().copied().find(|it| it.guid() == id) else {
            if required {
                return Err(VhdxError::UnknownRequiredMetadata(id.to_string()));
            }
            continue;
        };
        let slot = &mut found[item.index()];
        if slot.is_some() {
            return Err(VhdxError::BadMetadataTable(format!(
                "the {} item is listed twice",
                item.name()
            )));
        }
        let bad_item = |reason: String| VhdxError::BadMetadataItem {
            item: item.name(),
            reason,
        };
        if let Some(want) = item.len() {
            if length != want {
                return Err(bad_item(format!(
                    "its length is {length} bytes, not {want}"
                )));
            }
        }
        if item != Item::ParentLocator && (offset < TABLE_LEN || offset + length > region_len) {
            return Err(bad_item(format!(
                "its offset {offset:#x} (length {length}) is not inside the metadata region \
                 past the table (region length {region_len:#x})"
            )));
        }
        *slot = Some(ItemPlace {
            item,
            offset,
            length,
        });
    }
    let has_locator = found[Item::ParentLocator.index()].is_some();
    let mut places = Vec::new();
    for item in ITEMS {
        match found[item.index()] {
            Some(place) if item != Item::ParentLocator => places.push(place),
            None if item != Item::ParentLocator => {
                return Err(VhdxError::BadMetadataItem {
                    item: item.name(),
                    reason: "it is missing from the metadata table".into(),
                })
            }
            _ => {}
        }
    }
    places.sort_by_key(|p| p.offset);
    for pair in places.windows(2) {
        if pair[0].offset + pair[0].length > pair[1].offset {
            return Err(VhdxError::BadMetadataTable(format!(
                "the {} and {} items overlap",
                pair[0].item.name(),
                pair[1].item.name()
            )));
        }
    }
    Ok((places, has_locator))
}

/// What the metadata says about the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parameters {
    /// Payload block size.
    pub block_size: u64,
    /// LeaveBlocksAllocated: a fixed disk.
    pub fixed: bool,
    /// Virtual disk size.
    pub virtual_size: u64,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u64,
    /// Physical sector size (as stored; not used for the mapping).
    pub physical_sector_size: u64,
}

impl Parameters {
    /// Decodes and checks the items; `value(item)` gives each item's bytes (of the
    /// length [`parse_table`] checked).
    pub fn decode(
        value: impl Fn(Item) -> Vec<u8>,
        has_locator: bool,
    ) -> Result<Parameters, VhdxError> {
        let fp = value(Item::FileParameters);
        let block_size = u32_at(&fp, 0) as u64;
        let flags = u32_at(&fp, 4);
        if flags & 2 != 0 {
            return Err(VhdxError::Differencing {
                locator: has_locator,
            });
        }
        let bad = |item: Item, reason: String| VhdxError::BadMetadataItem {
            item: item.name(),
            reason,
        };
        if !block_size.is_power_of_two() || !BLOCK_SIZE_RANGE.contains(&block_size) {
            return Err(bad(
                Item::FileParameters,
                format!("block size {block_size} is not a power of two from 1 MiB to 256 MiB"),
            ));
        }
        let logical = u32_at(&value(Item::LogicalSectorSize), 0) as u64;
        if logical != 512 && logical != 4096 {
            return Err(bad(
                Item::LogicalSectorSize,
                format!("{logical} is neither 512 nor 4096"),
            ));
        }
        let physical = u32_at(&value(Item::PhysicalSectorSize), 0) as u64;
        let size_bytes = value(Item::VirtualDiskSize);
        let virtual_size = u64::from_le_bytes(size_bytes[..8].try_into().expect("8 bytes"));
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(bad(
                Item::VirtualDiskSize,
                format!("{virtual_size} bytes is more than the format's 64 TiB"),
            ));
        }
        if virtual_size % logical != 0 {
            return Err(bad(
                Item::VirtualDiskSize,
                format!(
                    "{virtual_size} bytes is not a multiple of the logical sector size {logical}"
                ),
            ));
        }
        Ok(Parameters {
            block_size,
            fixed: flags & 1 != 0,
            virtual_size,
            logical_sector_size: logical,
            physical_sector_size: physical,
        })
    }

    /// Payload blocks that share one sector-bitmap block (2^23 sectors' worth).
    pub fn chunk_ratio(&self) -> u64 {
        (1u64 << 23) * self.logical_sector_size / self.block_size
    }

    /// Payload blocks of the disk.
    pub fn blocks(&self) -> u64 {
        self.virtual_size.div_ceil(self.block_size)
    }

    /// BAT entries a non-differencing disk needs: every payload block, and a
    /// sector-bitmap entry after each full chunk.
    pub fn bat_entries(&self) -> u64 {
        let blocks = self.blocks();
        if blocks == 0 {
            return 0;
        }
        blocks + (blocks - 1) / self.chunk_ratio()
    }
}
