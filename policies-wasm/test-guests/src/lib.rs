//! Guest programs for the host's tests, one per file in `examples/`, each
//! compiled to its own wasm module by `cargo xtask build-policies` into
//! `target/policies/test-guests/<name>.wasm`.
//!
//! [`foreach_guest!`] names every program; the host's test suite invokes it to
//! check that each program has a test, so adding a guest without one fails to
//! compile.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
