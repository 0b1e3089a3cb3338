//! Directories of CA certificates (CDI mounts a ConfigMap at `/certs` and
//! `/proxycerts`: one file per key, plus `..data`-style entries to skip).

use std::path::{Path, PathBuf};

/// The regular, non-hidden files of `dir`, sorted, optionally only those
/// named `*.crt` or `*.pem`.
pub fn certificate_files(dir: &Path, only_crt_and_pem: bool) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                !n.starts_with('.')
                    && (!only_crt_and_pem || n.ends_with(".crt") || n.ends_with(".pem"))
            }) && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_entries_and_directories_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.crt", "a.pem", "ca-bundle", ".hidden.crt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        let names = |only| -> Vec<String> {
            certificate_files(dir.path(), only)
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(false), ["a.pem", "b.crt", "ca-bundle"]);
        assert_eq!(names(true), ["a.pem", "b.crt"]);
    }
}
