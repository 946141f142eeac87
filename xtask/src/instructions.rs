//! `cargo xtask instructions`: how many instructions one evaluation of each
//! policy of the benchmark costs, counted by valgrind: the figure to judge a
//! change by on a machine whose timings drift (this VM's in-process p50
//! varies 2x between runs of the same binary; the count varies by a few
//! instructions).
//!
//! It runs the in-process benchmark's binary (`benches/evaluate.rs`) in its
//! counting mode, which loads one policy of `benches/bench.yaml` and
//! evaluates its request N times through `Policy::evaluate`, as the
//! benchmark's "evaluate" row does: the input written into a fresh
//! instance, the guest's work, the verdict decoded. Each policy runs under
//! `valgrind --tool=callgrind` with N = 100 and N = 400, after one run that
//! fills the module cache (the compiler's work would otherwise be counted);
//! the difference divided by 300 is the count per evaluation, start-up and
//! loading cancelled out. With `--full`, each run is the benchmark's
//! "parse+evaluate+respond" path instead: the AdmissionReview parsed, the
//! evaluation, the patch checked and the response built and serialized.
//! Valgrind is installed with apt when missing and possible.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{apt, bench, cargo, wasm};

/// Evaluations of the two counted runs; their difference is what is reported.
const RUNS: (u64, u64) = (100, 400);

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Count only these policies of the benchmark (default: all of them).
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Count the whole parse+evaluate+respond path, not the evaluation alone.
    #[arg(long)]
    full: bool,
}

pub fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    ensure_valgrind()?;
    wasm::build_policies(root)?;
    let binary = build_evaluate(root)?;
    let cache = root.join("target/bench/instructions-module-cache");
    std::fs::create_dir_all(&cache)?;
    let policies = match &options.policies[..] {
        [] => bench::CASES.iter().map(|case| case.policy.to_owned()).collect(),
        some => some.to_vec(),
    };
    let what = if options.full { "instructions per parse+evaluate+respond" } else { "instructions per evaluation" };
    println!("{:<28} {:>14}", "policy", what);
    for policy in &policies {
        count(&binary, &cache, policy, 1, options.full)?;
        let (few, many) = (
            count(&binary, &cache, policy, RUNS.0, options.full)?,
            count(&binary, &cache, policy, RUNS.1, options.full)?,
        );
        let per = many.saturating_sub(few) / (RUNS.1 - RUNS.0);
        println!("{policy:<28} {per:>14}");
    }
    Ok(())
}

/// Instructions of a whole run of `n` evaluations of `policy` under callgrind.
fn count(binary: &Path, cache: &Path, policy: &str, n: u64, full: bool) -> anyhow::Result<u64> {
    let mut valgrind = Command::new("valgrind");
    valgrind
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(binary)
        .env("PORTCULLIS_BENCH_COUNT", format!("{policy}:{n}"))
        .env("PORTCULLIS_BENCH_MODULE_CACHE", cache)
        .env_remove("PORTCULLIS_BENCH_COUNT_FULL");
    if full {
        valgrind.env("PORTCULLIS_BENCH_COUNT_FULL", "1");
    }
    let out = valgrind.output().context("running valgrind")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{policy}: {n} evaluations under valgrind failed:\n{stderr}");
    }
    // `==PID== Collected : 497305350`
    stderr
        .lines()
        .find_map(|line| line.split_once("Collected :").map(|(_, n)| n.trim().parse::<u64>()))
        .with_context(|| format!("no instruction count in valgrind's output:\n{stderr}"))?
        .context("reading valgrind's instruction count")
}

fn ensure_valgrind() -> anyhow::Result<()> {
    if apt::which_path("valgrind").is_some() {
        return Ok(());
    }
    if !apt::can_install() {
        bail!("valgrind not found: install it (`apt-get install valgrind`) and run this again");
    }
    eprintln!("valgrind not found; installing Debian's valgrind");
    apt::install(&["valgrind"])
}

/// Where cargo put the executable of target `name`, from `--message-format=json` output.
fn executable_from_messages(stdout: &[u8], name: &str) -> Option<PathBuf> {
    String::from_utf8_lossy(stdout).lines().find_map(|line| {
        let message: serde_json::Value = serde_json::from_str(line).ok()?;
        (message.pointer("/target/name")?.as_str()? == name).then_some(())?;
        message.get("executable")?.as_str().map(PathBuf::from)
    })
}

/// Builds the in-process benchmark's binary and returns its path.
fn build_evaluate(root: &Path) -> anyhow::Result<PathBuf> {
    let out = cargo()
        .current_dir(root)
        .args(["bench", "--package", "webhook-server", "--bench", "evaluate", "--no-run", "--message-format=json"])
        .output()
        .context("building the evaluate benchmark")?;
    if !out.status.success() {
        bail!("building the evaluate benchmark failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    executable_from_messages(&out.stdout, "evaluate").context("cargo did not say where the evaluate benchmark is")
}
