//! The Go programs of the local backend — `kube-apiserver`, `etcd` and `helm` —
//! built from their Go modules at pinned versions (only the Go module proxy is
//! reachable, so no release downloads) into `e2e/.cache/bin/<name>-<version>`.
//! A binary that is there is reused, so only the first run pays for the build.
//!
//! Each program gets a throwaway main module under `e2e/.cache/src/` that
//! requires the program's module and names its main package in a `tool`
//! directive. `k8s.io/kubernetes` points at its staging modules
//! (`k8s.io/api`, `k8s.io/apiserver`, ...) with `=> ./staging/...` replaces
//! that mean nothing outside its repository; the main module replaces each of
//! them with the published `v0.X.Y` that matches `v1.X.Y`, read from
//! kubernetes' own go.mod so the list stays right when the version moves.
//!
//! Builds run under `nice -n 19` with `-p` jobs (1 by default, 2 when `CI` is
//! set and the machine is ours; `PORTCULLIS_E2E_GO_JOBS` overrides), so a
//! shared two-core machine stays usable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::run_cmd;

/// kube-apiserver and the matching staging modules (`v0.37.2`).
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// etcd server; kubernetes v1.37 is tested against etcd 3.7.
pub const ETCD_VERSION: &str = "v3.7.3";
/// helm (v3: the CLI the chart's users run).
pub const HELM_VERSION: &str = "v3.22.0";
/// The kubelet of the node backend. Not the API server's version: SIG Node
/// made 1.35 the last release that supports containerd 1.x, and this
/// machine's containerd is Debian 12's 1.6, so 1.35 is the newest kubelet
/// for it (with `failCgroupV1: false`, the VM's cgroups being v1). Three
/// minors below the API server is within the supported version skew.
pub const KUBELET_VERSION: &str = "v1.35.4";

/// The paths of the built programs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
    pub helm: PathBuf,
}

/// The node backend's programs, besides [`Binaries`].
#[derive(Debug, Clone)]
pub struct NodeBinaries {
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubelet: PathBuf,
    /// The pause container's program (static).
    pub pause: PathBuf,
}

struct Program {
    name: &'static str,
    module: &'static str,
    version: &'static str,
    package: &'static str,
}

const KUBE_APISERVER: Program = Program {
    name: "kube-apiserver",
    module: "k8s.io/kubernetes",
    version: KUBERNETES_VERSION,
    package: "k8s.io/kubernetes/cmd/kube-apiserver",
};
// etcd's server main package is the root of go.etcd.io/etcd/server/v3 (3.6 and later).
const ETCD: Program = Program {
    name: "etcd",
    module: "go.etcd.io/etcd/server/v3",
    version: ETCD_VERSION,
    package: "go.etcd.io/etcd/server/v3",
};
const KUBE_CONTROLLER_MANAGER: Program = Program {
    name: "kube-controller-manager",
    module: "k8s.io/kubernetes",
    version: KUBERNETES_VERSION,
    package: "k8s.io/kubernetes/cmd/kube-controller-manager",
};
const KUBE_SCHEDULER: Program = Program {
    name: "kube-scheduler",
    module: "k8s.io/kubernetes",
    version: KUBERNETES_VERSION,
    package: "k8s.io/kubernetes/cmd/kube-scheduler",
};
const KUBELET: Program = Program {
    name: "kubelet",
    module: "k8s.io/kubernetes",
    version: KUBELET_VERSION,
    package: "k8s.io/kubernetes/cmd/kubelet",
};
const HELM: Program =
    Program { name: "helm", module: "helm.sh/helm/v3", version: HELM_VERSION, package: "helm.sh/helm/v3/cmd/helm" };

/// Builds whatever is missing from `cache/bin` and returns the three binaries.
pub fn ensure(cache: &Path) -> anyhow::Result<Binaries> {
    let go = find_go()?;
    Ok(Binaries {
        kube_apiserver: ensure_one(&go, cache, &KUBE_APISERVER)?,
        etcd: ensure_one(&go, cache, &ETCD)?,
        helm: ensure_one(&go, cache, &HELM)?,
    })
}

/// Builds whatever the node backend needs that is missing from `cache/bin`.
/// `pause_src` is the directory of the pause program (a main package of the
/// standard library only).
pub fn ensure_node(cache: &Path, pause_src: &Path) -> anyhow::Result<NodeBinaries> {
    let go = find_go()?;
    Ok(NodeBinaries {
        kube_controller_manager: ensure_one(&go, cache, &KUBE_CONTROLLER_MANAGER)?,
        kube_scheduler: ensure_one(&go, cache, &KUBE_SCHEDULER)?,
        kubelet: ensure_one(&go, cache, &KUBELET)?,
        pause: ensure_pause(&go, cache, pause_src)?,
    })
}

/// The pause program, static (`CGO_ENABLED=0`), rebuilt when its source changes.
fn ensure_pause(go: &Path, cache: &Path, src: &Path) -> anyhow::Result<PathBuf> {
    let source = std::fs::read(src.join("main.go")).with_context(|| format!("reading {}", src.display()))?;
    let tag: String = format!("{:016x}", fnv(&source)).chars().take(12).collect();
    let bin = cache.join("bin").join(format!("pause-{tag}"));
    if bin.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(cache.join("bin"))?;
    let tmp = cache.join("bin").join(format!(".pause.tmp{}", std::process::id()));
    run_cmd(go_cmd(go, src).args(["build", "-trimpath", "-ldflags", "-s -w", "-o"]).arg(&tmp).arg("."))?;
    std::fs::rename(&tmp, &bin)?;
    Ok(bin)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn ensure_one(go: &Path, cache: &Path, program: &Program) -> anyhow::Result<PathBuf> {
    let bin = cache.join("bin").join(format!("{}-{}", program.name, program.version));
    if bin.is_file() {
        eprintln!("e2e: using cached {}", bin.display());
        return Ok(bin);
    }
    let started = Instant::now();
    eprintln!(
        "e2e: building {} {} from the Go module proxy into {} (first run only; this takes a while)",
        program.name,
        program.version,
        bin.display()
    );
    let dir = cache.join("src").join(format!("{}-{}", program.name, program.version));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(cache.join("bin"))?;

    let mut go_mod = format!(
        "// Generated by cargo xtask e2e: builds {} {}.\nmodule portcullis.invalid/e2e/{}\n\ngo {}\n",
        program.package,
        program.version,
        program.name,
        go_directive(go)?
    );
    if program.module == "k8s.io/kubernetes" {
        go_mod.push_str("\ngodebug default=go1.26\n");
        go_mod.push_str(&staging_replaces(go, &dir, program.version)?);
    }
    // go.sum is rewritten by `go get`; an old one from another version is harmless.
    std::fs::write(dir.join("go.mod"), go_mod).with_context(|| format!("writing {}", dir.join("go.mod").display()))?;
    run_cmd(go_cmd(go, &dir).args(["get", "-tool", &format!("{}@{}", program.package, program.version)]))?;

    let ldflags = ldflags(go, &dir, program)?;
    let tmp = cache.join("bin").join(format!(".{}-{}.tmp{}", program.name, program.version, std::process::id()));
    let mut build = nice(go, &dir);
    build
        .args(["build", "-p", &go_jobs().to_string(), "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(&tmp)
        .arg(program.package);
    run_cmd(&mut build)?;
    std::fs::rename(&tmp, &bin).with_context(|| format!("moving {} to {}", tmp.display(), bin.display()))?;
    eprintln!("e2e: built {} in {:.0?}", bin.display(), started.elapsed());
    Ok(bin)
}

/// `replace k8s.io/X => k8s.io/X v0.N.M` for every staging module of kubernetes `version`.
fn staging_replaces(go: &Path, dir: &Path, version: &str) -> anyhow::Result<String> {
    let staging_version = version.replacen("v1.", "v0.", 1);
    let out = go_cmd(go, dir)
        .args(["mod", "download", "-json", &format!("k8s.io/kubernetes@{version}")])
        .output()
        .context("running go mod download")?;
    if !out.status.success() {
        bail!("go mod download k8s.io/kubernetes@{version} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let go_mod_path = json
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"GoMod\": \"").and_then(|r| r.strip_suffix("\",")))
        .context("go mod download printed no GoMod path")?;
    let go_mod = std::fs::read_to_string(go_mod_path).with_context(|| format!("reading {go_mod_path}"))?;
    let mut out = String::from("\nreplace (\n");
    let mut count = 0;
    for line in go_mod.lines() {
        let line = line.trim();
        let Some((module, target)) = line.split_once("=>") else { continue };
        if target.trim().starts_with("./staging/") {
            let module = module.trim();
            out.push_str(&format!("\t{module} => {module} {staging_version}\n"));
            count += 1;
        }
    }
    if count == 0 {
        bail!("found no staging replaces in {go_mod_path}");
    }
    out.push_str(")\n");
    Ok(out)
}

fn ldflags(go: &Path, dir: &Path, program: &Program) -> anyhow::Result<String> {
    let mut flags = String::from("-s -w");
    let version = program.version;
    match program.name {
        "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" | "kubelet" => {
            let (major, minor) = major_minor(version)?;
            for pkg in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
                flags.push_str(&format!(
                    " -X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean"
                ));
            }
        }
        "helm" => {
            // helm's default Kubernetes version (for `helm template` and lint) is
            // that of the client-go it was built with.
            let out = go_cmd(go, dir).args(["list", "-m", "-f", "{{.Version}}", "k8s.io/client-go"]).output()?;
            let client_go = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let (_, minor) = major_minor(&client_go)?;
            flags.push_str(&format!(" -X helm.sh/helm/v3/internal/version.version={version}"));
            for pkg in ["helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"] {
                flags.push_str(&format!(" -X {pkg}.k8sVersionMajor=1 -X {pkg}.k8sVersionMinor={minor}"));
            }
        }
        _ => {}
    }
    Ok(flags)
}

fn major_minor(version: &str) -> anyhow::Result<(String, String)> {
    let mut parts = version.trim_start_matches('v').split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok((major.to_owned(), minor.to_owned())),
        _ => bail!("cannot read major.minor from version {version:?}"),
    }
}

/// The `go` directive for the generated modules: the local toolchain's version.
fn go_directive(go: &Path) -> anyhow::Result<String> {
    let out = Command::new(go).args(["env", "GOVERSION"]).output().context("running go env GOVERSION")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("go").to_owned();
    let (major, minor) = major_minor(&version)?;
    if major != "1" || minor.parse::<u32>().unwrap_or(0) < 26 {
        bail!("{} is Go {version}; building kube-apiserver {KUBERNETES_VERSION} needs Go 1.26 or newer", go.display());
    }
    Ok(version)
}

fn find_go() -> anyhow::Result<PathBuf> {
    if let Some(go) = std::env::var_os("PORTCULLIS_E2E_GO") {
        return Ok(go.into());
    }
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("go")).find(|p| p.is_file()));
    on_path
        .or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|p| p.is_file()))
        .context("no Go toolchain: install Go 1.26 or newer (or set PORTCULLIS_E2E_GO to the go binary)")
}

fn go_jobs() -> u32 {
    std::env::var("PORTCULLIS_E2E_GO_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(if std::env::var_os("CI").is_some() { 2 } else { 1 })
}

/// A `go` command in `dir` that uses only the local toolchain and the module proxy.
fn go_cmd(go: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(go);
    configure(&mut cmd, dir);
    cmd
}

/// Like [`go_cmd`], at the lowest CPU priority.
fn nice(go: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19"]).arg(go);
    configure(&mut cmd, dir);
    cmd
}

fn configure(cmd: &mut Command, dir: &Path) {
    cmd.current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("GOFLAGS", "-mod=mod -buildvcs=false")
        .env("CGO_ENABLED", "0")
        .env("GOMAXPROCS", go_jobs().max(1).to_string());
}
