//! Building minimal, idempotent RFC 6902 patches for mutating policies.
//!
//! A [`Mutation`] holds the object being admitted (as raw JSON, so fields the
//! policy does not know survive) and the operations decided so far. Every
//! helper looks at the object *as already patched*, does nothing when the
//! object already has what it asks for, and otherwise records the smallest
//! operation that gets it there: a missing map or array is created with its
//! first entry (`add /metadata/annotations {"k": "v"}`), an existing array gets
//! an element appended (`add .../env/-`), never the whole array replaced.
//! Pointers are built with [`jsonptr`](json_patch::jsonptr), so keys holding
//! `/` or `~` are escaped (`~1`, `~0`). Run on its own output, a policy built
//! on these helpers therefore produces no patch, which is what the API
//! server's `reinvocationPolicy: IfNeeded` needs.
//!
//! ```
//! use portcullis_sdk::mutation::Mutation;
//! use serde_json::json;
//!
//! let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}]}});
//! let mut m = Mutation::new(pod);
//! m.set_label("azure.workload.identity/use", "true")?;
//! m.add_env(&Mutation::container("containers", 0), "AZURE_CLIENT_ID", "5f0e3b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")?;
//! let patch = serde_json::to_value(m.into_patch())?;
//! assert_eq!(patch[0]["path"], "/metadata/labels");
//! assert_eq!(patch[1]["path"], "/spec/containers/0/env");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use json_patch::jsonptr::{Pointer, PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use serde_json::{Map, Value};

use crate::Verdict;

/// Why a mutation could not be expressed: the object has a non-container
/// value where the patch must descend (e.g. `metadata.annotations` is a
/// string). Such an object is malformed; policies report it as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutationError {
    /// Where the object could not be descended into.
    pub pointer: String,
    /// What was found there.
    pub found: &'static str,
}

impl std::fmt::Display for MutationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot patch the object at {:?}: it holds {}", self.pointer, self.found)
    }
}

impl std::error::Error for MutationError {}

/// Result type of this module.
pub type Result<T, E = MutationError> = std::result::Result<T, E>;

/// An object and the patch operations decided on it so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    object: Value,
    ops: Vec<PatchOperation>,
}

impl Mutation {
    /// Starts from the object as admitted.
    pub fn new(object: Value) -> Self {
        Self { object, ops: Vec::new() }
    }

    /// Pointer to a container of a pod spec at `/spec`: `list` is
    /// `containers` or `initContainers`.
    pub fn container(list: &str, index: usize) -> PointerBuf {
        PointerBuf::from_tokens(["spec", list, &index.to_string()])
    }

    /// The object with every operation so far applied.
    pub fn object(&self) -> &Value {
        &self.object
    }

    /// The value at `pointer` in the patched object; JSON `null` counts as absent.
    pub fn get(&self, pointer: &Pointer) -> Option<&Value> {
        pointer.resolve(&self.object).ok().filter(|v| !v.is_null())
    }

    /// True when no operation has been recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in order.
    pub fn into_patch(self) -> Patch {
        Patch(self.ops)
    }

    /// Admits the object with the recorded operations (none: admitted unchanged).
    pub fn into_verdict(self) -> Verdict {
        if self.ops.is_empty() { Verdict::allow() } else { Verdict::patch(self.into_patch()) }
    }

    /// Sets the value at `pointer`, creating missing parent maps. No
    /// operation when it already holds `value`; `replace` when it holds
    /// something else; otherwise one `add` at the first missing level.
    /// Returns whether the object changed.
    pub fn set(&mut self, pointer: &Pointer, value: Value) -> Result<bool> {
        match self.get(pointer) {
            Some(current) if *current == value => Ok(false),
            Some(_) => {
                self.record(PatchOperation::Replace(ReplaceOperation { path: pointer.to_buf(), value }));
                Ok(true)
            }
            None => {
                self.add_creating_parents(pointer, value)?;
                Ok(true)
            }
        }
    }

    /// Sets the value at `pointer` only when nothing is there. Returns whether it was added.
    pub fn insert(&mut self, pointer: &Pointer, value: Value) -> Result<bool> {
        if self.get(pointer).is_some() {
            return Ok(false);
        }
        self.add_creating_parents(pointer, value)?;
        Ok(true)
    }

    /// Appends `value` to the array at `pointer`, creating the array (and
    /// missing parent maps) when absent.
    pub fn push(&mut self, pointer: &Pointer, value: Value) -> Result<()> {
        match self.get(pointer) {
            Some(Value::Array(_)) => {
                self.record(PatchOperation::Add(AddOperation { path: pointer.with_trailing_token("-"), value }));
                Ok(())
            }
            Some(other) => Err(MutationError { pointer: pointer.to_string(), found: kind(other) }),
            None => self.add_creating_parents(pointer, Value::Array(vec![value])),
        }
    }

    /// Sets annotation `key` in `/metadata/annotations`. Returns whether the object changed.
    pub fn set_annotation(&mut self, key: &str, value: &str) -> Result<bool> {
        self.set(&PointerBuf::from_tokens(["metadata", "annotations", key]), Value::String(value.into()))
    }

    /// Sets label `key` in `/metadata/labels`. Returns whether the object changed.
    pub fn set_label(&mut self, key: &str, value: &str) -> Result<bool> {
        self.set(&PointerBuf::from_tokens(["metadata", "labels", key]), Value::String(value.into()))
    }

    /// Adds environment variable `name=value` to the container at
    /// `container` unless it already has a variable of that name (whatever
    /// its value or source). Returns whether it was added.
    pub fn add_env(&mut self, container: &Pointer, name: &str, value: &str) -> Result<bool> {
        let env = container.with_trailing_token("env");
        if self.array_has(&env, |e| e.get("name").and_then(Value::as_str) == Some(name)) {
            return Ok(false);
        }
        let mut var = Map::new();
        var.insert("name".into(), Value::String(name.into()));
        var.insert("value".into(), Value::String(value.into()));
        self.push(&env, Value::Object(var))?;
        Ok(true)
    }

    /// Adds a volume mount (a `VolumeMount` object) to the container at
    /// `container` unless it already mounts a volume of the same `name`, or
    /// something at the same `mountPath`. Returns whether it was added.
    pub fn add_volume_mount(&mut self, container: &Pointer, mount: Value) -> Result<bool> {
        let mounts = container.with_trailing_token("volumeMounts");
        let name = mount.get("name").cloned();
        let path = mount.get("mountPath").cloned();
        let taken = |m: &Value| {
            (name.is_some() && m.get("name") == name.as_ref())
                || (path.is_some() && m.get("mountPath") == path.as_ref())
        };
        if self.array_has(&mounts, taken) {
            return Ok(false);
        }
        self.push(&mounts, mount)?;
        Ok(true)
    }

    /// Adds a volume (a `Volume` object) to the pod spec at `spec` (`/spec`
    /// for a Pod, `/spec/template/spec` for a workload) unless a volume of
    /// the same name exists. Returns whether it was added.
    pub fn add_volume(&mut self, spec: &Pointer, volume: Value) -> Result<bool> {
        let volumes = spec.with_trailing_token("volumes");
        let name = volume.get("name").cloned();
        if self.array_has(&volumes, |v| name.is_some() && v.get("name") == name.as_ref()) {
            return Ok(false);
        }
        self.push(&volumes, volume)?;
        Ok(true)
    }

    fn array_has(&self, pointer: &Pointer, pred: impl Fn(&Value) -> bool) -> bool {
        self.get(pointer).and_then(Value::as_array).is_some_and(|items| items.iter().any(pred))
    }

    /// Records one `add` at the highest missing level of `pointer`, wrapping
    /// `value` in maps for the levels below it.
    fn add_creating_parents(&mut self, pointer: &Pointer, value: Value) -> Result<()> {
        let tokens: Vec<Token<'_>> = pointer.tokens().collect();
        // How many leading tokens lead to existing values, and the deepest one.
        let mut current = &self.object;
        let mut depth = 0;
        for token in &tokens {
            let next = match current {
                Value::Object(map) => map.get(token.decoded().as_ref()),
                Value::Array(items) => {
                    token.to_index().ok().and_then(|i| i.for_len(items.len()).ok()).map(|i| &items[i])
                }
                _ => None,
            };
            match next.filter(|v| !v.is_null()) {
                Some(next) => {
                    current = next;
                    depth += 1;
                }
                None => break,
            }
        }
        let parent = PointerBuf::from_tokens(tokens[..depth.min(tokens.len())].iter().cloned());
        if depth == tokens.len() || !current.is_object() {
            // `set`, `insert` and `push` only get here for a missing value,
            // so its holder is not a map: the object is malformed.
            return Err(MutationError { pointer: parent.to_string(), found: kind(current) });
        }
        let mut wrapped = value;
        for token in tokens[depth + 1..].iter().rev() {
            let mut map = Map::new();
            map.insert(token.decoded().into_owned(), wrapped);
            wrapped = Value::Object(map);
        }
        let path = parent.with_trailing_token(tokens[depth].clone());
        self.record(PatchOperation::Add(AddOperation { path, value: wrapped }));
        Ok(())
    }

    fn record(&mut self, op: PatchOperation) {
        // The operations are built to apply (their parents were looked up
        // just before); applying them keeps `object` what the API server
        // will store, for the next helper to look at.
        let _ = json_patch::patch_unsafe(&mut self.object, std::slice::from_ref(&op));
        self.ops.push(op);
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ops(m: Mutation) -> Value {
        serde_json::to_value(m.into_patch()).unwrap_or_default()
    }

    #[test]
    fn creates_a_missing_map_with_its_first_entry() -> Result<()> {
        let mut m = Mutation::new(json!({"metadata": {"name": "a"}}));
        assert!(m.set_annotation("eks.amazonaws.com/role-arn", "arn")?);
        assert!(m.set_annotation("eks.amazonaws.com/audience", "sts.amazonaws.com")?);
        assert_eq!(
            ops(m),
            json!([
                {"op": "add", "path": "/metadata/annotations", "value": {"eks.amazonaws.com/role-arn": "arn"}},
                {"op": "add", "path": "/metadata/annotations/eks.amazonaws.com~1audience", "value": "sts.amazonaws.com"},
            ])
        );
        Ok(())
    }

    #[test]
    fn equal_values_give_no_operation_and_different_ones_a_replace() -> Result<()> {
        let mut m = Mutation::new(json!({"metadata": {"labels": {"a~b": "1", "c": "2"}}}));
        assert!(!m.set_label("a~b", "1")?);
        assert!(m.set_label("c", "3")?);
        assert_eq!(ops(m), json!([{"op": "replace", "path": "/metadata/labels/c", "value": "3"}]));
        Ok(())
    }

    #[test]
    fn creates_several_missing_levels_at_once() -> Result<()> {
        let mut m = Mutation::new(json!({}));
        assert!(m.set_label("x/y", "1")?);
        assert_eq!(ops(m), json!([{"op": "add", "path": "/metadata", "value": {"labels": {"x/y": "1"}}}]));
        Ok(())
    }

    #[test]
    fn appends_to_arrays_and_creates_absent_or_null_ones() -> Result<()> {
        let pod = json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}, {"name": "b", "env": null}]}});
        let mut m = Mutation::new(pod);
        assert!(!m.add_env(&Mutation::container("containers", 0), "X", "2")?);
        assert!(m.add_env(&Mutation::container("containers", 0), "Y", "2")?);
        assert!(m.add_env(&Mutation::container("containers", 1), "Y", "2")?);
        assert!(m.add_env(&Mutation::container("containers", 1), "Z", "3")?);
        assert_eq!(
            ops(m),
            json!([
                {"op": "add", "path": "/spec/containers/0/env/-", "value": {"name": "Y", "value": "2"}},
                {"op": "add", "path": "/spec/containers/1/env", "value": [{"name": "Y", "value": "2"}]},
                {"op": "add", "path": "/spec/containers/1/env/-", "value": {"name": "Z", "value": "3"}},
            ])
        );
        Ok(())
    }

    #[test]
    fn mounts_and_volumes_are_added_once_by_name_or_path() -> Result<()> {
        let pod =
            json!({"spec": {"containers": [{"name": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}});
        let mut m = Mutation::new(pod);
        let c = Mutation::container("containers", 0);
        assert!(!m.add_volume_mount(&c, json!({"name": "other", "mountPath": "/data"}))?);
        assert!(!m.add_volume_mount(&c, json!({"name": "data", "mountPath": "/elsewhere"}))?);
        assert!(m.add_volume_mount(&c, json!({"name": "token", "mountPath": "/token", "readOnly": true}))?);
        let spec = PointerBuf::from_tokens(["spec"]);
        assert!(m.add_volume(&spec, json!({"name": "token", "emptyDir": {}}))?);
        assert!(!m.add_volume(&spec, json!({"name": "token", "emptyDir": {}}))?);
        assert_eq!(m.object()["spec"]["volumes"], json!([{"name": "token", "emptyDir": {}}]));
        assert_eq!(m.into_patch().len(), 2);
        Ok(())
    }

    #[test]
    fn the_recorded_patch_gives_the_tracked_object() -> Result<(), Box<dyn std::error::Error>> {
        let original = json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "a"}]}});
        let mut m = Mutation::new(original.clone());
        m.set_label("a", "1")?;
        m.add_env(&Mutation::container("containers", 0), "A", "1")?;
        m.add_env(&Mutation::container("containers", 0), "B", "2")?;
        let expected = m.object().clone();
        let mut patched = original;
        json_patch::patch(&mut patched, &m.into_patch())?;
        assert_eq!(patched, expected);
        Ok(())
    }

    #[test]
    fn malformed_holders_are_errors_not_panics() {
        let mut m = Mutation::new(json!({"metadata": {"annotations": "oops"}}));
        let e = m.set_annotation("a", "b").expect_err("a string cannot hold an annotation");
        assert_eq!(e, MutationError { pointer: "/metadata/annotations".into(), found: "a string" });
        let mut m = Mutation::new(json!({"spec": {"containers": [{"env": {"A": 1}}]}}));
        assert!(m.add_env(&Mutation::container("containers", 0), "A", "1").is_err());
        let mut m = Mutation::new(json!({"spec": {"containers": []}}));
        assert!(m.add_env(&Mutation::container("containers", 3), "A", "1").is_err());
        assert!(m.is_empty());
    }
}
