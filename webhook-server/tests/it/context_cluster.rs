//! The watch-backed context store against a real API server: the one that
//! `cargo xtask e2e` starts (it runs this with `--ignored` and
//! `PORTCULLIS_E2E_KUBECONFIG`). Objects created after the caches synced are
//! seen, changed ones change, deleted ones disappear — all answered from
//! memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use webhook_server::context::watch::ContextSource;
use webhook_server::context::{ContextStore, Kind};
use webhook_server::metrics::Metrics;

fn kubeconfig() -> std::path::PathBuf {
    std::env::var_os("PORTCULLIS_E2E_KUBECONFIG")
        .map(Into::into)
        .unwrap_or_else(|| panic!("PORTCULLIS_E2E_KUBECONFIG is not set: run through cargo xtask e2e"))
}

/// Names of the ConfigMaps a lookup of `query` (merged into the base query) returns.
fn names(store: &ContextStore, granted: &Kind, query: Value) -> Vec<String> {
    let mut q = json!({"apiVersion": "v1", "kind": "ConfigMap"});
    if let (Some(q), Some(extra)) = (q.as_object_mut(), query.as_object()) {
        q.extend(extra.clone());
    }
    let (answer, result) = store.lookup(std::slice::from_ref(granted), q.to_string().as_bytes());
    assert_eq!(result, "ok", "{}", String::from_utf8_lossy(&answer));
    let answer: Value = serde_json::from_slice(&answer).unwrap_or_default();
    answer["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the API server of cargo xtask e2e"]
async fn context_cluster_store_follows_the_api_server() {
    let config = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap_or_else(|e| panic!("{e}"));
    let config =
        kube::Config::from_custom_kubeconfig(config, &Default::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let client = kube::Client::try_from(config).unwrap_or_else(|e| panic!("{e}"));
    let suffix = std::process::id();
    let namespace = format!("context-cluster-{suffix}");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap_or_else(|e| panic!("{e}"));
    namespaces.create(&PostParams::default(), &ns).await.unwrap_or_else(|e| panic!("creating {namespace}: {e}"));

    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(ContextStore::new(Some(metrics.clone())));
    let watches = ContextSource::new(Some(kubeconfig()), store.clone());
    let kind = Kind::new("v1", "ConfigMap");
    watches.watch(std::slice::from_ref(&kind)).await.unwrap_or_else(|e| panic!("{e:#}"));
    watches
        .wait_synced(std::slice::from_ref(&kind), Duration::from_secs(30))
        .await
        .unwrap_or_else(|k| panic!("not synced: {k:?}"));

    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let cm = |name: &str, tier: &str| {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"tier": tier}}, "data": {"owner": name}}))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    for (name, tier) in [("web", "front"), ("api", "back")] {
        configmaps.create(&PostParams::default(), &cm(name, tier)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let in_ns = json!({"namespace": namespace});
    eventually("the created ConfigMaps to be cached", || names(&store, &kind, in_ns.clone()) == ["api", "web"]).await;
    let selected = names(&store, &kind, json!({"namespace": namespace, "labelSelector": "tier=back"}));
    assert_eq!(selected, ["api"]);
    let by_field = names(&store, &kind, json!({"namespace": namespace, "fields": {"/data/owner": "web"}}));
    assert_eq!(by_field, ["web"]);
    // Not granted: refused, from the same store.
    let (answer, result) = store.lookup(&[], br#"{"apiVersion": "v1", "kind": "ConfigMap"}"#);
    assert_eq!(result, "refused", "{}", String::from_utf8_lossy(&answer));

    configmaps.delete("api", &DeleteParams::default()).await.unwrap_or_else(|e| panic!("{e}"));
    eventually("the deleted ConfigMap to leave the cache", || names(&store, &kind, in_ns.clone()) == ["web"]).await;
    configmaps.replace("web", &PostParams::default(), &cm("web", "back")).await.unwrap_or_else(|e| panic!("{e}"));
    eventually("the changed label to be seen", || {
        names(&store, &kind, json!({"namespace": namespace, "labelSelector": "tier=back"})) == ["web"]
    })
    .await;
    store.update_metrics();
    let text = metrics.encode();
    assert!(text.contains(r#"portcullis_context_synced{kind="v1 ConfigMap"} 1"#), "{text}");

    namespaces.delete(&namespace, &DeleteParams::default()).await.ok();
}
