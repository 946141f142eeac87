//! The `AdmissionRequest` as a policy sees it.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::projection::{Keep, Projected};

/// Which parts of the object a policy reads, chosen from the request's kind
/// and operation; `None` leaves the object raw. Declared with
/// `policy!(..., object = f)`, it lets the object be decoded while the input
/// is read, instead of being skipped then read again.
pub type ObjectProjection = fn(&GroupVersionKind, Operation) -> Option<&'static Keep>;

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
    /// The new object as the policy's [`ObjectProjection`] decoded it while
    /// the input was read (`object` is then `None`); the accessors below
    /// serve it, and [`Request::take_object_projected`] hands it over.
    #[serde(skip)]
    pub(crate) projected: RefCell<Option<ProjectedObject>>,
}

/// An object decoded with a projection as the input was read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProjectedObject {
    /// The projection it was decoded with.
    pub keep: &'static Keep,
    /// What it kept.
    pub value: Value,
}

impl Request {
    /// Decodes the new object into `T` (from the parts the policy's
    /// projection kept, when the object was decoded with one).
    pub fn object<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        match &*self.projected.borrow() {
            Some(p) if !p.value.is_null() => T::deserialize(&p.value).map(Some),
            Some(_) => Ok(None),
            None => decode(self.object.as_deref()),
        }
    }

    /// Decodes the old object into `T`.
    pub fn old_object<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        decode(self.old_object.as_deref())
    }

    /// The new object as a mutable JSON value, for mutators: edit it and return
    /// it with [`crate::Verdict::mutate`] so that fields unknown to the policy survive.
    pub fn object_value(&self) -> Result<Option<serde_json::Value>, serde_json::Error> {
        self.object()
    }

    /// The new object as a JSON value holding only what `keep` names (see
    /// [`crate::projection`]): cheaper than [`Request::object_value`] for a
    /// mutator that reads and patches a few fields of a large object. When
    /// the policy's [`ObjectProjection`] already decoded the object with
    /// `keep`, this is that value.
    pub fn object_projected(&self, keep: &Keep) -> Result<Option<serde_json::Value>, serde_json::Error> {
        if let Some(p) = &*self.projected.borrow() {
            if p.keep == keep {
                return Ok(Some(p.value.clone()).filter(|v| !v.is_null()));
            }
            // Decoded with another projection: only what both keep is there.
            return match &p.value {
                Value::Null => Ok(None),
                value => crate::projection::parse(&value.to_string(), keep).map(Some),
            };
        }
        match self.object.as_deref() {
            Some(raw) if raw.get() != "null" => crate::projection::parse(raw.get(), keep).map(Some),
            _ => Ok(None),
        }
    }

    /// [`Request::object_projected`], handing over the value decoded as the
    /// input was read instead of copying it: the request no longer holds the
    /// object afterwards (the accessors then find none). For the one place a
    /// policy takes the object it patches.
    pub fn take_object_projected(&self, keep: &Keep) -> Result<Option<serde_json::Value>, serde_json::Error> {
        let taken = self.projected.borrow_mut().take_if(|p| p.keep == keep);
        match taken {
            Some(p) => Ok(Some(p.value).filter(|v| !v.is_null())),
            None => self.object_projected(keep),
        }
    }
}

fn decode<T: DeserializeOwned>(raw: Option<&RawValue>) -> Result<Option<T>, serde_json::Error> {
    match raw {
        Some(raw) if raw.get() != "null" => serde_json::from_str(raw.get()).map(Some),
        _ => Ok(None),
    }
}

/// Decodes a request, the object with `projection` when it names one for
/// the request's kind and operation. serde's derive cannot pass a value to a
/// field's decoder, so this visits the fields itself; it must decode what
/// the derive decodes (a test compares them).
pub(crate) struct RequestSeed(pub(crate) ObjectProjection);

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = Request;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Request, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = Request;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionRequest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Request, A::Error> {
        let mut uid = None;
        let mut kind: Option<GroupVersionKind> = None;
        let mut operation = None;
        let mut request = Request {
            uid: String::new(),
            kind: GroupVersionKind::default(),
            resource: GroupVersionResource::default(),
            sub_resource: None,
            request_kind: None,
            request_resource: None,
            request_sub_resource: None,
            name: None,
            namespace: None,
            operation: Operation::Create,
            user_info: UserInfo::default(),
            object: None,
            old_object: None,
            dry_run: None,
            options: None,
            projected: RefCell::new(None),
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "uid" => uid = Some(map.next_value()?),
                "kind" => kind = Some(map.next_value()?),
                "resource" => request.resource = map.next_value()?,
                "subResource" => request.sub_resource = map.next_value()?,
                "requestKind" => request.request_kind = map.next_value()?,
                "requestResource" => request.request_resource = map.next_value()?,
                "requestSubResource" => request.request_sub_resource = map.next_value()?,
                "name" => request.name = map.next_value()?,
                "namespace" => request.namespace = map.next_value()?,
                "operation" => operation = Some(map.next_value()?),
                "userInfo" => request.user_info = map.next_value()?,
                "object" => {
                    // The API server writes `kind` and `operation` before
                    // `object`; in another order the object stays raw.
                    let keep = match (&kind, operation) {
                        (Some(kind), Some(operation)) => (self.0)(kind, operation),
                        _ => None,
                    };
                    match keep {
                        Some(keep) => {
                            let value = map.next_value_seed(Projected(keep))?;
                            request.object = None;
                            request.projected = RefCell::new(Some(ProjectedObject { keep, value }));
                        }
                        None => {
                            request.object = map.next_value()?;
                            request.projected = RefCell::new(None);
                        }
                    }
                }
                "oldObject" => request.old_object = map.next_value()?,
                "dryRun" => request.dry_run = map.next_value()?,
                "options" => request.options = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        request.uid = uid.ok_or_else(|| de::Error::missing_field("uid"))?;
        request.kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        request.operation = operation.ok_or_else(|| de::Error::missing_field("operation"))?;
        Ok(request)
    }
}
