//! What an answer must be: HTTP 200 and an AdmissionReview response with the
//! expected verdict and patch. Failures are counted by reason.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// Why a request failed; failures are counted per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// An HTTP status other than 200.
    Status(u16),
    /// Not JSON, or not an AdmissionReview response.
    BadJson,
    /// `response.allowed` is not the expected one.
    WrongVerdict,
    /// `response.patch` present when it should not be, or the other way round.
    WrongPatch,
    /// Connecting, the TLS handshake, or the exchange failed.
    Connection,
    /// No full response within `--timeout`.
    Timeout,
}

impl FailureKind {
    /// Whether a full response arrived (and then failed the checks).
    pub fn answered(self) -> bool {
        !matches!(self, FailureKind::Connection | FailureKind::Timeout)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Status(code) => write!(f, "status {code}"),
            FailureKind::BadJson => f.write_str("bad json"),
            FailureKind::WrongVerdict => f.write_str("wrong verdict"),
            FailureKind::WrongPatch => f.write_str("wrong patch"),
            FailureKind::Connection => f.write_str("connection error"),
            FailureKind::Timeout => f.write_str("timeout"),
        }
    }
}

/// A failed request: the reason and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Failure { kind, detail: detail.into() }
    }
}

/// What `--expect-allowed` and `--expect-patch` asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expectations {
    pub allowed: Option<bool>,
    pub patch: Option<bool>,
}

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The parts of an AdmissionReview looked at; everything else is skipped
/// without being built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    #[serde(borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    response: Option<Response<'a>>,
}

#[derive(Deserialize)]
struct Response<'a> {
    allowed: Option<bool>,
    /// Only whether it is there (a `null` patch counts as none).
    patch: Option<IgnoredAny>,
    #[serde(borrow)]
    status: Option<Status<'a>>,
}

#[derive(Deserialize)]
struct Status<'a> {
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

/// Checks one answer against `expect`.
pub fn check(status: u16, body: &[u8], expect: Expectations) -> Result<(), Failure> {
    if status != 200 {
        return Err(Failure::new(FailureKind::Status(status), format!("HTTP {status}: {}", excerpt(body))));
    }
    let bad = |what: String| Failure::new(FailureKind::BadJson, format!("{what}; body: {}", excerpt(body)));
    let review: Review<'_> = serde_json::from_slice(body).map_err(|e| bad(format!("not an AdmissionReview: {e}")))?;
    if review.api_version.as_deref() != Some(API_VERSION) {
        return Err(bad(format!("apiVersion is {:?}, expected {API_VERSION:?}", review.api_version)));
    }
    if review.kind.as_deref() != Some(KIND) {
        return Err(bad(format!("kind is {:?}, expected {KIND:?}", review.kind)));
    }
    let Some(response) = review.response else {
        return Err(bad("no response".into()));
    };
    let Some(allowed) = response.allowed else {
        return Err(bad("response.allowed is missing".into()));
    };
    if let Some(expected) = expect.allowed
        && allowed != expected
    {
        let message = response.status.and_then(|s| s.message).unwrap_or_default();
        return Err(Failure::new(
            FailureKind::WrongVerdict,
            format!("response.allowed is {allowed}, expected {expected} (status message: {message:?})"),
        ));
    }
    let patched = response.patch.is_some();
    if let Some(expected) = expect.patch
        && patched != expected
    {
        let presence = |p: bool| if p { "present" } else { "absent" };
        return Err(Failure::new(
            FailureKind::WrongPatch,
            format!("response.patch is {}, expected {}", presence(patched), presence(expected)),
        ));
    }
    Ok(())
}

/// The start of a body for messages: at most 300 bytes, lossy UTF-8.
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 300;
    if body.len() <= MAX {
        String::from_utf8_lossy(body).into_owned()
    } else {
        format!("{}… ({} bytes)", String::from_utf8_lossy(&body[..MAX]), body.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers of the server (webhook-server/src/admission.rs `to_json`) to
    /// realistic-3kb.json and no-tls.json of policies-wasm/ingress-tls/test_data,
    /// and (patch shortened) pod-realistic-3kb.json on the mutating endpoint.
    const ALLOWED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"29961596-5134-9960-2bdf-79c8ff88c0fe","allowed":true,"status":{}}}"#;
    const DENIED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"8660cdff-db1c-4bcd-99bf-7eb8710856cd","allowed":false,"status":{"status":"Failure","code":403,"message":"Ingress \"shop/api\" is not fully served over TLS (2 problems):\n- spec.rules[0].host \"api.example.com\" is not covered by any host in spec.tls; add \"api.example.com\" or \"*.example.com\" there\n- spec.rules[1].host \"www.example.com\" is not covered by any host in spec.tls; add \"www.example.com\" or \"*.example.com\" there","reason":"Forbidden"}}}"#;
    const PATCHED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"706f94e3-4b2a-5c18-b6a9-d3ddcaa30d8e","allowed":true,"status":{},"patch":"W3sib3AiOiJyZXBsYWNlIiwicGF0aCI6Ii9zcGVjL3NlcnZpY2VBY2NvdW50TmFtZSIsInZhbHVlIjoiY2xpcHBlci1iYWNrZW5kIn1d","patchType":"JSONPatch"}}"#;

    fn expect(allowed: Option<bool>, patch: Option<bool>) -> Expectations {
        Expectations { allowed, patch }
    }

    fn kind(status: u16, body: &str, e: Expectations) -> Option<FailureKind> {
        check(status, body.as_bytes(), e).err().map(|f| f.kind)
    }

    #[test]
    fn verdicts_and_patches() {
        let none = expect(None, None);
        for body in [ALLOWED, DENIED, PATCHED] {
            assert_eq!(kind(200, body, none), None, "{body}");
        }
        assert_eq!(kind(200, ALLOWED, expect(Some(true), Some(false))), None);
        assert_eq!(kind(200, DENIED, expect(Some(false), Some(false))), None);
        assert_eq!(kind(200, PATCHED, expect(Some(true), Some(true))), None);

        assert_eq!(kind(200, ALLOWED, expect(Some(false), None)), Some(FailureKind::WrongVerdict));
        assert_eq!(kind(200, DENIED, expect(Some(true), None)), Some(FailureKind::WrongVerdict));
        assert_eq!(kind(200, ALLOWED, expect(None, Some(true))), Some(FailureKind::WrongPatch));
        assert_eq!(kind(200, PATCHED, expect(None, Some(false))), Some(FailureKind::WrongPatch));
        // The verdict is checked first.
        assert_eq!(kind(200, PATCHED, expect(Some(false), Some(false))), Some(FailureKind::WrongVerdict));
        let null_patch =
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"allowed":true,"patch":null}}"#;
        assert_eq!(kind(200, null_patch, expect(None, Some(false))), None);
    }

    #[test]
    fn failure_details() {
        let Err(denied) = check(200, DENIED.as_bytes(), expect(Some(true), None)) else {
            panic!("a denial passed --expect-allowed true");
        };
        assert!(denied.detail.starts_with("response.allowed is false, expected true"), "{}", denied.detail);
        // The message, unescaped and quoted again.
        assert!(
            denied.detail.contains(r#"Ingress \"shop/api\" is not fully served over TLS (2 problems):\n- "#),
            "{}",
            denied.detail
        );
        let Err(status) = check(500, b"internal error", expect(None, None)) else {
            panic!("HTTP 500 passed");
        };
        assert_eq!(status, Failure::new(FailureKind::Status(500), "HTTP 500: internal error"));
        assert_eq!(status.kind.to_string(), "status 500");
        assert!(status.kind.answered() && FailureKind::WrongPatch.answered());
        assert!(!FailureKind::Timeout.answered() && !FailureKind::Connection.answered());
        let long = "x".repeat(1000);
        let Err(bad) = check(200, long.as_bytes(), expect(None, None)) else {
            panic!("garbage passed");
        };
        assert!(bad.detail.ends_with("… (1000 bytes)") && bad.detail.len() < 500, "{}", bad.detail);
    }

    #[test]
    fn not_admission_reviews() {
        let none = expect(None, None);
        for body in [
            "",
            "not json",
            "[]",
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"allowed":true}"#,
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","response":{"allowed":true}}"#,
            r#"{"kind":"AdmissionReview","response":{"allowed":true}}"#,
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"Status","response":{"allowed":true}}"#,
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":null}"#,
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{}}"#,
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"allowed":"true"}}"#,
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":[]}"#,
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"allowed":true}} trailing"#,
        ] {
            assert_eq!(kind(200, body, none), Some(FailureKind::BadJson), "{body}");
        }
        // Escaped strings are still the same strings.
        let escaped =
            r#"{"apiVersion":"admission.k8s.io\/v1","kind":"Admission\u0052eview","response":{"allowed":true}}"#;
        assert_eq!(kind(200, escaped, none), None);
        // The status comes before the body.
        assert_eq!(kind(403, ALLOWED, none), Some(FailureKind::Status(403)));
    }
}
