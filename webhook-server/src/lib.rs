//! Portcullis: a Kubernetes admission server whose policies are sandboxed
//! WebAssembly modules.
//!
//! The pieces, from the outside in: [`server`] (the axum router and the
//! TLS listener), [`admission`] (AdmissionReview in, AdmissionReview out),
//! [`policy`] (the loaded [`policy::PolicySet`]), [`runtime`] (the wasmtime
//! sandbox) and [`abi`] (the host side of the guest contract). [`context`]
//! answers context-aware policies' lookups from watch-backed caches.
//! [`config`] reads the policy config, [`reload`] swaps it at run time, [`oci`]
//! fetches modules from OCI registries, [`tls`] holds the certificate,
//! [`metrics`] the Prometheus series, [`memory`] gives the allocator's free
//! memory back after bursts, [`offline`] the `run` subcommand, and [`cli`]
//! the command line.

pub mod abi;
pub mod admission;
pub mod cases;
pub mod cli;
pub mod config;
pub mod context;
mod long_lane;
pub mod memory;
pub mod metrics;
pub mod oci;
pub mod offline;
mod patch_check;
pub mod policy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod tls;
