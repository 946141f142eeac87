//! What a guest module returns, as the host decodes it: arbitrary bytes
//! through `webhook_server::abi::decode_verdict` (the answer of
//! `portcullis_validate`) and `decode_settings_validation` (the answer of
//! `portcullis_validate_settings`), which must answer an error rather than
//! panic. Whatever decodes must decode to the same value again once
//! the host writes it out (its patches as the guest wrote their values), so
//! what the host sends on is what it read. (That the host reads what the SDK
//! writes is `portcullis_fuzz::check_outcome`'s part, in the policy targets.)
#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use webhook_server::abi::{decode_settings_validation, decode_verdict};

fuzz_target!(|data: &[u8]| {
    if let Ok(verdict) = decode_verdict(data) {
        let encoded = serde_json::to_vec(&verdict).unwrap_or_else(|e| panic!("encoding {verdict:?}: {e}"));
        match decode_verdict(&encoded) {
            Ok(again) => assert_eq!(again, verdict, "{}", String::from_utf8_lossy(&encoded)),
            Err(e) => panic!("{verdict:?}, encoded by the SDK, does not decode: {e}"),
        }
    }
    if let Ok(validation) = decode_settings_validation(data) {
        let encoded = serde_json::to_vec(&validation).unwrap_or_else(|e| panic!("encoding {validation:?}: {e}"));
        match decode_settings_validation(&encoded) {
            Ok(again) => assert_eq!(again, validation),
            Err(e) => panic!("{validation:?}, encoded by the SDK, does not decode: {e}"),
        }
    }
});

// Mutants of JSON stay JSON most of the time.
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    portcullis_fuzz::mutate_json(data, size, max_size, seed)
});
