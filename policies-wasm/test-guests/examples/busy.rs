//! Legitimately slow: spends a fixed amount of CPU time (about 0.1 s on
//! the development machine, far past the first tick; the guest is compiled
//! by Cranelift, so the host's build profile hardly matters), then admits.
use portcullis_sdk::{NoSettings, Request, Verdict};

/// Iterations of the busy loop.
const WORK: u64 = 100_000_000;

fn validate(_: &Request, _: &NoSettings) -> Verdict {
    let mut n: u64 = 0;
    while n < WORK {
        n = std::hint::black_box(n + 1);
    }
    Verdict::allow()
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
