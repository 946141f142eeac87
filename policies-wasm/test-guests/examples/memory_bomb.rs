//! Hostile: takes memory 4 MiB at a time, touching every page, until something
//! stops it. The host's memory cap must.
use portcullis_sdk::{NoSettings, Request, Verdict};

fn validate(_: &Request, _: &NoSettings) -> Verdict {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(std::hint::black_box(vec![0xa5; 4 << 20]));
    }
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
