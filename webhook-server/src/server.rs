//! The HTTP surface: [`app`] builds the whole router (so tests drive it with
//! `oneshot`, no socket), [`serve`] runs it on a listener, over TLS or not,
//! until a shutdown signal, then drains in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::Instrument;

use crate::admission::{self, Endpoint, RequestError};
use crate::context::ContextStore;
use crate::metrics::{FailureLabels, Metrics, PolicyLabels, RequestLabels};
use crate::policy::PolicySet;
use crate::runtime::Runtime;

/// Default largest request body: the API server sends objects of at most
/// ~1.5 MiB (etcd's limit), twice on UPDATE, plus the envelope.
pub const DEFAULT_MAX_BODY_BYTES: usize = 7 << 20;

/// How the listener treats its clients: what a connection, a request and a
/// slow or idle client may hold. The defaults fit the API server, which calls
/// with 1–30 s timeouts over a few long-lived connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Open connections; at the cap the server stops accepting until one closes.
    pub max_connections: usize,
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers (HTTP/1),
    /// and, on a new connection, to start its first request (either protocol).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval; a peer that does not answer within
    /// [`ListenerLimits::keep_alive_timeout`] is dropped.
    pub keep_alive_interval: Duration,
    /// See [`ListenerLimits::keep_alive_interval`].
    pub keep_alive_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(10),
            max_streams: 128,
        }
    }
}

/// What admission requests in flight may hold, server-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Admission requests in flight (reading, queued or evaluating); more are
    /// answered 503 at once.
    pub max_in_flight: usize,
    /// Bytes of request bodies held at once; a request whose body does not
    /// fit is answered 503 at once.
    pub max_buffered_bytes: usize,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_in_flight: 512,
            max_buffered_bytes: 128 << 20,
            body_timeout: Duration::from_secs(10),
        }
    }
}

impl RequestLimits {
    /// Permits of the in-flight semaphore (as many as a semaphore can hold).
    fn in_flight_capacity(&self) -> usize {
        self.max_in_flight.min(Semaphore::MAX_PERMITS)
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState {
    /// The policies served; swapped whole on reload.
    pub policies: ArcSwap<PolicySet>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// False until policies are loaded, and again once shutdown begins.
    pub ready: AtomicBool,
    /// Request limits.
    pub limits: RequestLimits,
    /// Admission requests in flight.
    in_flight: Semaphore,
    /// Admission requests taken in so far.
    taken: AtomicU64,
    /// KiB of request bodies held.
    buffered: Semaphore,
    /// The context caches; `/readyz` waits for them to sync.
    pub context: Arc<ContextStore>,
    /// The sandbox, whose deadline ticker `/healthz` checks.
    pub runtime: Option<Arc<Runtime>>,
    /// Admission routes answer only clients that presented a certificate
    /// (`--client-ca`); probes and metrics answer anyone.
    pub require_client_cert: bool,
    /// Why the config's policies are not served yet (a module pull failed
    /// at start and is being retried); `/readyz` says so until it clears.
    pub load_error: std::sync::Mutex<Option<String>>,
}

impl AppState {
    /// State serving `policies`, ready, with default limits.
    pub fn new(policies: PolicySet, metrics: Arc<Metrics>) -> Self {
        Self::with_limits(policies, metrics, RequestLimits::default())
    }

    /// State serving `policies`, ready, under `limits`.
    pub fn with_limits(policies: PolicySet, metrics: Arc<Metrics>, limits: RequestLimits) -> Self {
        metrics.policies.set(i64::try_from(policies.len()).unwrap_or(i64::MAX));
        Self {
            policies: ArcSwap::from_pointee(policies),
            metrics,
            ready: AtomicBool::new(true),
            limits,
            in_flight: Semaphore::new(limits.in_flight_capacity()),
            taken: AtomicU64::new(0),
            buffered: Semaphore::new(kib(limits.max_buffered_bytes).min(Semaphore::MAX_PERMITS)),
            context: Arc::new(ContextStore::default()),
            runtime: None,
            require_client_cert: false,
            load_error: std::sync::Mutex::new(None),
        }
    }

    /// Why the policies are not served yet, if they are not.
    pub fn load_error(&self) -> Option<String> {
        self.load_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Records (or clears) why the policies are not served yet.
    pub fn set_load_error(&self, error: Option<String>) {
        *self.load_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }
}

impl crate::memory::Activity for AppState {
    fn answered(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    fn idle(&self) -> bool {
        self.in_flight.available_permits() == self.limits.in_flight_capacity()
    }
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

/// Whether the client of a connection presented a verified certificate; set
/// on every request by [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertificate(pub bool);

/// The whole HTTP surface.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/validate/{policy}", post(validate))
        .route("/mutate/{policy}", post(mutate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A request refused before any policy ran (4xx); one place turns these into responses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Body is not an acceptable AdmissionReview.
    #[error("{0}")]
    BadRequest(#[from] RequestError),
    /// No such policy.
    #[error("no policy named {0:?} is loaded")]
    UnknownPolicy(String),
    /// Validating policy on `/mutate`, or the reverse.
    #[error("policy {policy:?} is {kind}; send its requests to /{endpoint}/{policy}")]
    WrongEndpoint {
        /// Policy name.
        policy: String,
        /// `mutating` or `validating`.
        kind: &'static str,
        /// `mutate` or `validate`.
        endpoint: &'static str,
    },
    /// Body over the limit.
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive in time.
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    /// The body could not be read.
    #[error("reading the request body: {0}")]
    Body(String),
    /// The server holds as many requests (or body bytes) as it may.
    #[error("server busy: {0}; retry")]
    Overloaded(&'static str),
    /// `--client-ca` is set and the client presented no certificate.
    #[error("a client certificate is required")]
    Unauthenticated,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownPolicy(_) | ApiError::WrongEndpoint { .. } => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Body(_) => StatusCode::BAD_REQUEST,
            ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnknownPolicy(_) => "unknown_policy",
            ApiError::WrongEndpoint { .. } => "wrong_endpoint",
            ApiError::TooLarge(_) => "too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::Body(_) => "body_error",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unauthenticated => "unauthenticated",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status(), [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{self}\n")).into_response();
        if matches!(self, ApiError::Overloaded(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

async fn validate(state: State<Arc<AppState>>, policy: Path<String>, request: Request) -> Response {
    admit(state, policy, Endpoint::Validate, request).await
}

async fn mutate(state: State<Arc<AppState>>, policy: Path<String>, request: Request) -> Response {
    admit(state, policy, Endpoint::Mutate, request).await
}

async fn admit(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    endpoint: Endpoint,
    request: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        if state.require_client_cert
            && request.extensions().get::<ClientCertificate>() != Some(&ClientCertificate(true))
        {
            return Err(ApiError::Unauthenticated);
        }
        let until = api_server_deadline(request.uri().query(), started);
        let _in_flight =
            state.in_flight.try_acquire().map_err(|_| ApiError::Overloaded("too many requests in flight"))?;
        state.taken.fetch_add(1, Ordering::Relaxed);
        let (body, _buffered) = read_body(&state, request).await?;
        answer(&state, &name, endpoint, &body, started, until).await
    }
    .await;
    match result {
        Ok(response) => response,
        Err(error) => {
            state.metrics.reject(error.label());
            tracing::info!(policy = %name, error = %error, "request refused");
            error.into_response()
        }
    }
}

/// Reads a request body within the body timeout, holding its size against
/// the server's buffer budget (taken up front from `Content-Length`, else
/// for the largest body allowed).
async fn read_body(state: &AppState, request: Request) -> Result<(Bytes, SemaphorePermit<'_>), ApiError> {
    let max = state.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(ApiError::TooLarge(max));
    }
    let want = u32::try_from(kib(declared.unwrap_or(max)).max(1)).unwrap_or(u32::MAX);
    let permit = state.buffered.try_acquire_many(want).map_err(|_| ApiError::Overloaded("request buffers full"))?;
    let limited = http_body_util::Limited::new(request.into_body(), max);
    let collected = tokio::time::timeout(state.limits.body_timeout, limited.collect())
        .await
        .map_err(|_| ApiError::BodyTimeout(state.limits.body_timeout))?;
    match collected {
        Ok(body) => Ok((body.to_bytes(), permit)),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::TooLarge(max)),
        Err(e) => Err(ApiError::Body(e.to_string())),
    }
}

/// The time by which the API server needs the answer: it appends
/// `?timeout=10s` (a Go duration, the webhook's `timeoutSeconds`) to every
/// call. A little is kept back for the answer to travel.
pub fn api_server_deadline(query: Option<&str>, arrived: Instant) -> Option<Instant> {
    let value = query?.split('&').find_map(|pair| pair.strip_prefix("timeout="))?;
    let timeout = parse_go_duration(value)?;
    let margin = (timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(100));
    Some(arrived + timeout.saturating_sub(margin))
}

/// Parses a Go `time.Duration` string such as `10s`, `1.5s`, `500ms` or `1m30s`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(number * seconds).ok()?;
    }
    Some(total)
}

async fn answer(
    state: &AppState,
    name: &str,
    endpoint: Endpoint,
    body: &[u8],
    started: Instant,
    until: Option<Instant>,
) -> Result<Response, ApiError> {
    let policy = state.policies.load().get(name).cloned().ok_or_else(|| ApiError::UnknownPolicy(name.to_owned()))?;
    match (endpoint, policy.config.mutating) {
        (Endpoint::Validate, true) => {
            return Err(ApiError::WrongEndpoint { policy: name.into(), kind: "mutating", endpoint: "mutate" });
        }
        (Endpoint::Mutate, false) => {
            return Err(ApiError::WrongEndpoint { policy: name.into(), kind: "validating", endpoint: "validate" });
        }
        _ => {}
    }
    let incoming = admission::parse(body)?;
    let req = &incoming.request;
    // The request's identity goes on the events below, which fire for
    // denials, audits and failures only. The span (for the guest's log lines
    // and debug events) exists at debug level: at info, creating and
    // formatting it for every request was ~2% of the server's CPU.
    let span = tracing::debug_span!(
        "admission",
        uid = %req.uid,
        policy = %name,
        kind = %req.kind.kind,
        namespace = req.namespace.as_deref().unwrap_or(""),
        name = %req.name,
        operation = ?req.operation,
    );
    let result = policy.evaluate_until(incoming.raw.get(), until).instrument(span).await;
    let decision = admission::decide(&policy, endpoint, &incoming, result);
    let body = decision.to_json().unwrap_or_default();
    let elapsed = started.elapsed();

    let m = &state.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            policy: name.to_owned(),
            verdict: decision.verdict.to_owned(),
            outcome: decision.outcome.to_owned(),
        })
        .inc();
    m.duration.get_or_create(&PolicyLabels { policy: name.to_owned() }).observe(elapsed.as_secs_f64());
    let duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    macro_rules! decided {
        ($level:ident, $($field:tt)*) => {
            tracing::$level!(
                uid = %req.uid,
                policy = %name,
                kind = %req.kind.kind,
                namespace = req.namespace.as_deref().unwrap_or(""),
                name = %req.name,
                operation = ?req.operation,
                verdict = decision.verdict,
                outcome = decision.outcome,
                duration_us,
                $($field)*
            )
        };
    }
    if let Some(failure) = &decision.failure {
        m.failures.get_or_create(&FailureLabels { policy: name.to_owned(), cause: failure.cause().to_owned() }).inc();
        decided!(warn, cause = failure.cause(), error = %failure, "evaluation failed");
    } else if decision.verdict == "denied" || decision.outcome == "audit" {
        decided!(info, "request decided");
    } else {
        decided!(debug, patched = decision.patch.is_some(), "request decided");
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Liveness: the server answers, and the ticker that enforces every
/// evaluation's deadline is alive (without it a looping guest would never be stopped).
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match &state.runtime {
        Some(runtime) if !runtime.ticking() => {
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy: the deadline ticker stopped\n").into_response()
        }
        _ => (StatusCode::OK, "ok\n").into_response(),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    if let Some(error) = state.load_error() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: policies not loaded yet (retrying): {error}\n"))
            .into_response();
    }
    let unsynced = state.context.unsynced();
    if !unsynced.is_empty() {
        let kinds: Vec<String> = unsynced.iter().map(ToString::to_string).collect();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: context caches not synced yet: {}\n", kinds.join(", ")),
        )
            .into_response();
    }
    (StatusCode::OK, format!("ready: {} policies\n", state.policies.load().len())).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown`
/// completes; then stops accepting, asks every connection to close once its
/// requests are answered (HTTP/1 `Connection: close`, HTTP/2 GOAWAY), and
/// waits up to `grace` for them.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_timeout)
        .max_concurrent_streams(limits.max_streams);
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let (closing, _) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the cap, stop accepting (the kernel's backlog holds new clients)
        // until a connection closes.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let builder = builder.clone();
        let closing = closing.subscribe();
        let timeouts = IdleTimeouts::of(&limits);
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                Some(acceptor) => match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let certified = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                        connection(&builder, stream, app, ClientCertificate(certified), timeouts, closing).await
                    }
                    Ok(Err(e)) => return log_handshake_failure(peer, &e.to_string()),
                    Err(_) => return log_handshake_failure(peer, "timed out"),
                },
                None => connection(&builder, tcp, app, ClientCertificate(false), timeouts, closing).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let open = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS) - connections.available_permits();
    tracing::info!(open, "listener closed; draining open connections");
    let all = u32::try_from(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    tokio::select! {
        _ = connections.acquire_many(all) => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "connections still open after the grace period; closing"),
    }
}

/// The shutdown a pod needs: when `signal` fires, report not ready and keep
/// serving for `delay`, while the endpoints controller (and so the API
/// server, and kube-proxy) move traffic to other pods; then complete, which
/// closes the listener in [`serve`]. `second` (another SIGTERM, Ctrl-C) cuts the delay short.
pub async fn shutdown_sequence(
    state: Arc<AppState>,
    signal: impl Future<Output = ()>,
    second: impl Future<Output = ()>,
    delay: Duration,
) {
    signal.await;
    state.ready.store(false, Ordering::Relaxed);
    tracing::info!(
        delay_s = delay.as_secs_f64(),
        "shutting down: not ready, still serving while endpoints move to other pods"
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = second => tracing::info!("second signal: skipping the rest of the delay"),
    }
    tracing::info!("no new connections; finishing in-flight requests");
}

/// Requests in flight on one connection, whether one ever began, and when
/// the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    began: AtomicBool,
    idle_since: std::sync::Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            began: AtomicBool::new(false),
            idle_since: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.began.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    /// When the connection may be closed as idle, if it is idle now: after
    /// `timeouts.idle` since its last request, or, before its first, after
    /// `timeouts.first_request` since it opened.
    fn idle_deadline(&self, timeouts: IdleTimeouts) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let limit = if self.began.load(Ordering::Acquire) { timeouts.idle } else { timeouts.first_request };
        Some(since + limit)
    }
}

/// How long a connection may stay without a request.
#[derive(Debug, Clone, Copy)]
struct IdleTimeouts {
    /// After a request.
    idle: Duration,
    /// Before the first: a client that completed the TLS handshake and
    /// sends nothing is held to the header timeout, as one that stalls
    /// mid-header is (hyper's header timer starts only once the first bytes
    /// arrived and told HTTP/1 from HTTP/2).
    first_request: Duration,
}

impl IdleTimeouts {
    fn of(limits: &ListenerLimits) -> Self {
        Self { idle: limits.idle_timeout, first_request: limits.header_timeout.min(limits.idle_timeout) }
    }
}

struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection until it ends, it stays idle past `timeouts`, or
/// the server shuts down (both end it gracefully).
async fn connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    app: Router,
    certificate: ClientCertificate,
    timeouts: IdleTimeouts,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let tracker = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let guard = tracker.begin();
        request.extensions_mut().insert(certificate);
        let call = app.clone().oneshot(request.map(axum::body::Body::new));
        async move {
            let response = call.await;
            drop(guard);
            response
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut ending = false;
    loop {
        let idle_at = activity.idle_deadline(timeouts);
        // Re-checked at least every idle period while requests are in flight.
        let wake = idle_at.unwrap_or_else(|| Instant::now() + timeouts.idle);
        tokio::select! {
            result = conn.as_mut() => return result,
            changed = closing.changed(), if !ending => {
                if changed.is_err() || *closing.borrow() {
                    conn.as_mut().graceful_shutdown();
                    ending = true;
                }
            }
            () = tokio::time::sleep_until(wake.into()), if !ending => {
                if activity.idle_deadline(timeouts).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(?timeouts, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    ending = true;
                }
            }
        }
    }
}

fn log_handshake_failure(peer: SocketAddr, reason: &str) {
    tracing::debug!(%peer, reason, "TLS handshake failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_the_api_server_writes_them() {
        for (text, want) in [
            ("10s", Duration::from_secs(10)),
            ("1.5s", Duration::from_millis(1500)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(parse_go_duration(text), Some(want), "{text}");
        }
        for bad in ["", "10", "s", "10x", "-1s", "1e400s", "NaNs"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_api_servers_timeout_keeps_a_margin_for_the_answer() {
        let now = Instant::now();
        assert_eq!(api_server_deadline(Some("timeout=10s"), now), Some(now + Duration::from_millis(9900)));
        assert_eq!(api_server_deadline(Some("x=1&timeout=1s"), now), Some(now + Duration::from_millis(950)));
        assert_eq!(api_server_deadline(Some("timeout=50ms"), now), Some(now + Duration::from_millis(45)));
        assert_eq!(api_server_deadline(Some("timeout=soon"), now), None);
        assert_eq!(api_server_deadline(None, now), None);
    }
}
