//! A sink that writes nothing: used by `diskimport info` to walk an image, and by
//! benchmarks to measure readers alone. It still enforces the size bound.

use super::{ExtentSink, SinkError, SinkSummary};
use crate::extent::{Extent, ExtentKind};

/// Counts extents and drops them.
#[derive(Debug, Default)]
pub struct NullSink {
    size: Option<u64>,
    summary: SinkSummary,
}

impl ExtentSink for NullSink {
    fn set_size(&mut self, size: u64) -> Result<(), SinkError> {
        self.size = Some(size);
        self.summary.size = size;
        Ok(())
    }

    fn write(&mut self, extent: Extent) -> Result<(), SinkError> {
        if let Some(size) = self.size {
            if extent.end() > size {
                return Err(SinkError::OutOfRange {
                    offset: extent.guest_offset,
                    len: extent.len(),
                    size,
                });
            }
        }
        match extent.kind {
            ExtentKind::Data(b) => self.summary.bytes_written += b.len() as u64,
            ExtentKind::Zero(n) => self.summary.bytes_zero += n,
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<SinkSummary, SinkError> {
        Ok(self.summary)
    }
}
