//! Runs a sink on its own thread, so that writing overlaps parsing. Extents
//! travel over a bounded channel; the first error the sink hits is returned
//! by the next call on this side.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{ExtentSink, SinkError, SinkSummary};
use crate::extent::Extent;
use crate::progress::Progress;
use crate::stages::{Stage, Stages};

/// Extents that may wait for the writer.
const DEPTH: usize = 4;

enum Message {
    Size(u64),
    Write(Extent),
    /// Everything was sent: make it durable. Without this message the writer
    /// drops its sink unfinished (a failed import leaves no target).
    Finish,
}

/// The caller's end of a sink running on a writer thread.
pub struct ThreadedSink {
    sender: Option<SyncSender<Message>>,
    worker: Option<JoinHandle<Result<SinkSummary, SinkError>>>,
    /// A full queue is the reader waiting for the sink.
    stages: Arc<Stages>,
}

impl ThreadedSink {
    /// Moves `sink` to a new thread; `progress` counts the guest bytes handled.
    pub fn spawn(mut sink: Box<dyn ExtentSink>, progress: Arc<Progress>) -> Self {
        let (sender, receiver) = sync_channel::<Message>(DEPTH);
        let stages = progress.stages().clone();
        let reader_stages = stages.clone();
        let worker = std::thread::Builder::new()
            .name("write".into())
            .spawn(move || {
                while let Ok(message) = stages.time_waiting(Stage::Sink, || receiver.recv()) {
                    match message {
                        Message::Size(size) => sink.set_size(size)?,
                        Message::Write(extent) => {
                            let len = extent.len();
                            stages.time_busy(Stage::Sink, || sink.write(extent))?;
                            progress.add_written(len);
                        }
                        Message::Finish => return stages.time_busy(Stage::Sink, || sink.finish()),
                    }
                }
                Err(SinkError::Io {
                    what: "abandoning",
                    path: "(target)".into(),
                    source: std::io::Error::other("the import stopped before it was complete"),
                })
            })
            .expect("spawning the write thread");
        ThreadedSink {
            sender: Some(sender),
            worker: Some(worker),
            stages: reader_stages,
        }
    }

    fn send(&mut self, message: Message) -> Result<(), SinkError> {
        let sent = self.sender.as_ref().map(|s| {
            self.stages
                .time_waiting(Stage::Reader, || s.send(message))
                .is_ok()
        });
        if sent == Some(true) {
            return Ok(());
        }
        // The writer stopped: its result says why.
        self.sender.take();
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => Err(e),
            _ => Err(SinkError::Io {
                what: "writing",
                path: "(target)".into(),
                source: std::io::Error::other("the writer thread stopped"),
            }),
        }
    }
}

impl ExtentSink for ThreadedSink {
    fn set_size(&mut self, size: u64) -> Result<(), SinkError> {
        self.send(Message::Size(size))
    }

    fn write(&mut self, extent: Extent) -> Result<(), SinkError> {
        self.send(Message::Write(extent))
    }

    fn finish(&mut self) -> Result<SinkSummary, SinkError> {
        self.send(Message::Finish)?;
        self.sender.take();
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(result)) => result,
            _ => Err(SinkError::Io {
                what: "writing",
                path: "(target)".into(),
                source: std::io::Error::other("the writer thread panicked"),
            }),
        }
    }
}

impl Drop for ThreadedSink {
    /// An unfinished sink is abandoned: the writer drops it (removing any
    /// temporary file) before this returns.
    fn drop(&mut self) {
        self.sender.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::file::SparseFileSink;

    #[test]
    fn a_dropped_unfinished_sink_leaves_no_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        let file = SparseFileSink::create(&target).unwrap();
        let mut sink = ThreadedSink::spawn(Box::new(file), Arc::new(Progress::default()));
        sink.set_size(8192).unwrap();
        sink.write(Extent::data(0, bytes::Bytes::from_static(b"data")))
            .unwrap();
        drop(sink);
        assert!(!target.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temp file left"
        );
    }

    #[test]
    fn a_finished_sink_publishes_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        let file = SparseFileSink::create(&target).unwrap();
        let mut sink = ThreadedSink::spawn(Box::new(file), Arc::new(Progress::default()));
        sink.set_size(8192).unwrap();
        sink.write(Extent::data(4096, bytes::Bytes::from_static(b"data")))
            .unwrap();
        let summary = sink.finish().unwrap();
        assert_eq!(summary.size, 8192);
        let bytes = std::fs::read(&target).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert_eq!(&bytes[4096..4100], b"data");
    }
}
