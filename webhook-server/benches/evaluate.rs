//! In-process latency of one evaluation (a fresh instance each time), and of
//! the whole admission path without HTTP (parse, evaluate, build the
//! response, serialize), for the baseline allow-all module and each built-in
//! policy on a realistic object.
//!
//! `cargo bench -p webhook-server --bench evaluate` (after `cargo xtask
//! build-policies`), or `cargo xtask bench`, which records the figures.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use webhook_server::admission::{self, Endpoint};
use webhook_server::config::Config;
use webhook_server::policy::PolicySet;
use webhook_server::runtime::{Runtime, RuntimeOptions};

const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir =
        std::env::var_os("PORTCULLIS_POLICY_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target/policies"));
    let config = format!(
        "policies:\n\
         - name: allow-all\n  module: {dir}/test-guests/allow_all.wasm\n\
         - name: ingress-tls\n  module: {dir}/ingress-tls.wasm\n",
        dir = dir.display()
    );
    let config = Config::parse(&root.join("bench.yaml"), &config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let runtime = Arc::new(Runtime::new(&RuntimeOptions::default())?);
    let set = rt.block_on(PolicySet::load(&runtime, &config))?;

    let realistic = std::fs::read(root.join("policies-wasm/ingress-tls/test_data/realistic-3kb.json"))?;
    let object_len = serde_json::from_slice::<serde_json::Value>(&realistic)?
        .pointer("/request/object")
        .map(|o| o.to_string().len())
        .unwrap_or_default();
    println!("object: realistic-3kb.json, Ingress of {object_len} bytes; {SAMPLES} samples after {WARMUP} warm-up");
    println!("{:<40} {:>9} {:>9} {:>9} {:>9}", "", "p50 µs", "p90 µs", "p99 µs", "max µs");
    for name in ["allow-all", "ingress-tls"] {
        let policy = set.get(name).cloned().ok_or_else(|| anyhow::anyhow!("{name} not loaded"))?;
        let incoming = admission::parse(&realistic)?;
        let raw = incoming.raw.get().to_owned();
        let evaluate = measure(|| {
            let started = Instant::now();
            let verdict = rt.block_on(policy.evaluate(&raw));
            assert!(verdict.is_ok_and(|v| v.allowed), "{name} did not allow the realistic Ingress");
            started.elapsed()
        });
        report(&format!("{name}: evaluate (fresh instance)"), &evaluate);
        let full = measure(|| {
            let started = Instant::now();
            let incoming = admission::parse(&realistic).unwrap_or_else(|e| panic!("{e}"));
            let verdict = rt.block_on(policy.evaluate(incoming.raw.get()));
            let decision = admission::decide(&policy, Endpoint::Validate, &incoming, verdict);
            let body = decision.to_json().unwrap_or_default();
            assert!(!body.is_empty());
            started.elapsed()
        });
        report(&format!("{name}: parse+evaluate+respond"), &full);
    }
    Ok(())
}

fn measure(mut f: impl FnMut() -> Duration) -> Vec<Duration> {
    for _ in 0..WARMUP {
        f();
    }
    let mut samples: Vec<Duration> = (0..SAMPLES).map(|_| f()).collect();
    samples.sort_unstable();
    samples
}

fn report(label: &str, sorted: &[Duration]) {
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6;
    println!("{label:<40} {:>9.1} {:>9.1} {:>9.1} {:>9.1}", at(0.50), at(0.90), at(0.99), at(1.0));
}
