//! Building minimal, idempotent RFC 6902 patches for mutating policies.
//!
//! A [`Mutation`] holds the object being admitted (as raw JSON, so fields the
//! policy does not know survive) and the operations decided so far. Every
//! helper looks at the object *as already patched*, does nothing when the
//! object already has what it asks for, and otherwise records the smallest
//! operation that gets it there: a missing map or array is created with its
//! entries (`add /metadata/annotations {"k": "v", ...}`), an existing array
//! gets elements appended (`add .../env/-`), never the whole array replaced.
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
//! assert_eq!(patch[1]["value"][0]["name"], "AZURE_CLIENT_ID");
//! assert_eq!(patch[1]["path"], "/spec/containers/0/env");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use json_patch::jsonptr::{Pointer, PointerBuf};
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
///
/// The operations are applied to the object as they are decided, and only
/// their kind and location are recorded; [`Mutation::into_patch`] takes each
/// value from the final object. So an operation inside the value of another
/// (the second variable of an `env` array this mutation created) is merged
/// into it rather than sent on its own, and no value is copied.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    object: Value,
    ops: Vec<Recorded>,
}

/// One decided operation: `add` (or `replace`) of whatever the final object
/// holds at `tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    replace: bool,
    /// Unescaped location; for an append, the index the element got.
    tokens: Vec<String>,
    /// An append to an array: sent as `.../-`.
    append: bool,
    /// `prefixes[k]`: hash of `tokens[..k]`, to find operations inside
    /// others without comparing strings.
    prefixes: Vec<u64>,
}

impl Recorded {
    fn new(replace: bool, tokens: Vec<String>, append: bool) -> Self {
        // FNV-1a over the tokens, each followed by a separator byte.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut prefixes = Vec::with_capacity(tokens.len() + 1);
        prefixes.push(hash);
        for token in &tokens {
            for byte in token.bytes().chain(std::iter::once(0xff)) {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
            prefixes.push(hash);
        }
        Self { replace, tokens, append, prefixes }
    }

    /// Whether `self`'s location is `other`'s or inside it.
    fn within(&self, other: &Recorded) -> bool {
        let depth = other.tokens.len();
        depth <= self.tokens.len()
            && self.prefixes[depth] == other.prefixes[depth]
            && self.tokens[..depth] == other.tokens[..]
    }
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
        self.at(&tokens(pointer))
    }

    /// True when no operation has been recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in order, each with the value the final object holds
    /// at its location. An operation at or inside another's location is left
    /// out (the other's final value includes it; of two at the same place the
    /// first is kept), so the locations are disjoint and each value is moved
    /// out of the object, not copied.
    pub fn into_patch(self) -> Patch {
        let Self { mut object, ops } = self;
        let mut out = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let covered = ops
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && op.within(other) && (other.tokens.len() < op.tokens.len() || j < i));
            if covered {
                continue;
            }
            let Some(value) = resolve_mut(&mut object, &op.tokens).map(std::mem::take) else { continue };
            let path = match op.tokens.split_last() {
                Some((_, parent)) if op.append => pointer_from(parent, true),
                _ => pointer_from(&op.tokens, false),
            };
            out.push(if op.replace {
                PatchOperation::Replace(ReplaceOperation { path, value })
            } else {
                PatchOperation::Add(AddOperation { path, value })
            });
        }
        // In a module, the instance ends with this request: walking the
        // object to free it would be wasted work (see `arena`).
        #[cfg(target_arch = "wasm32")]
        std::mem::forget(object);
        Patch(out)
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
        let tokens = tokens(pointer);
        match self.at(&tokens) {
            Some(current) if *current == value => Ok(false),
            Some(_) => {
                if let Some(slot) = resolve_mut(&mut self.object, &tokens) {
                    *slot = value;
                }
                self.ops.push(Recorded::new(true, tokens, false));
                Ok(true)
            }
            None => {
                self.add_creating_parents(tokens, value)?;
                Ok(true)
            }
        }
    }

    /// Sets the value at `pointer` only when nothing is there. Returns whether it was added.
    pub fn insert(&mut self, pointer: &Pointer, value: Value) -> Result<bool> {
        let tokens = tokens(pointer);
        if self.at(&tokens).is_some() {
            return Ok(false);
        }
        self.add_creating_parents(tokens, value)?;
        Ok(true)
    }

    /// Appends `value` to the array at `pointer`, creating the array (and
    /// missing parent maps) when absent.
    pub fn push(&mut self, pointer: &Pointer, value: Value) -> Result<()> {
        self.push_at(tokens(pointer), value)
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
        Ok(self.add_envs(container, &[(name, value)])? == 1)
    }

    /// [`Mutation::add_env`] for several variables, in order: each is added
    /// unless the container has a variable of that name. Returns how many
    /// were added.
    pub fn add_envs(&mut self, container: &Pointer, vars: &[(&str, &str)]) -> Result<usize> {
        let mut env = tokens(container);
        env.push("env".into());
        let existing = self.at(&env).and_then(Value::as_array);
        let has = |items: Option<&Vec<Value>>, name: &str| {
            items.is_some_and(|items| items.iter().any(|e| e.get("name").and_then(Value::as_str) == Some(name)))
        };
        let mut added: Vec<Value> = Vec::new();
        for (i, (name, value)) in vars.iter().enumerate() {
            let repeated = vars[..i].iter().any(|(earlier, _)| earlier == name);
            if repeated || has(existing, name) {
                continue;
            }
            let mut var = Map::new();
            var.insert("name".into(), Value::String((*name).into()));
            var.insert("value".into(), Value::String((*value).into()));
            added.push(Value::Object(var));
        }
        let count = added.len();
        if count > 0 {
            self.push_all(env, added)?;
        }
        Ok(count)
    }

    /// Adds a volume mount (a `VolumeMount` object) to the container at
    /// `container` unless it already mounts a volume of the same `name`, or
    /// something at the same `mountPath`. Returns whether it was added.
    pub fn add_volume_mount(&mut self, container: &Pointer, mount: Value) -> Result<bool> {
        let mut mounts = tokens(container);
        mounts.push("volumeMounts".into());
        let name = mount.get("name");
        let path = mount.get("mountPath");
        let taken =
            |m: &Value| (name.is_some() && m.get("name") == name) || (path.is_some() && m.get("mountPath") == path);
        if self.at(&mounts).and_then(Value::as_array).is_some_and(|items| items.iter().any(taken)) {
            return Ok(false);
        }
        self.push_at(mounts, mount)?;
        Ok(true)
    }

    /// Adds a volume (a `Volume` object) to the pod spec at `spec` (`/spec`
    /// for a Pod, `/spec/template/spec` for a workload) unless a volume of
    /// the same name exists. Returns whether it was added.
    pub fn add_volume(&mut self, spec: &Pointer, volume: Value) -> Result<bool> {
        let mut volumes = tokens(spec);
        volumes.push("volumes".into());
        let name = volume.get("name");
        let taken = |v: &Value| name.is_some() && v.get("name") == name;
        if self.at(&volumes).and_then(Value::as_array).is_some_and(|items| items.iter().any(taken)) {
            return Ok(false);
        }
        self.push_at(volumes, volume)?;
        Ok(true)
    }

    /// The value at `tokens`; `null` counts as absent.
    fn at(&self, tokens: &[String]) -> Option<&Value> {
        tokens.iter().try_fold(&self.object, |v, t| child(v, t)).filter(|v| !v.is_null())
    }

    fn push_at(&mut self, tokens: Vec<String>, value: Value) -> Result<()> {
        self.push_all(tokens, vec![value])
    }

    /// Appends `values` to the array at `tokens` (one `add .../-` each), or
    /// creates it holding them (one `add`), walking to it once.
    fn push_all(&mut self, tokens: Vec<String>, values: Vec<Value>) -> Result<()> {
        match resolve_mut(&mut self.object, &tokens).filter(|v| !v.is_null()) {
            Some(Value::Array(items)) => {
                let first = items.len();
                let count = values.len();
                items.extend(values);
                for index in first..first + count {
                    let mut at = tokens.clone();
                    at.push(index.to_string());
                    self.ops.push(Recorded::new(false, at, true));
                }
                Ok(())
            }
            Some(other) => {
                let found = kind(other);
                Err(MutationError { pointer: pointer_of(&tokens), found })
            }
            None => self.add_creating_parents(tokens, Value::Array(values)),
        }
    }

    /// Adds `value` at the highest missing level of `tokens`, wrapped in
    /// maps for the levels below it, and records that one `add`.
    fn add_creating_parents(&mut self, mut tokens: Vec<String>, value: Value) -> Result<()> {
        // How many leading tokens lead to existing values, and the deepest one.
        let mut current = &mut self.object;
        let mut depth = 0;
        while depth < tokens.len() {
            let exists = child(current, &tokens[depth]).is_some_and(|v| !v.is_null());
            if !exists {
                break;
            }
            current = child_mut(current, &tokens[depth]).unwrap_or_else(|| unreachable!("checked just above"));
            depth += 1;
        }
        let Some(map) = current.as_object_mut().filter(|_| depth < tokens.len()) else {
            // `set`, `insert` and `push` only get here for a missing value,
            // so its holder is not a map: the object is malformed.
            return Err(MutationError { pointer: pointer_of(&tokens[..depth]), found: kind(current) });
        };
        let mut wrapped = value;
        for token in tokens[depth + 1..].iter().rev() {
            let mut inner = Map::new();
            inner.insert(token.clone(), wrapped);
            wrapped = Value::Object(inner);
        }
        map.insert(tokens[depth].clone(), wrapped);
        tokens.truncate(depth + 1);
        self.ops.push(Recorded::new(false, tokens, false));
        Ok(())
    }
}

fn tokens(pointer: &Pointer) -> Vec<String> {
    pointer.tokens().map(|t| t.decoded().into_owned()).collect()
}

fn pointer_of(tokens: &[String]) -> String {
    pointer_from(tokens, false).to_string()
}

/// The JSON Pointer to `tokens` (then `-` when `append`), each token
/// escaped as RFC 6901 says (`~` as `~0`, `/` as `~1`). Written in one
/// string: `PointerBuf::from_tokens` builds a `Token` per token first,
/// which was a tenth of a mutator's patch building.
fn pointer_from(tokens: &[String], append: bool) -> PointerBuf {
    let mut text = String::with_capacity(tokens.iter().map(|t| t.len() + 1).sum::<usize>() + 2);
    for token in tokens {
        text.push('/');
        if token.bytes().any(|b| b == b'~' || b == b'/') {
            for c in token.chars() {
                match c {
                    '~' => text.push_str("~0"),
                    '/' => text.push_str("~1"),
                    c => text.push(c),
                }
            }
        } else {
            text.push_str(token);
        }
    }
    if append {
        text.push_str("/-");
    }
    // Escaped as above, the text always parses; the fallback is never taken.
    PointerBuf::parse(text).unwrap_or_else(|_| {
        let pointer = PointerBuf::from_tokens(tokens.iter().map(String::as_str));
        if append { pointer.with_trailing_token("-") } else { pointer }
    })
}

fn child<'a>(value: &'a Value, token: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

fn child_mut<'a>(value: &'a mut Value, token: &str) -> Option<&'a mut Value> {
    match value {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    }
}

fn resolve_mut<'a>(value: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(value, |v, t| child_mut(v, t))
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
    fn pointers_are_escaped_as_jsonptr_escapes_them() {
        for tokens in [vec![], vec![""], vec!["a/b", "c~d"], vec!["~1", "/~0/", "é/ü"], vec!["spec", "containers", "0"]]
        {
            let owned: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
            let expected = PointerBuf::from_tokens(tokens.iter().copied());
            assert_eq!(pointer_from(&owned, false), expected, "{tokens:?}");
            assert_eq!(pointer_from(&owned, true), expected.with_trailing_token("-"), "{tokens:?}");
        }
    }

    #[test]
    fn creates_a_missing_map_with_its_first_entry() -> Result<()> {
        let mut m = Mutation::new(json!({"metadata": {"name": "a"}}));
        assert!(m.set_annotation("eks.amazonaws.com/role-arn", "arn")?);
        assert!(m.set_annotation("eks.amazonaws.com/audience", "sts.amazonaws.com")?);
        assert_eq!(
            ops(m),
            json!([{"op": "add", "path": "/metadata/annotations",
                    "value": {"eks.amazonaws.com/role-arn": "arn", "eks.amazonaws.com/audience": "sts.amazonaws.com"}}])
        );
        let mut m = Mutation::new(json!({"metadata": {"annotations": {}}}));
        m.set_annotation("a/b", "1")?;
        m.set_annotation("c~d", "2")?;
        assert_eq!(
            ops(m),
            json!([
                {"op": "add", "path": "/metadata/annotations/a~1b", "value": "1"},
                {"op": "add", "path": "/metadata/annotations/c~0d", "value": "2"},
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
                {"op": "add", "path": "/spec/containers/1/env", "value": [{"name": "Y", "value": "2"}, {"name": "Z", "value": "3"}]},
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
        let original = json!({"metadata": {"name": "a", "labels": {"x": "0"}},
                              "spec": {"containers": [{"name": "a", "env": [{"name": "K", "value": "v"}]}, {"name": "b"}]}});
        let mut m = Mutation::new(original.clone());
        m.set_label("a", "1")?;
        m.set_label("x", "changed")?;
        m.set_label("x", "changed again")?;
        m.add_env(&Mutation::container("containers", 0), "A", "1")?;
        m.add_env(&Mutation::container("containers", 0), "B", "2")?;
        m.add_env(&Mutation::container("containers", 1), "A", "1")?;
        m.add_volume_mount(&Mutation::container("containers", 1), json!({"name": "v", "mountPath": "/v"}))?;
        m.add_env(&Mutation::container("containers", 1), "B", "2")?;
        m.set(&PointerBuf::from_tokens(["spec", "serviceAccountName"]), json!("x"))?;
        m.set(&PointerBuf::from_tokens(["spec", "serviceAccountName"]), json!("y"))?;
        let expected = m.object().clone();
        let patch = m.into_patch();
        assert_eq!(patch.len(), 7, "{patch:?}");
        let mut patched = original;
        json_patch::patch(&mut patched, &patch)?;
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
