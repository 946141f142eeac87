//! Hostile: imports WASI's `fd_write`, outside the Portcullis ABI. Refused at load.
use portcullis_sdk::{NoSettings, Request, Verdict};

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasi_snapshot_preview1")]
#[allow(unsafe_code)]
unsafe extern "C" {
    fn fd_write(fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> i32;
}

fn validate(_: &Request, _: &NoSettings) -> Verdict {
    #[cfg(target_arch = "wasm32")]
    #[allow(unsafe_code)]
    // SAFETY: never runs; the host refuses this module before instantiating it.
    let written = unsafe { fd_write(1, 0, 0, 0) };
    #[cfg(not(target_arch = "wasm32"))]
    let written = 0;
    Verdict::deny(format!("wrote {written}"))
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
