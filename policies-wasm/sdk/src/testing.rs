//! Native test helpers: build requests from AdmissionReview fixtures and run a
//! policy exactly as the wasm exports would, without a host.

use std::path::Path;

use serde::Deserialize;

use serde_json::Value;

use crate::lookup::{LookupError, Query};
use crate::settings::{Settings, parse_settings};
use crate::verdict::Outcome;
use crate::{Request, Verdict};

#[derive(Deserialize)]
struct Review {
    request: Option<Request>,
}

/// One entry of a policy's `test_data/cases.yaml`: a fixture file and what
/// the policy must answer for it. The policy's own tests run the cases
/// natively ([`run_cases`]), the host's test suite through the compiled
/// module; both check them with [`FixtureCase::check`].
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
    /// Objects the policy's lookups are answered from (a YAML file relative
    /// to `test_data/`: documents or a `kind: List`, as `kubectl get -o yaml`
    /// prints). Absent: lookups find nothing.
    #[serde(default)]
    pub context: Option<String>,
    /// The object expected after the policy's patch is applied (a YAML or
    /// JSON file relative to `test_data/`). Absent: the answer must carry
    /// no patch. When present, the patched object is evaluated again and
    /// must be admitted with no patch (idempotence).
    #[serde(default)]
    pub patched: Option<String>,
}

/// What an evaluation answered, in the terms a case is checked against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// Whether the request was admitted.
    pub allowed: bool,
    /// The denial message (empty when admitted).
    pub message: String,
    /// Warnings.
    pub warnings: Vec<String>,
    /// The patch sent back, if any (only admitted requests carry one).
    pub patch: Option<json_patch::Patch>,
}

impl Answer {
    /// The answer a verdict amounts to for a request about `object`, as the
    /// host forms it: a denial's patch is dropped, a mutated object is
    /// diffed into a patch, and an empty patch is no patch.
    pub fn from_verdict(verdict: Verdict, object: Option<&Value>) -> Self {
        let patch = match (verdict.allowed, verdict.patch, verdict.mutated_object, object) {
            (false, ..) => None,
            (true, Some(patch), _, _) => Some(patch),
            (true, None, Some(mutated), Some(object)) => Some(json_patch::diff(object, &mutated)),
            _ => None,
        };
        Self {
            allowed: verdict.allowed,
            message: verdict.message.unwrap_or_default(),
            warnings: verdict.warnings,
            patch: patch.filter(|p| !p.is_empty()),
        }
    }
}

/// Reads the cases of `test_data/cases.yaml`.
pub fn load_cases(test_data: &Path) -> Result<Vec<FixtureCase>, String> {
    load_case_file(&test_data.join("cases.yaml"))
}

/// Reads a case file of any name; the files its cases name are relative to
/// the directory it is in.
pub fn load_case_file(path: &Path) -> Result<Vec<FixtureCase>, String> {
    let yaml = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_yaml::from_str(&yaml).map_err(|e| format!("parsing {}: {e}", path.display()))
}

impl FixtureCase {
    /// The AdmissionReview of this case, as JSON.
    pub fn review(&self, test_data: &Path) -> Result<Value, String> {
        let path = test_data.join(&self.request);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", self.request))
    }

    /// The objects of this case's context file (none without one).
    pub fn context_objects(&self, test_data: &Path) -> Result<Vec<Value>, String> {
        match &self.context {
            None => Ok(Vec::new()),
            Some(file) => {
                let path = test_data.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
                crate::lookup::objects_from_yaml(&text).map_err(|e| format!("{file}: {e}"))
            }
        }
    }

    /// The settings of this case (`{}` when it gives none).
    pub fn settings_json(&self) -> Value {
        self.settings.clone().unwrap_or_else(|| Value::Object(serde_json::Map::new()))
    }

    /// Checks the answer to [`FixtureCase::review`]. When the answer patched
    /// the object, returns the review to evaluate next: the same request
    /// with the patched object, whose answer [`FixtureCase::check_rerun`]
    /// checks.
    pub fn check(&self, test_data: &Path, review: &Value, answer: &Answer) -> Result<Option<Value>, String> {
        if answer.allowed != self.allowed {
            let message = if answer.message.is_empty() { String::new() } else { format!(": {}", answer.message) };
            return Err(format!("expected allowed={}, got allowed={}{message}", self.allowed, answer.allowed));
        }
        if let Some(missing) = self.message.iter().find(|f| !answer.message.contains(f.as_str())) {
            return Err(format!("message lacks {missing:?}:\n{}", answer.message));
        }
        if let Some(missing) = self.warnings.iter().find(|f| !answer.warnings.iter().any(|w| w.contains(f.as_str()))) {
            return Err(format!("warnings {:?} lack {missing:?}", answer.warnings));
        }
        let (expected, patch) = match (&self.patched, &answer.patch) {
            (None, None) => return Ok(None),
            (None, Some(patch)) => return Err(format!("expected no patch, got {}", show(patch))),
            (Some(file), None) => return Err(format!("expected a patch giving {file}, got none")),
            (Some(file), Some(patch)) => (read_object(&test_data.join(file))?, patch),
        };
        let mut object = review.pointer("/request/object").cloned().ok_or("the review has no request.object")?;
        json_patch::patch(&mut object, patch).map_err(|e| format!("the patch {} does not apply: {e}", show(patch)))?;
        if object != expected {
            let from_expected = json_patch::diff(&expected, &object);
            return Err(format!(
                "the patched object differs from {}: from it to the patched object: {}\n(patch: {})",
                self.patched.as_deref().unwrap_or_default(),
                show(&from_expected),
                show(patch)
            ));
        }
        let mut rerun = review.clone();
        if let Some(slot) = rerun.pointer_mut("/request/object") {
            *slot = object;
        }
        Ok(Some(rerun))
    }

    /// Checks the answer to the review [`FixtureCase::check`] returned: the
    /// patched object must be admitted with no further patch.
    pub fn check_rerun(&self, answer: &Answer) -> Result<(), String> {
        match (&answer.allowed, &answer.patch) {
            (true, None) => Ok(()),
            (false, _) => Err(format!("not idempotent: the patched object is denied: {}", answer.message)),
            (true, Some(patch)) => Err(format!("not idempotent: the patched object is patched again: {}", show(patch))),
        }
    }
}

fn show(patch: &json_patch::Patch) -> String {
    serde_json::to_string(patch).unwrap_or_default()
}

/// Reads an object file: YAML (which includes JSON).
fn read_object(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
}

/// Runs every case of `test_data/cases.yaml` natively through `evaluate`
/// (the function [`crate::policy!`] generates outside wasm, which decodes its
/// input exactly as the wasm export does), checks each with
/// [`FixtureCase::check`] and its idempotence, and checks that every
/// `*.json` fixture of `test_data/` is listed. Returns the number of cases;
/// the error lists every failing case.
pub fn run_cases(test_data: &Path, evaluate: fn(&[u8]) -> Outcome) -> Result<usize, String> {
    let cases = load_cases(test_data)?;
    let answer = |review: &Value, settings: &Value| -> Result<Answer, String> {
        let request = review.get("request").ok_or("the review has no request")?;
        // Written in the API server's field order, so a policy's object
        // projection decodes the object as in production.
        let input = format!(r#"{{"request":{},"settings":{settings}}}"#, crate::request_json(request));
        match evaluate(input.as_bytes()) {
            Outcome::Verdict(verdict) => Ok(Answer::from_verdict(verdict, request.get("object"))),
            Outcome::Error { error } => Err(format!("the policy reported an error: {error}")),
        }
    };
    let mut failures = Vec::new();
    for case in &cases {
        let settings = case.settings_json();
        let result = case.context_objects(test_data).map(Context::new).and_then(|context| {
            let _installed = context.install();
            let review = case.review(test_data)?;
            let first = answer(&review, &settings)?;
            match case.check(test_data, &review, &first)? {
                Some(rerun) => case.check_rerun(&answer(&rerun, &settings)?),
                None => Ok(()),
            }
        });
        if let Err(e) = result {
            failures.push(format!("{} (settings {settings}): {e}", case.request));
        }
    }
    let listed: Vec<&str> = cases.iter().map(|c| c.request.as_str()).collect();
    let dir = std::fs::read_dir(test_data).map_err(|e| format!("reading {}: {e}", test_data.display()))?;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !listed.contains(&name.as_str()) {
            failures.push(format!("test_data/{name} has no entry in cases.yaml"));
        }
    }
    if failures.is_empty() { Ok(cases.len()) } else { Err(failures.join("\n\n")) }
}

/// The native test double of the host's context caches: the objects lookups
/// are answered from while it is installed on the current thread. Filtering
/// is [`Query::matches`], the code the host uses.
#[derive(Debug, Clone, Default)]
pub struct Context {
    objects: Vec<Value>,
    granted: Option<Vec<(String, String)>>,
}

thread_local! {
    static INSTALLED: std::cell::RefCell<Option<Context>> = const { std::cell::RefCell::new(None) };
}

/// Uninstalls a [`Context`] when dropped.
#[derive(Debug)]
pub struct Installed(());

impl Drop for Installed {
    fn drop(&mut self) {
        INSTALLED.with(|c| c.borrow_mut().take());
    }
}

impl Context {
    /// Lookups of any kind are answered from `objects`.
    pub fn new(objects: Vec<Value>) -> Self {
        Self { objects, granted: None }
    }

    /// Only these `(apiVersion, kind)` may be looked up; others are refused
    /// as the server refuses kinds a policy is not granted.
    #[must_use]
    pub fn granting(mut self, kinds: &[(&str, &str)]) -> Self {
        self.granted = Some(kinds.iter().map(|(a, k)| ((*a).to_owned(), (*k).to_owned())).collect());
        self
    }

    /// Answers this thread's lookups until the returned guard is dropped.
    pub fn install(self) -> Installed {
        INSTALLED.with(|c| *c.borrow_mut() = Some(self));
        Installed(())
    }

    fn answer(&self, query: &Query) -> Result<Vec<u8>, LookupError> {
        let checked = query.check()?;
        if let Some(granted) = &self.granted
            && !granted.iter().any(|(a, k)| *a == query.api_version && *k == query.kind)
        {
            return Err(LookupError::new(format!(
                "{} {} is not granted to this policy",
                query.api_version, query.kind
            )));
        }
        let items: Vec<&Value> = self
            .objects
            .iter()
            .filter(|o| {
                o.get("apiVersion").and_then(Value::as_str) == Some(query.api_version.as_str())
                    && o.get("kind").and_then(Value::as_str) == Some(query.kind.as_str())
                    && query.matches(&checked, o)
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "items": items })).map_err(|e| LookupError::new(e.to_string()))
    }
}

/// Answers a lookup natively from the installed [`Context`] (none installed:
/// an error saying so).
pub(crate) fn answer_lookup(query: &[u8]) -> Result<Vec<u8>, LookupError> {
    let query: Query = serde_json::from_slice(query).map_err(|e| LookupError::new(format!("invalid query: {e}")))?;
    INSTALLED.with(|c| match c.borrow().as_ref() {
        Some(context) => context.answer(&query),
        None => Err(LookupError::new("no context is installed (portcullis_sdk::testing::Context::install)")),
    })
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

/// Runs `policy` on `request` with settings JSON, the settings decoded and
/// validated as the server does. The request is used as given, its object
/// raw: a policy's object projection (`policy!(..., object = ...)`) is not
/// applied here; [`run_cases`] and the generated `evaluate` apply it.
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
