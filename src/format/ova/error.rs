//! Every way an OVA can be refused: the tar around the disks, the `.ovf`
//! descriptor, and the choice of the disk. What is wrong inside the chosen disk
//! is that disk's format's error.

/// An OVA that is refused or broken.
#[derive(Debug, thiserror::Error)]
pub enum OvaError {
    /// The tar could not be read (a bad header checksum, metadata too large ...).
    #[error("reading the tar: {0}")]
    Tar(#[source] std::io::Error),
    /// The tar has no member.
    #[error("the tar has no members")]
    Empty,
    /// The first member is not the descriptor.
    #[error("the first member is {name:?}, not an .ovf descriptor")]
    FirstNotDescriptor {
        /// Its name.
        name: String,
    },
    /// The descriptor is larger than any real one.
    #[error("the descriptor {name:?} is {size} bytes (limit {limit})")]
    DescriptorTooLarge {
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The descriptor is not well-formed, or its references do not resolve.
    #[error("the descriptor {name:?} is invalid: {reason}")]
    BadDescriptor {
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The descriptor lists no disk.
    #[error("the descriptor lists no disk")]
    NoDisks,
    /// Several disks and no choice.
    #[error("the OVA holds {} disks ({}); choose one with --ova-disk NAME", .disks.len(), .disks.join(", "))]
    SeveralDisks {
        /// The disks' file names.
        disks: Vec<String>,
    },
    /// `--ova-disk` names a disk the descriptor does not list.
    #[error("no disk {name:?} in the OVA (its disks: {})", .disks.join(", "))]
    UnknownDisk {
        /// The name asked for.
        name: String,
        /// The disks' file names.
        disks: Vec<String>,
    },
    /// The chosen disk is stored in a way that is not read.
    #[error("disk {name:?} is stored {how}, which is not read")]
    UnsupportedStorage {
        /// The disk's file name.
        name: String,
        /// "gzip-compressed (ovf:compression)", "in chunks (ovf:chunkSize)".
        how: String,
    },
    /// The chosen disk is not in the tar.
    #[error("disk {name:?} is listed in the descriptor but is not a member of the tar")]
    DiskMissing {
        /// The disk's file name.
        name: String,
    },
    /// The chosen disk's member is not a regular file.
    #[error("the member for disk {name:?} is not a regular file (tar entry type {kind:?})")]
    DiskNotRegular {
        /// The disk's file name.
        name: String,
        /// The tar entry type byte.
        kind: char,
    },
    /// The tar ends inside the chosen disk.
    #[error("the tar is truncated: disk {name:?} ends after {got} of its {size} bytes")]
    Truncated {
        /// The disk's file name.
        name: String,
        /// Bytes present.
        got: u64,
        /// Bytes the tar header declares.
        size: u64,
    },
    /// The chosen disk is itself an OVA.
    #[error("disk {name:?} is itself an OVA; nested OVAs are refused")]
    Nested {
        /// The disk's file name.
        name: String,
    },
}
