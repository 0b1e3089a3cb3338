//! The VHDX log, read only to decide whether it must be replayed, the way qemu
//! decides it: when the current header's log GUID is non-zero, every 4 KiB sector of
//! the (circular) log is tried as the start of an entry; an entry whose header is
//! well formed, carries that GUID and whose CRC-32C matches means the image needs a
//! replay, and is refused (qemu refuses to open it read-only). A well-formed entry
//! header with a malformed descriptor makes qemu fail the open too. No valid entry:
//! the log is stale, and the image reads as its BAT says.
//!
//! Replaying in a stream would mean patching BAT, metadata and data ranges that may
//! already have passed, before trusting them; so it is not done.

use super::checksum::crc32c_without_field;
use super::error::VhdxError;
use super::guid::Guid;

/// Log sector size: entries and their parts are laid out in 4 KiB units.
const SECTOR: usize = 4096;
/// An entry header's length.
const ENTRY_HEADER_LEN: usize = 64;
/// A descriptor's length.
const DESCRIPTOR_LEN: usize = 32;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The circular log: sector `i` of an entry starting at `start` is at
/// `(start + i * SECTOR) % len`.
struct CircularLog<'a> {
    bytes: &'a [u8],
}

impl CircularLog<'_> {
    fn sector(&self, start: usize, i: usize) -> &[u8] {
        let at = (start + i * SECTOR) % self.bytes.len();
        &self.bytes[at..at + SECTOR]
    }
}

/// Sectors the header and `count` descriptors take, as qemu counts them.
fn descriptor_sectors(count: u32) -> usize {
    (count as usize + 1).div_ceil(SECTOR / DESCRIPTOR_LEN)
}

/// Refuses a log that holds an entry to replay (or a corrupt one qemu would fail
/// on). `log` is the whole log region, a non-empty multiple of 4 KiB.
pub fn check_log(log: &[u8], log_guid: &Guid) -> Result<(), VhdxError> {
    if log.is_empty() || log.len() % SECTOR != 0 {
        return Ok(());
    }
    let circular = CircularLog { bytes: log };
    for start in (0..log.len()).step_by(SECTOR) {
        let hdr = &log[start..start + ENTRY_HEADER_LEN];
        let entry_length = u32_at(hdr, 8) as usize;
        let sequence = u64_at(hdr, 16);
        let count = u32_at(hdr, 24);
        let well_formed = &hdr[..4] == b"loge"
            && entry_length <= log.len()
            && entry_length % SECTOR == 0
            && sequence != 0
            && Guid::read(&hdr[32..]) == *log_guid
            && (count as usize) * DESCRIPTOR_LEN <= entry_length;
        if !well_formed {
            continue;
        }
        let desc_sectors = descriptor_sectors(count);
        let mut descriptors = Vec::with_capacity(desc_sectors * SECTOR);
        for i in 0..desc_sectors {
            descriptors.extend_from_slice(circular.sector(start, i));
        }
        for index in 0..count {
            let at = ENTRY_HEADER_LEN + index as usize * DESCRIPTOR_LEN;
            let valid = descriptors
                .get(at..at + DESCRIPTOR_LEN)
                .is_some_and(|d| descriptor_is_valid(d, sequence));
            if !valid {
                return Err(VhdxError::BadLogDescriptor {
                    at: start as u64,
                    index,
                });
            }
        }
        let mut crc = crc32c_without_field(&descriptors, 4);
        let total_sectors = entry_length / SECTOR;
        for i in desc_sectors..total_sectors.max(desc_sectors) {
            crc = crc32c::crc32c_append(crc, circular.sector(start, i));
        }
        if crc == u32_at(hdr, 4) {
            return Err(VhdxError::LogNeedsReplay {
                sequence,
                at: start as u64,
            });
        }
    }
    Ok(())
}

/// A data descriptor (`desc`) or zero descriptor (`zero`) of entry `sequence`.
fn descriptor_is_valid(d: &[u8], sequence: u64) -> bool {
    if u64_at(d, 24) != sequence || u64_at(d, 16) % SECTOR as u64 != 0 {
        return false;
    }
    match &d[..4] {
        b"zero" => u64_at(d, 8) % SECTOR as u64 == 0,
        b"desc" => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: Guid = Guid::new(1, 2, 3, 4);

    /// A log of `sectors` sectors with one entry at sector `at`: one zero
    /// descriptor, one data sector.
    fn log_with_entry(sectors: usize, at: usize, guid: Guid) -> Vec<u8> {
        let mut log = vec![0u8; sectors * SECTOR];
        let mut entry = vec![0u8; 2 * SECTOR];
        entry[..4].copy_from_slice(b"loge");
        entry[8..12].copy_from_slice(&(2 * SECTOR as u32).to_le_bytes());
        entry[16..24].copy_from_slice(&7u64.to_le_bytes());
        entry[24..28].copy_from_slice(&1u32.to_le_bytes());
        entry[32..48].copy_from_slice(&guid.0);
        let d = &mut entry[64..96];
        d[..4].copy_from_slice(b"zero");
        d[8..16].copy_from_slice(&(SECTOR as u64).to_le_bytes());
        d[16..24].copy_from_slice(&(8u64 << 20).to_le_bytes());
        d[24..32].copy_from_slice(&7u64.to_le_bytes());
        entry[SECTOR..].fill(0x5a);
        let crc = crc32c_without_field(&entry, 4);
        entry[4..8].copy_from_slice(&crc.to_le_bytes());
        // Placed circularly, so an entry in the last sector wraps.
        for (i, sector) in entry.chunks(SECTOR).enumerate() {
            let s = (at + i) % sectors;
            log[s * SECTOR..(s + 1) * SECTOR].copy_from_slice(sector);
        }
        log
    }

    #[test]
    fn active_entry_needs_replay() {
        let log = log_with_entry(8, 3, GUID);
        assert!(matches!(
            check_log(&log, &GUID),
            Err(VhdxError::LogNeedsReplay { sequence: 7, at }) if at == 3 * SECTOR as u64
        ));
    }

    #[test]
    fn entry_wrapping_around_the_end_is_found() {
        let log = log_with_entry(8, 7, GUID);
        assert!(matches!(
            check_log(&log, &GUID),
            Err(VhdxError::LogNeedsReplay { .. })
        ));
    }

    #[test]
    fn other_guid_or_bad_crc_is_stale() {
        let log = log_with_entry(8, 0, Guid::new(9, 9, 9, 9));
        assert!(check_log(&log, &GUID).is_ok());
        let mut log = log_with_entry(8, 0, GUID);
        log[SECTOR + 10] ^= 1;
        assert!(check_log(&log, &GUID).is_ok());
        assert!(check_log(&vec![0; 16 * SECTOR], &GUID).is_ok());
    }

    #[test]
    fn bad_descriptor_is_corrupt() {
        let mut log = log_with_entry(8, 0, GUID);
        log[64..68].copy_from_slice(b"junk");
        assert!(matches!(
            check_log(&log, &GUID),
            Err(VhdxError::BadLogDescriptor { index: 0, .. })
        ));
    }
}
