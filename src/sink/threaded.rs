//! Runs a sink on its own thread, so that writing overlaps parsing. Extents
//! travel over a bounded channel; the first error the sink hits is returned
//! by the next call on this side.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{ExtentSink, SinkError, SinkSummary};
use crate::extent::Extent;
use crate::progress::Progress;

/// Extents that may wait for the writer.
const DEPTH: usize = 8;

enum Message {
    Size(u64),
    Write(Extent),
}

/// The caller's end of a sink running on a writer thread.
pub struct ThreadedSink {
    sender: Option<SyncSender<Message>>,
    worker: Option<JoinHandle<Result<SinkSummary, SinkError>>>,
}

impl ThreadedSink {
    /// Moves `sink` to a new thread; `progress` counts the guest bytes handled.
    pub fn spawn(mut sink: Box<dyn ExtentSink>, progress: Arc<Progress>) -> Self {
        let (sender, receiver) = sync_channel::<Message>(DEPTH);
        let worker = std::thread::Builder::new()
            .name("write".into())
            .spawn(move || {
                for message in receiver {
                    match message {
                        Message::Size(size) => sink.set_size(size)?,
                        Message::Write(extent) => {
                            let len = extent.len();
                            sink.write(extent)?;
                            progress.add_written(len);
                        }
                    }
                }
                sink.finish()
            })
            .expect("spawning the write thread");
        ThreadedSink {
            sender: Some(sender),
            worker: Some(worker),
        }
    }

    fn send(&mut self, message: Message) -> Result<(), SinkError> {
        let sent = self.sender.as_ref().map(|s| s.send(message).is_ok());
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
