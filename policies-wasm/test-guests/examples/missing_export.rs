//! Hostile: exports everything but `portcullis_validate`. Refused at load.
#[cfg(target_arch = "wasm32")]
mod exports {
    use portcullis_sdk::{NoSettings, abi};

    #[allow(unsafe_code)]
    #[unsafe(no_mangle)]
    pub extern "C" fn portcullis_abi_version() -> i32 {
        portcullis_sdk::ABI_VERSION
    }

    #[allow(unsafe_code)]
    #[unsafe(no_mangle)]
    pub extern "C" fn portcullis_alloc(len: i32) -> i32 {
        abi::alloc(len)
    }

    #[allow(unsafe_code)]
    #[unsafe(no_mangle)]
    pub extern "C" fn portcullis_validate_settings(ptr: i32, len: i32) -> i64 {
        // SAFETY: the host passes the buffer from `portcullis_alloc(len)`, as ABI.md §4.1 requires.
        unsafe { abi::validate_settings::<NoSettings>(ptr, len) }
    }
}
