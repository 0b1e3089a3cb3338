//! Bytes of the stream that no table has claimed yet ("unknown" bytes in
//! `architecture.md`): kept until every table has been read, because a table
//! that arrives later may map them (moved here from the qcow2 reader). Held in memory up to a budget, then
//! appended to a spill file in the scratch directory. Pieces are stored in
//! stream order, so lookups are binary searches.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::error::StreamError;

/// Where unclaimed bytes wait.
pub struct Retained {
    budget: u64,
    /// Where to spill; `None`: spilling is not allowed.
    scratch_dir: Option<PathBuf>,
    /// In-memory pieces: (stream offset, bytes), ascending and disjoint.
    memory: Vec<(u64, Bytes)>,
    memory_bytes: u64,
    spill: Option<Spill>,
    peak_memory: u64,
    spilled_total: u64,
}

/// The spill file and its index: (stream offset, file offset, length).
struct Spill {
    file: File,
    index: Vec<(u64, u64, u64)>,
    len: u64,
}

impl Retained {
    /// An empty store that holds up to `budget` bytes in memory, then spills
    /// into `scratch_dir` (if there is one).
    pub fn new(budget: u64, scratch_dir: Option<&Path>) -> Self {
        Retained {
            budget,
            scratch_dir: scratch_dir.map(Path::to_path_buf),
            memory: Vec::new(),
            memory_bytes: 0,
            spill: None,
            peak_memory: 0,
            spilled_total: 0,
        }
    }

    /// Most bytes held in memory at once.
    pub fn peak_memory(&self) -> u64 {
        self.peak_memory
    }

    /// Bytes written to the spill file in all (also after [`clear`](Self::clear)).
    pub fn spilled(&self) -> u64 {
        self.spilled_total
    }

    /// Keeps `bytes`, which sit at stream `offset` (after everything kept so far).
    pub fn keep(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StreamError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.memory_bytes + bytes.len() as u64 <= self.budget {
            self.memory.push((offset, Bytes::copy_from_slice(bytes)));
            self.memory_bytes += bytes.len() as u64;
            self.peak_memory = self.peak_memory.max(self.memory_bytes);
            return Ok(());
        }
        let Some(dir) = &self.scratch_dir else {
            return Err(StreamError::ScratchRequired {
                budget: self.budget,
            });
        };
        let spill_error = |source| StreamError::Spill {
            dir: dir.display().to_string(),
            source,
        };
        if self.spill.is_none() {
            let file = tempfile::tempfile_in(dir).map_err(spill_error)?;
            tracing::info!(
                "unclaimed image bytes exceed the memory budget of {} bytes: spilling to {}",
                self.budget,
                dir.display()
            );
            self.spill = Some(Spill {
                file,
                index: Vec::new(),
                len: 0,
            });
        }
        let spill = self.spill.as_mut().expect("created above");
        spill
            .file
            .write_all_at(bytes, spill.len)
            .map_err(spill_error)?;
        spill.index.push((offset, spill.len, bytes.len() as u64));
        spill.len += bytes.len() as u64;
        self.spilled_total += bytes.len() as u64;
        Ok(())
    }

    /// Copies out `[start, end)` if every byte of it was kept; `None` otherwise.
    pub fn take(&self, start: u64, end: u64) -> Result<Option<Bytes>, StreamError> {
        let mut out = BytesMut::with_capacity((end - start) as usize);
        let mut at = start;
        while at < end {
            if let Some((piece_start, piece)) =
                find_entry(&self.memory, at, |p| (p.0, p.1.len() as u64))
            {
                let piece_start = *piece_start;
                let from = (at - piece_start) as usize;
                let to = ((end - piece_start) as usize).min(piece.len());
                out.extend_from_slice(&piece[from..to]);
                at = piece_start + to as u64;
                continue;
            }
            let Some(spill) = &self.spill else {
                return Ok(None);
            };
            let Some(&(piece_start, file_off, len)) = find_entry(&spill.index, at, |p| (p.0, p.2))
            else {
                return Ok(None);
            };
            let from = at - piece_start;
            let to = (end - piece_start).min(len);
            let mut buf = vec![0u8; (to - from) as usize];
            spill
                .file
                .read_exact_at(&mut buf, file_off + from)
                .map_err(|source| StreamError::Spill {
                    dir: self
                        .scratch_dir
                        .as_ref()
                        .map_or(String::new(), |d| d.display().to_string()),
                    source,
                })?;
            out.extend_from_slice(&buf);
            at = piece_start + to;
        }
        Ok(Some(out.freeze()))
    }

    /// Drops everything: once every table is read, nothing unclaimed matters.
    pub fn clear(&mut self) {
        self.memory = Vec::new();
        self.memory_bytes = 0;
        self.spill = None;
    }
}

/// The entry whose span `(start, len)` contains `at`.
fn find_entry<T>(entries: &[T], at: u64, span: impl Fn(&T) -> (u64, u64)) -> Option<&T> {
    let idx = entries.partition_point(|e| span(e).0 <= at);
    let candidate = entries.get(idx.checked_sub(1)?)?;
    let (start, len) = span(candidate);
    (at < start + len).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_found_across_memory_and_spill() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Retained::new(10, Some(dir.path()));
        store.keep(100, b"abcdefgh").unwrap();
        store.keep(108, b"ijklmnop").unwrap(); // over budget: spilled
        store.keep(200, b"XYZ").unwrap();
        assert_eq!(store.spilled(), 11);
        assert_eq!(&store.take(104, 112).unwrap().unwrap()[..], b"efghijkl");
        assert_eq!(&store.take(200, 203).unwrap().unwrap()[..], b"XYZ");
        assert!(store.take(115, 120).unwrap().is_none(), "gap 116..200");
        assert!(
            store.take(90, 101).unwrap().is_none(),
            "before the first piece"
        );
        store.clear();
        assert!(store.take(100, 101).unwrap().is_none());
        assert_eq!(store.spilled(), 11, "the total survives clearing");
    }
}
