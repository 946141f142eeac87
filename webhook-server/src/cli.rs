//! Command line: `serve`, `run` and `check`, and the start-up sequence of the
//! server (config validated and every module loaded before a port is bound).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::context::ContextStore;
use crate::context::watch::ContextSource;
use crate::metrics::Metrics;
use crate::policy::PolicySet;
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
    Serve(ServeArgs),
    /// Evaluate one AdmissionReview file offline and print the response.
    Run(RunArgs),
    /// Load a config and its modules, validate everything, and exit.
    Check {
        /// Policy config file (YAML).
        #[arg(long)]
        config: PathBuf,
    },
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
    /// How often to look for a changed certificate, config or module (seconds).
    #[arg(long, default_value_t = 10.0, env = "PORTCULLIS_RELOAD_INTERVAL")]
    pub reload_interval: f64,
    /// Largest request body accepted (bytes).
    #[arg(long, default_value_t = server::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Most policy instances alive at once; further requests wait for a slot.
    #[arg(long, default_value_t = 128)]
    pub max_instances: u32,
    /// Directory for compiled modules, so restarts skip compilation.
    #[arg(long, env = "PORTCULLIS_MODULE_CACHE")]
    pub module_cache: Option<PathBuf>,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, default_value_t = 20)]
    pub shutdown_grace: u64,
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

/// Loads everything, binds, serves until SIGTERM or Ctrl-C, drains.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let runtime = Arc::new(Runtime::new(&RuntimeOptions {
        max_instances: args.max_instances,
        cache_dir: args.module_cache.clone(),
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
    let policies = PolicySet::load_with_context(&runtime, &config, &context).await?;
    tracing::info!(policies = %policies.names().join(", "), elapsed_ms = started.elapsed().as_millis() as u64, "policies loaded");
    let interval = Duration::from_secs_f64(args.reload_interval.max(0.05));
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
    let mut state = AppState::new(policies, metrics);
    state.max_body_bytes = args.max_body_bytes;
    state.context = context;
    let state = Arc::new(state);
    tokio::spawn(ConfigWatcher::new(&args.config, runtime.clone(), state.clone(), watches).watch(interval));

    let listener = tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr()?, "serving on {scheme}://{}", listener.local_addr()?);
    let ready = state.clone();
    let shutdown = async move {
        shutdown_signal().await;
        ready.ready.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
    };
    server::serve(listener, server::app(state), tls, shutdown, Duration::from_secs(args.shutdown_grace)).await;
    Ok(())
}

/// Loads a config and its modules and validates every policy's settings.
pub async fn check(config: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let config = Config::load(config)?;
    let runtime = Arc::new(Runtime::new(&RuntimeOptions { max_instances: 4, cache_dir: None })?);
    let set = PolicySet::load(&runtime, &config).await?;
    Ok(set.names().into_iter().map(str::to_owned).collect())
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
