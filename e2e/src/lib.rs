//! Portcullis end-to-end suite: the case files of `e2e/cases/` (a manifest and
//! the outcome a real API server must produce for it) and the runner that
//! applies them to whatever cluster `PORTCULLIS_E2E_KUBECONFIG` names.
//!
//! Two backends provide that cluster: `cargo xtask e2e` (a `kube-apiserver`
//! and `etcd` started on loopback, the webhook server as a local process) and
//! `e2e/kind.sh` (a kind cluster with the chart installed). The cases, the
//! runner and the checks are the same for both; see `e2e/README.md`.

pub mod case;
pub mod cluster;
pub mod manifests;
pub mod metrics;
pub mod runner;
