use serde_json::json;

use super::*;

fn hpa(namespace: &str, name: &str, target: &str, labels: Value) -> Value {
    json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": name, "namespace": namespace, "labels": labels,
                        "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}}})
}

fn hpa_kind() -> Kind {
    Kind::new("autoscaling/v2", "HorizontalPodAutoscaler")
}

fn deployment_kind() -> Kind {
    Kind::new("apps/v1", "Deployment")
}

fn store() -> ContextStore {
    ContextStore::offline(
        vec![
            hpa("shop", "web", "web", json!({"app": "web"})),
            hpa("shop", "api", "api", json!({"app": "api", "tier": "back"})),
            hpa("blog", "web", "web", json!({"app": "web"})),
        ],
        &[hpa_kind(), deployment_kind()],
    )
}

fn items(answer: &[u8]) -> Vec<Value> {
    let value: Value =
        serde_json::from_slice(answer).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(answer)));
    value.get("items").and_then(Value::as_array).cloned().unwrap_or_else(|| panic!("no items: {value}"))
}

fn names(answer: &[u8]) -> Vec<String> {
    items(answer)
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn query(q: Value) -> Vec<u8> {
    q.to_string().into_bytes()
}

#[test]
fn lookups_filter_by_namespace_name_labels_and_fields() {
    let store = store();
    let granted = [hpa_kind()];
    let ask = |q: Value| {
        let (answer, result) = store.lookup(&granted, &query(q));
        assert_eq!(result, "ok", "{}", String::from_utf8_lossy(&answer));
        names(&answer)
    };
    let base = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"});
    let with = |extra: Value| {
        let mut q = base.clone();
        if let Some(m) = q.as_object_mut() {
            m.extend(extra.as_object().cloned().unwrap_or_default());
        }
        q
    };
    assert_eq!(ask(base.clone()), ["blog/web", "shop/api", "shop/web"], "all namespaces, sorted");
    assert_eq!(ask(with(json!({"namespace": "shop"}))), ["shop/api", "shop/web"]);
    assert_eq!(ask(with(json!({"namespace": "shop", "name": "web"}))), ["shop/web"]);
    assert_eq!(ask(with(json!({"name": "web"}))), ["blog/web", "shop/web"]);
    assert_eq!(ask(with(json!({"labelSelector": "app=api,tier in (back)"}))), ["shop/api"]);
    assert_eq!(ask(with(json!({"labelSelector": "!tier"}))), ["blog/web", "shop/web"]);
    assert_eq!(ask(with(json!({"fields": {"/spec/scaleTargetRef/name": "web"}}))), ["blog/web", "shop/web"]);
    assert_eq!(
        ask(with(
            json!({"namespace": "shop", "fields": {"/spec/scaleTargetRef/name": "web", "/spec/scaleTargetRef/kind": "Deployment"}})
        )),
        ["shop/web"]
    );
    assert!(ask(with(json!({"fields": {"/spec/scaleTargetRef/name": "nothing"}}))).is_empty());
    assert!(ask(with(json!({"namespace": "none"}))).is_empty());
}

#[test]
fn answers_are_the_objects_without_managed_fields() {
    let store = store();
    let (answer, _) = store.lookup(
        &[hpa_kind()],
        &query(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "namespace": "shop", "name": "api"})),
    );
    let mut expected = hpa("shop", "api", "api", json!({"app": "api", "tier": "back"}));
    if let Some(m) = expected["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    assert_eq!(items(&answer), [expected]);
}

#[test]
fn kinds_not_granted_and_bad_queries_are_refused_with_a_reason() {
    let store = store();
    let (answer, result) = store.lookup(
        &[deployment_kind()],
        &query(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"})),
    );
    assert_eq!(result, "refused");
    let error: Value = serde_json::from_slice(&answer).unwrap_or_default();
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("autoscaling/v2 HorizontalPodAutoscaler is not granted to this policy")
            && message.contains("it is granted apps/v1 Deployment"),
        "{message}"
    );
    let (_, result) = store.lookup(&[], &query(json!({"apiVersion": "v1", "kind": "Secret"})));
    assert_eq!(result, "refused");
    for bad in [
        b"{not json".to_vec(),
        query(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "labelSelector": "a in ("})),
        query(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "fields": {"spec": "x"}})),
        query(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "limit": 3})),
    ] {
        let (answer, result) = store.lookup(&[hpa_kind()], &bad);
        assert_eq!(result, "invalid", "{}", String::from_utf8_lossy(&bad));
        assert!(serde_json::from_slice::<Value>(&answer).is_ok_and(|v| v.get("error").is_some()));
    }
}

#[test]
fn an_unsynced_cache_answers_an_error_not_an_empty_list() {
    let store = ContextStore::new(None);
    let cache = store.cache(&hpa_kind());
    let ask = || {
        store.lookup(&[hpa_kind()], &query(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"})))
    };
    assert_eq!(ask().1, "unsynced");
    assert_eq!(store.unsynced(), [hpa_kind()]);
    cache.replace(vec![hpa("shop", "web", "web", json!({}))]);
    assert_eq!(ask().1, "ok");
    assert!(store.unsynced().is_empty());
}

#[test]
fn indexes_follow_updates_and_deletes() {
    let store = store();
    let cache = store.get(&hpa_kind()).unwrap_or_else(|| panic!("no cache"));
    let by_target = |target: &str| {
        let q = query(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                             "fields": {"/spec/scaleTargetRef/name": target}}));
        names(&store.lookup(&[hpa_kind()], &q).0)
    };
    assert_eq!(by_target("web"), ["blog/web", "shop/web"]);
    // Retarget shop/web to api: the index moves it.
    cache.apply(hpa("shop", "web", "api", json!({"app": "web"})));
    assert_eq!(by_target("web"), ["blog/web"]);
    assert_eq!(by_target("api"), ["shop/api", "shop/web"]);
    cache.delete(&hpa("shop", "api", "api", json!({})));
    assert_eq!(by_target("api"), ["shop/web"]);
    // A fresh list keeps the index.
    cache.replace(vec![hpa("new", "x", "api", json!({}))]);
    assert_eq!(by_target("api"), ["new/x"]);
    assert_eq!(cache.len(), 1);
}

#[test]
fn field_pointers_beyond_the_index_limit_are_still_answered() {
    let store = store();
    let ask = |pointer: &str, value: &str| {
        let q = query(
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "fields": {pointer: value}}),
        );
        names(&store.lookup(&[hpa_kind()], &q).0)
    };
    for i in 0..MAX_INDEXES + 4 {
        assert!(ask(&format!("/spec/unused{i}"), "x").is_empty());
    }
    assert_eq!(ask("/metadata/labels/tier", "back"), ["shop/api"], "read from the JSON once the indexes are full");
}

#[test]
fn answers_over_the_limit_are_refused_unbuilt() {
    let store = store();
    let q = query(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"}));
    let (answer, result) = store.lookup_within(&[hpa_kind()], &q, 100);
    assert_eq!(result, "too_large");
    let error: Value = serde_json::from_slice(&answer).unwrap_or_default();
    assert!(error["error"].as_str().unwrap_or_default().contains("would hold 3 objects"), "{error}");
    assert_eq!(store.lookup_within(&[hpa_kind()], &q, 1 << 20).1, "ok");
}

#[test]
fn offline_store_answers_kinds_of_the_file_and_granted_kinds() {
    let store = store();
    let (answer, result) =
        store.lookup(&[deployment_kind()], &query(json!({"apiVersion": "apps/v1", "kind": "Deployment"})));
    assert_eq!((result, items(&answer).len()), ("ok", 0));
}

#[test]
fn files_of_objects_fill_the_store_json_lists_one_item_at_a_time() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("portcullis-context-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let json = dir.join("list.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [hpa("shop", "web", "web", json!({})), hpa("shop", "api", "api", json!({}))]});
    std::fs::write(&json, list.to_string()).map_err(|e| e.to_string())?;
    let store = ContextStore::default();
    assert_eq!(store.fill_from_file(&json, &[deployment_kind()])?, 2);
    assert_eq!(store.get(&hpa_kind()).map(|c| c.len()), Some(2));
    assert!(store.get(&deployment_kind()).is_some_and(|c| c.is_synced() && c.is_empty()));

    let yaml = dir.join("objects.yaml");
    std::fs::write(&yaml, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a, namespace: shop}\n---\n")
        .map_err(|e| e.to_string())?;
    assert_eq!(store.fill_from_file(&yaml, &[])?, 1);

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"kind": "List", "items": [{"kind": "ConfigMap"}]}"#).map_err(|e| e.to_string())?;
    let e = store.fill_from_file(&bad, &[]).expect_err("an item without apiVersion and name");
    assert!(e.contains("items[0] is not an object with apiVersion, kind and metadata.name"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
