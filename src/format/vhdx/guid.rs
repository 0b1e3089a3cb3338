//! GUIDs as VHDX stores them (Microsoft mixed-endian: the first three fields
//! little-endian, the last eight bytes as written), and the ones the reader knows:
//! the two regions and the metadata items.

use std::fmt;

/// A GUID in its on-disk byte order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Guid = Guid([0; 16]);

    /// The GUID written `d1-d2-d3-d4` in its canonical text form.
    pub const fn new(d1: u32, d2: u16, d3: u16, d4: u64) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        let d = d4.to_be_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// The 16 bytes at the start of `bytes` (which must hold them).
    pub fn read(bytes: &[u8]) -> Guid {
        Guid(bytes[..16].try_into().expect("16 bytes"))
    }

    /// True for the all-zero GUID.
    pub fn is_zero(&self) -> bool {
        *self == Guid::ZERO
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]])
        )?;
        for (i, byte) in b[8..].iter().enumerate() {
            if i == 2 {
                f.write_str("-")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The block allocation table region.
pub const BAT_REGION: Guid = Guid::new(0x2DC27766, 0xF623, 0x4200, 0x9D64_115E_9BFD_4A08);
/// The metadata region.
pub const METADATA_REGION: Guid = Guid::new(0x8B7CA206, 0x4790, 0x4B9A, 0xB8FE_575F_050F_886E);

/// Metadata item: block size and flags.
pub const FILE_PARAMETERS: Guid = Guid::new(0xCAA16737, 0xFA36, 0x4D43, 0xB3B6_33F0_AA44_E76B);
/// Metadata item: the virtual disk's size.
pub const VIRTUAL_DISK_SIZE: Guid = Guid::new(0x2FA54224, 0xCD1B, 0x4876, 0xB211_5DBE_D83B_F4B8);
/// Metadata item: the virtual disk's identity (SCSI page 83).
pub const VIRTUAL_DISK_ID: Guid = Guid::new(0xBECA12AB, 0xB2E6, 0x4523, 0x93EF_C309_E000_C746);
/// Metadata item: logical sector size.
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::new(0x8141BF1D, 0xA96F, 0x4709, 0xBA47_F233_A8FA_AB5F);
/// Metadata item: physical sector size.
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::new(0xCDA348C7, 0x445D, 0x4471, 0x9CC9_E988_5251_C556);
/// Metadata item: where a differencing disk's parent is.
pub const PARENT_LOCATOR: Guid = Guid::new(0xA8D35F2D, 0xB30B, 0x454D, 0xABF7_D3D8_4834_AB0C);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_in_canonical_form() {
        assert_eq!(
            BAT_REGION.to_string(),
            "2DC27766-F623-4200-9D64-115E9BFD4A08"
        );
        assert_eq!(&BAT_REGION.0[..4], &[0x66, 0x77, 0xC2, 0x2D]);
        assert_eq!(&BAT_REGION.0[8..10], &[0x9D, 0x64]);
    }
}
