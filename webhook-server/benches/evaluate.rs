//! In-process latency of one evaluation (a fresh instance each time), and of
//! the whole admission path without HTTP (parse, evaluate, build the
//! response, serialize), for the baseline allow-all module and each built-in
//! policy on a realistic object.
//!
//! The policies and their settings are `benches/bench.yaml`.
//!
//! `cargo bench -p webhook-server --bench evaluate` (after `cargo xtask
//! build-policies`), or `cargo xtask bench`, which records the figures.
//!
//! With `PORTCULLIS_BENCH_COUNT=POLICY:N` it only runs N evaluations of
//! that policy, untimed, after loading it alone (modules from the cache in
//! `PORTCULLIS_BENCH_MODULE_CACHE`): what `cargo xtask instructions` runs
//! under valgrind to count the instructions of one evaluation. With
//! `PORTCULLIS_BENCH_COUNT_FULL` set too, each of the N is the whole
//! parse+evaluate+respond path (`cargo xtask instructions --full`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use webhook_server::admission::{self, Endpoint};
use webhook_server::config::Config;
use webhook_server::context::ContextStore;
use webhook_server::policy::PolicySet;
use webhook_server::runtime::{Runtime, RuntimeOptions};

const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;

/// Each policy of `benches/bench.yaml` and the realistic request it is measured on.
const CASES: [(&str, &str); 4] = [
    ("allow-all", "policies-wasm/ingress-tls/test_data/realistic-3kb.json"),
    ("ingress-tls", "policies-wasm/ingress-tls/test_data/realistic-3kb.json"),
    ("service-account-identity", "policies-wasm/service-account-identity/test_data/pod-realistic-3kb.json"),
    ("hpa-resource-requests", "policies-wasm/hpa-resource-requests/test_data/deployment-realistic.json"),
];

/// HPAs and Deployments in the namespace of the Deployment measured.
const OBJECTS_PER_KIND: usize = 1_000;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut config = Config::load(&root.join("webhook-server/benches/bench.yaml"))?;
    let count = match std::env::var("PORTCULLIS_BENCH_COUNT") {
        Ok(spec) => {
            let (name, n) =
                spec.split_once(':').ok_or_else(|| anyhow::anyhow!("PORTCULLIS_BENCH_COUNT is POLICY:N"))?;
            config.policies.retain(|p| p.name == name);
            Some((name.to_owned(), n.parse::<usize>()?))
        }
        Err(_) => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut options = RuntimeOptions {
        cache_dir: std::env::var_os("PORTCULLIS_BENCH_MODULE_CACHE").map(PathBuf::from),
        ..Default::default()
    };
    if count.is_some() {
        // Valgrind cannot map the pool of the default 128 instance slots
        // (4 GiB of address space each); one evaluation at a time needs one.
        options.max_instances = 2;
    }
    let runtime = Arc::new(Runtime::new(&options)?);
    let objects = namespace_objects(OBJECTS_PER_KIND);
    // The HTTPS runs of `cargo xtask bench` answer the same lookups from this file.
    if let Some(out) = std::env::var_os("PORTCULLIS_BENCH_CONTEXT_OUT") {
        std::fs::write(
            &out,
            serde_json::to_string(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects}))?,
        )?;
    }
    let context = Arc::new(ContextStore::offline(objects, &config.granted_kinds()));
    let set = rt.block_on(PolicySet::load_with_context(&runtime, &config, &context))?;
    if let Some((name, n)) = count {
        let (_, fixture) =
            CASES.iter().find(|(case, _)| *case == name).ok_or_else(|| anyhow::anyhow!("no case {name}"))?;
        let policy = set.get(&name).cloned().ok_or_else(|| anyhow::anyhow!("{name} not loaded"))?;
        let body = std::fs::read(root.join(fixture))?;
        let raw = admission::parse(&body)?.raw.get().to_owned();
        let endpoint = if policy.config.mutating { Endpoint::Mutate } else { Endpoint::Validate };
        // `PORTCULLIS_BENCH_COUNT_FULL`: the whole parse+evaluate+respond path.
        let full = std::env::var_os("PORTCULLIS_BENCH_COUNT_FULL").is_some();
        for _ in 0..n {
            if full {
                let incoming = admission::parse(&body)?;
                let verdict = rt.block_on(policy.evaluate(incoming.raw.get()));
                let decision = admission::decide(&policy, endpoint, &incoming, verdict);
                anyhow::ensure!(decision.response.allowed && !decision.to_json()?.is_empty(), "{name}: {fixture}");
            } else {
                let verdict = rt.block_on(policy.evaluate(&raw));
                anyhow::ensure!(verdict.is_ok_and(|v| v.allowed), "{name} did not allow {fixture}");
            }
        }
        return Ok(());
    }
    println!(
        "context: namespace clipper-production holding {OBJECTS_PER_KIND} HorizontalPodAutoscalers and {OBJECTS_PER_KIND} Deployments"
    );

    println!("{SAMPLES} samples after {WARMUP} warm-up, one at a time, fresh instance per evaluation");
    println!("{:<60} {:>9} {:>9} {:>9} {:>9} {:>9}", "", "mean µs", "p50 µs", "p90 µs", "p99 µs", "max µs");
    // `cargo xtask bench` divides the server's CPU per admission by these.
    let mut summary = serde_json::Map::new();
    for (name, fixture) in CASES {
        let policy = set.get(name).cloned().ok_or_else(|| anyhow::anyhow!("{name} not loaded"))?;
        let body = std::fs::read(root.join(fixture))?;
        let object = serde_json::from_slice::<serde_json::Value>(&body)?.pointer("/request/object").cloned();
        let object_len = object.map(|o| o.to_string().len()).unwrap_or_default();
        let file = fixture.rsplit('/').next().unwrap_or(fixture);
        let endpoint = if policy.config.mutating { Endpoint::Mutate } else { Endpoint::Validate };
        let incoming = admission::parse(&body)?;
        let raw = incoming.raw.get().to_owned();
        let evaluate = measure(|| {
            let started = Instant::now();
            let verdict = rt.block_on(policy.evaluate(&raw));
            assert!(verdict.is_ok_and(|v| v.allowed), "{name} did not allow {file}");
            started.elapsed()
        });
        let evaluate = report(&format!("{name}: evaluate ({file}, object {object_len} B)"), &evaluate);
        let full = measure(|| {
            let started = Instant::now();
            let incoming = admission::parse(&body).unwrap_or_else(|e| panic!("{e}"));
            let verdict = rt.block_on(policy.evaluate(incoming.raw.get()));
            let decision = admission::decide(&policy, endpoint, &incoming, verdict);
            assert!(decision.failure.is_none() && decision.response.allowed, "{name} did not allow {file}");
            assert_eq!(decision.patch.is_some(), policy.config.mutating, "{name}: a patch only from the mutator");
            let body = decision.to_json().unwrap_or_default();
            assert!(!body.is_empty());
            started.elapsed()
        });
        let full = report(&format!("{name}: parse+evaluate+respond"), &full);
        summary.insert(name.to_string(), serde_json::json!({"evaluate": evaluate, "parse_evaluate_respond": full}));
    }
    if let Some(out) = std::env::var_os("PORTCULLIS_BENCH_SUMMARY_OUT") {
        std::fs::write(&out, serde_json::to_string_pretty(&summary)?)?;
    }
    Ok(())
}

/// `n` Deployments (about 1.2 KB each, with requests) and the `n` HPAs that
/// scale them on CPU and memory utilization, in clipper-production; one pair
/// is the clipper backend of `deployment-realistic.json`.
fn namespace_objects(n: usize) -> Vec<serde_json::Value> {
    let mut objects = Vec::with_capacity(2 * n);
    for i in 0..n {
        let name = if i == 0 { "clipper-backend".to_string() } else { format!("service-{i:04}") };
        objects.push(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "clipper-production", "uid": format!("00000000-0000-4000-8000-{i:012}"),
                         "resourceVersion": format!("{}", 100_000 + i), "generation": 3,
                         "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "clipper"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                     "template": {"metadata": {"labels": {"app.kubernetes.io/name": name}},
                                  "spec": {"containers": [
                                      {"name": "app", "image": format!("registry.clipper.dev/{name}:1.{i}"),
                                       "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                                       "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}},
                                      {"name": "proxy", "image": "registry.clipper.dev/nginx:1.27",
                                       "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]}}},
            "status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "observedGeneration": 3},
        }));
        objects.push(serde_json::json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": "clipper-production"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": 3, "maxReplicas": 20,
                     "metrics": [
                         {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
                         {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 80}}}],
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}},
        }));
    }
    objects
}

fn measure(mut f: impl FnMut() -> Duration) -> Vec<Duration> {
    for _ in 0..WARMUP {
        f();
    }
    let mut samples: Vec<Duration> = (0..SAMPLES).map(|_| f()).collect();
    samples.sort_unstable();
    samples
}

/// Prints one row and returns it as JSON (µs).
fn report(label: &str, sorted: &[Duration]) -> serde_json::Value {
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6;
    let mean = sorted.iter().map(Duration::as_secs_f64).sum::<f64>() / sorted.len() as f64 * 1e6;
    let (p50, p90, p99, max) = (at(0.50), at(0.90), at(0.99), at(1.0));
    println!("{label:<60} {mean:>9.1} {p50:>9.1} {p90:>9.1} {p99:>9.1} {max:>9.1}");
    serde_json::json!({"mean": mean, "p50": p50, "p90": p90, "p99": p99, "max": max})
}
