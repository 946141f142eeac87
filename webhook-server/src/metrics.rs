//! Prometheus metrics, served as text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets, 50 µs to 30 s (the API server's longest webhook timeout).
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// Every `cause` of [`FailureLabels`].
pub const FAILURE_CAUSES: &[&str] =
    &["timeout", "memory", "stack_overflow", "trap", "output", "guest_error", "busy", "abi"];

/// Every `result` of [`LookupLabels`].
pub const LOOKUP_RESULTS: &[&str] = &["ok", "refused", "invalid", "unsynced", "too_large"];

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Policy name.
    pub policy: String,
    /// `allowed` or `denied`.
    pub verdict: String,
    /// `policy`, `audit` or `failure`.
    pub outcome: String,
}

/// Labels of per-policy series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Policy name.
    pub policy: String,
}

/// Labels of the evaluation-failure counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Policy name.
    pub policy: String,
    /// What went wrong: `timeout`, `memory`, `stack_overflow`, `trap`, `output`, `guest_error`, `busy`, `abi`.
    pub cause: String,
}

/// Labels of the rejected-request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    /// `bad_request`, `unknown_policy`, `wrong_endpoint`, `too_large`,
    /// `body_timeout`, `body_error`, `overloaded` or `unauthenticated`.
    pub reason: String,
}

/// Labels of the reload counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `config` or `certificate`.
    pub kind: String,
    /// `success` or `failure`.
    pub result: String,
}

/// Labels of per-kind context series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `apiVersion kind`, e.g. `apps/v1 Deployment`.
    pub kind: String,
}

/// Labels of the lookup counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// Policy name.
    pub policy: String,
    /// `ok`, `refused` (kind not granted), `invalid` (bad query), `unsynced`
    /// or `too_large` (over the policy's memory limit).
    pub result: String,
}

/// Labels of the module-pull counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullLabels {
    /// Registry host (and port) of the `oci://` reference.
    pub registry: String,
    /// `pulled`, `cached` (from `--module-cache`, no network), or why it
    /// failed: `unreachable`, `auth`, `not_found`, `digest_mismatch`,
    /// `no_wasm_layer`, `too_large`, `registry`, ...
    pub result: String,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Admission requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from body received to response built.
    pub duration: Family<PolicyLabels, Histogram>,
    /// Evaluations that produced no verdict.
    pub failures: Family<FailureLabels, Counter>,
    /// Requests refused before evaluation.
    pub rejections: Family<RejectionLabels, Counter>,
    /// Reload attempts of the config or the certificate.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Policies currently served.
    pub policies: Gauge,
    /// Objects in each context cache.
    pub context_objects: Family<KindLabels, Gauge>,
    /// 1 once a context cache has listed its kind, else 0.
    pub context_synced: Family<KindLabels, Gauge>,
    /// Failed watches and discoveries of each context kind (each retried with backoff).
    pub watch_restarts: Family<KindLabels, Counter>,
    /// Context lookups by policy and result.
    pub lookups: Family<LookupLabels, Counter>,
    /// Fetches of `oci://` modules by registry and result.
    pub module_pulls: Family<PullLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `portcullis_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration =
            Family::<PolicyLabels, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS.iter().copied()));
        let failures = Family::<FailureLabels, Counter>::default();
        let rejections = Family::<RejectionLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let policies = Gauge::default();
        let context_objects = Family::<KindLabels, Gauge>::default();
        let context_synced = Family::<KindLabels, Gauge>::default();
        let watch_restarts = Family::<KindLabels, Counter>::default();
        let lookups = Family::<LookupLabels, Counter>::default();
        let module_pulls = Family::<PullLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests answered, by policy, verdict and outcome",
            requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request, by policy",
            duration.clone(),
        );
        registry.register(
            "evaluation_failures",
            "Policy evaluations that produced no verdict, by cause",
            failures.clone(),
        );
        registry.register("http_rejections", "Requests refused before evaluation, by reason", rejections.clone());
        registry.register("reloads", "Reloads of the policy config or the serving certificate", reloads.clone());
        registry.register("policies_loaded", "Policies currently served", policies.clone());
        registry.register("context_objects", "Objects in each context cache, by kind", context_objects.clone());
        registry.register(
            "context_synced",
            "1 once the context cache of a kind has listed it, else 0",
            context_synced.clone(),
        );
        registry.register(
            "context_watch_restarts",
            "Failed watches (or resource discoveries) of a context kind, each retried with backoff",
            watch_restarts.clone(),
        );
        registry.register("context_lookups", "Context lookups by policy and result", lookups.clone());
        registry.register(
            "module_pulls",
            "Fetches of oci:// policy modules, by registry and result (pulled, cached, or the failure)",
            module_pulls.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            failures,
            rejections,
            reloads,
            policies,
            context_objects,
            context_synced,
            watch_restarts,
            lookups,
            module_pulls,
        }
    }

    /// Counts a fetch of an `oci://` module.
    pub fn module_pull(&self, registry: &str, result: &str) {
        self.module_pulls.get_or_create(&PullLabels { registry: registry.into(), result: result.into() }).inc();
    }

    /// Counts a rejected request.
    pub fn reject(&self, reason: &str) {
        self.rejections.get_or_create(&RejectionLabels { reason: reason.into() }).inc();
    }

    /// Counts a reload attempt.
    pub fn reload(&self, kind: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { kind: kind.into(), result: result.into() }).inc();
    }

    /// Publishes a context cache's size and sync state.
    pub fn context_objects(&self, kind: &str, objects: usize, synced: bool) {
        let labels = KindLabels { kind: kind.into() };
        self.context_objects.get_or_create(&labels).set(i64::try_from(objects).unwrap_or(i64::MAX));
        self.context_synced.get_or_create(&labels).set(i64::from(synced));
    }

    /// Counts a failed watch of `kind`.
    pub fn watch_restart(&self, kind: &str) {
        self.watch_restarts.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }

    /// Counts a lookup.
    pub fn lookup(&self, policy: &str, result: &str) {
        self.lookups.get_or_create(&LookupLabels { policy: policy.into(), result: result.into() }).inc();
    }

    /// Drops every series of a policy that is no longer served, so a removed
    /// (or renamed) policy does not stay on dashboards forever.
    pub fn forget_policy(&self, policy: &str) {
        let policy = policy.to_owned();
        for verdict in ["allowed", "denied"] {
            for outcome in ["policy", "audit", "failure"] {
                self.requests.remove(&RequestLabels {
                    policy: policy.clone(),
                    verdict: verdict.into(),
                    outcome: outcome.into(),
                });
            }
        }
        self.duration.remove(&PolicyLabels { policy: policy.clone() });
        for cause in FAILURE_CAUSES {
            self.failures.remove(&FailureLabels { policy: policy.clone(), cause: (*cause).into() });
        }
        for result in LOOKUP_RESULTS {
            self.lookups.remove(&LookupLabels { policy: policy.clone(), result: (*result).into() });
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
