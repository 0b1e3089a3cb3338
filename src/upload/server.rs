//! The upload server's lifecycle and request handling (contract §5.3–5.7):
//! HTTPS on `LISTEN_ADDRESS:LISTEN_PORT`, the request rules in CDI's order
//! (route and method, client certificate, busy/done, clone header, body),
//! one upload at a time, and the end: after the first successful upload
//! (graceful shutdown, "Upload Complete"/"Clone Complete") or at `DEADLINE`
//! ("Deadline Passed"; an upload running then is waited for).
//!
//! Unlike CDI, the async routes also answer only when the data is on the
//! target and every check passed (conversion happens in the stream, so
//! there is nothing left to do in the background), and a failure is that
//! request's HTTP error, after which the server accepts a new upload.
//! Progress is served on the same port (`/metrics`, `/status`, as the
//! importer's status endpoint) and logged every few seconds.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{oneshot, watch};
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::progress::{Phase, Progress};
use crate::status::{format_percent, raw_percent, Endpoint, StatusState};

use super::body;
use super::checksum::{expected_digest, CHECKSUM_HEADER, CONTENT_DIGEST_HEADER};
use super::clone::{CloneKind, CONTENT_TYPE_HEADER};
use super::config::UploadConfig;
use super::failure::Failure;
use super::multipart;
use super::process::{self, Content, Job};
use super::routes::{route, BodyKind, Routed, UploadRoute};
use super::termination::UploadTermination;
use super::tls::{presents_client_name, server_config, TlsError, TlsSettings};

/// Go's `ReadHeaderTimeout` in CDI's server (TLS handshake and head).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long finished connections get to send their last answer.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often progress is logged during an upload.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// How often the status pages sample the counters.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Why the server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS files or settings are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listener could not be set up.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where the one upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for an upload.
    Idle,
    /// An upload is running.
    Busy,
    /// An upload finished; the server is stopping.
    Done(UploadTermination),
}

/// What every request handler shares.
struct Shared {
    config: UploadConfig,
    state: watch::Sender<State>,
    /// The progress of the current (or last) upload and its status pages.
    current: Mutex<(Arc<Progress>, Arc<Endpoint>)>,
}

impl Shared {
    fn pages(&self) -> Arc<Endpoint> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    fn progress(&self) -> Arc<Progress> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Fresh counters for a new upload.
    fn new_progress(&self) -> Arc<Progress> {
        let progress = Arc::new(Progress::default());
        let pages = Arc::new(Endpoint::new(Arc::new(StatusState::new(
            progress.clone(),
            &self.config.owner_uid,
        ))));
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = (progress.clone(), pages);
        progress
    }

    /// Idle → Busy, or the answer CDI gives when that is not possible.
    fn begin(self: &Arc<Self>) -> Result<BusyGuard, StatusCode> {
        let mut refused = None;
        self.state.send_if_modified(|state| match state {
            State::Idle => {
                *state = State::Busy;
                true
            }
            State::Busy => {
                refused = Some(StatusCode::SERVICE_UNAVAILABLE);
                false
            }
            State::Done(_) => {
                refused = Some(StatusCode::CONFLICT);
                false
            }
        });
        match refused {
            Some(code) => Err(code),
            None => Ok(BusyGuard {
                shared: self.clone(),
                done: None,
            }),
        }
    }
}

/// Holds the server busy; on drop it is Done (when the upload succeeded) or
/// Idle again. It lives with the upload's thread, so the server is free
/// again only once that thread has let go of the target.
struct BusyGuard {
    shared: Arc<Shared>,
    done: Option<UploadTermination>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let next = match self.done.take() {
            Some(message) => State::Done(message),
            None => State::Idle,
        };
        self.shared.state.send_replace(next);
    }
}

/// How the server ended, for the termination message and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The exit-0 message.
    pub message: UploadTermination,
}

/// Serves until the first successful upload or the deadline. Errors are
/// setup failures (exit 1, no termination message).
pub fn serve(config: UploadConfig) -> Result<Ending, ServerError> {
    let tls = server_config(&TlsSettings {
        key: config.tls_key.clone(),
        cert: config.tls_cert.clone(),
        client_ca: config.client_ca.clone(),
        min_version: config.tls_min_version.clone(),
        ciphers: config.tls_ciphers.clone(),
    })?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let addr = config.listen;
    let listen_error = |source| ServerError::Listen { addr, source };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(listen_error)?;
    let (state, _) = watch::channel(State::Idle);
    let progress = Arc::new(Progress::default());
    let pages = Arc::new(Endpoint::new(Arc::new(StatusState::new(
        progress.clone(),
        &config.owner_uid,
    ))));
    let shared = Arc::new(Shared {
        config,
        state,
        current: Mutex::new((progress, pages)),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(listen_error)?;
        let local = listener.local_addr().map_err(listen_error)?;
        eprintln!("upload server listening on https://{local}");
        Ok(accept_until_done(listener, acceptor, shared).await)
    })
}

async fn accept_until_done(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) -> Ending {
    let graceful = GracefulShutdown::new();
    let mut state = shared.state.subscribe();
    let left = shared
        .config
        .deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let deadline = tokio::time::sleep(left);
    tokio::pin!(deadline);
    let mut deadline_passed = false;
    // After a success with a linger time: the message, until it is over.
    let mut finished: Option<UploadTermination> = None;
    let linger = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(linger);
    let mut log_tick = tokio::time::interval(LOG_EVERY);
    let mut sample_tick = tokio::time::interval(SAMPLE_EVERY);
    let ending = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let watcher = graceful.watcher();
                    tokio::spawn(connection(tcp, acceptor.clone(), shared.clone(), watcher));
                }
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    tracing::debug!("upload server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = state.changed() => {
                if changed.is_err() {
                    break Ending { message: UploadTermination::deadline_passed() };
                }
                let now = state.borrow_and_update().clone();
                match now {
                    State::Done(message) if shared.config.linger.is_zero() => {
                        break Ending { message }
                    }
                    State::Done(message) => {
                        linger
                            .as_mut()
                            .reset(tokio::time::Instant::now() + shared.config.linger);
                        finished = Some(message);
                    }
                    State::Idle if deadline_passed => {
                        break Ending { message: UploadTermination::deadline_passed() }
                    }
                    _ => {}
                }
            }
            () = &mut linger, if finished.is_some() => {
                break Ending { message: finished.take().unwrap_or_else(UploadTermination::deadline_passed) };
            }
            () = &mut deadline, if !deadline_passed && finished.is_none() => {
                deadline_passed = true;
                eprintln!("deadline passed");
                if *state.borrow() == State::Idle {
                    break Ending { message: UploadTermination::deadline_passed() };
                }
                eprintln!("an upload is running: waiting for it to end");
            }
            _ = sample_tick.tick() => shared.pages().sample(),
            _ = log_tick.tick() => {
                if *state.borrow() == State::Busy {
                    eprintln!("{}", progress_line(&shared.progress()));
                }
            }
        }
    };
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("some connections did not close in time");
    }
    ending
}

/// One line of progress for the log.
fn progress_line(progress: &Progress) -> String {
    let read = progress.source_read();
    match progress.source_total() {
        0 => format!("upload progress: {read} bytes received"),
        total => format!(
            "upload progress: {}% ({read} of {total} bytes received, {} bytes written)",
            format_percent(raw_percent(progress)),
            progress.written()
        ),
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!("upload server: TLS handshake: {e}");
            return;
        }
        Err(_) => return,
    };
    // A certificate is here only if it chained to the client CA bundle.
    let chain: Option<Vec<CertificateDer<'static>>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect());
    let chain = Arc::new(chain);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        let chain = chain.clone();
        async move { Ok::<_, Infallible>(handle(request, shared, chain).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!("upload server: connection: {e}");
    }
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    chain: Arc<Option<Vec<CertificateDer<'static>>>>,
) -> Response<Full<Bytes>> {
    match route(request.method(), request.uri().path()) {
        Routed::Health => answer(StatusCode::OK, "OK"),
        Routed::StatusPage => shared.pages().respond(request.uri().path()),
        Routed::AsyncProbe => answer(StatusCode::OK, ""),
        Routed::WrongMethod => answer(StatusCode::NOT_FOUND, ""),
        Routed::NotFound => answer(StatusCode::NOT_FOUND, "404 page not found\n"),
        Routed::Upload(upload_route) => {
            if !presents_client_name(chain.as_deref(), &shared.config.client_name) {
                eprintln!(
                    "refused {}: no verified client certificate for {:?}",
                    request.uri().path(),
                    shared.config.client_name
                );
                tokio::spawn(body::discard(request.into_body()));
                return answer(StatusCode::UNAUTHORIZED, "");
            }
            let busy = match shared.begin() {
                Ok(guard) => guard,
                Err(code) => {
                    tokio::spawn(body::discard(request.into_body()));
                    return answer(code, "");
                }
            };
            match upload(request, upload_route, busy, &shared).await {
                Ok(()) => answer(StatusCode::OK, ""),
                Err(failure) => {
                    eprintln!("upload failed ({}): {}", failure.status, failure.body);
                    answer(failure.status, failure.body)
                }
            }
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Runs one upload with the server held busy by `busy`.
async fn upload(
    request: Request<Incoming>,
    upload_route: UploadRoute,
    busy: BusyGuard,
    shared: &Arc<Shared>,
) -> Result<(), Failure> {
    let (head, body) = request.into_parts();
    match start_job(&head, upload_route, busy, shared) {
        Ok(started) => run_job(started, body, &head, shared).await,
        Err(failure) => {
            tokio::spawn(body::discard(body));
            Err(failure)
        }
    }
}

/// An upload accepted from its head, about to read its body.
struct Started {
    job: Job,
    /// The multipart boundary of a form upload.
    boundary: Option<String>,
    busy: BusyGuard,
    progress: Arc<Progress>,
}

/// The upload `head` asks for, with fresh progress counters, or the answer
/// refusing it before its body is read.
fn start_job(
    head: &hyper::http::request::Parts,
    upload_route: UploadRoute,
    busy: BusyGuard,
    shared: &Arc<Shared>,
) -> Result<Started, Failure> {
    let headers = &head.headers;
    let bad_request = |detail: String| Failure::new(StatusCode::BAD_REQUEST, &detail);
    let clone = CloneKind::from_header(header(headers, CONTENT_TYPE_HEADER));
    let content = match (clone, upload_route.body) {
        (Some(_), _) if upload_route.is_async => {
            return Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "async clone not supported",
            ))
        }
        (Some(kind), _) => Content::Clone(kind),
        (None, BodyKind::Archive) => Content::Archive,
        (None, _) => Content::Disk,
    };
    let boundary = match upload_route.body {
        BodyKind::Form if clone.is_none() => Some(
            multipart::boundary(header(headers, CONTENT_TYPE.as_str()))
                .map_err(|e| bad_request(e.to_string()))?,
        ),
        _ => None,
    };
    let expected = expected_digest(
        header(headers, CHECKSUM_HEADER),
        header(headers, CONTENT_DIGEST_HEADER),
    )
    .map_err(|e| bad_request(e.to_string()))?;
    let content_length = header(headers, CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok());
    let progress = shared.new_progress();
    progress.set_phase(Phase::Connecting);
    if let Some(length) = content_length {
        progress.set_source_total(length);
    }
    let job = Job {
        content,
        expected,
        image_length: content_length.filter(|_| boundary.is_none()),
    };
    Ok(Started {
        job,
        boundary,
        busy,
        progress,
    })
}

/// Runs the upload on its own thread while feeding it `body`, and waits for
/// its outcome.
async fn run_job(
    started: Started,
    body: Incoming,
    head: &hyper::http::request::Parts,
    shared: &Arc<Shared>,
) -> Result<(), Failure> {
    let Started {
        job,
        boundary,
        mut busy,
        progress,
    } = started;
    eprintln!(
        "upload started: {:?} via {}, {}",
        job.content,
        head.uri.path(),
        match progress.source_total() {
            0 => "length unknown".to_string(),
            length => format!("{length} bytes"),
        }
    );
    let (sender, reader) = body::channel();
    let (result_tx, result_rx) = oneshot::channel();
    let config = shared.config.clone();
    let job_progress = progress.clone();
    let (finished_tx, finished_rx) = oneshot::channel::<()>();
    // The guard goes with the thread: the server is free again only when
    // the upload let go of the target.
    std::thread::Builder::new()
        .name("upload".into())
        .spawn(move || {
            let result = process::run(job, reader, &config, job_progress.clone());
            match &result {
                Ok(message) => {
                    job_progress.set_phase(Phase::Succeeded);
                    busy.done = Some(message.clone());
                }
                Err(failure) => job_progress.fail(&failure.body),
            }
            let _ = result_tx.send(result);
            // Done is published only after the answer is handed over, so
            // the shutdown that follows waits for that answer.
            let _ = finished_rx.blocking_recv();
            drop(busy);
        })
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let feeding = async move {
        match boundary {
            Some(boundary) => multipart::feed_file_part(body, boundary, sender).await,
            None => body::feed(body, sender).await,
        }
    };
    let mut feeding = Box::pin(feeding);
    tokio::pin!(result_rx);
    let result = tokio::select! {
        result = &mut result_rx => {
            // Ended before the body did: the rest is read and dropped in
            // the background, so the answer reaches the client.
            tokio::spawn(feeding);
            result
        }
        () = &mut feeding => (&mut result_rx).await,
    };
    let _ = finished_tx.send(());
    let outcome = result.unwrap_or_else(|_| {
        Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the upload thread stopped",
        ))
    });
    if outcome.is_ok() {
        eprintln!("upload complete: {}", progress_line(&progress));
    }
    outcome.map(|_| ())
}
