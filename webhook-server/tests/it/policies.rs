//! Every policy crate's `test_data/cases.yaml`, run through its compiled
//! module and the server's admission path, as the server would answer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use portcullis_sdk::testing::FixtureCase;
use webhook_server::admission::{self, Endpoint};
use webhook_server::policy::PolicySet;

use crate::common::{entry, load_ok, policy_module, runtime, workspace};

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
    assert!(crates.iter().any(|(name, _)| name == "ingress-tls"), "ingress-tls has no cases.yaml");
    let rt = runtime();
    let mut checked = 0;
    for (policy, data) in crates {
        let text = std::fs::read_to_string(data.join("cases.yaml")).unwrap_or_else(|e| panic!("{policy}: {e}"));
        let cases: Vec<FixtureCase> =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{policy}/cases.yaml: {e}"));
        let mut sets: HashMap<String, Arc<PolicySet>> = HashMap::new();
        for case in cases {
            let settings = case.settings.clone().unwrap_or_else(|| serde_json::json!({}));
            let key = settings.to_string();
            let set = match sets.get(&key) {
                Some(set) => set.clone(),
                None => {
                    let extra = format!("settings: {key}");
                    let set = Arc::new(load_ok(&rt, &[entry(&policy, &policy_module(&policy), &extra)]).await);
                    sets.insert(key, set.clone());
                    set
                }
            };
            let loaded = set.get(&policy).unwrap_or_else(|| panic!("{policy} not loaded"));
            let body = std::fs::read(data.join(&case.request)).unwrap_or_else(|e| panic!("{}: {e}", case.request));
            let incoming = admission::parse(&body).unwrap_or_else(|e| panic!("{}: {e}", case.request));
            let verdict = loaded.evaluate(incoming.raw.get()).await;
            let decision = admission::decide(loaded, Endpoint::Validate, &incoming, verdict);
            let what = format!("{policy}: {} with settings {}", case.request, settings);
            assert!(decision.failure.is_none(), "{what}: evaluation failed: {:?}", decision.failure);
            let response = decision.response;
            assert_eq!(response.uid, incoming.request.uid, "{what}: uid not echoed");
            assert_eq!(response.allowed, case.allowed, "{what}: {}", response.result.message);
            for fragment in &case.message {
                assert!(
                    response.result.message.contains(fragment),
                    "{what}: {:?} lacks {fragment:?}",
                    response.result.message
                );
            }
            let warnings = response.warnings.unwrap_or_default();
            for fragment in &case.warnings {
                assert!(
                    warnings.iter().any(|w| w.contains(fragment)),
                    "{what}: warnings {warnings:?} lack {fragment:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} cases ran");
}

/// The default config of the repository loads as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_config_loads() {
    let path = workspace().join("webhook-server/config/default.yaml");
    let config = webhook_server::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let set = PolicySet::load(&runtime(), &config).await.unwrap_or_else(|e| panic!("{}", crate::common::chain(&e)));
    assert!(set.get("ingress-tls").is_some());
}
