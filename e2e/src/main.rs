//! `portcullis-e2e`: the cluster chores of the e2e backends, done through the
//! same kube client as the cases (so neither backend needs `kubectl`): wait
//! for an API server, apply or dry-run rendered manifests, pull the policy
//! config out of a rendered chart, and check that no object of a kind is left.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use e2e::case::ObjectId;
use e2e::cluster::{self, Cluster};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "portcullis-e2e", about = "Cluster chores of the Portcullis e2e backends")]
struct Cli {
    /// Kubeconfig of the cluster.
    #[arg(long, env = cluster::KUBECONFIG_ENV, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait until the API server's /readyz answers ok.
    WaitReady {
        /// Seconds to wait.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Server-side apply every object of multi-document YAML files.
    Apply {
        /// Dry run: the API server validates and admits each object but stores nothing.
        #[arg(long)]
        dry_run: bool,
        /// Skip (and list) objects whose kind the API server does not serve, e.g. CRD kinds.
        #[arg(long)]
        skip_unknown_kinds: bool,
        /// Namespace for namespaced objects that name none; created (for real) if missing.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write the policy config of a rendered chart (its policy ConfigMap's config.yaml).
    PolicyConfig {
        /// Rendered chart (`helm template` output).
        rendered: PathBuf,
        /// Where to write the config.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the webhook-server container's arguments of a rendered chart, one per line.
    ServerArgs {
        /// Rendered chart (`helm template` output).
        rendered: PathBuf,
    },
    /// Print a field of an object (a string as is, anything else as JSON).
    Get {
        /// apiVersion of the kind.
        #[arg(long)]
        api_version: String,
        /// Kind.
        #[arg(long)]
        kind: String,
        /// Namespace (ignored for cluster-scoped kinds).
        #[arg(long, default_value = "default")]
        namespace: String,
        /// JSON Pointer of the field (default: the whole object).
        #[arg(long, default_value = "")]
        pointer: String,
        /// Object name.
        name: String,
    },
    /// Fail if any object of a cluster-scoped kind matches a label selector.
    ExpectNone {
        /// apiVersion of the kind.
        #[arg(long)]
        api_version: String,
        /// Kind.
        #[arg(long)]
        kind: String,
        /// Label selector.
        #[arg(long)]
        selector: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::PolicyConfig { rendered, out } => return policy_config(rendered, out),
        Command::ServerArgs { rendered } => return server_args(rendered),
        _ => {}
    }
    let path = cli.kubeconfig.context("no kubeconfig: pass --kubeconfig or set PORTCULLIS_E2E_KUBECONFIG")?;
    let cluster = Cluster::from_kubeconfig(&path).await?;
    match cli.command {
        Command::WaitReady { timeout } => {
            cluster.wait_ready(Duration::from_secs(timeout)).await?;
            println!("the API server is ready");
        }
        Command::Apply { dry_run, skip_unknown_kinds, namespace, files } => {
            apply(&cluster, dry_run, skip_unknown_kinds, &namespace, &files).await?;
        }
        Command::ExpectNone { api_version, kind, selector } => {
            let names = cluster.list_names(&api_version, &kind, &selector).await?;
            if !names.is_empty() {
                bail!("{kind} objects matching {selector:?} are left: {}", names.join(", "));
            }
            println!("no {kind} matches {selector:?}");
        }
        Command::Get { api_version, kind, namespace, pointer, name } => {
            let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
            let object = cluster.get(&probe, &namespace).await?;
            let field = object.pointer(&pointer).with_context(|| format!("{kind} {name} has no {pointer}"))?;
            match field.as_str() {
                Some(s) => println!("{s}"),
                None => println!("{field}"),
            }
        }
        Command::PolicyConfig { .. } | Command::ServerArgs { .. } => {}
    }
    Ok(())
}

fn read_rendered(rendered: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(rendered).with_context(|| format!("reading {}", rendered.display()))?;
    e2e::manifests::parse(&text).with_context(|| format!("parsing {}", rendered.display()))
}

fn server_args(rendered: &std::path::Path) -> anyhow::Result<()> {
    let objects = read_rendered(rendered)?;
    let args = e2e::manifests::server_args(&objects)
        .with_context(|| format!("{} has no Deployment with a webhook-server container", rendered.display()))?;
    for arg in args {
        println!("{arg}");
    }
    Ok(())
}

fn policy_config(rendered: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let objects = read_rendered(rendered)?;
    let config = e2e::manifests::policy_config(&objects)
        .with_context(|| format!("{} has no policy ConfigMap with a config.yaml", rendered.display()))?;
    std::fs::write(out, config).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

async fn apply(
    cluster: &Cluster,
    dry_run: bool,
    skip_unknown_kinds: bool,
    namespace: &str,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    ensure_namespace(cluster, namespace).await?;
    let verb = if dry_run { "accepted (dry run)" } else { "applied" };
    let (mut done, mut skipped) = (0, Vec::new());
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let objects = e2e::manifests::parse(&text).with_context(|| format!("parsing {}", file.display()))?;
        for object in &objects {
            let id = ObjectId::of(object);
            match cluster.apply(object, namespace, dry_run).await {
                Ok(_) => {
                    println!("{}: {id} {verb}", file.display());
                    done += 1;
                }
                Err(cluster::Error::UnknownKind { .. }) if skip_unknown_kinds => {
                    println!(
                        "{}: {id} skipped: the API server serves no {} {}",
                        file.display(),
                        id.api_version,
                        id.kind
                    );
                    skipped.push(format!("{} {}", id.api_version, id.kind));
                }
                Err(e) => return Err(e).with_context(|| format!("{}: {id} was refused", file.display())),
            }
        }
    }
    skipped.sort();
    skipped.dedup();
    println!(
        "{done} objects {verb}{}",
        if skipped.is_empty() {
            String::new()
        } else {
            format!("; skipped kinds without a CRD here: {}", skipped.join(", "))
        }
    );
    Ok(())
}

async fn ensure_namespace(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    if cluster.get(&namespace, "").await.is_ok() {
        return Ok(());
    }
    cluster.create(&namespace, "").await?;
    Ok(())
}
