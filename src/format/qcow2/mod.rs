//! qcow2 stub (being written).
/// qcow2 errors.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// placeholder
    #[error("not yet")]
    NotYet,
}
