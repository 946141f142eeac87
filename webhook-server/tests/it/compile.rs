//! Where modules are compiled and kept: `serve` compiles each in a child
//! process (`webhook-server compile-module`) so the compiler's memory ends
//! with it, keeps the compiled code in `--module-cache`, loads it from there
//! on the next start, and recompiles an entry it cannot use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use webhook_server::policy;
use webhook_server::runtime::{Runtime, RuntimeOptions};

use crate::common::{chain, entry, fixture, load, load_ok, policy_module, raw_request};

fn runtime(cache: Option<&Path>, compiler: Option<PathBuf>) -> Arc<Runtime> {
    let options =
        RuntimeOptions { max_instances: 8, cache_dir: cache.map(Path::to_path_buf), compiler, precompiled: None };
    Arc::new(Runtime::new(&options).unwrap_or_else(|e| panic!("{e:#}")))
}

/// A runtime with an (empty) cache, no child compiler and `precompiled`:
/// anything it compiles lands in the cache.
fn runtime_with_precompiled(cache: &Path, precompiled: &Path) -> Arc<Runtime> {
    let options = RuntimeOptions {
        max_instances: 8,
        cache_dir: Some(cache.to_path_buf()),
        compiler: None,
        precompiled: Some(precompiled.to_path_buf()),
    };
    Arc::new(Runtime::new(&options).unwrap_or_else(|e| panic!("{e:#}")))
}

/// `webhook-server precompile --output DIR MODULES...`: its exit status, stdout and stderr.
fn precompile(output: &Path, modules: &[PathBuf]) -> (bool, String, String) {
    let out = Command::new(server_binary())
        .arg("precompile")
        .arg("--output")
        .arg(output)
        .args(modules)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_webhook-server"))
}

/// The compiled modules in a cache directory.
fn compiled(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache.join("compiled"))
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

async fn ingress_tls_allows(rt: &Arc<Runtime>) {
    let set = load_ok(rt, &[entry("ingress-tls", &policy_module("ingress-tls"), "")]).await;
    let policy = set.get("ingress-tls").cloned().unwrap_or_else(|| panic!("not loaded"));
    let request = raw_request(&fixture("policies-wasm/ingress-tls/test_data/covered.json"));
    let verdict = policy.evaluate(&request).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(verdict.allowed, "{verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_compiled_in_a_child_process_are_cached_and_reused() {
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    ingress_tls_allows(&runtime(Some(cache.path()), Some(server_binary()))).await;
    let files = compiled(cache.path());
    assert_eq!(files.len(), 1, "one compiled module in the cache: {files:?}");
    let written = std::fs::metadata(&files[0]).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{e}"));

    // A restart loads it: nothing compiled, nothing rewritten.
    ingress_tls_allows(&runtime(Some(cache.path()), None)).await;
    assert_eq!(compiled(cache.path()), files);
    let after = std::fs::metadata(&files[0]).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after, written, "the cached module was rewritten instead of loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cache_the_child_compiles_into_a_temporary_file_that_is_removed() {
    let before = portcullis_temp_files();
    ingress_tls_allows(&runtime(None, Some(server_binary()))).await;
    let left: Vec<_> = portcullis_temp_files().into_iter().filter(|f| !before.contains(f)).collect();
    assert!(left.is_empty(), "temporary compiled modules left behind: {left:?}");
}

fn portcullis_temp_files() -> Vec<PathBuf> {
    let prefix = format!("portcullis-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_cache_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    ingress_tls_allows(&runtime(Some(cache.path()), None)).await;
    let files = compiled(cache.path());
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::write(&files[0], b"\x7fELF but not a module").unwrap_or_else(|e| panic!("{e}"));

    ingress_tls_allows(&runtime(Some(cache.path()), Some(server_binary()))).await;
    let rewritten = std::fs::read(&files[0]).unwrap_or_else(|e| panic!("{e}"));
    assert!(rewritten.len() > 1000, "the entry was not replaced by a compiled module");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_the_engine_refuses_is_reported_as_when_compiled_in_process() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let module = dir.path().join("not-wasm.wasm");
    std::fs::write(&module, b"this is not a wasm module").unwrap_or_else(|e| panic!("{e}"));
    let rt = runtime(Some(&dir.path().join("cache")), Some(server_binary()));
    let error = match load(&rt, &[entry("broken", &module, "")]).await {
        Ok(_) => panic!("a module that is not wasm was loaded"),
        Err(e) => e,
    };
    assert!(matches!(error, policy::Error::Load { .. }), "{error:?}");
    let text = chain(&error);
    assert!(text.contains("broken") && text.contains("refused by the wasm engine"), "{text}");
    assert!(compiled(&dir.path().join("cache")).is_empty(), "something was cached for a broken module");
}

#[test]
fn compile_module_fails_with_the_engines_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let output = dir.path().join("out.cwasm");
    let mut child = Command::new(server_binary())
        .args(["compile-module", "--max-instances", "8", "--output"])
        .arg(&output)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin.write_all(b"\0asm but truncated").unwrap_or_else(|e| panic!("{e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!output.exists(), "an artifact was written for a broken module");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precompiled_modules_are_loaded_instead_of_compiled() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shipped = dir.path().join("shipped");
    let (ok, stdout, stderr) = precompile(&shipped, &[policy_module("ingress-tls")]);
    assert!(ok, "{stderr}");
    let listed: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    assert_eq!(listed.len(), 1, "{stdout}");
    assert!(listed[0].starts_with(&shipped) && listed[0].is_file(), "{stdout}");

    // Written by a runtime of one instance, used by one of eight: nothing
    // compiled, so nothing written to the cache.
    let cache = dir.path().join("cache");
    ingress_tls_allows(&runtime_with_precompiled(&cache, &shipped)).await;
    assert!(compiled(&cache).is_empty(), "compiled although precompiled: {:?}", compiled(&cache));

    // A damaged artifact is passed over: the module is compiled (and cached) instead.
    std::fs::write(&listed[0], b"\x7fELF but not a module").unwrap_or_else(|e| panic!("{e}"));
    ingress_tls_allows(&runtime_with_precompiled(&cache, &shipped)).await;
    assert_eq!(compiled(&cache).len(), 1, "the damaged precompiled module was not replaced by a compilation");
}

#[test]
fn precompile_refuses_what_would_not_load_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"this is not a wasm module").unwrap_or_else(|e| panic!("{e}"));
    let output = dir.path().join("out");
    let (ok, _, stderr) = precompile(&output, &[broken]);
    assert!(!ok && stderr.starts_with("error: ") && stderr.contains("broken.wasm"), "{stderr}");
    assert!(!output.exists() || std::fs::read_dir(&output).map(|d| d.count()).unwrap_or(0) == 0, "wrote an artifact");
}
