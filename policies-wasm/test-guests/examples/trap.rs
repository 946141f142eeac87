//! Hostile: panics, which with `panic = "abort"` is a wasm trap.
use portcullis_sdk::{NoSettings, Request, Verdict};

fn validate(req: &Request, _: &NoSettings) -> Verdict {
    if std::hint::black_box(!req.uid.is_empty()) {
        panic!("trap guest always panics");
    }
    Verdict::allow()
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
