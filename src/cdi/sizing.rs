//! How big `/data/disk.img` is made on a Filesystem PVC (contract section 7.2,
//! 7.3): the usable size after the filesystem overhead. The resize rule (grow
//! to fill, never shrink) is applied by the file sink before it publishes the
//! disk (`SparseFileSink::with_final_size`).

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
}
