//! For the sinks' unit tests: an empty file, open for reading and writing, in
//! a temporary directory that lives as long as the test holds it.

use std::fs::File;
use std::path::PathBuf;

/// A new empty file `name` in a fresh temporary directory.
pub fn empty_file(name: &str) -> (tempfile::TempDir, PathBuf, File) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    (dir, path, file)
}
