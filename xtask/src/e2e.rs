//! `cargo xtask e2e`: the end-to-end suite on the local backend — a real
//! `kube-apiserver` and `etcd` on loopback, `webhook-server serve` as a local
//! process, the chart's webhook configurations (external-URL mode) pointing at
//! it — plus the chart checks. Everything it starts is stopped when it ends,
//! whether it passed, failed or was interrupted (see `process`).
//!
//! Steps, in order (each prints what it runs):
//! 1. build (or reuse from `e2e/.cache/bin`) kube-apiserver, etcd and helm;
//! 2. build the policies, `webhook-server` (release) and the e2e runner;
//! 3. chart checks without a cluster: `helm lint` and `helm template` for the
//!    default values, each `examples/*.yaml` and the e2e values; the server
//!    loads the policy config the chart renders (`webhook-server check`);
//! 4. start etcd and kube-apiserver with fresh certificates, wait for /readyz;
//! 5. server-side dry run of every rendered manifest (kinds without a CRD
//!    here, such as cert-manager's and the Prometheus Operator's, are skipped
//!    and listed);
//! 6. start webhook-server with the arguments of the chart's Deployment (its
//!    container paths mapped to this run: that config, a certificate for
//!    127.0.0.1); `helm install` the chart in external-URL mode;
//! 7. run the cases (`cargo test -p e2e --test cases -- --ignored`);
//! 8. `helm uninstall`, and check that no webhook configuration is left;
//! 9. install the chart in its own mode (self-signed certificates), upgrade
//!    it (the CA must be kept), uninstall it, and check again.
//!
//! Scratch files, logs and the kubeconfig are in `target/e2e/run-<pid>/`.

mod gobuild;
mod node;
mod pki;
mod process;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{cargo, certs, run_cmd, wasm};
use process::Service;

/// Release name and namespace of the chart in the local backend.
const RELEASE: &str = "portcullis-e2e";
const NAMESPACE: &str = "portcullis-system";

/// Options of `cargo xtask e2e`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Only build the cached Go binaries (kube-apiserver, etcd, helm; and the
    /// node's with `--backend node`) and exit.
    #[arg(long)]
    pub build_only: bool,
    /// `local`: the API server calls webhook-server running as a local
    /// process. `node`: a real node (containerd, kubelet) runs the chart's pods.
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    pub backend: Backend,
    /// Arguments passed to the case runner after `--ignored` (e.g. a test name filter).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// Which cluster the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// kube-apiserver and etcd; webhook-server as a local process.
    Local,
    /// Also controller-manager, scheduler, containerd and a kubelet: the chart's pods run.
    Node,
}

/// Where the Go binaries and their build modules are cached.
fn cache_dir(root: &Path) -> PathBuf {
    std::env::var_os("PORTCULLIS_E2E_CACHE").map_or_else(|| root.join("e2e/.cache"), PathBuf::from)
}

/// Runs the local backend end to end.
pub fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    let mut timer = Timer::new();
    let bins = gobuild::ensure(&cache_dir(root))?;
    timer.step("Go binaries (kube-apiserver, etcd, helm)");
    if options.backend == Backend::Node {
        let progs = gobuild::ensure_node(&cache_dir(root), &root.join("e2e/node/pause"))?;
        timer.step("Go binaries of the node (controller-manager, scheduler, kubelet, pause)");
        if !options.build_only {
            let outcome = node::run(root, options, &bins, &progs, &mut timer);
            timer.print();
            return outcome;
        }
    }
    if options.build_only {
        timer.print();
        return Ok(());
    }

    let policies = wasm::build_policies(root)?;
    run_cmd(cargo().args(["build", "--release", "--package", "webhook-server"]))?;
    run_cmd(cargo().args(["test", "--package", "e2e", "--no-run"]))?;
    run_cmd(cargo().args(["build", "--package", "e2e", "--bin", "portcullis-e2e"]))?;
    timer.step("policies, webhook-server, e2e runner");
    let server_bin = root.join("target/release/webhook-server");
    let e2e_bin = root.join("target/debug/portcullis-e2e");

    // One directory per run: engineers sharing a work tree may run the suite
    // at the same time (ports are picked free, so the runs do not meet).
    let runs = root.join("target/e2e");
    remove_finished_runs(&runs);
    let work = runs.join(format!("run-{}", std::process::id()));
    for dir in ["logs", "render", "pki", "webhook-certs", "helm"] {
        std::fs::create_dir_all(work.join(dir))?;
    }
    let helm = Helm::new(&bins.helm, &work.join("helm"));

    // Chart checks that need no cluster.
    let chart = root.join("charts/portcullis");
    let e2e_values = root.join("e2e/values-e2e.yaml");
    let renders = check_chart(root, &helm, &chart, &e2e_values, &policies, &work.join("render"))?;
    let config = work.join("config.yaml");
    let in_cluster = work.join("render/e2e-values.yaml");
    run_cmd(Command::new(&e2e_bin).arg("policy-config").arg(&in_cluster).arg("--out").arg(&config))?;
    run_cmd(Command::new(&server_bin).arg("check").arg("--config").arg(&config))?;
    timer.step("chart lint, template and policy config check");

    // The API server.
    let pki = pki::generate(&work.join("pki"), &[])?;
    let etcd_port = free_port()?;
    let etcd_peer_port = free_port()?;
    let apiserver_port = free_port()?;
    let webhook_port = free_port()?;
    let kubeconfig = work.join("kubeconfig");
    pki::write_kubeconfig(&kubeconfig, &format!("https://127.0.0.1:{apiserver_port}"), &pki)?;

    let mut etcd =
        Service::start("etcd", &etcd_cmd(&bins.etcd, &work, etcd_port, etcd_peer_port), &work.join("logs/etcd.log"))?;
    wait_for_port(&mut etcd, etcd_port, Duration::from_secs(60))?;
    let mut apiserver = Service::start(
        "kube-apiserver",
        &apiserver_cmd(&bins.kube_apiserver, &work, &pki, etcd_port, apiserver_port),
        &work.join("logs/kube-apiserver.log"),
    )?;
    let e2e = |args: &[&str]| {
        let mut cmd = Command::new(&e2e_bin);
        cmd.args(args).env("PORTCULLIS_E2E_KUBECONFIG", &kubeconfig);
        cmd
    };
    if let Err(e) = run_cmd(&mut e2e(&["wait-ready", "--timeout", "180"])) {
        apiserver.check_running()?;
        return Err(e.context(format!("kube-apiserver did not get ready; its log:\n{}", apiserver.log_tail(40))));
    }
    timer.step("etcd and kube-apiserver up");

    // The rendered chart, accepted by the real API server.
    let mut dry_run = e2e(&["apply", "--dry-run", "--skip-unknown-kinds", "--namespace", NAMESPACE]);
    dry_run.args(&renders);
    run_cmd(&mut dry_run)?;
    timer.step("server-side dry run of the rendered chart");

    // The webhook server, started with the arguments of the chart's
    // Deployment (paths mapped to this run), and its webhook configurations.
    let certs = certs::write_dev_certs(&work.join("webhook-certs"), &["127.0.0.1".into(), "localhost".into()])?;
    let mut serve = Command::new(&server_bin);
    let chart_args = output(Command::new(&e2e_bin).arg("server-args").arg(&in_cluster))?;
    for arg in chart_args.lines() {
        let mapped = match arg.split_once('=') {
            Some(("--config", _)) => format!("--config={}", config.display()),
            Some(("--addr", _)) => format!("--addr=127.0.0.1:{webhook_port}"),
            Some(("--tls-cert", _)) => format!("--tls-cert={}", certs.cert.display()),
            Some(("--tls-key", _)) => format!("--tls-key={}", certs.key.display()),
            Some(("--module-cache", _)) => format!("--module-cache={}", work.join("module-cache").display()),
            // The image's /policies/compiled: the built-in policies compiled
            // ahead, as `cargo xtask image` does.
            Some(("--precompiled", _)) => {
                let dir = work.join("precompiled");
                let mut precompile = Command::new(&server_bin);
                precompile
                    .arg("precompile")
                    .arg("--output")
                    .arg(&dir)
                    .args(crate::image::files_with_extension(&policies, "wasm")?);
                run_cmd(&mut precompile)?;
                format!("--precompiled={}", dir.display())
            }
            Some((flag, value)) if value.starts_with('/') => {
                bail!("the chart passes {flag} a path in the container ({value}); map it for the local server")
            }
            _ => arg.to_owned(),
        };
        serve.arg(mapped);
    }
    // In the cluster the server watches with its ServiceAccount (the chart's
    // RBAC); here with the suite's admin kubeconfig.
    serve.arg(format!("--kubeconfig={}", kubeconfig.display()));
    serve.env("RUST_LOG", "info");
    let mut webhook = Service::start("webhook-server", &serve, &work.join("logs/webhook-server.log"))?;
    wait_for_port(&mut webhook, webhook_port, Duration::from_secs(120))?;
    // Ready once the context caches of the chart's policies have synced.
    wait_for_ready(&mut webhook, webhook_port, &certs.ca, Duration::from_secs(60))?;
    run_cmd(
        helm.cmd(&kubeconfig)
            .args(["install", RELEASE])
            .arg(&chart)
            .args(["--namespace", NAMESPACE, "--create-namespace", "--values"])
            .arg(&e2e_values)
            .args(["--set", &format!("webhook.url=https://127.0.0.1:{webhook_port}")])
            .arg("--set-file")
            .arg(format!("webhook.caBundle={}", certs.ca.display())),
    )?;
    timer.step("webhook-server up, chart installed (external URL)");

    // The cases.
    let mut test = cargo();
    test.args(["test", "--package", "e2e", "--test", "cases", "--", "--ignored", "--test-threads=1"])
        .args(&options.test_args)
        .env("PORTCULLIS_E2E_KUBECONFIG", &kubeconfig);
    let mut outcome = crate::run_tests(&mut test);
    if outcome.is_ok() && options.test_args.is_empty() {
        // The server's watch-backed context store against this API server.
        let mut store = cargo();
        store
            .args(["test", "--package", "webhook-server", "--test", "it", "--", "--ignored", "context_cluster"])
            .env("PORTCULLIS_E2E_KUBECONFIG", &kubeconfig)
            .env("PORTCULLIS_POLICY_DIR", &policies);
        outcome = crate::run_tests(&mut store);
    }
    timer.step("cases");
    if let Err(e) = outcome {
        for service in [&mut webhook, &mut apiserver, &mut etcd] {
            service.print_tail(15);
        }
        return Err(e);
    }

    uninstall_leaves_no_webhooks(&helm, &kubeconfig, RELEASE, NAMESPACE, &e2e)?;
    timer.step("helm uninstall");

    // The chart in its own mode (self-signed certificates): install, upgrade
    // (the generated CA must survive it), uninstall. No pods run here (no
    // kubelet), so its webhooks are installed only after the cases are done.
    chart_lifecycle(&helm, &kubeconfig, &chart, &e2e)?;
    timer.step("chart install/upgrade/uninstall (self-signed mode)");

    drop(webhook);
    drop(apiserver);
    drop(etcd);
    timer.step("teardown");
    timer.print();
    Ok(())
}

/// Uninstalls a release and checks that no webhook configuration of it is left.
fn uninstall_leaves_no_webhooks(
    helm: &Helm,
    kubeconfig: &Path,
    release: &str,
    namespace: &str,
    e2e: &dyn Fn(&[&str]) -> Command,
) -> anyhow::Result<()> {
    run_cmd(helm.cmd(kubeconfig).args(["uninstall", release, "--namespace", namespace, "--wait"]))?;
    let selector = format!("app.kubernetes.io/instance={release}");
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"] {
        let api_version = "admissionregistration.k8s.io/v1";
        run_cmd(&mut e2e(&["expect-none", "--api-version", api_version, "--kind", kind, "--selector", &selector]))?;
    }
    Ok(())
}

/// Installs the chart with default values, upgrades it, checks that the
/// self-signed CA was kept and is the webhooks' caBundle, uninstalls it and
/// checks that no webhook configuration is left.
fn chart_lifecycle(
    helm: &Helm,
    kubeconfig: &Path,
    chart: &Path,
    e2e: &dyn Fn(&[&str]) -> Command,
) -> anyhow::Result<()> {
    const FULL: &str = "portcullis-full";
    let install = |verb: &str| -> anyhow::Result<()> {
        run_cmd(helm.cmd(kubeconfig).args([verb, FULL]).arg(chart).args(["--namespace", FULL, "--create-namespace"]))
    };
    let read = |api_version: &str, kind: &str, name: &str, pointer: &str| -> anyhow::Result<String> {
        let out = e2e(&[
            "get",
            "--api-version",
            api_version,
            "--kind",
            kind,
            "--namespace",
            FULL,
            "--pointer",
            pointer,
            name,
        ])
        .output()
        .context("running portcullis-e2e get")?;
        if !out.status.success() {
            bail!("reading {kind} {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let secret_ca = || read("v1", "Secret", &format!("{FULL}-tls"), "/data/ca.crt");
    let webhook_ca = || {
        read(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            FULL,
            "/webhooks/0/clientConfig/caBundle",
        )
    };
    install("install")?;
    let first = secret_ca()?;
    if first.is_empty() || webhook_ca()? != first {
        bail!("the webhook caBundle is not the CA of the generated Secret");
    }
    install("upgrade")?;
    if secret_ca()? != first || webhook_ca()? != first {
        bail!("helm upgrade replaced the self-signed CA; it must be kept (lookup of the existing Secret)");
    }
    eprintln!("e2e: the self-signed CA survived helm upgrade and is the webhooks' caBundle");
    uninstall_leaves_no_webhooks(helm, kubeconfig, FULL, FULL, e2e)?;
    Ok(())
}

/// Wall-clock time of each step, printed at the end (e2e/README.md quotes them).
struct Timer {
    started: Instant,
    since: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Timer {
    fn new() -> Self {
        Self { started: Instant::now(), since: Instant::now(), steps: Vec::new() }
    }

    fn step(&mut self, name: &'static str) {
        self.steps.push((name, self.since.elapsed()));
        self.since = Instant::now();
    }

    fn print(&self) {
        eprintln!("\ne2e: timings");
        for (name, took) in &self.steps {
            eprintln!("  {:>7.1}s  {name}", took.as_secs_f64());
        }
        eprintln!("  {:>7.1}s  total", self.started.elapsed().as_secs_f64());
    }
}

/// Runs a command and returns its standard output.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed with {}:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the directories of earlier runs whose process has ended (Linux:
/// `/proc/<pid>`); their logs are kept until then for a look after a failure.
fn remove_finished_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("run-")) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// helm with its state kept under the run directory (nothing in $HOME).
struct Helm {
    bin: PathBuf,
    home: PathBuf,
}

impl Helm {
    fn new(bin: &Path, home: &Path) -> Self {
        Self { bin: bin.to_path_buf(), home: home.to_path_buf() }
    }

    fn cmd(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .env("KUBECONFIG", kubeconfig);
        cmd
    }

    /// Runs helm and returns its standard output.
    fn output(&self, cmd: &mut Command) -> anyhow::Result<String> {
        let shown = format!("{cmd:?}");
        eprintln!("\x1b[1m$ {}\x1b[0m", shown.replace('"', ""));
        let out = cmd.output().with_context(|| format!("starting {}", self.bin.display()))?;
        if !out.status.success() {
            bail!("{shown} failed with {}:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `helm lint` and `helm template` for the default values, every example and
/// the e2e values; returns the rendered files (for the dry run).
fn check_chart(
    root: &Path,
    helm: &Helm,
    chart: &Path,
    e2e_values: &Path,
    policies: &Path,
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let no_cluster = out.join("no-cluster-kubeconfig");
    let mut variants: Vec<(String, Vec<String>)> = vec![("default".into(), Vec::new())];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(chart.join("examples"))
        .with_context(|| format!("reading {}", chart.join("examples").display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    for example in examples {
        let name = example.file_stem().and_then(|s| s.to_str()).unwrap_or("example").to_owned();
        variants.push((name, vec!["--values".into(), example.display().to_string()]));
    }
    // The e2e values, with the modules where the local build put them: the
    // server config of the local backend is this render's ConfigMap.
    variants.push((
        "e2e-values".into(),
        vec![
            "--values".into(),
            e2e_values.display().to_string(),
            "--set".into(),
            format!("policyDir={}", policies.display()),
        ],
    ));
    let mut rendered = Vec::new();
    for (name, args) in &variants {
        helm.output(helm.cmd(&no_cluster).args(["lint", "--strict"]).arg(chart).args(args))?;
        let text = helm.output(
            helm.cmd(&no_cluster).args(["template", RELEASE]).arg(chart).args(["--namespace", NAMESPACE]).args(args),
        )?;
        let file = out.join(format!("{name}.yaml"));
        std::fs::write(&file, text)?;
        eprintln!("e2e: rendered {}", file.strip_prefix(root).unwrap_or(&file).display());
        rendered.push(file);
    }
    // Values the chart must refuse (values.schema.json and its required checks).
    let refused: [(&[&str], &str); 10] = [
        (&["--set", "policies.ingress-tls.failurePolicy=Maybe"], "value must be one of 'Fail', 'Ignore'"),
        (&["--set", "policies.Bad_Name.module=x.wasm"], "does not match pattern"),
        (&["--set", "replicas=3"], "additional properties 'replicas' not allowed"),
        (&["--set", "webhook.url=https://127.0.0.1:8443"], "webhook.caBundle is required with webhook.url"),
        (&["--set", "certificates.mode=existing"], "is required when certificates.mode is existing"),
        (&["--set", "policies.ingress-tls.timeoutMs=3000"], "must be below its webhook's timeoutSeconds (3 s)"),
        (&["--set", "server.shutdownDelaySeconds=15"], "must be below terminationGracePeriodSeconds"),
        (&["--set", "policies.ingress-tls.maxConcurrent=8"], "over the 384 MiB budget"),
        (&["--set", "policies.ingress-tls.module=oci://registry.example/policies/ingress-tls:v1"], "'not' failed"),
        (
            &["--set", "policies.ingress-tls.module=oci://registry.example/p/ingress-tls@sha256:ab"],
            "an oci:// module must be pinned by digest",
        ),
    ];
    for (args, expected) in refused {
        let mut cmd = helm.cmd(&no_cluster);
        cmd.args(["template", RELEASE]).arg(chart).args(args);
        let out = cmd.output().context("running helm template")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains(expected) {
            bail!("helm template {args:?} should fail with {expected:?}; it said: {stderr}");
        }
    }
    eprintln!("e2e: the chart refuses {} kinds of bad values", refused.len());

    // External-URL mode renders the webhook configurations and nothing else.
    let text = helm.output(
        helm.cmd(&no_cluster)
            .args(["template", RELEASE])
            .arg(chart)
            .args(["--namespace", NAMESPACE, "--values"])
            .arg(e2e_values)
            .args(["--set", "webhook.url=https://127.0.0.1:8443", "--set", "webhook.caBundle=Y2E="]),
    )?;
    let mut kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
    kinds.sort_unstable();
    if kinds != ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        bail!("external-URL mode should render only the two webhook configurations; it rendered {kinds:?}");
    }
    Ok(rendered)
}

fn etcd_cmd(etcd: &Path, work: &Path, port: u16, peer_port: u16) -> Command {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(etcd);
    cmd.arg("--name=e2e")
        .arg(format!("--data-dir={}", work.join("etcd").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=e2e={peer}"))
        // Throwaway data: skip fsync, which is most of etcd's cost on a shared disk.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    cmd
}

fn apiserver_cmd(bin: &Path, work: &Path, pki: &pki::Pki, etcd_port: u16, port: u16) -> Command {
    let path = |p: &Path| p.display().to_string();
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        .arg(format!("--cert-dir={}", work.join("apiserver").display()))
        .arg(format!("--tls-cert-file={}", path(&pki.server_cert)))
        .arg(format!("--tls-private-key-file={}", path(&pki.server_key)))
        .arg(format!("--client-ca-file={}", path(&pki.client_ca)))
        .arg("--authorization-mode=RBAC")
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", path(&pki.sa_pub)))
        .arg(format!("--service-account-signing-key-file={}", path(&pki.sa_key)))
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        // No kubelets, controllers or Endpoints here: nothing to reconcile.
        .arg("--endpoint-reconciler-type=none")
        .arg("--enable-priority-and-fairness=false")
        .arg("--profiling=false")
        .arg("--v=1")
        // Webhook calls must go straight to loopback.
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env("NO_PROXY", "127.0.0.1,localhost");
    cmd
}

/// Waits until the server's `/readyz` answers 200 (policies loaded, context
/// caches synced).
fn wait_for_ready(service: &mut Service, port: u16, ca: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        service.check_running()?;
        if crate::server_ready(port, ca) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} was not ready within {timeout:?}; its log:\n{}", service.name(), service.log_tail(40));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `service` accepts connections on `port` (it binds once ready).
fn wait_for_port(service: &mut Service, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        service.check_running()?;
        if TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not listen on port {port} within {timeout:?}; its log:\n{}",
                service.name(),
                service.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
