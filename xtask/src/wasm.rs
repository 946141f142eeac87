//! Building policies for `wasm32-unknown-unknown`.
//!
//! Uses the rustup target when it is installed. Otherwise falls back to
//! Debian's `rustc-web` and `rust-web-src` packages, building the standard
//! library from source (`-Zbuild-std`) and linking with rust-lld; as root on
//! Debian it installs those packages itself. Otherwise it says what to install.
//!
//! Policies written in AssemblyScript (a `package.json` with an `asbuild`
//! script) are built with npm when `node` and `npm` are on the PATH, and
//! skipped with a message when they are not.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{apt, cargo, run_cmd};

const TARGET: &str = "wasm32-unknown-unknown";
const PROFILE: &str = "wasm-release";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SRC: &str = "/usr/lib/rustlib/src/rust/library";

enum Toolchain {
    /// The active toolchain has the target's standard library.
    Installed,
    /// Debian's rustc builds std from source; rust-lld links.
    BuildStd { rustc: PathBuf, linker: PathBuf },
}

/// Builds every policy and test guest; returns the output directory.
pub fn build_policies(root: &Path) -> anyhow::Result<PathBuf> {
    let policies = policy_crates(root)?;
    let test_guests = ["--package", "test-guests", "--lib", "--examples"];
    let built = build_packages(&root.join("Cargo.toml"), &policies, &test_guests, &root.join("target/wasm"))?;

    let out = root.join("target/policies");
    std::fs::create_dir_all(out.join("test-guests"))?;
    for name in &policies {
        let file = format!("{}.wasm", name.replace('-', "_"));
        copy(&built.join(&file), &out.join(format!("{name}.wasm")))?;
    }
    for entry in std::fs::read_dir(root.join("policies-wasm/test-guests/examples"))? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        copy(
            &built.join("examples").join(format!("{stem}.wasm")),
            &out.join("test-guests").join(format!("{stem}.wasm")),
        )?;
    }
    build_npm_policies(root, &out)?;
    eprintln!("policies written to {}", out.display());
    Ok(out)
}

/// Builds `packages` of the workspace of `manifest` (and what the cargo
/// arguments `extra` select) for wasm32 in the target directory `target`; returns the
/// directory the modules are in, each as `<crate_name>.wasm`. Builds that
/// share a target directory share the standard library when the profile
/// matches (with Debian's toolchain std is built from source, the costly part).
pub fn build_packages(manifest: &Path, packages: &[String], extra: &[&str], target: &Path) -> anyhow::Result<PathBuf> {
    let toolchain = detect()?;
    let mut cmd = cargo();
    cmd.arg("build").arg("--manifest-path").arg(manifest);
    cmd.args(["--profile", PROFILE, "--target", TARGET]).arg("--target-dir").arg(target);
    for name in packages {
        cmd.args(["--package", name]);
    }
    cmd.args(extra);
    if let Toolchain::BuildStd { rustc, linker } = &toolchain {
        cmd.arg("-Zbuild-std=std,panic_abort")
            .env("RUSTC", rustc)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker);
    }
    // Flags meant for the host (coverage, sanitizers) must not reach the guest build.
    cmd.env_remove("RUSTFLAGS").env_remove("CARGO_ENCODED_RUSTFLAGS");
    run_cmd(&mut cmd)?;
    Ok(target.join(TARGET).join(PROFILE))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Policy crates: directories of `policies-wasm/` that build a cdylib, other than test-guests.
fn policy_crates(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("policies-wasm"))? {
        let dir = entry?.path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else { continue };
        if name != "test-guests" && manifest.contains("\"cdylib\"") {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Policies built with npm, by name: directories of `policies-wasm/` whose
/// `package.json` has an `asbuild` script, which writes `build/<name>.wasm`.
fn npm_policies(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root.join("policies-wasm"))? {
        let dir = entry?.path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("package.json")) else { continue };
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else { continue };
        if manifest.contains("\"asbuild\"") {
            found.push((name.to_owned(), dir));
        }
    }
    found.sort();
    Ok(found)
}

/// Builds each npm policy into `out/<dir>.wasm`: `npm ci` when its
/// `node_modules` is missing or older than its `package-lock.json`, then
/// `npm run asbuild`. Without node and npm, says so and builds none.
fn build_npm_policies(root: &Path, out: &Path) -> anyhow::Result<()> {
    let policies = npm_policies(root)?;
    if policies.is_empty() {
        return Ok(());
    }
    if apt::which_path("node").is_none() || apt::which_path("npm").is_none() {
        let names: Vec<&str> = policies.iter().map(|(name, _)| name.as_str()).collect();
        eprintln!(
            "skipping {}: node and npm are needed to build them (the host's policy tests need the .wasm)",
            names.join(", ")
        );
        return Ok(());
    }
    for (name, dir) in &policies {
        if npm_install_stale(dir) {
            run_cmd(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(dir))?;
        }
        run_cmd(Command::new("npm").args(["run", "--silent", "asbuild"]).current_dir(dir))?;
        copy(&dir.join("build").join(format!("{name}.wasm")), &out.join(format!("{name}.wasm")))?;
    }
    Ok(())
}

/// Whether `dir/node_modules` is missing or older than `dir/package-lock.json`
/// (npm records each install in `node_modules/.package-lock.json`).
fn npm_install_stale(dir: &Path) -> bool {
    let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (modified(dir.join("node_modules/.package-lock.json")), modified(dir.join("package-lock.json"))) {
        (Some(installed), Some(lock)) => installed < lock,
        _ => true,
    }
}

fn detect() -> anyhow::Result<Toolchain> {
    if target_installed() {
        return Ok(Toolchain::Installed);
    }
    if let Some(toolchain) = debian_toolchain() {
        return Ok(toolchain);
    }
    if apt::can_install() {
        eprintln!("no {TARGET} standard library installed; installing Debian's rustc-web and rust-web-src");
        apt::install(&["rustc-web", "rust-web-src"])?;
        if let Some(toolchain) = debian_toolchain() {
            return Ok(toolchain);
        }
    }
    bail!(
        "cannot build wasm policies: the {TARGET} target is not installed.\n\
         Install it with `rustup target add {TARGET}`, or on Debian/Ubuntu with \
         `apt-get install rustc-web rust-web-src` (std is then built from source), and run this again."
    )
}

fn target_installed() -> bool {
    let Ok(out) =
        Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())).args(["--print", "sysroot"]).output()
    else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot.join("lib/rustlib").join(TARGET).join("lib").is_dir()
}

fn debian_toolchain() -> Option<Toolchain> {
    let rustc = PathBuf::from(DEBIAN_RUSTC);
    if !rustc.exists() || !Path::new(DEBIAN_STD_SRC).is_dir() {
        return None;
    }
    let linker = find_lld()?;
    Some(Toolchain::BuildStd { rustc, linker })
}

/// rust-lld from the rustup toolchain, else a system wasm linker.
fn find_lld() -> Option<PathBuf> {
    let out = Command::new("rustc").args(["--print", "sysroot"]).output().ok()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let host = Command::new("rustc").args(["-vV"]).output().ok()?;
    let host =
        String::from_utf8_lossy(&host.stdout).lines().find_map(|l| l.strip_prefix("host: ").map(str::to_owned))?;
    let bundled = sysroot.join("lib/rustlib").join(host).join("bin/rust-lld");
    if bundled.exists() {
        return Some(bundled);
    }
    ["rust-lld", "wasm-ld", "wasm-ld-16", "wasm-ld-15", "wasm-ld-14"].iter().find_map(|name| apt::which_path(name))
}
