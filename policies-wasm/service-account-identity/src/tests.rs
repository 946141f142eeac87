//! Unit tests of the decision, natively: one table per rule, the requests
//! the policy leaves alone, error paths, idempotence of every patch, and the
//! fixtures of `test_data/cases.yaml`.

use std::path::Path;

use portcullis_sdk::testing::{request_for, run_cases};
use portcullis_sdk::{Outcome, Verdict};
use serde_json::{Value, json};

use super::*;

const ROLE: &str = "arn:aws:iam::123456789012:role/clipper-backend-production";
const OTHER_ROLE: &str = "arn:aws:iam::123456789012:role/billing";
const GSA: &str = "clipper-backend@clipper-prod.iam.gserviceaccount.com";
const CLIENT: &str = "5f0e3b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const TENANT: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

/// Settings close to the clipper cluster's, with projection switchable.
fn settings(extra: Value) -> Value {
    let mut s = json!({
        "bindings": [
            {"namespaces": ["clipper-production"], "serviceAccount": "clipper-backend",
             "aws": {"roleArn": ROLE, "stsRegionalEndpoints": true}},
            {"namespaces": ["clipper-staging", "clipper-dev-*"], "serviceAccount": "clipper-backend",
             "gcp": {"serviceAccount": GSA}},
            {"namespaces": ["billing"], "serviceAccount": "billing",
             "aws": {"roleArn": OTHER_ROLE, "audience": "billing.example.com", "tokenExpiration": 3600},
             "azure": {"clientId": CLIENT, "tenantId": TENANT}},
        ],
        "podServiceAccounts": [
            {"namespaces": ["clipper-*"], "serviceAccount": "clipper-backend"},
            {"namespaces": ["billing"], "serviceAccount": "billing", "action": "deny"},
        ],
    });
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    s
}

fn service_account(namespace: &str, name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "namespace": namespace, "annotations": annotations}})
}

fn pod(namespace: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": namespace}, "spec": spec})
}

fn container(name: &str) -> Value {
    json!({"name": name, "image": "registry.example.com/app:1"})
}

/// Runs the policy as the host would (settings parsed and validated) and,
/// for a patch, checks that it applies and that the policy leaves its own
/// output alone. Returns the verdict and the patched object.
fn run(kind: &str, operation: &str, object: Value, settings: &Value) -> Result<(Verdict, Value), String> {
    let request = request_for(kind, operation, object.clone())?;
    let verdict = match portcullis_sdk::testing::run(validate, &request, &settings.to_string())? {
        Outcome::Verdict(v) => v,
        Outcome::Error { error } => return Err(error),
    };
    let mut patched = object;
    if let Some(patch) = &verdict.patch {
        assert!(verdict.allowed, "a denial carries a patch: {verdict:?}");
        portcullis_sdk::json_patch::patch(&mut patched, patch).map_err(|e| format!("patch does not apply: {e}"))?;
        let again = request_for(kind, operation, patched.clone())?;
        match portcullis_sdk::testing::run(validate, &again, &settings.to_string())? {
            Outcome::Verdict(v) if v.allowed && v.patch.is_none() => {}
            other => return Err(format!("not idempotent: on its own output the policy answered {other:?}")),
        }
    }
    Ok((verdict, patched))
}

fn run_sa(object: Value, settings: &Value) -> (Verdict, Value) {
    run("v1/ServiceAccount", "CREATE", object, settings).unwrap_or_else(|e| panic!("{e}"))
}

fn run_pod(object: Value, settings: &Value) -> (Verdict, Value) {
    run("v1/Pod", "CREATE", object, settings).unwrap_or_else(|e| panic!("{e}"))
}

fn message(v: &Verdict) -> &str {
    v.message.as_deref().unwrap_or_default()
}

// ---- ServiceAccounts ----

struct SaCase {
    name: &'static str,
    namespace: &'static str,
    account: &'static str,
    annotations: Value,
    settings: Value,
    /// None: denied.
    added: Option<Value>,
    message: &'static [&'static str],
    warnings: &'static [&'static str],
}

#[test]
fn service_account_rules() {
    let deny_sa = |name, namespace, account, annotations, message| SaCase {
        name,
        namespace,
        account,
        annotations,
        settings: settings(json!({})),
        added: None,
        message,
        warnings: &[],
    };
    let cases = vec![
        SaCase {
            name: "bound, no annotations: the role and the regional-STS flag are added",
            namespace: "clipper-production",
            account: "clipper-backend",
            annotations: json!(null),
            settings: settings(json!({})),
            added: Some(json!({identity::ROLE_ARN: ROLE, identity::STS_REGIONAL_ENDPOINTS: "true"})),
            message: &[],
            warnings: &[],
        },
        SaCase {
            name: "bound, equal annotations (role in other case): left alone",
            namespace: "clipper-production",
            account: "clipper-backend",
            annotations: json!({identity::ROLE_ARN: ROLE.to_uppercase().replace("ARN:AWS:IAM", "arn:aws:iam"), identity::STS_REGIONAL_ENDPOINTS: "true", "team": "a"}),
            settings: settings(json!({})),
            added: Some(json!({})),
            message: &[],
            warnings: &[],
        },
        SaCase {
            name: "bound by glob: the GCP account is added",
            namespace: "clipper-dev-7",
            account: "clipper-backend",
            annotations: json!({}),
            settings: settings(json!({})),
            added: Some(json!({identity::GCP_SERVICE_ACCOUNT: GSA})),
            message: &[],
            warnings: &[],
        },
        SaCase {
            name: "bound with audience, expiration and Azure tenant: all added",
            namespace: "billing",
            account: "billing",
            annotations: json!({}),
            settings: settings(json!({})),
            added: Some(json!({
                identity::ROLE_ARN: OTHER_ROLE, identity::AUDIENCE: "billing.example.com",
                identity::TOKEN_EXPIRATION: "3600", identity::AZURE_CLIENT_ID: CLIENT, identity::AZURE_TENANT_ID: TENANT,
            })),
            message: &[],
            warnings: &[],
        },
        deny_sa(
            "bound, another role",
            "clipper-production",
            "clipper-backend",
            json!({identity::ROLE_ARN: OTHER_ROLE}),
            &[
                "annotation eks.amazonaws.com/role-arn is \"arn:aws:iam::123456789012:role/billing\", but bindings[0]",
                "allows only \"arn:aws:iam::123456789012:role/clipper-backend-production\"",
                "granted only to ServiceAccount \"billing\" in namespace billing (bindings[2])",
            ],
        ),
        deny_sa(
            "bound, a cloud the binding does not grant",
            "clipper-production",
            "clipper-backend",
            json!({identity::GCP_SERVICE_ACCOUNT: "rogue-account@other.iam.gserviceaccount.com"}),
            &[
                "annotation iam.gke.io/gcp-service-account is \"rogue-account@other.iam.gserviceaccount.com\", but bindings[0]",
                "grants no GCP service account",
            ],
        ),
        deny_sa(
            "bound, a secondary annotation that differs from the binding",
            "billing",
            "billing",
            json!({identity::TOKEN_EXPIRATION: "86400"}),
            &["annotation eks.amazonaws.com/token-expiration is \"86400\", but bindings[2]", "sets \"3600\""],
        ),
        deny_sa(
            "bound, malformed value: the format is named",
            "clipper-production",
            "clipper-backend",
            json!({identity::ROLE_ARN: "clipper-backend"}),
            &["is not a valid AWS IAM role: expected arn:aws:iam::<12-digit account>:role/<path/name>"],
        ),
        deny_sa(
            "unbound: any identity denied by default",
            "clipper-production",
            "reporting",
            json!({identity::ROLE_ARN: "arn:aws:iam::123456789012:role/reporting"}),
            &["no binding grants ServiceAccount \"clipper-production/reporting\" a cloud identity"],
        ),
        SaCase {
            name: "unbound, warn: admitted with a warning",
            namespace: "clipper-production",
            account: "reporting",
            annotations: json!({identity::ROLE_ARN: "arn:aws:iam::123456789012:role/reporting"}),
            settings: settings(json!({"unboundIdentities": "warn"})),
            added: Some(json!({})),
            message: &[],
            warnings: &[
                "no binding grants ServiceAccount \"clipper-production/reporting\"",
                "unboundIdentities is warn",
            ],
        },
        SaCase {
            name: "unbound, warn: another binding's identity is still denied (in any case)",
            namespace: "sandbox",
            account: "default",
            annotations: json!({identity::AZURE_CLIENT_ID: CLIENT.to_uppercase()}),
            settings: settings(json!({"unboundIdentities": "warn"})),
            added: None,
            message: &["granted only to ServiceAccount \"billing\" in namespace billing (bindings[2])"],
            warnings: &[],
        },
        SaCase {
            name: "unbound, warn: a malformed value is still denied",
            namespace: "sandbox",
            account: "default",
            annotations: json!({identity::GCP_SERVICE_ACCOUNT: "backend@example.com"}),
            settings: settings(json!({"unboundIdentities": "warn"})),
            added: None,
            message: &["is not a valid GCP service account: expected NAME@PROJECT.iam.gserviceaccount.com"],
            warnings: &[],
        },
        deny_sa(
            "one denial lists every problem",
            "clipper-production",
            "clipper-backend",
            json!({identity::ROLE_ARN: OTHER_ROLE, identity::GCP_SERVICE_ACCOUNT: GSA, identity::AZURE_CLIENT_ID: "nope"}),
            &[
                "(3 problems)",
                "eks.amazonaws.com/role-arn",
                "iam.gke.io/gcp-service-account",
                "azure.workload.identity/client-id",
            ],
        ),
        SaCase {
            name: "unbound without identity annotations: untouched",
            namespace: "sandbox",
            account: "default",
            annotations: json!({"a": "b"}),
            settings: settings(json!({})),
            added: Some(json!({})),
            message: &[],
            warnings: &[],
        },
    ];
    for case in cases {
        let object = service_account(case.namespace, case.account, case.annotations.clone());
        let (verdict, patched) = run_sa(object, &case.settings);
        let what = case.name;
        match &case.added {
            None => assert!(!verdict.allowed, "{what}: expected a denial, got {verdict:?}"),
            Some(added) => {
                assert!(verdict.allowed, "{what}: denied: {}", message(&verdict));
                let mut expected = case.annotations.as_object().cloned().unwrap_or_default();
                expected.extend(added.as_object().cloned().unwrap_or_default());
                let got =
                    patched.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default();
                assert_eq!(got, expected, "{what}");
                assert_eq!(
                    verdict.patch.is_none(),
                    added.as_object().is_some_and(|a| a.is_empty()),
                    "{what}: {verdict:?}"
                );
            }
        }
        for fragment in case.message {
            assert!(message(&verdict).contains(fragment), "{what}: message lacks {fragment:?}:\n{}", message(&verdict));
        }
        for fragment in case.warnings {
            assert!(
                verdict.warnings.iter().any(|w| w.contains(fragment)),
                "{what}: warnings {:?} lack {fragment:?}",
                verdict.warnings
            );
        }
    }
}

#[test]
fn service_account_patches_escape_keys_and_add_single_entries() {
    let object = service_account("clipper-production", "clipper-backend", json!({"team": "a"}));
    let (verdict, _) = run_sa(object, &settings(json!({})));
    let patch = serde_json::to_value(verdict.patch).unwrap_or_default();
    assert_eq!(
        patch,
        json!([
            {"op": "add", "path": "/metadata/annotations/eks.amazonaws.com~1role-arn", "value": ROLE},
            {"op": "add", "path": "/metadata/annotations/eks.amazonaws.com~1sts-regional-endpoints", "value": "true"},
        ])
    );
}

#[test]
fn updates_are_reviewed_and_deletes_and_other_kinds_are_not() -> Result<(), String> {
    let claim = service_account("sandbox", "x", json!({identity::ROLE_ARN: ROLE}));
    let s = settings(json!({})).to_string();
    let verdict = |kind, op, object| match portcullis_sdk::testing::run(validate, &request_for(kind, op, object)?, &s)?
    {
        Outcome::Verdict(v) => Ok::<Verdict, String>(v),
        Outcome::Error { error } => Err(error),
    };
    assert!(!verdict("v1/ServiceAccount", "UPDATE", claim.clone())?.allowed);
    assert_eq!(verdict("v1/ServiceAccount", "DELETE", claim.clone())?, Verdict::allow());
    assert_eq!(verdict("v1/ConfigMap", "CREATE", claim.clone())?, Verdict::allow());
    let mut deleting = claim;
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-26T10:00:00Z");
    assert_eq!(verdict("v1/ServiceAccount", "UPDATE", deleting)?, Verdict::allow());
    let default_pod =
        pod("clipper-production", json!({"serviceAccountName": "default", "containers": [container("app")]}));
    assert_eq!(verdict("v1/Pod", "UPDATE", default_pod)?, Verdict::allow(), "pods are reviewed on CREATE only");
    let mut sub =
        request_for("v1/ServiceAccount", "CREATE", service_account("sandbox", "x", json!({identity::ROLE_ARN: ROLE})))?;
    sub.sub_resource = Some("token".into());
    assert_eq!(validate(&sub, &portcullis_sdk::parse_settings(s.as_bytes())?), Ok(Verdict::allow()));
    Ok(())
}

#[test]
fn malformed_objects_are_errors_not_panics() {
    let s = settings(json!({}));
    for (kind, object, fragment) in [
        (
            "v1/ServiceAccount",
            json!({"metadata": {"name": "a", "annotations": ["x"]}}),
            "metadata.annotations is not a map",
        ),
        (
            "v1/ServiceAccount",
            json!({"metadata": {"name": "a", "annotations": {identity::ROLE_ARN: 5}}}),
            "is not a string",
        ),
        ("v1/ServiceAccount", json!({"apiVersion": "v2", "metadata": {"name": "a"}}), "apiVersion is \"v2\""),
        ("v1/ServiceAccount", json!([1]), "not a JSON object"),
        (
            "v1/Pod",
            json!({"metadata": {"name": "a"}, "spec": {"serviceAccountName": 7}}),
            "spec.serviceAccountName is not a string",
        ),
        (
            "v1/Pod",
            json!({"metadata": {"name": "a", "namespace": "billing", "labels": "x"}, "spec": {"serviceAccountName": "billing"}}),
            "labels",
        ),
    ] {
        match run(kind, "CREATE", object.clone(), &s) {
            Err(e) => assert!(e.contains(fragment), "{object}: {e}"),
            Ok((v, _)) => panic!("{object}: expected an error, got {v:?}"),
        }
    }
    let no_object = request_for("v1/Pod", "CREATE", json!(null)).map(|mut r| {
        r.object = None;
        r
    });
    if let Ok(request) = no_object {
        let settings = portcullis_sdk::parse_settings::<Settings>(s.to_string().as_bytes()).unwrap_or_default();
        assert!(validate(&request, &settings).is_err_and(|e| e.contains("no object")));
    }
}

// ---- Pods: ServiceAccount assignment and the Azure label ----

#[test]
fn pod_service_account_rules() {
    let s = settings(json!({}));
    // assign: absent, empty, default; the deprecated alias follows when present.
    for spec in [
        json!({"containers": [container("app")]}),
        json!({"serviceAccountName": "", "containers": [container("app")]}),
        json!({"serviceAccountName": "default", "serviceAccount": "default", "containers": [container("app")]}),
    ] {
        let had_alias = spec.get("serviceAccount").is_some();
        let (verdict, patched) = run_pod(pod("clipper-staging", spec.clone()), &s);
        assert!(verdict.allowed, "{spec}: {}", message(&verdict));
        assert_eq!(patched["spec"]["serviceAccountName"], "clipper-backend", "{spec}");
        assert_eq!(patched["spec"].get("serviceAccount").is_some(), had_alias, "{spec}");
        if had_alias {
            assert_eq!(patched["spec"]["serviceAccount"], "clipper-backend");
        }
    }
    // A named ServiceAccount is kept.
    let (verdict, _) =
        run_pod(pod("clipper-staging", json!({"serviceAccountName": "batch", "containers": [container("app")]})), &s);
    assert_eq!(verdict, Verdict::allow());
    // Namespaces outside every rule are untouched.
    let (verdict, _) =
        run_pod(pod("sandbox", json!({"serviceAccountName": "default", "containers": [container("app")]})), &s);
    assert_eq!(verdict, Verdict::allow());
    // deny: the message names the ServiceAccount to use.
    let (verdict, _) =
        run_pod(pod("billing", json!({"serviceAccountName": "default", "containers": [container("app")]})), &s);
    assert!(!verdict.allowed);
    assert!(
        message(&verdict).contains("must run as ServiceAccount \"billing\" (podServiceAccounts[1])"),
        "{}",
        message(&verdict)
    );
    let (verdict, _) = run_pod(pod("billing", json!({"containers": [container("app")]})), &s);
    assert!(message(&verdict).contains("spec.serviceAccountName is not set"), "{}", message(&verdict));
}

#[test]
fn azure_bound_pods_get_the_use_label() {
    let s = settings(json!({}));
    let (verdict, patched) =
        run_pod(pod("billing", json!({"serviceAccountName": "billing", "containers": [container("app")]})), &s);
    assert!(verdict.allowed);
    assert_eq!(patched["metadata"]["labels"][identity::AZURE_USE], "true");
    let mut opted_out = pod("billing", json!({"serviceAccountName": "billing", "containers": [container("app")]}));
    opted_out["metadata"]["labels"] = json!({identity::AZURE_USE: "false", "app": "billing"});
    let (verdict, patched) = run_pod(opted_out, &s);
    assert_eq!(patched["metadata"]["labels"], json!({identity::AZURE_USE: "true", "app": "billing"}));
    assert!(verdict.warnings.iter().any(|w| w.contains("was \"false\"")), "{:?}", verdict.warnings);
    // Not Azure-bound: no label, and without projection no patch at all.
    let (verdict, _) = run_pod(
        pod("clipper-production", json!({"serviceAccountName": "clipper-backend", "containers": [container("app")]})),
        &s,
    );
    assert_eq!(verdict, Verdict::allow());
}

// ---- Pods: AWS token projection ----

fn aws_on(region: Option<&str>) -> Value {
    settings(json!({"tokenProjection": {"aws": {"enabled": true, "region": region}}}))
}

fn env_of(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|e| {
                    (e["name"].as_str().unwrap_or_default().into(), e["value"].as_str().unwrap_or_default().into())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn names(env: &[(String, String)]) -> Vec<&str> {
    env.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn aws_projection_adds_env_mount_and_volume_to_every_container_but_ephemeral_ones() {
    let spec = json!({
        "serviceAccountName": "clipper-backend",
        "initContainers": [container("migrate"), {"name": "proxy", "image": "p", "restartPolicy": "Always"}],
        "containers": [container("app")],
        "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
    });
    let (verdict, patched) = run_pod(pod("clipper-production", spec), &aws_on(Some("eu-west-1")));
    assert!(verdict.allowed, "{}", message(&verdict));
    for c in patched["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(patched["spec"]["containers"].as_array().into_iter().flatten())
    {
        assert_eq!(
            env_of(c),
            [
                ("AWS_STS_REGIONAL_ENDPOINTS", "regional"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ROLE_ARN", ROLE),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", pod::AWS_TOKEN_FILE),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string())),
            "{}",
            c["name"]
        );
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "aws-iam-token", "mountPath": pod::AWS_MOUNT_PATH, "readOnly": true}])
        );
    }
    assert!(patched["spec"]["ephemeralContainers"][0].get("env").is_none());
    assert_eq!(
        patched["spec"]["volumes"],
        json!([{"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}}])
    );
}

#[test]
fn aws_projection_decides_each_variable_on_its_own() {
    let spec = json!({"serviceAccountName": "clipper-backend", "containers": [{
        "name": "app", "image": "a",
        "env": [{"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::123456789012:role/own"}, {"name": "AWS_REGION", "value": "us-west-2"}],
    }]});
    let (_, patched) = run_pod(pod("clipper-production", spec), &aws_on(Some("eu-west-1")));
    let env = env_of(&patched["spec"]["containers"][0]);
    assert_eq!(
        names(&env),
        [
            "AWS_ROLE_ARN",
            "AWS_REGION",
            "AWS_STS_REGIONAL_ENDPOINTS",
            "AWS_DEFAULT_REGION",
            "AWS_WEB_IDENTITY_TOKEN_FILE"
        ]
    );
    assert_eq!(env[0].1, "arn:aws:iam::123456789012:role/own", "a variable already set is kept");
    assert_eq!(env[1].1, "us-west-2");
}

#[test]
fn aws_projection_expiration_comes_from_pod_then_binding_then_default_and_is_clamped() {
    let volume_expiration = |patched: &Value| {
        patched["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"].clone()
    };
    let s = aws_on(None);
    let with = |namespace: &str, account: &str, annotation: Option<&str>| {
        let mut p = pod(namespace, json!({"serviceAccountName": account, "containers": [container("app")]}));
        if let Some(a) = annotation {
            p["metadata"]["annotations"] = json!({identity::TOKEN_EXPIRATION: a});
        }
        run_pod(p, &s)
    };
    assert_eq!(volume_expiration(&with("clipper-production", "clipper-backend", None).1), 86400);
    assert_eq!(volume_expiration(&with("billing", "billing", None).1), 3600, "binding's tokenExpiration");
    assert_eq!(volume_expiration(&with("billing", "billing", Some("7200")).1), 7200, "pod annotation wins");
    let (verdict, patched) = with("clipper-production", "clipper-backend", Some("0"));
    assert_eq!(volume_expiration(&patched), 600);
    assert!(
        verdict.warnings.iter().any(|w| w.contains("asks for a 0 s token; it lasts 600 s")),
        "{:?}",
        verdict.warnings
    );
    let (verdict, patched) = with("clipper-production", "clipper-backend", Some("172800"));
    assert_eq!(volume_expiration(&patched), 86400);
    assert_eq!(verdict.warnings.len(), 1);
    let (verdict, patched) = with("clipper-production", "clipper-backend", Some("soon"));
    assert_eq!(volume_expiration(&patched), 86400);
    assert!(verdict.warnings.iter().any(|w| w.contains("not a number")));
    assert_eq!(
        with("billing", "billing", None).1["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "billing.example.com"
    );
}

#[test]
fn aws_projection_honours_skip_containers_windows_and_existing_mounts() {
    let mut p = pod(
        "clipper-production",
        json!({
            "serviceAccountName": "clipper-backend",
            "nodeSelector": {"kubernetes.io/os": "windows"},
            "containers": [
                container("app"),
                container("istio-proxy"),
                {"name": "mounted", "image": "m", "volumeMounts": [{"name": "creds", "mountPath": pod::AWS_MOUNT_PATH}]},
            ],
        }),
    );
    p["metadata"]["annotations"] = json!({identity::AWS_SKIP_CONTAINERS: "istio-proxy, other"});
    let (_, patched) = run_pod(p, &aws_on(None));
    let containers = &patched["spec"]["containers"];
    assert_eq!(env_of(&containers[0])[2], ("AWS_WEB_IDENTITY_TOKEN_FILE".into(), pod::AWS_TOKEN_FILE_WINDOWS.into()));
    assert!(containers[1].get("env").is_none() && containers[1].get("volumeMounts").is_none(), "skipped");
    assert_eq!(containers[2]["volumeMounts"].as_array().map(Vec::len), Some(1), "the path is already mounted");
    assert_eq!(names(&env_of(&containers[2])).len(), 3);
}

#[test]
fn a_volume_squatting_the_token_name_is_denied_and_the_real_token_accepted() {
    let s = aws_on(None);
    let with_volume = |volume: Value| {
        pod(
            "clipper-production",
            json!({"serviceAccountName": "clipper-backend", "containers": [container("app")], "volumes": [volume]}),
        )
    };
    let (verdict, _) = run_pod(with_volume(json!({"name": "aws-iam-token", "hostPath": {"path": "/etc/aws"}})), &s);
    assert!(!verdict.allowed);
    assert!(
        message(&verdict).contains("spec.volumes[0] \"aws-iam-token\" is a hostPath volume"),
        "{}",
        message(&verdict)
    );
    let other_audience = json!({"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "me", "path": "token"}}]}});
    assert!(!run_pod(with_volume(other_audience), &s).0.allowed);
    // The token as the API server stores it (defaultMode defaulted): kept, containers still get their share.
    let stored = json!({"name": "aws-iam-token", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {
        "audience": "sts.amazonaws.com", "expirationSeconds": 3600, "path": "token"}}]}});
    let (verdict, patched) = run_pod(with_volume(stored.clone()), &s);
    assert!(verdict.allowed, "{}", message(&verdict));
    assert_eq!(patched["spec"]["volumes"], json!([stored]));
    assert_eq!(names(&env_of(&patched["spec"]["containers"][0])).len(), 3);
}

#[test]
fn projection_is_off_by_default_and_only_for_bound_clouds() {
    let spec = json!({"serviceAccountName": "clipper-backend", "containers": [container("app")]});
    assert_eq!(run_pod(pod("clipper-production", spec.clone()), &settings(json!({}))).0, Verdict::allow());
    // GCP-bound: nothing to project.
    let s = settings(json!({"tokenProjection": {"aws": {"enabled": true}, "azure": {"enabled": true}}}));
    assert_eq!(run_pod(pod("clipper-staging", spec), &s).0, Verdict::allow());
}

// ---- Pods: Azure token projection ----

#[test]
fn azure_projection() {
    let s = settings(json!({"tokenProjection": {"azure": {"enabled": true}}}));
    let mut p = pod(
        "billing",
        json!({"serviceAccountName": "billing", "containers": [container("app"), container("sidecar")]}),
    );
    p["metadata"]["annotations"] =
        json!({identity::AZURE_SKIP_CONTAINERS: "sidecar;", identity::AZURE_TOKEN_EXPIRATION: "7200"});
    let (verdict, patched) = run_pod(p.clone(), &s);
    assert!(verdict.allowed, "{}", message(&verdict));
    assert_eq!(
        env_of(&patched["spec"]["containers"][0]),
        [
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_FEDERATED_TOKEN_FILE", pod::AZURE_TOKEN_FILE),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(patched["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], pod::AZURE_MOUNT_PATH);
    assert!(patched["spec"]["containers"][1].get("env").is_none());
    assert_eq!(
        patched["spec"]["volumes"],
        json!([{"name": "azure-identity-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "api://AzureADTokenExchange", "expirationSeconds": 7200, "path": "azure-identity-token"}}]}}])
    );
    assert_eq!(patched["metadata"]["labels"][identity::AZURE_USE], "true");
    for bad in ["3599", "86401", "an hour"] {
        p["metadata"]["annotations"][identity::AZURE_TOKEN_EXPIRATION] = json!(bad);
        let (verdict, _) = run_pod(p.clone(), &s);
        assert!(!verdict.allowed, "{bad}");
        assert!(message(&verdict).contains("must be 3600..=86400 seconds"), "{}", message(&verdict));
    }
}

#[test]
fn every_rule_at_once_yields_one_idempotent_patch() {
    let s = settings(
        json!({"tokenProjection": {"aws": {"enabled": true, "region": "us-east-1"}, "azure": {"enabled": true, "authorityHost": "https://login.example/"}}}),
    );
    let mut p = pod(
        "billing",
        json!({"serviceAccountName": "billing", "initContainers": [container("init")], "containers": [container("app")]}),
    );
    p["metadata"]["labels"] = json!({"app.kubernetes.io/name": "billing"});
    let (verdict, patched) = run_pod(p, &s);
    assert!(verdict.allowed);
    let env = env_of(&patched["spec"]["initContainers"][0]);
    assert_eq!(env.len(), 4 + 4);
    assert!(env.contains(&("AZURE_AUTHORITY_HOST".into(), "https://login.example/".into())));
    assert_eq!(patched["spec"]["volumes"].as_array().map(Vec::len), Some(2));
}

// ---- Fixtures ----

#[test]
fn fixtures_of_cases_yaml() -> Result<(), String> {
    let ran = run_cases(&Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data"), crate::evaluate)?;
    assert!(ran >= 15, "only {ran} cases");
    Ok(())
}
