//! `cargo xtask soak`: the full-size reliability runs of
//! `webhook-server/tests/it/faults.rs` on the release binary — the soak (one
//! server at half its peak throughput, open loop, RSS watched) and the
//! faults under load at `PORTCULLIS_FAULTS_SCALE=full`. `cargo xtask test`
//! runs the faults at CI size only. The figures go to `docs/reliability.md`.

use std::path::Path;
use std::process::Command;

use crate::{cargo, run_cmd, run_tests, wasm};

/// Options of `cargo xtask soak`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// How long the soak's open-loop phase runs, in seconds.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
}

/// `cargo xtask soak`.
pub fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    let policies = wasm::build_policies(root)?;
    run_cmd(cargo().args(["build", "--release", "--package", "webhook-server"]))?;
    let server = root.join("target/release/webhook-server");
    let it = |filter: &str| -> Command {
        let mut cmd = cargo();
        cmd.args(["test", "--release", "--package", "webhook-server", "--test", "it", filter])
            .args(["--", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("PORTCULLIS_SERVER_BIN", &server)
            .env("PORTCULLIS_POLICY_DIR", &policies);
        cmd
    };
    let mut soak = it("faults::soak");
    run_tests(soak.env("PORTCULLIS_SOAK_SECONDS", options.seconds.to_string()))?;
    run_tests(it("faults::faults_under_load").env("PORTCULLIS_FAULTS_SCALE", "full"))
}
