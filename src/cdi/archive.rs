//! `IMPORTER_CONTENTTYPE=archive`: a tar stream (optionally compressed)
//! unpacked into `/data`, as CDI does with `tar --no-same-owner`, but without
//! trusting the archive: no entry may land outside `/data` (absolute paths,
//! `..`, and paths through symlinks are refused by the tar crate's
//! `unpack_in`), device nodes and FIFOs are skipped, ownership is never
//! changed, and a corrupt or truncated archive is an error.

use std::io::Read;
use std::path::Path;

use tar::EntryType;

/// Why an archive could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or decoding the stream failed.
    #[error("reading the archive: {0}")]
    Read(#[source] std::io::Error),
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

/// Unpacks the tar stream `input` into `dir`.
pub fn unpack(input: impl Read, dir: &Path) -> Result<Unpacked, ArchiveError> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_ownerships(false);
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut done = Unpacked::default();
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let path = entry.path_bytes();
        let path = String::from_utf8_lossy(&path).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::Block | EntryType::Char | EntryType::Fifo) {
            tracing::warn!("skipping device node or FIFO {path:?} in the archive");
            done.skipped += 1;
            continue;
        }
        // false: the entry's path leads outside `dir`; it is skipped.
        let inside = entry
            .unpack_in(dir)
            .map_err(|source| ArchiveError::Unpack {
                path: path.clone(),
                source,
            })?;
        if inside {
            done.entries += 1;
        } else {
            tracing::warn!("skipping {path:?}: it leads outside the target directory");
            done.skipped += 1;
        }
    }
    // The whole stream must be read: a truncated tar shows only here.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(ArchiveError::Read)?;
    Ok(done)
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
}
