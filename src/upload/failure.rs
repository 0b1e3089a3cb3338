//! How a failed upload is answered (contract §5.4): capacity problems (an
//! image larger than the volume, ENOSPC, EDQUOT) and client mistakes (a
//! checksum that does not match, a malformed form) are 400, everything else
//! 500, each with CDI's `Saving stream failed: ` body. The class is found
//! from the error's types along its chain of causes (including errors
//! carried inside an `io::Error`), never from the words of a message.

use std::error::Error as StdError;

use hyper::StatusCode;

use crate::error::describe_chain;
use crate::format::engine::{ImageError, StreamError};
use crate::sink::SinkError;
use crate::source::checksum::is_checksum_mismatch;

use super::multipart::FormError;

/// CDI's prefix of every failure body.
pub const PREFIX: &str = "Saving stream failed: ";
/// What CDI adds for capacity problems (its controller keys on it).
pub const CAPACITY: &str = "effective image size is larger than the reported available storage: ";
/// CDI's text when a qcow2 needs scratch space and none is mounted.
pub const SCRATCH_REQUIRED: &str = "scratch space required and none found";

/// An upload's HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 400 or 500.
    pub status: StatusCode,
    /// The response body.
    pub body: String,
}

impl Failure {
    /// A failure answered with `status` and `Saving stream failed: <detail>`.
    pub fn new(status: StatusCode, detail: &str) -> Self {
        Failure {
            status,
            body: format!("{PREFIX}{detail}"),
        }
    }

    /// The answer for `error`.
    pub fn from_error(error: &(dyn StdError + 'static)) -> Self {
        let text = describe_chain(error);
        if chain_has(error, is_scratch_required) {
            return Failure::new(StatusCode::INTERNAL_SERVER_ERROR, SCRATCH_REQUIRED);
        }
        if chain_has(error, is_capacity_problem) {
            return Failure::new(StatusCode::BAD_REQUEST, &format!("{CAPACITY}{text}"));
        }
        if is_checksum_mismatch(error) || chain_has(error, |e| e.is::<FormError>()) {
            return Failure::new(StatusCode::BAD_REQUEST, &text);
        }
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, &text)
    }
}

fn is_scratch_required(error: &(dyn StdError + 'static)) -> bool {
    let stream = match error.downcast_ref::<crate::Error>() {
        Some(crate::Error::Image(image)) => image.as_stream(),
        _ => error
            .downcast_ref::<ImageError>()
            .and_then(ImageError::as_stream),
    };
    matches!(stream, Some(StreamError::ScratchRequired { .. }))
        || matches!(
            error.downcast_ref::<StreamError>(),
            Some(StreamError::ScratchRequired { .. })
        )
}

fn is_capacity_problem(error: &(dyn StdError + 'static)) -> bool {
    if let Some(sink) = sink_error(error) {
        return match sink {
            SinkError::TargetTooSmall { .. } => true,
            SinkError::Io { source, .. } => is_out_of_space(source),
            SinkError::OutOfRange { .. } => false,
        };
    }
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(is_out_of_space)
}

fn is_out_of_space(error: &std::io::Error) -> bool {
    error
        .raw_os_error()
        .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
}

/// The sink error `error` is or wraps. The wrappers that show their inner
/// error transparently hide it from `source()`, so they are opened here.
fn sink_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a SinkError> {
    if let Some(sink) = error.downcast_ref::<SinkError>() {
        return Some(sink);
    }
    if let Some(StreamError::Sink(sink)) = error.downcast_ref::<StreamError>() {
        return Some(sink);
    }
    match error.downcast_ref::<crate::Error>() {
        Some(crate::Error::Sink(sink)) => Some(sink),
        Some(crate::Error::Image(image)) => match image.as_stream() {
            Some(StreamError::Sink(sink)) => Some(sink),
            _ => None,
        },
        _ => None,
    }
}

/// True when `error`, a cause of it, or an error carried inside an
/// `io::Error` on the way satisfies `test`.
fn chain_has(
    error: &(dyn StdError + 'static),
    test: impl Fn(&(dyn StdError + 'static)) -> bool + Copy,
) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if test(e) {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if chain_has(inner, test) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_too_small_volume_is_a_400_with_cdis_words() {
        let error = crate::Error::Sink(SinkError::TargetTooSmall {
            needed: 2,
            available: 1,
        });
        let f = Failure::from_error(&error);
        assert_eq!(f.status, StatusCode::BAD_REQUEST);
        assert!(f.body.starts_with(
            "Saving stream failed: effective image size is larger than the reported available storage: "
        ));
    }

    #[test]
    fn a_too_small_volume_behind_transparent_wrappers_is_found() {
        let error = crate::Error::Image(ImageError::stream(
            "qcow2",
            StreamError::Sink(SinkError::TargetTooSmall {
                needed: 2,
                available: 1,
            }),
        ));
        assert_eq!(Failure::from_error(&error).status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn enospc_inside_an_io_error_is_a_capacity_problem() {
        let error = SinkError::Io {
            what: "writing",
            path: "disk.img".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(Failure::from_error(&error).status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn scratch_and_other_errors_are_500() {
        let scratch = crate::Error::Image(ImageError::stream(
            "qcow2",
            StreamError::ScratchRequired { budget: 1 },
        ));
        assert_eq!(
            Failure::from_error(&scratch),
            Failure::new(StatusCode::INTERNAL_SERVER_ERROR, SCRATCH_REQUIRED)
        );
        let other = std::io::Error::other("boom");
        assert_eq!(
            Failure::from_error(&other).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn a_form_error_carried_in_a_read_error_is_a_400() {
        let error = crate::Error::Read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            FormError::NoFilePart,
        ));
        assert_eq!(Failure::from_error(&error).status, StatusCode::BAD_REQUEST);
    }
}
