//! A sink for unit tests: extents land in a flat buffer of the virtual size, so a
//! test can compare the whole disk with what it expects.

use super::{ExtentSink, SinkError, SinkSummary};
use crate::extent::{Extent, ExtentKind};

/// Records extents into a flat buffer of the virtual size.
#[derive(Default, Debug)]
pub struct MemorySink {
    /// The disk as written; bytes never written read 0xEE.
    pub disk: Vec<u8>,
    /// `set_size` was called (the sink was touched).
    pub sized: bool,
}

impl ExtentSink for MemorySink {
    fn set_size(&mut self, size: u64) -> Result<(), SinkError> {
        self.sized = true;
        // Not zero: zero extents must really be written. Sizes beyond what a
        // test image needs are only bounds-checked.
        if size <= 1 << 30 {
            self.disk = vec![0xEE; size as usize];
        }
        Ok(())
    }
    fn write(&mut self, extent: Extent) -> Result<(), SinkError> {
        let at = extent.guest_offset as usize;
        if self.disk.is_empty() {
            return Ok(());
        }
        match extent.kind {
            ExtentKind::Data(b) => self.disk[at..at + b.len()].copy_from_slice(&b),
            ExtentKind::Zero(n) => self.disk[at..at + n as usize].fill(0),
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<SinkSummary, SinkError> {
        Ok(SinkSummary::default())
    }
}
