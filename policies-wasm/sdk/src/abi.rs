//! The ABI shim: the only place in a policy where raw guest memory is touched.
//!
//! The functions here are called by the exports that [`crate::policy!`]
//! generates. Memory ownership follows `ABI.md`: the host asks the guest to
//! allocate the input buffer with `portcullis_alloc` and writes into it; the
//! guest owns it from then on. The guest leaves its answer in its own memory
//! and returns `ptr << 32 | len`; the host copies it out and then drops the
//! whole instance, so nothing is ever freed across the boundary.
#![allow(unsafe_code)]

use serde::Deserialize;

use crate::Request;
use crate::settings::{Settings, SettingsValidation, parse_settings};
use crate::verdict::Outcome;

/// Allocates `len` bytes for the host to write into; 0 when `len` is negative.
pub fn alloc(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    let mut buf = Vec::<u8>::with_capacity(len.max(1));
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr as usize as i32
}

/// Takes back the input buffer written by the host.
///
/// # Safety
/// `ptr` must come from [`alloc`] with at least `len` bytes, of which the host
/// has initialised the first `len`.
unsafe fn take_input(ptr: i32, len: i32) -> Vec<u8> {
    let len = usize::try_from(len).unwrap_or(0);
    if ptr == 0 {
        return Vec::new();
    }
    let cap = len.max(1);
    // SAFETY: per this function's contract, `ptr` was returned by `alloc` for a
    // `Vec<u8>` of capacity `len.max(1)` (the host passes back the same length),
    // and the host wrote `len` bytes into it.
    unsafe { Vec::from_raw_parts(ptr as usize as *mut u8, len, cap) }
}

/// Leaves `bytes` in guest memory for the host and packs its address and
/// length as the `i64` an export returns (`ptr << 32 | len`).
pub fn give_output(bytes: Vec<u8>) -> i64 {
    let bytes = bytes.into_boxed_slice();
    let len = bytes.len() as u64;
    let ptr = Box::into_raw(bytes) as *mut u8 as usize as u64;
    ((ptr << 32) | (len & 0xffff_ffff)) as i64
}

#[derive(Deserialize)]
struct Input<S> {
    request: Request,
    #[serde(default)]
    settings: Option<S>,
}

/// Body of the `portcullis_validate` export.
pub fn validate<S, O>(ptr: i32, len: i32, policy: fn(&Request, &S) -> O) -> i64
where
    S: Settings,
    O: Into<Outcome>,
{
    // SAFETY: the host calls this export with a buffer it obtained from
    // `portcullis_alloc(len)` and filled, as ABI.md requires.
    let input = unsafe { take_input(ptr, len) };
    let outcome = evaluate(&input, policy);
    give_output(
        serde_json::to_vec(&outcome)
            .unwrap_or_else(|e| format!(r#"{{"error":"cannot encode verdict: {e}"}}"#).into_bytes()),
    )
}

/// Decodes ABI input JSON and runs the policy: the body of `portcullis_validate`
/// without the memory handling, also used natively by tests.
pub fn evaluate<S, O>(input: &[u8], policy: fn(&Request, &S) -> O) -> Outcome
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
    match serde_json::from_str::<Input<S>>(text) {
        Ok(Input { request, settings }) => policy(&request, &settings.unwrap_or_default()).into(),
        Err(e) => Outcome::Error { error: format!("cannot decode policy input: {e}") },
    }
}

/// Body of the `portcullis_validate_settings` export.
pub fn validate_settings<S: Settings>(ptr: i32, len: i32) -> i64 {
    // SAFETY: as for `validate`.
    let input = unsafe { take_input(ptr, len) };
    let result = match parse_settings::<S>(&input) {
        Ok(_) => SettingsValidation { valid: true, message: None },
        Err(message) => SettingsValidation { valid: false, message: Some(message) },
    };
    give_output(serde_json::to_vec(&result).unwrap_or_default())
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
    // SAFETY: per ABI.md the host wrote the answer into a buffer it obtained
    // from `portcullis_alloc(len)`, which it hands over to the guest.
    unsafe { take_input(ptr, len) }
}

/// Sends one log line to the host.
#[cfg(target_arch = "wasm32")]
pub(crate) fn log(level: i32, message: &str) {
    // SAFETY: `message` is a valid UTF-8 slice for the duration of the call;
    // the host only reads `len` bytes from `ptr` and keeps no reference.
    unsafe { host_log(level, message.as_ptr(), message.len()) }
}
