//! Fixed VHD: the guest disk followed by one footer sector, with nothing at the
//! start that tells it from raw. The raw reader holds the last 512 bytes of its
//! stream back and asks here, at the end, whether they are a fixed-VHD footer. If
//! so the footer is dropped and the disk sized as `qemu-img convert -f vpc` sizes
//! it (qemu's probe, and so CDI, take a fixed VHD for raw and keep the footer in
//! the disk; this project does not, see README).
//!
//! The raw reader has written the data before the footer by then, so a footer
//! that sizes the disk differently from the data in front of it (qemu would cut
//! the disk or pad it with the footer and zeros) is refused instead.

use super::error::VhdError;
use super::header::{has_footer_cookie, DiskType, Footer, FOOTER_LEN};

/// A fixed VHD recognized by its footer.
#[derive(Debug, Clone)]
pub struct FixedVhd {
    /// The validated footer.
    pub footer: Footer,
}

impl FixedVhd {
    /// The disk size (equal to the data before the footer).
    pub fn disk_size(&self) -> u64 {
        self.footer.disk_size()
    }
}

/// Looks at the last bytes of a raw stream: `Ok(None)` when `tail` (the last 512
/// bytes, fewer in a shorter stream) is not a VHD footer; the fixed VHD when it is
/// a valid fixed footer sizing the disk at `data_len`, the bytes before it; an
/// error when it has the cookie but is broken, differencing, dynamic, or sized
/// differently.
pub fn fixed_vhd_footer(tail: &[u8], data_len: u64) -> Result<Option<FixedVhd>, VhdError> {
    if tail.len() != FOOTER_LEN || !has_footer_cookie(tail) {
        return Ok(None);
    }
    let footer = Footer::parse(tail)?;
    if footer.disk_type != DiskType::Fixed {
        return Err(VhdError::NoFooterCopy);
    }
    let disk_size = footer.disk_size();
    if disk_size != data_len {
        return Err(VhdError::FixedSizeMismatch {
            disk_size,
            size_source: footer.size_source().name(),
            creator: footer.creator_name(),
            data_len,
        });
    }
    Ok(Some(FixedVhd { footer }))
}
