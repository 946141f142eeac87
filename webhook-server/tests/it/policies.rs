//! Every policy crate's `test_data/cases.yaml`, run through its compiled
//! module and the server's admission path, as the server would answer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use portcullis_sdk::testing::{Answer, load_cases};
use webhook_server::admission::{self, Endpoint};
use webhook_server::context::{ContextStore, Kind};
use webhook_server::policy::{Policy, PolicySet};

use crate::common::{entry, load_with_context, policy_module, runtime, workspace};

/// Policy crates with a `test_data/cases.yaml`.
fn policy_crates() -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let dir = workspace().join("policies-wasm");
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let cases = e.path().join("test_data/cases.yaml");
        if cases.is_file() {
            found.push((e.file_name().to_string_lossy().into_owned(), e.path().join("test_data")));
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_fixture_gives_its_expected_verdict_through_the_compiled_module() {
    let crates = policy_crates();
    for expected in ["ingress-tls", "service-account-identity", "hpa-resource-requests"] {
        assert!(crates.iter().any(|(name, _)| name == expected), "{expected} has no cases.yaml");
    }
    let rt = runtime();
    let grants = default_grants();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (policy, data) in crates {
        let cases = load_cases(&data).unwrap_or_else(|e| panic!("{policy}: {e}"));
        // The kinds the default config grants the policy: the cases prove them enough.
        let kinds = grants.get(&policy).cloned().unwrap_or_default();
        let mut sets: HashMap<String, Arc<PolicySet>> = HashMap::new();
        for case in cases {
            let settings = case.settings_json();
            let key = format!("{settings} {:?}", case.context);
            let set = match sets.get(&key) {
                Some(set) => set.clone(),
                None => {
                    let objects = case.context_objects(&data).unwrap_or_else(|e| panic!("{policy}: {e}"));
                    let store = Arc::new(ContextStore::offline(objects, &kinds));
                    let grant: Vec<String> =
                        kinds.iter().map(|k| format!("{{apiVersion: {}, kind: {}}}", k.api_version, k.kind)).collect();
                    let extra = format!("mutating: true\nsettings: {settings}\ncontext: [{}]", grant.join(", "));
                    let set = Arc::new(
                        load_with_context(&rt, &[entry(&policy, &policy_module(&policy), &extra)], &store).await,
                    );
                    sets.insert(key, set.clone());
                    set
                }
            };
            let loaded = set.get(&policy).unwrap_or_else(|| panic!("{policy} not loaded"));
            let result = async {
                let review = case.review(&data)?;
                let first = answer(loaded, &review).await?;
                match case.check(&data, &review, &first)? {
                    Some(rerun) => case.check_rerun(&answer(loaded, &rerun).await?),
                    None => Ok(()),
                }
            };
            if let Err(e) = result.await {
                failures.push(format!("{policy}: {} with settings {settings}: {e}", case.request));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked >= 45, "only {checked} cases ran");
}

/// The context kinds the repository's default config grants each policy.
fn default_grants() -> HashMap<String, Vec<Kind>> {
    let path = workspace().join("webhook-server/config/default.yaml");
    let config = webhook_server::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    config.policies.into_iter().map(|p| (p.name, p.context)).collect()
}

/// What the server answers on `/mutate/{policy}` for `review`, as a case
/// checks it (the patch decoded from base64); the uid must be echoed.
async fn answer(policy: &Policy, review: &serde_json::Value) -> Result<Answer, String> {
    let body = serde_json::to_vec(review).map_err(|e| e.to_string())?;
    let incoming = admission::parse(&body).map_err(|e| e.to_string())?;
    let verdict = policy.evaluate(incoming.raw.get()).await;
    let decision = admission::decide(policy, Endpoint::Mutate, &incoming, verdict);
    if let Some(failure) = decision.failure {
        return Err(format!("evaluation failed: {failure}"));
    }
    let response = decision.response;
    if response.uid != incoming.request.uid {
        return Err(format!("uid {:?} not echoed (got {:?})", incoming.request.uid, response.uid));
    }
    let patch = match decision.patch {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| e.to_string())?;
            Some(serde_json::from_slice(&bytes).map_err(|e| format!("patch: {e}"))?)
        }
        None => None,
    };
    Ok(Answer {
        allowed: response.allowed,
        message: response.result.message,
        warnings: response.warnings.unwrap_or_default(),
        patch,
    })
}

/// The default config of the repository loads as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_config_loads() {
    let path = workspace().join("webhook-server/config/default.yaml");
    let config = webhook_server::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let set = PolicySet::load(&runtime(), &config).await.unwrap_or_else(|e| panic!("{}", crate::common::chain(&e)));
    assert!(set.get("ingress-tls").is_some());
    let identity = set.get("service-account-identity").unwrap_or_else(|| panic!("service-account-identity not loaded"));
    assert!(identity.config.mutating, "service-account-identity is served on /mutate");
    let hpa = set.get("hpa-resource-requests").unwrap_or_else(|| panic!("hpa-resource-requests not loaded"));
    assert_eq!(hpa.config.context.len(), 5, "hpa-resource-requests is granted the HPA and the four scalable kinds");
}
