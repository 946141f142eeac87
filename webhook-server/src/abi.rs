//! Host side of the Portcullis policy ABI v1 (the guest side and the written
//! contract live in `policies-wasm/sdk`, see its `ABI.md`).
//!
//! Everything the host assumes about a module is checked here at load time:
//! the imports it asks for (only the `portcullis` host functions), the exports
//! it must provide with their exact types, and, once instantiated, the ABI
//! version it declares. Decoding what a guest returns also lives here.

use json_patch::jsonptr::PointerBuf;
use portcullis_sdk::{ABI_VERSION, names};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use wasmtime::{Caller, ExternType, Linker, Module, ValType};

use crate::runtime::{EvalError, GuestState};

/// Problems with a module's shape, found before it ever runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    /// The module imports something the host does not provide.
    #[error(
        "imports `{module}::{name}`, which is not part of the Portcullis ABI v{ABI_VERSION} \
         (policies get no WASI and no ambient authority; the only imports allowed are `portcullis::log` and \
         `portcullis::lookup`)"
    )]
    ForbiddenImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
    },
    /// An ABI import is present with the wrong type.
    #[error("imports `{module}::{name}` with type {found}, expected {expected}")]
    ImportType {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
        /// Type found.
        found: String,
        /// Type required.
        expected: &'static str,
    },
    /// A required export is missing.
    #[error("does not export `{0}`, required by the Portcullis ABI v{ABI_VERSION}")]
    MissingExport(&'static str),
    /// A required export has the wrong type.
    #[error("exports `{name}` with type {found}, expected {expected}")]
    ExportType {
        /// Export name.
        name: &'static str,
        /// Type found.
        found: String,
        /// Type required.
        expected: &'static str,
    },
    /// The module declares another ABI version.
    #[error("declares ABI version {0}, but this server speaks version {ABI_VERSION}")]
    Version(i32),
}

const LOG_TYPE: &str = "(i32, i32, i32) -> ()";
const LOOKUP_TYPE: &str = "(i32, i32) -> i64";
const EXPORTS: [(&str, &str); 4] = [
    (names::ABI_VERSION, "() -> i32"),
    (names::ALLOC, "(i32) -> i32"),
    (names::VALIDATE, "(i32, i32) -> i64"),
    (names::VALIDATE_SETTINGS, "(i32, i32) -> i64"),
];

/// Checks a compiled module's imports and exports against ABI v1.
pub fn check_module(module: &Module) -> Result<(), AbiError> {
    for import in module.imports() {
        let (m, n) = (import.module(), import.name());
        let expected = match (m, n) {
            (names::IMPORT_MODULE, names::IMPORT_LOG) => LOG_TYPE,
            (names::IMPORT_MODULE, names::IMPORT_LOOKUP) => LOOKUP_TYPE,
            _ => return Err(AbiError::ForbiddenImport { module: m.into(), name: n.into() }),
        };
        let found = describe(&import.ty());
        if found != expected {
            return Err(AbiError::ImportType { module: m.into(), name: n.into(), found, expected });
        }
    }
    match module.get_export(names::MEMORY) {
        Some(ExternType::Memory(_)) => {}
        Some(other) => {
            return Err(AbiError::ExportType { name: names::MEMORY, found: describe(&other), expected: "memory" });
        }
        None => return Err(AbiError::MissingExport(names::MEMORY)),
    }
    for (name, expected) in EXPORTS {
        let Some(ty) = module.get_export(name) else {
            return Err(AbiError::MissingExport(name));
        };
        let found = describe(&ty);
        if found != expected {
            return Err(AbiError::ExportType { name, found, expected });
        }
    }
    Ok(())
}

/// Checks the version a freshly instantiated module declares.
pub fn check_version(version: i32) -> Result<(), AbiError> {
    if version == ABI_VERSION { Ok(()) } else { Err(AbiError::Version(version)) }
}

/// Renders an extern type as `(params) -> result` for functions.
fn describe(ty: &ExternType) -> String {
    fn val(v: &ValType) -> String {
        match v {
            ValType::I32 => "i32".into(),
            ValType::I64 => "i64".into(),
            ValType::F32 => "f32".into(),
            ValType::F64 => "f64".into(),
            ValType::V128 => "v128".into(),
            ValType::Ref(r) => r.to_string(),
        }
    }
    match ty {
        ExternType::Func(f) => {
            let params: Vec<String> = f.params().map(|p| val(&p)).collect();
            let results: Vec<String> = f.results().map(|r| val(&r)).collect();
            let results = match results.len() {
                0 => "()".to_owned(),
                1 => results.concat(),
                _ => format!("({})", results.join(", ")),
            };
            format!("({}) -> {results}", params.join(", "))
        }
        ExternType::Memory(_) => "memory".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Tag(_) => "tag".into(),
    }
}

/// Most log lines one evaluation may write; later ones are dropped.
pub const MAX_LOG_LINES: u32 = 32;
/// Longest log line kept, in bytes; longer ones are cut.
pub const MAX_LOG_LINE: usize = 2048;

/// Longest lookup query read from a guest.
pub const MAX_LOOKUP_QUERY: usize = 64 << 10;

/// Defines the host functions of ABI v1.
pub fn define_imports(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        names::IMPORT_MODULE,
        names::IMPORT_LOOKUP,
        |mut caller: Caller<'_, GuestState>, (ptr, len): (i32, i32)| {
            Box::new(async move {
                let answer = lookup_answer(&mut caller, ptr, len);
                give_to_guest(&mut caller, &answer).await
            })
        },
    )?;
    linker.func_wrap(
        names::IMPORT_MODULE,
        names::IMPORT_LOG,
        |mut caller: Caller<'_, GuestState>, level: i32, ptr: i32, len: i32| {
            if caller.data().log_lines >= MAX_LOG_LINES {
                return;
            }
            caller.data_mut().log_lines += 1;
            let Some(memory) = caller.get_export(names::MEMORY).and_then(|e| e.into_memory()) else {
                return;
            };
            let (Ok(ptr), Ok(len)) = (usize::try_from(ptr as u32), usize::try_from(len as u32)) else {
                return;
            };
            let mut buf = vec![0; len.min(MAX_LOG_LINE)];
            if memory.read(&caller, ptr, &mut buf).is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&buf);
            let policy = &*caller.data().policy;
            match level {
                0 => tracing::error!(target: "policy", policy, "{line}"),
                1 => tracing::warn!(target: "policy", policy, "{line}"),
                2 => tracing::info!(target: "policy", policy, "{line}"),
                _ => tracing::debug!(target: "policy", policy, "{line}"),
            }
        },
    )?;
    Ok(())
}

/// The answer to the lookup query at `ptr`/`len` in the guest's memory.
fn lookup_answer(caller: &mut Caller<'_, GuestState>, ptr: i32, len: i32) -> Vec<u8> {
    let error = |message: &str| serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    caller.data_mut().lookups += 1;
    if caller.data().lookups > crate::context::MAX_LOOKUPS_PER_EVALUATION {
        return error(&format!("more than {} lookups in one evaluation", crate::context::MAX_LOOKUPS_PER_EVALUATION));
    }
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len > MAX_LOOKUP_QUERY {
        return error(&format!("the query is {len} bytes, over {MAX_LOOKUP_QUERY}"));
    }
    let Some(memory) = caller.get_export(names::MEMORY).and_then(|e| e.into_memory()) else {
        return error("the module exports no memory");
    };
    let mut query = vec![0; len];
    if memory.read(&*caller, ptr, &mut query).is_err() {
        return error("the query lies outside memory");
    }
    match caller.data().lookup.clone() {
        Some(handler) => handler.lookup(&query),
        None => error("lookups are answered only while evaluating a request"),
    }
}

/// Hands `bytes` to the guest in a buffer from its `portcullis_alloc`, as
/// the packed `ptr << 32 | len` that the import returns.
async fn give_to_guest(caller: &mut Caller<'_, GuestState>, bytes: &[u8]) -> wasmtime::Result<i64> {
    let len = i32::try_from(bytes.len()).map_err(|_| EvalError::BadOutput("lookup answer over 2 GiB".into()))?;
    let alloc = caller
        .get_export(names::ALLOC)
        .and_then(|e| e.into_func())
        .ok_or(EvalError::Abi(AbiError::MissingExport(names::ALLOC)))?
        .typed::<i32, i32>(&*caller)?;
    let ptr = alloc.call_async(&mut *caller, len.max(1)).await?;
    if ptr == 0 {
        return Err(
            EvalError::Trap(format!("`{}` could not allocate {len} bytes for a lookup answer", names::ALLOC)).into()
        );
    }
    let memory = caller
        .get_export(names::MEMORY)
        .and_then(|e| e.into_memory())
        .ok_or(EvalError::Abi(AbiError::MissingExport(names::MEMORY)))?;
    memory
        .write(&mut *caller, ptr as u32 as usize, bytes)
        .map_err(|_| EvalError::BadOutput(format!("`{}` returned an out-of-bounds buffer", names::ALLOC)))?;
    Ok(((u64::from(ptr as u32) << 32) | u64::from(len as u32)) as i64)
}

/// Splits the `ptr << 32 | len` an export returns.
pub fn unpack(packed: i64) -> (usize, usize) {
    let packed = packed as u64;
    ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize)
}

/// What `portcullis_validate` returned, decoded field by field so that a bad
/// answer gets a precise message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOutcome<'a> {
    error: Option<String>,
    allowed: Option<bool>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    warnings: Vec<String>,
    #[serde(default)]
    #[serde(borrow)]
    patch: Option<Vec<WireOperation<'a>>>,
    #[serde(default)]
    mutated_object: Option<serde_json::Value>,
}

/// One RFC 6902 operation as it crosses the boundary. `json_patch`'s own
/// decoder goes through serde's buffering of internally tagged enums, which
/// cost most of the decoding of a mutator's verdict (about 10 µs for a
/// 20-operation patch); this plain struct decodes in one pass and converts.
#[derive(Debug, Deserialize)]
struct WireOperation<'a> {
    /// Borrowed from the answer unless it holds escapes.
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    path: String,
    #[serde(default)]
    from: Option<String>,
    /// Present (even as `null`) or absent; kept as the guest wrote it.
    #[serde(default, deserialize_with = "present")]
    value: Option<Box<RawValue>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    if !plainly_valid(raw.get()) {
        serde_json::from_str::<Checked>(raw.get()).map_err(serde::de::Error::custom)?;
    }
    Ok(Some(raw))
}

/// Whether JSON text (already checked for syntax) is one a `Value` decodes,
/// for want of anything that could make it fail: no escape (so no lone
/// surrogate), at most 100 arrays and maps (so no nesting past 128), no
/// number with an exponent or over 300 digits (so none out of range). A
/// mutator's values nearly always are; the others get the full [`Checked`]
/// reading, which costs a second parse of the value.
fn plainly_valid(json: &str) -> bool {
    let (mut in_string, mut opened, mut digits, mut previous) = (false, 0usize, 0usize, b' ');
    for &byte in json.as_bytes() {
        if in_string {
            match byte {
                b'\\' => return false,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => opened += 1,
                b'e' | b'E' if previous.is_ascii_digit() => return false,
                _ => {}
            }
            digits = if byte.is_ascii_digit() { digits + 1 } else { 0 };
            if opened > 100 || digits > 300 {
                return false;
            }
        }
        previous = byte;
    }
    true
}

/// A JSON value read through without being built, refusing what decoding
/// it as a `serde_json::Value` refuses: a number out of range (`1e400`),
/// a lone surrogate (`"\ud800"`), nesting deeper than 128. `RawValue`
/// only checks the syntax, and a value kept as text goes to the API server
/// as written: one it cannot read must fail here, by the policy's
/// failurePolicy.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// Most tokens a patch's pointer may have. The objects a patch applies to
/// are read with serde_json's nesting limit of 128 and so are the values it
/// adds, so no pointer that applies comes near; a deeper one is refused
/// before the host walks it (the patch check's tree of wanted paths is as
/// deep as the deepest pointer).
pub const MAX_POINTER_TOKENS: usize = 512;

impl WireOperation<'_> {
    fn into_operation(self, index: usize) -> Result<Operation, String> {
        let pointer = |p: String, field: &str| {
            let pointer =
                PointerBuf::parse(p).map_err(|e| format!("patch[{index}].{field} is not a JSON Pointer: {e}"))?;
            // Every token follows a `/`, and an escaped token holds none.
            match pointer.as_str().bytes().filter(|&b| b == b'/').count() {
                tokens if tokens > MAX_POINTER_TOKENS => Err(format!(
                    "patch[{index}].{field} is {tokens} tokens deep; at most {MAX_POINTER_TOKENS} are accepted"
                )),
                _ => Ok(pointer),
            }
        };
        let op = match &*self.op {
            "add" => Op::Add,
            "remove" => Op::Remove,
            "replace" => Op::Replace,
            "move" => Op::Move,
            "copy" => Op::Copy,
            "test" => Op::Test,
            other => return Err(format!("patch[{index}] has unknown op {other:?}")),
        };
        let path = pointer(self.path, "path")?;
        let value = match (op, self.value) {
            (Op::Add | Op::Replace | Op::Test, None) => {
                return Err(format!("patch[{index}] ({}) has no value", self.op));
            }
            (Op::Add | Op::Replace | Op::Test, value) => value,
            _ => None,
        };
        let from = match (op, self.from) {
            (Op::Move | Op::Copy, Some(from)) => Some(pointer(from, "from")?),
            (Op::Move | Op::Copy, None) => return Err(format!("patch[{index}] ({}) has no from", self.op)),
            _ => None,
        };
        Ok(Operation { op, path, from, value })
    }
}

/// A verdict as the host keeps it: [`portcullis_sdk::Verdict`] with the
/// patch's values left as the JSON text the guest wrote. The host never
/// needs most of them as values (it checks where the operations go, and
/// sends the patch on as text), and building them, then freeing them, was
/// a quarter of the host's share of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestVerdict {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Why it was denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// HTTP-style status code for a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Warnings for the client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// RFC 6902 operations to apply to the object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<RawPatch>,
    /// The whole mutated object (the host diffs it into a patch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutated_object: Option<serde_json::Value>,
}

/// An RFC 6902 patch whose values are raw JSON text. It serializes to the
/// same JSON as the `json_patch::Patch` it stands for.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct RawPatch(pub Vec<Operation>);

impl RawPatch {
    /// True when it has no operation.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The patch with its values decoded.
    pub fn decode(&self) -> Result<json_patch::Patch, serde_json::Error> {
        self.0
            .iter()
            .map(|op| op.decode(|raw| serde_json::from_str(raw.get())))
            .collect::<Result<_, _>>()
            .map(json_patch::Patch)
    }
}

/// The kind of an RFC 6902 operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `add`
    Add,
    /// `remove`
    Remove,
    /// `replace`
    Replace,
    /// `move`
    Move,
    /// `copy`
    Copy,
    /// `test`
    Test,
}

/// One operation of a [`RawPatch`]: `from` for `move` and `copy` only,
/// `value` for `add`, `replace` and `test` only.
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    /// Its kind.
    pub op: Op,
    /// `from` (move, copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<PointerBuf>,
    /// Where it applies.
    pub path: PointerBuf,
    /// Its value (add, replace, test), as the guest wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Box<RawValue>>,
}

impl PartialEq for Operation {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op
            && self.path == other.path
            && self.from == other.from
            && self.value.as_ref().map(|v| v.get()) == other.value.as_ref().map(|v| v.get())
    }
}

impl Operation {
    /// The `json_patch` operation, its value (if it has one) from `value`.
    pub fn decode<E>(
        &self,
        value: impl FnOnce(&RawValue) -> Result<serde_json::Value, E>,
    ) -> Result<json_patch::PatchOperation, E> {
        use json_patch::{
            AddOperation, CopyOperation, MoveOperation, PatchOperation, RemoveOperation, ReplaceOperation,
            TestOperation,
        };
        let path = self.path.clone();
        let from = || self.from.clone().unwrap_or_default();
        let value = match &self.value {
            Some(raw) => value(raw)?,
            None => serde_json::Value::Null,
        };
        Ok(match self.op {
            Op::Add => PatchOperation::Add(AddOperation { path, value }),
            Op::Remove => PatchOperation::Remove(RemoveOperation { path }),
            Op::Replace => PatchOperation::Replace(ReplaceOperation { path, value }),
            Op::Move => PatchOperation::Move(MoveOperation { from: from(), path }),
            Op::Copy => PatchOperation::Copy(CopyOperation { from: from(), path }),
            Op::Test => PatchOperation::Test(TestOperation { path, value }),
        })
    }
}

/// Decodes a verdict; a guest-reported error becomes [`EvalError::Guest`].
pub fn decode_verdict(bytes: &[u8]) -> Result<GuestVerdict, EvalError> {
    // One UTF-8 check of the whole answer, then a parser that trusts it:
    // cheaper than checking each string as it is decoded.
    let text = std::str::from_utf8(bytes).map_err(|e| EvalError::BadOutput(format!("not a verdict: {e}")))?;
    let raw: RawOutcome =
        serde_json::from_str(text).map_err(|e| EvalError::BadOutput(format!("not a verdict: {e}")))?;
    if let Some(error) = raw.error {
        return Err(EvalError::Guest(error));
    }
    let Some(allowed) = raw.allowed else {
        return Err(EvalError::BadOutput("verdict has no `allowed` field".into()));
    };
    if raw.patch.is_some() && raw.mutated_object.is_some() {
        return Err(EvalError::BadOutput("verdict has both `patch` and `mutatedObject`".into()));
    }
    let patch = match raw.patch {
        Some(ops) => Some(RawPatch(
            ops.into_iter()
                .enumerate()
                .map(|(i, op)| op.into_operation(i))
                .collect::<Result<_, _>>()
                .map_err(|e| EvalError::BadOutput(format!("not a verdict: {e}")))?,
        )),
        None => None,
    };
    Ok(GuestVerdict {
        allowed,
        message: raw.message,
        code: raw.code,
        warnings: raw.warnings,
        patch,
        mutated_object: raw.mutated_object,
    })
}

/// Decodes the answer of `portcullis_validate_settings`.
pub fn decode_settings_validation(bytes: &[u8]) -> Result<portcullis_sdk::SettingsValidation, EvalError> {
    serde_json::from_slice(bytes).map_err(|e| EvalError::BadOutput(format!("not a settings validation: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_splits_pointer_and_length() {
        assert_eq!(unpack((0x0001_0000_i64 << 32) | 42), (0x0001_0000, 42));
        assert_eq!(unpack(-1), (0xffff_ffff, 0xffff_ffff));
    }

    /// Found by the `guest_verdict` fuzz target: without serde_json's
    /// `float_roundtrip`, a float read from a guest's answer and written
    /// again came back one ulp away, so the host's diff of a mutated object
    /// patched a field the policy had not changed.
    #[test]
    fn floats_in_a_verdict_survive_a_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let input = include_bytes!("../../fuzz/regressions/guest_verdict/float-beyond-u64-moves-an-ulp.json");
        let verdict = decode_verdict(input)?;
        let again = decode_verdict(&serde_json::to_vec(&verdict)?)?;
        assert_eq!(again.mutated_object, verdict.mutated_object);
        let ratio = verdict.mutated_object.as_ref().and_then(|o| o.pointer("/spec/ratio")).and_then(|r| r.as_f64());
        assert_eq!(ratio, Some(98_446_744_073_709_551_615.0));
        Ok(())
    }

    #[test]
    fn verdict_decoding() {
        assert!(matches!(decode_verdict(br#"{"allowed":true}"#), Ok(v) if v.allowed));
        assert!(matches!(decode_verdict(br#"{"error":"no object"}"#), Err(EvalError::Guest(m)) if m == "no object"));
        assert!(matches!(decode_verdict(br#"{"message":"x"}"#), Err(EvalError::BadOutput(m)) if m.contains("allowed")));
        assert!(matches!(decode_verdict(b"{\"allowed\": tru"), Err(EvalError::BadOutput(_))));
        assert!(matches!(
            decode_verdict(br#"{"allowed":true,"patch":[],"mutatedObject":{}}"#),
            Err(EvalError::BadOutput(m)) if m.contains("both")
        ));
        let v = decode_verdict(br#"{"allowed":true,"patch":[{"op":"add","path":"/a~1b","value":1}]}"#);
        assert!(matches!(v, Ok(v) if v.patch.as_ref().map(|p| p.0.len()) == Some(1)));
    }

    #[test]
    fn patches_decode_as_json_patch_does() -> Result<(), Box<dyn std::error::Error>> {
        let ops = r#"[{"op":"add","path":"/a~1b","value":null},{"op":"remove","path":"/c"},{"op":"replace","path":"/d","value":[1]},
                      {"op":"move","from":"/e","path":"/f"},{"op":"copy","from":"/g","path":"/h"},{"op":"test","path":"/i","value":"x"}]"#;
        let verdict = decode_verdict(format!(r#"{{"allowed":true,"patch":{ops}}}"#).as_bytes())?;
        let expected: json_patch::Patch = serde_json::from_str(ops)?;
        let patch = verdict.patch.ok_or("no patch")?;
        assert_eq!(patch.decode()?, expected);
        // Written out again, it is the patch json_patch writes.
        assert_eq!(serde_json::to_string(&patch)?, serde_json::to_string(&expected)?);
        for (bad, fragment) in [
            (r#"[{"op":"add","path":"/a"}]"#, "patch[0] (add) has no value"),
            (r#"[{"op":"move","path":"/a"}]"#, "has no from"),
            (r#"[{"op":"add","path":"a","value":1}]"#, "patch[0].path is not a JSON Pointer"),
            (r#"[{"op":"merge","path":"/a","value":1}]"#, "unknown op \"merge\""),
            (r#"[{"path":"/a"}]"#, "missing field `op`"),
            (r#"[{"op":"add","path":"/a","value":1e400}]"#, "number out of range"),
            (r#"[{"op":"add","path":"/a","value":{"k":["\ud800"]}}]"#, "escape"),
            (r#"[{"op":"remove","path":"/a","value":-1e999}]"#, "number out of range"),
        ] {
            match decode_verdict(format!(r#"{{"allowed":true,"patch":{bad}}}"#).as_bytes()) {
                Err(EvalError::BadOutput(m)) => assert!(m.contains(fragment), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn plain_values_skip_the_second_reading_and_others_do_not() {
        for plain in [r#"{"name":"AWS_ROLE_ARN","value":"arn:aws:iam::1:role/x"}"#, "[1,-2.5,true,false,null]", "\"é\""]
        {
            assert!(plainly_valid(plain), "{plain}");
        }
        let long = format!("1{}", "0".repeat(300));
        let nested = format!("{}{}", "[".repeat(101), "]".repeat(101));
        for not in [r#""a\"b""#, "1e5", "[2.5E-3]", &long, &nested] {
            assert!(!plainly_valid(not), "{not}");
        }
        // Letters of literals and strings are not exponents.
        assert!(plainly_valid(r#"{"e":"1e400","true":true,"v":[false]}"#));
    }

    #[test]
    fn deep_values_and_pointers_are_refused() {
        let deep = format!("{}1{}", "[".repeat(129), "]".repeat(129));
        let verdict = format!(r#"{{"allowed":true,"patch":[{{"op":"add","path":"/a","value":{deep}}}]}}"#);
        assert!(
            matches!(decode_verdict(verdict.as_bytes()), Err(EvalError::BadOutput(m)) if m.contains("recursion limit")),
            "a value nested past serde_json's limit"
        );
        let ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let verdict = format!(r#"{{"allowed":true,"patch":[{{"op":"add","path":"/a","value":{ok}}}]}}"#);
        assert!(decode_verdict(verdict.as_bytes()).is_ok_and(|v| v.patch.is_some()));
        let path = "/a".repeat(MAX_POINTER_TOKENS + 1);
        let verdict = format!(r#"{{"allowed":true,"patch":[{{"op":"remove","path":"{path}"}}]}}"#);
        assert!(
            matches!(decode_verdict(verdict.as_bytes()), Err(EvalError::BadOutput(m)) if m.contains("tokens deep")),
            "a pointer deeper than any object"
        );
        let path = "/a".repeat(MAX_POINTER_TOKENS);
        let verdict = format!(r#"{{"allowed":true,"patch":[{{"op":"copy","from":"{path}","path":"/b"}}]}}"#);
        assert!(decode_verdict(verdict.as_bytes()).is_ok());
    }

    #[test]
    fn versions() {
        assert_eq!(check_version(ABI_VERSION), Ok(()));
        assert_eq!(check_version(2), Err(AbiError::Version(2)));
    }
}
