//! Native test helpers: build requests from AdmissionReview fixtures and run a
//! policy exactly as the wasm exports would, without a host.

use std::path::Path;

use serde::Deserialize;

use crate::Request;
use crate::settings::{Settings, parse_settings};
use crate::verdict::Outcome;

#[derive(Deserialize)]
struct Review {
    request: Option<Request>,
}

/// One entry of a policy's `test_data/cases.yaml`: a fixture file and the
/// verdict expected for it. The policy's own tests run the cases natively,
/// the host's test suite through the compiled module.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureCase {
    /// AdmissionReview file, relative to `test_data/`.
    pub request: String,
    /// Expected `allowed`.
    pub allowed: bool,
    /// Fragments that must all appear in the denial message.
    #[serde(default)]
    pub message: Vec<String>,
    /// Fragments that must each appear in some warning.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Settings for this case (default: `{}`).
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
}

/// Extracts the request from AdmissionReview JSON.
pub fn request_from_review(json: &str) -> Result<Request, String> {
    let review: Review = serde_json::from_str(json).map_err(|e| format!("invalid AdmissionReview: {e}"))?;
    review.request.ok_or_else(|| "AdmissionReview has no request".to_string())
}

/// Reads an AdmissionReview fixture file and extracts its request.
pub fn request_from_file(path: impl AsRef<Path>) -> Result<Request, String> {
    let path = path.as_ref();
    let json = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    request_from_review(&json)
}

/// Builds a request around `object` for `kind` (`group/version/Kind` as in
/// `networking.k8s.io/v1/Ingress`, or `v1/Pod` for the core group).
pub fn request_for(gvk: &str, operation: &str, object: serde_json::Value) -> Result<Request, String> {
    let mut parts: Vec<&str> = gvk.split('/').collect();
    let kind = parts.pop().unwrap_or_default();
    let version = parts.pop().unwrap_or_default();
    let group = parts.pop().unwrap_or_default();
    let namespace = object.pointer("/metadata/namespace").cloned();
    let name = object.pointer("/metadata/name").cloned();
    let json = serde_json::json!({
        "uid": "00000000-0000-0000-0000-000000000000",
        "kind": {"group": group, "version": version, "kind": kind},
        "operation": operation,
        "namespace": namespace,
        "name": name,
        "object": object,
    });
    serde_json::from_value(json).map_err(|e| format!("invalid request: {e}"))
}

/// Runs `policy` on `request` with settings JSON, through the same decoding
/// path as the wasm export (settings validated first).
pub fn run<S, O>(policy: fn(&Request, &S) -> O, request: &Request, settings_json: &str) -> Result<Outcome, String>
where
    S: Settings,
    O: Into<Outcome>,
{
    let settings: S = parse_settings(settings_json.as_bytes())?;
    Ok(policy(request, &settings).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NoSettings, Verdict};

    fn deny_in_default(req: &Request, _: &NoSettings) -> Verdict {
        if req.namespace.as_deref() == Some("default") { Verdict::deny("no") } else { Verdict::allow() }
    }

    #[test]
    fn builds_request_from_object() -> Result<(), String> {
        let req = request_for(
            "networking.k8s.io/v1/Ingress",
            "CREATE",
            serde_json::json!({"metadata": {"name": "a", "namespace": "default"}}),
        )?;
        assert!(req.kind.is("networking.k8s.io", "v1", "Ingress"));
        assert_eq!(req.name.as_deref(), Some("a"));
        assert_eq!(run(deny_in_default, &req, "{}")?, Outcome::Verdict(Verdict::deny("no")));
        Ok(())
    }

    #[test]
    fn core_group_is_empty() -> Result<(), String> {
        let req = request_for("v1/Pod", "CREATE", serde_json::json!({}))?;
        assert!(req.kind.is("", "v1", "Pod"));
        Ok(())
    }

    #[test]
    fn review_without_request_is_an_error() {
        assert!(request_from_review(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).is_err());
    }

    #[test]
    fn evaluate_reports_bad_input() {
        let outcome = crate::abi::evaluate::<NoSettings, Verdict>(b"{not json", deny_in_default);
        assert!(matches!(outcome, Outcome::Error { .. }));
    }
}
