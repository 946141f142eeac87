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
pub async fn run(config: &Path, name: &str, request: &Path, context: Option<&Path>) -> anyhow::Result<OfflineResult> {
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
    let runtime = Arc::new(Runtime::new(&RuntimeOptions { max_instances: 4, cache_dir: None })?);
    let set = PolicySet::load_with_context(&runtime, &config, &store).await?;
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
