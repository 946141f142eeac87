//! Installing what a task needs from Debian's archive, when we can: as root
//! on Debian with apt (as CI runs); elsewhere the task says what to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run_cmd;

/// True when [`install`] can work here: root, Debian, `apt-get` on the PATH.
pub fn can_install() -> bool {
    is_root() && Path::new("/etc/debian_version").exists() && which_path("apt-get").is_some()
}

/// `apt-get update`, then `apt-get install` of `packages` (no recommends), non-interactively.
pub fn install(packages: &[&str]) -> anyhow::Result<()> {
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut cmd)
    };
    apt(&["update", "-qq"])?;
    apt(&[&["install", "-y", "-qq", "--no-install-recommends"][..], packages].concat())
}

/// Where `name` is on the PATH.
pub fn which_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
