//! `Range` requests answered as Go's `http.FileServer` answers them (CDI's
//! node-pull server is one): the header parsed by Go's rules (a `bytes=`
//! prefix, comma-separated ranges, suffix ranges, ends clamped to the file,
//! ranges starting past the end dropped), `416` with Go's plain-text bodies,
//! several ranges as one `multipart/byteranges` body laid out byte for byte
//! as Go's `mime/multipart` writes it, and ranges adding up to more than the
//! file ignored (the whole file is served). Bodies stream from the file;
//! nothing is buffered beyond one chunk.

use std::io::{self, SeekFrom};
use std::path::Path;

use bytes::Bytes;
use futures_util::stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// One satisfiable range: `length` bytes from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Bytes in the range.
    pub length: u64,
}

impl ByteRange {
    /// `bytes START-END/SIZE`, the `Content-Range` value.
    pub fn content_range(&self, size: u64) -> String {
        format!(
            "bytes {}-{}/{size}",
            self.start,
            (self.start + self.length).saturating_sub(1)
        )
    }
}

/// What a `Range` header asks of a file of a given size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// The whole file (no ranges, or more bytes than the file holds).
    Whole,
    /// These ranges, in the order asked.
    Ranges(Vec<ByteRange>),
    /// A malformed header: Go answers 416 `invalid range`.
    Invalid,
    /// Every range starts past the end: 416 `invalid range: failed to overlap`.
    NoOverlap,
}

/// Parses `header` for a file of `size` bytes by Go's rules.
pub fn parse(header: &str, size: u64) -> RangeAsk {
    if header.is_empty() {
        return RangeAsk::Whole;
    }
    let Some(list) = header.strip_prefix("bytes=") else {
        return RangeAsk::Invalid;
    };
    let size_i = i64::try_from(size).unwrap_or(i64::MAX);
    let mut ranges = Vec::new();
    let mut no_overlap = false;
    for part in list.split(',') {
        let part = part.trim_matches([' ', '\t']);
        if part.is_empty() {
            continue;
        }
        let Some((start, end)) = part.split_once('-') else {
            return RangeAsk::Invalid;
        };
        let (start, end) = (
            start.trim_matches([' ', '\t']),
            end.trim_matches([' ', '\t']),
        );
        let range = if start.is_empty() {
            if end.is_empty() || end.starts_with('-') {
                return RangeAsk::Invalid;
            }
            match end.parse::<i64>() {
                Ok(n) if n >= 0 => {
                    let n = n.min(size_i);
                    ByteRange {
                        start: (size_i - n) as u64,
                        length: n as u64,
                    }
                }
                _ => return RangeAsk::Invalid,
            }
        } else {
            let first = match start.parse::<i64>() {
                Ok(n) if n >= 0 => n,
                _ => return RangeAsk::Invalid,
            };
            if first >= size_i {
                no_overlap = true;
                continue;
            }
            let last = if end.is_empty() {
                size_i - 1
            } else {
                match end.parse::<i64>() {
                    Ok(n) if n >= first => n.min(size_i - 1),
                    _ => return RangeAsk::Invalid,
                }
            };
            ByteRange {
                start: first as u64,
                length: (last - first + 1) as u64,
            }
        };
        ranges.push(range);
    }
    if ranges.is_empty() {
        return if no_overlap {
            RangeAsk::NoOverlap
        } else {
            RangeAsk::Whole
        };
    }
    let sum = ranges
        .iter()
        .try_fold(0u64, |acc, r| acc.checked_add(r.length));
    match sum {
        Some(sum) if sum <= size => RangeAsk::Ranges(ranges),
        _ => RangeAsk::Whole,
    }
}

/// A piece of a response body: literal bytes, or a range of the file.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Bytes as they are.
    Literal(Bytes),
    /// Bytes of the file.
    File(ByteRange),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Literal(b) => b.len() as u64,
            Piece::File(r) => r.length,
        }
    }
}

/// The `multipart/byteranges` body of `ranges` (each part typed
/// `content_type`) with `boundary`, as Go lays it out: `--B` before the
/// first part, CRLF `--B` before each next one, the part's headers in
/// sorted order, and CRLF `--B--` CRLF at the end.
pub fn multipart(
    ranges: &[ByteRange],
    size: u64,
    content_type: &str,
    boundary: &str,
) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(ranges.len() * 2 + 1);
    for (i, range) in ranges.iter().enumerate() {
        let lead = if i == 0 { "" } else { "\r\n" };
        pieces.push(Piece::Literal(Bytes::from(format!(
            "{lead}--{boundary}\r\nContent-Range: {}\r\nContent-Type: {content_type}\r\n\r\n",
            range.content_range(size)
        ))));
        pieces.push(Piece::File(*range));
    }
    pieces.push(Piece::Literal(Bytes::from(format!(
        "\r\n--{boundary}--\r\n"
    ))));
    pieces
}

/// Bytes `pieces` add up to (the `Content-Length`).
pub fn body_length(pieces: &[Piece]) -> u64 {
    pieces.iter().map(Piece::len).sum()
}

/// 60 hex digits of fresh randomness, as Go's multipart boundaries have.
/// From the standard library's randomly keyed hasher: no file is opened
/// (the server runs in images without `/dev`).
pub fn random_boundary() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let mut hex = String::with_capacity(64);
    for i in 0..4u64 {
        let word = RandomState::new().hash_one(i);
        hex.push_str(&format!("{word:016x}"));
    }
    hex.truncate(60);
    hex
}

/// The bytes of `pieces`, `file` read in chunks of at most 64 KiB.
pub fn stream_pieces(
    file: &Path,
    pieces: Vec<Piece>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
    const CHUNK: u64 = 64 << 10;
    let path = file.to_path_buf();
    let state = (
        None::<tokio::fs::File>,
        pieces.into_iter(),
        None::<ByteRange>,
    );
    stream::try_unfold(
        (path, state),
        |(path, (mut open, mut rest, mut current))| async move {
            loop {
                if let Some(range) = current.take() {
                    if range.length == 0 {
                        continue;
                    }
                    let file = match open.as_mut() {
                        Some(f) => f,
                        None => open.insert(tokio::fs::File::open(&path).await?),
                    };
                    file.seek(SeekFrom::Start(range.start)).await?;
                    let want = range.length.min(CHUNK) as usize;
                    let mut buf = vec![0u8; want];
                    file.read_exact(&mut buf).await?;
                    let next = ByteRange {
                        start: range.start + want as u64,
                        length: range.length - want as u64,
                    };
                    return Ok(Some((Bytes::from(buf), (path, (open, rest, Some(next))))));
                }
                match rest.next() {
                    None => return Ok(None),
                    Some(Piece::Literal(bytes)) => {
                        return Ok(Some((bytes, (path, (open, rest, None)))));
                    }
                    Some(Piece::File(range)) => current = Some(range),
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, length: u64) -> ByteRange {
        ByteRange { start, length }
    }

    #[test]
    fn ranges_parse_by_gos_rules() {
        assert_eq!(parse("", 100), RangeAsk::Whole);
        assert_eq!(parse("bytes=0-9", 100), RangeAsk::Ranges(vec![r(0, 10)]));
        assert_eq!(parse("bytes=90-", 100), RangeAsk::Ranges(vec![r(90, 10)]));
        assert_eq!(parse("bytes=-5", 100), RangeAsk::Ranges(vec![r(95, 5)]));
        assert_eq!(parse("bytes=-500", 100), RangeAsk::Ranges(vec![r(0, 100)]));
        assert_eq!(parse("bytes=0-999", 100), RangeAsk::Ranges(vec![r(0, 100)]));
        assert_eq!(
            parse("bytes= 0-9 , 20-29,", 100),
            RangeAsk::Ranges(vec![r(0, 10), r(20, 10)])
        );
        assert_eq!(
            parse("bytes=0-9,200-300", 100),
            RangeAsk::Ranges(vec![r(0, 10)])
        );
        assert_eq!(parse("bytes=200-", 100), RangeAsk::NoOverlap);
        assert_eq!(parse("bytes=0-99,0-99", 100), RangeAsk::Whole);
        for bad in [
            "pages=0-1",
            "bytes=abc",
            "bytes=5-1",
            "bytes=--5",
            "bytes=-",
            "bytes=x-",
        ] {
            assert_eq!(parse(bad, 100), RangeAsk::Invalid, "{bad}");
        }
    }

    #[test]
    fn multipart_is_laid_out_as_go_writes_it() {
        let pieces = multipart(&[r(0, 2), r(5, 1)], 10, "application/octet-stream", "B");
        let text: Vec<String> = pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(b) => String::from_utf8_lossy(b).into_owned(),
                Piece::File(r) => format!("<{}+{}>", r.start, r.length),
            })
            .collect();
        assert_eq!(
            text.concat(),
            "--B\r\nContent-Range: bytes 0-1/10\r\nContent-Type: application/octet-stream\r\n\r\n<0+2>\
             \r\n--B\r\nContent-Range: bytes 5-5/10\r\nContent-Type: application/octet-stream\r\n\r\n<5+1>\
             \r\n--B--\r\n"
        );
        assert_eq!(body_length(&pieces), text.concat().len() as u64 - 10 + 3);
        let boundary = random_boundary();
        assert_eq!(boundary.len(), 60);
        assert_ne!(boundary, random_boundary());
    }
}
