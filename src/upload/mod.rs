//! `diskimport upload-server` (also started as `cdi-uploadserver`): a
//! drop-in for CDI's upload and host-assisted clone-target server
//! (`cdi-tools-contract.md` §5) that converts the request body in the stream,
//! through the same pipeline as an import, with no scratch copy for any
//! format.
//!
//! * `config` — the environment the upload controller sets.
//! * `tls` — server TLS, client-certificate and CN rules.
//! * `routes` — CDI's route table.
//! * `server` — lifecycle, request rules, one upload at a time.
//! * `body` — the request body as a blocking `Read` for the pipeline.
//! * `multipart` — streamed `multipart/form-data` bodies.
//! * `checksum` — the optional digest headers.
//! * `process` — one upload: pipeline, archive or clone, to the target.
//! * `target` — block device or disk file, size checks, finishing.
//! * `clone` — snappy framing, raw and tar clone streams.
//! * `failure` — which error is a 400 and which a 500, with CDI's bodies.
//! * `termination` — the JSON termination messages.

pub mod body;
pub mod checksum;
pub mod clone;
pub mod config;
pub mod failure;
pub mod multipart;
pub mod process;
pub mod routes;
pub mod server;
pub mod target;
pub mod termination;
pub mod tls;

use std::path::Path;

/// How the process ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit 0; this JSON was written as the termination message.
    Done(String),
    /// Exit 1 with this error (setup, TLS, listener); no termination message.
    Failed(String),
}

/// Runs the upload server from the process environment `env`, with CDI's
/// paths under `root`, and writes the termination message.
pub fn run_upload_server(env: &[(String, String)], root: &Path) -> Exit {
    let config = match config::UploadConfig::from_env(env, root) {
        Ok(c) => c,
        Err(e) => return Exit::Failed(e.to_string()),
    };
    let log = config.termination_log.clone();
    match server::serve(config) {
        Ok(ending) => {
            let json = ending.message.to_json();
            if let Err(e) = std::fs::write(&log, &json) {
                // The controller must find a message: this is a failure.
                return Exit::Failed(format!(
                    "writing the termination message to {}: {e}",
                    log.display()
                ));
            }
            Exit::Done(json)
        }
        Err(e) => Exit::Failed(crate::error::describe_chain(&e)),
    }
}
