//! Command line: `serve`, `run` and `check`, and the start-up sequence of the
//! server (config validated and every module loaded before a port is bound).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Budget, Config};
use crate::context::ContextStore;
use crate::context::watch::ContextSource;
use crate::metrics::Metrics;
use crate::oci::RegistryOptions;
use crate::policy::{PolicySet, Sources};
use crate::reload::ConfigWatcher;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::server::{self, AppState};
use crate::tls::{self, CertificateStore};

/// Kubernetes admission webhooks enforced by sandboxed WebAssembly policies.
#[derive(Debug, Parser)]
#[command(name = "webhook-server", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "PORTCULLIS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the policies of a config over HTTPS.
    Serve(Box<ServeArgs>),
    /// Evaluate one AdmissionReview file offline and print the response.
    Run(RunArgs),
    /// Load a config and its modules, validate everything, and exit.
    Check {
        /// Policy config file (YAML).
        #[arg(long)]
        config: PathBuf,
        /// Registry options for `oci://` modules.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Run case files against a module: one line per case, then `N passed, M failed`.
    Test(TestArgs),
    /// Measure one module's evaluation latency on one request (fresh instance per run, as served).
    Bench(BenchArgs),
    /// Publish a module to an OCI registry; prints its pinned `oci://…@sha256:…` reference last.
    Push(PushArgs),
    /// Compile modules ahead of time into a directory for `serve
    /// --precompiled` (as the image build does for the built-in policies);
    /// prints each file written.
    Precompile {
        /// Directory to write the compiled modules to.
        #[arg(long)]
        output: PathBuf,
        /// Wasm modules (checked against the ABI first).
        #[arg(required = true)]
        modules: Vec<PathBuf>,
    },
    /// Internal: compile the wasm module on stdin into a file (`serve`
    /// compiles in this child process so that the compiler's memory is not kept).
    #[command(hide = true)]
    CompileModule {
        /// The server's `--max-instances` (part of the engine configuration).
        #[arg(long)]
        max_instances: u32,
        /// Where to write the compiled artifact (atomically).
        #[arg(long)]
        output: PathBuf,
    },
}

/// `webhook-server compile-module`: see [`Command::CompileModule`].
pub fn compile_module(max_instances: u32, output: &Path) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut wasm = Vec::new();
    std::io::stdin().read_to_end(&mut wasm)?;
    let artifact = crate::runtime::compile_artifact(max_instances, &wasm)?;
    crate::runtime::write_atomically(output, &artifact).with_context(|| format!("writing {}", output.display()))
}

/// `webhook-server precompile`: see [`Command::Precompile`]. Returns the
/// files written, one per module.
pub fn precompile(output: &Path, modules: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    // Each artifact is loaded back from `output` to check it: compiled once.
    let runtime = Runtime::new(&RuntimeOptions {
        max_instances: 1,
        precompiled: Some(output.to_path_buf()),
        ..RuntimeOptions::default()
    })?;
    let mut written = Vec::new();
    for module in modules {
        let context = || format!("module {}", module.display());
        let wasm = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
        let file = runtime.precompile_into(output, &wasm).with_context(context)?;
        let name = crate::cases::name_for(&module.to_string_lossy());
        let limits = crate::config::PolicyConfig::for_tests(&name)?.limits();
        // What would not load when served is not shipped.
        if let Err(e) = runtime.load(&name, &wasm, limits) {
            let _ = std::fs::remove_file(&file);
            return Err(anyhow::Error::from(e).context(context()));
        }
        written.push(file);
    }
    Ok(written)
}

/// How `oci://` modules are fetched (and pushed).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// PEM CA certificate(s) to trust for registries, besides the system roots.
    #[arg(long, env = "PORTCULLIS_REGISTRY_CA")]
    pub registry_ca: Option<PathBuf>,
    /// Docker `config.json` holding registry credentials (`auths`), e.g. a
    /// mounted `kubernetes.io/dockerconfigjson` Secret. Default: anonymous.
    #[arg(long, env = "PORTCULLIS_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
}

impl RegistryArgs {
    /// Module sources with these options, `oci://` modules cached in `cache`.
    pub fn sources(&self, cache: Option<PathBuf>, metrics: Option<Arc<Metrics>>) -> anyhow::Result<Sources> {
        let options = RegistryOptions { ca: self.registry_ca.clone(), auth: self.registry_auth.clone(), cache };
        let sources = Sources::new(options, metrics);
        if self.registry_ca.is_some() || self.registry_auth.is_some() {
            sources.connect()?;
        }
        Ok(sources)
    }
}

/// `push` options.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The `.wasm` file to publish (checked first: it must load as a policy module).
    pub file: PathBuf,
    /// Where: `oci://HOST[:PORT]/REPO:TAG`.
    #[arg(value_name = "oci://HOST[:PORT]/REPO:TAG")]
    pub target: String,
    /// Registry options.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `test` options.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The module: a `.wasm` file or a pinned `oci://HOST/REPO@sha256:…` reference.
    #[arg(long)]
    pub module: String,
    /// Registry options for an `oci://` module.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Grant only this kind to the module's lookups, as `apiVersion/Kind`
    /// (e.g. `apps/v1/Deployment`; repeatable). Default: any kind, each
    /// case's context file holding the objects.
    #[arg(long = "grant", value_name = "APIVERSION/KIND", value_parser = grant)]
    pub grants: Vec<crate::context::Kind>,
    /// Case files (YAML lists of cases; the files they name are relative to them).
    #[arg(required = true, value_name = "CASES.yaml")]
    pub cases: Vec<PathBuf>,
}

/// `bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The module: a `.wasm` file or a pinned `oci://HOST/REPO@sha256:…` reference.
    #[arg(long)]
    pub module: String,
    /// Registry options for an `oci://` module.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// AdmissionReview JSON file to evaluate.
    #[arg(long)]
    pub request: PathBuf,
    /// The policy's settings (a YAML or JSON mapping; default `{}`).
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// Objects the lookups are answered from (YAML documents or a `kind: List`).
    #[arg(long)]
    pub context: Option<PathBuf>,
    /// Measured runs (after a warm-up of a tenth of them, at least 10).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub iterations: u32,
}

/// `apiVersion/Kind`, split at the last `/`.
fn grant(text: &str) -> Result<crate::context::Kind, String> {
    match text.rsplit_once('/') {
        Some((api_version, kind)) if !api_version.is_empty() && !kind.is_empty() => {
            Ok(crate::context::Kind::new(api_version, kind))
        }
        _ => Err(format!("{text:?} is not apiVersion/Kind, such as apps/v1/Deployment or v1/Pod")),
    }
}

/// `serve` options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Policy config file (YAML).
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443", env = "PORTCULLIS_ADDR")]
    pub addr: SocketAddr,
    /// PEM certificate chain. Without it (and --tls-key) the server speaks plain HTTP, for local testing only.
    #[arg(long, requires = "tls_key", env = "PORTCULLIS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, requires = "tls_cert", env = "PORTCULLIS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when given, clients must present a certificate it signed.
    #[arg(long, requires = "tls_cert", env = "PORTCULLIS_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// How often to look for a changed certificate, config or module (seconds, 0.05–86400).
    #[arg(long, default_value_t = 10.0, env = "PORTCULLIS_RELOAD_INTERVAL", value_parser = reload_interval)]
    pub reload_interval: f64,
    /// Largest request body accepted (bytes).
    #[arg(long, default_value_t = server::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Instances in the sandbox pool: every policy's `maxConcurrent` together
    /// must fit (checked at load).
    #[arg(long, default_value_t = 128)]
    pub max_instances: u32,
    /// Guest memory the policies may use at once, in MiB: the sum over
    /// policies of `maxConcurrent` × `memoryLimitMiB` must fit (checked at
    /// load). Set it below the container's memory limit; unset: unchecked.
    #[arg(long, env = "PORTCULLIS_MEMORY_BUDGET_MIB")]
    pub memory_budget_mib: Option<u64>,
    /// Directory for compiled modules and pulled `oci://` modules (by
    /// digest), so restarts skip compilation and need no registry.
    #[arg(long, env = "PORTCULLIS_MODULE_CACHE")]
    pub module_cache: Option<PathBuf>,
    /// Read-only directory of compiled modules written by `webhook-server
    /// precompile` (the image ships the built-in policies' in
    /// `/policies/compiled`), looked in before compiling.
    #[arg(long, env = "PORTCULLIS_PRECOMPILED")]
    pub precompiled: Option<PathBuf>,
    /// Registry options for `oci://` modules.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Seconds to keep serving after SIGTERM while reporting not ready, so
    /// that endpoints (and the API server) move to other pods first. A
    /// second SIGTERM or Ctrl-C cuts it short.
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    pub shutdown_delay: f64,
    /// Seconds to let in-flight requests finish once the listener closes
    /// (after the delay). Delay + grace must stay below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, default_value_t = 20)]
    pub shutdown_grace: u64,
    /// Open connections at most; at the cap, new clients wait in the kernel's backlog.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Admission requests in flight at most; more are answered 503 at once.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// MiB of request bodies held at once; a request that does not fit is answered 503.
    #[arg(long, default_value_t = 128)]
    pub max_buffered_mib: usize,
    /// Seconds a client may take to send a request body.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub body_timeout: f64,
    /// Seconds a client may take to finish the TLS handshake, to start its
    /// first request on a new connection, and to send request headers (HTTP/1).
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub header_timeout: f64,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, default_value_t = 90.0, value_parser = seconds)]
    pub idle_timeout: f64,
    /// Seconds between HTTP/2 keep-alive pings; a peer that does not answer within 10 s is dropped.
    #[arg(long, default_value_t = 20.0, value_parser = seconds)]
    pub http2_keepalive: f64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Kubeconfig for the context caches of context-aware policies (default:
    /// `KUBECONFIG`, `~/.kube/config`, or the in-cluster service account).
    /// A config that grants no policy any `context:` never contacts a cluster.
    #[arg(long, env = "PORTCULLIS_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Answer lookups from this file of objects (YAML documents or a `kind:
    /// List`) instead of watching a cluster: for local experiments.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub context: Option<PathBuf>,
}

/// `run` options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Policy config file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// Name of the policy to run.
    #[arg(long)]
    pub policy: String,
    /// AdmissionReview JSON file.
    #[arg(long)]
    pub request: PathBuf,
    /// Objects that the policy's lookups are answered from: YAML documents
    /// or a `kind: List` (what `kubectl get hpa,deploy -o yaml` prints).
    #[arg(long)]
    pub context: Option<PathBuf>,
    /// Registry options for `oci://` modules.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// A number of seconds: finite, 0..=86400.
fn seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{text:?} is not a number of seconds: {e}"))?;
    if !value.is_finite() || !(0.0..=86_400.0).contains(&value) {
        return Err(format!("{text} is not a number of seconds between 0 and 86400"));
    }
    Ok(value)
}

/// A reload interval: finite, 0.05..=86400 seconds.
fn reload_interval(text: &str) -> Result<f64, String> {
    let value = seconds(text)?;
    if value < 0.05 {
        return Err(format!("{text} is below the shortest reload interval, 0.05 seconds"));
    }
    Ok(value)
}

impl ServeArgs {
    /// What the listener allows its clients.
    pub fn listener_limits(&self) -> server::ListenerLimits {
        server::ListenerLimits {
            max_connections: self.max_connections.max(1),
            handshake_timeout: Duration::from_secs_f64(self.header_timeout),
            header_timeout: Duration::from_secs_f64(self.header_timeout),
            idle_timeout: Duration::from_secs_f64(self.idle_timeout),
            keep_alive_interval: Duration::from_secs_f64(self.http2_keepalive),
            ..server::ListenerLimits::default()
        }
    }

    /// What admission requests may hold.
    pub fn request_limits(&self) -> server::RequestLimits {
        server::RequestLimits {
            max_body_bytes: self.max_body_bytes,
            max_in_flight: self.max_in_flight.max(1),
            max_buffered_bytes: self.max_buffered_mib.saturating_mul(1 << 20).max(self.max_body_bytes),
            body_timeout: Duration::from_secs_f64(self.body_timeout),
        }
    }

    /// What the policies together may spend.
    pub fn budget(&self) -> Budget {
        Budget { max_instances: self.max_instances.max(1), memory_mib: self.memory_budget_mib }
    }
}

/// Sets up logging on stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// How often `serve` looks whether a burst of requests is over, to give
/// the memory it freed back to the system ([`crate::memory`]).
const TRIM_PERIOD: Duration = Duration::from_secs(5);

/// Loads everything, binds, serves until SIGTERM or Ctrl-C, drains.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    config.check_budget(args.budget()).with_context(|| format!("config {}", args.config.display()))?;
    let runtime = Arc::new(Runtime::new(&RuntimeOptions {
        max_instances: args.max_instances,
        cache_dir: args.module_cache.clone(),
        // Compile in a child process (this binary) so the compiler's memory
        // is returned when it exits; in process if the binary is not found.
        compiler: std::env::current_exe().ok(),
        precompiled: args.precompiled.clone(),
    })?);
    let metrics = Arc::new(Metrics::new());
    let context = Arc::new(ContextStore::new(Some(metrics.clone())));
    let watches = match &args.context {
        Some(file) => {
            let objects = context.fill_from_file(file, &config.granted_kinds()).map_err(|e| anyhow::anyhow!(e))?;
            tracing::info!(objects, file = %file.display(), "context objects loaded; no cluster is watched");
            Arc::new(ContextSource::offline(context.clone()))
        }
        None => Arc::new(ContextSource::new(args.kubeconfig.clone(), context.clone())),
    };
    // Watches start now; `/readyz` answers 503, naming the kinds, until each has listed once.
    watches.watch(&config.granted_kinds()).await?;
    let started = std::time::Instant::now();
    let sources = args.registry.sources(args.module_cache.clone(), Some(metrics.clone()))?;
    // A module that cannot be pulled does not stop the start: the server
    // comes up not ready, says why on `/readyz`, and retries at every poll.
    let (policies, load_error) = match PolicySet::load_from(&runtime, &config, &context, &sources).await {
        Ok(set) => {
            tracing::info!(policies = %set.names().join(", "), elapsed_ms = started.elapsed().as_millis() as u64, "policies loaded");
            (set, None)
        }
        Err(e) if e.is_pull() => {
            let error = format!("{:#}", anyhow::Error::from(e));
            tracing::error!(
                error,
                "policies not loaded: a module could not be pulled; not ready, retrying every {}s",
                args.reload_interval
            );
            (PolicySet::default(), Some(error))
        }
        Err(e) => return Err(e.into()),
    };
    let interval = Duration::from_secs_f64(args.reload_interval);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let store = Arc::new(CertificateStore::load(cert, key).with_context(|| "loading the serving certificate")?);
            let config = tls::server_config(store.clone(), args.client_ca.as_deref())?;
            let metrics = metrics.clone();
            tokio::spawn(store.watch(interval, move |r| metrics.reload("certificate", r.is_ok())));
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
        _ => {
            tracing::warn!(
                "no --tls-cert/--tls-key: serving plain HTTP, which the API server will not call; for local testing only"
            );
            None
        }
    };
    let mut state = AppState::with_limits(policies, metrics, args.request_limits());
    state.context = context;
    state.runtime = Some(runtime.clone());
    state.require_client_cert = args.client_ca.is_some();
    state.set_load_error(load_error);
    let state = Arc::new(state);
    let watcher = ConfigWatcher::new(&args.config, runtime.clone(), state.clone(), watches, args.budget())
        .await
        .with_sources(sources);
    tokio::spawn(watcher.watch(interval));
    // Memory a burst of connections freed goes back to the system once it is over.
    tokio::spawn(crate::memory::release_after_bursts(state.clone(), TRIM_PERIOD, crate::memory::trim));

    let listener = tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr()?, "serving on {scheme}://{}", listener.local_addr()?);
    let delay = Duration::from_secs_f64(args.shutdown_delay);
    let shutdown = server::shutdown_sequence(state.clone(), shutdown_signal(), shutdown_signal(), delay);
    let grace = Duration::from_secs(args.shutdown_grace);
    server::serve(listener, server::app(state), tls, args.listener_limits(), shutdown, grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// Loads a config and its modules and validates every policy's settings.
pub async fn check(config: &std::path::Path, registry: &RegistryArgs) -> anyhow::Result<Vec<String>> {
    let config = Config::load(config)?;
    let runtime = Arc::new(Runtime::new(&RuntimeOptions { max_instances: 4, ..RuntimeOptions::default() })?);
    let sources = registry.sources(None, None)?;
    let set = PolicySet::load_from(&runtime, &config, &Arc::new(ContextStore::default()), &sources).await?;
    Ok(set.names().into_iter().map(str::to_owned).collect())
}

/// Reads a module for `test` and `bench`: a file or a pinned `oci://` reference.
async fn read_module(module: &str, registry: &RegistryArgs) -> anyhow::Result<Vec<u8>> {
    let source = crate::config::ModuleSource::parse(module).map_err(|e| anyhow::anyhow!("--module {module}: {e}"))?;
    let name = crate::cases::name_for(module);
    Ok(registry.sources(None, None)?.fetch(&name, &source).await?)
}

/// Publishes a module (after checking it loads) and prints its pinned reference.
pub async fn push(args: &PushArgs) -> anyhow::Result<()> {
    let target: crate::oci::PushTarget = args.target.parse()?;
    let wasm = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let name = crate::cases::name_for(&args.file.to_string_lossy());
    let runtime = Runtime::new(&RuntimeOptions { max_instances: 1, ..RuntimeOptions::default() })?;
    let limits = crate::config::PolicyConfig::for_tests(&name)?.limits();
    runtime
        .load(&name, &wasm, limits)
        .map_err(|e| anyhow::anyhow!("{} is not a policy module this server would load: {e}", args.file.display()))?;
    let options = RegistryOptions {
        ca: args.registry.registry_ca.clone(),
        auth: args.registry.registry_auth.clone(),
        cache: None,
    };
    let registry = crate::oci::Registry::new(&options)?;
    let pinned = registry.push(&wasm, &target).await?;
    eprintln!("pushed {} ({} bytes) to {target}", args.file.display(), wasm.len());
    println!("{pinned}");
    Ok(())
}

/// Runs case files against a module, printing one line per case; returns
/// the counts of passed and failed cases.
pub async fn test(args: &TestArgs) -> anyhow::Result<(usize, usize)> {
    let wasm = read_module(&args.module, &args.registry).await?;
    let runtime = Runtime::new(&RuntimeOptions { max_instances: 4, ..RuntimeOptions::default() })?;
    let name = crate::cases::name_for(&args.module);
    let mut runner = crate::cases::CaseRunner::new(&runtime, &name, &wasm)?;
    if !args.grants.is_empty() {
        runner = runner.granting(args.grants.clone());
    }
    let (mut passed, mut failed) = (0, 0);
    for file in &args.cases {
        match runner.run_file(file).await {
            Ok(reports) => {
                for report in reports {
                    println!("{}", report.line());
                    if report.failure.is_some() {
                        failed += 1;
                    } else {
                        passed += 1;
                    }
                }
            }
            Err(e) => {
                println!("FAIL {}\n     {e}", file.display());
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok((passed, failed))
}

/// Measures one module on one request and prints the percentiles.
pub async fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let wasm = read_module(&args.module, &args.registry).await?;
    let name = crate::cases::name_for(&args.module);
    let mut config = crate::config::PolicyConfig::for_tests(&name)?;
    if let Some(file) = &args.settings {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading settings {}", file.display()))?;
        let settings: serde_json::Value =
            serde_yaml::from_str(&text).with_context(|| format!("settings {} is not YAML", file.display()))?;
        if !settings.is_object() && !settings.is_null() {
            anyhow::bail!("settings {} must be a mapping", file.display());
        }
        if settings.is_object() {
            config.settings = settings;
        }
    }
    config.context = vec![crate::context::Kind::any()];
    let store = Arc::new(ContextStore::default());
    if let Some(file) = &args.context {
        store.fill_from_file(file, &[]).map_err(|e| anyhow::anyhow!(e))?;
    }
    let runtime = Runtime::new(&RuntimeOptions { max_instances: 4, ..RuntimeOptions::default() })?;
    let module =
        runtime.load(&name, &wasm, config.limits()).map_err(|e| anyhow::anyhow!("module {name} was refused: {e}"))?;
    let sha256 = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&wasm))
    };
    let policy = crate::policy::Policy::prepare(config, sha256, module, &store).await?;
    let body = std::fs::read(&args.request).with_context(|| format!("reading {}", args.request.display()))?;
    let iterations = args.iterations as usize;
    let warmup = (iterations / 10).max(10);
    let report = crate::offline::bench(&policy, &body, warmup, iterations).await?;
    println!(
        "{name} on {} ({} bytes): {} runs after {} warm-up, one at a time, fresh instance each",
        args.request.display(),
        body.len(),
        report.iterations,
        report.warmup
    );
    println!("verdict: {}", report.verdict);
    println!("{:>10} {:>10} {:>10} {:>10}", "p50 µs", "p90 µs", "p99 µs", "max µs");
    println!("{:>10.1} {:>10.1} {:>10.1} {:>10.1}", report.p50_us, report.p90_us, report.p99_us, report.max_us);
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
