//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/`, through cargo-fuzz.
//!
//! cargo-fuzz is installed on first use (`cargo install --locked`, pinned
//! to [`CARGO_FUZZ_VERSION`]). Its builds pass nightly-only rustc flags (the
//! coverage instrumentation libFuzzer steers by), which the installed
//! stable toolchain accepts with `RUSTC_BOOTSTRAP=1`. The targets are built
//! optimised, with debug assertions, and without a sanitizer: what they run
//! natively (the server's decoding, the SDK, the policies) is safe Rust, and
//! the unsafe code of the ABI shim is compiled for wasm only, so
//! AddressSanitizer would find nothing a panic does not and would halve the
//! executions per second.
//!
//! Each target runs for a bounded time on its seeds, `fuzz/corpus/<target>/`
//! (committed, read only), and on the inputs of past crashes,
//! `fuzz/regressions/<target>/`. `cargo xtask fuzz` also runs on the inputs
//! found by earlier runs on this machine, `fuzz/target/corpus/<target>/`
//! (where it adds new ones; not committed); the short run of `cargo xtask
//! test` starts from the seeds alone, as on a fresh clone, so that its time
//! does not grow with that corpus.
//! A crash fails the task and names the input libFuzzer saved in
//! `fuzz/artifacts/<target>/`.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::{cargo, run_cmd};

/// The cargo-fuzz release installed when none is.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Seconds per target of `cargo xtask fuzz`.
pub const DEFAULT_SECONDS: u64 = 300;
/// Seconds per target of the bounded run in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 10;
/// Overrides [`TEST_SECONDS`] (0: only replay the corpus).
pub const TEST_SECONDS_VAR: &str = "PORTCULLIS_FUZZ_SECONDS";
/// Longest a single input may take before libFuzzer reports it as a hang:
/// far beyond any policy's deadline, even in this instrumented build.
const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds each target runs (0: only replay the corpus, finding nothing new).
    #[arg(long, default_value_t = DEFAULT_SECONDS)]
    pub seconds: u64,
    /// Targets to run (default: every target of fuzz/Cargo.toml).
    pub targets: Vec<String>,
}

/// `cargo xtask fuzz`.
pub fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    fuzz(root, &options.targets, options.seconds, Corpus::Kept)
}

/// The fuzz step of `cargo xtask test`: the fuzz crate's formatting (it is
/// not in the root workspace that `cargo fmt --all` covers), then a bounded
/// run of every target, [`TEST_SECONDS`] each or what
/// `PORTCULLIS_FUZZ_SECONDS` says.
pub fn bounded(root: &Path) -> anyhow::Result<()> {
    run_cmd(cargo().args(["fmt", "--check", "--manifest-path"]).arg(root.join("fuzz/Cargo.toml")))?;
    let seconds = match std::env::var(TEST_SECONDS_VAR) {
        Ok(value) => value.trim().parse().with_context(|| format!("{TEST_SECONDS_VAR}={value:?} is not seconds"))?,
        Err(_) => TEST_SECONDS,
    };
    fuzz(root, &[], seconds, Corpus::Scratch)
}

/// Where a run adds the inputs it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Corpus {
    /// `fuzz/target/corpus/<target>/`, kept from run to run (and run on).
    Kept,
    /// `fuzz/target/corpus-scratch/<target>/`, emptied first.
    Scratch,
}

fn fuzz(root: &Path, targets: &[String], seconds: u64, corpus: Corpus) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("fuzz");
    let known = list_targets(&fuzz_dir)?;
    if let Some(unknown) = targets.iter().find(|t| !known.contains(t)) {
        bail!("no fuzz target {unknown:?}; the targets are {}", known.join(", "));
    }
    let targets = if targets.is_empty() { known } else { targets.to_vec() };
    // One build of every target requested (cargo-fuzz builds one or all).
    let mut build = cargo_fuzz("build", &fuzz_dir);
    if let [one] = targets.as_slice() {
        build.arg(one);
    }
    run_cmd(&mut build)?;
    let built = started.elapsed();
    let mut results = Vec::new();
    for target in &targets {
        let result = run_target(&fuzz_dir, target, seconds, corpus)?;
        println!("{}", result.summary);
        results.push(result);
    }
    println!();
    println!(
        "xtask fuzz: {} target{}, {} s each, in {:.0} s (cargo-fuzz and build {:.0} s)",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        seconds,
        started.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
    let crashed: Vec<&Outcome> = results.iter().filter(|r| !r.passed).collect();
    for result in &crashed {
        println!("{}", result.summary);
    }
    if !crashed.is_empty() {
        bail!(
            "{} of {} fuzz targets failed (inputs above; each becomes a regression test)",
            crashed.len(),
            results.len()
        );
    }
    Ok(())
}

/// Installs cargo-fuzz unless `cargo fuzz` already works.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        run_cmd(cargo().args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]))?;
    }
    Ok(())
}

/// `cargo fuzz <verb>` for the project in `fuzz_dir`, with the build
/// settings every invocation must share (or cargo-fuzz rebuilds).
fn cargo_fuzz(verb: &str, fuzz_dir: &Path) -> Command {
    let mut cmd = cargo();
    cmd.args(["fuzz", verb, "--fuzz-dir"]).arg(fuzz_dir).args(["--sanitizer", "none"]);
    // The stable toolchain takes the nightly-only flags of cargo-fuzz.
    cmd.env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// The targets of `fuzz/Cargo.toml`, as `cargo fuzz list` prints them.
fn list_targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut cmd = cargo();
    cmd.args(["fuzz", "list", "--fuzz-dir"]).arg(fuzz_dir);
    let output = cmd.stderr(Stdio::inherit()).output().context("running cargo fuzz list")?;
    if !output.status.success() {
        bail!("cargo fuzz list failed with {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect())
}

/// How one target's run went.
#[derive(Debug)]
struct Outcome {
    passed: bool,
    /// One line: the figures of the run, or the crash and its input.
    summary: String,
}

fn run_target(fuzz_dir: &Path, target: &str, seconds: u64, corpus: Corpus) -> anyhow::Result<Outcome> {
    let found = match corpus {
        Corpus::Kept => fuzz_dir.join("target/corpus").join(target),
        Corpus::Scratch => fuzz_dir.join("target/corpus-scratch").join(target),
    };
    if corpus == Corpus::Scratch && found.exists() {
        fs::remove_dir_all(&found).with_context(|| format!("emptying {}", found.display()))?;
    }
    fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
    let logs = fuzz_dir.join("target/logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let before = files_in(&artifacts);

    let mut cmd = cargo_fuzz("run", fuzz_dir);
    cmd.arg(target).arg(&found).arg(fuzz_dir.join("corpus").join(target));
    let regressions = fuzz_dir.join("regressions").join(target);
    if regressions.is_dir() {
        cmd.arg(&regressions);
    }
    cmd.arg("--");
    if seconds == 0 {
        cmd.arg("-runs=0");
    } else {
        cmd.arg(format!("-max_total_time={seconds}"));
    }
    cmd.arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-dict={}", fuzz_dir.join("kubernetes.dict").display()))
        .arg("-print_final_stats=1");
    eprintln!("\x1b[1m$ {}\x1b[0m", format!("{cmd:?}").replace('"', ""));
    eprintln!(
        "fuzz {target}: {} (log: {})",
        if seconds == 0 { "replaying the corpus".into() } else { format!("{seconds} s") },
        log_path.display()
    );

    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    // libFuzzer reports on stderr; the targets print nothing on stdout.
    let stdout = child.stdout.take();
    let echo = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stdout) = stdout {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                text.push_str(&String::from_utf8_lossy(&line));
                text.push('\n');
            }
        }
        text
    });
    let mut log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut stats = Stats::default();
    let mut tail: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).split(b'\n') {
            let line = String::from_utf8_lossy(&line?).into_owned();
            writeln!(log, "{line}")?;
            stats.read(&line);
            tail.push(line);
            if tail.len() > 80 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait()?;
    let stdout = echo.join().unwrap_or_default();
    if !stdout.is_empty() {
        write!(log, "{stdout}")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if status.success() {
        return Ok(Outcome {
            passed: true,
            summary: format!("fuzz {target}: ok, {} in {elapsed:.0} s", stats.describe()),
        });
    }
    for line in &tail {
        eprintln!("{line}");
    }
    let new: Vec<PathBuf> = files_in(&artifacts).into_iter().filter(|f| !before.contains(f)).collect();
    let inputs = if new.is_empty() {
        format!("no input saved (see {})", log_path.display())
    } else {
        new.iter()
            .map(|f| {
                format!(
                    "{} (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --sanitizer none {target} {})",
                    f.display(),
                    f.display()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    Ok(Outcome { passed: false, summary: format!("fuzz {target}: FAILED ({status}) after {elapsed:.0} s: {inputs}") })
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// The figures libFuzzer prints last.
#[derive(Debug, Default)]
struct Stats {
    runs: Option<u64>,
    coverage: Option<u64>,
    corpus: Option<u64>,
}

impl Stats {
    /// Takes the figures from a line of libFuzzer's output: `#N DONE cov: C
    /// ft: F corp: K/S ...` and `stat::number_of_executed_units: N`.
    fn read(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("stat::number_of_executed_units:") {
            self.runs = rest.trim().parse().ok().or(self.runs);
        }
        if !line.starts_with('#') {
            return;
        }
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            match word {
                "cov:" => self.coverage = words.next().and_then(|w| w.parse().ok()).or(self.coverage),
                "corp:" => {
                    self.corpus = words.next().and_then(|w| w.split('/').next()?.parse().ok()).or(self.corpus);
                }
                _ => {}
            }
        }
    }

    fn describe(&self) -> String {
        let show = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        format!("{} runs, coverage {} edges, corpus {} inputs", show(self.runs), show(self.coverage), show(self.corpus))
    }
}
