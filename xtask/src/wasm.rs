//! Building policies for `wasm32-unknown-unknown`.
//!
//! Uses the rustup target when it is installed. Otherwise falls back to
//! Debian's `rustc-web` and `rust-web-src` packages, building the standard
//! library from source (`-Zbuild-std`) and linking with rust-lld; as root on
//! Debian it installs those packages itself. Otherwise it says what to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{cargo, run_cmd};

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
    let toolchain = detect()?;
    let policies = policy_crates(root)?;
    let target_dir = root.join("target/wasm");
    let mut cmd = cargo();
    cmd.arg("build").args(["--profile", PROFILE, "--target", TARGET]).arg("--target-dir").arg(&target_dir);
    for name in &policies {
        cmd.args(["--package", name]);
    }
    cmd.args(["--package", "test-guests", "--lib", "--examples"]);
    if let Toolchain::BuildStd { rustc, linker } = &toolchain {
        cmd.arg("-Zbuild-std=std,panic_abort")
            .env("RUSTC", rustc)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker);
    }
    // Flags meant for the host (coverage, sanitizers) must not reach the guest build.
    cmd.env_remove("RUSTFLAGS").env_remove("CARGO_ENCODED_RUSTFLAGS");
    run_cmd(&mut cmd)?;

    let built = target_dir.join(TARGET).join(PROFILE);
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
    eprintln!("policies written to {}", out.display());
    Ok(out)
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

fn detect() -> anyhow::Result<Toolchain> {
    if target_installed() {
        return Ok(Toolchain::Installed);
    }
    if let Some(toolchain) = debian_toolchain() {
        return Ok(toolchain);
    }
    if is_root() && Path::new("/etc/debian_version").exists() && which("apt-get") {
        eprintln!("no {TARGET} standard library installed; installing Debian's rustc-web and rust-web-src");
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut update)?;
        let mut install = Command::new("apt-get");
        install.args(["install", "-y", "-qq", "rustc-web", "rust-web-src"]).env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut install)?;
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
    ["rust-lld", "wasm-ld", "wasm-ld-16", "wasm-ld-15", "wasm-ld-14"].iter().find_map(|name| which_path(name))
}

fn which(name: &str) -> bool {
    which_path(name).is_some()
}

fn which_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
