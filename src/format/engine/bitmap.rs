//! Runs of set and clear bits in a per-block sector bitmap (VHD blocks, VHDX
//! sector bitmaps): a format turns each run into a data or a zero claim. Formats
//! differ only in bit order within a byte, so the order is a parameter.

/// Which bit of a byte is the first unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitOrder {
    /// Bit 7 first (VHD).
    MsbFirst,
    /// Bit 0 first (VHDX).
    LsbFirst,
}

/// One run of equal bits: units `[start, start + len)`, all set or all clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitRun {
    /// First unit of the run.
    pub start: u64,
    /// Units in the run.
    pub len: u64,
    /// Whether the bits are set.
    pub set: bool,
}

/// The runs of the first `units` bits of `bits`, in order. Units past the end of
/// `bits` count as clear.
pub fn bit_runs(bits: &[u8], units: u64, order: BitOrder) -> BitRuns<'_> {
    BitRuns {
        bits,
        units,
        order,
        at: 0,
    }
}

/// Iterator returned by [`bit_runs`].
pub struct BitRuns<'a> {
    bits: &'a [u8],
    units: u64,
    order: BitOrder,
    at: u64,
}

impl BitRuns<'_> {
    fn bit(&self, unit: u64) -> bool {
        let Some(byte) = self.bits.get((unit / 8) as usize) else {
            return false;
        };
        let shift = match self.order {
            BitOrder::MsbFirst => 7 - unit % 8,
            BitOrder::LsbFirst => unit % 8,
        };
        (byte >> shift) & 1 == 1
    }
}

impl Iterator for BitRuns<'_> {
    type Item = BitRun;

    fn next(&mut self) -> Option<BitRun> {
        if self.at >= self.units {
            return None;
        }
        let start = self.at;
        let set = self.bit(start);
        let mut end = start + 1;
        while end < self.units {
            // Whole bytes of the same value are skipped at once.
            if end % 8 == 0 && end + 8 <= self.units {
                let want = if set { 0xFF } else { 0x00 };
                if self.bits.get((end / 8) as usize).copied().unwrap_or(0) == want {
                    end += 8;
                    continue;
                }
            }
            if self.bit(end) != set {
                break;
            }
            end += 1;
        }
        self.at = end;
        Some(BitRun {
            start,
            len: end - start,
            set,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(bits: &[u8], units: u64, order: BitOrder) -> Vec<(u64, u64, bool)> {
        bit_runs(bits, units, order)
            .map(|r| (r.start, r.len, r.set))
            .collect()
    }

    #[test]
    fn msb_first_runs() {
        assert_eq!(
            runs(&[0b1100_0001, 0xFF, 0x00], 24, BitOrder::MsbFirst),
            vec![(0, 2, true), (2, 5, false), (7, 9, true), (16, 8, false)]
        );
    }

    #[test]
    fn lsb_first_runs() {
        assert_eq!(
            runs(&[0b1100_0001], 8, BitOrder::LsbFirst),
            vec![(0, 1, true), (1, 5, false), (6, 2, true)]
        );
    }

    #[test]
    fn all_set_is_one_run_and_units_bound_the_end() {
        assert_eq!(
            runs(&[0xFF; 512], 4096, BitOrder::MsbFirst),
            vec![(0, 4096, true)]
        );
        assert_eq!(runs(&[0xFF; 2], 5, BitOrder::MsbFirst), vec![(0, 5, true)]);
        assert_eq!(runs(&[0xFF], 0, BitOrder::MsbFirst), vec![]);
    }

    #[test]
    fn units_past_the_bitmap_are_clear() {
        assert_eq!(
            runs(&[0xFF], 12, BitOrder::MsbFirst),
            vec![(0, 8, true), (8, 4, false)]
        );
    }
}
