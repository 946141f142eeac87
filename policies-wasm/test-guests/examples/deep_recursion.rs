//! Hostile: recurses without bound. The host's stack limit must trap it.
use portcullis_sdk::{NoSettings, Request, Verdict};

fn depth(n: u64) -> u64 {
    if n == 0 { 0 } else { std::hint::black_box(depth(std::hint::black_box(n - 1))).wrapping_add(1) }
}

fn validate(_: &Request, _: &NoSettings) -> Verdict {
    Verdict::deny(format!("reached depth {}", depth(u64::MAX)))
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
