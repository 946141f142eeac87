//! Hostile: never returns. The host's deadline must stop it.
use portcullis_sdk::{NoSettings, Request, Verdict};

fn validate(_: &Request, _: &NoSettings) -> Verdict {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
