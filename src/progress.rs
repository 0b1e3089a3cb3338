//! Progress counters shared by the pipeline's stages: plain atomics, read by the
//! CLI's progress bar (and later the status endpoint) without locking.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Where an import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not started.
    Pending = 0,
    /// Connecting to the source.
    Connecting = 1,
    /// Bytes are flowing.
    Transferring = 2,
    /// Syncing and sizing the target.
    Finishing = 3,
    /// Done, successfully.
    Succeeded = 4,
    /// Stopped by an error.
    Failed = 5,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            1 => Phase::Connecting,
            2 => Phase::Transferring,
            3 => Phase::Finishing,
            4 => Phase::Succeeded,
            5 => Phase::Failed,
            _ => Phase::Pending,
        }
    }
}

/// Byte counters of one import.
#[derive(Debug, Default)]
pub struct Progress {
    source_read: AtomicU64,
    source_total: AtomicU64,
    decoded: AtomicU64,
    written: AtomicU64,
    /// Set (for instance by a SIGTERM handler) to stop the import: the next
    /// read from the source fails, and the normal error path cleans up.
    cancelled: Arc<AtomicBool>,
    phase: AtomicU8,
    error: Mutex<Option<String>>,
    /// The `KEY=value` environment the image declares (a containerDisk's
    /// config, or the node-pull sidecar's `/info`), for CDI's PVC labels.
    image_env: Mutex<Vec<String>>,
    /// Busy and waiting time of each stage.
    stages: Arc<crate::stages::Stages>,
}

impl Progress {
    /// The per-stage clocks.
    pub fn stages(&self) -> &Arc<crate::stages::Stages> {
        &self.stages
    }

    /// Records the environment the image declares.
    pub fn set_image_env(&self, env: Vec<String>) {
        *self.image_env.lock().unwrap_or_else(|e| e.into_inner()) = env;
    }
    /// The environment the image declares (empty when none was seen).
    pub fn image_env(&self) -> Vec<String> {
        self.image_env
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Bytes read from the source so far (as stored: still compressed).
    pub fn source_read(&self) -> u64 {
        self.source_read.load(Ordering::Relaxed)
    }
    /// Size of the source, 0 when unknown.
    pub fn source_total(&self) -> u64 {
        self.source_total.load(Ordering::Relaxed)
    }
    /// Bytes that came out of the decoder.
    pub fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }
    /// Guest bytes handled by the sink (written or left as holes).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Counts bytes read from the source.
    pub fn add_source_read(&self, n: u64) {
        self.source_read.fetch_add(n, Ordering::Relaxed);
    }
    /// Records the source's total size.
    pub fn set_source_total(&self, n: u64) {
        self.source_total.store(n, Ordering::Relaxed);
    }
    /// Counts decoded bytes.
    pub fn add_decoded(&self, n: u64) {
        self.decoded.fetch_add(n, Ordering::Relaxed);
    }
    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }
    /// Moves to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }
    /// The error that stopped the import, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().map(|e| e.clone()).unwrap_or(None)
    }
    /// Records the error that stopped the import and moves to `Failed`.
    pub fn fail(&self, message: &str) {
        if let Ok(mut e) = self.error.lock() {
            *e = Some(message.to_string());
        }
        self.set_phase(Phase::Failed);
    }
    /// The flag that cancels the import when set.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }
    /// True once the import was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
    /// Counts guest bytes handled by the sink.
    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }
}

/// A reader that counts the bytes passing through it into [`Progress`].
pub struct CountingReader<R> {
    inner: R,
    progress: std::sync::Arc<Progress>,
}

impl<R> CountingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, progress: std::sync::Arc<Progress>) -> Self {
        CountingReader { inner, progress }
    }
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check_cancelled()?;
        let n = self.inner.read(buf)?;
        self.progress.add_source_read(n as u64);
        Ok(n)
    }
}

impl<R> CountingReader<R> {
    fn check_cancelled(&self) -> std::io::Result<()> {
        if self.progress.is_cancelled() {
            // Not ErrorKind::Interrupted: readers retry those.
            return Err(std::io::Error::other(
                "the import was stopped by a termination signal",
            ));
        }
        Ok(())
    }
}

impl<R: crate::piece::PieceRead> crate::piece::PieceRead for CountingReader<R> {
    fn read_piece(&mut self, max: usize) -> std::io::Result<Option<bytes::Bytes>> {
        self.check_cancelled()?;
        let piece = self.inner.read_piece(max)?;
        if let Some(piece) = &piece {
            self.progress.add_source_read(piece.len() as u64);
        }
        Ok(piece)
    }
}
