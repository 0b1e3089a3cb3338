//! Unit tests of the VHD reader on hand-built images.
