//! s3 source (stub: being written).

use std::io::Read;
use std::sync::Arc;

use super::SourceOptions;
use crate::progress::Progress;

/// Errors of the s3 source.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// Not built yet.
    #[error("s3 sources are not supported yet")]
    NotSupported,
}

/// Opens `spec`.
pub fn open(
    _spec: &str,
    _options: &SourceOptions,
    _progress: &Arc<Progress>,
) -> Result<Box<dyn Read + Send>, S3Error> {
    Err(S3Error::NotSupported)
}
