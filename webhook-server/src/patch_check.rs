//! Does a mutating policy's patch apply to the request's object? Answered
//! without decoding the whole object.
//!
//! The host checks every patch before sending it, so that a patch the API
//! server would refuse fails by the policy's failurePolicy instead. Decoding
//! the whole object into a `serde_json::Value` to apply the patch to it
//! cost more than the guest's evaluation (a 3 KB Pod: ~45 µs of the host's
//! ~60, most of it malloc and free). Only what the operations can reach
//! matters, so the object is decoded into a *skeleton*: the values on the
//! operations' paths, whole where an operation reads a value (`test`, the
//! `from` of `copy` and `move`), a placeholder where only existence counts
//! (the target of `add`, `remove`, `replace`), every element of an array on
//! a path (as placeholders, so indices and lengths stay true), and nothing
//! else. `json_patch` then applies the patch to the skeleton: it succeeds
//! exactly when it would on the whole object.
//!
//! Arrays are the subtle part. An `add`, `remove` or `move` inside an array
//! shifts the elements after it, so a later operation's index may reach an
//! element that had another index in the object: in an array that an
//! operation inserts into or removes from, every element is decoded with
//! the union of what any index of it needs.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use json_patch::Patch;
use json_patch::jsonptr::Pointer;
use serde::Deserialize as _;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::abi::{Op, Operation, RawPatch};

/// Longest patch whose unread values are left undecoded (see [`check`]).
const MAX_OPERATIONS_SPARED: usize = 256;

/// Why a patch was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The request has no object (or `object: null`) to patch.
    NoObject,
    /// An operation fails on the object (the message says which and why).
    DoesNotApply(String),
}

/// Checks that `patch` applies to the `object` of `raw_request` (the
/// AdmissionReview's `request`).
pub fn check(raw_request: &RawValue, patch: &RawPatch) -> Result<(), Refused> {
    let wanted = Wanted::of(&patch.0);
    let mut de = serde_json::Deserializer::from_str(raw_request.get());
    let object = de
        .deserialize_map(RequestObject(&wanted))
        .map_err(|e| Refused::DoesNotApply(format!("the request could not be read: {e}")))?;
    let mut skeleton = object.ok_or(Refused::NoObject)?;
    // Token counts of each operation's path and `from`, counted once.
    let depths: Vec<(usize, usize)> =
        patch.0.iter().map(|op| (op.path.count(), op.from.as_deref().map_or(0, Pointer::count))).collect();
    // Which values are read is a question over pairs of operations; past
    // this many, every value is decoded instead (linear, and what a patch
    // that long costs anyway), so a module cannot make it quadratic.
    let sparing = patch.0.len() <= MAX_OPERATIONS_SPARED;
    let operations = patch
        .0
        .iter()
        .enumerate()
        .map(|(i, op)| {
            op.decode(|raw| match !sparing || value_is_read(&patch.0, &depths, i) {
                true => serde_json::from_str(raw.get()),
                false => Ok(Value::Null),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Refused::DoesNotApply(format!("a value of the patch could not be read: {e}")))?;
    // Not `json_patch::patch`: on a failure it undoes the operations applied
    // so far, and panics when an undo fails (a `move` to its own parent,
    // then any failing operation). The skeleton is a scratch value: nothing
    // to undo.
    json_patch::patch_unsafe(&mut skeleton, &Patch(operations)).map_err(|e| Refused::DoesNotApply(e.to_string()))
}

/// Whether applying the operations after `ops[i]` can depend on what its
/// value holds rather than only on its being there: then the skeleton gets
/// the value itself, else a placeholder. A value can be read by a `test`
/// (its own, or a later one at or above where it went), moved or copied
/// elsewhere (a `from` at or above it), or descended into (a later path
/// below its parent: through an array's shifting indices, a path below any
/// sibling may reach it). And when a later operation inserts into or
/// removes from an array above its parent, the value's own pointer changes
/// (`/a/0/x` becomes `/a/1/x`), so from then on any path may reach it:
/// decoded too. Most of a mutator's values (appended variables, mounts,
/// volumes) are none of these, and are never decoded. `depths[j]` holds
/// the token counts of `ops[j]`'s path and `from`.
fn value_is_read(ops: &[Operation], depths: &[(usize, usize)], i: usize) -> bool {
    let op = &ops[i];
    let Some(parent) = op.path.parent() else { return true };
    if op.op == Op::Test {
        return true;
    }
    let depth = depths[i].0;
    ops[i + 1..].iter().zip(&depths[i + 1..]).any(|(later, &(path_depth, from_depth))| {
        let reads = |p: &Pointer| p.starts_with(parent) || parent.starts_with(p);
        let below = |p: &Pointer, p_depth: usize| p_depth > depth && p.starts_with(parent);
        // An insertion or removal at an array index (or `-`) whose array is above `parent`.
        let shifts_above = |p: &Pointer, p_depth: usize| {
            let last = p.as_str().rsplit('/').next().unwrap_or_default();
            let index = last == "-" || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()));
            index && p_depth < depth && p.parent().is_some_and(|array| parent.starts_with(array))
        };
        let from_reads = later.from.as_deref().is_some_and(|from| {
            reads(from) || below(from, from_depth) || (later.op == Op::Move && shifts_above(from, from_depth))
        });
        let path_reads = match later.op {
            Op::Test => reads(&later.path),
            Op::Replace => below(&later.path, path_depth),
            Op::Add | Op::Remove | Op::Move | Op::Copy => {
                below(&later.path, path_depth) || shifts_above(&later.path, path_depth)
            }
        };
        from_reads || path_reads
    })
}

/// The tokens of `path`, unescaped (RFC 6901: `~1` is `/`, then `~0` is
/// `~`), borrowed from it unless escaped.
fn decoded_tokens(path: &Pointer) -> impl Iterator<Item = Cow<'_, str>> {
    path.as_str().split('/').skip(1).map(|token| match token.contains('~') {
        true => Cow::Owned(token.replace("~1", "/").replace("~0", "~")),
        false => Cow::Borrowed(token),
    })
}

/// What of a value the patch can reach.
#[derive(Debug, Default, Clone)]
struct Wanted<'p> {
    /// Read by an operation: decoded whole.
    whole: bool,
    /// An operation inserts into or removes from it (when it is an array,
    /// its elements may change indices).
    shifts: bool,
    /// Members (or indices, as written in the pointers) on some path.
    children: BTreeMap<Cow<'p, str>, Wanted<'p>>,
}

impl<'p> Wanted<'p> {
    fn of(ops: &'p [Operation]) -> Self {
        let mut root = Self::default();
        for op in ops {
            match (op.op, op.from.as_deref()) {
                (Op::Add | Op::Remove, _) => root.target(&op.path, true),
                (Op::Replace, _) => root.target(&op.path, false),
                (Op::Test, _) => root.node(&op.path).whole = true,
                (Op::Copy, from) => {
                    if let Some(from) = from {
                        root.node(from).whole = true;
                    }
                    root.target(&op.path, true);
                }
                (Op::Move, from) => {
                    if let Some(from) = from {
                        root.target(from, true);
                        root.node(from).whole = true;
                    }
                    root.target(&op.path, true);
                }
            }
        }
        root
    }

    /// The node at `path`, created with its ancestors.
    fn node(&mut self, path: &'p Pointer) -> &mut Self {
        let mut node = self;
        for token in decoded_tokens(path) {
            node = node.children.entry(token).or_default();
        }
        node
    }

    /// Marks `path` as an operation's target (its existence matters), and
    /// its parent as shifting when the operation inserts or removes.
    fn target(&mut self, path: &'p Pointer, shifts: bool) {
        self.node(path);
        if let (true, Some(parent)) = (shifts, path.parent()) {
            self.node(parent).shifts = true;
        }
    }

    /// What any element of a shifting array needs: the union of its children.
    fn union_of_children(&self) -> Self {
        let mut union = Self::default();
        for child in self.children.values() {
            union.merge(child);
        }
        union
    }

    fn merge(&mut self, other: &Self) {
        self.whole |= other.whole;
        self.shifts |= other.shifts;
        for (key, child) in &other.children {
            self.children.entry(key.clone()).or_default().merge(child);
        }
    }
}

/// A map key, borrowed from the request unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The AdmissionRequest: its `object`'s skeleton, everything else skipped.
struct RequestObject<'a>(&'a Wanted<'a>);

impl<'de> Visitor<'de> for RequestObject<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AdmissionRequest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key == "object" {
                object = map.next_value_seed(Nullable(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(object)
    }
}

/// `null` as `None`, anything else as its skeleton.
struct Nullable<'a>(&'a Wanted<'a>);

impl<'de> DeserializeSeed<'de> for Nullable<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Nullable<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or null")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Skeleton(self.0).deserialize(deserializer).map(Some)
    }
}

/// One value's skeleton, as much of it as `Wanted` says.
struct Skeleton<'a>(&'a Wanted<'a>);

impl<'de> DeserializeSeed<'de> for Skeleton<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.whole {
            Value::deserialize(deserializer)
        } else if self.0.children.is_empty() {
            // Only its existence counts.
            IgnoredAny::deserialize(deserializer).map(|_| Value::Null)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Skeleton<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // A scalar where a path goes on: kept, so the operation fails as on the object.
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match self.0.children.get(&*key) {
                // A later duplicate replaces an earlier one, as in a `Value`.
                Some(child) => {
                    object.insert(key.into_owned(), map.next_value_seed(Skeleton(child))?);
                }
                None => map.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        Ok(Value::Object(object))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut array = Vec::new();
        if self.0.shifts {
            let union = self.0.union_of_children();
            while let Some(element) = seq.next_element_seed(Skeleton(&union))? {
                array.push(element);
            }
        } else {
            let mut index = String::new();
            loop {
                index.clear();
                write!(index, "{}", array.len()).map_err(serde::de::Error::custom)?;
                let element = match self.0.children.get(index.as_str()) {
                    Some(child) => seq.next_element_seed(Skeleton(child))?,
                    None => seq.next_element::<IgnoredAny>()?.map(|_| Value::Null),
                };
                match element {
                    Some(element) => array.push(element),
                    None => break,
                }
            }
        }
        Ok(Value::Array(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(object: &str) -> Box<RawValue> {
        RawValue::from_string(format!(r#"{{"uid":"u","oldObject":{{"x":1}},"object":{object},"dryRun":false}}"#))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The patch as the host has it from a guest's verdict.
    fn patch(ops: serde_json::Value) -> RawPatch {
        let verdict = serde_json::json!({"allowed": true, "patch": ops}).to_string();
        crate::abi::decode_verdict(verdict.as_bytes()).ok().and_then(|v| v.patch).unwrap_or_else(|| panic!("{ops}"))
    }

    #[test]
    fn reports_a_missing_or_null_object() {
        let p = patch(serde_json::json!([{"op": "add", "path": "/a", "value": 1}]));
        for request in [r#"{"uid":"u"}"#, r#"{"uid":"u","object":null}"#] {
            let raw = RawValue::from_string(request.into()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(check(&raw, &p), Err(Refused::NoObject), "{request}");
        }
    }

    #[test]
    fn a_later_index_reaches_the_element_an_earlier_removal_shifted_there() {
        let object = r#"{"spec":{"containers":[{"name":"a"},{"name":"b","env":[]}]}}"#;
        let ok = patch(serde_json::json!([
            {"op": "remove", "path": "/spec/containers/0"},
            {"op": "add", "path": "/spec/containers/0/env/-", "value": {"name": "X"}},
        ]));
        assert_eq!(check(&raw(object), &ok), Ok(()));
        let bad = patch(serde_json::json!([
            {"op": "add", "path": "/spec/containers/1/env/-", "value": {"name": "X"}},
            {"op": "remove", "path": "/spec/containers/1"},
            {"op": "add", "path": "/spec/containers/0/env/-", "value": {"name": "Y"}},
        ]));
        assert!(matches!(check(&raw(object), &bad), Err(Refused::DoesNotApply(_))));
    }

    #[test]
    fn a_patch_whose_undo_would_fail_is_refused_without_a_panic() {
        // `json_patch::patch` would undo the move (from /a to /a/b: "cannot
        // move the value inside itself") after the test failed, and panic.
        let p = patch(serde_json::json!([
            {"op": "move", "from": "/a/b", "path": "/a"},
            {"op": "test", "path": "/missing", "value": 1},
        ]));
        assert!(matches!(check(&raw(r#"{"a":{"b":{}}}"#), &p), Err(Refused::DoesNotApply(_))));
    }

    #[test]
    fn values_read_by_test_and_move_are_whole() {
        let object = r#"{"a":{"b":[1,{"c":2}]},"d":"e"}"#;
        let moved = patch(serde_json::json!([
            {"op": "move", "from": "/a/b", "path": "/z"},
            {"op": "test", "path": "/z/1/c", "value": 2},
        ]));
        assert_eq!(check(&raw(object), &moved), Ok(()));
        let wrong = patch(serde_json::json!([{"op": "test", "path": "/a", "value": {"b": [1]}}]));
        assert!(matches!(check(&raw(object), &wrong), Err(Refused::DoesNotApply(_))));
    }

    /// A value the patch added is read whole wherever a later operation can
    /// reach into it, compare it or carry it away, even through indices
    /// that shifted since it was added.
    #[test]
    fn added_values_are_decoded_where_later_operations_read_them() {
        let object = r#"{"a":[{"n":0},{"n":1}],"b":{}}"#;
        let applies = |ops: serde_json::Value, expected: bool| {
            let whole = json_patch::patch_unsafe(
                &mut serde_json::from_str(object).unwrap_or_else(|e| panic!("{e}")),
                &patch(ops.clone()).decode().unwrap_or_else(|e| panic!("{e}")),
            );
            assert_eq!(whole.is_ok(), expected, "json_patch on the whole object: {ops}");
            assert_eq!(check(&raw(object), &patch(ops.clone())).is_ok(), expected, "{ops}");
        };
        for (ops, expected) in [
            (
                serde_json::json!([{"op": "add", "path": "/b/c", "value": {"d": [1]}}, {"op": "add", "path": "/b/c/d/-", "value": 2}]),
                true,
            ),
            (
                serde_json::json!([{"op": "add", "path": "/b/c", "value": {"d": 1}}, {"op": "add", "path": "/b/c/d/-", "value": 2}]),
                false,
            ),
            (
                serde_json::json!([{"op": "add", "path": "/a/1", "value": {"w": 1}}, {"op": "add", "path": "/a/0", "value": {"v": 1}},
                                {"op": "test", "path": "/a/2/w", "value": 1}]),
                true,
            ),
            (
                serde_json::json!([{"op": "add", "path": "/a/1", "value": {"w": 1}}, {"op": "add", "path": "/a/0", "value": {"v": 1}},
                                {"op": "test", "path": "/a/2", "value": {"w": 2}}]),
                false,
            ),
            (
                serde_json::json!([{"op": "add", "path": "/a/-", "value": {"w": {"x": 1}}}, {"op": "move", "from": "/a", "path": "/z"},
                                {"op": "remove", "path": "/z/2/w/x"}]),
                true,
            ),
            (
                serde_json::json!([{"op": "add", "path": "/a/-", "value": {"w": 1}}, {"op": "copy", "from": "/a/2", "path": "/b/c"},
                                {"op": "remove", "path": "/b/c/w"}]),
                true,
            ),
            (
                serde_json::json!([{"op": "add", "path": "/a/-", "value": {"w": 1}}, {"op": "test", "path": "", "value": {}}]),
                false,
            ),
            (
                serde_json::json!([{"op": "replace", "path": "", "value": {"r": [0]}}, {"op": "add", "path": "/r/1", "value": 1}]),
                true,
            ),
            // An insertion above the value's parent moves it (`/a/0/x` to `/a/1/x`).
            (
                serde_json::json!([{"op": "add", "path": "/a/0/x", "value": {"k": 1}}, {"op": "add", "path": "/a/0", "value": {}},
                                {"op": "test", "path": "/a/1", "value": {"n": 0, "x": null}}]),
                false,
            ),
            (
                serde_json::json!([{"op": "add", "path": "/a/0/x", "value": {"k": 1}}, {"op": "add", "path": "/a/0", "value": {}},
                                {"op": "test", "path": "/a/1", "value": {"n": 0, "x": {"k": 1}}}]),
                true,
            ),
            (
                serde_json::json!([{"op": "add", "path": "/a/1/e", "value": []}, {"op": "remove", "path": "/a/0"},
                                {"op": "add", "path": "/a/0/e/-", "value": {"name": "X"}}]),
                true,
            ),
            (
                serde_json::json!([{"op": "add", "path": "/a/1/e", "value": []}, {"op": "move", "from": "/a/0", "path": "/b/m"},
                                {"op": "add", "path": "/a/0/e/-", "value": {"name": "X"}}]),
                true,
            ),
        ] {
            applies(ops, expected);
        }
    }

    /// A small deterministic generator (xorshift64*), so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    fn escape(token: &str) -> String {
        token.replace('~', "~0").replace('/', "~1")
    }

    /// Every pointer into `value`, and the near misses an operation may name:
    /// past the end of arrays, `-`, a non-canonical index, a missing key, a
    /// path into a scalar.
    fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
        out.push(at.to_owned());
        match value {
            Value::Object(map) => {
                out.push(format!("{at}/no-such-key"));
                for (key, child) in map {
                    pointers(child, &format!("{at}/{}", escape(key)), out);
                }
            }
            Value::Array(items) => {
                let n = items.len();
                out.extend([format!("{at}/-"), format!("{at}/{n}"), format!("{at}/{}", n + 1), format!("{at}/01")]);
                for (i, child) in items.iter().enumerate() {
                    pointers(child, &format!("{at}/{i}"), out);
                }
            }
            _ => out.push(format!("{at}/x")),
        }
    }

    fn random_patch(rng: &mut Rng, object: &Value, paths: &[String]) -> Value {
        let values = [
            serde_json::json!(null),
            serde_json::json!(1),
            serde_json::json!("s"),
            serde_json::json!({"k": [1, {"n": 2}]}),
            serde_json::json!([]),
        ];
        let ops: Vec<Value> = (0..1 + rng.below(4))
            .map(|_| {
                let path = rng.pick(paths).clone();
                let value = if rng.below(2) == 0 {
                    object.pointer(&path).cloned().unwrap_or(Value::Null)
                } else {
                    rng.pick(&values).clone()
                };
                match rng.below(6) {
                    0 => serde_json::json!({"op": "add", "path": path, "value": value}),
                    1 => serde_json::json!({"op": "remove", "path": path}),
                    2 => serde_json::json!({"op": "replace", "path": path, "value": value}),
                    3 => serde_json::json!({"op": "test", "path": path, "value": value}),
                    4 => serde_json::json!({"op": "copy", "from": rng.pick(paths), "path": path}),
                    _ => serde_json::json!({"op": "move", "from": rng.pick(paths), "path": path}),
                }
            })
            .collect();
        Value::Array(ops)
    }

    /// The skeleton's answer against `json_patch` on the whole object, for
    /// random patches over every fixture object of the built-in policies.
    #[test]
    fn agrees_with_applying_to_the_whole_object() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies-wasm");
        let mut fixtures = Vec::new();
        for policy in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{e}")).flatten() {
            let Ok(files) = std::fs::read_dir(policy.path().join("test_data")) else { continue };
            for file in files.flatten().map(|f| f.path()).filter(|p| p.extension().is_some_and(|e| e == "json")) {
                let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
                let Ok(review) = serde_json::from_str::<Value>(&text) else { continue };
                if review.pointer("/request/object").is_some_and(|o| !o.is_null()) {
                    fixtures.push((file, review));
                }
            }
        }
        assert!(fixtures.len() >= 10, "only {} fixtures with objects under {}", fixtures.len(), root.display());
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut applied, mut refused) = (0, 0);
        for (file, review) in &fixtures {
            let object = &review["request"]["object"];
            let raw = RawValue::from_string(review["request"].to_string()).unwrap_or_else(|e| panic!("{e}"));
            let mut paths = Vec::new();
            pointers(object, "", &mut paths);
            // Into the values the patches add, wherever they went.
            let into_added: Vec<String> = paths.iter().step_by(3).map(|p| format!("{p}/k/1/n")).collect();
            paths.extend(into_added);
            for _ in 0..400 {
                let ops = random_patch(&mut rng, object, &paths);
                let patch = patch(ops.clone());
                let decoded = patch.decode().unwrap_or_else(|e| panic!("{e}"));
                let whole = json_patch::patch_unsafe(&mut object.clone(), &decoded).is_ok();
                assert_eq!(check(&raw, &patch).is_ok(), whole, "{}: {ops}", file.display());
                if whole { applied += 1 } else { refused += 1 }
            }
        }
        // Both answers were exercised, not only refusals.
        assert!(applied > 1_000 && refused > 1_000, "{applied} applied, {refused} refused");
    }
}
