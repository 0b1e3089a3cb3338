//! How big `/data/disk.img` is made on a Filesystem PVC (contract section 7.2,
//! 7.3): the usable size after the filesystem overhead, and the resize rule
//! (grow to fill, never shrink).

/// `FILESYSTEM_OVERHEAD` parsed: a fraction in [0, 1] with at most three
/// decimals; anything else counts as 0, as CDI's importer does.
pub fn parse_overhead(text: &str) -> f64 {
    let t = text.trim();
    let valid = t == "1"
        || t == "0"
        || (t.starts_with("0.")
            && (3..=5).contains(&t.len())
            && t[2..].chars().all(|c| c.is_ascii_digit()));
    if valid {
        t.parse().unwrap_or(0.0)
    } else {
        0.0
    }
}

/// Usable bytes of a volume: `available / (1 + overhead)`, rounded up to a
/// byte and then down to a MiB, where `available = min(free space, requested)`.
pub fn usable_size(free_space: u64, requested: Option<u64>, overhead: f64) -> u64 {
    let available = requested.map_or(free_space, |r| r.min(free_space));
    let usable = (available as f64 / (1.0 + overhead)).ceil() as u64;
    usable - usable % (1 << 20)
}

/// The size the disk image ends with: the image's own size grown to `target`
/// when that is larger; never shrunk.
pub fn final_disk_size(virtual_size: u64, target: Option<u64>) -> u64 {
    target.map_or(virtual_size, |t| t.max(virtual_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_follows_the_contract_pattern() {
        assert_eq!(parse_overhead("0.06"), 0.06);
        assert_eq!(parse_overhead("0.055"), 0.055);
        assert_eq!(parse_overhead("1"), 1.0);
        assert_eq!(parse_overhead("0"), 0.0);
        assert_eq!(parse_overhead("0.0555"), 0.0, "four decimals are invalid");
        assert_eq!(parse_overhead("6%"), 0.0);
        assert_eq!(parse_overhead(""), 0.0);
    }

    #[test]
    fn usable_size_reserves_the_overhead_and_rounds_to_mib() {
        let gib = 1u64 << 30;
        // 10 GiB requested, plenty free, 6 %: ceil(10 GiB / 1.06) rounded down to MiB.
        let usable = usable_size(100 * gib, Some(10 * gib), 0.06);
        assert_eq!(usable % (1 << 20), 0);
        assert!(usable <= (10 * gib) * 100 / 106 + (1 << 20));
        assert!(usable > (10 * gib) * 100 / 106 - (1 << 20));
        // Less free space than requested: free space wins.
        assert_eq!(usable_size(gib, Some(10 * gib), 0.0), gib);
    }

    #[test]
    fn disks_grow_to_the_target_but_never_shrink() {
        assert_eq!(final_disk_size(100, Some(200)), 200);
        assert_eq!(final_disk_size(300, Some(200)), 300);
        assert_eq!(final_disk_size(300, None), 300);
    }
}
