//! Hold-back: the first and the last MiB of a target are kept in memory and
//! written only when the import has passed every check.
//!
//! The first MiB of a disk holds what makes it look like one (the MBR and
//! the primary GPT, boot sectors, file-system superblocks), the last MiB the
//! backup GPT. [`HoldBack`] wraps the real sink: extents for those two ranges
//! are copied into memory, everything else passes through. Only in
//! [`finish`](ExtentSink::finish) — which the pipeline calls after the stream
//! ended, the checksum or digest matched and the format reader accepted the
//! image's trailer — are they written: the last MiB, a flush of everything,
//! then the first MiB, then the inner sink's own finish (flush, or rename).
//! A crash, kill or error before that leaves a target whose first MiB was
//! never written; the inner sinks make sure it reads as nothing (see the rule
//! in [`crate::sink`]).
//!
//! The last MiB is `[size - 1 MiB, size)` when the size is known up front
//! (qcow2). For a stream whose size comes only at its end (raw), it is the
//! last MiB written so far: a window that slides along, releasing what falls
//! behind it, so a raw stream's trailer is judged before its tail ever
//! reaches the device. The window's start is 4 KiB aligned, so the inner
//! sink never has to merge a partial block at the boundary.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{ExtentSink, SinkError, SinkSummary};
use crate::extent::{Extent, ExtentKind};

/// Bytes held at each end of the target.
pub const HELD: u64 = 1 << 20;

/// Alignment of the tail's start.
const ALIGN: u64 = 4096;

/// Most extents the sliding window may hold. Readers cover every guest byte
/// at most once, so a window of [`HELD`] bytes never needs more; a reader
/// that breaks that rule gets an error instead of unbounded memory.
const MAX_WINDOW_EXTENTS: usize = 1 << 16;

/// The held last MiB.
enum Tail {
    /// The size is not known yet: the extents at or above `start`, in the
    /// order they came.
    Window {
        start: u64,
        extents: VecDeque<Extent>,
    },
    /// The size is known: the bytes of `[start, size)`.
    Fixed { start: u64, bytes: Vec<u8> },
}

/// A sink that holds back the first and last [`HELD`] bytes until `finish`.
pub struct HoldBack<S: ExtentSink> {
    inner: S,
    size: Option<u64>,
    high_water: u64,
    /// The bytes of `[0, HELD)`.
    head: Vec<u8>,
    tail: Tail,
}

/// Where the held tail starts for a target of (current) length `limit`.
fn tail_start(limit: u64) -> u64 {
    let start = limit.saturating_sub(HELD);
    (start - start % ALIGN).max(HELD)
}

/// Splits `extent` at guest offset `at`: the part below and the part above.
fn split_at(extent: Extent, at: u64) -> (Option<Extent>, Option<Extent>) {
    if extent.end() <= at {
        return (Some(extent), None);
    }
    if extent.guest_offset >= at {
        return (None, Some(extent));
    }
    let below = at - extent.guest_offset;
    match extent.kind {
        ExtentKind::Data(bytes) => (
            Some(Extent::data(
                extent.guest_offset,
                bytes.slice(..below as usize),
            )),
            Some(Extent::data(at, bytes.slice(below as usize..))),
        ),
        ExtentKind::Zero(n) => (
            Some(Extent::zero(extent.guest_offset, below)),
            Some(Extent::zero(at, n - below)),
        ),
    }
}

/// Applies `extent` to `buffer`, which holds the bytes from guest offset `base`.
fn apply(buffer: &mut [u8], base: u64, extent: &Extent) {
    let from = (extent.guest_offset - base) as usize;
    let to = from + extent.len() as usize;
    match &extent.kind {
        ExtentKind::Data(bytes) => buffer[from..to].copy_from_slice(bytes),
        ExtentKind::Zero(_) => buffer[from..to].fill(0),
    }
}

/// `inner` wrapped in a [`HoldBack`], boxed: how every target is opened.
pub fn wrap<S: ExtentSink + 'static>(inner: S) -> Box<dyn ExtentSink> {
    Box::new(HoldBack::new(inner))
}

impl<S: ExtentSink> HoldBack<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        HoldBack {
            inner,
            size: None,
            high_water: 0,
            head: vec![0; HELD as usize],
            tail: Tail::Window {
                start: HELD,
                extents: VecDeque::new(),
            },
        }
    }

    fn tail_begin(&self) -> u64 {
        match &self.tail {
            Tail::Window { start, .. } | Tail::Fixed { start, .. } => *start,
        }
    }

    /// Moves the window's start to `new_start`, writing what falls below it.
    fn slide(&mut self, new_start: u64) -> Result<(), SinkError> {
        let Tail::Window { start, extents } = &mut self.tail else {
            return Ok(());
        };
        if new_start <= *start {
            return Ok(());
        }
        *start = new_start;
        let mut kept = VecDeque::with_capacity(extents.len());
        for extent in extents.drain(..) {
            let (below, above) = split_at(extent, new_start);
            if let Some(below) = below {
                self.inner.write(below)?;
            }
            kept.extend(above);
        }
        *extents = kept;
        Ok(())
    }

    /// Keeps a piece that lies in the tail.
    fn hold_tail(&mut self, extent: Extent) -> Result<(), SinkError> {
        match &mut self.tail {
            Tail::Window { extents, .. } => {
                if extents.len() >= MAX_WINDOW_EXTENTS {
                    return Err(SinkError::Io {
                        what: "holding back the end of",
                        path: "(target)".into(),
                        source: std::io::Error::other(format!(
                            "more than {MAX_WINDOW_EXTENTS} pieces written to the last MiB \
                             (the image reader wrote bytes more than once)"
                        )),
                    });
                }
                extents.push_back(extent);
            }
            Tail::Fixed { start, bytes } => apply(bytes, *start, &extent),
        }
        Ok(())
    }

    /// Writes the held bytes and finishes the inner sink.
    fn commit(&mut self) -> Result<SinkSummary, SinkError> {
        let limit = self.size.unwrap_or(self.high_water);
        let tail = std::mem::replace(
            &mut self.tail,
            Tail::Fixed {
                start: HELD,
                bytes: Vec::new(),
            },
        );
        match tail {
            Tail::Window { extents, .. } => {
                for extent in extents {
                    self.inner.write(extent)?;
                }
            }
            Tail::Fixed { start, bytes } if !bytes.is_empty() => {
                self.inner.write(Extent::data(start, Bytes::from(bytes)))?;
            }
            Tail::Fixed { .. } => {}
        }
        // Everything but the first MiB is durable before the first MiB is written.
        self.inner.flush_data()?;
        let head_len = limit.min(HELD) as usize;
        if head_len > 0 {
            let mut head = std::mem::take(&mut self.head);
            head.truncate(head_len);
            self.inner.write(Extent::data(0, Bytes::from(head)))?;
        }
        self.inner.finish()
    }
}

impl<S: ExtentSink> ExtentSink for HoldBack<S> {
    fn set_size(&mut self, size: u64) -> Result<(), SinkError> {
        self.inner.set_size(size)?;
        self.size = Some(size);
        // From now on the tail is a fixed range: what the window holds below
        // it is written, the rest copied into it.
        let start = tail_start(size);
        let extents = match std::mem::replace(
            &mut self.tail,
            Tail::Fixed {
                start,
                bytes: vec![0; size.saturating_sub(start) as usize],
            },
        ) {
            Tail::Window { extents, .. } => extents,
            Tail::Fixed {
                start: old_start,
                bytes,
            } => VecDeque::from([Extent::data(old_start, Bytes::from(bytes))]),
        };
        for extent in extents {
            let (below, above) = split_at(extent, start);
            if let Some(below) = below {
                self.inner.write(below)?;
            }
            if let Some(above) = above {
                let (inside, beyond) = split_at(above, size);
                if let Some(inside) = inside {
                    self.hold_tail(inside)?;
                }
                if let Some(beyond) = beyond.filter(|e| !e.is_empty()) {
                    // Refused by the inner sink: past the end.
                    self.inner.write(beyond)?;
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, extent: Extent) -> Result<(), SinkError> {
        let end = extent.guest_offset.checked_add(extent.len());
        let out_of_range = match (end, self.size) {
            (None, _) => true,
            (Some(end), Some(size)) => end > size,
            _ => false,
        };
        if out_of_range || extent.is_empty() {
            // The inner sink refuses it with the right error (or ignores it).
            return self.inner.write(extent);
        }
        self.high_water = self.high_water.max(extent.end());
        if self.size.is_none() {
            self.slide(tail_start(self.high_water))?;
        }
        let (head, rest) = split_at(extent, HELD);
        if let Some(head) = head {
            apply(&mut self.head, 0, &head);
        }
        let Some(rest) = rest else {
            return Ok(());
        };
        let (middle, tail) = split_at(rest, self.tail_begin());
        if let Some(middle) = middle {
            self.inner.write(middle)?;
        }
        if let Some(tail) = tail {
            self.hold_tail(tail)?;
        }
        Ok(())
    }

    fn flush_data(&mut self) -> Result<(), SinkError> {
        self.inner.flush_data()
    }

    fn finish(&mut self) -> Result<SinkSummary, SinkError> {
        self.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what reaches the inner sink, as a flat image plus the order.
    #[derive(Clone, Default)]
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        image: Arc<Mutex<Vec<u8>>>,
    }

    impl ExtentSink for Recorder {
        fn set_size(&mut self, size: u64) -> Result<(), SinkError> {
            self.log.lock().unwrap().push(format!("size {size}"));
            Ok(())
        }
        fn write(&mut self, extent: Extent) -> Result<(), SinkError> {
            let mut image = self.image.lock().unwrap();
            let end = extent.end() as usize;
            if image.len() < end {
                image.resize(end, 0xEE);
            }
            apply(&mut image, 0, &extent);
            self.log.lock().unwrap().push(format!(
                "write {} {}",
                extent.guest_offset,
                extent.len()
            ));
            Ok(())
        }
        fn flush_data(&mut self) -> Result<(), SinkError> {
            self.log.lock().unwrap().push("flush".into());
            Ok(())
        }
        fn finish(&mut self) -> Result<SinkSummary, SinkError> {
            self.log.lock().unwrap().push("finish".into());
            Ok(SinkSummary::default())
        }
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((i * 7 + seed) % 251) as u8 + 1)
            .collect()
    }

    /// Nothing written so far touches the first MiB or the last `tail` bytes.
    fn untouched(image: &[u8], limit: usize) -> bool {
        let head = image.len().min(HELD as usize);
        image[..head].iter().all(|&b| b == 0xEE)
            && image
                .get(tail_start(limit as u64) as usize..)
                .is_none_or(|t| t.iter().all(|&b| b == 0xEE))
    }

    #[test]
    fn a_raw_stream_reaches_the_inner_sink_only_below_its_last_mib_until_finish() {
        let recorder = Recorder::default();
        let mut sink = HoldBack::new(recorder.clone());
        let len = 5 * HELD as usize + 12345;
        let data = pattern(len, 3);
        let mut at = 0;
        for chunk in data.chunks(300_000) {
            sink.write(Extent::data(at as u64, Bytes::copy_from_slice(chunk)))
                .unwrap();
            at += chunk.len();
            let image = recorder.image.lock().unwrap();
            assert!(
                untouched(&image, at),
                "held bytes reached the target at {at}"
            );
        }
        sink.set_size(len as u64).unwrap();
        assert!(untouched(&recorder.image.lock().unwrap(), len));
        sink.finish().unwrap();
        assert_eq!(*recorder.image.lock().unwrap(), data);
        let log = recorder.log.lock().unwrap();
        let flush = log.iter().position(|l| l == "flush").unwrap();
        let head = log.iter().position(|l| l.starts_with("write 0 ")).unwrap();
        assert!(flush < head, "the first MiB comes after the flush: {log:?}");
        assert_eq!(log.last().unwrap(), "finish");
    }

    #[test]
    fn a_sized_image_written_out_of_order_is_held_at_both_ends() {
        let recorder = Recorder::default();
        let mut sink = HoldBack::new(recorder.clone());
        let size = 4 * HELD + 4096;
        sink.set_size(size).unwrap();
        let data = pattern(size as usize, 9);
        // Clusters of 64 KiB, in a scrambled order, some as zero extents.
        let cluster = 64 << 10;
        let count = size.div_ceil(cluster);
        let order: Vec<u64> = (0..count).map(|i| (i * 37) % count).collect();
        let mut expected = data.clone();
        for &c in &order {
            let from = c * cluster;
            let to = (from + cluster).min(size);
            if c % 5 == 0 {
                sink.write(Extent::zero(from, to - from)).unwrap();
                expected[from as usize..to as usize].fill(0);
            } else {
                let piece = Bytes::copy_from_slice(&data[from as usize..to as usize]);
                sink.write(Extent::data(from, piece)).unwrap();
            }
        }
        assert!(untouched(&recorder.image.lock().unwrap(), size as usize));
        sink.finish().unwrap();
        assert_eq!(*recorder.image.lock().unwrap(), expected);
    }

    #[test]
    fn an_unfinished_sink_never_writes_the_held_bytes() {
        let recorder = Recorder::default();
        {
            let mut sink = HoldBack::new(recorder.clone());
            sink.write(Extent::data(0, Bytes::from(pattern(3 << 20, 1))))
                .unwrap();
        }
        let log = recorder.log.lock().unwrap();
        assert!(log.iter().all(|l| !l.starts_with("write 0 ")), "{log:?}");
        assert!(!log.contains(&"finish".to_string()));
    }

    #[test]
    fn small_images_are_all_head() {
        let recorder = Recorder::default();
        let mut sink = HoldBack::new(recorder.clone());
        let data = pattern(10_000, 5);
        sink.write(Extent::data(0, Bytes::from(data.clone())))
            .unwrap();
        sink.set_size(10_000).unwrap();
        assert!(recorder.image.lock().unwrap().is_empty());
        sink.finish().unwrap();
        assert_eq!(*recorder.image.lock().unwrap(), data);
    }
}
