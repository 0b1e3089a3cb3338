//! `cdi-containerimage-server` (also started as `/shared/server`): the node-pull
//! sidecar CDI runs as the entrypoint of the user's containerDisk image
//! (cdi-tools-contract.md §2). It serves the image directory's one disk file
//! over plain HTTP on 127.0.0.1 (HEAD and conditional requests by
//! `tower-http`'s file service; ranges, errors and redirects as Go's file
//! server sends them, byte for byte, by [`super::range_request`] and the
//! helpers here), answers `GET /info` with its environment,
//! writes the file's bare name to the ready file, and exits 0 once the
//! importer creates the done file.
//!
//! It runs in images with no libc, passwd, `/tmp` or `/etc/hosts`: it binds
//! the loopback address directly and opens no file outside the image
//! directory and the two handshake files.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::range_request::{self, Piece, RangeAsk};

/// How often the done file is looked for (CDI's server stats it once a second).
pub const DONE_POLL: Duration = Duration::from_secs(1);
/// How long a client may take to send its request head (CDI: 10 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Directories whose presence marks a bootc image, which CDI refuses.
const BOOTC_MARKERS: [&str; 2] = ["/sysroot", "/ostree"];

/// What the server is told by its flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Directory holding the one disk file.
    pub image_dir: PathBuf,
    /// Created once listening, holding the disk file's bare name.
    pub ready_file: PathBuf,
    /// Its appearance means the importer is done.
    pub done_file: PathBuf,
}

/// Why the server stopped without serving to the end.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A bootc (ostree) image: CDI does not import these yet.
    #[error("bootc image detected ({marker} exists): importing bootc images is not implemented")]
    Bootc {
        /// The directory that gave it away.
        marker: &'static str,
    },
    /// The image directory cannot be read.
    #[error("Invalid container image: reading {dir}: {source}")]
    ImageDir {
        /// The directory.
        dir: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image directory does not hold exactly one non-directory entry.
    #[error("Invalid container image: {dir} must hold exactly one disk file, it holds {found}")]
    Layout {
        /// The directory.
        dir: String,
        /// What it holds instead.
        found: String,
    },
    /// The port cannot be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The ready file cannot be written.
    #[error("writing the ready file {path}: {source}")]
    ReadyFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The async runtime cannot start.
    #[error("starting the runtime: {0}")]
    Runtime(#[source] io::Error),
}

/// Refuses bootc images, checks the image directory, then serves until the
/// done file appears. `env` is what `GET /info` reports (CDI: the process
/// environment, `NAME=value` strings).
pub fn run(config: &ServerConfig, env: Vec<String>) -> Result<(), ServerError> {
    if let Some(marker) = BOOTC_MARKERS.into_iter().find(|m| Path::new(m).is_dir()) {
        return Err(ServerError::Bootc { marker });
    }
    let disk = single_disk_file(&config.image_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    runtime.block_on(serve(config, disk, env))
}

/// The one entry of `dir`, which must not be a directory (a symlink counts as
/// a file, as in CDI). Every entry is logged first.
pub fn single_disk_file(dir: &Path) -> Result<PathBuf, ServerError> {
    let read_err = |source| ServerError::ImageDir {
        dir: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<(PathBuf, bool)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let is_dir = entry.file_type().map_err(read_err)?.is_dir();
        tracing::info!(path = %entry.path().display(), "image directory entry");
        entries.push((entry.path(), is_dir));
    }
    match entries.as_slice() {
        [(path, false)] => Ok(path.clone()),
        [(path, true)] => Err(ServerError::Layout {
            dir: dir.display().to_string(),
            found: format!("only the directory {}", path.display()),
        }),
        other => Err(ServerError::Layout {
            dir: dir.display().to_string(),
            found: format!("{} entries", other.len()),
        }),
    }
}

async fn serve(config: &ServerConfig, disk: PathBuf, env: Vec<String>) -> Result<(), ServerError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_ready_file(&config.ready_file, &name).map_err(|source| ServerError::ReadyFile {
        path: config.ready_file.display().to_string(),
        source,
    })?;
    tracing::info!(%addr, file = %name, "serving the disk");
    let routes = Arc::new(Routes {
        disk_path: format!("/{name}"),
        disk,
        dir: config.image_dir.clone(),
        info: info_body(&env),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let done = wait_for_file(config.done_file.clone());
    tokio::pin!(done);
    loop {
        tokio::select! {
            () = &mut done => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let routes = routes.clone();
                let mut stop = stop_rx.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let routes = routes.clone();
                        async move { Ok::<_, Infallible>(routes.answer(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "connection ended");
                            }
                        }
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        }
    }
    // The importer is done: stop accepting, let open requests finish, and
    // leave nothing behind that a restarted importer could mistake for a
    // server that is still up.
    drop(listener);
    if let Err(e) = std::fs::remove_file(&config.done_file) {
        tracing::warn!(path = %config.done_file.display(), error = %e, "removing the done file");
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    if let Err(e) = std::fs::remove_file(&config.ready_file) {
        tracing::warn!(path = %config.ready_file.display(), error = %e, "removing the ready file");
    }
    eprintln!("Importer has completed");
    Ok(())
}

/// The ready file: the bare name, no newline, mode 0600, as CDI writes it.
fn write_ready_file(path: &Path, name: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(name.as_bytes())?;
    file.sync_all()
}

/// Resolves once `path` exists.
async fn wait_for_file(path: PathBuf) {
    let mut tick = tokio::time::interval(DONE_POLL);
    loop {
        tick.tick().await;
        if tokio::fs::symlink_metadata(&path).await.is_ok() {
            return;
        }
    }
}

/// `{"env":[...]}` and a newline, as Go's JSON encoder writes it.
fn info_body(env: &[String]) -> Bytes {
    let mut body = serde_json::to_vec(&serde_json::json!({ "env": env }))
        .expect("a list of strings serializes");
    body.push(b'\n');
    Bytes::from(body)
}

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// The three things served: the disk, `/info`, and a listing of `/`.
struct Routes {
    disk_path: String,
    disk: PathBuf,
    dir: PathBuf,
    info: Bytes,
}

/// What Go's sniffing names a disk image (no extension maps to a type in a
/// containerDisk image, which has no `/etc/mime.types`).
const DISK_TYPE: &str = "application/octet-stream";

impl Routes {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path == "/info" {
            return simple(StatusCode::OK, "application/json", self.info.clone());
        }
        if let Some(location) = redirect_target(&path, &self.disk_path) {
            let location = match req.uri().query() {
                Some(q) => format!("{location}?{q}"),
                None => location,
            };
            return redirect(req.method(), &location, path != clean_path(&path));
        }
        if path == self.disk_path {
            if let Some(response) = self.ranged(&req).await {
                return response;
            }
            let mut req = req;
            // Ranges Go ignores (they add up to more than the file) get the
            // whole file.
            req.headers_mut().remove(hyper::header::RANGE);
            return match ServeFile::new(&self.disk).oneshot(req).await {
                Ok(response) => {
                    let mut response = response.map(|b| b.map_err(io::Error::other).boxed_unsync());
                    if response.status() == StatusCode::NOT_MODIFIED {
                        // Go keeps Last-Modified on a 304.
                        if let Some(modified) = modified_header(&self.disk) {
                            response
                                .headers_mut()
                                .insert(hyper::header::LAST_MODIFIED, modified);
                        }
                    }
                    response
                }
                Err(e) => simple(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    Bytes::from(format!("{e}\n")),
                ),
            };
        }
        if path == "/" {
            let name = html_escape(&self.disk_path[1..]);
            let listing = format!("<pre>\n<a href=\"{name}\">{name}</a>\n</pre>\n");
            let mut response = simple(StatusCode::OK, "text/html; charset=utf-8", listing.into());
            if let Some(modified) = modified_header(&self.dir) {
                response
                    .headers_mut()
                    .insert(hyper::header::LAST_MODIFIED, modified);
            }
            return response;
        }
        go_error(StatusCode::NOT_FOUND, "404 page not found\n")
    }

    /// A `Range` request answered as Go answers it, or `None` for the file
    /// service (no `Range`, ranges Go ignores, or conditional headers, which
    /// the file service evaluates).
    async fn ranged(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        use hyper::header::{self, HeaderValue};
        let headers = req.headers();
        let value = headers.get(header::RANGE)?;
        let conditional = [
            header::IF_RANGE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
        ];
        if conditional.iter().any(|h| headers.contains_key(h)) {
            return None;
        }
        let meta = tokio::fs::metadata(&self.disk).await.ok()?;
        let size = meta.len();
        let ranges = match range_request::parse(value.to_str().unwrap_or("-"), size) {
            RangeAsk::Whole => return None,
            RangeAsk::Invalid => {
                return Some(self.range_error(go_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid range\n",
                )))
            }
            RangeAsk::NoOverlap => {
                let mut response = go_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid range: failed to overlap\n",
                );
                response.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
                );
                return Some(self.range_error(response));
            }
            RangeAsk::Ranges(ranges) => ranges,
        };
        let (pieces, content_type, content_range) = if let [range] = ranges[..] {
            (
                vec![Piece::File(range)],
                DISK_TYPE.to_string(),
                Some(range.content_range(size)),
            )
        } else {
            let boundary = range_request::random_boundary();
            (
                range_request::multipart(&ranges, size, DISK_TYPE, &boundary),
                format!("multipart/byteranges; boundary={boundary}"),
                None,
            )
        };
        let length = range_request::body_length(&pieces);
        let body: Body = if req.method() == hyper::Method::HEAD {
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync()
        } else {
            StreamBody::new(range_request::stream_pieces(&self.disk, pieces).map_ok(Frame::data))
                .boxed_unsync()
        };
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let h = response.headers_mut();
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&content_type).expect("ASCII"),
        );
        if let Some(range) = content_range {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&range).expect("ASCII"),
            );
        }
        if let Some(modified) = modified_header(&self.disk) {
            h.insert(header::LAST_MODIFIED, modified);
        }
        Some(response)
    }

    /// A 416 with Go's reason phrase (`Requested Range Not Satisfiable`) and
    /// the file's Last-Modified, as Go's file server sends it.
    fn range_error(&self, mut response: Response<Body>) -> Response<Body> {
        response
            .extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(
                b"Requested Range Not Satisfiable",
            ));
        if let Some(modified) = modified_header(&self.disk) {
            response
                .headers_mut()
                .insert(hyper::header::LAST_MODIFIED, modified);
        }
        response
    }
}

/// Go's `http.Error`: plain text, `X-Content-Type-Options: nosniff`.
fn go_error(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = simple(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    );
    response.headers_mut().insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    response
}

/// `path`'s modification time as an HTTP date.
fn modified_header(path: &Path) -> Option<hyper::header::HeaderValue> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    hyper::header::HeaderValue::from_str(&httpdate::fmt_http_date(modified)).ok()
}

/// Go's `path.Clean` of an absolute URL path, keeping a trailing slash (what
/// Go's `ServeMux` redirects to when a request path is not clean).
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut clean = format!("/{}", parts.join("/"));
    if path.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// Where Go sends a request for `path` instead of answering it: the clean
/// path when `path` is not clean (`ServeMux`), the disk without its trailing
/// slash, and `./` for an `index.html` (`FileServer`).
fn redirect_target(path: &str, disk_path: &str) -> Option<String> {
    let clean = clean_path(path);
    if clean != path {
        return Some(clean);
    }
    if path.ends_with("/index.html") {
        return Some("./".to_string());
    }
    if path.strip_suffix('/') == Some(disk_path) {
        return Some(format!("../{}", &disk_path[1..]));
    }
    None
}

/// A 301 to `location`: from `ServeMux` (`mux`: typed HTML, and for a GET a
/// one-line link body, as Go's `http.Redirect`) or from `FileServer` (no
/// body).
fn redirect(method: &hyper::Method, location: &str, mux: bool) -> Response<Body> {
    use hyper::header::{self, HeaderValue};
    let get = method == hyper::Method::GET;
    let body = if mux && get {
        format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            html_escape(location)
        )
    } else {
        String::new()
    };
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let h = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, value);
    }
    if mux && (get || method == hyper::Method::HEAD) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    response
}

fn simple(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_dir_must_hold_one_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            single_disk_file(dir.path()),
            Err(ServerError::Layout { .. })
        ));
        std::fs::write(dir.path().join("fedora.qcow2"), b"x").unwrap();
        assert_eq!(
            single_disk_file(dir.path()).unwrap(),
            dir.path().join("fedora.qcow2")
        );
        std::fs::write(dir.path().join("second"), b"x").unwrap();
        let err = single_disk_file(dir.path()).unwrap_err();
        assert!(err.to_string().contains("2 entries"), "{err}");
    }

    #[test]
    fn a_lone_directory_is_not_a_disk_but_a_symlink_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(matches!(
            single_disk_file(dir.path()),
            Err(ServerError::Layout { .. })
        ));
        std::fs::remove_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("link.img")).unwrap();
        assert_eq!(
            single_disk_file(dir.path()).unwrap(),
            dir.path().join("link.img")
        );
    }

    #[test]
    fn info_is_go_encoded_json() {
        let body = info_body(&["A=1".into(), "KUBEVIRT_IO_X=y".into()]);
        assert_eq!(&body[..], b"{\"env\":[\"A=1\",\"KUBEVIRT_IO_X=y\"]}\n");
    }
}
