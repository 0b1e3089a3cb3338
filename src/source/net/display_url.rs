//! The only form in which a URL reaches a message or a log line: scheme, host,
//! port and path. User info (`user:pass@`) and the query (a presigned URL's
//! signature, a `?token=`) are cut off when the value is made, so no caller can
//! print them by mistake.

use std::fmt;

use url::Url;

/// A URL safe to show: no user info, no query, no fragment.
#[derive(Clone, PartialEq, Eq)]
pub struct DisplayUrl(String);

impl DisplayUrl {
    /// The display form of `url`.
    pub fn new(url: &Url) -> Self {
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        shown.set_fragment(None);
        DisplayUrl(shown.to_string())
    }

    /// The display form of a spec that may not even parse: when it does not,
    /// everything from the first `?` and up to the last `@` before the path is
    /// dropped.
    pub fn of_spec(spec: &str) -> Self {
        if let Ok(url) = Url::parse(spec) {
            return DisplayUrl::new(&url);
        }
        let without_query = spec.split(['?', '#']).next().unwrap_or_default();
        let (scheme, rest) = match without_query.split_once("://") {
            Some((scheme, rest)) => (format!("{scheme}://"), rest),
            None => (String::new(), without_query),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let host = authority.rsplit('@').next().unwrap_or_default();
        DisplayUrl(format!("{scheme}{host}{path}"))
    }

    /// A display form made of parts that hold no secret (an `s3://bucket/key`).
    pub fn from_safe_text(text: String) -> Self {
        DisplayUrl(text)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DisplayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DisplayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_query_and_fragment_are_dropped() {
        let url = Url::parse("https://user:secret@host:8443/a/b.img?X-Amz-Signature=abc&token=t#f")
            .unwrap();
        assert_eq!(DisplayUrl::new(&url).as_str(), "https://host:8443/a/b.img");
    }

    #[test]
    fn unparsable_specs_lose_credentials_and_query_too() {
        assert_eq!(
            DisplayUrl::of_spec("http://us:pw@[bad/x?token=t").as_str(),
            "http://[bad/x"
        );
        assert_eq!(DisplayUrl::of_spec("no url?secret").as_str(), "no url");
        assert_eq!(
            DisplayUrl::of_spec("docker://u:p@reg:5000/r:t").as_str(),
            "docker://reg:5000/r:t"
        );
    }
}
