//! Every policy crate's `test_data/cases.yaml`, run through its compiled
//! module and the server's admission path, as the server would answer.

use std::collections::HashMap;
use std::path::PathBuf;

use webhook_server::cases::CaseRunner;
use webhook_server::context::Kind;
use webhook_server::policy::{self, PolicySet};

use crate::common::{chain, entry, fixture, load, load_ok, policy_module, raw_request, runtime, workspace};

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
    for expected in ["ingress-tls", "service-account-identity", "hpa-resource-requests", "required-labels"] {
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

/// The AssemblyScript policy, written from ABI.md alone, refuses bad
/// settings at load with the field named, as the Rust policies do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_labels_refuses_bad_settings_naming_the_field() {
    let rt = runtime();
    let module = policy_module("required-labels");
    for (settings, expected) in [
        ("{labels: [team], lables: [owner]}", "unknown field `lables`, expected `labels` or `allowedValues`"),
        ("{}", "labels: required"),
        ("{labels: []}", "labels: must list at least one label key"),
        ("{labels: [team, Team Name]}", r#"labels[1]: "Team Name" is not a valid label key"#),
        ("{labels: [team], allowedValues: {owner: [me]}}", r#"allowedValues["owner"]: owner is not one of labels"#),
    ] {
        let e = match load(&rt, &[entry("required-labels", &module, &format!("settings: {settings}"))]).await {
            Ok(_) => panic!("{settings} was accepted"),
            Err(e) => e,
        };
        let message = chain(&e);
        assert!(matches!(e, policy::Error::Settings { .. }), "{settings}: {message}");
        assert!(message.contains(&format!("policy \"required-labels\": invalid settings: {expected}")), "{message}");
    }
}

/// It starts with one page of memory and grows on demand: a 1 MiB cap is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_labels_runs_under_a_one_mib_memory_cap() {
    let rt = runtime();
    let settings = "memoryLimitMiB: 1\nsettings: {labels: [app.kubernetes.io/name, team]}";
    let set = load_ok(&rt, &[entry("required-labels", &policy_module("required-labels"), settings)]).await;
    let policy = set.get("required-labels").unwrap_or_else(|| panic!("required-labels not loaded"));
    let review = fixture("policies-wasm/required-labels/test_data/deployment-missing-team.json");
    let verdict = policy.evaluate(&raw_request(&review)).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!verdict.allowed && verdict.message.is_some_and(|m| m.contains("label team is missing")));
}
