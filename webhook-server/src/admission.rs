//! From HTTP body to AdmissionReview response: parsing and checking the
//! incoming review, and turning a policy's verdict (or its failure) into the
//! response the API server expects, following the policy's mode and
//! failurePolicy.

use base64::Engine as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::admission::{AdmissionRequest, AdmissionResponse};
use kube_core::{Status, TypeMeta};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

use crate::abi::GuestVerdict;
use crate::config::{FailurePolicy, Mode};
use crate::policy::Policy;
use crate::runtime::EvalError;

/// The only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The kind of object accepted.
pub const KIND: &str = "AdmissionReview";

/// Audit annotation (the API server prefixes the webhook's name) of a request
/// an audit-mode policy would have denied; the value is the denial message.
pub const AUDIT_WOULD_DENY: &str = "would-deny";
/// Audit annotation of a request admitted unevaluated by failurePolicy
/// Ignore; the value says why the evaluation failed.
pub const AUDIT_NOT_EVALUATED: &str = "not-evaluated";

/// Why a request body is not an acceptable AdmissionReview (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON, or not an object.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// `apiVersion` is not `admission.k8s.io/v1`.
    #[error("apiVersion is {0:?}; only \"admission.k8s.io/v1\" is served")]
    ApiVersion(String),
    /// `kind` is not `AdmissionReview`.
    #[error("kind is {0:?}; expected \"AdmissionReview\"")]
    Kind(String),
    /// No `request`.
    #[error("AdmissionReview has no request")]
    MissingRequest,
    /// `request` lacks fields or has wrong types (e.g. no `uid`).
    #[error("invalid AdmissionReview request: {0}")]
    InvalidRequest(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

/// Stands in for the object inside the host's typed request: the host never
/// reads the object (the policy gets the raw JSON), so decoding skips it
/// instead of building a `DynamicObject` tree for every request.
#[derive(Debug, Clone, Default)]
pub struct SkippedObject {
    metadata: ObjectMeta,
}

impl<'de> Deserialize<'de> for SkippedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Self::default())
    }
}

impl kube_core::Resource for SkippedObject {
    type DynamicType = ();
    type Scope = kube_core::DynamicResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The typed request as the host sees it (object and old object skipped).
pub type Request = AdmissionRequest<SkippedObject>;

/// A checked incoming review: the typed request, and its raw JSON which is
/// what the policy receives (no re-encoding).
#[derive(Debug)]
pub struct Incoming<'a> {
    /// The request, typed.
    pub request: Request,
    /// The request as it arrived.
    pub raw: &'a RawValue,
}

/// Parses and checks an AdmissionReview body.
pub fn parse(body: &[u8]) -> Result<Incoming<'_>, RequestError> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    if envelope.api_version != API_VERSION {
        return Err(RequestError::ApiVersion(envelope.api_version));
    }
    if envelope.kind != KIND {
        return Err(RequestError::Kind(envelope.kind));
    }
    let raw = match envelope.request {
        Some(raw) if raw.get() != "null" => raw,
        _ => return Err(RequestError::MissingRequest),
    };
    let mut request: Request =
        serde_json::from_str(raw.get()).map_err(|e| RequestError::InvalidRequest(e.to_string()))?;
    if request.uid.is_empty() {
        return Err(RequestError::InvalidRequest("uid is empty".into()));
    }
    request.types = TypeMeta { api_version: API_VERSION.into(), kind: KIND.into() };
    Ok(Incoming { request, raw })
}

/// Which endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/validate/{policy}`: patches are never returned.
    Validate,
    /// `/mutate/{policy}`: patches are returned.
    Mutate,
}

/// The answer to one request, with the labels it is counted under.
#[derive(Debug)]
pub struct Decision {
    /// The response (without the patch; see [`Decision::patch`]).
    pub response: AdmissionResponse,
    /// The JSON Patch, base64-encoded as the API server expects.
    pub patch: Option<String>,
    /// `allowed` or `denied`: what the API server is told.
    pub verdict: &'static str,
    /// How it was reached: `policy` (the policy decided), `audit` (a denial
    /// admitted in audit mode) or `failure` (evaluation failed and the
    /// failurePolicy answered).
    pub outcome: &'static str,
    /// The evaluation failure, if any.
    pub failure: Option<EvalError>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'a str,
    kind: &'a str,
    response: WireResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    #[serde(flatten)]
    response: &'a AdmissionResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'a str>,
}

impl Decision {
    /// The AdmissionReview as sent on the wire. kube's `AdmissionResponse`
    /// serializes a patch as an array of byte values; the API documents a
    /// base64 string (Go's `[]byte`), which is what this writes.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&self.wire())
    }

    /// The wire form as a JSON value (for printing).
    pub fn to_value(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self.wire())
    }

    fn wire(&self) -> WireReview<'_> {
        WireReview {
            api_version: API_VERSION,
            kind: KIND,
            response: WireResponse {
                response: &self.response,
                patch: self.patch.as_deref(),
                patch_type: self.patch.as_ref().map(|_| "JSONPatch"),
            },
        }
    }
}

/// Builds the response to `incoming` from what `policy` answered.
pub fn decide(
    policy: &Policy,
    endpoint: Endpoint,
    incoming: &Incoming<'_>,
    result: Result<GuestVerdict, EvalError>,
) -> Decision {
    let name = policy.name();
    let base = AdmissionResponse::from(&incoming.request);
    let result = result.and_then(|mut verdict| {
        // Only an admitted request on a mutating endpoint carries a patch; a
        // denial's patch (if any) is ignored rather than checked.
        let patch = match endpoint {
            Endpoint::Mutate if verdict.allowed => patch_of(&mut verdict, incoming.raw)?,
            _ => None,
        };
        Ok((verdict, patch))
    });
    let (response, patch, verdict, outcome) = match result {
        Ok((verdict, patch)) => {
            let warnings = verdict.warnings;
            if verdict.allowed {
                let patch = patch.map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
                (with_warnings(base, warnings), patch, "allowed", "policy")
            } else {
                let message = verdict.message.unwrap_or_else(|| format!("denied by policy {name}"));
                match policy.config.mode {
                    Mode::Enforce => {
                        let code = verdict.code.filter(|c| (400..600).contains(c)).unwrap_or(403);
                        let mut response = base.deny(&message);
                        response.result = Status::failure(&message, reason_for(code)).with_code(code);
                        (with_warnings(response, warnings), None, "denied", "policy")
                    }
                    Mode::Audit => {
                        let mut warnings = warnings;
                        warnings.insert(0, format!("policy {name} (audit mode) would deny: {message}"));
                        // Into the API server's audit log too, as
                        // `<webhook name>/would-deny`: the record of what
                        // enforcing the policy would have refused.
                        let mut response = with_warnings(base, warnings);
                        response.audit_annotations.insert(AUDIT_WOULD_DENY.into(), message);
                        (response, None, "allowed", "audit")
                    }
                }
            }
        }
        Err(error) => return failed(policy, &incoming.request, error),
    };
    Decision { response, patch, verdict, outcome, failure: None }
}

/// The failurePolicy's answer to a failed evaluation.
fn failed(policy: &Policy, request: &Request, error: EvalError) -> Decision {
    let name = policy.name();
    let base = AdmissionResponse::from(request);
    let (response, verdict) = match policy.config.failure_policy {
        FailurePolicy::Fail => {
            let message = format!("policy {name} could not evaluate the request: the module {error}");
            let mut response = base.deny(&message);
            response.result = Status::failure(&message, "InternalError").with_code(500);
            (response, "denied")
        }
        FailurePolicy::Ignore => {
            let warning =
                format!("policy {name} could not evaluate the request (failurePolicy Ignore): the module {error}");
            let mut response = with_warnings(base, vec![warning]);
            response.audit_annotations.insert(AUDIT_NOT_EVALUATED.into(), format!("the module {error}"));
            (response, "allowed")
        }
    };
    Decision { response, patch: None, verdict, outcome: "failure", failure: Some(error) }
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        500..=599 => "InternalError",
        _ => "Forbidden",
    }
}

#[derive(Deserialize)]
struct ObjectOnly {
    #[serde(default)]
    object: Option<serde_json::Value>,
}

const NO_OBJECT: &str = "a patch was returned for a request without an object";

/// The RFC 6902 patch a mutating verdict asks for (taken out of it),
/// checked against the object, as the JSON to send; `None` when nothing changes.
fn patch_of(verdict: &mut GuestVerdict, raw_request: &RawValue) -> Result<Option<Vec<u8>>, EvalError> {
    let encode = |json: serde_json::Result<Vec<u8>>| json.map_err(|e| EvalError::BadOutput(format!("patch: {e}")));
    match (verdict.patch.take(), verdict.mutated_object.take()) {
        (_, Some(mutated)) => {
            let original = serde_json::from_str::<ObjectOnly>(raw_request.get())
                .ok()
                .and_then(|o| o.object)
                .ok_or_else(|| EvalError::BadOutput(NO_OBJECT.into()))?;
            let patch = json_patch::diff(&original, &mutated);
            if patch.0.is_empty() { Ok(None) } else { encode(serde_json::to_vec(&patch)).map(Some) }
        }
        (Some(patch), None) if patch.is_empty() => Ok(None),
        // Checked on the parts of the object the operations reach, not a
        // decoding of all of it (`patch_check`), and sent on as the guest
        // wrote its values.
        (Some(patch), None) => match crate::patch_check::check(raw_request, &patch) {
            Ok(()) => encode(serde_json::to_vec(&patch)).map(Some),
            Err(crate::patch_check::Refused::NoObject) => Err(EvalError::BadOutput(NO_OBJECT.into())),
            Err(crate::patch_check::Refused::DoesNotApply(e)) => {
                Err(EvalError::BadOutput(format!("patch does not apply to the object: {e}")))
            }
        },
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
        "uid":"705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind":{"group":"","version":"v1","kind":"ConfigMap"},
        "resource":{"group":"","version":"v1","resource":"configmaps"},
        "name":"c","namespace":"default","operation":"CREATE",
        "userInfo":{"username":"admin"},
        "object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"default"}}}}"#;

    #[test]
    fn parses_a_review_and_keeps_the_raw_request() -> Result<(), RequestError> {
        let incoming = parse(REVIEW.as_bytes())?;
        assert_eq!(incoming.request.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert!(incoming.raw.get().starts_with('{') && incoming.raw.get().contains("\"userInfo\""));
        assert_eq!(incoming.request.types.api_version, API_VERSION);
        Ok(())
    }

    #[test]
    fn rejects_malformed_reviews_with_reasons() {
        let cases = [
            ("{", "not valid JSON"),
            ("[]", "apiVersion is \"\""),
            (r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#, "v1beta1"),
            (r#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#, "Pod"),
            (r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "no request"),
            (r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#, "no request"),
            (
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#,
                "uid",
            ),
            (r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}"#, "invalid type"),
        ];
        for (body, fragment) in cases {
            match parse(body.as_bytes()) {
                Ok(_) => panic!("accepted {body}"),
                Err(e) => assert!(e.to_string().contains(fragment), "{body}: {e}"),
            }
        }
    }

    #[test]
    fn patches_from_mutated_objects_and_from_operations() -> Result<(), Box<dyn std::error::Error>> {
        let raw: Box<RawValue> = RawValue::from_string(r#"{"object":{"metadata":{"name":"a"}}}"#.into())?;
        let verdict = |json: &str| crate::abi::decode_verdict(json.as_bytes());
        let mut mutated =
            verdict(r#"{"allowed":true,"mutatedObject":{"metadata":{"name":"a","labels":{"x/y":"1"}}}}"#)?;
        let patch = patch_of(&mut mutated, &raw)?.ok_or("no patch")?;
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&patch)?,
            serde_json::json!([{"op":"add","path":"/metadata/labels","value":{"x/y":"1"}}])
        );
        let mut unchanged = verdict(r#"{"allowed":true,"mutatedObject":{"metadata":{"name":"a"}}}"#)?;
        assert!(patch_of(&mut unchanged, &raw)?.is_none());
        // Operations are sent on as the guest wrote their values.
        let mut ops =
            verdict(r#"{"allowed":true,"patch":[{"op":"add","path":"/metadata/labels","value":{"b":"2","a":1.50}}]}"#)?;
        let patch = patch_of(&mut ops, &raw)?.ok_or("no patch")?;
        assert_eq!(String::from_utf8(patch)?, r#"[{"op":"add","path":"/metadata/labels","value":{"b":"2","a":1.50}}]"#);
        let mut none = verdict(r#"{"allowed":true,"patch":[]}"#)?;
        assert!(patch_of(&mut none, &raw)?.is_none());
        let mut bad = verdict(r#"{"allowed":true,"patch":[{"op":"remove","path":"/spec"}]}"#)?;
        assert!(matches!(patch_of(&mut bad, &raw), Err(EvalError::BadOutput(m)) if m.contains("does not apply")));
        Ok(())
    }
}
