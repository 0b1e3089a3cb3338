//! The upload server's termination messages (contract §5.7): one line of
//! JSON, field order as CDI's Go struct marshals it. The controller must be
//! able to parse every exit-0 message, so these are the only ones written.

use serde::Serialize;

/// The JSON in `/dev/termination-log` after an exit 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTermination {
    /// Set only when the deadline passed with nothing uploaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_passed: Option<bool>,
    /// Whether the disk was preallocated (absent for the deadline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preallocation_applied: Option<bool>,
    /// "Upload Complete", "Clone Complete" or "Deadline Passed".
    pub message: String,
}

impl UploadTermination {
    /// An upload finished.
    pub fn upload_complete(preallocation_applied: bool) -> Self {
        UploadTermination {
            deadline_passed: None,
            preallocation_applied: Some(preallocation_applied),
            message: "Upload Complete".into(),
        }
    }

    /// A clone-target stream finished.
    pub fn clone_complete(preallocation_applied: bool) -> Self {
        UploadTermination {
            deadline_passed: None,
            preallocation_applied: Some(preallocation_applied),
            message: "Clone Complete".into(),
        }
    }

    /// The deadline came with nothing uploaded.
    pub fn deadline_passed() -> Self {
        UploadTermination {
            deadline_passed: Some(true),
            preallocation_applied: None,
            message: "Deadline Passed".into(),
        }
    }

    /// The one-line JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("termination message serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cdis_byte_for_byte() {
        assert_eq!(
            UploadTermination::upload_complete(false).to_json(),
            r#"{"preallocationApplied":false,"message":"Upload Complete"}"#
        );
        assert_eq!(
            UploadTermination::clone_complete(true).to_json(),
            r#"{"preallocationApplied":true,"message":"Clone Complete"}"#
        );
        assert_eq!(
            UploadTermination::deadline_passed().to_json(),
            r#"{"deadlinePassed":true,"message":"Deadline Passed"}"#
        );
    }
}
