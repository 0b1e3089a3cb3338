//! The progress endpoint CDI's controller scrapes (contract §4): HTTPS with a
//! self-signed certificate generated at start, served from a background thread
//! while an import runs.
//!
//! Routes:
//!
//! * `/metrics` — Prometheus/OpenMetrics text. The series the controller reads
//!   is `kubevirt_cdi_import_progress_total{ownerUID="<OWNER_UID>"}`: the
//!   percentage of the source read (still compressed) of its known size, 100
//!   once the import succeeded, never lower than an earlier scrape saw, and
//!   always a plain decimal (the controller's regex
//!   `(\d{1,3}\.?\d*)` cannot read exponents, so that family is written by
//!   hand, see [`format_percent`]). The other series (bytes read, decoded and
//!   written, source size, phase, throughput) come from `prometheus-client`.
//! * `/status` — one JSON object, see [`StatusReport`].
//! * `/healthz` — `200 ok`.
//! * any other path — the `/metrics` content, as CDI's Go importer (whose
//!   `promhttp.Handler()` serves every path) does.
//!
//! The progress series is absent, as in CDI (the controller shows N/A), until
//! the source's size is known; when it never is (no `Content-Length`), it
//! appears at 100 when the import succeeds.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_rustls::rustls;

use crate::progress::{Phase, Progress};

/// Name of the progress family; its one sample is `<name>_total`.
pub const PROGRESS_METRIC: &str = "kubevirt_cdi_import_progress";
/// Common name of the generated certificate.
pub const CERT_COMMON_NAME: &str = "diskimport-importer";
/// How long a client may take for the TLS handshake and the request head
/// (Go's `ReadHeaderTimeout` in CDI's server is 10 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Throughput is the rate over this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// How often the server samples the byte counters for the throughput.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Decimal places of the progress value.
const PERCENT_DECIMALS: u32 = 6;

/// Progress in percent of `progress` right now: bytes read of the source's
/// size, capped at 100; 100 once succeeded; 0 while the size is unknown.
pub fn raw_percent(progress: &Progress) -> f64 {
    if progress.phase() == Phase::Succeeded {
        return 100.0;
    }
    let total = progress.source_total();
    if total == 0 {
        return 0.0;
    }
    let p = progress.source_read() as f64 / total as f64 * 100.0;
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 100.0)
    }
}

/// `percent` as a plain decimal, never with an exponent: clamped to 0–100,
/// rounded DOWN to 6 decimals (so nothing short of done reads as 100, and the
/// text never decreases when the value does not), trailing zeros dropped:
/// `12.34`, `0.00001`, `100`, `0`.
pub fn format_percent(percent: f64) -> String {
    let p = if percent.is_nan() {
        0.0
    } else {
        percent.clamp(0.0, 100.0)
    };
    let scale = 10u64.pow(PERCENT_DECIMALS);
    // Exact for the range: 100 * 10^6 is far below 2^53.
    let units = (p * scale as f64).floor() as u64;
    let whole = units / scale;
    let frac = units % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:0width$}", width = PERCENT_DECIMALS as usize);
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A label value escaped for the text exposition format.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The progress family, written by hand so the value is always a plain
/// decimal (prometheus-client prints small floats with an exponent).
pub fn progress_family(owner_uid: &str, percent: f64) -> String {
    format!(
        "# HELP {PROGRESS_METRIC} The import progress in percentage.\n\
         # TYPE {PROGRESS_METRIC} counter\n\
         {PROGRESS_METRIC}_total{{ownerUID=\"{}\"}} {}\n",
        escape_label_value(owner_uid),
        format_percent(percent)
    )
}

/// What `/status` answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// `pending`, `connecting`, `transferring`, `finishing`, `succeeded`, `failed`.
    pub phase: String,
    /// Bytes read from the source (as stored: still compressed).
    pub bytes_read: u64,
    /// Size of the source, null when unknown.
    pub bytes_total: Option<u64>,
    /// Bytes out of the decoder.
    pub bytes_decoded: u64,
    /// Guest bytes handled by the target (written or left as holes).
    pub bytes_written: u64,
    /// The value of the progress series, as a number.
    pub percent: f64,
    /// Source bytes per second over the last few seconds.
    pub rate_bytes_per_second: f64,
    /// Seconds left at that rate; null when unknown.
    pub eta_seconds: Option<f64>,
    /// The error that stopped the import, if any.
    pub error: Option<String>,
}

/// What the endpoint reports from: the shared counters plus the highest
/// progress already reported and recent samples for the throughput.
#[derive(Debug)]
pub struct StatusState {
    progress: Arc<Progress>,
    owner_uid: String,
    /// `f64::to_bits` of the highest percent reported. For non-negative
    /// floats the bit patterns order as the values do, so `fetch_max` works.
    reported: AtomicU64,
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl StatusState {
    /// State over `progress`, labelled with `owner_uid`.
    pub fn new(progress: Arc<Progress>, owner_uid: &str) -> StatusState {
        StatusState {
            progress,
            owner_uid: owner_uid.to_string(),
            reported: AtomicU64::new(0f64.to_bits()),
            samples: Mutex::new(VecDeque::new()),
        }
    }

    /// The progress to report: the current value, or the highest reported
    /// before if that is higher (the series never goes back).
    pub fn percent(&self) -> f64 {
        let now = raw_percent(&self.progress);
        let before = self.reported.fetch_max(now.to_bits(), Ordering::Relaxed);
        f64::from_bits(before).max(now)
    }

    /// True once the progress series exists: the source's size is known or
    /// the import succeeded.
    pub fn has_progress(&self) -> bool {
        self.progress.source_total() > 0 || self.progress.phase() == Phase::Succeeded
    }

    /// Records the current byte count for the throughput.
    pub fn sample(&self) {
        self.sample_at(Instant::now(), self.progress.source_read());
    }

    fn sample_at(&self, at: Instant, read: u64) {
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        samples.push_back((at, read));
        while samples.len() > 2
            && samples
                .front()
                .is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Source bytes per second over the recent samples (0 until there are
    /// two samples some time apart).
    pub fn rate(&self) -> f64 {
        self.sample();
        let Ok(samples) = self.samples.lock() else {
            return 0.0;
        };
        match (samples.front(), samples.back()) {
            (Some((t0, r0)), Some((t1, r1))) => {
                let seconds = t1.duration_since(*t0).as_secs_f64();
                if seconds < 0.1 {
                    0.0
                } else {
                    r1.saturating_sub(*r0) as f64 / seconds
                }
            }
            _ => 0.0,
        }
    }

    /// The `/status` answer.
    pub fn report(&self) -> StatusReport {
        let p = &self.progress;
        let phase = p.phase();
        let total = p.source_total();
        let read = p.source_read();
        let rate = self.rate();
        let eta_seconds = match phase {
            Phase::Succeeded => Some(0.0),
            Phase::Connecting | Phase::Transferring if total > 0 && rate > 0.0 => {
                Some(total.saturating_sub(read) as f64 / rate)
            }
            _ => None,
        };
        let percent = format_percent(self.percent()).parse().unwrap_or(0.0);
        StatusReport {
            phase: phase_name(phase).to_string(),
            bytes_read: read,
            bytes_total: (total > 0).then_some(total),
            bytes_decoded: p.decoded(),
            bytes_written: p.written(),
            percent,
            rate_bytes_per_second: rate,
            eta_seconds,
            error: p.error(),
        }
    }
}

const PHASES: [Phase; 6] = [
    Phase::Pending,
    Phase::Connecting,
    Phase::Transferring,
    Phase::Finishing,
    Phase::Succeeded,
    Phase::Failed,
];

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "pending",
        Phase::Connecting => "connecting",
        Phase::Transferring => "transferring",
        Phase::Finishing => "finishing",
        Phase::Succeeded => "succeeded",
        Phase::Failed => "failed",
    }
}

/// The series other than the progress one, read at each scrape.
#[derive(Debug)]
struct CountersCollector(Arc<StatusState>);

impl CountersCollector {
    fn one(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        metric: &impl EncodeMetric,
    ) -> std::fmt::Result {
        let m = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
        metric.encode(m)
    }
}

impl Collector for CountersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let state = &self.0;
        let p = &state.progress;
        Self::one(
            &mut encoder,
            "diskimport_source_read_bytes",
            "Bytes read from the source, as stored (still compressed).",
            &ConstCounter::new(p.source_read()),
        )?;
        Self::one(
            &mut encoder,
            "diskimport_decoded_bytes",
            "Bytes out of the decompressor.",
            &ConstCounter::new(p.decoded()),
        )?;
        Self::one(
            &mut encoder,
            "diskimport_written_bytes",
            "Guest bytes handled by the target (written or left as holes).",
            &ConstCounter::new(p.written()),
        )?;
        Self::one(
            &mut encoder,
            "diskimport_source_size_bytes",
            "Size of the source as stored, 0 when unknown.",
            &ConstGauge::new(p.source_total()),
        )?;
        Self::one(
            &mut encoder,
            "diskimport_throughput_bytes_per_second",
            "Source bytes read per second over the last few seconds.",
            &ConstGauge::new(state.rate()),
        )?;
        let current = p.phase();
        let mut family = encoder.encode_descriptor(
            "diskimport_phase",
            "1 for the phase the import is in, 0 for the others.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for phase in PHASES {
            let labels = [("phase", phase_name(phase))];
            let m = family.encode_family(&labels)?;
            ConstGauge::new(i64::from(phase == current)).encode(m)?;
        }
        Ok(())
    }
}

/// Everything a request needs: the pages of the endpoint over one import's
/// (or upload's) progress, for servers that serve them on their own port.
#[derive(Debug)]
pub struct Endpoint {
    state: Arc<StatusState>,
    registry: Registry,
}

impl Endpoint {
    /// The pages over `state`.
    pub fn new(state: Arc<StatusState>) -> Endpoint {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(CountersCollector(state.clone())));
        Endpoint { state, registry }
    }

    /// The `/metrics` body.
    fn metrics(&self) -> String {
        // As CDI: no series until there is progress to report (the source's
        // size is known, or the import is done); the controller shows N/A.
        let mut body = if self.state.has_progress() {
            progress_family(&self.state.owner_uid, self.state.percent())
        } else {
            String::new()
        };
        // Ends with "# EOF".
        if prometheus_client::encoding::text::encode(&mut body, &self.registry).is_err() {
            let _ = writeln!(body, "# EOF");
        }
        body
    }

    /// Records the byte counters for the throughput; call every
    /// half-second or so while serving.
    pub fn sample(&self) {
        self.state.sample();
    }

    /// The answer for `path` (`/healthz`, `/status`, anything else: metrics).
    pub fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (content_type, body) = match path {
            "/healthz" => ("text/plain; charset=utf-8", "ok".to_string()),
            "/status" => (
                "application/json",
                serde_json::to_string(&self.state.report()).unwrap_or_default(),
            ),
            _ => (
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::OK;
        if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    }
}

/// A running endpoint; stopped (and its thread joined) on drop.
#[derive(Debug)]
pub struct StatusServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A self-signed certificate for `CERT_COMMON_NAME`, `localhost` and
/// `127.0.0.1`, with its key.
fn tls_config() -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(std::io::Error::other)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CERT_COMMON_NAME);
    let key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
    let cert = params.self_signed(&key).map_err(std::io::Error::other)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl StatusServer {
    /// Binds `addr` (port 0: any free port), generates the certificate, and
    /// serves `progress` from a background thread. Errors (address in use, no
    /// permission) come back here, before anything is served.
    pub fn start(
        addr: SocketAddr,
        owner_uid: &str,
        progress: Arc<Progress>,
    ) -> std::io::Result<StatusServer> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config()?));
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let endpoint = Arc::new(Endpoint::new(Arc::new(StatusState::new(
            progress, owner_uid,
        ))));
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("status-endpoint".into())
            .spawn(move || runtime.block_on(serve(listener, acceptor, endpoint, stop)))?;
        Ok(StatusServer {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving; open connections are closed.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    endpoint: Arc<Endpoint>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("status endpoint: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => endpoint.state.sample(),
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    tokio::spawn(connection(tcp, acceptor.clone(), endpoint.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    tracing::debug!("status endpoint: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    endpoint: Arc<Endpoint>,
) {
    let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!("status endpoint: TLS handshake: {e}");
            return;
        }
        Err(_) => return,
    };
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let endpoint = endpoint.clone();
        async move { Ok::<_, Infallible>(endpoint.respond(request.uri().path())) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("status endpoint: connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_a_plain_decimal_without_exponent() {
        assert_eq!(format_percent(12.34), "12.34");
        assert_eq!(format_percent(0.00001), "0.00001");
        assert_eq!(format_percent(1e-5), "0.00001");
        assert_eq!(format_percent(0.0), "0");
        assert_eq!(format_percent(100.0), "100");
        assert_eq!(format_percent(50.5), "50.5");
        // Below the resolution: 0, not 1e-9.
        assert_eq!(format_percent(1e-9), "0");
        assert_eq!(format_percent(f64::MIN_POSITIVE), "0");
        assert_eq!(format_percent(f64::NAN), "0");
        assert_eq!(format_percent(-3.0), "0");
        assert_eq!(format_percent(250.0), "100");
        // Rounded down: only done reads as 100.
        assert_eq!(format_percent(99.99999999), "99.999999");
        for v in [1e-7, 3.3e-6, 0.0001, 1.0 / 3.0, 42.0, 99.9999] {
            let text = format_percent(v);
            assert!(!text.contains(['e', 'E']), "{v} -> {text}");
        }
    }

    /// The controller's parser, as in CDI's `GetProgressReportFromURL`.
    fn controller_value(body: &str, uid: &str) -> Option<String> {
        let re = regex::Regex::new(&format!(
            r#"(kubevirt_cdi_import_progress_total)\{{ownerUID\="{uid}"\}} (\d{{1,3}}\.?\d*)"#
        ))
        .unwrap();
        let caps = re.captures(body)?;
        Some(caps[2].to_string())
    }

    #[test]
    fn a_tiny_progress_is_written_as_a_plain_decimal_in_the_family() {
        let progress = Arc::new(Progress::default());
        progress.set_source_total(10_000_000_000);
        progress.set_phase(Phase::Transferring);
        progress.add_source_read(1_000); // 0.00001 %
        let state = StatusState::new(progress, "uid-1");
        let text = progress_family("uid-1", state.percent());
        assert_eq!(controller_value(&text, "uid-1").as_deref(), Some("0.00001"));
        assert!(text.contains("# TYPE kubevirt_cdi_import_progress counter"));
    }

    #[test]
    fn progress_never_decreases_and_is_100_when_succeeded() {
        let progress = Arc::new(Progress::default());
        let state = StatusState::new(progress.clone(), "u");
        assert_eq!(state.percent(), 0.0);
        progress.set_source_total(1000);
        progress.set_phase(Phase::Transferring);
        progress.add_source_read(250);
        assert_eq!(state.percent(), 25.0);
        // The size grows (say a retry learnt a bigger one): the raw value
        // drops, the reported one does not.
        progress.set_source_total(2000);
        assert_eq!(raw_percent(&progress), 12.5);
        assert_eq!(state.percent(), 25.0);
        progress.add_source_read(750);
        assert_eq!(state.percent(), 50.0);
        // More read than the size claims: capped.
        progress.add_source_read(5000);
        assert_eq!(state.percent(), 100.0);
        let progress = Arc::new(Progress::default());
        let state = StatusState::new(progress.clone(), "u");
        progress.set_phase(Phase::Finishing);
        assert_eq!(state.percent(), 0.0, "unknown size: 0 until done");
        progress.set_phase(Phase::Succeeded);
        assert_eq!(state.percent(), 100.0);
        progress.fail("late failure");
        assert_eq!(state.percent(), 100.0, "kept");
    }

    #[test]
    fn label_values_are_escaped() {
        let text = progress_family("a\"b\\c\nd", 1.0);
        assert!(text.contains(r#"{ownerUID="a\"b\\c\nd"} 1"#), "{text}");
    }

    #[test]
    fn status_report_and_rate() {
        let progress = Arc::new(Progress::default());
        let state = StatusState::new(progress.clone(), "u");
        // Two seconds ago nothing was read.
        let now = Instant::now();
        state.sample_at(now.checked_sub(Duration::from_secs(2)).unwrap_or(now), 0);
        let report = state.report();
        assert_eq!(report.phase, "pending");
        assert_eq!(report.bytes_total, None);
        assert_eq!(report.eta_seconds, None);
        assert_eq!(report.error, None);
        progress.set_source_total(10_000);
        progress.set_phase(Phase::Transferring);
        progress.add_source_read(2_000);
        let report = state.report();
        assert_eq!(report.bytes_total, Some(10_000));
        assert_eq!(report.percent, 20.0);
        assert!(report.rate_bytes_per_second > 0.0);
        assert!(report.eta_seconds.is_some_and(|s| s > 0.0));
        progress.fail("boom");
        let report = state.report();
        assert_eq!(report.phase, "failed");
        assert_eq!(report.error.as_deref(), Some("boom"));
        assert_eq!(report.eta_seconds, None);
    }

    #[test]
    fn serves_https_with_the_generated_certificate_and_stops() {
        let progress = Arc::new(Progress::default());
        let server =
            StatusServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), "u", progress.clone())
                .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let client = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .tls_info(true)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let response = client
            .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let der = response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .map(<[u8]>::to_vec)
            .expect("a peer certificate");
        assert_eq!(response.text().unwrap(), "ok");
        let has = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(has(CERT_COMMON_NAME.as_bytes()), "CN in the certificate");
        assert!(has(b"localhost"), "DNS SAN localhost");
        // The IP SAN: context tag [7], length 4, 127.0.0.1.
        assert!(has(&[0x87, 4, 127, 0, 0, 1]), "IP SAN 127.0.0.1");
        progress.set_phase(Phase::Transferring);
        let status: StatusReport = client
            .get(format!("https://127.0.0.1:{}/status", addr.port()))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(status.phase, "transferring");
        server.stop();
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "closed after stop"
        );
    }

    #[test]
    fn the_progress_series_is_absent_until_the_size_is_known_or_the_import_is_done() {
        let progress = Arc::new(Progress::default());
        progress.set_phase(Phase::Transferring);
        progress.add_source_read(100);
        let endpoint = Endpoint::new(Arc::new(StatusState::new(progress.clone(), "u")));
        let body = endpoint.metrics();
        assert_eq!(controller_value(&body, "u"), None, "{body}");
        assert!(
            body.contains("diskimport_source_read_bytes_total 100"),
            "{body}"
        );
        progress.set_phase(Phase::Succeeded);
        assert_eq!(
            controller_value(&endpoint.metrics(), "u").as_deref(),
            Some("100")
        );
    }

    #[test]
    fn metrics_carry_the_progress_family_and_the_counters() {
        let progress = Arc::new(Progress::default());
        progress.set_source_total(400);
        progress.add_source_read(100);
        progress.add_decoded(300);
        progress.add_written(4096);
        progress.set_phase(Phase::Transferring);
        let endpoint = Endpoint::new(Arc::new(StatusState::new(progress, "the-uid")));
        let body = endpoint.metrics();
        assert_eq!(controller_value(&body, "the-uid").as_deref(), Some("25"));
        for line in [
            "diskimport_source_read_bytes_total 100",
            "diskimport_decoded_bytes_total 300",
            "diskimport_written_bytes_total 4096",
            "diskimport_source_size_bytes 400",
            "diskimport_phase{phase=\"transferring\"} 1",
            "diskimport_phase{phase=\"pending\"} 0",
        ] {
            assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
        }
        assert!(body.contains("diskimport_throughput_bytes_per_second "));
        assert!(body.ends_with("# EOF\n"), "{body}");
        // Any path but the two others serves the metrics.
        let other = endpoint.respond("/whatever");
        assert_eq!(other.status(), StatusCode::OK);
    }
}
