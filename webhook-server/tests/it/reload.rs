//! Config and module reload without a restart: a good change is swapped in
//! whole, a bad one leaves the old policies serving.

use std::sync::Arc;

use webhook_server::config::Budget;
use webhook_server::context::watch::ContextSource;
use webhook_server::metrics::Metrics;
use webhook_server::reload::ConfigWatcher;
use webhook_server::server::AppState;

use crate::common::{TempConfig, entry, fixture, guest, load_ok, raw_request, runtime};

fn pod() -> String {
    raw_request(&fixture("webhook-server/tests/fixtures/pod-create.json"))
}

async fn allowed(state: &AppState, policy: &str) -> bool {
    let set = state.policies.load_full();
    let policy = set.get(policy).cloned().unwrap_or_else(|| panic!("{policy} not served"));
    policy.evaluate(&pod()).await.unwrap_or_else(|e| panic!("{e}")).allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_are_swapped_in_and_bad_ones_refused() {
    let rt = runtime();
    let config = TempConfig::new(&format!("policies:\n{}", entry("gate", &guest("allow_all"), "")));
    let state = Arc::new(AppState::new(
        load_ok(&rt, &[entry("gate", &guest("allow_all"), "")]).await,
        Arc::new(Metrics::new()),
    ));
    // No policy is granted context: the watches never connect to a cluster.
    let watches = Arc::new(ContextSource::new(None, state.context.clone()));
    let budget = Budget { max_instances: 32, memory_mib: None };
    let mut watcher = ConfigWatcher::new(&config.path, rt.clone(), state.clone(), watches, budget).await;
    assert!(allowed(&state, "gate").await);
    assert!(!watcher.reload(false).await.unwrap_or_else(|e| panic!("{e:#}")), "nothing changed");

    // The same policy name now points at another module.
    std::fs::write(&config.path, format!("policies:\n{}", entry("gate", &guest("deny_all"), "")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(watcher.reload(false).await.unwrap_or_else(|e| panic!("{e:#}")));
    assert!(!allowed(&state, "gate").await, "the new module serves");

    // A module refused at load: the error names the policy, the old set keeps serving.
    std::fs::write(
        &config.path,
        format!(
            "policies:\n{}{}",
            entry("gate", &guest("allow_all"), ""),
            entry("wasi", &guest("forbidden_import"), "")
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let error = match watcher.reload(false).await {
        Ok(swapped) => panic!("a config with a WASI module was accepted (swapped: {swapped})"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("policy \"wasi\"") && error.contains("wasi_snapshot_preview1"), "{error}");
    assert!(!allowed(&state, "gate").await, "the previous set still serves");
    assert!(state.policies.load().get("wasi").is_none());

    // A config that does not parse is refused the same way.
    std::fs::write(&config.path, "policies:\n- name: gate\n  modul: x.wasm\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(watcher.reload(false).await.is_err());
    assert!(!allowed(&state, "gate").await);

    // SIGHUP-style forced reload of a good config.
    std::fs::write(&config.path, format!("policies:\n{}", entry("gate", &guest("allow_all"), "")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(watcher.reload(true).await.unwrap_or_else(|e| panic!("{e:#}")));
    assert!(allowed(&state, "gate").await);
}

/// A policy removed by a reload takes its metric series with it; the
/// policies still served keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_policy_leaves_no_metric_series_behind() {
    use axum::body::Body;
    use tower::ServiceExt as _;

    let rt = runtime();
    let entries = [entry("gate", &guest("allow_all"), ""), entry("old", &guest("trap"), "")];
    let config = TempConfig::new(&format!("policies:\n{}", entries.concat()));
    let state = Arc::new(AppState::new(load_ok(&rt, &entries).await, Arc::new(Metrics::new())));
    let watches = Arc::new(ContextSource::new(None, state.context.clone()));
    let budget = Budget { max_instances: 32, memory_mib: None };
    let mut watcher = ConfigWatcher::new(&config.path, rt.clone(), state.clone(), watches, budget).await;
    for policy in ["gate", "old"] {
        let request = axum::http::Request::post(format!("/validate/{policy}"))
            .body(Body::from(fixture("webhook-server/tests/fixtures/pod-create.json")))
            .unwrap_or_else(|e| panic!("{e}"));
        let response = webhook_server::server::app(state.clone()).oneshot(request).await.unwrap_or_else(|e| match e {});
        assert!(response.status().is_success());
    }
    let before = state.metrics.encode();
    assert!(before.contains(r#"policy="old""#) && before.contains(r#"cause="trap""#), "{before}");

    std::fs::write(&config.path, format!("policies:\n{}", entry("gate", &guest("allow_all"), "")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(watcher.reload(false).await.unwrap_or_else(|e| panic!("{e:#}")));
    let after = state.metrics.encode();
    assert!(!after.contains(r#"policy="old""#), "{after}");
    assert!(
        after.contains(r#"portcullis_admission_requests_total{policy="gate",verdict="allowed",outcome="policy"} 1"#),
        "{after}"
    );
}
