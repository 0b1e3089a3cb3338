//! The one resume mechanism: an object's identity (length and validators)
//! is fixed by its first answer, every later answer, ranged or not, must show
//! the same object, and a 206 must start exactly where asked. A server that
//! ignores `Range` and sends the whole object again is re-read and the bytes
//! already delivered skipped, but only when its validators prove it is the same.

use reqwest::header::{HeaderMap, HeaderValue, IF_MATCH, IF_RANGE, RANGE};

use super::request::Opened;
use super::{DisplayUrl, NetError};

/// ETag and Last-Modified as served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// `ETag`.
    pub etag: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether there is nothing to compare.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    /// The `If-Range` value: a strong ETag, else the date.
    pub fn if_range(&self) -> Option<&str> {
        let strong = self.etag.as_deref().filter(|e| !e.starts_with("W/"));
        strong.or(self.last_modified.as_deref())
    }

    /// What differs between `self` (the first answer) and `now`, comparing
    /// only values both have, and how many matched.
    fn compare(&self, now: &Validators) -> (usize, Vec<String>) {
        let mut matched = 0;
        let mut differs = Vec::new();
        for (name, was, is) in [
            ("ETag", &self.etag, &now.etag),
            ("Last-Modified", &self.last_modified, &now.last_modified),
        ] {
            if let (Some(was), Some(is)) = (was, is) {
                if was == is {
                    matched += 1;
                } else {
                    differs.push(format!("{name} was {was}, is now {is}"));
                }
            }
        }
        (matched, differs)
    }
}

/// What the first answer said the object is.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Its length, when known.
    pub total: Option<u64>,
    /// Its validators.
    pub validators: Validators,
    /// Whether the server serves ranges.
    pub accepts_ranges: bool,
}

impl Identity {
    /// The identity an answer at offset 0 establishes.
    pub fn of(opened: &Opened) -> Identity {
        Identity {
            total: opened.total,
            validators: opened.validators.clone(),
            accepts_ranges: opened.accepts_ranges,
        }
    }

    /// Headers asking for bytes `from..to` (`to` exclusive, `None` for the
    /// end) of this object: `Range`, and `If-Range` (or `If-Match` with
    /// `if_match`, S3's way) on its validator.
    pub fn range_headers(&self, from: u64, to: Option<u64>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if from == 0 && to.is_none() {
            return headers;
        }
        let range = match to {
            Some(to) => format!("bytes={from}-{}", to.saturating_sub(1)),
            None => format!("bytes={from}-"),
        };
        if let Ok(value) = HeaderValue::from_str(&range) {
            headers.insert(RANGE, value);
        }
        if let Some(value) = self
            .validators
            .if_range()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(IF_RANGE, value);
        }
        headers
    }

    /// `If-Match` on the ETag, for servers that answer a changed object with
    /// 412 instead of the whole new one.
    pub fn if_match(&self) -> Option<HeaderMap> {
        let value = HeaderValue::from_str(self.validators.etag.as_deref()?).ok()?;
        let mut headers = HeaderMap::new();
        headers.insert(IF_MATCH, value);
        Some(headers)
    }

    /// Checks that `opened`, asked for at `pos`, continues this object there;
    /// returns how many leading body bytes to skip (a whole object re-sent).
    pub fn check(&self, opened: &Opened, pos: u64, url: &DisplayUrl) -> Result<u64, NetError> {
        let changed = |detail: String| NetError::Changed {
            url: url.clone(),
            offset: pos,
            detail,
        };
        let (matched, mut differs) = self.validators.compare(&opened.validators);
        if let (Some(was), Some(is)) = (self.total, opened.total) {
            if was != is {
                differs.push(format!("length was {was}, is now {is}"));
            }
        }
        if !differs.is_empty() {
            return Err(changed(format!(
                "the object changed ({})",
                differs.join(", ")
            )));
        }
        if opened.partial {
            if opened.start != pos {
                return Err(changed(format!("the 206 starts at byte {}", opened.start)));
            }
            return Ok(0);
        }
        if pos == 0 {
            return Ok(0);
        }
        let length_matches = matches!((self.total, opened.total), (Some(a), Some(b)) if a == b);
        if matched == 0 && !length_matches {
            return Err(changed(
                "the server ignored Range and sent no validators to show it is the same object"
                    .into(),
            ));
        }
        tracing::info!(url = %url, offset = pos, "the server sent the whole object; skipping what was read");
        Ok(pos)
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL or None for `*`).
pub fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(partial: bool, start: u64, total: Option<u64>, etag: Option<&str>) -> Opened {
        Opened {
            partial,
            start,
            total,
            length: None,
            validators: Validators {
                etag: etag.map(str::to_string),
                last_modified: None,
            },
            accepts_ranges: true,
            body: Box::pin(futures_util::stream::empty()),
        }
    }

    fn identity() -> Identity {
        Identity {
            total: Some(100),
            validators: Validators {
                etag: Some("\"a\"".into()),
                last_modified: None,
            },
            accepts_ranges: true,
        }
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
    }

    #[test]
    fn a_206_must_start_where_asked_and_be_the_same_object() {
        let url = DisplayUrl::of_spec("http://h/x");
        let id = identity();
        assert_eq!(
            id.check(&opened(true, 40, Some(100), Some("\"a\"")), 40, &url)
                .unwrap(),
            0
        );
        assert!(id
            .check(&opened(true, 41, Some(100), Some("\"a\"")), 40, &url)
            .is_err());
        assert!(id
            .check(&opened(true, 40, Some(101), Some("\"a\"")), 40, &url)
            .is_err());
        assert!(id
            .check(&opened(true, 40, Some(100), Some("\"b\"")), 40, &url)
            .is_err());
    }

    #[test]
    fn a_whole_object_resent_is_skipped_only_when_proven_the_same() {
        let url = DisplayUrl::of_spec("http://h/x");
        let id = identity();
        assert_eq!(
            id.check(&opened(false, 0, Some(100), Some("\"a\"")), 40, &url)
                .unwrap(),
            40
        );
        assert!(id
            .check(&opened(false, 0, Some(100), Some("\"b\"")), 40, &url)
            .is_err());
        let bare = Identity {
            total: None,
            ..Identity::default()
        };
        assert!(bare.check(&opened(false, 0, None, None), 40, &url).is_err());
    }

    #[test]
    fn range_headers_carry_if_range_on_a_strong_etag() {
        let id = identity();
        let h = id.range_headers(10, Some(20));
        assert_eq!(h[RANGE], "bytes=10-19");
        assert_eq!(h[IF_RANGE], "\"a\"");
        assert!(id.range_headers(0, None).is_empty());
    }
}
