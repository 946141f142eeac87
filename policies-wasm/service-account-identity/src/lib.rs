//! Portcullis policy `service-account-identity` (mutating): every workload
//! in a bound namespace runs as the right ServiceAccount, and every
//! ServiceAccount carries exactly the cloud identity the platform team
//! granted it (AWS IRSA, GKE Workload Identity, Azure Workload Identity),
//! and nothing it was not granted.
//!
//! - ServiceAccount CREATE/UPDATE ([`service_account`]): bound ones get the
//!   missing identity annotations of their binding; other or foreign
//!   identities are denied.
//! - Pod CREATE ([`pod`]): pods on `default` get their namespace's
//!   ServiceAccount (or are denied); pods of Azure-bound ServiceAccounts get
//!   the `azure.workload.identity/use` label; with token projection on, the
//!   environment, mount and projected token of AWS's and Azure's webhooks.
//!
//! Patches are built with [`portcullis_sdk::mutation`]: minimal, and empty
//! when the policy runs on its own output (`reinvocationPolicy: IfNeeded`).
//! The README next to `Cargo.toml` is the user's reference.

pub mod identity;
pub mod pod;
pub mod service_account;
pub mod settings;

use portcullis_sdk::json_patch::jsonptr::PointerBuf;
use portcullis_sdk::projection::Keep;
use portcullis_sdk::{GroupVersionKind, Operation, Request, Verdict};
use serde_json::Value;

pub use crate::settings::Settings;

/// Decides on one admission request.
///
/// CREATE and UPDATE of `v1` ServiceAccounts and CREATE of `v1` Pods are
/// reviewed; everything else (other kinds and operations, subresources,
/// objects being deleted) is admitted untouched. An object that is missing
/// or malformed (annotations that are not a map of strings, say) is an error:
/// the host then applies the policy's failurePolicy.
pub fn validate(req: &Request, settings: &Settings) -> Result<Verdict, String> {
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Ok(Verdict::allow());
    }
    let write = matches!(req.operation, Operation::Create | Operation::Update);
    if req.kind.is("", "v1", "ServiceAccount") && write {
        let Some(sa) = Object::of(req, "ServiceAccount", &Keep::All)? else { return Ok(Verdict::allow()) };
        service_account::review(sa, settings)
    } else if req.kind.is("", "v1", "Pod") && req.operation == Operation::Create {
        let Some(pod) = Object::of(req, "Pod", &pod::READ)? else { return Ok(Verdict::allow()) };
        pod::review(pod, settings)
    } else {
        Ok(Verdict::allow())
    }
}

portcullis_sdk::policy!(settings = Settings, validate = validate, object = object_projection);

/// A Pod being created is decoded with [`pod::READ`] as the input is read;
/// other objects stay raw until [`validate`] decodes them.
pub fn object_projection(kind: &GroupVersionKind, operation: Operation) -> Option<&'static Keep> {
    (kind.is("", "v1", "Pod") && operation == Operation::Create).then_some(&pod::READ)
}

/// The object under review, as raw JSON (so a patch keeps every field the
/// policy does not know), with its namespace and name.
#[derive(Debug)]
pub struct Object {
    /// The object.
    pub value: Value,
    /// Its namespace (from the object, else the request).
    pub namespace: String,
    /// Its name (from the object, else the request); empty with `generateName`.
    pub name: String,
    /// `"namespace/name"` for messages (`name*` for a `generateName` prefix).
    pub display: String,
}

impl Object {
    /// The request's object, the parts `keep` names; `None` when it is
    /// being deleted (only its finalizers change; denying would block the
    /// deletion).
    fn of(req: &Request, kind: &str, keep: &Keep) -> Result<Option<Self>, String> {
        let value = req
            .take_object_projected(keep)
            .map_err(|e| format!("cannot decode the object as a v1 {kind}: {e}"))?
            .ok_or_else(|| "the request has no object to check".to_string())?;
        if !value.is_object() {
            return Err(format!("the object is not a v1 {kind}: it is not a JSON object"));
        }
        for (field, expected) in [("apiVersion", "v1"), ("kind", kind)] {
            if let Some(found) = string_at(&value, &[field])?.filter(|f| *f != expected) {
                return Err(format!("the object is not a v1 {kind}: {field} is {found:?}"));
            }
        }
        if at(&value, &["metadata", "deletionTimestamp"]).is_some_and(|t| !t.is_null()) {
            return Ok(None);
        }
        let from = |field, fallback: Option<&str>| -> Result<String, String> {
            let found = string_at(&value, &["metadata", field])?;
            Ok(found.filter(|s| !s.is_empty()).or(fallback).unwrap_or_default().to_owned())
        };
        let namespace = from("namespace", req.namespace.as_deref())?;
        let name = from("name", req.name.as_deref())?;
        let shown_name = if name.is_empty() {
            format!("{}*", string_at(&value, &["metadata", "generateName"])?.unwrap_or_default())
        } else {
            name.clone()
        };
        let display = format!("{:?}", format!("{namespace}/{shown_name}"));
        Ok(Some(Self { value, namespace, name, display }))
    }
}

/// The value at `path` (unescaped keys; `serde_json`'s `pointer` would
/// unescape, and allocate, on every call).
pub(crate) fn at<'a>(object: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(object, |v, key| v.get(key))
}

/// The string at `path`; `None` when absent or null, an error when it is
/// another type (the object is malformed).
pub(crate) fn string_at<'a>(object: &'a Value, path: &[&str]) -> Result<Option<&'a str>, String> {
    match at(object, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("the object is malformed: {} is not a string", path.join("."))),
    }
}

/// The value of annotation `key`, checking that annotations are a map of strings.
pub(crate) fn annotation<'a>(object: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match at(object, &["metadata", "annotations"]) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("the object is malformed: annotation {key} is not a string")),
        },
        Some(_) => Err("the object is malformed: metadata.annotations is not a map".into()),
    }
}

/// A JSON Pointer from unescaped tokens.
pub(crate) fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

#[cfg(test)]
mod tests;
