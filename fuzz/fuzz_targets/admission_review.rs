//! AdmissionReview bodies as the server receives them: arbitrary bytes
//! through `webhook_server::admission::parse`, which must answer an error
//! (HTTP 400) rather than panic. A review it accepts is answered as the
//! server answers, allowed (with warnings and a patch) and denied, through
//! the wire encoding of `admission::Decision`; the answer must be an
//! `admission.k8s.io/v1` AdmissionReview response carrying the request's uid.
#![no_main]

use kube_core::Status;
use kube_core::admission::AdmissionResponse;
use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use serde_json::Value;
use webhook_server::admission::{self, Decision};

fuzz_target!(|data: &[u8]| {
    let Ok(incoming) = admission::parse(data) else { return };
    assert!(!incoming.request.uid.is_empty(), "accepted a request without a uid");
    let base = AdmissionResponse::from(&incoming.request);
    let mut allowed = base.clone();
    allowed.warnings = Some(vec!["a warning".into()]);
    let message = "denied by policy fuzz";
    let mut denied = base.deny(message);
    denied.result = Status::failure(message, "Forbidden").with_code(403);
    let decisions = [
        // `[]` is an empty JSON Patch, base64-encoded.
        Decision {
            response: allowed,
            patch: Some("W10=".into()),
            verdict: "allowed",
            outcome: "policy",
            failure: None,
        },
        Decision { response: denied, patch: None, verdict: "denied", outcome: "policy", failure: None },
    ];
    for decision in decisions {
        let json = decision.to_json().unwrap_or_else(|e| panic!("encoding {decision:?}: {e}"));
        let review: Value = serde_json::from_slice(&json).unwrap_or_else(|e| panic!("the answer is not JSON: {e}"));
        assert_eq!(review["apiVersion"], admission::API_VERSION, "{review}");
        assert_eq!(review["kind"], admission::KIND, "{review}");
        assert_eq!(review["response"]["uid"].as_str(), Some(incoming.request.uid.as_str()), "{review}");
        assert_eq!(review["response"]["allowed"], decision.verdict == "allowed", "{review}");
    }
});

// Mutants of JSON stay JSON most of the time.
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    portcullis_fuzz::mutate_json(data, size, max_size, seed)
});
