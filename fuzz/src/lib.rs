//! The harness shared by the fuzz targets in `fuzz_targets/`.
//!
//! A policy target hands a built-in policy what the host would: the ABI input
//! `{"request": ..., "settings": ...}`, decoded natively by the `evaluate`
//! function that `portcullis_sdk::policy!` generates (the same decoding path
//! as the wasm export). What the fuzzer varies is either the object under
//! review or the settings; the rest comes from the policy's own `test_data/`
//! (its `cases.yaml`: the settings, the AdmissionReviews and the objects its
//! lookups are answered from).
//!
//! Besides "never panic", every answer is checked against the host's side of
//! the contract: the host must decode it ([`webhook_server::abi::decode_verdict`])
//! into the verdict the policy meant, and a patch must apply to the object it
//! was returned for. An answer failing these would make the server deny the
//! request under `failurePolicy: Fail`.

use std::path::{Path, PathBuf};

use portcullis_sdk::testing::{Context, load_cases};
use portcullis_sdk::{Outcome, Settings, SettingsValidation};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use webhook_server::runtime::EvalError;

/// A policy's native entry point: `evaluate` as `portcullis_sdk::policy!` generates it.
pub type Evaluate = fn(&[u8]) -> Outcome;

/// The operations each fuzzed object is reviewed under.
const OPERATIONS: [&str; 3] = ["CREATE", "UPDATE", "DELETE"];

/// A built-in policy with the fixtures of its `test_data/`.
#[derive(Debug)]
pub struct Policy {
    evaluate: Evaluate,
    /// Every distinct settings of `cases.yaml` (all valid), as JSON text.
    settings: Vec<String>,
    /// The `request` of every AdmissionReview of `cases.yaml`, as JSON text.
    requests: Vec<String>,
    /// The objects of every context file of `cases.yaml`.
    context: Vec<Value>,
    /// The kinds its config entry grants (`None`: lookups of any kind).
    granted: Option<&'static [(&'static str, &'static str)]>,
}

impl Policy {
    /// The policy `policies-wasm/<name>` with its fixtures (read once, when
    /// the target starts; a broken fixture stops it there).
    pub fn load(name: &str, evaluate: Evaluate) -> Self {
        let test_data = repository().join("policies-wasm").join(name).join("test_data");
        let cases = load_cases(&test_data).unwrap_or_else(|e| panic!("{e}"));
        let mut policy =
            Self { evaluate, settings: Vec::new(), requests: Vec::new(), context: Vec::new(), granted: None };
        for case in &cases {
            push_new(&mut policy.settings, case.settings_json().to_string());
            let review = case.review(&test_data).unwrap_or_else(|e| panic!("{e}"));
            let request = review.get("request").unwrap_or_else(|| panic!("{}: no request", case.request));
            push_new(&mut policy.requests, request.to_string());
            for object in case.context_objects(&test_data).unwrap_or_else(|e| panic!("{e}")) {
                if !policy.context.contains(&object) {
                    policy.context.push(object);
                }
            }
        }
        policy
    }

    /// Refuses lookups of kinds other than `kinds`, as the server does for a
    /// policy whose config entry grants only those.
    #[must_use]
    fn granting(mut self, kinds: &'static [(&'static str, &'static str)]) -> Self {
        self.granted = Some(kinds);
        self
    }

    /// Reviews `data`, taken as the JSON of an object (anything else is
    /// skipped), under each operation and each settings of the fixtures.
    /// The request's kind, name and namespace are the object's own, as the
    /// API server would send them.
    pub fn evaluate_object(&self, data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let (Ok(object), Ok(raw)) = (serde_json::from_str::<Value>(text), serde_json::from_str::<&RawValue>(text))
        else {
            return;
        };
        let _installed = self.install_context();
        for settings in &self.settings {
            for operation in OPERATIONS {
                let input = abi_input(&object, raw, operation, settings);
                let outcome = (self.evaluate)(input.as_bytes());
                let reviewed = (operation != "DELETE" && !object.is_null()).then_some(&object);
                check_outcome(&input, &outcome, reviewed);
            }
        }
    }

    /// Decodes and validates `data` as the policy's settings, as the server
    /// does when it loads the policy. Settings it accepts are then used to
    /// evaluate every AdmissionReview of the fixtures: they must decode
    /// there too, and the answers must hold to the contract.
    pub fn check_settings<S: Settings>(&self, data: &[u8]) {
        let validation = SettingsValidation::check::<S>(data);
        let encoded = serde_json::to_vec(&validation).unwrap_or_else(|e| panic!("encoding {validation:?}: {e}"));
        match webhook_server::abi::decode_settings_validation(&encoded) {
            Ok(decoded) => assert_eq!(decoded, validation, "the host decodes another settings validation"),
            Err(e) => panic!("the host cannot decode the settings validation {validation:?}: {e}"),
        }
        if !validation.valid {
            return;
        }
        // Accepted settings are JSON, so UTF-8.
        let settings =
            std::str::from_utf8(data).unwrap_or_else(|e| panic!("accepted settings that are not UTF-8: {e}"));
        let _installed = self.install_context();
        for request in &self.requests {
            let input = format!(r#"{{"request":{request},"settings":{settings}}}"#);
            let outcome = (self.evaluate)(input.as_bytes());
            if let Outcome::Error { error } = &outcome {
                assert!(
                    !error.starts_with("cannot decode policy input"),
                    "settings that validate do not decode at evaluation: {error}\ninput: {input}"
                );
            }
            let object: Option<Value> = serde_json::from_str::<Value>(request)
                .ok()
                .and_then(|r| r.get("object").cloned())
                .filter(|o| !o.is_null());
            check_outcome(&input, &outcome, object.as_ref());
        }
    }

    fn install_context(&self) -> portcullis_sdk::testing::Installed {
        let context = Context::new(self.context.clone());
        match self.granted {
            Some(kinds) => context.granting(kinds),
            None => context,
        }
        .install()
    }
}

/// `ingress-tls`.
pub fn ingress_tls() -> Policy {
    Policy::load("ingress-tls", ingress_tls::evaluate)
}

/// `service-account-identity`.
pub fn service_account_identity() -> Policy {
    Policy::load("service-account-identity", service_account_identity::evaluate)
}

/// `hpa-resource-requests`, with the kinds the default config
/// (`webhook-server/config/default.yaml`) grants it.
pub fn hpa_resource_requests() -> Policy {
    const GRANTED: [(&str, &str); 5] = [
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("apps/v1", "ReplicaSet"),
        ("v1", "ReplicationController"),
    ];
    Policy::load("hpa-resource-requests", hpa_resource_requests::evaluate).granting(&GRANTED)
}

fn push_new(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The checkout this crate was built in.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `group/version` and kind, as in an AdmissionRequest's `kind`.
#[derive(Serialize)]
struct Gvk<'a> {
    group: &'a str,
    version: &'a str,
    kind: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    uid: &'a str,
    kind: &'a Gvk<'a>,
    request_kind: &'a Gvk<'a>,
    resource: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    operation: &'a str,
    user_info: Value,
    object: Option<&'a RawValue>,
    old_object: Option<&'a RawValue>,
}

/// The ABI input for a request about `object` (whose JSON text is `raw`).
fn abi_input(object: &Value, raw: &RawValue, operation: &str, settings: &str) -> String {
    let string = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    let (group, version) = match string("/apiVersion").unwrap_or_default().rsplit_once('/') {
        Some((group, version)) => (group, version),
        None => ("", string("/apiVersion").unwrap_or_default()),
    };
    let kind = string("/kind").unwrap_or_default();
    let gvk = Gvk { group, version, kind };
    let request = Request {
        uid: "00000000-0000-0000-0000-00000000f022",
        kind: &gvk,
        request_kind: &gvk,
        resource: serde_json::json!({
            "group": group,
            "version": version,
            "resource": format!("{}s", kind.to_lowercase()),
        }),
        name: string("/metadata/name"),
        namespace: string("/metadata/namespace"),
        operation,
        user_info: serde_json::json!({
            "username": "system:serviceaccount:kube-system:fuzz",
            "groups": ["system:authenticated"],
        }),
        object: (operation != "DELETE").then_some(raw),
        old_object: (operation != "CREATE").then_some(raw),
    };
    let request = serde_json::to_string(&request).unwrap_or_else(|e| panic!("encoding a request: {e}"));
    format!(r#"{{"request":{request},"settings":{settings}}}"#)
}

/// Checks what a policy answered to `input` as the host would take it:
/// encoded as the wasm export encodes it, decoded by the host into the same
/// verdict; a patch only for a request with an object, applying to it.
pub fn check_outcome(input: &str, outcome: &Outcome, object: Option<&Value>) {
    let encoded = serde_json::to_vec(outcome).unwrap_or_else(|e| panic!("encoding {outcome:?}: {e}"));
    let shown = String::from_utf8_lossy(&encoded);
    match (webhook_server::abi::decode_verdict(&encoded), outcome) {
        (Ok(decoded), Outcome::Verdict(sent)) => {
            // The host keeps the patch's values as text: decoded, they are what was sent.
            let patch = decoded.patch.as_ref().map(|p| p.decode()).transpose();
            let patch = patch.unwrap_or_else(|e| panic!("the host kept a patch value that is not JSON: {e}: {shown}"));
            let decoded = portcullis_sdk::Verdict {
                allowed: decoded.allowed,
                message: decoded.message,
                code: decoded.code,
                warnings: decoded.warnings,
                patch,
                mutated_object: decoded.mutated_object,
            };
            assert_eq!(&decoded, sent, "the host decodes another verdict from {shown}\ninput: {input}");
            if !decoded.allowed || (decoded.patch.is_none() && decoded.mutated_object.is_none()) {
                return;
            }
            let Some(object) = object else {
                panic!("a patch for a request without an object: {shown}\ninput: {input}");
            };
            if let Some(patch) = &decoded.patch {
                let mut patched = object.clone();
                if let Err(e) = portcullis_sdk::json_patch::patch(&mut patched, patch) {
                    panic!("the patch does not apply to the object: {e}\nanswer: {shown}\ninput: {input}");
                }
            }
        }
        (Err(EvalError::Guest(decoded)), Outcome::Error { error }) => {
            assert_eq!(&decoded, error, "the host decodes another error from {shown}");
        }
        (decoded, _) => panic!("the host takes {shown} as {decoded:?}\ninput: {input}"),
    }
}

/// libFuzzer's custom mutator for targets whose input is JSON: most of the
/// time an input that is JSON is changed as a tree (a value replaced by an
/// interesting one or by a copy of another subtree, a key or element
/// added, removed or duplicated) so that mutants stay JSON and reach the
/// policies' logic rather than the JSON parser; otherwise, and for inputs
/// that are not JSON, libFuzzer's own byte-level mutation.
pub fn mutate_json(data: &mut [u8], size: usize, max_size: usize, seed: u32) -> usize {
    let mut rng = Rng(u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    if rng.below(4) == 0 {
        return libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(&data[..size]) else {
        return libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    };
    for _ in 0..=rng.below(3) {
        mutate_value(&mut value, &mut rng);
    }
    let Ok(bytes) = serde_json::to_vec(&value) else { return libfuzzer_sys::fuzzer_mutate(data, size, max_size) };
    if bytes.len() > max_size {
        return libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    }
    data[..bytes.len()].copy_from_slice(&bytes);
    bytes.len()
}

/// A small deterministic generator (xorshift64*) seeded by libFuzzer.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Strings the server and the policies treat specially.
const STRINGS: &[&str] = &[
    "",
    "*",
    "*.example.com",
    "example.com",
    "a.b.example.com",
    "-",
    "..",
    "/",
    "~1",
    "0",
    "-1",
    "1.5",
    "100m",
    "0.5",
    "1Gi",
    "1e3",
    "cpu",
    "memory",
    "ephemeral-storage",
    "true",
    "false",
    "v1",
    "apps/v1",
    "autoscaling/v2",
    "autoscaling/v1",
    "networking.k8s.io/v1",
    "Pod",
    "ServiceAccount",
    "Deployment",
    "StatefulSet",
    "ReplicaSet",
    "ReplicationController",
    "DaemonSet",
    "HorizontalPodAutoscaler",
    "Ingress",
    "Resource",
    "ContainerResource",
    "Pods",
    "Object",
    "External",
    "Utilization",
    "AverageValue",
    "Value",
    "Always",
    "default",
    "kube-system",
    "clipper-production",
    "clipper-staging",
    "clipper-monitoring",
    "clipper-backend",
    "nginx",
    "gce",
    "letsencrypt-prod",
    "arn:aws:iam::123456789012:role/clipper-backend-production",
    "arn:aws:iam::1:role/",
    "clipper-backend@clipper-staging.iam.gserviceaccount.com",
    "5f0e3b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
    "aws-iam-token",
    "azure-identity-token",
    "\u{0}",
    "é",
    "\u{10ffff}",
];

fn scalar(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => serde_json::json!(*rng.pick(&[
            0i64,
            -1,
            1,
            2,
            30,
            300,
            600,
            86_400,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            i64::MAX,
            i64::MIN
        ])),
        3 => serde_json::json!(*rng.pick(&[u64::MAX, 1 << 32, 1 << 53])),
        4 => serde_json::json!(*rng.pick(&[0.5f64, -0.0, 1e300, -1e-300, 99.999])),
        5 => Value::Object(serde_json::Map::new()),
        6 => Value::Array(Vec::new()),
        _ => Value::String((*rng.pick(STRINGS)).to_owned()),
    }
}

fn count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count).sum(),
        Value::Object(map) => map.values().map(count).sum(),
        _ => 0,
    }
}

/// The `n`th node in pre-order.
fn nth(value: &Value, n: &mut usize) -> Option<Value> {
    if *n == 0 {
        return Some(value.clone());
    }
    *n -= 1;
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => return None,
    };
    children.into_iter().find_map(|child| nth(child, n))
}

fn nth_mut<'a>(value: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(value);
    }
    *n -= 1;
    match value {
        Value::Array(items) => items.iter_mut().find_map(|child| nth_mut(child, n)),
        Value::Object(map) => map.values_mut().find_map(|child| nth_mut(child, n)),
        _ => None,
    }
}

fn mutate_value(root: &mut Value, rng: &mut Rng) {
    let nodes = count(root);
    let donor = nth(root, &mut rng.below(nodes));
    let key = donor_key(root, rng);
    let Some(node) = nth_mut(root, &mut rng.below(nodes)) else { return };
    match (rng.below(6), node) {
        // Another subtree of the input in its place (a container list where
        // the init containers were, labels where annotations were, ...).
        (0, node) => *node = donor.unwrap_or(Value::Null),
        (1, node) => *node = scalar(rng),
        (_, Value::String(s)) => {
            if rng.below(2) == 0 {
                *s = (*rng.pick(STRINGS)).to_owned();
            } else {
                let mut bytes = std::mem::take(s).into_bytes();
                let len = bytes.len();
                bytes.resize(len * 2 + 16, 0);
                let max = bytes.len();
                let new = libfuzzer_sys::fuzzer_mutate(&mut bytes, len, max);
                bytes.truncate(new);
                *s = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        (_, Value::Bool(b)) => *b = !*b,
        (_, Value::Object(map)) => match rng.below(3) {
            0 if !map.is_empty() => {
                let remove = map.keys().nth(rng.below(map.len())).cloned().unwrap_or_default();
                map.remove(&remove);
            }
            1 => {
                map.insert(key, donor.unwrap_or(Value::Null));
            }
            _ => {
                map.insert(key, scalar(rng));
            }
        },
        (_, Value::Array(items)) => match rng.below(3) {
            0 if !items.is_empty() => {
                items.remove(rng.below(items.len()));
            }
            1 if !items.is_empty() => {
                let copy = items[rng.below(items.len())].clone();
                items.insert(rng.below(items.len() + 1), copy);
            }
            _ => items.push(donor.unwrap_or(Value::Null)),
        },
        (_, node) => *node = scalar(rng),
    }
}

/// A key to add to an object: one the input already uses somewhere (so
/// that a field meets a neighbour of its own kind), or an interesting string.
fn donor_key(root: &Value, rng: &mut Rng) -> String {
    fn keys<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
            Value::Object(map) => map.iter().for_each(|(k, v)| {
                out.push(k);
                keys(v, out);
            }),
            _ => {}
        }
    }
    let mut found = Vec::new();
    keys(root, &mut found);
    if found.is_empty() || rng.below(4) == 0 { (*rng.pick(STRINGS)).to_owned() } else { (*rng.pick(&found)).to_owned() }
}
