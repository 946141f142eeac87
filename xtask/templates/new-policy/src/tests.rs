//! The policy on whole requests, natively: every case of
//! `test_data/cases.yaml`, the requests it leaves alone, and malformed objects.

use std::path::Path;

use portcullis_sdk::serde_json::{Value, json};
use portcullis_sdk::testing::{request_for, run_cases};
use portcullis_sdk::{Verdict, parse_settings};

use super::*;

/// Every case of `test_data/cases.yaml`, through `crate::evaluate` (the
/// native twin of the wasm export, decoding its input as the export does);
/// every fixture file there must be listed.
#[test]
fn fixtures_match_cases_yaml() -> Result<(), String> {
    let ran = run_cases(&Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data"), crate::evaluate)?;
    assert!(ran >= 4, "only {ran} cases");
    Ok(())
}

fn settings() -> Result<Settings, String> {
{{^context}}
    parse_settings(br#"{"labels": {"environment": "production"}, "exemptNamespaces": ["kube-*"]}"#)
{{/context}}
{{#context}}
    parse_settings(br#"{"namespaceLabels": ["team"], "exemptNamespaces": ["kube-*"]}"#)
{{/context}}
}

/// A Deployment without labels.
fn deployment(namespace: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": namespace}})
}

#[test]
fn other_operations_subresources_deletions_and_exempt_namespaces_are_left_alone() -> Result<(), String> {
    let settings = settings()?;
    for operation in ["DELETE", "CONNECT"] {
        let request = request_for("apps/v1/Deployment", operation, deployment("shop"))?;
        assert_eq!(validate(&request, &settings), Ok(Verdict::allow()), "{operation}");
    }
    let mut status = request_for("apps/v1/Deployment", "UPDATE", deployment("shop"))?;
    status.sub_resource = Some("status".into());
    assert_eq!(validate(&status, &settings), Ok(Verdict::allow()));

    let mut deleting = deployment("shop");
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-05T10:00:00Z");
    let request = request_for("apps/v1/Deployment", "UPDATE", deleting)?;
    assert_eq!(validate(&request, &settings), Ok(Verdict::allow()), "finalizers must be removable");

    let request = request_for("apps/v1/Deployment", "CREATE", deployment("kube-system"))?;
    assert_eq!(validate(&request, &settings), Ok(Verdict::allow()), "kube-system is exempt");
    Ok(())
}

#[test]
fn a_missing_or_malformed_object_is_an_error() -> Result<(), String> {
    let settings = settings()?;
    for (object, error) in [
        (Value::Null, "the request has no object"),
        (json!("a deployment"), "not a JSON object"),
        (json!({"metadata": {"labels": ["environment"]}}), "metadata is malformed"),
        (json!({"metadata": {"labels": {"replicas": 3}}}), "metadata is malformed"),
    ] {
        let request = request_for("apps/v1/Deployment", "CREATE", object.clone())?;
        match validate(&request, &settings) {
            Err(e) => assert!(e.contains(error), "{object}: {e}"),
            Ok(verdict) => return Err(format!("{object}: {verdict:?}")),
        }
    }
    Ok(())
}
