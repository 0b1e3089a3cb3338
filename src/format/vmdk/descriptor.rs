//! The VMDK descriptor text (embedded at descriptorOffset of a sparse extent, at
//! byte 512 of a COWD file, or a whole text file), parsed only far enough to
//! refuse what depends on other files (`formats-notes.md` 1.1, 1.2): a createType
//! whose data lives elsewhere, extent lines naming other files, a parent. No name
//! found here is ever opened; names appear in messages only, quoted and cut short.

use super::error::VmdkError;

/// Most descriptor bytes read (qemu reads at most 1 MiB).
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;
/// Longest file name quoted in a message.
const MAX_NAME_IN_MESSAGE: usize = 120;
/// Most extents listed in a message.
const MAX_EXTENTS_IN_MESSAGE: usize = 16;

/// One extent line: `RW 4192256 FLAT "disk-flat.vmdk" 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// RW, RDONLY or NOACCESS.
    pub access: String,
    /// Size in sectors, as written.
    pub sectors: String,
    /// FLAT, SPARSE, VMFS, VMFSSPARSE, SESPARSE, ...
    pub kind: String,
    /// The file the extent is in.
    pub file: String,
}

/// What the descriptor says that matters for refusing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// createType, unquoted.
    pub create_type: Option<String>,
    /// parentCID, as written.
    pub parent_cid: Option<String>,
    /// parentFileNameHint, unquoted.
    pub parent_hint: Option<String>,
    /// A `CID=` line is present.
    pub has_cid: bool,
    /// Extent lines, in order.
    pub extents: Vec<ExtentLine>,
}

/// createTypes whose data is in the extent itself.
const SELF_CONTAINED: &[&str] = &["monolithicSparse", "streamOptimized"];

impl Descriptor {
    /// Parses descriptor text: stops at the first NUL, reads at most
    /// [`MAX_DESCRIPTOR_BYTES`]; lines it does not know are ignored.
    pub fn parse(bytes: &[u8]) -> Self {
        let bytes = &bytes[..bytes.len().min(MAX_DESCRIPTOR_BYTES)];
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut d = Descriptor::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                let value = unquote(value.trim());
                match key.trim() {
                    "createType" => d.create_type = Some(value),
                    "parentCID" => d.parent_cid = Some(value),
                    "parentFileNameHint" => d.parent_hint = Some(value),
                    "CID" => d.has_cid = true,
                    _ => {}
                }
                continue;
            }
            if let Some(extent) = parse_extent(line) {
                d.extents.push(extent);
            }
        }
        d
    }

    /// The parent this descriptor names, if any (`parentCID` other than
    /// `ffffffff`, or a `parentFileNameHint`).
    pub fn parent(&self) -> Option<String> {
        if let Some(hint) = &self.parent_hint {
            return Some(format!("parentFileNameHint {}", quote(hint)));
        }
        match &self.parent_cid {
            Some(cid) if !cid.eq_ignore_ascii_case("ffffffff") => {
                Some(format!("parentCID {}", quote(cid)))
            }
            _ => None,
        }
    }

    /// Checks the descriptor embedded in a sparse extent of `capacity` sectors:
    /// the extent must be the whole disk.
    pub fn check_embedded(&self, capacity: u64) -> Result<(), VmdkError> {
        if let Some(what) = self.parent() {
            return Err(VmdkError::Parent { what });
        }
        let other_files = capacity == 0 && !self.extents.is_empty()
            || self.extents.len() > 1
            || self
                .extents
                .iter()
                .any(|e| !e.kind.eq_ignore_ascii_case("SPARSE"));
        if other_files {
            return Err(VmdkError::ReferencesOtherFiles {
                create_type: self.create_type_text(),
                extents: self.extents_text(),
            });
        }
        match &self.create_type {
            Some(t) if !SELF_CONTAINED.iter().any(|s| s.eq_ignore_ascii_case(t)) => {
                if self.extents.is_empty() {
                    Err(VmdkError::CreateType(cut(t)))
                } else {
                    Err(VmdkError::ReferencesOtherFiles {
                        create_type: self.create_type_text(),
                        extents: self.extents_text(),
                    })
                }
            }
            _ => Ok(()),
        }
    }

    /// The refusal of a descriptor that is a whole file.
    pub fn refuse_as_file(&self) -> VmdkError {
        VmdkError::DescriptorFile {
            create_type: self.create_type_text(),
            extents: self.extents_text(),
        }
    }

    fn create_type_text(&self) -> String {
        self.create_type
            .as_deref()
            .map(cut)
            .unwrap_or_else(|| "none".into())
    }

    /// "2 extents: FLAT "a-flat.vmdk", SPARSE "b.vmdk"; parentFileNameHint ..."
    fn extents_text(&self) -> String {
        let mut parts: Vec<String> = self
            .extents
            .iter()
            .take(MAX_EXTENTS_IN_MESSAGE)
            .map(|e| format!("{} {}", e.kind, quote(&e.file)))
            .collect();
        if self.extents.len() > MAX_EXTENTS_IN_MESSAGE {
            parts.push(format!(
                "and {} more",
                self.extents.len() - MAX_EXTENTS_IN_MESSAGE
            ));
        }
        let mut text = match self.extents.len() {
            0 => "no extent lines".to_string(),
            1 => format!("1 extent: {}", parts.join(", ")),
            n => format!("{n} extents: {}", parts.join(", ")),
        };
        if let Some(parent) = self.parent() {
            text.push_str(&format!("; and a parent, {parent}"));
        }
        text
    }
}

/// `ACCESS SECTORS TYPE "FILE" [OFFSET]`, as qemu reads it.
fn parse_extent(line: &str) -> Option<ExtentLine> {
    let mut words = line.splitn(3, char::is_whitespace);
    let access = words.next()?;
    if !["RW", "RDONLY", "NOACCESS"].contains(&access) {
        return None;
    }
    let rest = words.next().map(|s| (s, words.next().unwrap_or("")))?;
    let (sectors, rest) = rest;
    let rest = rest.trim_start();
    let (kind, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let rest = rest.trim_start();
    let file = rest
        .strip_prefix('"')
        .and_then(|r| r.split('"').next())
        .unwrap_or(rest)
        .to_string();
    Some(ExtentLine {
        access: access.to_string(),
        sectors: sectors.to_string(),
        kind: kind.to_string(),
        file,
    })
}

fn unquote(value: &str) -> String {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
        .to_string()
}

/// A name cut to [`MAX_NAME_IN_MESSAGE`] characters.
fn cut(name: &str) -> String {
    if name.chars().count() <= MAX_NAME_IN_MESSAGE {
        name.to_string()
    } else {
        let mut s: String = name.chars().take(MAX_NAME_IN_MESSAGE).collect();
        s.push_str("...");
        s
    }
}

/// A name quoted with control characters escaped.
fn quote(name: &str) -> String {
    format!("{:?}", cut(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: &[u8] = b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"disk-flat.vmdk\" 0\n\nddb.adapterType = \"ide\"\n";

    #[test]
    fn flat_descriptor_is_refused_naming_its_extent() {
        let d = Descriptor::parse(FLAT);
        assert_eq!(d.create_type.as_deref(), Some("monolithicFlat"));
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.extents[0].file, "disk-flat.vmdk");
        let msg = d.check_embedded(2048).unwrap_err().to_string();
        assert!(msg.contains("FLAT \"disk-flat.vmdk\""), "{msg}");
        let msg = d.refuse_as_file().to_string();
        assert!(
            msg.contains("monolithicFlat") && msg.contains("disk-flat.vmdk"),
            "{msg}"
        );
    }

    #[test]
    fn own_sparse_extent_is_accepted_and_capacity_zero_is_not() {
        let text = b"version=1\r\nCID=fffffffe\r\nparentCID=ffffffff\r\ncreateType=\"monolithicSparse\"\r\nRW 204800 SPARSE \"image.vmdk\"\r\n\0\0garbage";
        let d = Descriptor::parse(text);
        assert!(d.has_cid);
        d.check_embedded(204800).unwrap();
        let msg = d.check_embedded(0).unwrap_err().to_string();
        assert!(msg.contains("image.vmdk"), "{msg}");
    }

    #[test]
    fn parent_and_split_extents_are_refused() {
        let d = Descriptor::parse(b"parentCID=1234abcd\nparentFileNameHint=\"/etc/base.vmdk\"\n");
        let msg = d.check_embedded(100).unwrap_err().to_string();
        assert!(msg.contains("/etc/base.vmdk"), "{msg}");
        let d = Descriptor::parse(
            b"createType=\"twoGbMaxExtentSparse\"\nRW 4192256 SPARSE \"a-s001.vmdk\"\nRW 4192256 SPARSE \"a-s002.vmdk\"\n",
        );
        let msg = d.check_embedded(100).unwrap_err().to_string();
        assert!(
            msg.contains("2 extents") && msg.contains("a-s002.vmdk"),
            "{msg}"
        );
    }

    #[test]
    fn names_in_messages_are_escaped_and_cut() {
        let d = Descriptor::parse(b"RW 1 FLAT \"a\x1b[2Jb\"\n");
        let msg = d.refuse_as_file().to_string();
        assert!(
            !msg.contains('\x1b') && msg.contains("a\\u{1b}[2Jb"),
            "{msg}"
        );
        let long = format!("RW 1 FLAT \"{}\"\n", "x".repeat(500));
        let msg = Descriptor::parse(long.as_bytes())
            .refuse_as_file()
            .to_string();
        assert!(msg.len() < 400, "{msg}");
    }
}
