//! The HTTP surface: [`app`] builds the whole router (so tests drive it with
//! `oneshot`, no socket), [`serve`] runs it on a listener, over TLS or not,
//! until a shutdown signal, then drains in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::admission::{self, Endpoint, RequestError};
use crate::context::ContextStore;
use crate::metrics::{FailureLabels, Metrics, PolicyLabels, RequestLabels};
use crate::policy::PolicySet;

/// Default largest request body: the API server sends objects of at most
/// ~1.5 MiB (etcd's limit), twice on UPDATE, plus the envelope.
pub const DEFAULT_MAX_BODY_BYTES: usize = 7 << 20;
/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState {
    /// The policies served; swapped whole on reload.
    pub policies: ArcSwap<PolicySet>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// False until policies are loaded, and again once shutdown begins.
    pub ready: AtomicBool,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// The context caches; `/readyz` waits for them to sync.
    pub context: Arc<ContextStore>,
}

impl AppState {
    /// State serving `policies`, ready.
    pub fn new(policies: PolicySet, metrics: Arc<Metrics>) -> Self {
        metrics.policies.set(i64::try_from(policies.len()).unwrap_or(i64::MAX));
        Self {
            policies: ArcSwap::from_pointee(policies),
            metrics,
            ready: AtomicBool::new(true),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            context: Arc::new(ContextStore::default()),
        }
    }
}

/// The whole HTTP surface.
pub fn app(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/validate/{policy}", post(validate))
        .route("/mutate/{policy}", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
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
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownPolicy(_) | ApiError::WrongEndpoint { .. } => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnknownPolicy(_) => "unknown_policy",
            ApiError::WrongEndpoint { .. } => "wrong_endpoint",
            ApiError::TooLarge(_) => "too_large",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{self}\n")).into_response()
    }
}

async fn validate(
    state: State<Arc<AppState>>,
    policy: Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    admit(state, policy, Endpoint::Validate, body).await
}

async fn mutate(
    state: State<Arc<AppState>>,
    policy: Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    admit(state, policy, Endpoint::Mutate, body).await
}

async fn admit(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    endpoint: Endpoint,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = match body {
        Ok(body) => answer(&state, &name, endpoint, &body, started).await,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::TooLarge(state.max_body_bytes))
        }
        Err(rejection) => return rejection.into_response(),
    };
    match result {
        Ok(response) => response,
        Err(error) => {
            state.metrics.reject(error.label());
            tracing::info!(policy = %name, error = %error, "request refused");
            error.into_response()
        }
    }
}

async fn answer(
    state: &AppState,
    name: &str,
    endpoint: Endpoint,
    body: &[u8],
    started: Instant,
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
    let span = tracing::info_span!(
        "admission",
        uid = %req.uid,
        policy = %name,
        kind = %req.kind.kind,
        namespace = req.namespace.as_deref().unwrap_or(""),
        name = %req.name,
        operation = ?req.operation,
        verdict = tracing::field::Empty,
        duration_us = tracing::field::Empty,
    );
    let result = policy.evaluate(incoming.raw.get()).instrument(span.clone()).await;
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
    span.record("verdict", decision.verdict);
    span.record("duration_us", u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    let _entered = span.enter();
    if let Some(failure) = &decision.failure {
        m.failures.get_or_create(&FailureLabels { policy: name.to_owned(), cause: failure.cause().to_owned() }).inc();
        tracing::warn!(outcome = decision.outcome, cause = failure.cause(), error = %failure, "evaluation failed");
    } else if decision.verdict == "denied" || decision.outcome == "audit" {
        tracing::info!(outcome = decision.outcome, "request decided");
    } else {
        tracing::debug!(outcome = decision.outcome, patched = decision.patch.is_some(), "request decided");
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
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
/// completes; then stops accepting and waits up to `grace` for open
/// connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
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
        let service = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            builder.http2().timer(TokioTimer::new());
            let result = match tls {
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                    }
                    Ok(Err(e)) => return log_handshake_failure(peer, &e.to_string()),
                    Err(_) => return log_handshake_failure(peer, "timed out"),
                },
                None => watcher.watch(builder.serve_connection(TokioIo::new(tcp), service).into_owned()).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "connections still open after the grace period; closing"),
    }
}

fn log_handshake_failure(peer: SocketAddr, reason: &str) {
    tracing::debug!(%peer, reason, "TLS handshake failed");
}
