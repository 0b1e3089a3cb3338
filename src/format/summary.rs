//! What reading an image found, in one shape for every format: what `info` and
//! `info --json` print, the map `info --map` prints, and what the pipeline's
//! [`Report`](crate::pipeline::Report) carries.

use super::engine::{EngineSummary, MapEntry};

/// One format-specific fact for `info`: a JSON key, a text label and a value.
#[derive(Debug, Clone)]
pub struct Detail {
    /// Key in `info --json`.
    pub key: &'static str,
    /// Label in the text output.
    pub label: &'static str,
    /// The value.
    pub value: serde_json::Value,
}

/// What reading an image found.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    /// The format's short name: `"qcow2"`, `"raw"`, `"iso"`, `"vmdk"` ...
    pub format: &'static str,
    /// The variant within the format (`"streamOptimized"`, `"dynamic"` ...).
    pub subformat: Option<String>,
    /// Size of the virtual disk.
    pub virtual_size: u64,
    /// Guest bytes the image's tables say are stored; `None` where there are no
    /// tables (raw), and the sink's count of non-zero bytes stands in.
    pub allocated_bytes: Option<u64>,
    /// Length of the decoded image stream.
    pub stream_len: u64,
    /// Most unclaimed bytes held in memory at once.
    pub retained_peak: u64,
    /// Unclaimed bytes written to the spill file.
    pub spilled_bytes: u64,
    /// The allocation map, when asked for.
    pub map: Option<Vec<MapEntry>>,
    /// Format-specific facts, in the order `info` prints them.
    pub details: Vec<Detail>,
    /// False when only the tables were read (`info` without `--map`): then
    /// `stream_len` is where reading stopped and the sink saw no data.
    pub read_to_end: bool,
}

impl ImageSummary {
    /// A summary of a table-mapped image from what the engine counted.
    pub fn from_engine(format: &'static str, virtual_size: u64, engine: EngineSummary) -> Self {
        ImageSummary {
            format,
            subformat: None,
            virtual_size,
            allocated_bytes: Some(engine.allocated_bytes),
            stream_len: engine.stream_len,
            retained_peak: engine.retained_peak,
            spilled_bytes: engine.spilled_bytes,
            map: engine.map,
            details: Vec::new(),
            read_to_end: engine.read_to_end,
        }
    }

    /// Adds a detail.
    pub fn detail(
        mut self,
        key: &'static str,
        label: &'static str,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.details.push(Detail {
            key,
            label,
            value: value.into(),
        });
        self
    }

    /// Sets the sub-format.
    pub fn with_subformat(mut self, subformat: impl Into<String>) -> Self {
        self.subformat = Some(subformat.into());
        self
    }

    /// How the image was read: `"streamed"` (no byte kept beyond the memory
    /// budget) or `"spilled"` (a spill file was needed; without scratch space the
    /// import would have been refused).
    pub fn streaming_mode(&self) -> &'static str {
        if self.spilled_bytes > 0 {
            "spilled"
        } else {
            "streamed"
        }
    }
}
