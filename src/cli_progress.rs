//! The progress bar of `diskimport convert` on a terminal: source bytes read
//! against the source size, with rate and ETA, and decoded/written counts.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use diskimport::progress::Progress;

/// A running progress bar (nothing at all when stderr is not a terminal).
pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bar {
    /// Starts drawing, if stderr is a terminal.
    pub fn start(progress: Arc<Progress>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Bar { stop, thread: None };
        }
        let stop_flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let bar = ProgressBar::new(progress.source_total().max(1));
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} read, {binary_bytes_per_sec}, ETA {eta} {msg}",
                )
                .expect("valid template"),
            );
            while !stop_flag.load(Ordering::Relaxed) {
                let total = progress.source_total();
                if total > 0 {
                    bar.set_length(total);
                }
                bar.set_position(progress.source_read());
                bar.set_message(format!(
                    "| {} decoded, {} written",
                    HumanBytes(progress.decoded()),
                    HumanBytes(progress.written())
                ));
                std::thread::sleep(Duration::from_millis(200));
            }
            bar.finish_and_clear();
        });
        Bar {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and erases the bar.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
