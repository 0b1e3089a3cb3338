//! Unit tests of the VMDK reader on hand-built images.
