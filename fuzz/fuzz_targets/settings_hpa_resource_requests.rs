//! `hpa-resource-requests` settings: arbitrary bytes decoded and validated as the server
//! does when it loads the policy. Settings it accepts are then used to
//! evaluate every AdmissionReview of its `test_data/cases.yaml`.
//! Lookups are answered from the objects of its `test_data/context/`, with
//! the kinds the default config grants.
//! Nothing may panic, and accepted settings must decode at evaluation too.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use portcullis_fuzz::Policy;

static POLICY: LazyLock<Policy> = LazyLock::new(portcullis_fuzz::hpa_resource_requests);

fuzz_target!(|data: &[u8]| POLICY.check_settings::<hpa_resource_requests::Settings>(data));

// Mutants of JSON stay JSON most of the time.
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    portcullis_fuzz::mutate_json(data, size, max_size, seed)
});
