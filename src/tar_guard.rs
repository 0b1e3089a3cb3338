//! A bound on what the `tar` crate may read between two entries.
//!
//! Before it yields an entry, the tar crate reads the entry's metadata: the
//! header block, and also whole GNU long-name and long-link bodies, PAX
//! extended headers and chains of GNU sparse-map blocks, each into memory and
//! each as long as the archive says. A hostile archive can claim gigabytes
//! there (a few kilobytes once compressed) and exhaust memory before any entry
//! comes out. Tar readers here wrap their input in a [`GuardedReader`] and
//! take entries with [`HeaderBudget::next_entry`], which limits the reads
//! that find an entry to [`METADATA_LIMIT`] bytes (more is a read error) and
//! lifts the limit for the entry's body.
//! The caller must read every entry's body to its end before asking for the
//! next one, so that skipping a body is not counted as metadata.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most bytes of metadata (headers, long names, PAX records, sparse maps)
/// read for one entry. Real archives need a few kilobytes.
pub const METADATA_LIMIT: u64 = 1 << 20;

/// The switch shared between a tar reader's loop and its input.
#[derive(Debug, Clone, Default)]
pub struct HeaderBudget {
    remaining: Arc<AtomicU64>,
}

impl HeaderBudget {
    /// A budget that starts unlimited.
    pub fn new() -> Self {
        let budget = HeaderBudget::default();
        budget.inside_entry();
        budget
    }

    /// Wraps `input` so that its reads are charged to this budget.
    pub fn guard<R: Read>(&self, input: R) -> GuardedReader<R> {
        GuardedReader {
            inner: input,
            remaining: self.remaining.clone(),
        }
    }

    /// The next entry of `entries`, its metadata read within
    /// [`METADATA_LIMIT`] bytes; the entry's body (and whatever is read after
    /// the last entry) is not limited.
    pub fn next_entry<'a, R: Read>(
        &self,
        entries: &mut tar::Entries<'a, R>,
    ) -> Option<io::Result<tar::Entry<'a, R>>> {
        self.remaining.store(METADATA_LIMIT, Ordering::Relaxed);
        let entry = entries.next();
        self.inside_entry();
        entry
    }

    /// The next reads are an entry's body (or the archive's tail): unlimited.
    fn inside_entry(&self) {
        self.remaining.store(u64::MAX, Ordering::Relaxed);
    }
}

/// A reader whose reads are charged to a [`HeaderBudget`].
#[derive(Debug)]
pub struct GuardedReader<R> {
    inner: R,
    remaining: Arc<AtomicU64>,
}

impl<R: Read> Read for GuardedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.remaining.load(Ordering::Relaxed);
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "tar entry metadata (header, long name, PAX records or sparse map) \
                     larger than {METADATA_LIMIT} bytes"
                ),
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..want])?;
        if left != u64::MAX {
            self.remaining.store(left - got as u64, Ordering::Relaxed);
        }
        Ok(got)
    }
}

/// Reads the rest of `entry` (a body the caller did not want), so that the
/// next header is read within the metadata budget.
pub fn skip_body(entry: &mut impl Read) -> io::Result<u64> {
    io::copy(entry, &mut io::sink())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar whose first entry is a GNU long name of `name_len` bytes.
    fn long_name_tar(name_len: usize) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        let name = "n".repeat(name_len);
        builder
            .append_data(&mut header, name, &b"data"[..])
            .expect("builder");
        builder.into_inner().unwrap()
    }

    fn entry_count(bytes: &[u8]) -> io::Result<usize> {
        let budget = HeaderBudget::new();
        let mut archive = tar::Archive::new(budget.guard(bytes));
        let mut entries = archive.entries()?;
        let mut count = 0;
        while let Some(entry) = budget.next_entry(&mut entries) {
            skip_body(&mut entry?)?;
            count += 1;
        }
        Ok(count)
    }

    #[test]
    fn ordinary_long_names_pass() {
        assert_eq!(entry_count(&long_name_tar(4000)).unwrap(), 1);
    }

    #[test]
    fn a_long_name_beyond_the_limit_is_an_error_not_an_allocation() {
        let error = entry_count(&long_name_tar(METADATA_LIMIT as usize + 10_000)).unwrap_err();
        assert!(error.to_string().contains("metadata"), "{error}");
    }

    #[test]
    fn bodies_are_not_counted() {
        let mut builder = tar::Builder::new(Vec::new());
        for name in ["a.bin", "b.bin"] {
            let mut header = tar::Header::new_gnu();
            let body = vec![1u8; 3 << 20];
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, &body[..]).unwrap();
        }
        assert_eq!(entry_count(&builder.into_inner().unwrap()).unwrap(), 2);
    }
}
