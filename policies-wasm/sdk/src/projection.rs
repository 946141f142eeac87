//! Decoding only the parts of an object a policy reads or patches.
//!
//! A mutating policy works on the raw JSON value (so that a patch keeps
//! every field it does not know), but building a `serde_json::Value` of a
//! whole Pod — probes, ports, tolerations, status, managed fields — is most
//! of the cost of deciding on it. A [`Keep`] tree names the fields to decode;
//! everything else is skipped by the parser without being built. Array
//! elements keep their positions, so JSON Pointers into the projected value
//! are valid in the original object.
//!
//! The projection must contain every location the policy reads, and every
//! location its patch touches *and the parents it checks for existence*: a
//! field left out looks absent. The fixtures of a policy catch a projection
//! that is too narrow, since they apply the patch to the whole object and
//! compare the result.
//!
//! ```
//! use portcullis_sdk::projection::{Keep, parse};
//!
//! const NAMES: Keep = Keep::Fields(&[("spec", Keep::Fields(&[("containers", Keep::Items(&Keep::Fields(&[("name", Keep::All)])))]))]);
//! let pod = r#"{"spec": {"containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 80}]}], "dnsPolicy": "ClusterFirst"}}"#;
//! assert_eq!(parse(pod, &NAMES)?, serde_json::json!({"spec": {"containers": [{"name": "app"}]}}));
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Which parts of a JSON value to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The whole value.
    All,
    /// For a map, these fields (each with its own projection); other fields
    /// are skipped. Any other value is kept whole.
    Fields(&'static [(&'static str, Keep)]),
    /// For an array, every element, each projected so. Any other value is kept whole.
    Items(&'static Keep),
}

/// Decodes `json`, keeping what `keep` names.
pub fn parse(json: &str, keep: &Keep) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let value = Projected(keep).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Decodes a value keeping what the projection names.
pub(crate) struct Projected<'k>(pub(crate) &'k Keep);

impl<'de> DeserializeSeed<'de> for Projected<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep::All => Value::deserialize(deserializer),
            keep => deserializer.deserialize_any(ProjectedVisitor(keep)),
        }
    }
}

struct ProjectedVisitor<'k>(&'k Keep);

/// A map key, borrowed from the input when it has no escapes.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for ProjectedVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let element: &Keep = match self.0 {
            Keep::Items(element) => element,
            _ => &Keep::All,
        };
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(Projected(element))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        match self.0 {
            Keep::Fields(fields) => {
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match fields.iter().find(|(name, _)| *name == key) {
                        Some((_, keep)) => {
                            let value = map.next_value_seed(Projected(keep))?;
                            out.insert(key.into_owned(), value);
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
            }
            _ => {
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value = map.next_value_seed(Projected(&Keep::All))?;
                    out.insert(key.into_owned(), value);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const KEEP: Keep = Keep::Fields(&[
        ("metadata", Keep::Fields(&[("labels", Keep::All), ("name", Keep::All)])),
        (
            "spec",
            Keep::Fields(&[("containers", Keep::Items(&Keep::Fields(&[("name", Keep::All), ("env", Keep::All)])))]),
        ),
    ]);

    #[test]
    fn keeps_only_what_is_named_and_array_positions() -> Result<(), serde_json::Error> {
        let object = json!({
            "metadata": {"name": "a", "labels": {"x/y": "1"}, "annotations": {"big": "..."}, "managedFields": [{}]},
            "spec": {"containers": [{"name": "a", "image": "i", "env": [{"name": "K", "value": "v"}]}, {"name": "b", "ports": []}],
                     "tolerations": [{"key": "k"}]},
            "status": {"phase": "Pending"},
        });
        let kept = parse(&object.to_string(), &KEEP)?;
        assert_eq!(
            kept,
            json!({"metadata": {"name": "a", "labels": {"x/y": "1"}},
                   "spec": {"containers": [{"name": "a", "env": [{"name": "K", "value": "v"}]}, {"name": "b"}]}})
        );
        Ok(())
    }

    #[test]
    fn unexpected_shapes_are_kept_whole_so_policies_can_report_them() -> Result<(), serde_json::Error> {
        assert_eq!(
            parse(r#"{"metadata": "oops", "spec": {"containers": {"a": 1}}}"#, &KEEP)?,
            json!({"metadata": "oops", "spec": {"containers": {"a": 1}}})
        );
        assert_eq!(parse("[1, 2]", &KEEP)?, json!([1, 2]));
        assert_eq!(parse(r#"{"metadata": {"name": "a\"b"}}"#, &KEEP)?, json!({"metadata": {"name": "a\"b"}}));
        assert!(parse(r#"{"metadata": "#, &KEEP).is_err());
        assert!(parse(r#"{} trailing"#, &KEEP).is_err());
        Ok(())
    }
}
