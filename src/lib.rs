//! diskimport: a streaming disk-image importer.
//!
//! The pipeline (see `pipeline`) is Source → [`decode`] → [`format`] reader →
//! [`sink`]. Every stage reads its input once, in order; memory stays bounded
//! whatever the image claims. Errors are typed here and turned into messages and
//! exit codes only by the binary.

pub mod aligned;
pub mod aligned_pool;
pub mod cdi;
pub mod decode;
pub mod error;
pub mod extent;
pub mod format;
pub mod limits;
pub mod piece;
pub mod pipeline;
pub mod progress;
pub mod sink;
pub mod source;
pub mod stages;
pub mod status;
pub mod stream;
pub mod tar_guard;
pub mod tools;
pub mod upload;

pub use error::Error;
pub use extent::{Extent, ExtentKind};
