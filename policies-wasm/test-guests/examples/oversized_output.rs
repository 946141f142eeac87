//! Hostile: answers with a 2 MiB message. The host's output cap must refuse it.
use portcullis_sdk::{NoSettings, Request, Verdict};

fn validate(_: &Request, _: &NoSettings) -> Verdict {
    Verdict::deny("x".repeat(2 << 20))
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
