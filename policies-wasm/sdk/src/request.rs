//! The `AdmissionRequest` as a policy sees it.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::projection::{Keep, Key, Projected};

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
/// fields it reads; or, for a policy that declares an [`ObjectProjection`],
/// the object is decoded with it as the input is read (`object` is then
/// `None`; see [`Request::object_projected`]).
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
    /// Where the new object is: raw in `object`, decoded by the policy's
    /// [`ObjectProjection`] as the input was read, or handed over by
    /// [`Request::take_object_projected`].
    #[serde(skip)]
    pub(crate) state: RefCell<ObjectState>,
}

/// Where a request's new object is.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum ObjectState {
    /// In `Request::object`, raw (or absent).
    #[default]
    Raw,
    /// Decoded with a projection as the input was read.
    Projected {
        /// The projection it was decoded with.
        keep: &'static Keep,
        /// What it kept (`null` when the request's object was `null`).
        value: Value,
    },
    /// Handed over by [`Request::take_object_projected`].
    Taken,
}

impl Request {
    /// Decodes the new object into `T`: from the raw object, or from what
    /// the policy's [`ObjectProjection`] kept when the object was decoded
    /// with one (fields it skipped look absent).
    pub fn object<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        match &*self.state.borrow() {
            ObjectState::Raw => decode(self.object.as_deref()),
            ObjectState::Projected { value: Value::Null, .. } => Ok(None),
            ObjectState::Projected { value, .. } => T::deserialize(value).map(Some),
            ObjectState::Taken => Err(taken()),
        }
    }

    /// Decodes the old object into `T`.
    pub fn old_object<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        decode(self.old_object.as_deref())
    }

    /// The whole new object as a mutable JSON value, for mutators: edit it
    /// and return it with [`crate::Verdict::mutate`] so that fields unknown
    /// to the policy survive. An error when the object was decoded with the
    /// policy's [`ObjectProjection`]: it no longer holds the fields the
    /// projection skipped, which `Verdict::mutate` would remove.
    pub fn object_value(&self) -> Result<Option<serde_json::Value>, serde_json::Error> {
        match &*self.state.borrow() {
            ObjectState::Raw => decode(self.object.as_deref()),
            ObjectState::Projected { .. } => Err(serde::de::Error::custom(
                "the object was decoded with the policy's object projection, so it is not whole: \
                 use Request::object_projected with that projection",
            )),
            ObjectState::Taken => Err(taken()),
        }
    }

    /// The new object as a JSON value holding only what `keep` names (see
    /// [`crate::projection`]): cheaper than [`Request::object_value`] for a
    /// mutator that reads and patches a few fields of a large object. When
    /// the policy's [`ObjectProjection`] already decoded the object, this is
    /// that value, and `keep` must be the projection it was decoded with
    /// (another one is an error: the fields only it names are gone).
    pub fn object_projected(&self, keep: &Keep) -> Result<Option<serde_json::Value>, serde_json::Error> {
        match &*self.state.borrow() {
            ObjectState::Raw => project(self.object.as_deref(), keep),
            ObjectState::Projected { keep: decoded, value } => {
                check_same(decoded, keep)?;
                Ok(Some(value.clone()).filter(|v| !v.is_null()))
            }
            ObjectState::Taken => Err(taken()),
        }
    }

    /// [`Request::object_projected`], handing the value over instead of
    /// copying it: for the one place a policy takes the object it patches.
    /// Afterwards the request holds no object: every accessor of it is an
    /// error (not `None`, which would read as "no object").
    pub fn take_object_projected(&self, keep: &Keep) -> Result<Option<serde_json::Value>, serde_json::Error> {
        let state = self.state.replace(ObjectState::Taken);
        match state {
            ObjectState::Raw => project(self.object.as_deref(), keep),
            ObjectState::Projected { keep: decoded, value } => match check_same(decoded, keep) {
                Ok(()) => Ok(Some(value).filter(|v| !v.is_null())),
                Err(e) => {
                    self.state.replace(ObjectState::Projected { keep: decoded, value });
                    Err(e)
                }
            },
            ObjectState::Taken => Err(taken()),
        }
    }
}

/// The error of an accessor called after [`Request::take_object_projected`].
fn taken() -> serde_json::Error {
    serde::de::Error::custom("the object was already taken (Request::take_object_projected)")
}

/// Whether the object decoded with `decoded` can serve `asked`.
fn check_same(decoded: &Keep, asked: &Keep) -> Result<(), serde_json::Error> {
    if std::ptr::eq(decoded, asked) || decoded == asked {
        Ok(())
    } else {
        Err(serde::de::Error::custom(
            "the object was decoded with the policy's object projection, not the one asked for: \
             ask with the projection the policy declares",
        ))
    }
}

fn project(raw: Option<&RawValue>, keep: &Keep) -> Result<Option<Value>, serde_json::Error> {
    match raw {
        Some(raw) if raw.get() != "null" => crate::projection::parse(raw.get(), keep).map(Some),
        _ => Ok(None),
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
            state: RefCell::new(ObjectState::Raw),
        };
        // Which of `REQUEST_FIELDS` were seen: a repeated one is refused, as
        // the derive refuses it.
        let mut seen = 0u32;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let Some(field) = REQUEST_FIELDS.iter().position(|f| *f == key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if seen & (1 << field) != 0 {
                return Err(de::Error::duplicate_field(REQUEST_FIELDS[field]));
            }
            seen |= 1 << field;
            match REQUEST_FIELDS[field] {
                "uid" => request.uid = map.next_value()?,
                "kind" => request.kind = map.next_value()?,
                "resource" => request.resource = map.next_value()?,
                "subResource" => request.sub_resource = map.next_value()?,
                "requestKind" => request.request_kind = map.next_value()?,
                "requestResource" => request.request_resource = map.next_value()?,
                "requestSubResource" => request.request_sub_resource = map.next_value()?,
                "name" => request.name = map.next_value()?,
                "namespace" => request.namespace = map.next_value()?,
                "operation" => request.operation = map.next_value()?,
                "userInfo" => request.user_info = map.next_value()?,
                "object" => {
                    // The API server writes `kind` and `operation` before
                    // `object`; in another order the object stays raw.
                    let known = |name| seen & (1 << field_index(name)) != 0;
                    match (known("kind") && known("operation")).then(|| (self.0)(&request.kind, request.operation)) {
                        Some(Some(keep)) => {
                            let value = map.next_value_seed(Projected(keep))?;
                            request.state = RefCell::new(ObjectState::Projected { keep, value });
                        }
                        _ => request.object = map.next_value()?,
                    }
                }
                "oldObject" => request.old_object = map.next_value()?,
                "dryRun" => request.dry_run = map.next_value()?,
                _ => request.options = map.next_value()?,
            }
        }
        for required in ["uid", "kind", "operation"] {
            if seen & (1 << field_index(required)) == 0 {
                return Err(de::Error::missing_field(required));
            }
        }
        Ok(request)
    }
}

/// The fields of an `AdmissionRequest`, in the order the API server writes
/// them: `kind` and `operation` come before `object`, which an
/// [`ObjectProjection`] relies on.
pub const REQUEST_FIELDS: [&str; 15] = [
    "uid",
    "kind",
    "resource",
    "subResource",
    "requestKind",
    "requestResource",
    "requestSubResource",
    "name",
    "namespace",
    "operation",
    "userInfo",
    "object",
    "oldObject",
    "dryRun",
    "options",
];

fn field_index(name: &str) -> usize {
    REQUEST_FIELDS.iter().position(|f| *f == name).unwrap_or(REQUEST_FIELDS.len())
}

/// `request`, an `AdmissionRequest` as a JSON value, written with its
/// fields in the API server's order ([`REQUEST_FIELDS`]; other fields after
/// them), as the server hands it to a policy. A `serde_json::Value` keeps
/// its keys sorted, which puts `object` before `operation`: tests and tools
/// that build requests as values write them with this so that a policy's
/// [`ObjectProjection`] is exercised as in production.
pub fn request_json(request: &Value) -> String {
    let Value::Object(fields) = request else { return request.to_string() };
    let known = REQUEST_FIELDS.iter().filter_map(|name| fields.get_key_value(*name));
    let others = fields.iter().filter(|(name, _)| !REQUEST_FIELDS.contains(&name.as_str()));
    let members: Vec<String> =
        known.chain(others).map(|(name, value)| format!("{}:{value}", Value::from(name.as_str()))).collect();
    format!("{{{}}}", members.join(","))
}
