//! Unit tests of the rules, natively, with lookups answered by the SDK's
//! test double from in-memory objects; and the fixtures of
//! `test_data/cases.yaml`.

use std::path::Path;

use portcullis_sdk::testing::{Context, request_for, run_cases};
use portcullis_sdk::{Outcome, Verdict};
use serde_json::{Value, json};

use super::*;

const GRANTS: [(&str, &str); 5] = [
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "ReplicaSet"),
    ("v1", "ReplicationController"),
];

fn hpa(name: &str, target_kind: &str, target: &str, metrics: Value) -> Value {
    let mut spec = json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": target_kind, "name": target}, "minReplicas": 3, "maxReplicas": 20});
    if !metrics.is_null() {
        spec["metrics"] = metrics;
    }
    json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

fn cpu_utilization() -> Value {
    json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}])
}

fn cpu_and_memory() -> Value {
    json!([
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
        {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 80}}},
        {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "100"}}},
    ])
}

fn container(name: &str, resources: Value) -> Value {
    json!({"name": name, "image": "registry.example.com/app:1", "resources": resources})
}

fn deployment(name: &str, containers: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}}}})
}

fn requests(cpu: &str, memory: &str) -> Value {
    json!({"requests": {"cpu": cpu, "memory": memory}})
}

fn run(gvk: &str, operation: &str, object: Value, context: Vec<Value>, settings: &str) -> Result<Verdict, String> {
    let _installed = Context::new(context).granting(&GRANTS).install();
    let request = request_for(gvk, operation, object)?;
    match portcullis_sdk::testing::run(validate, &request, settings)? {
        Outcome::Verdict(v) => Ok(v),
        Outcome::Error { error } => Err(error),
    }
}

fn check(verdict: &Verdict, allowed: bool, fragments: &[&str]) {
    let message = verdict.message.as_deref().unwrap_or_default();
    assert_eq!(verdict.allowed, allowed, "{message} {:?}", verdict.warnings);
    for f in fragments {
        assert!(
            message.contains(f) || verdict.warnings.iter().any(|w| w.contains(f)),
            "{f:?} not in {message:?} / {:?}",
            verdict.warnings
        );
    }
}

// ---- HPA rule ----

#[test]
fn hpa_rule_checks_the_target_template() -> Result<(), String> {
    let no_requests = deployment("web", json!([container("app", json!({}))]));
    let with_requests = deployment("web", json!([container("app", requests("500m", "512Mi"))]));
    let limits_only = deployment("web", json!([container("app", json!({"limits": {"cpu": "1", "memory": "1Gi"}}))]));
    let memory_only = deployment("web", json!([container("app", json!({"requests": {"memory": "1Gi"}}))]));
    let new_hpa = hpa("web", "Deployment", "web", cpu_and_memory());
    let hpa_gvk = "autoscaling/v2/HorizontalPodAutoscaler";
    check(&run(hpa_gvk, "CREATE", new_hpa.clone(), vec![with_requests], "{}")?, true, &[]);
    check(&run(hpa_gvk, "CREATE", new_hpa.clone(), vec![limits_only], "{}")?, true, &[]);
    check(
        &run(hpa_gvk, "CREATE", new_hpa.clone(), vec![no_requests], "{}")?,
        false,
        &[
            "HorizontalPodAutoscaler \"shop/web\" cannot work as written (2 problems)",
            "it scales Deployment \"web\" on cpu and memory utilization, but in its pod template container \"app\" has no cpu request (nor limit)",
            "container \"app\" has no memory request",
            "FailedGetResourceMetric",
        ],
    );
    check(
        &run(hpa_gvk, "UPDATE", new_hpa.clone(), vec![memory_only], "{}")?,
        false,
        &["(1 problem)", "no cpu request"],
    );
    // Target not there yet: admitted with a warning.
    check(&run(hpa_gvk, "CREATE", new_hpa, vec![], "{}")?, true, &["does not exist yet"]);
    Ok(())
}

#[test]
fn hpa_rule_knows_which_targets_can_scale() -> Result<(), String> {
    let hpa_gvk = "autoscaling/v2/HorizontalPodAutoscaler";
    let mut daemonset = hpa("agents", "DaemonSet", "node-agent", json!(null));
    check(
        &run(hpa_gvk, "CREATE", daemonset.clone(), vec![], "{}")?,
        false,
        &["DaemonSet \"node-agent\", which an autoscaler cannot scale"],
    );
    daemonset["spec"]["scaleTargetRef"] =
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "web"});
    check(&run(hpa_gvk, "CREATE", daemonset, vec![], "{}")?, true, &["a custom resource"]);
    Ok(())
}

#[test]
fn hpa_metrics_decide_which_requests_are_needed() -> Result<(), String> {
    let hpa_gvk = "autoscaling/v2/HorizontalPodAutoscaler";
    let sidecar_without =
        deployment("web", json!([container("app", requests("1", "1Gi")), container("proxy", json!({}))]));
    // AverageValue needs no request.
    let average = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "AverageValue", "averageValue": "500m"}}}]);
    check(
        &run(hpa_gvk, "CREATE", hpa("web", "Deployment", "web", average), vec![sidecar_without.clone()], "{}")?,
        true,
        &[],
    );
    // ContainerResource checks only its container.
    let per_app = json!([{"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "app", "target": {"type": "Utilization", "averageUtilization": 60}}}]);
    check(
        &run(hpa_gvk, "CREATE", hpa("web", "Deployment", "web", per_app), vec![sidecar_without.clone()], "{}")?,
        true,
        &[],
    );
    let per_gone = json!([{"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "gone", "target": {"type": "Utilization", "averageUtilization": 60}}}]);
    check(
        &run(hpa_gvk, "CREATE", hpa("web", "Deployment", "web", per_gone), vec![sidecar_without.clone()], "{}")?,
        false,
        &["it has no container \"gone\""],
    );
    // No metrics: 80% CPU, so the sidecar needs a cpu request.
    check(
        &run(hpa_gvk, "CREATE", hpa("web", "Deployment", "web", json!(null)), vec![sidecar_without.clone()], "{}")?,
        false,
        &["container \"proxy\" has no cpu request"],
    );
    // v1: CPU utilization.
    let mut v1 = hpa("web", "Deployment", "web", json!(null));
    v1["apiVersion"] = json!("autoscaling/v1");
    v1["spec"]["targetCPUUtilizationPercentage"] = json!(70);
    check(
        &run("autoscaling/v1/HorizontalPodAutoscaler", "CREATE", v1, vec![sidecar_without], "{}")?,
        false,
        &["proxy"],
    );
    Ok(())
}

#[test]
fn native_sidecars_count_and_init_containers_do_not() -> Result<(), String> {
    let hpa_gvk = "autoscaling/v2/HorizontalPodAutoscaler";
    let mut d = deployment("web", json!([container("app", requests("1", "1Gi"))]));
    d["spec"]["template"]["spec"]["initContainers"] = json!([container("migrate", json!({}))]);
    check(
        &run(hpa_gvk, "CREATE", hpa("web", "Deployment", "web", cpu_utilization()), vec![d.clone()], "{}")?,
        true,
        &[],
    );
    d["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"] = json!("Always");
    check(
        &run(hpa_gvk, "CREATE", hpa("web", "Deployment", "web", cpu_utilization()), vec![d.clone()], "{}")?,
        false,
        &["\"migrate\""],
    );
    // Pod-level requests satisfy Resource metrics.
    d["spec"]["template"]["spec"]["resources"] = json!({"requests": {"cpu": "2"}});
    check(&run(hpa_gvk, "CREATE", hpa("web", "Deployment", "web", cpu_utilization()), vec![d], "{}")?, true, &[]);
    Ok(())
}

#[test]
fn hpa_bounds_from_settings() -> Result<(), String> {
    let hpa_gvk = "autoscaling/v2/HorizontalPodAutoscaler";
    let settings = r#"{"minReplicasAtLeast": 2, "maxReplicasAtMost": 10, "minScaleDownStabilizationSeconds": 300}"#;
    let target = deployment("web", json!([container("app", requests("1", "1Gi"))]));
    let mut h = hpa("web", "Deployment", "web", cpu_utilization());
    h["spec"]["minReplicas"] = json!(1);
    h["spec"]["maxReplicas"] = json!(50);
    h["spec"]["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": 60}});
    check(
        &run(hpa_gvk, "CREATE", h.clone(), vec![target.clone()], settings)?,
        false,
        &[
            "(3 problems)",
            "spec.minReplicas is 1; this cluster requires at least 2",
            "spec.maxReplicas is 50",
            "stabilizationWindowSeconds is 60",
        ],
    );
    // Defaults: minReplicas 1, window 300.
    if let Some(s) = h["spec"].as_object_mut() {
        s.remove("minReplicas");
        s.remove("behavior");
    }
    h["spec"]["maxReplicas"] = json!(10);
    check(&run(hpa_gvk, "CREATE", h, vec![target], settings)?, false, &["(1 problem)", "spec.minReplicas is 1"]);
    Ok(())
}

// ---- Workload rule ----

#[test]
fn workload_rule_finds_the_hpas_targeting_it() -> Result<(), String> {
    let hpas = vec![
        hpa("web", "Deployment", "web", cpu_and_memory()),
        hpa("other", "Deployment", "other", cpu_utilization()),
        hpa("same-name-other-kind", "StatefulSet", "web", cpu_utilization()),
    ];
    let d = deployment("web", json!([container("app", json!({"requests": {"cpu": "1"}}))]));
    check(
        &run("apps/v1/Deployment", "UPDATE", d, hpas.clone(), "{}")?,
        false,
        &[
            "Deployment \"shop/web\" lacks resource requests (1 problem)",
            "HorizontalPodAutoscaler \"web\" scales it on cpu and memory utilization, but container \"app\" has no memory request (nor limit)",
        ],
    );
    let ok = deployment("web", json!([container("app", requests("1", "1Gi"))]));
    check(&run("apps/v1/Deployment", "CREATE", ok, hpas.clone(), "{}")?, true, &[]);
    let untargeted = deployment("batch", json!([container("app", json!({}))]));
    check(&run("apps/v1/Deployment", "CREATE", untargeted, hpas, "{}")?, true, &[]);
    Ok(())
}

#[test]
fn other_kinds_operations_and_subresources_are_untouched() -> Result<(), String> {
    let d = deployment("web", json!([container("app", json!({}))]));
    let hpas = vec![hpa("web", "Deployment", "web", cpu_utilization())];
    assert_eq!(run("apps/v1/Deployment", "DELETE", d.clone(), hpas.clone(), "{}")?, Verdict::allow());
    assert_eq!(run("apps/v1/DaemonSet", "CREATE", d.clone(), hpas.clone(), "{}")?, Verdict::allow());
    let _installed = Context::new(hpas).granting(&GRANTS).install();
    let mut scale = request_for("apps/v1/Deployment", "UPDATE", d)?;
    scale.sub_resource = Some("scale".into());
    assert_eq!(validate(&scale, &Settings::default()), Ok(Verdict::allow()));
    Ok(())
}

#[test]
fn a_lookup_the_policy_is_not_granted_is_an_error() {
    let _installed = Context::new(vec![]).granting(&[("apps/v1", "Deployment")]).install();
    let request =
        request_for("apps/v1/Deployment", "CREATE", deployment("web", json!([]))).unwrap_or_else(|e| panic!("{e}"));
    let e = validate(&request, &Settings::default()).expect_err("HPAs are not granted");
    assert!(e.contains("not granted"), "{e}");
}

// ---- Pod rule ----

fn pod(owner: Value, labels: Value, containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "web-7f9c6d5b4-", "namespace": "shop", "labels": labels, "ownerReferences": [owner]},
           "spec": {"containers": containers}})
}

fn rs_owner(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": "c5e3f6a2-8d4b-4f1e-9a7c-2b6d0e8f1a3c", "controller": true})
}

#[test]
fn pod_rule_follows_the_owner_chain() -> Result<(), String> {
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": "web-7f9c6d5b4", "namespace": "shop",
                                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "controller": true}]}});
    let context = vec![rs, hpa("web", "Deployment", "web", cpu_utilization())];
    let injected =
        json!([container("app", requests("1", "1Gi")), container("istio-proxy", json!({"limits": {"cpu": "2"}}))]);
    let p = pod(rs_owner("web-7f9c6d5b4"), json!({"pod-template-hash": "7f9c6d5b4"}), injected.clone());
    check(
        &run("v1/Pod", "CREATE", p.clone(), context.clone(), "{}")?,
        false,
        &[
            "Pod \"shop/web-7f9c6d5b4-*\" lacks resource requests",
            "it belongs to Deployment \"web\" (through ReplicaSet \"web-7f9c6d5b4\"), which HorizontalPodAutoscaler \"web\" scales on cpu utilization, but container \"istio-proxy\" has no cpu request:",
        ],
    );
    // checkPods off.
    check(&run("v1/Pod", "CREATE", p.clone(), context.clone(), r#"{"checkPods": false}"#)?, true, &[]);
    // The ReplicaSet not cached yet: the pod-template-hash label finds the Deployment.
    check(
        &run("v1/Pod", "CREATE", p, vec![hpa("web", "Deployment", "web", cpu_utilization())], "{}")?,
        false,
        &["Deployment \"web\""],
    );
    // An HPA on the ReplicaSet itself.
    let direct = pod(rs_owner("web-7f9c6d5b4"), json!({}), injected);
    check(
        &run("v1/Pod", "CREATE", direct, vec![hpa("rs", "ReplicaSet", "web-7f9c6d5b4", cpu_utilization())], "{}")?,
        false,
        &["ReplicaSet \"web-7f9c6d5b4\""],
    );
    // A pod of a StatefulSet.
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "controller": true});
    let p = pod(sts, json!({}), json!([container("db", json!({}))]));
    check(
        &run("v1/Pod", "CREATE", p, vec![hpa("db", "StatefulSet", "db", cpu_utilization())], "{}")?,
        false,
        &["StatefulSet \"db\""],
    );
    // An unowned pod.
    let mut bare = pod(json!({}), json!({}), json!([container("a", json!({}))]));
    if let Some(m) = bare["metadata"].as_object_mut() {
        m.remove("ownerReferences");
    }
    check(&run("v1/Pod", "CREATE", bare, vec![hpa("web", "Deployment", "web", cpu_utilization())], "{}")?, true, &[]);
    Ok(())
}

// ---- Strict ----

#[test]
fn strict_mode_requires_requests_everywhere_it_applies() -> Result<(), String> {
    let settings = r#"{"strict": {"namespaces": ["sho*"], "resources": ["cpu", "memory"]}}"#;
    let d = deployment("web", json!([container("app", json!({"requests": {"cpu": "1"}}))]));
    check(
        &run("apps/v1/Deployment", "CREATE", d, vec![], settings)?,
        false,
        &[
            "container \"app\" has no memory request (nor limit) (every workload and Pod in namespace shop needs cpu and memory requests)",
        ],
    );
    let mut bare = pod(json!({}), json!({}), json!([container("a", json!({"limits": {"cpu": "1", "memory": "1Gi"}}))]));
    if let Some(m) = bare["metadata"].as_object_mut() {
        m.remove("ownerReferences");
    }
    check(&run("v1/Pod", "CREATE", bare.clone(), vec![], settings)?, false, &["(2 problems)"]);
    bare["metadata"]["namespace"] = json!("elsewhere");
    check(&run("v1/Pod", "CREATE", bare, vec![], settings)?, true, &[]);
    Ok(())
}

// ---- Fixtures ----

#[test]
fn fixtures_of_cases_yaml() -> Result<(), String> {
    let ran = run_cases(&Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data"), crate::evaluate)?;
    assert!(ran >= 8, "only {ran} cases");
    Ok(())
}
