//! Hostile: allocates and touches memory until something stops it. The host's
//! memory cap must.
use portcullis_sdk::{NoSettings, Request, Verdict};

fn validate(_: &Request, _: &NoSettings) -> Verdict {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xa5; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
