//! The tar side of an OVA, run on its own (scoped) thread: it reads the outer
//! stream with the `tar` crate (entry metadata bounded by `tar_guard`), takes
//! the descriptor from the first member, picks the disk, skips members until
//! that disk's, and sends its bytes as chunks to the disk's own
//! [`ChunkStream`](crate::stream::ChunkStream). No member is ever written to the
//! host: the disk streams, the other members are skipped.

use std::io::{self, Read};
use std::sync::mpsc::SyncSender;

use bytes::{Bytes, BytesMut};

use super::descriptor::{self, DescribedDisk};
use super::error::OvaError;
use super::OvaDisk;
use crate::stream::CHUNK_SIZE;
use crate::tar_guard::{skip_body, HeaderBudget};

/// Largest descriptor read (real ones are a few tens of kilobytes).
pub const DESCRIPTOR_LIMIT: u64 = 1 << 20;

/// How the pump ended.
pub enum Pumped {
    /// Every byte of the disk was sent, then the end marker.
    Sent,
    /// The disk's reader stopped listening (it failed or finished early): not
    /// the tar's fault; the reader's own result tells.
    ReaderGone,
}

/// A member's name as the tar stores it, without a leading `./`.
fn member_name(entry: &tar::Entry<'_, impl Read>) -> String {
    let raw = entry.path_bytes();
    let name = String::from_utf8_lossy(&raw);
    name.trim_start_matches("./").to_string()
}

/// Which disk to convert: the one asked for, or the only one.
fn choose(disks: Vec<DescribedDisk>, choice: Option<&str>) -> Result<DescribedDisk, OvaError> {
    let names = || disks.iter().map(|d| d.href.clone()).collect::<Vec<_>>();
    let chosen = match (choice, disks.len()) {
        (_, 0) => return Err(OvaError::NoDisks),
        (Some(name), _) => disks
            .iter()
            .find(|d| d.href == name)
            .cloned()
            .ok_or_else(|| OvaError::UnknownDisk {
                name: name.to_string(),
                disks: names(),
            })?,
        (None, 1) => disks[0].clone(),
        (None, _) => return Err(OvaError::SeveralDisks { disks: names() }),
    };
    if let Some(compression) = &chosen.compression {
        return Err(OvaError::UnsupportedStorage {
            name: chosen.href,
            how: format!("{compression}-compressed (ovf:compression)"),
        });
    }
    if chosen.chunked {
        return Err(OvaError::UnsupportedStorage {
            name: chosen.href,
            how: "in chunks (ovf:chunkSize)".into(),
        });
    }
    Ok(chosen)
}

/// Reads the OVA from `input`; sends the chosen disk on `found` when its member
/// starts, then its bytes on `chunks`.
pub fn pump(
    input: impl Read,
    choice: Option<&str>,
    found: SyncSender<OvaDisk>,
    chunks: SyncSender<io::Result<Bytes>>,
) -> Result<Pumped, OvaError> {
    let budget = HeaderBudget::new();
    let mut archive = tar::Archive::new(budget.guard(input));
    let mut entries = archive.entries().map_err(OvaError::Tar)?;
    let mut first = budget
        .next_entry(&mut entries)
        .ok_or(OvaError::Empty)?
        .map_err(OvaError::Tar)?;
    let name = member_name(&first);
    if !name.to_ascii_lowercase().ends_with(".ovf") {
        return Err(OvaError::FirstNotDescriptor { name });
    }
    let size = first.size();
    if size > DESCRIPTOR_LIMIT {
        return Err(OvaError::DescriptorTooLarge {
            name,
            size,
            limit: DESCRIPTOR_LIMIT,
        });
    }
    let mut xml = Vec::with_capacity(size as usize);
    (&mut first)
        .take(DESCRIPTOR_LIMIT)
        .read_to_end(&mut xml)
        .map_err(OvaError::Tar)?;
    skip_body(&mut first).map_err(OvaError::Tar)?;
    let disks = descriptor::disks(&xml).map_err(|reason| OvaError::BadDescriptor {
        name: name.clone(),
        reason,
    })?;
    let count = disks.len();
    let chosen = choose(disks, choice)?;
    while let Some(entry) = budget.next_entry(&mut entries) {
        let mut entry = entry.map_err(OvaError::Tar)?;
        if member_name(&entry) != chosen.href {
            skip_body(&mut entry).map_err(OvaError::Tar)?;
            continue;
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_gnu_sparse()) {
            return Err(OvaError::DiskNotRegular {
                name: chosen.href,
                kind: kind.as_byte() as char,
            });
        }
        let size = entry.size();
        let disk = OvaDisk {
            name: chosen.href.clone(),
            size,
            disks_in_descriptor: count,
        };
        if found.send(disk).is_err() {
            return Ok(Pumped::ReaderGone);
        }
        return send_body(&mut entry, &chosen.href, size, &chunks);
    }
    Err(OvaError::DiskMissing { name: chosen.href })
}

/// Sends the member's bytes in chunks, then the end marker; a short member is
/// the tar's truncation, sent as an error so the disk's reader stops too.
fn send_body(
    entry: &mut impl Read,
    name: &str,
    size: u64,
    chunks: &SyncSender<io::Result<Bytes>>,
) -> Result<Pumped, OvaError> {
    let mut got = 0u64;
    loop {
        let mut chunk = BytesMut::zeroed(CHUNK_SIZE);
        let mut filled = 0;
        while filled < CHUNK_SIZE {
            match entry.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = chunks.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(OvaError::Tar(e));
                }
            }
        }
        got += filled as u64;
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        if chunks.send(Ok(chunk.freeze())).is_err() {
            return Ok(Pumped::ReaderGone);
        }
    }
    if got < size {
        let error = OvaError::Truncated {
            name: name.to_string(),
            got,
            size,
        };
        let _ = chunks.send(Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            error.to_string(),
        )));
        return Err(error);
    }
    let _ = chunks.send(Ok(Bytes::new()));
    Ok(Pumped::Sent)
}
