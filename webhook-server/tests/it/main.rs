//! Integration tests of the webhook server: the compiled `.wasm` modules
//! through the real runtime, the HTTP router in process, and one real TLS
//! listener. They need the modules built first: `cargo xtask build-policies`
//! (which `cargo xtask test` runs).

mod cli;
mod common;
mod compile;
mod context_cluster;
#[cfg(target_os = "linux")]
mod faults;
mod guests;
mod listener;
mod policies;
mod registry;
mod reload;
mod router;
mod tls;
