//! Admits everything: the baseline for measuring server cost apart from policy cost.
use portcullis_sdk::{NoSettings, Request, Verdict};

fn validate(_: &Request, _: &NoSettings) -> Verdict {
    Verdict::allow()
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
