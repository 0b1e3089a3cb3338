//! VHDX checksums: CRC-32C (Castagnoli) over a structure with its own checksum
//! field counted as zeroes (headers, region tables, log entries).

/// CRC-32C of `bytes` with the four bytes at `field` taken as zero.
pub fn crc32c_without_field(bytes: &[u8], field: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..field]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[field + 4..])
}

/// The little-endian u32 stored at `field`.
pub fn stored_checksum(bytes: &[u8], field: usize) -> u32 {
    u32::from_le_bytes(bytes[field..field + 4].try_into().expect("4 bytes"))
}

/// True when the checksum at `field` matches the rest of `bytes`.
pub fn checksum_matches(bytes: &[u8], field: usize) -> bool {
    stored_checksum(bytes, field) == crc32c_without_field(bytes, field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_counts_as_zero() {
        let mut block = vec![7u8; 64];
        let crc = crc32c_without_field(&block, 4);
        block[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(checksum_matches(&block, 4));
        block[9] ^= 1;
        assert!(!checksum_matches(&block, 4));
        // CRC-32C check value ("123456789" -> E3069283).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }
}
