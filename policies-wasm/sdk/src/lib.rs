//! Guest side of the Portcullis policy ABI.
//!
//! A Portcullis policy is a core WebAssembly module (`wasm32-unknown-unknown`)
//! that receives an `AdmissionRequest` plus its settings as JSON and answers
//! with a [`Verdict`]. This crate holds the request and verdict types, the
//! settings hook, the exports the host looks for, the host logging import, and
//! native stubs so that policy logic unit-tests with plain `cargo test`.
//!
//! The wire contract itself is written down for authors in other languages in
//! `ABI.md` next to this crate's `Cargo.toml`; [`ABI_VERSION`] is its version.
//!
//! A policy is a pure function plus one macro call:
//!
//! ```
//! use portcullis_sdk::{Request, Settings, Verdict};
//!
//! #[derive(Debug, Default, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct MySettings { forbidden_namespace: String }
//!
//! impl Settings for MySettings {}
//!
//! fn validate(req: &Request, settings: &MySettings) -> Verdict {
//!     if req.namespace.as_deref() == Some(settings.forbidden_namespace.as_str()) {
//!         Verdict::deny("this namespace is closed")
//!     } else {
//!         Verdict::allow()
//!     }
//! }
//!
//! portcullis_sdk::policy!(settings = MySettings, validate = validate);
//! ```

pub mod arena;
mod request;
mod settings;
mod verdict;

pub mod abi;
pub mod log;
pub mod lookup;
pub mod mutation;
pub mod projection;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use request::{
    GroupVersionKind, GroupVersionResource, ObjectProjection, Operation, REQUEST_FIELDS, Request, UserInfo,
    request_json,
};
pub use settings::{NoSettings, Settings, SettingsValidation, parse_settings};
pub use verdict::{Outcome, Verdict};

/// Whether `text` matches `pattern`, where `*` matches any run of characters
/// (including none) and every other character matches itself: the namespace
/// globs of the built-in policies' settings (`clipper-*`).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        for (pattern, text, expected) in [
            ("clipper-*", "clipper-production", true),
            ("clipper-*", "clipper-", true),
            ("clipper-*", "clipper", false),
            ("*", "anything", true),
            ("*", "", true),
            ("*-staging", "clipper-staging", true),
            ("*-staging", "clipper-staging-2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*b*c", "acb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**", "", true),
        ] {
            assert_eq!(super::glob_matches(pattern, text), expected, "{pattern} ~ {text}");
        }
    }
}

/// Re-exported so policies and the host agree on the patch type.
pub use json_patch;
/// Re-exported so policies need not name `serde_json` separately.
pub use serde_json;

/// Version of the host/guest contract implemented by this crate, returned by
/// the `portcullis_abi_version` export. The host refuses other versions.
pub const ABI_VERSION: i32 = 1;

/// Names of the exports and imports of ABI v1, shared with the host.
pub mod names {
    /// Module name of every host import.
    pub const IMPORT_MODULE: &str = "portcullis";
    /// `log(level: i32, ptr: i32, len: i32)`.
    pub const IMPORT_LOG: &str = "log";
    /// `lookup(ptr: i32, len: i32) -> i64`: answers a context query; returns
    /// `ptr << 32 | len` of the answer, in a buffer from `portcullis_alloc`.
    pub const IMPORT_LOOKUP: &str = "lookup";
    /// Exported linear memory.
    pub const MEMORY: &str = "memory";
    /// `() -> i32`: the ABI version.
    pub const ABI_VERSION: &str = "portcullis_abi_version";
    /// `(len: i32) -> i32`: allocate `len` bytes for the host to write into.
    pub const ALLOC: &str = "portcullis_alloc";
    /// `(ptr: i32, len: i32) -> i64`: evaluate a request; returns `ptr << 32 | len` of the verdict.
    pub const VALIDATE: &str = "portcullis_validate";
    /// `(ptr: i32, len: i32) -> i64`: check settings; returns `ptr << 32 | len` of the result.
    pub const VALIDATE_SETTINGS: &str = "portcullis_validate_settings";
}

/// Declares a module's exports: `policy!(settings = S, validate = f)` where
/// `S: Settings` and `f: fn(&Request, &S) -> impl Into<Outcome>`.
///
/// On `wasm32` this expands to the four ABI exports; the two that receive a
/// buffer call the `unsafe` [`abi::validate`] and [`abi::validate_settings`],
/// relying on the host to keep ABI.md's call sequence. On other targets it
/// expands to `pub fn evaluate(input: &[u8]) -> Outcome`, the same decoding
/// path as the `portcullis_validate` export, for native tests.
///
/// `policy!(settings = S, validate = f, object = p)` also declares an
/// [`ObjectProjection`] `p`: for the kinds and operations it names, the
/// object is decoded with its projection while the input is read (one pass
/// over the object instead of two) and served by [`Request::object_projected`]
/// (and, from what it kept, [`Request::object`]); `Request::object` (the raw
/// field) is then `None`.
#[macro_export]
macro_rules! policy {
    (settings = $settings:ty, validate = $validate:path $(,)?) => {
        $crate::policy!(@exports $settings, $validate, None);
    };
    (settings = $settings:ty, validate = $validate:path, object = $projection:path $(,)?) => {
        $crate::policy!(@exports $settings, $validate, Some($projection));
    };
    (@exports $settings:ty, $validate:path, $projection:expr) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn portcullis_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn portcullis_alloc(len: i32) -> i32 {
            $crate::abi::alloc(len)
        }

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn portcullis_validate(ptr: i32, len: i32) -> i64 {
            // SAFETY: only the host calls this export, and ABI.md §4.1 binds it
            // to pass the buffer it got from `portcullis_alloc(len)` in this
            // instance, with the same `len`, fully written, once.
            unsafe { $crate::abi::validate_with::<$settings, _>(ptr, len, $validate, $projection) }
        }

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn portcullis_validate_settings(ptr: i32, len: i32) -> i64 {
            // SAFETY: as for `portcullis_validate`.
            unsafe { $crate::abi::validate_settings::<$settings>(ptr, len) }
        }

        /// Evaluates ABI input JSON (`{"request": ..., "settings": ...}`) natively,
        /// exactly as the `portcullis_validate` export does in wasm.
        #[cfg(not(target_arch = "wasm32"))]
        pub fn evaluate(input: &[u8]) -> $crate::Outcome {
            $crate::abi::evaluate_with::<$settings, _>(input, $validate, $projection)
        }
    };
}
