//! OVA: a tar of an `.ovf` descriptor followed by the disks it lists (how
//! VMware and VirtualBox export a VM). An OVA is a container, not a disk
//! format: [`read_disk`] finds the one disk to convert and hands its bytes, as
//! a stream of their own, to the caller, which probes them with the format
//! registry like any image (so the disk may be a VMDK, a VDI, qcow2, raw ...).
//! This module does not know the registry (the pipeline wires the two), so no
//! import cycle arises.
//!
//! An OVA with one disk converts that disk; with several it is refused naming
//! them, unless the caller names one (`--ova-disk NAME`). Nothing an OVA names
//! is opened on the host: the descriptor's `href`s are only compared with tar
//! member names, and the disk streams from the tar without a temporary copy.
//!
//! - `descriptor`: the disks an `.ovf` lists.
//! - `pump`: the tar reader, on its own thread, sending the disk's bytes.
//! - `error`: every OVA-level refusal.

mod descriptor;
mod error;
mod pump;
#[cfg(test)]
mod tests;

pub use error::OvaError;

use crate::stream::ChunkStream;

/// The disk an OVA yields.
#[derive(Debug, Clone)]
pub struct OvaDisk {
    /// The disk's file name (the tar member and the descriptor's `href`).
    pub name: String,
    /// Bytes of the member.
    pub size: u64,
    /// Disks the descriptor lists.
    pub disks_in_descriptor: usize,
}

/// True when `head` starts a tar (ustar magic at 257) whose first member's name
/// ends in `.ovf`.
pub fn probe(head: &[u8]) -> bool {
    if head.len() < 512 || !head[257..].starts_with(b"ustar") {
        return false;
    }
    let name = &head[..100];
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(100)];
    name.to_ascii_lowercase().ends_with(b".ovf")
}

/// Reads the OVA from `stream` up to its chosen disk (`choice`, or the only
/// one), and runs `read` on a stream of that disk's bytes (the tar is read on a
/// scoped thread meanwhile). Returns `read`'s result, unless the OVA itself is
/// at fault (no disk, several, a truncated tar ...): then that error, since
/// what `read` saw was its consequence.
pub fn read_disk<T>(
    stream: &mut ChunkStream,
    choice: Option<&str>,
    read: impl FnOnce(&mut ChunkStream, &OvaDisk) -> T,
) -> Result<T, OvaError> {
    let (found_tx, found_rx) = std::sync::mpsc::sync_channel(1);
    let (chunks_tx, mut disk_stream) = ChunkStream::channel();
    std::thread::scope(|scope| {
        let tar = std::thread::Builder::new()
            .name("ova".into())
            .spawn_scoped(scope, move || {
                pump::pump(stream, choice, found_tx, chunks_tx)
            })
            .expect("spawning the OVA thread");
        let outcome = found_rx.recv().ok().map(|disk| {
            tracing::info!(disk = %disk.name, size = disk.size, "OVA disk");
            read(&mut disk_stream, &disk)
        });
        // The disk's reader is done: a pump still sending sees the stream gone.
        drop(disk_stream);
        let pumped = tar.join().expect("the OVA thread panicked")?;
        match (outcome, pumped) {
            (Some(result), _) => Ok(result),
            // The pump found no disk, yet ended well: it always sends one first.
            (None, _) => Err(OvaError::Empty),
        }
    })
}
