//! Every policy crate's `test_data/cases.yaml`, run through its compiled
//! module and the server's admission path, as the server would answer.

use std::collections::HashMap;
use std::path::PathBuf;

use webhook_server::cases::CaseRunner;
use webhook_server::context::Kind;
use webhook_server::policy::PolicySet;

use crate::common::{policy_module, runtime, workspace};

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
        // The code path of `webhook-server test`, with the kinds the default
        // config grants a built-in policy (the cases prove them enough);
        // any kind for a policy the default config does not serve.
        let module = policy_module(&policy);
        let wasm = std::fs::read(&module).unwrap_or_else(|e| panic!("{}: {e}", module.display()));
        let mut runner = CaseRunner::new(&rt, &policy, &wasm).unwrap_or_else(|e| panic!("{policy}: {e:#}"));
        if let Some(kinds) = grants.get(&policy) {
            runner = runner.granting(kinds.clone());
        }
        let reports = runner.run_file(&data.join("cases.yaml")).await.unwrap_or_else(|e| panic!("{policy}: {e}"));
        for report in reports {
            if report.failure.is_some() {
                failures.push(report.line());
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
