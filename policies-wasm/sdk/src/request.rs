//! The `AdmissionRequest` as a policy sees it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Operation being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    /// `CREATE`
    Create,
    /// `UPDATE`
    Update,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
}

/// Group, version and kind of an object (`request.kind`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    /// API group; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version, e.g. `v1`.
    #[serde(default)]
    pub version: String,
    /// Kind, e.g. `Ingress`.
    #[serde(default)]
    pub kind: String,
}

impl GroupVersionKind {
    /// True when this is exactly `group/version, Kind=kind`.
    pub fn is(&self, group: &str, version: &str, kind: &str) -> bool {
        self.group == group && self.version == version && self.kind == kind
    }
}

/// Group, version and resource (`request.resource`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionResource {
    /// API group; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Plural resource name, e.g. `ingresses`.
    #[serde(default)]
    pub resource: String,
}

/// The user the request is made for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// User UID.
    #[serde(default)]
    pub uid: Option<String>,
    /// Groups the user belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes from the authenticator.
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// An admission request (`admission.k8s.io/v1` `AdmissionRequest`).
///
/// The object and old object stay as raw JSON until a policy decodes them into
/// the type it needs with [`Request::object`], so a policy pays only for the
/// fields it reads.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Request identifier, echoed by the host.
    pub uid: String,
    /// Kind of the object.
    pub kind: GroupVersionKind,
    /// Resource being requested.
    #[serde(default)]
    pub resource: GroupVersionResource,
    /// Subresource, e.g. `status` or `scale`.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// Kind of the original request, when the API server converted it (e.g. from an older version).
    #[serde(default)]
    pub request_kind: Option<GroupVersionKind>,
    /// Resource of the original request.
    #[serde(default)]
    pub request_resource: Option<GroupVersionResource>,
    /// Subresource of the original request.
    #[serde(default)]
    pub request_sub_resource: Option<String>,
    /// Object name (may be empty on CREATE with `generateName`).
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace, for namespaced objects.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Operation.
    pub operation: Operation,
    /// Requesting user.
    #[serde(default)]
    pub user_info: UserInfo,
    /// The new object (absent on DELETE).
    #[serde(default)]
    pub object: Option<Box<RawValue>>,
    /// The existing object (UPDATE and DELETE).
    #[serde(default)]
    pub old_object: Option<Box<RawValue>>,
    /// True for a dry run.
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// The operation's options (`CreateOptions`, `UpdateOptions`, ...), raw.
    #[serde(default)]
    pub options: Option<Box<RawValue>>,
}

impl Request {
    /// Decodes the new object into `T`.
    pub fn object<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        decode(self.object.as_deref())
    }

    /// Decodes the old object into `T`.
    pub fn old_object<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        decode(self.old_object.as_deref())
    }

    /// The new object as a mutable JSON value, for mutators: edit it and return
    /// it with [`crate::Verdict::mutate`] so that fields unknown to the policy survive.
    pub fn object_value(&self) -> Result<Option<serde_json::Value>, serde_json::Error> {
        decode(self.object.as_deref())
    }

    /// The new object as a JSON value holding only what `keep` names (see
    /// [`crate::projection`]): cheaper than [`Request::object_value`] for a
    /// mutator that reads and patches a few fields of a large object.
    pub fn object_projected(
        &self,
        keep: &crate::projection::Keep,
    ) -> Result<Option<serde_json::Value>, serde_json::Error> {
        match self.object.as_deref() {
            Some(raw) if raw.get() != "null" => crate::projection::parse(raw.get(), keep).map(Some),
            _ => Ok(None),
        }
    }
}

fn decode<T: DeserializeOwned>(raw: Option<&RawValue>) -> Result<Option<T>, serde_json::Error> {
    match raw {
        Some(raw) if raw.get() != "null" => serde_json::from_str(raw.get()).map(Some),
        _ => Ok(None),
    }
}
