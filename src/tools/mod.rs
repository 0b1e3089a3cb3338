//! The programs CDI runs from the importer image besides the importer
//! (cdi-tools-contract.md): the node-pull sidecar, size detection and the
//! DataImportCron source poller. Each is a library function returning a typed
//! error; the binary maps program names, flags and exit codes onto them.

pub mod containerimage_server;
pub mod kube_api;
pub mod range_request;
pub mod size_detection;
pub mod source_update_poller;
