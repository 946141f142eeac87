//! Legitimately slow: spends a fixed amount of CPU time (a few hundred
//! milliseconds in a debug host, far past the first tick), then admits.
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
