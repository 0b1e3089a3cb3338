//! A real loop device for the block-target tests, over a sparse file filled with
//! random bytes (so nothing reads as zero by accident); detached on drop. Needs
//! root: without it the tests say so, and fail when `CI` is set.

use std::path::PathBuf;
use std::process::Command;

/// A loop device over a sparse file, detached on drop.
pub struct LoopDevice {
    /// The device node.
    pub device: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    /// A device of `size` bytes with `sector` logical sectors, filled with
    /// random bytes so that nothing reads as zero by accident.
    pub fn new(size: u64, sector: u32) -> Option<LoopDevice> {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing.img");
        let file = std::fs::File::create(&backing).unwrap();
        file.set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show", "--sector-size", &sector.to_string()])
            .arg(&backing)
            .output();
        let device = match out {
            Ok(o) if o.status.success() => {
                PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
            }
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                super::skip(&format!("no loop device ({}); run as root", why.trim()));
                return None;
            }
        };
        let dev = LoopDevice { device, _dir: dir };
        let status = Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "status=none", "oflag=direct"])
            .arg(format!("of={}", dev.device.display()))
            .arg(format!("count={}", size >> 20))
            .status()
            .unwrap();
        assert!(status.success(), "filling the device");
        Some(dev)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}
