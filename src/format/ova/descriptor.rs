//! The `.ovf` descriptor, parsed only to list the disks: each `Disk` element's
//! `fileRef` names a `File` element of `References`, whose `href` is the tar
//! member holding the disk. Nothing the descriptor names is ever opened on the
//! host: an `href` is only compared with the names of the tar's members.
//! Namespaces are matched by local name (`ovf:href`, `href`), as producers differ.

use quick_xml::events::{BytesStart, Event};

/// One disk the descriptor lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedDisk {
    /// The `href` of its file: the tar member's name.
    pub href: String,
    /// `ovf:compression`, if any (`gzip`).
    pub compression: Option<String>,
    /// Whether `ovf:chunkSize` splits the file into several members.
    pub chunked: bool,
}

/// Most `File` or `Disk` elements read (real descriptors have a handful).
const MAX_ELEMENTS: usize = 4096;

struct FileRef {
    id: String,
    disk: DescribedDisk,
}

fn attribute(element: &BytesStart<'_>, local: &[u8]) -> Result<Option<String>, String> {
    for attr in element.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        if attr.key.local_name().as_ref() == local {
            let value = attr.unescape_value().map_err(|e| e.to_string())?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

/// The disks of a descriptor, in the order its `Disk` elements list them.
pub fn disks(xml: &[u8]) -> Result<Vec<DescribedDisk>, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut files: Vec<FileRef> = Vec::new();
    let mut disk_refs: Vec<String> = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => match e.local_name().as_ref() {
                b"File" => {
                    let (Some(id), Some(href)) = (attribute(e, b"id")?, attribute(e, b"href")?)
                    else {
                        return Err("a File element without id or href".into());
                    };
                    files.push(FileRef {
                        id,
                        disk: DescribedDisk {
                            href,
                            compression: attribute(e, b"compression")?
                                .filter(|c| !c.is_empty() && c != "identity"),
                            chunked: attribute(e, b"chunkSize")?.is_some(),
                        },
                    });
                }
                b"Disk" => {
                    // A Disk without a file is a blank disk: nothing to import.
                    if let Some(file) = attribute(e, b"fileRef")? {
                        disk_refs.push(file);
                    }
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        if files.len() + disk_refs.len() > MAX_ELEMENTS {
            return Err(format!("more than {MAX_ELEMENTS} File and Disk elements"));
        }
        buf.clear();
    }
    disk_refs
        .iter()
        .map(|file_ref| {
            files
                .iter()
                .find(|f| &f.id == file_ref)
                .map(|f| f.disk.clone())
                .ok_or_else(|| {
                    format!("a Disk refers to file {file_ref:?}, which References does not list")
                })
        })
        .collect()
}
