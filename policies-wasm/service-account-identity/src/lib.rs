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
use portcullis_sdk::{Operation, Request, Verdict};
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
        let Some(sa) = Object::of(req, "ServiceAccount")? else { return Ok(Verdict::allow()) };
        service_account::review(sa, settings)
    } else if req.kind.is("", "v1", "Pod") && req.operation == Operation::Create {
        let Some(pod) = Object::of(req, "Pod")? else { return Ok(Verdict::allow()) };
        pod::review(pod, settings)
    } else {
        Ok(Verdict::allow())
    }
}

portcullis_sdk::policy!(settings = Settings, validate = validate);

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
    /// The request's object; `None` when it is being deleted (only its
    /// finalizers change; denying would block the deletion).
    fn of(req: &Request, kind: &str) -> Result<Option<Self>, String> {
        let value = req
            .object_value()
            .map_err(|e| format!("cannot decode the object as a v1 {kind}: {e}"))?
            .ok_or_else(|| "the request has no object to check".to_string())?;
        if !value.is_object() {
            return Err(format!("the object is not a v1 {kind}: it is not a JSON object"));
        }
        for (field, expected) in [("/apiVersion", "v1"), ("/kind", kind)] {
            if let Some(found) = string_at(&value, field)?.filter(|f| *f != expected) {
                return Err(format!("the object is not a v1 {kind}: {} is {found:?}", &field[1..]));
            }
        }
        if value.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
            return Ok(None);
        }
        let from = |pointer, fallback: Option<&str>| -> Result<String, String> {
            Ok(string_at(&value, pointer)?.filter(|s| !s.is_empty()).or(fallback).unwrap_or_default().to_owned())
        };
        let namespace = from("/metadata/namespace", req.namespace.as_deref())?;
        let name = from("/metadata/name", req.name.as_deref())?;
        let shown_name = if name.is_empty() {
            format!("{}*", string_at(&value, "/metadata/generateName")?.unwrap_or_default())
        } else {
            name.clone()
        };
        let display = format!("{:?}", format!("{namespace}/{shown_name}"));
        Ok(Some(Self { value, namespace, name, display }))
    }
}

/// The string at `pointer`; `None` when absent or null, an error when it is
/// another type (the object is malformed).
pub(crate) fn string_at<'a>(object: &'a Value, pointer: &str) -> Result<Option<&'a str>, String> {
    match object.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("the object is malformed: {} is not a string", dotted(pointer))),
    }
}

/// The value of annotation `key`, checking that annotations are a map of strings.
pub(crate) fn annotation<'a>(object: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match object.pointer("/metadata/annotations") {
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

/// `/metadata/name` as `metadata.name`.
fn dotted(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".").replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests;
