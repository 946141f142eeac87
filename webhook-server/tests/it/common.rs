//! Shared helpers: where the built modules are, configs written to temp
//! directories, AdmissionReview fixtures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use webhook_server::config::Config;
use webhook_server::context::ContextStore;
use webhook_server::policy::{self, PolicySet};
use webhook_server::runtime::{Runtime, RuntimeOptions};

/// Directory of built modules: `$PORTCULLIS_POLICY_DIR`, else `target/policies`.
pub fn policy_dir() -> PathBuf {
    let dir = std::env::var_os("PORTCULLIS_POLICY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies"));
    assert!(
        dir.join("test-guests").is_dir(),
        "no built policies in {}: run `cargo xtask build-policies` first (cargo xtask test does)",
        dir.display()
    );
    dir
}

/// Path of a test guest module.
pub fn guest(name: &str) -> PathBuf {
    policy_dir().join("test-guests").join(format!("{name}.wasm"))
}

/// Path of a policy module.
pub fn policy_module(name: &str) -> PathBuf {
    policy_dir().join(format!("{name}.wasm"))
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A config file in a temp dir (kept alive by the returned guard).
pub struct TempConfig {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempConfig {
    pub fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("writing config: {e}"));
        Self { _dir: dir, path }
    }

    pub fn config(&self) -> Config {
        Config::load(&self.path).unwrap_or_else(|e| panic!("config: {e}"))
    }
}

/// YAML for one policy entry.
pub fn entry(name: &str, module: &Path, extra: &str) -> String {
    format!("- name: {name}\n  module: {}\n{}", module.display(), indent(extra))
}

fn indent(extra: &str) -> String {
    extra.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("  {l}\n")).collect()
}

/// A runtime sized for tests, sharing wasmtime's compiled-module cache in
/// `target/` so each module is compiled once per change, not once per test.
pub fn runtime() -> Arc<Runtime> {
    let cache_dir = Some(workspace().join("target/test-module-cache"));
    Arc::new(
        Runtime::new(&RuntimeOptions { max_instances: 32, cache_dir, ..RuntimeOptions::default() })
            .unwrap_or_else(|e| panic!("{e:#}")),
    )
}

/// Loads `entries` (joined YAML list items) into a policy set.
pub async fn load(runtime: &Arc<Runtime>, entries: &[String]) -> Result<PolicySet, policy::Error> {
    let config = TempConfig::new(&format!("policies:\n{}", entries.concat()));
    PolicySet::load(runtime, &config.config()).await
}

/// Loads `entries` with their lookups answered from `context`, panicking on error.
pub async fn load_with_context(runtime: &Arc<Runtime>, entries: &[String], context: &Arc<ContextStore>) -> PolicySet {
    let config = TempConfig::new(&format!("policies:\n{}", entries.concat()));
    PolicySet::load_with_context(runtime, &config.config(), context)
        .await
        .unwrap_or_else(|e| panic!("loading policies: {}", chain(&e)))
}

/// Like [`load`], panicking on error.
pub async fn load_ok(runtime: &Arc<Runtime>, entries: &[String]) -> PolicySet {
    load(runtime, entries).await.unwrap_or_else(|e| panic!("loading policies: {}", chain(&e)))
}

/// An error and its sources, joined.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A fixture file's text.
pub fn fixture(path: &str) -> String {
    let full = workspace().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The raw JSON of the `request` of an AdmissionReview.
pub fn raw_request(review: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(review).unwrap_or_else(|e| panic!("fixture JSON: {e}"));
    value.get("request").map(ToString::to_string).unwrap_or_else(|| panic!("fixture has no request"))
}
