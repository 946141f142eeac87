//! The run: keep-alive HTTPS connections, the closed-loop and open-loop
//! drivers, and what they record.
//!
//! Everything async runs on one current-thread runtime; the open loop's
//! schedule runs on an OS thread of its own, because tokio's timer has a
//! resolution of 1 ms (too coarse at thousands of requests per second).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_rustls::TlsConnector;

use crate::check::{Expectations, Failure, FailureKind, check};
use crate::report::{self, Mode, Percentiles, Report};

/// What to run.
#[derive(Debug)]
pub struct Plan {
    pub url: String,
    pub body: Bytes,
    pub ca: std::path::PathBuf,
    pub expect: Expectations,
    pub mode: Mode,
    pub connections: u32,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    /// Whose CPU time to report for the measured part.
    pub server_pid: Option<u32>,
}

/// Where requests go.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host: HeaderValue,
    path: Uri,
}

impl Target {
    async fn resolve(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("--url {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            bail!("--url must be an https:// URL, not {url:?}");
        }
        let authority = uri.authority().with_context(|| format!("--url {url:?} has no host"))?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(443);
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare_host.to_owned())
            .with_context(|| format!("{bare_host:?} is not a valid TLS server name"))?;
        let addr = tokio::net::lookup_host((bare_host, port))
            .await
            .with_context(|| format!("resolving {bare_host}"))?
            .next()
            .with_context(|| format!("{bare_host} has no address"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
        Ok(Target { addr, server_name, host: HeaderValue::from_str(authority.as_str())?, path })
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// Makes connections and requests; shared by all drivers.
struct Client {
    target: Target,
    tls: TlsConnector,
    body: Bytes,
    expect: Expectations,
    timeout: Duration,
    opened: AtomicU64,
}

impl Client {
    fn new(plan: &Plan, target: Target) -> anyhow::Result<Self> {
        Ok(Client {
            target,
            tls: TlsConnector::from(Arc::new(tls_config(&plan.ca)?)),
            body: plan.body.clone(),
            expect: plan.expect,
            timeout: plan.timeout,
            opened: AtomicU64::new(0),
        })
    }

    /// A new keep-alive HTTP/1.1 connection over TLS.
    async fn connect(&self) -> Result<Sender, Failure> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            Failure::new(FailureKind::Connection, format!("{what} {}: {e}", self.target.addr))
        };
        let tcp = TcpStream::connect(self.target.addr).await.map_err(|e| failed("connecting to", &e))?;
        tcp.set_nodelay(true).map_err(|e| failed("TCP_NODELAY on", &e))?;
        let tls = self
            .tls
            .connect(self.target.server_name.clone(), tcp)
            .await
            .map_err(|e| failed("TLS handshake with", &e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| failed("HTTP/1.1 handshake with", &e))?;
        // Failures of the connection show in the requests sent on it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.target.path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.target.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        request
    }

    /// One request on `conn` (opened first if there is none, or the server
    /// closed it), within the timeout. A connection that failed or timed out
    /// is dropped, to be replaced by the next request. Returns the instant
    /// the full response had arrived and the outcome of the checks.
    async fn exchange(&self, conn: &mut Option<Sender>) -> (Instant, Result<(), Failure>) {
        let answer = match tokio::time::timeout(self.timeout, self.send(conn)).await {
            Ok(answer) => answer,
            Err(_) => Err(Failure::new(
                FailureKind::Timeout,
                format!("no full response within {:?} ({})", self.timeout, self.target.addr),
            )),
        };
        let done = Instant::now();
        let outcome = match answer {
            Ok((status, body)) => check(status, &body, self.expect),
            Err(failure) => {
                *conn = None;
                Err(failure)
            }
        };
        (done, outcome)
    }

    async fn send(&self, conn: &mut Option<Sender>) -> Result<(u16, Bytes), Failure> {
        if let Some(sender) = conn.as_mut()
            && sender.ready().await.is_err()
        {
            *conn = None; // closed by the server: keep-alive ended, not an error
        }
        let sender = match conn.take() {
            Some(sender) => conn.insert(sender),
            None => conn.insert(self.connect().await?),
        };
        let failed = |e: hyper::Error| Failure::new(FailureKind::Connection, format!("{}: {e}", self.target.addr));
        let response = sender.send_request(self.request()).await.map_err(failed)?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(failed)?.to_bytes();
        Ok((status, body))
    }
}

/// Trusts the certificates of `ca` only; ring; ALPN http/1.1.
fn tls_config(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading --ca {}", ca.display()))? {
        let cert = cert.with_context(|| format!("reading --ca {}", ca.display()))?;
        roots.add(cert).with_context(|| format!("a certificate of {} is not usable", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("--ca {} holds no certificate", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The run's timeline: warm-up from `t0`, the measured part `[start, end)`.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn measures(&self, t: Instant) -> bool {
        self.start <= t && t < self.end
    }
}

/// What the drivers record, shared on the one runtime thread.
struct Recorder {
    window: Window,
    /// Requests sent (open loop: due) in the measured part, to full response.
    latency: Histogram<u64>,
    /// Full responses that arrived within the measured part.
    completed: u64,
    failures: BTreeMap<FailureKind, u64>,
    warmup_failures: u64,
    first_failure: Option<Failure>,
    abandoned: u64,
}

impl Recorder {
    fn new(window: Window) -> anyhow::Result<Self> {
        Ok(Recorder {
            window,
            latency: report::histogram()?,
            completed: 0,
            failures: BTreeMap::new(),
            warmup_failures: 0,
            first_failure: None,
            abandoned: 0,
        })
    }

    /// A request sent (or due) at `sent` that ended at `done`. Every full
    /// response counts as completed and has its latency recorded, including
    /// those that failed the checks (they are counted as errors too).
    fn record(&mut self, sent: Instant, done: Instant, outcome: Result<(), Failure>) {
        let answered = outcome.as_ref().map_or_else(|f| f.kind.answered(), |()| true);
        if answered {
            if self.window.measures(sent) {
                report::record(&mut self.latency, done.saturating_duration_since(sent));
            }
            if self.window.start <= done && done <= self.window.end {
                self.completed += 1;
            }
        }
        if let Err(failure) = outcome {
            *self.failures.entry(failure.kind).or_default() += 1;
            if sent < self.window.start {
                self.warmup_failures += 1;
            }
            if self.first_failure.is_none() {
                self.first_failure = Some(failure);
            }
        }
    }

    /// A request due at `due` that was never sent: the run stopped waiting
    /// at `gave_up`. Its latency is at least that long.
    fn abandon(&mut self, due: Instant, gave_up: Instant) {
        if self.window.measures(due) {
            self.abandoned += 1;
            report::record(&mut self.latency, gave_up.saturating_duration_since(due));
        }
    }
}

type Shared = Arc<Mutex<Recorder>>;

fn lock(recorder: &Shared) -> std::sync::MutexGuard<'_, Recorder> {
    recorder.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the plan on the current (current-thread) runtime.
pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let target = Target::resolve(&plan.url).await?;
    let client = Arc::new(Client::new(plan, target)?);
    let mut pool = Vec::new();
    for _ in 0..plan.connections {
        let sender = client.connect().await.map_err(|f| anyhow::anyhow!("{}", f.detail))?;
        pool.push(sender);
    }

    let t0 = Instant::now();
    let wall0 = SystemTime::now();
    let too_long = || anyhow::anyhow!("--warmup, --duration and --timeout add up to more than this clock can hold");
    let start = t0.checked_add(plan.warmup).ok_or_else(too_long)?;
    let window = Window { start, end: start.checked_add(plan.duration).ok_or_else(too_long)? };
    let give_up = window.end.checked_add(plan.timeout).ok_or_else(too_long)?;
    let recorder: Shared = Arc::new(Mutex::new(Recorder::new(window)?));
    let mut workers = Vec::new();
    let mut scheduler = None;
    let mut low_timer_slack = false;
    match plan.mode {
        Mode::Closed => {
            for conn in pool {
                workers.push(tokio::spawn(closed_loop(client.clone(), conn, window, recorder.clone())));
            }
        }
        Mode::Open { rate } => {
            let (jobs, queue) = unbounded_channel();
            let lag = report::histogram()?;
            let (thread, lowered) =
                spawn_with_low_timer_slack("schedule", move || schedule(t0, rate, window, jobs, lag));
            scheduler = Some(thread.context("starting the scheduler thread")?);
            low_timer_slack = lowered;
            // Connections take due requests in turn, first due first.
            let queue = Arc::new(tokio::sync::Mutex::new(queue));
            for conn in pool {
                let (client, queue, recorder) = (client.clone(), queue.clone(), recorder.clone());
                workers.push(tokio::spawn(open_loop(client, conn, queue, give_up, recorder)));
            }
        }
    }

    tokio::time::sleep_until(window.start.into()).await;
    let cpu_start = report::own_cpu_seconds()?;
    let server_start = plan.server_pid.map(report::process_cpu).transpose()?;
    tokio::time::sleep_until(window.end.into()).await;
    let cpu_end = report::own_cpu_seconds()?;
    let server_end = plan.server_pid.map(report::process_cpu).transpose()?;
    for worker in workers {
        worker.await.context("a load worker failed")?;
    }
    let dispatch_lag = match scheduler {
        Some(thread) => {
            let lag = thread.join().map_err(|_| anyhow::anyhow!("the scheduler thread panicked"))?;
            Some(Percentiles::of(&lag))
        }
        None => None,
    };

    let recorder = lock(&recorder);
    let unix_ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Ok(Report {
        mode: plan.mode,
        url: plan.url.clone(),
        body_bytes: plan.body.len(),
        connections: plan.connections,
        warmup: plan.warmup,
        duration: plan.duration,
        timeout: plan.timeout,
        requests: recorder.completed,
        latency: Percentiles::of(&recorder.latency),
        latency_samples: recorder.latency.len(),
        dispatch_lag,
        low_timer_slack,
        errors_by_reason: recorder.failures.iter().map(|(kind, n)| (kind.to_string(), *n)).collect(),
        warmup_errors: recorder.warmup_failures,
        first_failure: recorder.first_failure.as_ref().map(|f| format!("{}: {}", f.kind, f.detail)),
        abandoned: recorder.abandoned,
        connections_opened: client.opened.load(Ordering::Relaxed),
        generator_cpu_s: cpu_end - cpu_start,
        server_cpu: server_start.zip(server_end).map(|(start, end)| report::Cpu {
            user_s: end.user_s - start.user_s,
            system_s: end.system_s - start.system_s,
        }),
        started_unix_ms: unix_ms(wall0 + plan.warmup),
        ended_unix_ms: unix_ms(wall0 + plan.warmup + plan.duration),
    })
}

/// One connection of the closed loop: the next request as soon as the
/// previous answer arrived, until the end of the run.
async fn closed_loop(client: Arc<Client>, conn: Sender, window: Window, recorder: Shared) {
    let mut conn = Some(conn);
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        let (done, outcome) = client.exchange(&mut conn).await;
        let refused = matches!(&outcome, Err(f) if f.kind == FailureKind::Connection);
        lock(&recorder).record(sent, done, outcome);
        if refused {
            // Not a busy loop of failing connects against a server that is gone.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A request due at `due`, the time the schedule intended to send it.
#[derive(Debug, Clone, Copy)]
struct Job {
    due: Instant,
}

/// One connection of the open loop: takes due requests from the queue, in
/// order, until the schedule ends. Latency counts from the due time.
async fn open_loop(
    client: Arc<Client>,
    conn: Sender,
    queue: Arc<tokio::sync::Mutex<UnboundedReceiver<Job>>>,
    give_up: Instant,
    recorder: Shared,
) {
    let mut conn = Some(conn);
    loop {
        // The lock is fair (FIFO), so idle connections take turns too.
        let job = queue.lock().await.recv().await;
        let Some(job) = job else { break };
        if Instant::now() >= give_up {
            lock(&recorder).abandon(job.due, give_up);
            continue;
        }
        let (done, outcome) = client.exchange(&mut conn).await;
        lock(&recorder).record(job.due, done, outcome);
    }
}

/// The open loop's schedule, on its own thread: request `i` is due at
/// `t0 + i / rate`. Sleeps until the next due time, then hands over every
/// request that is due. Returns the dispatch lag (hand-over − due) of the
/// requests due in the measured part.
fn schedule(
    t0: Instant,
    rate: f64,
    window: Window,
    jobs: UnboundedSender<Job>,
    mut lag: Histogram<u64>,
) -> Histogram<u64> {
    let period_ns = 1e9 / rate;
    for i in 0u64.. {
        let due = t0 + Duration::from_nanos((i as f64 * period_ns) as u64);
        if due >= window.end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let handed_over = Instant::now();
        if jobs.send(Job { due }).is_err() {
            break; // the workers are gone
        }
        if window.measures(due) {
            report::record(&mut lag, handed_over.saturating_duration_since(due));
        }
    }
    lag
}

/// Spawns `f` on a thread with a timer slack of 1 ns rather than Linux's
/// default 50 µs, so that its sleeps end closer to the time asked for.
///
/// Without `unsafe` (no `prctl`): a new thread inherits the slack of the
/// thread that creates it, and the main thread may set its own through
/// `/proc/self/timerslack_ns`; it is set before the spawn and put back after.
/// Anywhere else (not Linux, not the main thread) the thread keeps the
/// default slack. Returns whether the slack was lowered.
fn spawn_with_low_timer_slack<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> (std::io::Result<std::thread::JoinHandle<T>>, bool) {
    const SLACK: &str = "/proc/self/timerslack_ns";
    let pid = std::process::id().to_string();
    let main_thread =
        std::fs::read_link("/proc/thread-self").is_ok_and(|p| p == Path::new(&pid).join("task").join(&pid));
    let previous = if main_thread { std::fs::read_to_string(SLACK).ok() } else { None };
    let lowered = previous.is_some() && std::fs::write(SLACK, "1").is_ok();
    let thread = std::thread::Builder::new().name(name.into()).spawn(f);
    if lowered && let Some(previous) = previous {
        let _ = std::fs::write(SLACK, previous.trim());
    }
    (thread, lowered)
}
