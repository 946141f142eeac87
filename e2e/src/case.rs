//! The case files of `e2e/cases/`: one YAML file per case, holding the request
//! under test and the outcome the API server must produce. Parsing and checking
//! them needs no cluster, so their unit tests run everywhere.
//!
//! ```yaml
//! description: A non-TLS Ingress is denied with a message naming its host.
//! setup: []                # objects created before the request, removed after it
//! operation: create        # or update (the object then exists from `setup`)
//! object: {apiVersion: networking.k8s.io/v1, kind: Ingress, ...}
//! expect:
//!   outcome: denied        # or allowed
//!   message: ['"api.example.com" is not covered']
//!   warnings: []           # fragments of the API server's Warning headers
//!   fields: {}             # JSON Pointer -> value on the stored object (null: absent)
//!   webhooks:              # what the API server's metrics must show for the request
//!     - {name: ingress-tls.portcullis.dev, result: denied}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Errors loading case files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A case file or the cases directory could not be read.
    #[error("reading {path}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A case file is not YAML of the case shape.
    #[error("parsing case {path}")]
    Parse {
        /// Case file.
        path: PathBuf,
        /// What the parser said, with the location.
        #[source]
        source: serde_yaml::Error,
    },
    /// A case parses but cannot be run as written.
    #[error("case {path}: {reason}")]
    Invalid {
        /// Case file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest case name: the case namespace is `<name>-<8 characters>`, a DNS label.
pub const MAX_NAME_LEN: usize = 50;

/// The directory of the case files in this repository.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases")
}

/// One case: a request and the outcome it must have.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The file stem; also the stem of the case namespace.
    #[serde(skip)]
    pub name: String,
    /// What the case shows, in a sentence or two.
    pub description: String,
    /// Objects created (for real) before the request and deleted after the case:
    /// webhook configurations of this case, or the object an update starts from.
    #[serde(default)]
    pub setup: Vec<Value>,
    /// How the object is sent.
    #[serde(default)]
    pub operation: Operation,
    /// The object under test. Namespaced objects without a namespace go to the case namespace.
    pub object: Value,
    /// What the API server must answer.
    pub expect: Expect,
}

/// The request under test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// `POST` a new object.
    #[default]
    Create,
    /// `PUT` over an object that `setup` created.
    Update,
}

/// The outcome the API server must produce.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Admitted and stored, or refused.
    pub outcome: Outcome,
    /// Fragments that must all appear in the refusal message (denied only).
    #[serde(default)]
    pub message: Vec<String>,
    /// HTTP status of the refusal (denied only; any 4xx/5xx when absent).
    #[serde(default)]
    pub code: Option<u16>,
    /// Fragments that must each appear in some `Warning` header of the response.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// JSON Pointer -> value the stored object must have (allowed only): the
    /// changes of mutating webhooks, and fields they must have left alone.
    /// `null` means the field must be absent.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
    /// Webhooks the API server must (or must not) have called for the request,
    /// read from its admission metrics.
    #[serde(default)]
    pub webhooks: Vec<WebhookCall>,
}

/// Admitted or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The request succeeded and the object was stored.
    Allowed,
    /// The request was refused.
    Denied,
}

/// What one webhook did for the request under test.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookCall {
    /// The webhook's name in its configuration (`ingress-tls.portcullis.dev`).
    pub name: String,
    /// What the API server recorded for it.
    pub result: WebhookResult,
}

/// How a webhook call ended, as the API server's metrics tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookResult {
    /// Called and answered `allowed: true` (with or without a patch).
    Allowed,
    /// Called and answered `allowed: false`.
    Denied,
    /// Could not be called, and `failurePolicy: Fail` refused the request.
    Unreachable,
    /// Could not be called, and `failurePolicy: Ignore` let the request through.
    FailedOpen,
    /// Not called at all (excluded by a selector, rule or match condition).
    NotCalled,
}

impl Case {
    /// Reads and checks one case file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        let mut case: Case =
            serde_yaml::from_str(&text).map_err(|source| Error::Parse { path: path.into(), source })?;
        case.name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        case.check().map_err(|reason| Error::Invalid { path: path.into(), reason })?;
        Ok(case)
    }

    /// Reads the case called `name` from the repository's cases directory.
    pub fn named(name: &str) -> Result<Self> {
        Self::load(&cases_dir().join(format!("{name}.yaml")))
    }

    fn check(&self) -> Result<(), String> {
        let valid_label = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if !valid_label(&self.name) || self.name.len() > MAX_NAME_LEN {
            return Err(format!(
                "the file name must be a DNS label of at most {MAX_NAME_LEN} characters (it names the case namespace)"
            ));
        }
        for (i, object) in self.setup.iter().enumerate() {
            check_object(object).map_err(|e| format!("setup[{i}]: {e}"))?;
        }
        check_object(&self.object).map_err(|e| format!("object: {e}"))?;
        if self.operation == Operation::Update {
            let id = ObjectId::of(&self.object);
            if !self.setup.iter().any(|o| ObjectId::of(o) == id) {
                return Err("operation update needs the same object (kind, namespace, name) in setup".into());
            }
        }
        let e = &self.expect;
        match e.outcome {
            Outcome::Allowed if !e.message.is_empty() || e.code.is_some() => {
                return Err("expect.message and expect.code are for denied outcomes".into());
            }
            Outcome::Denied if !e.fields.is_empty() => {
                return Err("expect.fields is for allowed outcomes (a denied object is not stored)".into());
            }
            Outcome::Denied if e.message.is_empty() => {
                return Err("a denied outcome needs at least one expect.message fragment".into());
            }
            _ => {}
        }
        for pointer in e.fields.keys() {
            if !pointer.starts_with('/') {
                return Err(format!("expect.fields: {pointer:?} is not a JSON Pointer (starts with /)"));
            }
        }
        Ok(())
    }

    /// Every object this case sends, setup first.
    pub fn objects(&self) -> impl Iterator<Item = &Value> {
        self.setup.iter().chain(std::iter::once(&self.object))
    }
}

fn check_object(object: &Value) -> Result<(), String> {
    for field in ["apiVersion", "kind"] {
        if object.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(format!("{field} is missing"));
        }
    }
    if object.pointer("/metadata/name").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err("metadata.name is missing (generateName is not supported: cleanup needs names)".into());
    }
    Ok(())
}

/// What identifies an object in a case file: apiVersion, kind, namespace (as
/// written, possibly empty) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId {
    /// `group/version` or `version`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace written in the file; empty when the case namespace applies.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectId {
    /// Reads the identifying fields of an object (empty strings where absent).
    pub fn of(object: &Value) -> Self {
        let s = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
        Self {
            api_version: s("/apiVersion"),
            kind: s("/kind"),
            namespace: s("/metadata/namespace"),
            name: s("/metadata/name"),
        }
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Loads every case of a directory, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Case>> {
    let read = |source| Error::Read { path: dir.into(), source };
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            cases.push(Case::load(&path)?);
        }
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<Case, String> {
        let mut case: Case = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        case.name = name.into();
        case.check()?;
        Ok(case)
    }

    const MINIMAL: &str = "
description: d
object: {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}
expect: {outcome: allowed}
";

    #[test]
    fn every_case_file_parses_and_checks() {
        let cases = load_dir(&cases_dir()).expect("the case files load");
        assert!(cases.len() >= 10, "expected the full suite of cases, found {}", cases.len());
    }

    #[test]
    fn a_minimal_case_parses_with_defaults() {
        let case = parse("minimal", MINIMAL).expect("parses");
        assert_eq!(case.operation, Operation::Create);
        assert!(case.setup.is_empty() && case.expect.webhooks.is_empty());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = MINIMAL.replace("description: d", "description: d\nexpected: {}");
        assert!(parse("x", &text).expect_err("refused").contains("unknown field `expected`"));
    }

    #[test]
    fn a_denial_needs_a_message_fragment() {
        let text = MINIMAL.replace("outcome: allowed", "outcome: denied");
        assert!(parse("x", &text).expect_err("refused").contains("at least one expect.message"));
    }

    #[test]
    fn an_update_needs_its_object_in_setup() {
        let text = MINIMAL.replace("description: d", "description: d\noperation: update");
        assert!(parse("x", &text).expect_err("refused").contains("same object"));
    }

    #[test]
    fn case_names_must_be_dns_labels() {
        assert!(parse("Bad_Name", MINIMAL).expect_err("refused").contains("DNS label"));
        assert!(parse(&"a".repeat(MAX_NAME_LEN + 1), MINIMAL).is_err());
    }

    #[test]
    fn field_expectations_are_json_pointers() {
        let text = MINIMAL.replace("{outcome: allowed}", "{outcome: allowed, fields: {metadata.name: x}}");
        assert!(parse("x", &text).expect_err("refused").contains("not a JSON Pointer"));
    }
}
