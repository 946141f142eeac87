//! The OCI registry the host's registry tests run against: the CNCF
//! distribution registry, Debian's `docker-registry` package. As root on
//! Debian it is installed here (its service is stopped and disabled: each
//! test starts its own registry); otherwise it says what to install.

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::apt;

const BINARY: &str = "/usr/bin/docker-registry";
const PACKAGE: &str = "docker-registry";

/// Makes sure `/usr/bin/docker-registry` exists, installing it with apt when we can.
pub fn ensure_docker_registry() -> anyhow::Result<()> {
    if Path::new(BINARY).is_file() {
        return Ok(());
    }
    if !apt::can_install() {
        bail!(
            "{BINARY} not found: the registry tests need the CNCF distribution registry. \
             Install Debian's `{PACKAGE}` package (`apt-get install {PACKAGE}`, then stop and disable \
             the service it starts) and run this again."
        );
    }
    eprintln!("{BINARY} not found; installing Debian's {PACKAGE}");
    apt::install(&[PACKAGE])?;
    stop_service();
    if !Path::new(BINARY).is_file() {
        bail!("installed {PACKAGE} but {BINARY} is still missing");
    }
    Ok(())
}

/// The package may start a registry on :5000 (systemd or sysv init); the
/// tests do not use it. Each step may fail harmlessly where there is no init.
fn stop_service() {
    let quiet = |program: &str, args: &[&str]| {
        let _ = Command::new(program).args(args).output();
    };
    if apt::which_path("systemctl").is_some() {
        quiet("systemctl", &["disable", "--now", PACKAGE]);
    }
    if Path::new("/etc/init.d").join(PACKAGE).exists() {
        quiet("service", &[PACKAGE, "stop"]);
        quiet("update-rc.d", &[PACKAGE, "disable"]);
    }
}
