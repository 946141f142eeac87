//! `loadgen`: the HTTPS load generator of `cargo xtask bench`.
//!
//! POSTs one AdmissionReview body over keep-alive HTTP/1.1 connections to a
//! Portcullis endpoint, checks every answer, and reports latency percentiles,
//! throughput and its own CPU time (see `loadgen --help`). Closed loop by
//! default; open loop with `--rate`, where requests are due at fixed times and
//! latency counts from the due time, so a slow answer cannot hide the requests
//! that queued behind it (no coordinated omission).
//!
//! Exit status 1 if any request failed (warm-up included) or the run could
//! not start.

mod check;
mod cli;
mod load;
mod report;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use crate::check::Expectations;
use crate::report::Mode;

fn main() -> ExitCode {
    match run(cli::Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            // Not through `Termination`: that prints a backtrace when RUST_BACKTRACE is set.
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: cli::Args) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let body = std::fs::read(&args.body).with_context(|| format!("reading --body {}", args.body.display()))?;
    let plan = load::Plan {
        url: args.url.clone(),
        body: body.into(),
        ca: args.ca.clone(),
        expect: Expectations { allowed: args.expect_allowed, patch: args.expect_patch },
        mode: args.rate.map_or(Mode::Closed, |rate| Mode::Open { rate }),
        connections: args.connections(),
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
        server_pid: args.server_pid,
    };
    // One thread for all connections: the generator shares the machine with
    // the server it measures.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(load::run(&plan))?;
    drop(runtime);

    print!("{}", report.human());
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&report.to_json())?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing --json {}", path.display()))?;
    }
    Ok(if report.errors() > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
