//! Merging consecutive pieces of a table into runs, so that a table of a thousand
//! contiguous clusters becomes one claim and one sink write (moved here from the
//! qcow2 reader).

/// A run of consecutive guest bytes of one kind.
#[derive(Debug, Clone, Copy)]
pub enum Run {
    /// Zeroes.
    Zero {
        /// First guest byte.
        guest: u64,
        /// Length.
        len: u64,
    },
    /// Data stored contiguously at `host`.
    Data {
        /// First guest byte.
        guest: u64,
        /// Host offset of the first byte.
        host: u64,
        /// Length.
        len: u64,
    },
}

/// Merges consecutive pieces into runs.
#[derive(Debug, Default)]
pub struct RunBuilder {
    current: Option<Run>,
}

impl RunBuilder {
    /// Adds a piece; returns the previous run when the piece does not extend it.
    pub fn push(&mut self, next: Run) -> Option<Run> {
        match (&mut self.current, next) {
            (Some(Run::Zero { guest, len }), Run::Zero { guest: g, len: l })
                if *guest + *len == g =>
            {
                *len += l;
                None
            }
            (
                Some(Run::Data { guest, host, len }),
                Run::Data {
                    guest: g,
                    host: h,
                    len: l,
                },
            ) if *guest + *len == g && *host + *len == h => {
                *len += l;
                None
            }
            _ => self.current.replace(next),
        }
    }

    /// The run being built, if any.
    pub fn take(&mut self) -> Option<Run> {
        self.current.take()
    }
}
