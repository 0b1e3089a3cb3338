//! The one tokio runtime every network source runs on: two worker threads,
//! made on first use and kept for the life of the process. Blocking callers
//! (the decoder thread) talk to it over bounded channels only.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The shared runtime, or why it could not be started.
pub fn runtime() -> Result<&'static Runtime, std::io::Error> {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("net")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| std::io::Error::other(format!("starting the network runtime: {e}")))
}
