//! Finding the non-zero parts of a buffer, at a fixed block granularity aligned
//! to absolute guest offsets, so that runs of zeroes become holes.

/// Granularity of zero detection: 4 KiB, the usual filesystem block.
pub const ZERO_BLOCK: u64 = 4096;

/// True when every byte of `bytes` is zero. Checks 64 bytes per step without
/// early exit inside a step, which the compiler turns into vector code.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|b| *b == 0)
}

/// Calls `write(offset_in_buf, len)` for each maximal run of blocks of `buf`
/// (which starts at guest offset `base`) that are not all zero. Blocks are
/// aligned to multiples of [`ZERO_BLOCK`] in guest offsets; the first and last
/// may be partial.
pub fn for_each_nonzero_run<E>(
    buf: &[u8],
    base: u64,
    mut write: impl FnMut(usize, usize) -> Result<(), E>,
) -> Result<(), E> {
    let mut run_start: Option<usize> = None;
    let mut at = 0usize;
    while at < buf.len() {
        let guest = base + at as u64;
        let block_end = ((guest / ZERO_BLOCK + 1) * ZERO_BLOCK - base) as usize;
        let end = block_end.min(buf.len());
        let zero = is_zero(&buf[at..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                write(start, at - start)?;
                run_start = None;
            }
            _ => {}
        }
        at = end;
    }
    if let Some(start) = run_start {
        write(start, buf.len() - start)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(buf: &[u8], base: u64) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for_each_nonzero_run::<()>(buf, base, |s, l| {
            out.push((s, l));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn zero_blocks_are_skipped_and_neighbours_merged() {
        let mut buf = vec![0u8; 5 * 4096];
        buf[10] = 1;
        buf[4096 + 4095] = 1;
        buf[4 * 4096] = 1;
        assert_eq!(runs(&buf, 0), vec![(0, 8192), (16384, 4096)]);
    }

    #[test]
    fn blocks_follow_absolute_guest_alignment() {
        let mut buf = vec![0u8; 8192];
        buf[100] = 1; // guest 2148: in block 0..4096 (partial, buf 0..2048)
        assert_eq!(runs(&buf, 2048), vec![(0, 2048)]);
        buf[100] = 0;
        buf[5000] = 1; // guest 7048: block 4096..8192 = buf 2048..6144
        assert_eq!(runs(&buf, 2048), vec![(2048, 4096)]);
    }

    #[test]
    fn all_zero_and_empty_buffers_write_nothing() {
        assert!(runs(&[0u8; 10000], 7).is_empty());
        assert!(runs(&[], 0).is_empty());
        assert!(is_zero(&[]));
        assert!(!is_zero(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 9
        ]));
    }
}
