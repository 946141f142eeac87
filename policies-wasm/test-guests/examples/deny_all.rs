//! Denies everything with a fixed message and code.
use portcullis_sdk::{NoSettings, Request, Verdict};

fn validate(req: &Request, _: &NoSettings) -> Verdict {
    Verdict::deny(format!("deny-all denies every {}", req.kind.kind)).with_code(403)
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
