//! CDI's termination message (contract section 5): one line of JSON on
//! success, on "scratch space required" and on a checksum mismatch (all exit
//! 0), plain text on any other error (exit 1). The controller keys on some of
//! these texts, so they are kept exactly.

use serde::Serialize;

/// Most bytes the kubelet keeps of a termination message.
pub const MAX_LEN: usize = 4096;

/// The JSON message, with CDI's field names; absent fields are omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminationMessage {
    /// Whether the importer needs a scratch volume and must be restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch_space_required: Option<bool>,
    /// Whether the disk was preallocated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preallocation_applied: Option<bool>,
    /// Labels to copy onto the PVC.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// "Import Complete", or the checksum mismatch text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl TerminationMessage {
    /// A completed import.
    pub fn complete(preallocation_applied: bool) -> Self {
        TerminationMessage {
            scratch_space_required: Some(false),
            preallocation_applied: Some(preallocation_applied),
            message: Some("Import Complete".into()),
            ..Default::default()
        }
    }

    /// A blank disk was created (no scratch field, as CDI writes it).
    pub fn blank_created(preallocation_applied: bool) -> Self {
        TerminationMessage {
            preallocation_applied: Some(preallocation_applied),
            message: Some("Import Complete".into()),
            ..Default::default()
        }
    }

    /// The import needs `/scratch`: CDI mounts it and starts the pod again.
    pub fn scratch_required() -> Self {
        TerminationMessage {
            scratch_space_required: Some(true),
            preallocation_applied: Some(false),
            message: Some("Import Complete".into()),
            ..Default::default()
        }
    }

    /// True for a finished import or blank disk (not a request for scratch
    /// space, not a checksum mismatch).
    pub fn is_complete(&self) -> bool {
        self.message.as_deref() == Some("Import Complete")
            && self.scratch_space_required != Some(true)
    }

    /// A checksum mismatch: fatal for the DataVolume, reported with exit 0.
    pub fn checksum_mismatch(detail: &str) -> Self {
        TerminationMessage {
            message: Some(format!("Unable to process data: {}", one_line(detail))),
            ..Default::default()
        }
    }

    /// The one-line JSON the controller parses, within the kubelet's
    /// [`MAX_LEN`] bytes: labels (which an image chooses) are dropped, longest
    /// first, until it fits.
    pub fn to_json(&self) -> String {
        let mut message = self.clone();
        loop {
            let json = serde_json::to_string(&message).expect("termination message serializes");
            if json.len() <= MAX_LEN {
                return json;
            }
            let longest = message
                .labels
                .iter()
                .max_by_key(|(k, v)| k.len() + v.len())
                .map(|(k, _)| k.clone());
            match longest {
                Some(key) => {
                    tracing::warn!(label = %key, "label left out: the termination message is limited to {MAX_LEN} bytes");
                    message.labels.remove(&key);
                }
                None => return json,
            }
        }
    }
}

/// The plain-text message for an exit-1 failure: one line, at most
/// [`MAX_LEN`] bytes.
pub fn failure_text(message: &str) -> String {
    truncate(&one_line(message), MAX_LEN)
}

fn one_line(text: &str) -> String {
    text.trim().replace(['\n', '\r'], " ")
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_written_and_trimmed_to_the_kubelet_limit() {
        let mut message = TerminationMessage::complete(false);
        message.labels.insert(
            "instancetype.kubevirt.io/default-preference".into(),
            "fedora".into(),
        );
        assert_eq!(
            message.to_json(),
            r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"labels":{"instancetype.kubevirt.io/default-preference":"fedora"},"message":"Import Complete"}"#
        );
        message
            .labels
            .insert("huge.kubevirt.io/x".into(), "v".repeat(5000));
        let json = message.to_json();
        assert!(json.len() <= MAX_LEN);
        assert!(
            json.contains("default-preference") && !json.contains("huge"),
            "{json}"
        );
    }

    #[test]
    fn success_and_scratch_messages_match_cdi_byte_for_byte() {
        assert_eq!(
            TerminationMessage::complete(false).to_json(),
            r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"message":"Import Complete"}"#
        );
        assert_eq!(
            TerminationMessage::scratch_required().to_json(),
            r#"{"scratchSpaceRequired":true,"preallocationApplied":false,"message":"Import Complete"}"#
        );
        assert_eq!(
            TerminationMessage::blank_created(true).to_json(),
            r#"{"preallocationApplied":true,"message":"Import Complete"}"#
        );
    }

    #[test]
    fn checksum_mismatch_carries_the_key_phrase_on_one_line() {
        let json = TerminationMessage::checksum_mismatch("checksum mismatch:\nsha256 abc != def")
            .to_json();
        assert!(
            json.contains("checksum mismatch: sha256 abc != def"),
            "{json}"
        );
        assert!(!json.contains("scratchSpaceRequired"));
    }

    #[test]
    fn failure_text_is_one_bounded_line() {
        assert_eq!(failure_text("a\nb\r\nc"), "a b  c");
        let long = "x".repeat(10_000);
        assert_eq!(failure_text(&long).len(), MAX_LEN);
    }
}
