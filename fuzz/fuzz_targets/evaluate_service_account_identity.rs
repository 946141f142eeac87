//! `service-account-identity` on arbitrary objects: the input, when it is JSON, is the
//! object of a CREATE, an UPDATE (as the old object too) and a DELETE,
//! evaluated with every settings of the policy's `test_data/cases.yaml`.
//! The policy must not panic, and the host must accept its answers (see
//! `portcullis_fuzz::check_outcome`).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use portcullis_fuzz::Policy;

static POLICY: LazyLock<Policy> = LazyLock::new(portcullis_fuzz::service_account_identity);

fuzz_target!(|data: &[u8]| POLICY.evaluate_object(data));

// Mutants of JSON stay JSON most of the time.
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    portcullis_fuzz::mutate_json(data, size, max_size, seed)
});
