//! Context lookups: reading other objects of the cluster from a policy.
//!
//! A policy whose config entry grants it kinds (`context:` in the server
//! config) may look objects of those kinds up with [`lookup`]. The host
//! answers from watch-backed caches (or, offline, from a file of objects):
//! no API call per admission request. A kind that is not granted is refused
//! with an error naming it.
//!
//! The query and the matching rules live here, in one place: the host's
//! caches filter with [`Query::matches`] (adding indexes on top), and the
//! native test double ([`testing::Context`](crate::testing::Context)) uses
//! the same code, so a policy's unit tests see exactly what the server would
//! answer.
//!
//! ```no_run
//! use portcullis_sdk::lookup::{Query, lookup};
//!
//! // HorizontalPodAutoscalers of namespace `shop` that scale Deployment `web`.
//! let hpas = lookup(
//!     &Query::new("autoscaling/v2", "HorizontalPodAutoscaler")
//!         .namespace("shop")
//!         .field("/spec/scaleTargetRef/kind", "Deployment")
//!         .field("/spec/scaleTargetRef/name", "web"),
//! )?;
//! # Ok::<(), portcullis_sdk::lookup::LookupError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What to look up: objects of one kind, optionally narrowed by namespace,
/// name, label selector and exact string values at JSON Pointers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Query {
    /// `group/version` or `v1`, as in the object's `apiVersion`.
    pub api_version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Only objects of this namespace (all namespaces when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only the object of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A label selector in its string form (`app=web,tier in (a,b),!canary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// JSON Pointer → the exact string the object must hold there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

impl Query {
    /// Objects of `kind` in `api_version`.
    pub fn new(api_version: impl Into<String>, kind: impl Into<String>) -> Self {
        Self { api_version: api_version.into(), kind: kind.into(), ..Self::default() }
    }

    /// Only in `namespace`.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Only the object called `name`.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only objects whose labels match `selector`.
    #[must_use]
    pub fn label_selector(mut self, selector: impl Into<String>) -> Self {
        self.label_selector = Some(selector.into());
        self
    }

    /// Only objects holding the string `value` at JSON Pointer `pointer`.
    #[must_use]
    pub fn field(mut self, pointer: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.insert(pointer.into(), value.into());
        self
    }

    /// Checks what the host would refuse: empty kind or version, a bad
    /// label selector, a field that is not a JSON Pointer.
    pub fn check(&self) -> Result<Checked, LookupError> {
        if self.api_version.is_empty() || self.kind.is_empty() {
            return Err(LookupError::new("a lookup needs apiVersion and kind"));
        }
        if let Some(p) = self.fields.keys().find(|p| !p.starts_with('/')) {
            return Err(LookupError::new(format!("fields: {p:?} is not a JSON Pointer (it starts with /)")));
        }
        let selector = match &self.label_selector {
            Some(s) => LabelSelector::parse(s).map_err(|e| LookupError::new(format!("labelSelector {s:?}: {e}")))?,
            None => LabelSelector::default(),
        };
        Ok(Checked { selector })
    }

    /// Whether `object` (of this query's kind) is in the answer, given the
    /// checked selector. Namespace and name come from `metadata`.
    pub fn matches(&self, checked: &Checked, object: &Value) -> bool {
        self.matches_candidate(checked, object)
    }

    /// [`Query::matches`] over any representation of an object (the host's
    /// caches keep JSON text, parsed labels and field indexes).
    pub fn matches_candidate(&self, checked: &Checked, object: &impl Candidate) -> bool {
        self.namespace.as_deref().is_none_or(|ns| object.namespace() == ns)
            && self.name.as_deref().is_none_or(|n| object.name() == n)
            && checked.selector.matches(|key| object.label(key))
            && self.fields.iter().all(|(p, want)| object.field(p) == Some(want.as_str()))
    }
}

/// What a query reads of an object.
pub trait Candidate {
    /// `metadata.namespace` (empty when absent).
    fn namespace(&self) -> &str;
    /// `metadata.name` (empty when absent).
    fn name(&self) -> &str;
    /// The value of label `key`.
    fn label(&self, key: &str) -> Option<&str>;
    /// The string at JSON Pointer `pointer` (not a string: `None`).
    fn field(&self, pointer: &str) -> Option<&str>;
}

impl Candidate for Value {
    fn namespace(&self) -> &str {
        self.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.pointer("/metadata/labels")?.get(key)?.as_str()
    }

    fn field(&self, pointer: &str) -> Option<&str> {
        self.pointer(pointer)?.as_str()
    }
}

/// A query whose selector has been parsed ([`Query::check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// The parsed label selector.
    pub selector: LabelSelector,
}

/// Why a lookup has no answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupError {
    /// What went wrong, e.g. `policy "x" may not look up apps/v1 DaemonSet`.
    pub error: String,
}

impl LookupError {
    /// An error with this message.
    pub fn new(error: impl Into<String>) -> Self {
        Self { error: error.into() }
    }
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lookup failed: {}", self.error)
    }
}

impl std::error::Error for LookupError {}

/// The host's answer: the matching objects, or an error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum Answer<T> {
    Error { error: String },
    Items { items: Vec<T> },
}

/// Decodes the host's answer (`{"items": [...]}` or `{"error": "..."}`).
pub fn decode_answer<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, LookupError> {
    match serde_json::from_slice::<Answer<T>>(bytes) {
        Ok(Answer::Items { items }) => Ok(items),
        Ok(Answer::Error { error }) => Err(LookupError { error }),
        Err(e) => Err(LookupError::new(format!("cannot decode the host's answer: {e}"))),
    }
}

/// Looks objects up and decodes each as `T` (e.g. a k8s-openapi type, or a
/// small struct of the fields the policy reads).
pub fn lookup_as<T: serde::de::DeserializeOwned>(query: &Query) -> Result<Vec<T>, LookupError> {
    query.check()?;
    let request = serde_json::to_vec(query).map_err(|e| LookupError::new(e.to_string()))?;
    decode_answer(&host::lookup(&request)?)
}

/// Looks objects up as raw JSON.
pub fn lookup(query: &Query) -> Result<Vec<Value>, LookupError> {
    lookup_as(query)
}

#[cfg(target_arch = "wasm32")]
mod host {
    use super::LookupError;

    /// Calls the `portcullis::lookup` import.
    pub(super) fn lookup(query: &[u8]) -> Result<Vec<u8>, LookupError> {
        Ok(crate::abi::host_lookup(query))
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    use super::LookupError;

    /// Natively, the objects installed by [`crate::testing::Context::install`].
    pub(super) fn lookup(query: &[u8]) -> Result<Vec<u8>, LookupError> {
        crate::testing::answer_lookup(query)
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key=value`, `key==value`
    Equals(String, String),
    /// `key!=value` (also true when the label is absent)
    NotEquals(String, String),
    /// `key in (a,b)`
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when absent)
    NotIn(String, Vec<String>),
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
}

/// A label selector in Kubernetes' string form: requirements separated by
/// commas, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses `app=web,tier in (a,b),!canary,env!=dev,track notin (x),owner`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        let mut rest = s.trim();
        while !rest.is_empty() {
            let (requirement, after) = parse_requirement(rest)?;
            requirements.push(requirement);
            rest = after.trim_start();
            if let Some(after_comma) = rest.strip_prefix(',') {
                rest = after_comma.trim_start();
                if rest.is_empty() {
                    return Err("ends with a comma".into());
                }
            } else if !rest.is_empty() {
                return Err(format!("expected ',' before {rest:?}"));
            }
        }
        Ok(Self { requirements })
    }

    /// Whether labels (given by a lookup function) satisfy every requirement.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn take_while(s: &str, pred: impl Fn(char) -> bool) -> (&str, &str) {
    let end = s.find(|c| !pred(c)).unwrap_or(s.len());
    s.split_at(end)
}

fn parse_requirement(s: &str) -> Result<(Requirement, &str), String> {
    if let Some(rest) = s.strip_prefix('!') {
        let (key, rest) = take_while(rest.trim_start(), is_key_char);
        if key.is_empty() {
            return Err("'!' must be followed by a label key".into());
        }
        return Ok((Requirement::DoesNotExist(key.into()), rest));
    }
    let (key, rest) = take_while(s, is_key_char);
    if key.is_empty() {
        return Err(format!("expected a label key at {s:?}"));
    }
    let key = key.to_string();
    let trimmed = rest.trim_start();
    for (op, eq) in [("==", true), ("!=", false), ("=", true)] {
        if let Some(after) = trimmed.strip_prefix(op) {
            let (value, rest) = take_while(after.trim_start(), is_value_char);
            let req =
                if eq { Requirement::Equals(key, value.into()) } else { Requirement::NotEquals(key, value.into()) };
            return Ok((req, rest));
        }
    }
    for (word, is_in) in [("in", true), ("notin", false)] {
        let Some(after) = trimmed.strip_prefix(word) else { continue };
        let Some(list) = after.trim_start().strip_prefix('(') else { continue };
        let Some((values, rest)) = list.split_once(')') else {
            return Err(format!("{word} list of {key:?} has no closing ')'"));
        };
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if let Some(bad) = values.iter().find(|v| !v.chars().all(is_value_char)) {
            return Err(format!("{bad:?} is not a label value"));
        }
        let req = if is_in { Requirement::In(key, values) } else { Requirement::NotIn(key, values) };
        return Ok((req, rest));
    }
    Ok((Requirement::Exists(key), rest))
}

/// Reads objects from YAML text: several documents (`---`), each an object
/// or a `kind: List` (what `kubectl get hpa,deploy -o yaml` prints) whose
/// `items` are taken. Empty documents are skipped.
#[cfg(not(target_arch = "wasm32"))]
pub fn objects_from_yaml(text: &str) -> Result<Vec<Value>, String> {
    let mut objects = Vec::new();
    // JSON (`kubectl get -o json`) is YAML too, but serde_json reads it many
    // times faster: a file of thousands of objects loads in milliseconds.
    let documents: Vec<Result<Value, String>> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).map_err(|e| e.to_string())]
    } else {
        serde_yaml::Deserializer::from_str(text).map(|d| Value::deserialize(d).map_err(|e| e.to_string())).collect()
    };
    for (i, document) in documents.into_iter().enumerate() {
        let value = document.map_err(|e| format!("document {}: {e}", i + 1))?;
        match value {
            Value::Null => {}
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) => {
                let items = map.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                objects.extend(items);
            }
            Value::Object(_) => objects.push(value),
            _ => return Err(format!("document {}: not an object", i + 1)),
        }
    }
    for (i, object) in objects.iter().enumerate() {
        for field in ["/apiVersion", "/kind", "/metadata/name"] {
            if object.pointer(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(format!("object {}: {} is missing", i + 1, &field[1..].replace('/', ".")));
            }
        }
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn selector(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn label_selectors() {
        let labels = json!({"app": "web", "tier": "front", "env": "prod"});
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        for (s, expected) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app = web , tier=front", true),
            ("app=api", false),
            ("app!=api", true),
            ("missing!=x", true),
            ("tier in (front, back)", true),
            ("tier in (back)", false),
            ("tier notin (back)", true),
            ("missing notin (back)", true),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,!canary,env in (prod)", true),
            ("example.com/team", false),
        ] {
            assert_eq!(selector(s).matches(label), expected, "{s}");
        }
        for bad in ["app=web,", "=web", "app in (a", "a b", "!", "app in (a b)"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn queries_match_namespace_name_labels_and_fields() -> Result<(), LookupError> {
        let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2}});
        let q = Query::new("autoscaling/v2", "HorizontalPodAutoscaler");
        let yes = |q: &Query| q.check().map(|c| q.matches(&c, &hpa));
        assert!(yes(&q)?);
        assert!(yes(&q.clone().namespace("shop").name("web").label_selector("app=web"))?);
        assert!(yes(&q.clone().field("/spec/scaleTargetRef/name", "web"))?);
        assert!(!yes(&q.clone().namespace("other"))?);
        assert!(!yes(&q.clone().name("api"))?);
        assert!(!yes(&q.clone().label_selector("app=api"))?);
        assert!(!yes(&q.clone().field("/spec/scaleTargetRef/name", "api"))?);
        assert!(!yes(&q.clone().field("/spec/minReplicas", "2"))?, "only strings match");
        assert!(q.clone().field("spec", "x").check().is_err());
        assert!(q.clone().label_selector("a in (").check().is_err());
        assert!(Query::new("", "Deployment").check().is_err());
        Ok(())
    }

    #[test]
    fn queries_serialize_in_camel_case_without_empty_fields() {
        let q = Query::new("apps/v1", "Deployment").namespace("shop").label_selector("app=web");
        assert_eq!(
            serde_json::to_value(&q).unwrap_or_default(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "labelSelector": "app=web"})
        );
    }

    #[test]
    fn answers_decode() {
        assert_eq!(decode_answer::<Value>(br#"{"items": [{"a": 1}]}"#), Ok(vec![json!({"a": 1})]));
        assert_eq!(decode_answer::<Value>(br#"{"error": "no"}"#), Err(LookupError::new("no")));
        assert!(decode_answer::<Value>(b"[").is_err());
    }

    #[test]
    fn objects_from_documents_and_lists() -> Result<(), String> {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: apps/v1, kind: Deployment, metadata: {name: a}}\n\
                    - {apiVersion: apps/v1, kind: Deployment, metadata: {name: b}}\n---\n---\n\
                    apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: c}\n";
        let objects = objects_from_yaml(text)?;
        let names: Vec<&str> = objects.iter().filter_map(|o| o.pointer("/metadata/name")?.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(objects_from_yaml("- 1\n").is_err());
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j"}}]}"#;
        assert_eq!(objects_from_yaml(json)?.len(), 1);
        assert!(objects_from_yaml("{not json").is_err());
        assert!(objects_from_yaml("kind: X\nmetadata: {name: a}\n").is_err_and(|e| e.contains("apiVersion")));
        Ok(())
    }
}
