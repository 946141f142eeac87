//! `cargo xtask`: the project's build, run, test and benchmark orchestration.
//!
//! - `build-policies`: every policy crate under `policies-wasm/` to
//!   `target/policies/<name>.wasm`, and the test guests to
//!   `target/policies/test-guests/<name>.wasm`.
//! - `run`: build what is needed, make a development certificate, and serve the
//!   built-in policies on https://127.0.0.1:8443.
//! - `test`: the whole suite (fmt, clippy, unit, wasm integration, HTTP, fuzz, e2e).
//! - `e2e`: the end-to-end suite on a local kube-apiserver (see `e2e/README.md`).
//! - `bench`: the benchmarks recorded in `docs/benchmarks.md`.
//! - `image`: the webhook-server image as an OCI image tar, without Docker.
//! - `fuzz`: the fuzz targets of `fuzz/` (a bounded run of each is part of `test`).
//! - `soak`: the soak and the full-size faults under load (`docs/reliability.md`).
//! - `new-policy`: a new policy crate under `policies-wasm/`, ready to edit;
//!   `test-new-policy` builds and tests every kind it makes (part of `test`).

mod apt;
mod bench;
mod certs;
mod e2e;
mod fuzz;
mod image;
mod instructions;
mod new_policy;
mod registry;
mod soak;
mod wasm;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Compile every policy (and test guest) to wasm32-unknown-unknown.
    BuildPolicies,
    /// Serve the built-in policies on https://127.0.0.1:8443 with a development certificate.
    Run {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        addr: String,
        /// Config to serve (default: webhook-server/config/default.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the whole test suite.
    Test {
        /// Skip the end-to-end suite against a real API server.
        #[arg(long)]
        no_e2e: bool,
    },
    /// Run the end-to-end suite against a local kube-apiserver and etcd (built once, cached).
    E2e(e2e::Options),
    /// Measure evaluation latency, HTTPS throughput, start-up time and memory.
    Bench(bench::Options),
    /// Count the instructions of one evaluation of each benchmarked policy (valgrind): noise-free, to compare changes by.
    Instructions(instructions::Options),
    /// Run the fuzz targets of fuzz/ (cargo-fuzz, installed if missing), each for a bounded time.
    Fuzz(fuzz::Options),
    /// Soak the release server at half its peak throughput (RSS watched), then the faults under load at full size.
    Soak(soak::Options),
    /// Write the webhook-server image (release binary, built-in policies) as an
    /// OCI image tar, without Docker: `ctr images import` / `docker load` it.
    Image(image::Options),
    /// Scaffold a policy crate policies-wasm/NAME (validating; --mutating for a JSON Patch, --context for lookups).
    NewPolicy(new_policy::Options),
    /// Scaffold every kind of new-policy into target/scaffold, then lint, build and test each.
    TestNewPolicy,
    /// Write a development CA and serving certificate for the given hosts.
    DevCert {
        /// Output directory.
        #[arg(long, default_value = "target/dev-certs")]
        out: PathBuf,
        /// DNS names and IP addresses the certificate covers.
        #[arg(long, default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        host: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::BuildPolicies => {
            wasm::build_policies(&root)?;
        }
        Task::Run { addr, config } => run(&root, &addr, config)?,
        Task::Test { no_e2e } => test(&root, no_e2e)?,
        Task::Bench(options) => bench::bench(&root, &options)?,
        Task::E2e(options) => e2e::run(&root, &options)?,
        Task::Image(options) => image::run(&root, &options)?,
        Task::NewPolicy(options) => new_policy::run(&root, &options)?,
        Task::TestNewPolicy => new_policy::test(&root, None)?,
        Task::Instructions(options) => instructions::run(&root, &options)?,
        Task::Fuzz(options) => fuzz::run(&root, &options)?,
        Task::Soak(options) => soak::run(&root, &options)?,
        Task::DevCert { out, host } => {
            let paths = certs::write_dev_certs(&out, &host)?;
            println!("wrote {} (CA), {} and {}", paths.ca.display(), paths.cert.display(), paths.key.display());
        }
    }
    Ok(())
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).context("xtask has no parent directory")
}

/// Runs a command, failing with its name when it fails.
pub(crate) fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("\x1b[1m$ {}\x1b[0m", shown.replace('"', ""));
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Whether the server on `port` answers 200 on `/readyz` over HTTPS with a
/// certificate `ca` signed.
pub(crate) fn server_ready(port: u16, ca: &Path) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}/readyz"))
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(root: &Path, addr: &str, config: Option<PathBuf>) -> anyhow::Result<()> {
    wasm::build_policies(root)?;
    run_cmd(cargo().args(["build", "--release", "--package", "webhook-server"]))?;
    let certs = certs::ensure_dev_certs(&root.join("target/dev-certs"))?;
    // The default config's context-aware policy answers its lookups from a
    // file of sample objects: no cluster needed. A config of your own is
    // served as given (with a cluster from KUBECONFIG if it grants lookups).
    let context = config.is_none().then(|| root.join("webhook-server/config/context.yaml"));
    let config = config.unwrap_or_else(|| root.join("webhook-server/config/default.yaml"));
    let port = addr.rsplit(':').next().unwrap_or("8443");
    let ca = certs.ca.strip_prefix(root).unwrap_or(&certs.ca).display().to_string();
    let curl = |sample: &str, path: &str| {
        format!(
            "  curl -sS --cacert {ca} -H 'Content-Type: application/json' --data @{sample} https://localhost:{port}{path}"
        )
    };
    println!();
    println!("Portcullis is starting on https://{addr} with the built-in policies of {}.", config.display());
    println!("In another terminal, from {}, send it sample AdmissionReviews:", root.display());
    println!();
    println!("{}", curl("policies-wasm/ingress-tls/test_data/no-tls.json", "/validate/ingress-tls"));
    println!(
        "{}",
        curl(
            "policies-wasm/service-account-identity/test_data/pod-default-sa.json",
            "/mutate/service-account-identity"
        )
    );
    println!(
        "{}",
        curl(
            "policies-wasm/hpa-resource-requests/test_data/deployment-update-lacks-requests.json",
            "/validate/hpa-resource-requests"
        )
    );
    println!();
    println!("(other samples: policies-wasm/*/test_data/*.json; metrics: https://localhost:{port}/metrics)");
    println!();
    let binary = root.join("target/release/webhook-server");
    let mut cmd = Command::new(binary);
    cmd.args(["serve", "--config"])
        .arg(&config)
        .args(["--addr", addr, "--tls-cert"])
        .arg(&certs.cert)
        .arg("--tls-key")
        .arg(&certs.key);
    if let Some(context) = &context {
        cmd.arg("--context").arg(context);
    }
    run_cmd(&mut cmd)
}

fn test(root: &Path, no_e2e: bool) -> anyhow::Result<()> {
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    wasm::build_policies(root)?;
    run_cmd(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The host's registry tests start their own docker-registry.
    registry::ensure_docker_registry()?;
    run_tests(
        cargo()
            .args(["test", "--workspace", "--lib", "--bins", "--tests"])
            .env("PORTCULLIS_POLICY_DIR", root.join("target/policies")),
    )?;
    // Every kind of `new-policy` crate, its cases run by the server binary the tests just built.
    new_policy::test(root, Some(&root.join("target/debug/webhook-server")))?;
    // Faults under load (CI size): real server processes, alone on the machine's cores.
    run_tests(
        cargo()
            .args(["test", "--package", "webhook-server", "--test", "it", "faults::faults_under_load"])
            .args(["--", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("PORTCULLIS_POLICY_DIR", root.join("target/policies")),
    )?;
    run_tests(cargo().args(["test", "--workspace", "--doc"]))?;
    run_cmd(cargo().args(["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings"))?;
    fuzz::bounded(root)?;
    // The kind backend's script cannot run here (no Docker engine); its syntax is checked.
    run_cmd(Command::new("bash").arg("-n").arg(root.join("e2e/kind.sh")))?;
    let result = if no_e2e {
        Ok(())
    } else {
        // Both backends: the local one (external-URL mode, the server's
        // context store, the chart's self-signed lifecycle), then the node
        // (the chart's pods behind their Service).
        e2e::run(root, &e2e::Options { build_only: false, backend: e2e::Backend::Local, test_args: Vec::new() })
            .and_then(|()| {
                e2e::run(root, &e2e::Options { build_only: false, backend: e2e::Backend::Node, test_args: Vec::new() })
            })
    };
    let (passed, failed) = (PASSED.load(Ordering::Relaxed), FAILED.load(Ordering::Relaxed));
    println!();
    println!("xtask test: {passed} passed, {failed} failed");
    result
}

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// Runs a `cargo test` command, echoing its output and adding its
/// `test result:` counts to the totals that `xtask test` prints last.
pub(crate) fn run_tests(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("\x1b[1m$ {}\x1b[0m", shown.replace('"', ""));
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(counts) = line.strip_prefix("test result: ") {
                for part in counts.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(label), Some(n)) = (words.next(), words.next()) else { continue };
                    let n = n.trim_start_matches(|c: char| !c.is_ascii_digit()).parse::<usize>().unwrap_or(0);
                    match label {
                        "passed" => PASSED.fetch_add(n, Ordering::Relaxed),
                        "failed" => FAILED.fetch_add(n, Ordering::Relaxed),
                        _ => 0,
                    };
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}
