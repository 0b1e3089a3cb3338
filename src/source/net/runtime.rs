//! The one tokio runtime every network source runs on: one worker thread,
//! made on first use and kept for the life of the process. Blocking callers
//! (the decoder thread) talk to it over bounded channels only. One worker is
//! enough to keep several connections busy (the work per byte is a copy), and
//! a second one cost CPU: measured on a 2 GiB download over loopback, about a
//! tenth more CPU time in wake-ups between the two workers.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The shared runtime, or why it could not be started.
pub fn runtime() -> Result<&'static Runtime, std::io::Error> {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("net")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| std::io::Error::other(format!("starting the network runtime: {e}")))
}
