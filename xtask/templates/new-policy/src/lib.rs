//! Portcullis policy `{{name}}` ({{kind}}): {{description}}.
//!
{{^context}}
//! Every object must carry each label of the `labels` setting with its
//! value (`environment: production`, say, so that a manifest rendered for
//! another environment cannot land here).
{{/context}}
{{#context}}
//! Every namespaced object must carry each label of the `namespaceLabels`
//! setting with the value its Namespace has (`team`, say, so that costs and
//! alerts reach the team that owns the namespace). The Namespace is looked up
//! in the server's watch-backed cache: the policy's config entry must grant
//! `v1 Namespace`.
{{/context}}
{{#mutating}}
//!
//! A missing label is added with a JSON Patch; one set to another value is
//! denied.
{{/mutating}}
{{^mutating}}
//!
//! A missing label, or one set to another value, is denied.
{{/mutating}}
//!
//! [`validate`] reads the request and hands plain data to [`labels::check`],
//! the rule itself, unit-tested natively; `portcullis_sdk::policy!` turns
//! [`validate`] into the wasm exports. The README next to `Cargo.toml` is
//! the user's reference.

pub mod labels;
pub mod settings;

use std::collections::BTreeMap;

{{#context}}
use portcullis_sdk::lookup::{Query, lookup_as};
{{/context}}
{{#mutating}}
use portcullis_sdk::mutation::Mutation;
{{/mutating}}
use portcullis_sdk::projection::Keep;
use portcullis_sdk::serde_json::Value;
use portcullis_sdk::{Operation, Request, Verdict};
use serde::Deserialize;

pub use crate::settings::Settings;

/// Decides on one admission request.
///
/// CREATE and UPDATE of any kind are reviewed (the webhook configuration's
/// rules choose the kinds); other operations, subresources, objects being
/// deleted and objects of `exemptNamespaces` are admitted untouched. A
/// missing or malformed object is an error: the host then applies the
/// policy's `failurePolicy`.
pub fn validate(req: &Request, settings: &Settings) -> Result<Verdict, String> {
    let write = matches!(req.operation, Operation::Create | Operation::Update);
    if !write || req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Ok(Verdict::allow());
    }
    let object = req
        .object_projected(&READ)
        .map_err(|e| format!("cannot decode the object: {e}"))?
        .ok_or_else(|| "the request has no object to check".to_string())?;
    let meta = Metadata::of(&object)?;
    let namespace = meta.namespace.as_deref().or(req.namespace.as_deref()).unwrap_or_default();
    if meta.deletion_timestamp.is_some() || settings.exempts(namespace) {
        return Ok(Verdict::allow());
    }
{{#context}}
    if namespace.is_empty() {
        // Cluster-scoped: there is no Namespace to take labels from.
        return Ok(Verdict::allow());
    }
    let (expected, warnings) = namespace_labels(namespace, settings)?;
{{/context}}
{{^context}}
    let expected = settings.expected();
    let warnings = Vec::new();
{{/context}}
    let summary = format!("{} {} is not labelled as required", req.kind.kind, meta.display(req));
    let present = meta.labels.unwrap_or_default();
    let findings = labels::check(&present, &expected);
{{#mutating}}
    let mut problems = Vec::new();
    let mut mutation = Mutation::new(object);
    for finding in &findings {
        match finding {
            labels::Finding::Missing(label) => {
                mutation.set_label(&label.key, &label.value).map_err(|e| e.to_string())?;
            }
            labels::Finding::Wrong { .. } => problems.push(finding.to_string()),
        }
    }
    if !problems.is_empty() {
        return Ok(Verdict::deny_all(&summary, &problems).with_warnings(warnings));
    }
    Ok(mutation.into_verdict().with_warnings(warnings))
{{/mutating}}
{{^mutating}}
    let problems: Vec<String> = findings.iter().map(ToString::to_string).collect();
    Ok(Verdict::deny_all(&summary, &problems).with_warnings(warnings))
{{/mutating}}
}

portcullis_sdk::policy!(settings = Settings, validate = validate);

{{#context}}
/// The labels the object must carry: each of `namespaceLabels` with the
/// value its Namespace has, and warnings for what could not be required. A
/// Namespace not found (created by the same `kubectl apply`, the cache a
/// moment behind) or without the label requires nothing; a lookup error
/// (the kind is not granted, say) is an error.
fn namespace_labels(namespace: &str, settings: &Settings) -> Result<(Vec<labels::Expected>, Vec<String>), String> {
    let found: Vec<Namespace> = lookup_as(&Query::new("v1", "Namespace").name(namespace)).map_err(|e| e.to_string())?;
    let Some(found) = found.into_iter().next() else {
        return Ok((Vec::new(), vec![format!("namespace {namespace:?} was not found; its labels were not checked")]));
    };
    let from = found.metadata.labels.unwrap_or_default();
    let mut expected = Vec::new();
    let mut warnings = Vec::new();
    for key in &settings.namespace_labels {
        match from.get(key) {
            Some(value) => {
                expected.push(labels::Expected::new(key, value).from_source(format!("namespace {namespace:?}")));
            }
            None => warnings.push(format!("namespace {namespace:?} has no label {key}, so its objects need none")),
        }
    }
    Ok((expected, warnings))
}

/// A Namespace, as far as the policy reads it.
#[derive(Debug, Default, Deserialize)]
struct Namespace {
    #[serde(default)]
    metadata: Metadata,
}

{{/context}}
/// The parts of the object the policy reads (and patches): the parser skips
/// everything else without building it.
const READ: Keep = Keep::Fields(&[(
    "metadata",
    Keep::Fields(&[
        ("name", Keep::All),
        ("generateName", Keep::All),
        ("namespace", Keep::All),
        ("labels", Keep::All),
        ("deletionTimestamp", Keep::All),
    ]),
)]);

/// The metadata fields the policy reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Metadata {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    deletion_timestamp: Option<String>,
}

impl Metadata {
    /// The metadata of `object`; an error when the object is malformed
    /// (not a map, or labels that are not a map of strings).
    fn of(object: &Value) -> Result<Self, String> {
        if !object.is_object() {
            return Err("the object is malformed: it is not a JSON object".to_string());
        }
        match object.get("metadata") {
            None => Ok(Self::default()),
            Some(meta) => Option::<Self>::deserialize(meta)
                .map(Option::unwrap_or_default)
                .map_err(|e| format!("the object's metadata is malformed: {e}")),
        }
    }

    /// `"namespace/name"` of the object for messages (`name*` for a
    /// `generateName` prefix; no namespace for a cluster-scoped object).
    fn display(&self, req: &Request) -> String {
        let name = [self.name.as_deref(), req.name.as_deref()]
            .into_iter()
            .flatten()
            .find(|n| !n.is_empty())
            .map(str::to_string)
            .or_else(|| self.generate_name.as_ref().map(|prefix| format!("{prefix}*")))
            .unwrap_or_default();
        match self.namespace.as_deref().or(req.namespace.as_deref()) {
            Some(namespace) if !namespace.is_empty() => format!("{:?}", format!("{namespace}/{name}")),
            _ => format!("{name:?}"),
        }
    }
}

#[cfg(test)]
mod tests;
