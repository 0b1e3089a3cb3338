//! http source (stub: being written).

use std::io::Read;
use std::sync::Arc;

use super::SourceOptions;
use crate::progress::Progress;

/// Errors of the http source.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not built yet.
    #[error("http sources are not supported yet")]
    NotSupported,
}

/// Opens `spec`.
pub fn open(
    _spec: &str,
    _options: &SourceOptions,
    _progress: &Arc<Progress>,
) -> Result<Box<dyn Read + Send>, HttpError> {
    Err(HttpError::NotSupported)
}
