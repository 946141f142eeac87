//! Runs one case against a cluster: a fresh namespace, the setup objects, the
//! request under test, the checks, and the cleanup (which runs whatever the
//! outcome).
//!
//! Webhook configurations take effect when the API server's informer sees
//! them, a moment after they are stored. So before the real request the
//! runner sends the same request as a dry run (which admission webhooks with
//! `sideEffects: None` still see) until it produces the expected outcome, for
//! at most [`SETTLE_TIMEOUT`]; only then does it send the real request and hold
//! it to every expectation, the webhook metrics included.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::case::{Case, Expect, ObjectId, Operation, Outcome};
use crate::cluster::{self, Cluster, Response, Verb};
use crate::metrics::WebhookMetrics;

/// Longest wait for the webhook configurations to take effect.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Label on every namespace the suite creates.
pub const NAMESPACE_LABEL: &str = "portcullis.dev/e2e";

/// Errors running a case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the cluster failed.
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    /// The API server did not do what the case expects.
    #[error("case {case}: {details}")]
    Mismatch {
        /// Case name.
        case: String,
        /// Every difference found, one per line.
        details: String,
    },
    /// The case passed or failed, and then its cleanup failed too.
    #[error("case {case}: cleanup failed: {details}{}", outcome.as_ref().map(|e| format!("\n(and before that: {e})")).unwrap_or_default())]
    Cleanup {
        /// Case name.
        case: String,
        /// What could not be removed.
        details: String,
        /// The case's own error, if it had one.
        outcome: Option<Box<Error>>,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a case and removes everything it created.
pub async fn run(cluster: &Cluster, case: &Case) -> Result<()> {
    let namespace = format!("{}-{}", case.name, unique_suffix());
    let mut created: Vec<(Value, String)> = Vec::new();
    let outcome = run_in(cluster, case, &namespace, &mut created).await;

    let mut failures = Vec::new();
    for (object, ns) in created.iter().rev() {
        if let Err(e) = cluster.delete(object, ns).await {
            failures.push(format!("{e:#}"));
        }
    }
    if let Err(e) = cluster.delete(&namespace_object(&namespace), "").await {
        failures.push(format!("{e:#}"));
    }
    match (outcome, failures.is_empty()) {
        (outcome, true) => outcome,
        (outcome, false) => Err(Error::Cleanup {
            case: case.name.clone(),
            details: failures.join("; "),
            outcome: outcome.err().map(Box::new),
        }),
    }
}

fn namespace_object(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {NAMESPACE_LABEL: "true"}},
    })
}

/// A suffix that keeps repeated runs against one cluster apart.
fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let mut n = nanos ^ u128::from(std::process::id());
    let mut s = String::new();
    for _ in 0..8 {
        let digit = (n % 36) as u8;
        s.push(char::from(if digit < 10 { b'0' + digit } else { b'a' + digit - 10 }));
        n /= 36;
    }
    s
}

fn is_default_service_account(object: &Value) -> bool {
    object["kind"] == "ServiceAccount" && object["metadata"]["name"] == "default"
}

async fn run_in(cluster: &Cluster, case: &Case, namespace: &str, created: &mut Vec<(Value, String)>) -> Result<()> {
    cluster.create(&namespace_object(namespace), "").await?;
    for object in &case.setup {
        match cluster.create(object, namespace).await {
            Ok(_) => created.push((object.clone(), namespace.to_owned())),
            // Where a controller manager runs (the node backend), it makes each
            // namespace's `default` ServiceAccount itself, maybe first.
            Err(crate::cluster::Error::Request { source: kube::Error::Api(status), .. })
                if status.code == 409 && is_default_service_account(object) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let verb = match case.operation {
        Operation::Create => Verb::Create,
        Operation::Update => Verb::Update,
    };
    let mismatch = |details: Vec<String>| Error::Mismatch { case: case.name.clone(), details: details.join("\n") };

    // Dry runs until the webhook configurations are in force.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let before = cluster.webhook_metrics().await?;
        let response = cluster.send(verb, &case.object, namespace, true).await?;
        let after = cluster.webhook_metrics().await?;
        let problems = check(&case.expect, &response, &before, &after);
        if problems.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let mut details = vec![format!("dry runs did not produce the expected outcome within {SETTLE_TIMEOUT:?}:")];
            details.extend(problems);
            return Err(mismatch(details));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The real request.
    let before = cluster.webhook_metrics().await?;
    let response = cluster.send(verb, &case.object, namespace, false).await?;
    let after = cluster.webhook_metrics().await?;
    if response.is_success() && verb == Verb::Create {
        created.push((case.object.clone(), namespace.to_owned()));
    }
    let mut problems = check(&case.expect, &response, &before, &after);
    if case.expect.outcome == Outcome::Allowed && response.is_success() {
        let stored = cluster.get(&case.object, namespace).await?;
        for problem in check_fields(&case.expect, &stored) {
            problems.push(format!("stored object: {problem}"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(mismatch(problems)) }
}

/// Every way `response` (and the metric change from `before` to `after`)
/// differs from `expect`; empty when it matches.
pub fn check(expect: &Expect, response: &Response, before: &WebhookMetrics, after: &WebhookMetrics) -> Vec<String> {
    let mut problems = Vec::new();
    let id = ObjectId::of(&response.body);
    match (expect.outcome, response.is_success()) {
        (Outcome::Allowed, false) => {
            problems.push(format!(
                "expected the request to be allowed; got HTTP {}: {}",
                response.status,
                response.message()
            ));
        }
        (Outcome::Denied, true) => {
            problems
                .push(format!("expected the request to be denied; got HTTP {} and {id} was admitted", response.status));
        }
        (Outcome::Allowed, true) => problems.extend(check_fields(expect, &response.body)),
        (Outcome::Denied, false) => {
            let message = response.message();
            for fragment in &expect.message {
                if !message.contains(fragment.as_str()) {
                    problems.push(format!("the denial does not contain {fragment:?}; it reads: {message}"));
                }
            }
            if let Some(code) = expect.code.filter(|c| *c != response.status) {
                problems.push(format!("expected HTTP {code}, got HTTP {}", response.status));
            }
        }
    }
    for fragment in &expect.warnings {
        if !response.warnings.iter().any(|w| w.contains(fragment.as_str())) {
            problems.push(format!("no warning contains {fragment:?}; warnings: {:?}", response.warnings));
        }
    }
    for call in &expect.webhooks {
        if let Err(e) = after.check_since(before, &call.name, call.result) {
            problems.push(e);
        }
    }
    problems
}

/// Differences between `expect.fields` and an object; an expected `null`
/// means the field must be absent (or null).
pub fn check_fields(expect: &Expect, object: &Value) -> Vec<String> {
    expect
        .fields
        .iter()
        .filter_map(|(pointer, want)| match object.pointer(pointer) {
            Some(got) if got == want => None,
            None if want.is_null() => None,
            Some(got) => Some(format!("{pointer} is {got}, expected {want}")),
            None => Some(format!("{pointer} is absent, expected {want}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{WebhookCall, WebhookResult};

    fn expect(yaml: &str) -> Expect {
        serde_yaml::from_str(yaml).expect("valid expectation")
    }

    fn response(status: u16, body: Value) -> Response {
        Response { status, body, warnings: vec!["299 - \"spec.tls[0].hosts[1] matches no rule host\"".into()] }
    }

    #[test]
    fn an_allowed_response_is_checked_field_by_field() {
        let e = expect("{outcome: allowed, fields: {/metadata/labels/a: b, /data/k: v}}");
        let r = response(201, json!({"metadata": {"labels": {"a": "b"}}, "data": {"k": "other"}}));
        let m = WebhookMetrics::default();
        assert_eq!(check(&e, &r, &m, &m), vec!["/data/k is \"other\", expected \"v\"".to_owned()]);
    }

    #[test]
    fn a_denial_must_carry_every_fragment() {
        let e = expect("{outcome: denied, message: [covered, missing-fragment], code: 403}");
        let r = response(400, json!({"kind": "Status", "message": "host is not covered"}));
        let m = WebhookMetrics::default();
        let problems = check(&e, &r, &m, &m);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("missing-fragment") && problems[1].contains("HTTP 403"));
    }

    #[test]
    fn the_wrong_outcome_is_reported_with_the_answer() {
        let m = WebhookMetrics::default();
        let denied = response(403, json!({"kind": "Status", "message": "nope"}));
        assert!(check(&expect("{outcome: allowed}"), &denied, &m, &m)[0].contains("HTTP 403: nope"));
        let mut e = expect("{outcome: denied, message: [x]}");
        e.webhooks.push(WebhookCall { name: "w".into(), result: WebhookResult::Denied });
        let problems = check(&e, &response(201, json!({"kind": "ConfigMap"})), &m, &m);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn warnings_are_matched_by_fragment() {
        let m = WebhookMetrics::default();
        let r = response(201, json!({}));
        assert!(check(&expect("{outcome: allowed, warnings: [matches no rule]}"), &r, &m, &m).is_empty());
        assert_eq!(check(&expect("{outcome: allowed, warnings: [absent]}"), &r, &m, &m).len(), 1);
    }

    #[test]
    fn namespace_suffixes_are_dns_safe() {
        let s = unique_suffix();
        assert_eq!(s.len(), 8);
        assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }
}
