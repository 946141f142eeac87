//! `webhook-server run`: evaluate one AdmissionReview file against one policy
//! of a config, without a server or a cluster, and produce the response the
//! server would send. A context-aware policy's lookups are answered from a
//! file of objects (`--context`), through the same store the server uses.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::admission::{self, Endpoint};
use crate::config::Config;
use crate::context::ContextStore;
use crate::policy::PolicySet;
use crate::runtime::{Runtime, RuntimeOptions};

/// What an offline evaluation produced.
#[derive(Debug)]
pub struct OfflineResult {
    /// The AdmissionReview response, as JSON.
    pub review: serde_json::Value,
    /// Set when the policy could not evaluate (the review then follows its failurePolicy).
    pub failure: Option<String>,
}

/// Evaluates the AdmissionReview in `request` with policy `name` of
/// `config`, answering its lookups from the objects of `context` (a YAML
/// file of documents or a `kind: List`; none: the granted kinds are empty).
pub async fn run(
    config: &Path,
    name: &str,
    request: &Path,
    context: Option<&Path>,
    registry: &crate::cli::RegistryArgs,
) -> anyhow::Result<OfflineResult> {
    let mut config = Config::load(config)?;
    let available = config.policies.iter().map(|p| p.name.clone()).collect::<Vec<_>>().join(", ");
    config.policies.retain(|p| p.name == name);
    if config.policies.is_empty() {
        anyhow::bail!("config {} has no policy named {name:?} (it has: {available})", config.path.display());
    }
    let store = Arc::new(ContextStore::default());
    match context {
        Some(path) => {
            store.fill_from_file(path, &config.granted_kinds()).map_err(|e| anyhow::anyhow!(e))?;
        }
        None => store.fill(Vec::new(), &config.granted_kinds()),
    }
    let runtime = Arc::new(Runtime::new(&RuntimeOptions { max_instances: 4, ..RuntimeOptions::default() })?);
    let set = PolicySet::load_from(&runtime, &config, &store, &registry.sources(None, None)?).await?;
    let policy = set.get(name).context("policy vanished after loading")?;
    let body = std::fs::read(request).with_context(|| format!("reading {}", request.display()))?;
    let incoming =
        admission::parse(&body).with_context(|| format!("{} is not a usable AdmissionReview", request.display()))?;
    let endpoint = if policy.config.mutating { Endpoint::Mutate } else { Endpoint::Validate };
    let verdict = policy.evaluate(incoming.raw.get()).await;
    let decision = admission::decide(policy, endpoint, &incoming, verdict);
    Ok(OfflineResult {
        review: decision.to_value()?,
        failure: decision.failure.map(|e| format!("policy {name} could not evaluate the request: the module {e}")),
    })
}

/// Evaluation latency of one module on one request: what `webhook-server
/// bench` prints.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Runs measured (after the warm-up).
    pub iterations: usize,
    /// Runs before measuring.
    pub warmup: usize,
    /// Percentiles 50, 90, 99 and the maximum, in microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest run.
    pub max_us: f64,
    /// The verdict of the last run: `allowed`, `denied: …`, with `(patched)` when it patched.
    pub verdict: String,
}

/// Evaluates `body` (an AdmissionReview) with `policy` `warmup` times, then
/// `iterations` times measured, one at a time, each on a fresh instance as
/// the server runs it. An evaluation that fails (trap, timeout) ends the bench.
pub async fn bench(
    policy: &crate::policy::Policy,
    body: &[u8],
    warmup: usize,
    iterations: usize,
) -> anyhow::Result<BenchReport> {
    let incoming = admission::parse(body).context("the request is not a usable AdmissionReview")?;
    let mut samples = Vec::with_capacity(iterations);
    let mut verdict = None;
    for i in 0..warmup + iterations {
        let started = std::time::Instant::now();
        let result = policy.evaluate(incoming.raw.get()).await;
        let elapsed = started.elapsed();
        let answer = result.map_err(|e| anyhow::anyhow!("evaluation {} failed: the module {e}", i + 1))?;
        if i >= warmup {
            samples.push(elapsed.as_secs_f64() * 1e6);
        }
        verdict = Some(answer);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1]
    };
    let verdict = match verdict {
        Some(v) if v.allowed => {
            let patched = v.patch.as_ref().is_some_and(|p| !p.is_empty()) || v.mutated_object.is_some();
            if patched { "allowed (patched)".to_owned() } else { "allowed".to_owned() }
        }
        Some(v) => format!("denied: {}", v.message.unwrap_or_default()),
        None => "not evaluated".to_owned(),
    };
    Ok(BenchReport {
        iterations: samples.len(),
        warmup,
        p50_us: at(0.50),
        p90_us: at(0.90),
        p99_us: at(0.99),
        max_us: samples.last().copied().unwrap_or_default(),
        verdict,
    })
}
