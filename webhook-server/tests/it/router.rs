//! The HTTP router in process (`app().oneshot(..)`, no socket), with real
//! AdmissionReview fixture files.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use tower::ServiceExt as _;
use webhook_server::context::{ContextStore, Kind};
use webhook_server::metrics::Metrics;
use webhook_server::server::{AppState, ClientCertificate, RequestLimits, app};

use crate::common::{entry, fixture, guest, load_ok, policy_module, runtime};

const INGRESS: &str = "policies-wasm/ingress-tls/test_data";
const FIXTURES: &str = "webhook-server/tests/fixtures";

async fn state() -> Arc<AppState> {
    let rt = runtime();
    let set = load_ok(
        &rt,
        &[
            entry("ingress-tls", &policy_module("ingress-tls"), ""),
            entry("allow-all", &guest("allow_all"), ""),
            entry("add-label", &guest("add_label"), "mutating: true"),
            entry("trap-closed", &guest("trap"), "failurePolicy: Fail"),
            entry("trap-open", &guest("trap"), "failurePolicy: Ignore"),
            entry("deny-audit", &guest("deny_all"), "mode: audit"),
        ],
    )
    .await;
    Arc::new(AppState::new(set, Arc::new(Metrics::new())))
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }

    fn response(&self) -> serde_json::Value {
        let review = self.json();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
        assert_eq!(review["kind"], "AdmissionReview", "{review}");
        review["response"].clone()
    }
}

async fn call(state: &Arc<AppState>, method: &str, uri: &str, body: impl Into<Body>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap_or_else(|e| panic!("request: {e}"));
    let response = app(state.clone()).oneshot(request).await.unwrap_or_else(|e| match e {});
    let status = response.status();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap_or_else(|e| panic!("body: {e}"));
    Reply { status, content_type, body: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn post(state: &Arc<AppState>, uri: &str, fixture_path: &str) -> Reply {
    call(state, "POST", uri, fixture(fixture_path)).await
}

fn uid_of(fixture_path: &str) -> serde_json::Value {
    let review: serde_json::Value = serde_json::from_str(&fixture(fixture_path)).unwrap_or_default();
    review["request"]["uid"].clone()
}

#[tokio::test]
async fn non_tls_ingress_is_denied_naming_the_host_and_uid_is_echoed() {
    let s = state().await;
    let path = format!("{INGRESS}/no-tls.json");
    let reply = post(&s, "/validate/ingress-tls", &path).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type, "application/json");
    let response = reply.response();
    assert_eq!(response["uid"], uid_of(&path));
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("api.example.com") && message.contains("www.example.com"), "{message}");
}

#[tokio::test]
async fn covered_ingress_is_allowed() {
    let s = state().await;
    let path = format!("{INGRESS}/covered.json");
    let response = post(&s, "/validate/ingress-tls", &path).await.response();
    assert_eq!(response["allowed"], true);
    assert_eq!(response["uid"], uid_of(&path));
    assert!(response.get("patch").is_none());
}

#[tokio::test]
async fn mutation_is_a_base64_json_patch() {
    let s = state().await;
    let response = post(&s, "/mutate/add-label", &format!("{FIXTURES}/pod-create.json")).await.response();
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("patch is not base64: {e}"));
    let patch: serde_json::Value = serde_json::from_slice(&patch).unwrap_or_else(|e| panic!("patch JSON: {e}"));
    assert_eq!(
        patch,
        serde_json::json!([{"op": "add", "path": "/metadata/labels/portcullis.dev~1mutated", "value": "true"}])
    );
}

#[tokio::test]
async fn guest_failure_follows_failure_policy() {
    let s = state().await;
    let pod = format!("{FIXTURES}/pod-create.json");
    let closed = post(&s, "/validate/trap-closed", &pod).await;
    assert_eq!(closed.status, StatusCode::OK, "a guest failure is still an AdmissionReview");
    let closed = closed.response();
    assert_eq!(closed["allowed"], false);
    assert_eq!(closed["status"]["code"], 500);
    let message = closed["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("trap-closed could not evaluate") && message.contains("trapped"), "{message}");

    let open = post(&s, "/validate/trap-open", &pod).await.response();
    assert_eq!(open["allowed"], true);
    let warning = open["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("failurePolicy Ignore") && warning.contains("trapped"), "{warning}");
    // Admitted unevaluated: the API server's audit log says so too.
    let note = open["auditAnnotations"]["not-evaluated"].as_str().unwrap_or_default();
    assert!(note.contains("trapped"), "{open}");
    assert!(closed.get("auditAnnotations").is_none_or(|a| a.as_object().is_some_and(|m| m.is_empty())), "{closed}");
}

#[tokio::test]
async fn audit_mode_admits_with_a_warning() {
    let s = state().await;
    let response = post(&s, "/validate/deny-audit", &format!("{FIXTURES}/pod-create.json")).await.response();
    assert_eq!(response["allowed"], true);
    let warning = response["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("audit mode") && warning.contains("deny-all denies every Pod"), "{warning}");
    // The would-be denial reaches the audit log (the API server prefixes the webhook's name).
    let note = response["auditAnnotations"]["would-deny"].as_str().unwrap_or_default();
    assert!(note.contains("deny-all denies every Pod"), "{response}");
}

/// The API server appends `?timeout=` (the webhook's timeoutSeconds) to
/// every call: a policy whose own timeout is longer still answers in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_timeout_bounds_the_evaluation() {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("loop", &guest("loop_forever"), "timeoutMs: 5000")]).await;
    let s = Arc::new(AppState::new(set, Arc::new(Metrics::new())));
    let started = std::time::Instant::now();
    let reply = post(&s, "/validate/loop?timeout=1s", &format!("{FIXTURES}/pod-create.json")).await;
    let elapsed = started.elapsed();
    let response = reply.response();
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("deadline"), "{message}");
    assert!(
        elapsed >= std::time::Duration::from_millis(800) && elapsed < std::time::Duration::from_millis(1000),
        "answered after {elapsed:?}: the API server gives up at 1 s"
    );
}

/// With `--client-ca`, the admission routes answer only clients that showed
/// a certificate; the kubelet's probes and Prometheus need none.
#[tokio::test]
async fn client_certificates_are_required_on_admission_routes_only() {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("allow-all", &guest("allow_all"), "")]).await;
    let mut state = AppState::new(set, Arc::new(Metrics::new()));
    state.require_client_cert = true;
    let s = Arc::new(state);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(call(&s, "GET", path, "").await.status, StatusCode::OK, "{path}");
    }
    let refused = post(&s, "/validate/allow-all", &format!("{FIXTURES}/pod-create.json")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert!(refused.body.contains("client certificate"), "{}", refused.body);

    let request = Request::builder()
        .method("POST")
        .uri("/validate/allow-all")
        .extension(ClientCertificate(true))
        .body(Body::from(fixture(&format!("{FIXTURES}/pod-create.json"))))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let response = app(s.clone()).oneshot(request).await.unwrap_or_else(|e| match e {});
    assert_eq!(response.status(), StatusCode::OK);
}

/// `/healthz` fails once the ticker that enforces deadlines is gone, so the
/// kubelet restarts a server that could no longer stop a looping guest.
#[tokio::test]
async fn liveness_checks_the_deadline_ticker() {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("allow-all", &guest("allow_all"), "")]).await;
    let mut state = AppState::new(set, Arc::new(Metrics::new()));
    state.runtime = Some(rt.clone());
    let s = Arc::new(state);
    assert_eq!(call(&s, "GET", "/healthz", "").await.status, StatusCode::OK);
    rt.stop_ticker();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while rt.ticking() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let reply = call(&s, "GET", "/healthz", "").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.body);
    assert!(reply.body.contains("ticker"), "{}", reply.body);
}

/// Over the server-wide limits, a request is answered 503 at once (and the
/// API server applies the webhook's failurePolicy) instead of piling up.
#[tokio::test]
async fn requests_over_the_server_limits_are_shed() {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("allow-all", &guest("allow_all"), "")]).await;
    let pod = format!("{FIXTURES}/pod-create.json");
    // A body budget smaller than one declared body.
    let limits = RequestLimits { max_buffered_bytes: 4096, ..RequestLimits::default() };
    let s = Arc::new(AppState::with_limits(set, Arc::new(Metrics::new()), limits));
    let request = Request::builder()
        .method("POST")
        .uri("/validate/allow-all")
        .header("content-length", "8192")
        .body(Body::from(vec![b' '; 8192]))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let response = app(s.clone()).oneshot(request).await.unwrap_or_else(|e| match e {});
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    // A small one still fits.
    let body = fixture(&pod);
    let request = Request::builder()
        .method("POST")
        .uri("/validate/allow-all")
        .header("content-length", body.len())
        .body(Body::from(body))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let response = app(s.clone()).oneshot(request).await.unwrap_or_else(|e| match e {});
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = call(&s, "GET", "/metrics", "").await.body;
    assert!(metrics.contains(r#"portcullis_http_rejections_total{reason="overloaded"} 1"#), "{metrics}");
}

#[tokio::test]
async fn malformed_reviews_get_400_with_a_reason() {
    let s = state().await;
    let cases = [
        ("truncated.json", "not valid JSON"),
        ("wrong-api-version.json", "admission.k8s.io/v1beta1"),
        ("wrong-kind.json", "kind is \"Pod\""),
        ("missing-request.json", "no request"),
        ("missing-uid.json", "missing field `uid`"),
    ];
    for (file, reason) in cases {
        let reply = post(&s, "/validate/allow-all", &format!("{FIXTURES}/{file}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{file}: {}", reply.body);
        assert!(reply.body.contains(reason), "{file}: {}", reply.body);
    }
    let reply = call(&s, "POST", "/validate/allow-all", "").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
}

#[tokio::test]
async fn unknown_policy_and_wrong_endpoint_are_404() {
    let s = state().await;
    let pod = format!("{FIXTURES}/pod-create.json");
    let reply = post(&s, "/validate/no-such-policy", &pod).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.contains("no policy named \"no-such-policy\""), "{}", reply.body);
    let reply = post(&s, "/validate/add-label", &pod).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.contains("/mutate/add-label"), "{}", reply.body);
    let reply = post(&s, "/mutate/ingress-tls", &pod).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.contains("/validate/ingress-tls"), "{}", reply.body);
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("allow-all", &guest("allow_all"), "")]).await;
    let limits = RequestLimits { max_body_bytes: 64 << 10, ..RequestLimits::default() };
    let s = Arc::new(AppState::with_limits(set, Arc::new(Metrics::new()), limits));
    let reply = call(&s, "POST", "/validate/allow-all", vec![b' '; 65 << 10]).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.body);
    assert!(reply.body.contains("over 65536 bytes"), "{}", reply.body);
}

/// `/readyz` stays 503, naming the kinds, until every context cache has
/// listed once; the context metrics follow the caches.
#[tokio::test]
async fn readiness_waits_for_the_context_caches() {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("allow-all", &guest("allow_all"), "")]).await;
    let metrics = Arc::new(Metrics::new());
    let mut state = AppState::new(set, metrics.clone());
    let store = Arc::new(ContextStore::new(Some(metrics)));
    let hpas = store.cache(&Kind::new("autoscaling/v2", "HorizontalPodAutoscaler"));
    let deployments = store.cache(&Kind::new("apps/v1", "Deployment"));
    state.context = store.clone();
    let s = Arc::new(state);
    let reply = call(&s, "GET", "/readyz", "").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.body,
        "not ready: context caches not synced yet: apps/v1 Deployment, autoscaling/v2 HorizontalPodAutoscaler\n"
    );
    hpas.replace(vec![]);
    let reply = call(&s, "GET", "/readyz", "").await;
    assert!(reply.body.ends_with("apps/v1 Deployment\n"), "{}", reply.body);
    let deployment = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}});
    deployments.replace(vec![deployment]);
    assert_eq!(call(&s, "GET", "/readyz", "").await.status, StatusCode::OK);
    store.update_metrics();
    let text = call(&s, "GET", "/metrics", "").await.body;
    for line in [
        r#"portcullis_context_objects{kind="apps/v1 Deployment"} 1"#,
        r#"portcullis_context_synced{kind="autoscaling/v2 HorizontalPodAutoscaler"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = state().await;
    assert_eq!(call(&s, "GET", "/healthz", "").await.status, StatusCode::OK);
    let ready = call(&s, "GET", "/readyz", "").await;
    assert_eq!((ready.status, ready.body.as_str()), (StatusCode::OK, "ready: 6 policies\n"));
    s.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(call(&s, "GET", "/readyz", "").await.status, StatusCode::SERVICE_UNAVAILABLE);

    post(&s, "/validate/ingress-tls", &format!("{INGRESS}/no-tls.json")).await;
    post(&s, "/validate/trap-closed", &format!("{FIXTURES}/pod-create.json")).await;
    post(&s, "/validate/nope", &format!("{FIXTURES}/pod-create.json")).await;
    let metrics = call(&s, "GET", "/metrics", "").await.body;
    for line in [
        r#"portcullis_admission_requests_total{policy="ingress-tls",verdict="denied",outcome="policy"} 1"#,
        r#"portcullis_admission_requests_total{policy="trap-closed",verdict="denied",outcome="failure"} 1"#,
        r#"portcullis_evaluation_failures_total{policy="trap-closed",cause="trap"} 1"#,
        r#"portcullis_http_rejections_total{reason="unknown_policy"} 1"#,
        r#"portcullis_admission_duration_seconds_bucket{le="30.0",policy="ingress-tls"} 1"#,
        "portcullis_policies_loaded 6",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}
