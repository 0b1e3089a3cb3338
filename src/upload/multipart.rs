//! `upload-form` bodies (`multipart/form-data`, what a browser sends): parts
//! are skipped until the one named `file`, whose bytes are streamed to the
//! pipeline as they arrive (multer parses the boundary incrementally; nothing
//! is buffered beyond a chunk). A request that is not multipart is refused
//! before anything is read; a form without a `file` part ends the image with
//! a [`FormError`], a client error.

use std::io;

use futures_util::StreamExt;
use http_body_util::BodyStream;

use super::body::{BodySender, Piece};

/// The name of the part that holds the image.
pub const FILE_PART: &str = "file";

/// A form upload that is not what CDI accepts.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    /// The request's Content-Type is not multipart with a boundary.
    #[error("request Content-Type isn't multipart/form-data: {0}")]
    NotMultipart(String),
    /// The form has no part named `file`.
    #[error("the form has no part named \"file\"")]
    NoFilePart,
    /// The multipart framing is broken.
    #[error("reading the form: {0}")]
    Malformed(String),
}

/// The boundary from a request's `Content-Type`.
pub fn boundary(content_type: Option<&str>) -> Result<String, FormError> {
    let text = content_type.unwrap_or_default();
    multer::parse_boundary(text).map_err(|e| FormError::NotMultipart(e.to_string()))
}

/// Streams the `file` part of the form `body` (with `boundary`) to `sender`,
/// then [`Piece::End`]; a form error is sent as [`Piece::Failed`].
pub async fn feed_file_part(body: hyper::body::Incoming, boundary: String, sender: BodySender) {
    let bytes = BodyStream::new(body)
        .filter_map(|frame| async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(e)),
            }
        })
        .boxed();
    let mut form = multer::Multipart::new(bytes, boundary);
    let failed = |e: FormError| Piece::Failed(io::Error::new(io::ErrorKind::InvalidData, e));
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => {
                let _ = sender.send(failed(FormError::NoFilePart)).await;
                return;
            }
            Err(e) => {
                let _ = sender
                    .send(failed(FormError::Malformed(e.to_string())))
                    .await;
                return;
            }
        };
        if field.name() != Some(FILE_PART) {
            // Skipped parts are read and dropped chunk by chunk.
            while let Ok(Some(_)) = field.chunk().await {}
            continue;
        }
        loop {
            let piece = match field.chunk().await {
                Ok(Some(data)) if data.is_empty() => continue,
                Ok(Some(data)) => Piece::Data(data),
                Ok(None) => Piece::End,
                Err(e) => failed(FormError::Malformed(e.to_string())),
            };
            let last = !matches!(piece, Piece::Data(_));
            if sender.send(piece).await.is_err() || last {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_multipart_content_types_have_a_boundary() {
        assert_eq!(
            boundary(Some("multipart/form-data; boundary=abc")).unwrap(),
            "abc"
        );
        assert!(matches!(
            boundary(Some("application/octet-stream")),
            Err(FormError::NotMultipart(_))
        ));
        assert!(boundary(None).is_err());
    }
}
