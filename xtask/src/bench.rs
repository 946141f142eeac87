//! `cargo xtask bench`: the figures of `docs/benchmarks.md`.
//!
//! 1. In-process evaluation latency (`cargo bench --bench evaluate`).
//! 2. The release server over HTTPS on loopback: time to ready (cold, then
//!    with the compiled-module cache), idle RSS, then `wrk` with keep-alive at
//!    fixed concurrency against the allow-all baseline and each built-in
//!    policy, and the peak RSS after the load.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{cargo, certs, run_cmd, wasm};

/// wrk settings: one thread, two connections, ten seconds (the issue's method).
const WRK_ARGS: [&str; 6] = ["-t1", "-c2", "-d10s", "--latency", "--timeout", "2s"];

pub fn bench(root: &Path) -> anyhow::Result<()> {
    wasm::build_policies(root)?;
    ensure_wrk()?;
    run_cmd(cargo().args(["build", "--release", "--package", "webhook-server"]))?;
    let work = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    // The in-process run writes the namespace of 1,000 HPAs and Deployments
    // it measures; the server below answers the same lookups from it.
    let context = work.join("context.json");
    run_cmd(
        cargo()
            .args(["bench", "--package", "webhook-server", "--bench", "evaluate"])
            .env("PORTCULLIS_BENCH_CONTEXT_OUT", &context),
    )?;

    let certs = certs::write_dev_certs(&work.join("certs"), &["127.0.0.1".into(), "localhost".into()])?;
    // The same policies and settings as the in-process benchmark.
    let config = root.join("webhook-server/benches/bench.yaml");
    let cache = work.join("module-cache");
    let port = free_port()?;
    let binary = root.join("target/release/webhook-server");
    let start = |use_cache: bool| -> anyhow::Result<(ServerProcess, Duration)> {
        let mut cmd = Command::new(&binary);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .args(["--addr", &format!("127.0.0.1:{port}"), "--tls-cert"])
            .arg(&certs.cert)
            .arg("--tls-key")
            .arg(&certs.key)
            .arg("--context")
            .arg(&context)
            // The default log level; logs go nowhere so the terminal is not the bottleneck.
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if use_cache {
            cmd.arg("--module-cache").arg(&cache);
        }
        let started = Instant::now();
        let child = ServerProcess(cmd.spawn().context("starting webhook-server")?);
        wait_ready(port, &certs.ca)?;
        Ok((child, started.elapsed()))
    };

    let (server, cold) = start(false)?;
    drop(server);
    let (server, _) = start(true)?; // fills the cache
    drop(server);
    let (server, cached) = start(true)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(server.0.id(), "VmRSS")?;
    println!();
    println!("start to ready: {} ms cold, {} ms with the module cache", cold.as_millis(), cached.as_millis());
    println!("idle RSS: {:.1} MiB", idle as f64 / 1024.0);

    let ingress = "policies-wasm/ingress-tls/test_data/realistic-3kb.json";
    let pod = "policies-wasm/service-account-identity/test_data/pod-realistic-3kb.json";
    let deployment = "policies-wasm/hpa-resource-requests/test_data/deployment-realistic.json";
    for (policy, path, body) in [
        ("allow-all", "validate", ingress),
        ("ingress-tls", "validate", ingress),
        ("service-account-identity", "mutate", pod),
        ("hpa-resource-requests", "validate", deployment),
    ] {
        let script = work.join(format!("{policy}.lua"));
        let body = std::fs::read_to_string(root.join(body))?;
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = {}\n",
                lua_string(&body)
            ),
        )?;
        println!();
        let url = format!("https://127.0.0.1:{port}/{path}/{policy}");
        println!("wrk {} (POST {} bytes) {url}", WRK_ARGS.join(" "), body.len());
        let mut wrk = Command::new("wrk");
        wrk.args(WRK_ARGS).arg("-s").arg(&script).arg(&url);
        run_cmd(&mut wrk)?;
    }
    let peak = rss_kib(server.0.id(), "VmHWM")?;
    let after = rss_kib(server.0.id(), "VmRSS")?;
    println!();
    println!("RSS after load: {:.1} MiB (peak {:.1} MiB)", after as f64 / 1024.0, peak as f64 / 1024.0);
    Ok(())
}

/// Kills the server when dropped.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ensure_wrk() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "-qq", "wrk"]).env("DEBIAN_FRONTEND", "noninteractive");
    run_cmd(&mut install).context("wrk is needed for the HTTP benchmark (apt-get install wrk)")
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
        std::thread::sleep(Duration::from_millis(5));
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

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
