//! The ABI shim: the only place in a policy where raw guest memory is touched.
//!
//! The functions here are called by the exports that [`crate::policy!`]
//! generates. Memory ownership follows `ABI.md`: the host asks the guest to
//! allocate the input buffer with `portcullis_alloc` and writes into it; the
//! guest owns it from then on. The guest leaves its answer in its own memory
//! and returns `ptr << 32 | len`; the host copies it out and then drops the
//! whole instance, so nothing is ever freed across the boundary.
//!
//! Addresses cross the boundary as `i32`, which holds a pointer only on
//! `wasm32`: [`validate`] and [`validate_settings`] turn the integer they are
//! given back into a pointer and take over the buffer behind it, so they are
//! `unsafe` and their callers (the generated exports) vouch for the host. On
//! targets with wider pointers the `i32` functions cannot be used soundly at
//! all; native code calls [`evaluate`], which takes the input as a slice.
#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::projection::Key;
use crate::request::RequestSeed;
use crate::settings::{Settings, SettingsValidation, parse_settings};
use crate::verdict::Outcome;
use crate::{ObjectProjection, Request};

/// Allocates `len` bytes for the host to write into and returns their
/// address; 0 when `len` is negative. The buffer is leaked until
/// [`validate`] or [`validate_settings`] takes it back.
///
/// Safe: it only hands out memory. The address is a `wasm32` address; on
/// targets with wider pointers it is truncated and must not be passed on.
pub fn alloc(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    alloc_buffer(len) as usize as i32
}

/// A leaked buffer with room for exactly `len.max(1)` bytes, uninitialised;
/// [`take_input`] with the same `len` takes it back.
fn alloc_buffer(len: usize) -> *mut u8 {
    let mut buf = Vec::<u8>::with_capacity(len.max(1));
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

/// Takes back a buffer from [`alloc_buffer`] holding `len` bytes of input;
/// a null `ptr` gives an empty input.
///
/// # Safety
/// Unless null, `ptr` must come from [`alloc_buffer`]`(len)` with the same
/// `len`, have its first `len` bytes initialised, and not be used again by the
/// caller: the returned `Vec` owns (and eventually frees) the buffer.
unsafe fn take_input(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: per this function's contract, `ptr` was allocated by
    // `alloc_buffer(len)` as a `Vec<u8>` of capacity exactly `len.max(1)`
    // (`Vec::with_capacity` allocates exactly the capacity asked for), its first
    // `len` bytes are initialised, and ownership passes to the new `Vec`.
    unsafe { Vec::from_raw_parts(ptr, len, len.max(1)) }
}

/// Leaks `bytes` where the host can read them; returns their address and length.
fn leak_output(bytes: Vec<u8>) -> (*const u8, usize) {
    let bytes = Box::leak(bytes.into_boxed_slice());
    (bytes.as_ptr(), bytes.len())
}

/// What an export does, on real pointers: takes over the input buffer, computes
/// the answer, and leaves it in memory for the host.
///
/// # Safety
/// As for [`take_input`].
unsafe fn respond(ptr: *mut u8, len: usize, answer: impl FnOnce(&[u8]) -> Vec<u8>) -> (*const u8, usize) {
    // SAFETY: this function's contract is `take_input`'s.
    let input = unsafe { take_input(ptr, len) };
    leak_output(answer(&input))
}

/// The pointer behind an address the host passed in as `i32` (read unsigned,
/// as ABI.md says).
fn pointer(address: i32) -> *mut u8 {
    address as u32 as usize as *mut u8
}

/// A length the host passed in; a negative one (which [`alloc`] refuses) as 0.
fn length(len: i32) -> usize {
    usize::try_from(len).unwrap_or(0)
}

/// Packs an answer's address and length as the `i64` an export returns:
/// `ptr << 32 | len`, both halves zero-extended (ABI.md §2.3).
fn pack(address: usize, len: usize) -> i64 {
    (((address as u64) << 32) | (len as u64 & 0xffff_ffff)) as i64
}

/// Leaves `bytes` in guest memory for the host and packs its address and
/// length as the `i64` an export returns (`ptr << 32 | len`).
///
/// Safe: it only leaks memory. The address half is meaningful on `wasm32`
/// only.
pub fn give_output(bytes: Vec<u8>) -> i64 {
    let (ptr, len) = leak_output(bytes);
    pack(ptr as usize, len)
}

#[derive(Deserialize)]
struct Input<S> {
    request: Request,
    #[serde(default)]
    settings: Option<S>,
}

/// [`Input`] with the request's object decoded by a policy's projection.
struct InputSeed<S>(ObjectProjection, PhantomData<S>);

impl<'de, S: Settings> DeserializeSeed<'de> for InputSeed<S> {
    type Value = Input<S>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Input<S>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, S: Settings> Visitor<'de> for InputSeed<S> {
    type Value = Input<S>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("policy input: {\"request\": ..., \"settings\": ...}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Input<S>, A::Error> {
        let (mut request, mut settings) = (None, None);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match &*key {
                "request" if request.is_some() => return Err(de::Error::duplicate_field("request")),
                "request" => request = Some(map.next_value_seed(RequestSeed(self.0))?),
                "settings" if settings.is_some() => return Err(de::Error::duplicate_field("settings")),
                "settings" => settings = Some(map.next_value::<Option<S>>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let settings = settings.flatten();
        let request = request.ok_or_else(|| de::Error::missing_field("request"))?;
        Ok(Input { request, settings })
    }
}

/// Body of the `portcullis_validate` export: reads the input the host wrote at
/// `ptr`, runs `policy` on it as [`evaluate`] does, and returns the packed
/// location of the answer (see [`give_output`]).
///
/// # Safety
/// `ptr` must be 0 (an empty input) or an address that [`alloc`]`(len)`
/// returned in this instance, with the same `len`, whose `len` bytes have all
/// been written; the buffer must not be used or passed in again afterwards
/// (this function takes it over and frees it). This is the call sequence of
/// ABI.md §4.1, which the host follows; it can only hold on `wasm32`.
pub unsafe fn validate<S, O>(ptr: i32, len: i32, policy: fn(&Request, &S) -> O) -> i64
where
    S: Settings,
    O: Into<Outcome>,
{
    // SAFETY: this function's contract is ours.
    unsafe { validate_with(ptr, len, policy, None) }
}

/// [`validate`] for a policy that declares an [`ObjectProjection`].
///
/// # Safety
/// As for [`validate`].
pub unsafe fn validate_with<S, O>(
    ptr: i32,
    len: i32,
    policy: fn(&Request, &S) -> O,
    projection: Option<ObjectProjection>,
) -> i64
where
    S: Settings,
    O: Into<Outcome>,
{
    // SAFETY: this function's contract is `respond`'s: `ptr` is null or came
    // from `alloc(len)`, i.e. `alloc_buffer(length(len))` (`alloc` refuses
    // negative lengths), fully written, and is not used again.
    let (out, out_len) = unsafe { respond(pointer(ptr), length(len), |input| answer(input, policy, projection)) };
    pack(out as usize, out_len)
}

/// What `portcullis_validate` answers for `input`: the outcome's JSON.
fn answer<S, O>(input: &[u8], policy: fn(&Request, &S) -> O, projection: Option<ObjectProjection>) -> Vec<u8>
where
    S: Settings,
    O: Into<Outcome>,
{
    let outcome = evaluate_with(input, policy, projection);
    let bytes = serde_json::to_vec(&outcome)
        .unwrap_or_else(|e| format!(r#"{{"error":"cannot encode verdict: {e}"}}"#).into_bytes());
    discard(outcome);
    bytes
}

/// Drops `value`, except in a module: there the instance ends with this
/// request, and walking a tree of values only to hand their memory back to
/// the arena (which keeps it anyway) is wasted work (see [`crate::arena`]).
pub(crate) fn discard<T>(value: T) {
    #[cfg(target_arch = "wasm32")]
    std::mem::forget(value);
    #[cfg(not(target_arch = "wasm32"))]
    drop(value);
}

/// Decodes ABI input JSON and runs the policy: the body of `portcullis_validate`
/// without the memory handling, also used natively by tests.
pub fn evaluate<S, O>(input: &[u8], policy: fn(&Request, &S) -> O) -> Outcome
where
    S: Settings,
    O: Into<Outcome>,
{
    evaluate_with(input, policy, None)
}

/// [`evaluate`] for a policy that declares an [`ObjectProjection`]: the
/// object of the kinds it names is decoded with it as the input is read.
pub fn evaluate_with<S, O>(input: &[u8], policy: fn(&Request, &S) -> O, projection: Option<ObjectProjection>) -> Outcome
where
    S: Settings,
    O: Into<Outcome>,
{
    // One UTF-8 check of the whole input, then a parser that trusts it:
    // cheaper than checking every string and every raw object separately.
    let text = match std::str::from_utf8(input) {
        Ok(text) => text,
        Err(e) => return Outcome::Error { error: format!("cannot decode policy input: {e}") },
    };
    let decoded = match projection {
        None => serde_json::from_str::<Input<S>>(text),
        Some(projection) => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            InputSeed(projection, PhantomData).deserialize(&mut deserializer).and_then(|input| {
                deserializer.end()?;
                Ok(input)
            })
        }
    };
    match decoded {
        Ok(Input { request, settings }) => {
            let settings = settings.unwrap_or_default();
            let outcome = policy(&request, &settings).into();
            discard((request, settings));
            outcome
        }
        Err(e) => Outcome::Error { error: format!("cannot decode policy input: {e}") },
    }
}

/// Body of the `portcullis_validate_settings` export: reads the settings JSON
/// the host wrote at `ptr`, checks them, and returns the packed location of the
/// [`SettingsValidation`] answer.
///
/// # Safety
/// As for [`validate`]: `ptr` is 0 or comes from [`alloc`]`(len)` with the
/// same `len`, fully written, and is not used again.
pub unsafe fn validate_settings<S: Settings>(ptr: i32, len: i32) -> i64 {
    // SAFETY: this function's contract is `validate`'s, which is `respond`'s.
    let (out, out_len) = unsafe { respond(pointer(ptr), length(len), settings_answer::<S>) };
    pack(out as usize, out_len)
}

/// What `portcullis_validate_settings` answers for `input`.
fn settings_answer<S: Settings>(input: &[u8]) -> Vec<u8> {
    let result = match parse_settings::<S>(input) {
        Ok(_) => SettingsValidation { valid: true, message: None },
        Err(message) => SettingsValidation { valid: false, message: Some(message) },
    };
    serde_json::to_vec(&result).unwrap_or_default()
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "portcullis")]
unsafe extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, ptr: *const u8, len: usize);
    /// Imported only by modules that call [`crate::lookup`] (the linker
    /// drops unused imports), so other modules load on any server.
    #[link_name = "lookup"]
    fn host_lookup_raw(ptr: *const u8, len: usize) -> i64;
}

/// Asks the host for the objects a query selects; returns its answer JSON.
#[cfg(target_arch = "wasm32")]
pub(crate) fn host_lookup(query: &[u8]) -> Vec<u8> {
    // SAFETY: `query` is valid for reads of `query.len()` bytes for the
    // duration of the call; the host only reads them.
    let packed = unsafe { host_lookup_raw(query.as_ptr(), query.len()) };
    let (ptr, len) = ((packed as u64 >> 32) as i32, (packed as u64 & 0xffff_ffff) as i32);
    // SAFETY: per ABI.md §3.1 the host wrote the answer, `len` bytes, into a
    // buffer it obtained from `portcullis_alloc(len)` (ours, so `alloc_buffer`)
    // and hands it over to the guest; nothing else refers to it.
    unsafe { take_input(pointer(ptr), length(len)) }
}

/// Sends one log line to the host.
#[cfg(target_arch = "wasm32")]
pub(crate) fn log(level: i32, message: &str) {
    // SAFETY: `message` is a valid UTF-8 slice for the duration of the call;
    // the host only reads `len` bytes from `ptr` and keeps no reference.
    unsafe { host_log(level, message.as_ptr(), message.len()) }
}

#[cfg(test)]
mod tests {
    //! The exports' memory contract, exercised natively. The `i32` exports
    //! themselves hold addresses only on `wasm32` (the host's guest tests run
    //! them there); here the host's side of ABI.md §4.1 (allocate, write,
    //! call, read the answer) runs around `respond`, which is everything
    //! [`validate`] and [`validate_settings`] do but the `i32` conversions.

    use super::*;
    use crate::{NoSettings, Verdict};

    fn deny_in_shop(request: &Request, _: &NoSettings) -> Verdict {
        match request.namespace.as_deref() {
            Some("shop") => Verdict::deny("shop is closed"),
            _ => Verdict::allow(),
        }
    }

    /// Plays the host: writes `input` into a buffer from `alloc_buffer`, calls
    /// `answer` through `respond` and copies the answer out.
    fn host_call(input: &[u8], answer: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let ptr = alloc_buffer(input.len());
        // SAFETY: `ptr` has room for `input.len()` bytes (`alloc_buffer`'s
        // contract) and, freshly allocated, does not overlap `input`.
        unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), ptr, input.len()) };
        // SAFETY: `ptr` came from `alloc_buffer(input.len())`, all of its
        // `input.len()` bytes are written, and it is not used again here.
        let (out, out_len) = unsafe { respond(ptr, input.len(), answer) };
        // SAFETY: `respond` returns leaked memory holding `out_len` initialised
        // bytes that nothing frees or mutates.
        unsafe { std::slice::from_raw_parts(out, out_len) }.to_vec()
    }

    fn request(namespace: &str) -> serde_json::Value {
        serde_json::json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}},
        })
    }

    #[test]
    fn validate_round_trip_through_guest_memory() -> Result<(), String> {
        for (namespace, allowed) in [("shop", false), ("web", true)] {
            let input = serde_json::json!({"request": request(namespace), "settings": {}}).to_string();
            let output = host_call(input.as_bytes(), |input| answer(input, deny_in_shop, None));
            let outcome: Outcome = serde_json::from_slice(&output).map_err(|e| e.to_string())?;
            assert!(matches!(&outcome, Outcome::Verdict(v) if v.allowed == allowed), "{namespace}: {outcome:?}");
        }
        Ok(())
    }

    #[test]
    fn validate_settings_round_trip_through_guest_memory() -> Result<(), String> {
        let output = host_call(b"{}", settings_answer::<NoSettings>);
        let valid: SettingsValidation = serde_json::from_slice(&output).map_err(|e| e.to_string())?;
        assert!(valid.valid, "{valid:?}");
        let output = host_call(br#"{"typo": 1}"#, settings_answer::<NoSettings>);
        let refused: SettingsValidation = serde_json::from_slice(&output).map_err(|e| e.to_string())?;
        assert!(!refused.valid && refused.message.is_some_and(|m| m.contains("typo")));
        Ok(())
    }

    #[test]
    fn null_input_is_empty_and_answered_as_an_error() -> Result<(), String> {
        // SAFETY: a null pointer is allowed and stands for an empty input.
        let (out, out_len) = unsafe { respond(std::ptr::null_mut(), 0, |input| answer(input, deny_in_shop, None)) };
        // SAFETY: as in `host_call`.
        let output = unsafe { std::slice::from_raw_parts(out, out_len) };
        let outcome: Outcome = serde_json::from_slice(output).map_err(|e| e.to_string())?;
        assert!(matches!(outcome, Outcome::Error { error } if error.contains("cannot decode policy input")));
        Ok(())
    }

    const NAMES: crate::projection::Keep = crate::projection::Keep::Fields(&[(
        "metadata",
        crate::projection::Keep::Fields(&[("name", crate::projection::Keep::All)]),
    )]);

    fn pods_by_name(
        kind: &crate::GroupVersionKind,
        operation: crate::Operation,
    ) -> Option<&'static crate::projection::Keep> {
        (kind.is("", "v1", "Pod") && operation == crate::Operation::Create).then_some(&NAMES)
    }

    /// `{"request": ..., "settings": {}}`, the request's fields in the API server's order.
    fn input(request: &serde_json::Value) -> String {
        format!(r#"{{"request":{},"settings":{{}}}}"#, crate::request::request_json(request))
    }

    fn decode_both(text: &str) -> (Request, Request) {
        let derived = serde_json::from_str::<Input<NoSettings>>(text).map(|i| i.request);
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let seeded =
            InputSeed::<NoSettings>(pods_by_name, PhantomData).deserialize(&mut deserializer).map(|i| i.request);
        match (derived, seeded) {
            (Ok(derived), Ok(seeded)) => (derived, seeded),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn the_seeded_decode_reads_every_field_the_derive_reads() {
        let mut full = request("web");
        full["subResource"] = "status".into();
        full["requestKind"] = serde_json::json!({"group": "", "version": "v1", "kind": "Pod"});
        full["requestResource"] = serde_json::json!({"group": "", "version": "v1", "resource": "pods"});
        full["requestSubResource"] = "status".into();
        full["name"] = "web".into();
        full["userInfo"] = serde_json::json!({"username": "u", "uid": "1", "groups": ["g"], "extra": {"k": ["v"]}});
        full["oldObject"] = serde_json::json!({"metadata": {"name": "old"}});
        full["dryRun"] = true.into();
        full["options"] = serde_json::json!({"kind": "CreateOptions"});
        full["unknownField"] = serde_json::json!([1, {"a": null}]);
        let (derived, seeded) = decode_both(&input(&full));
        let as_json = |r: &Request| serde_json::to_value(r).unwrap_or_default();
        let mut expected = as_json(&derived);
        expected["object"] = serde_json::Value::Null;
        assert_eq!(as_json(&seeded), expected, "every field but the object is decoded alike");
        let projected = match &*seeded.state.borrow() {
            crate::request::ObjectState::Projected { value, .. } => Some(value.clone()),
            _ => None,
        };
        assert_eq!(projected, Some(serde_json::json!({"metadata": {"name": "web"}})));
        assert_eq!(seeded.object_projected(&NAMES).ok().flatten(), projected);
        assert_eq!(derived.object_projected(&NAMES).ok().flatten(), projected, "the same as projecting the raw object");
        let name = |r: &Request| r.object::<serde_json::Value>().ok().flatten().map(|o| o["metadata"]["name"].clone());
        assert_eq!(name(&seeded), name(&derived));
        assert!(seeded.object_value().is_err(), "a projected object is not whole: Verdict::mutate would lose fields");
        assert!(derived.object_value().is_ok_and(|o| o.is_some_and(|o| o["kind"] == "Pod")));
        const OTHER: crate::projection::Keep = crate::projection::Keep::All;
        assert!(seeded.object_projected(&OTHER).is_err(), "another projection cannot be served");
        assert!(seeded.take_object_projected(&OTHER).is_err());
        for request in [&seeded, &derived] {
            assert_eq!(request.take_object_projected(&NAMES).ok().flatten(), projected, "handed over");
            assert!(request.object_projected(&NAMES).is_err(), "gone from the request, which says so");
            assert!(request.object::<serde_json::Value>().is_err() && request.object_value().is_err());
            assert!(request.take_object_projected(&NAMES).is_err());
        }
    }

    #[test]
    fn the_seeded_decode_refuses_repeated_fields_as_the_derive_does() {
        let text = r#"{"request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                       "operation": "CREATE", "object": {}, "operation": "UPDATE"}}"#;
        assert!(serde_json::from_str::<Input<NoSettings>>(text).is_err());
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let seeded = InputSeed::<NoSettings>(pods_by_name, PhantomData).deserialize(&mut deserializer);
        assert!(seeded.is_err_and(|e| e.to_string().contains("duplicate field `operation`")));
        let text = r#"{"request": {"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE"}, "settings": {}, "settings": {}}"#;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let seeded = InputSeed::<NoSettings>(pods_by_name, PhantomData).deserialize(&mut deserializer);
        assert!(seeded.is_err_and(|e| e.to_string().contains("duplicate field `settings`")));
    }

    #[test]
    fn the_seeded_decode_keeps_other_kinds_and_late_kinds_raw() {
        let mut update = request("web");
        update["operation"] = "UPDATE".into();
        let (derived, seeded) = decode_both(&input(&update));
        assert_eq!(*seeded.state.borrow(), crate::request::ObjectState::Raw);
        assert_eq!(seeded.object.as_ref().map(|o| o.get()), derived.object.as_ref().map(|o| o.get()));
        // `object` before `kind`: nothing to choose a projection by yet.
        let late = r#"{"request": {"object": {"metadata": {"name": "a", "x": 1}}, "uid": "u", "operation": "CREATE",
                       "kind": {"group": "", "version": "v1", "kind": "Pod"}}}"#;
        let mut deserializer = serde_json::Deserializer::from_str(late);
        let seeded = InputSeed::<NoSettings>(pods_by_name, PhantomData).deserialize(&mut deserializer);
        assert!(
            seeded.is_ok_and(
                |i| *i.request.state.borrow() == crate::request::ObjectState::Raw && i.request.object.is_some()
            )
        );
        // A null object is no object, projected or not.
        let mut no_object = request("web");
        no_object["object"] = serde_json::Value::Null;
        let (derived, seeded) = decode_both(&input(&no_object));
        assert_eq!(seeded.object_projected(&NAMES).ok().flatten(), None);
        assert_eq!(derived.object_projected(&NAMES).ok().flatten(), None);
        // Missing required fields are refused as by the derive.
        let text = r#"{"request": {"uid": "u", "kind": {"kind": "Pod"}}}"#;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let refused = InputSeed::<NoSettings>(pods_by_name, PhantomData).deserialize(&mut deserializer);
        assert!(refused.is_err_and(|e| e.to_string().contains("operation")));
    }

    #[test]
    fn packed_answer_zero_extends_both_halves() {
        assert_eq!(pack(0x8000_0010, 0xffff_fff0) as u64, 0x8000_0010_ffff_fff0);
        assert_eq!(pack(16, 2) as u64, (16 << 32) | 2);
        assert_eq!(length(-1), 0);
        assert_eq!(pointer(-16) as usize, 0xffff_fff0, "addresses are read unsigned");
        assert_eq!(alloc(-1), 0, "a negative length is refused");
    }
}
