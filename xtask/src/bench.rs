//! `cargo xtask bench`: every figure of `docs/benchmarks.md`.
//!
//! 1. In-process evaluation (`cargo bench --bench evaluate`): evaluate, and
//!    parse+evaluate+respond, of each policy's request.
//! 2. Start-up and memory of the release server with the four policies of
//!    `benches/bench.yaml`: time to ready and idle RSS after a cold start
//!    (no compiled modules yet), from the module cache, from precompiled
//!    modules (`--precompiled`, as the image ships them), and with the
//!    2,000 context objects the lookups are answered from.
//! 3. Over HTTPS with keep-alive (`loadgen`, this workspace's generator),
//!    for allow-all and each built-in policy: the closed loop at two
//!    connections (throughput, latency, and the server's CPU time per
//!    admission from `/proc`, set against the in-process time of the same
//!    request), then the open loop at fixed offered rates (1k, 4k, 8k req/s
//!    and 50% / 80% of that policy's closed-loop peak): p50/p99/p99.9 from
//!    the intended send times. Every run has a warm-up; any non-200 answer
//!    or wrong verdict fails the benchmark.
//! 4. The same for ingress-tls with the server limited to one CPU, as the
//!    chart deploys it (a CFS quota of one CPU in a cgroup of its own).
//! 5. RSS after the load (at once, and once the server has given the
//!    allocator's free pages back, 5 s after the last request), and the
//!    binary's sizes.
//!
//! Results go to stdout, a summary table at the end, and
//! `target/bench/results.json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{cargo, certs, run_cmd, wasm};

/// Measured part of every load run, after its warm-up.
const DURATION: &str = "10s";
const WARMUP: &str = "2s";
/// Connections of the closed loop (the issue's method: two, keep-alive).
const CLOSED_CONNECTIONS: &str = "2";
/// Fixed offered rates of the open loop, besides 50% and 80% of the peak.
const FIXED_RATES: [f64; 3] = [1_000.0, 4_000.0, 8_000.0];
/// The cgroup (v1 `cpu`, or v2) the one-CPU run puts the server in.
const CGROUP_V1: &str = "/sys/fs/cgroup/cpu/portcullis-bench";
const CGROUP_V2: &str = "/sys/fs/cgroup/portcullis-bench";

/// One endpoint measured: the policy, its route and request, and the answer expected.
pub(crate) struct Case {
    pub(crate) policy: &'static str,
    path: &'static str,
    body: &'static str,
    patch: bool,
}

pub(crate) const CASES: [Case; 4] = [
    Case {
        policy: "allow-all",
        path: "validate",
        body: "policies-wasm/ingress-tls/test_data/realistic-3kb.json",
        patch: false,
    },
    Case {
        policy: "ingress-tls",
        path: "validate",
        body: "policies-wasm/ingress-tls/test_data/realistic-3kb.json",
        patch: false,
    },
    Case {
        policy: "service-account-identity",
        path: "mutate",
        body: "policies-wasm/service-account-identity/test_data/pod-realistic-3kb.json",
        patch: true,
    },
    Case {
        policy: "hpa-resource-requests",
        path: "validate",
        body: "policies-wasm/hpa-resource-requests/test_data/deployment-realistic.json",
        patch: false,
    },
];

/// `cargo xtask bench` options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Another `webhook-server` binary (e.g. one built from an earlier
    /// commit) to measure in the closed loop after this one, on the same
    /// policies and requests, for a comparison in the same session.
    #[arg(long, value_name = "BINARY")]
    baseline: Option<PathBuf>,
}

pub fn bench(root: &Path, options: &Options) -> anyhow::Result<()> {
    wasm::build_policies(root)?;
    // Two invocations: built together, cargo would unify the features of
    // their shared dependencies and the server would differ from the one
    // `cargo xtask test` and the image build.
    run_cmd(cargo().args(["build", "--release", "--package", "webhook-server"]))?;
    run_cmd(cargo().args(["build", "--release", "--package", "portcullis-loadgen"]))?;
    let work = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    // 1. In process. It also writes the namespace of 1,000 HPAs and
    // Deployments it measures against; the server answers the same lookups.
    let context = work.join("context.json");
    let in_process = work.join("in-process.json");
    run_cmd(
        cargo()
            .args(["bench", "--package", "webhook-server", "--bench", "evaluate"])
            .env("PORTCULLIS_BENCH_CONTEXT_OUT", &context)
            .env("PORTCULLIS_BENCH_SUMMARY_OUT", &in_process),
    )?;
    let in_process: Value = serde_json::from_str(&std::fs::read_to_string(&in_process)?)?;
    let empty_context = work.join("empty-context.json");
    std::fs::write(&empty_context, r#"{"apiVersion":"v1","kind":"List","items":[]}"#)?;

    let certs = certs::write_dev_certs(&work.join("certs"), &["127.0.0.1".into(), "localhost".into()])?;
    let bench = Bench {
        binary: root.join("target/release/webhook-server"),
        loadgen: root.join("target/release/loadgen"),
        config: root.join("webhook-server/benches/bench.yaml"),
        cache: work.join("module-cache"),
        ca: certs.ca.clone(),
        cert: certs.cert.clone(),
        key: certs.key.clone(),
        work: work.clone(),
        root: root.to_path_buf(),
    };

    // 2. Start-up and idle memory.
    println!();
    let cold =
        bench.start_idle("cold start (modules compiled), no context objects", Modules::Compiled, &empty_context)?;
    let cached = bench.start_idle("from the module cache, no context objects", Modules::Cached, &empty_context)?;
    let precompiled = bench.start_idle(
        "precompiled (--precompiled, as in the image), no context objects",
        Modules::Precompiled,
        &empty_context,
    )?;
    let cached_objects = bench.start_idle("from the module cache, 2,000 context objects", Modules::Cached, &context)?;

    // 3. Load, on a server with the 2,000 objects.
    let server = bench.start(Modules::Cached, &context, None)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle_before_load = rss_kib(server.pid(), "VmRSS")?;
    let mut policies = Vec::new();
    for case in &CASES {
        policies.push(bench.policy(&server, case, &in_process, &open_rates)?);
    }
    let after_load = rss_kib(server.pid(), "VmRSS")?;
    // The server trims the allocator 5 s after a burst ends (`memory.rs`).
    std::thread::sleep(Duration::from_secs(7));
    let settled = rss_kib(server.pid(), "VmRSS")?;
    let peak = rss_kib(server.pid(), "VmHWM")?;
    drop(server);

    // The baseline binary, same closed loop.
    let baseline = match &options.baseline {
        Some(binary) => {
            let other = Bench {
                binary: std::path::absolute(binary)?,
                cache: work.join("baseline-module-cache"),
                ..bench.clone()
            };
            let server = other.start(Modules::Cached, &context, None)?;
            let mut rows = Vec::new();
            for case in &CASES {
                rows.push(json!({"policy": case.policy, "closed": other.load(&server, case, None, "baseline")?}));
            }
            json!({"binary": binary, "policies": rows})
        }
        None => Value::Null,
    };

    // 4. One CPU, as the chart deploys the server.
    let one_cpu = bench.one_cpu(&context, &CASES[1], &in_process)?;

    // 5. Sizes.
    let sizes = sizes(root)?;

    let results = json!({
        "start": {"cold": cold, "cached": cached, "precompiled": precompiled, "cached_with_context_objects": cached_objects},
        "rss_kib": {"idle_before_load": idle_before_load, "after_load": after_load, "after_load_settled": settled, "peak": peak},
        "policies": policies,
        "one_cpu": one_cpu,
        "baseline": baseline,
        "sizes": sizes,
        "in_process": in_process,
    });
    std::fs::write(work.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    summary(&results);
    println!("\n(all results: {})", work.join("results.json").display());
    Ok(())
}

/// The open-loop rates for a policy whose closed-loop peak is `peak` req/s.
fn open_rates(peak: f64) -> Vec<f64> {
    let mut rates: Vec<f64> = FIXED_RATES.to_vec();
    rates.extend([(peak * 0.5 / 100.0).round() * 100.0, (peak * 0.8 / 100.0).round() * 100.0]);
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    rates
}

/// Where the server's compiled modules come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Modules {
    /// Compiled at start into a fresh cache, as at a pod's first start without precompiled modules.
    Compiled,
    /// The module cache.
    Cached,
    /// `--precompiled` (written by `webhook-server precompile`), with a fresh cache.
    Precompiled,
}

#[derive(Clone)]
struct Bench {
    binary: PathBuf,
    loadgen: PathBuf,
    config: PathBuf,
    cache: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    work: PathBuf,
    root: PathBuf,
}

impl Bench {
    /// Starts the server with its modules from `modules`, optionally
    /// inside `cgroup`, and waits until it is ready.
    fn start(&self, modules: Modules, context: &Path, cgroup: Option<&Path>) -> anyhow::Result<Server> {
        let port = free_port()?;
        let mut cmd = match cgroup {
            // Joins the cgroup before exec, so the server sizes its worker
            // pool from the quota as it does in a pod.
            Some(dir) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "echo $$ > \"$0\"/cgroup.procs && exec \"$@\""]).arg(dir).arg(&self.binary);
                sh
            }
            None => Command::new(&self.binary),
        };
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .args(["--addr", &format!("127.0.0.1:{port}"), "--tls-cert"])
            .arg(&self.cert)
            .arg("--tls-key")
            .arg(&self.key)
            .arg("--context")
            .arg(context)
            // Killed at the end of each part: no need to wait out the rollout delay.
            .args(["--shutdown-delay", "0"])
            // The default log level; logs go nowhere so the terminal is not the bottleneck.
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if modules == Modules::Cached {
            cmd.arg("--module-cache").arg(&self.cache);
        } else {
            // A fresh directory, as at a pod's first start.
            let fresh = self.work.join("cold-cache");
            let _ = std::fs::remove_dir_all(&fresh);
            cmd.arg("--module-cache").arg(&fresh);
        }
        if modules == Modules::Precompiled {
            cmd.arg("--precompiled").arg(self.precompiled()?);
        }
        let started = Instant::now();
        let child = cmd.spawn().context("starting webhook-server")?;
        let mut server = Server { child, port, ready_after: Duration::ZERO };
        wait_ready(port, &self.ca)?;
        server.ready_after = started.elapsed();
        Ok(server)
    }

    /// The built-in policies and allow-all compiled by `webhook-server
    /// precompile`, as the image build does (once).
    fn precompiled(&self) -> anyhow::Result<PathBuf> {
        let dir = self.work.join("precompiled");
        if !dir.is_dir() {
            let policies = self.root.join("target/policies");
            let mut modules = crate::image::files_with_extension(&policies, "wasm")?;
            modules.push(policies.join("test-guests/allow_all.wasm"));
            run_cmd(Command::new(&self.binary).arg("precompile").arg("--output").arg(&dir).args(&modules))?;
        }
        Ok(dir)
    }

    /// Start-to-ready and idle RSS (two seconds after ready).
    fn start_idle(&self, label: &str, modules: Modules, context: &Path) -> anyhow::Result<Value> {
        if modules == Modules::Cached && !self.cache.join("compiled").is_dir() {
            drop(self.start(Modules::Cached, context, None)?); // fills the cache
        }
        let server = self.start(modules, context, None)?;
        std::thread::sleep(Duration::from_secs(2));
        let rss = rss_kib(server.pid(), "VmRSS")?;
        let ms = server.ready_after.as_secs_f64() * 1e3;
        println!("start to ready {ms:>7.0} ms, idle RSS {:>5.1} MiB: {label}", rss as f64 / 1024.0);
        Ok(json!({"label": label, "ready_ms": ms.round(), "idle_rss_kib": rss}))
    }

    /// One loadgen run against `server`; fails on any error.
    fn load(&self, server: &Server, case: &Case, rate: Option<f64>, tag: &str) -> anyhow::Result<Value> {
        let out = self.work.join(format!("{}-{tag}.json", case.policy));
        let mut cmd = Command::new(&self.loadgen);
        cmd.arg("--url")
            .arg(format!("https://127.0.0.1:{}/{}/{}", server.port, case.path, case.policy))
            .arg("--body")
            .arg(self.root.join(case.body))
            .arg("--ca")
            .arg(&self.ca)
            .args(["--expect-allowed", "true", "--expect-patch", if case.patch { "true" } else { "false" }])
            .args(["--warmup", WARMUP, "--duration", DURATION])
            .args(["--server-pid", &server.pid().to_string()])
            .arg("--json")
            .arg(&out);
        match rate {
            Some(rate) => cmd.args(["--rate", &format!("{rate}")]),
            None => cmd.args(["--connections", CLOSED_CONNECTIONS]),
        };
        println!();
        run_cmd(&mut cmd).with_context(|| format!("{}: wrong answers or errors under load", case.policy))?;
        Ok(serde_json::from_str(&std::fs::read_to_string(&out)?)?)
    }

    /// The closed loop, then the open loop at each rate, for one policy.
    fn policy(
        &self,
        server: &Server,
        case: &Case,
        in_process: &Value,
        rates: &dyn Fn(f64) -> Vec<f64>,
    ) -> anyhow::Result<Value> {
        let closed = self.load(server, case, None, "closed")?;
        let peak = closed["achieved_rate"].as_f64().unwrap_or(0.0);
        let mut open = Vec::new();
        for rate in rates(peak) {
            open.push(self.load(server, case, Some(rate), &format!("open-{rate}"))?);
        }
        Ok(json!({
            "policy": case.policy,
            "label": case.policy,
            "request_bytes": std::fs::metadata(self.root.join(case.body))?.len(),
            "closed": closed,
            "open": open,
            "cpu_ratio": cpu_ratio(&closed, in_process, case.policy),
        }))
    }

    /// ingress-tls with the server in a cgroup limited to one CPU.
    fn one_cpu(&self, context: &Path, case: &Case, in_process: &Value) -> anyhow::Result<Value> {
        let Some(cgroup) = one_cpu_cgroup() else {
            println!("\nno writable cpu cgroup (needs root): the one-CPU run is skipped");
            return Ok(Value::Null);
        };
        let server = self.start(Modules::Cached, context, Some(&cgroup))?;
        let result = self.policy(&server, case, in_process, &|peak| {
            [0.5, 0.8].iter().map(|f| (peak * f / 100.0).round() * 100.0).collect()
        });
        drop(server);
        let _ = std::fs::remove_dir(&cgroup);
        let mut result = result?;
        result["label"] = json!(format!("{} (1 CPU)", case.policy));
        Ok(result)
    }
}

/// CPU per admission over HTTPS ÷ the in-process parse+evaluate+respond
/// mean of the same request.
fn cpu_ratio(closed: &Value, in_process: &Value, policy: &str) -> Value {
    let over_https = closed["server_cpu"]["us_per_request"].as_f64();
    let inside = in_process[policy]["parse_evaluate_respond"]["mean"].as_f64();
    match (over_https, inside) {
        (Some(a), Some(b)) if b > 0.0 => json!((a / b * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

/// A cgroup with a CFS quota of one CPU, made for the run.
fn one_cpu_cgroup() -> Option<PathBuf> {
    let v1 = PathBuf::from(CGROUP_V1);
    if std::fs::create_dir_all(&v1).is_ok()
        && std::fs::write(v1.join("cpu.cfs_period_us"), "100000").is_ok()
        && std::fs::write(v1.join("cpu.cfs_quota_us"), "100000").is_ok()
    {
        return Some(v1);
    }
    let v2 = PathBuf::from(CGROUP_V2);
    if std::fs::create_dir_all(&v2).is_ok() && std::fs::write(v2.join("cpu.max"), "100000 100000").is_ok() {
        return Some(v2);
    }
    None
}

/// The release binary as built, stripped of debug info as the image ships it, and stripped.
fn sizes(root: &Path) -> anyhow::Result<Value> {
    let binary = root.join("target/release/webhook-server");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut sizes = json!({"release_binary": size(&binary)});
    for (key, flag) in [("strip_debug", "--strip-debug"), ("strip_all", "--strip-all")] {
        let out = root.join(format!("target/bench/webhook-server.{key}"));
        if Command::new("strip").arg(flag).arg("-o").arg(&out).arg(&binary).status().is_ok_and(|s| s.success()) {
            sizes[key] = json!(size(&out));
            let _ = std::fs::remove_file(&out);
        }
    }
    // The image tar, when `cargo xtask image` made one.
    let image = root.join("target/image/webhook-server.oci.tar");
    if image.is_file() {
        sizes["image_tar"] = json!(size(&image));
    }
    Ok(sizes)
}

fn summary(results: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!("\n=== summary ===");
    for start in ["cold", "cached", "precompiled", "cached_with_context_objects"] {
        let s = &results["start"][start];
        println!(
            "start to ready {:>6.0} ms, idle RSS {:>5.1} MiB: {}",
            f(&s["ready_ms"]),
            f(&s["idle_rss_kib"]) / 1024.0,
            s["label"].as_str().unwrap_or("")
        );
    }
    let rss = &results["rss_kib"];
    println!(
        "RSS before load {:.1} MiB, right after {:.1} MiB, 7 s after {:.1} MiB ({:+.1}%; peak {:.1} MiB)",
        f(&rss["idle_before_load"]) / 1024.0,
        f(&rss["after_load"]) / 1024.0,
        f(&rss["after_load_settled"]) / 1024.0,
        (f(&rss["after_load_settled"]) / f(&rss["idle_before_load"]) - 1.0) * 100.0,
        f(&rss["peak"]) / 1024.0
    );
    println!(
        "\n{:<26} {:>9} {:>8} {:>8} {:>9} {:>11} {:>11} {:>7}",
        "closed loop, 2 conns", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "CPU µs/adm", "in-proc µs", "ratio"
    );
    let rows = results["policies"].as_array().into_iter().flatten().chain(std::iter::once(&results["one_cpu"]));
    for p in rows.clone().filter(|p| !p.is_null()) {
        let c = &p["closed"];
        let name = p["policy"].as_str().unwrap_or("");
        let inside = f(&results["in_process"][name]["parse_evaluate_respond"]["mean"]);
        println!(
            "{:<26} {:>9.0} {:>8.0} {:>8.0} {:>9.0} {:>11.1} {:>11.1} {:>7.2}",
            p["label"].as_str().unwrap_or(name),
            f(&c["achieved_rate"]),
            f(&c["latency_us"]["p50"]),
            f(&c["latency_us"]["p99"]),
            f(&c["latency_us"]["p999"]),
            f(&c["server_cpu"]["us_per_request"]),
            inside,
            f(&p["cpu_ratio"])
        );
    }
    println!(
        "\n{:<26} {:>9} {:>9} {:>8} {:>8} {:>9} {:>10}",
        "open loop", "offered", "achieved", "p50 µs", "p99 µs", "p99.9 µs", ""
    );
    for p in rows.filter(|p| !p.is_null()) {
        let name = p["label"].as_str().unwrap_or("");
        for o in p["open"].as_array().into_iter().flatten() {
            println!(
                "{:<26} {:>9.0} {:>9.0} {:>8.0} {:>8.0} {:>9.0} {:>10}",
                name,
                f(&o["offered_rate"]),
                f(&o["achieved_rate"]),
                f(&o["latency_us"]["p50"]),
                f(&o["latency_us"]["p99"]),
                f(&o["latency_us"]["p999"]),
                if o["saturated"].as_bool() == Some(true) {
                    "saturated"
                } else if f(&o["latency_us"]["p50"]) > 10_000.0 {
                    "queueing"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(rows) = results["baseline"]["policies"].as_array() {
        println!(
            "\nagainst {} (closed loop, 2 conns, same session)",
            results["baseline"]["binary"].as_str().unwrap_or("the baseline")
        );
        println!(
            "{:<26} {:>14} {:>14} {:>7} {:>16} {:>16}",
            "", "baseline req/s", "this req/s", "ratio", "baseline CPU µs", "this CPU µs"
        );
        for (row, this) in rows.iter().zip(results["policies"].as_array().into_iter().flatten()) {
            let (b, t) = (&row["closed"], &this["closed"]);
            println!(
                "{:<26} {:>14.0} {:>14.0} {:>7.2} {:>16.1} {:>16.1}",
                row["policy"].as_str().unwrap_or(""),
                f(&b["achieved_rate"]),
                f(&t["achieved_rate"]),
                f(&t["achieved_rate"]) / f(&b["achieved_rate"]),
                f(&b["server_cpu"]["us_per_request"]),
                f(&t["server_cpu"]["us_per_request"])
            );
        }
    }
    let s = &results["sizes"];
    println!(
        "\nbinary: {:.1} MB as built, {:.1} MB without debug info (as in the image), {:.1} MB fully stripped{}",
        f(&s["release_binary"]) / 1e6,
        f(&s["strip_debug"]) / 1e6,
        f(&s["strip_all"]) / 1e6,
        s["image_tar"].as_f64().map(|b| format!("; image tar {:.1} MB", b / 1e6)).unwrap_or_default()
    );
}

/// The server under measurement; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    ready_after: Duration,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_ready(port: u16, ca: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if crate::server_ready(port, ca) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("server on port {port} not ready within 60 s")
}

fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim_start_matches(':').trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
