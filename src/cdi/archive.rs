//! `IMPORTER_CONTENTTYPE=archive`: a tar stream (optionally compressed)
//! unpacked into `/data`, as CDI does with `tar --no-same-owner`, but without
//! trusting the archive: no entry may land outside `/data` (absolute paths,
//! `..`, and paths through symlinks are refused by the tar crate's
//! `unpack_in`), device nodes and FIFOs are skipped, ownership is never
//! changed, setuid/setgid/sticky and group/other write bits are dropped,
//! directory modes are applied last (a read-only directory still gets its
//! files), entry metadata is bounded (`tar_guard`), and a corrupt or
//! truncated archive is an error.
//!
//! Before success is reported everything written is durable: every file and
//! directory unpacked (and the directories holding them, up to `/data`) is
//! fsync'd, then the whole file system is flushed with `syncfs`.

use std::collections::BTreeSet;
use std::fs::Permissions;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::tar_guard::{skip_body, HeaderBudget};

/// Why an archive could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or decoding the stream failed.
    #[error("reading the archive: {0}")]
    Read(#[source] std::io::Error),
    /// What was unpacked could not be made durable.
    #[error("syncing {path}: {source}")]
    Sync {
        /// The file or directory being synced.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An entry could not be written.
    #[error("unpacking {path}: {source}")]
    Unpack {
        /// The entry's path in the archive.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What unpacking did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written.
    pub entries: u64,
    /// Entries skipped: device nodes, FIFOs, or paths leading out of the target.
    pub skipped: u64,
}

/// Permission bits never taken from an archive: setuid, setgid, sticky, and
/// group/other write (what CDI's `tar` under umask 022 leaves out too).
const MODE_MASK: u32 = 0o7022;

/// Unpacks the tar stream `input` into `dir`.
pub fn unpack(input: impl Read, dir: &Path) -> Result<Unpacked, ArchiveError> {
    let budget = HeaderBudget::new();
    let mut archive = tar::Archive::new(budget.guard(input));
    archive.set_preserve_ownerships(false);
    archive.set_preserve_permissions(true);
    archive.set_mask(MODE_MASK);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut done = Unpacked::default();
    // Directory modes are applied at the end, deepest first: a read-only
    // directory must not stop its own files from being written.
    let mut directory_modes: Vec<(PathBuf, u32)> = Vec::new();
    // Everything written, to be synced at the end.
    let mut written: BTreeSet<PathBuf> = BTreeSet::new();
    let mut entries = archive.entries().map_err(ArchiveError::Read)?;
    while let Some(entry) = budget.next_entry(&mut entries) {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let path = entry.path_bytes();
        let path = String::from_utf8_lossy(&path).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::Block | EntryType::Char | EntryType::Fifo) {
            tracing::warn!("skipping device node or FIFO {path:?} in the archive");
            done.skipped += 1;
            skip_body(&mut entry).map_err(ArchiveError::Read)?;
            continue;
        }
        // false: the entry's path leads outside `dir`; it is skipped.
        let unpack_error = |source| ArchiveError::Unpack {
            path: path.clone(),
            source,
        };
        let inside = entry.unpack_in(dir).map_err(unpack_error)?;
        skip_body(&mut entry).map_err(ArchiveError::Read)?;
        if !inside {
            tracing::warn!("skipping {path:?}: it leads outside the target directory");
            done.skipped += 1;
            continue;
        }
        done.entries += 1;
        if let Some(on_disk) = entry.path().ok().and_then(|p| path_on_disk(dir, &p)) {
            written.insert(on_disk);
        }
        if kind == EntryType::Directory {
            if let Some(on_disk) = directory_on_disk(dir, &entry.path().map_err(unpack_error)?) {
                let mode = entry.header().mode().map_err(unpack_error)? & 0o777 & !MODE_MASK;
                std::fs::set_permissions(&on_disk, Permissions::from_mode(mode | 0o700))
                    .map_err(unpack_error)?;
                directory_modes.push((on_disk, mode));
            }
        }
    }
    // The whole stream must be read: a truncated tar shows only here.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(ArchiveError::Read)?;
    // Synced while every directory is still open to its owner.
    sync_written(dir, &written)?;
    for (path, mode) in directory_modes.iter().rev() {
        std::fs::set_permissions(path, Permissions::from_mode(*mode)).map_err(|source| {
            ArchiveError::Unpack {
                path: path.display().to_string(),
                source,
            }
        })?;
    }
    // The mode changes, and anything a skipped fsync missed.
    let root = std::fs::File::open(dir).map_err(|e| sync_error(dir, e))?;
    nix::unistd::syncfs(&root).map_err(|e| sync_error(dir, e.into()))?;
    Ok(done)
}

fn sync_error(path: &Path, source: std::io::Error) -> ArchiveError {
    ArchiveError::Sync {
        path: path.display().to_string(),
        source,
    }
}

/// Makes the unpacked tree durable: each written regular file and directory,
/// every directory between them and `dir`, and `dir` itself (a file this
/// process may not open, mode 0 say, is left to the `syncfs` that follows).
/// Symlinks and hard links are covered by their directory's sync.
fn sync_written(dir: &Path, written: &BTreeSet<PathBuf>) -> Result<(), ArchiveError> {
    let fsync = |path: &Path| match std::fs::File::open(path).and_then(|f| f.sync_all()) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        other => other.map_err(|e| sync_error(path, e)),
    };
    let mut directories: BTreeSet<PathBuf> = BTreeSet::from([dir.to_path_buf()]);
    for path in written {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.is_file() || meta.is_dir() {
            fsync(path)?;
        }
        let mut parent = path.parent();
        while let Some(p) = parent.filter(|p| p.starts_with(dir) && *p != dir) {
            directories.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    for directory in directories.iter().rev() {
        fsync(directory)?;
    }
    Ok(())
}

/// Where an entry with path `entry_path` lands under `dir` (the root and `.`
/// components dropped); `None` for a path with `..`.
fn path_on_disk(dir: &Path, entry_path: &Path) -> Option<PathBuf> {
    let mut on_disk = dir.to_path_buf();
    for component in entry_path.components() {
        match component {
            Component::Normal(part) => on_disk.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    (on_disk != dir).then_some(on_disk)
}

/// Where a directory entry was created under `dir`: its path with the root
/// and `.` components dropped, if that is a real directory (not a symlink).
fn directory_on_disk(dir: &Path, entry_path: &Path) -> Option<PathBuf> {
    let on_disk = path_on_disk(dir, entry_path)?;
    std::fs::symlink_metadata(&on_disk)
        .is_ok_and(|m| m.is_dir())
        .then_some(on_disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with one ordinary file, one `../` escape, one absolute path and
    /// one character device.
    fn hostile_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: EntryType, data: &[u8]| {
            let mut header = tar::Header::new_old();
            let field = &mut header.as_old_mut().name;
            field[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        };
        add("ok.txt", EntryType::Regular, b"fine");
        add("../escape.txt", EntryType::Regular, b"bad");
        add("/abs.txt", EntryType::Regular, b"bad");
        add("dev-null", EntryType::Char, b"");
        builder.into_inner().unwrap()
    }

    #[test]
    fn only_safe_entries_land_inside_the_target() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let done = unpack(&hostile_tar()[..], &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("ok.txt")).unwrap(), b"fine");
        assert!(!outer.path().join("escape.txt").exists());
        assert!(!dir.join("dev-null").exists());
        assert!(done.skipped >= 2, "{done:?}");
        // The absolute path is either refused or stripped into `dir`, never written at /.
        assert!(!Path::new("/abs.txt").exists());
    }

    #[test]
    fn a_truncated_archive_is_an_error() {
        let mut builder = tar::Builder::new(Vec::new());
        let data = vec![7u8; 10_000];
        let mut header = tar::Header::new_gnu();
        header.set_path("big.bin").unwrap();
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, &data[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack(&bytes[..3000], dir.path()).is_err());
    }

    #[test]
    fn special_mode_bits_are_dropped_and_directory_modes_come_last() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: EntryType, mode: u32, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            builder.append_data(&mut header, name, data).unwrap();
        };
        add("ro", EntryType::Directory, 0o555, b"");
        add("ro/inside.txt", EntryType::Regular, 0o644, b"inside");
        add("suid", EntryType::Regular, 0o4777, b"#!/bin/sh\n");
        let tar = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let done = unpack(&tar[..], dir.path()).unwrap();
        assert_eq!(done.entries, 3);
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(
            std::fs::read(dir.path().join("ro/inside.txt")).unwrap(),
            b"inside"
        );
        assert_eq!(mode("ro"), 0o555);
        assert_eq!(mode("suid"), 0o755);
    }

    #[test]
    fn a_checksum_mismatch_is_still_known_after_the_tar_reader() {
        use crate::source::checksum::{is_checksum_mismatch, Expected, VerifyingReader};
        let tar = hostile_tar();
        let wrong = Expected::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let error = unpack(VerifyingReader::new(&tar[..], wrong), dir.path()).unwrap_err();
        assert!(is_checksum_mismatch(&error), "{error}");
        // A tar whose own header checksum is wrong says "checksum mismatch"
        // too, but it is a corrupt archive, not a failed download check.
        let mut corrupt = tar.clone();
        corrupt[0] ^= 0x55;
        let error = unpack(&corrupt[..], dir.path()).unwrap_err();
        assert!(!is_checksum_mismatch(&error), "{error}");
    }
}
