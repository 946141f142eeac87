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
    /// Check that the pods matching a selector run with the chart's security
    /// settings (non-root, read-only root filesystem, no privilege escalation,
    /// no capabilities, not privileged), as the API server stored them.
    PodSecurity {
        /// Namespace of the pods.
        #[arg(long)]
        namespace: String,
        /// Label selector.
        #[arg(long)]
        selector: String,
        /// How many pods must match.
        #[arg(long)]
        expect: usize,
    },
    /// Delete one pod matching a selector (the oldest) and print its name.
    DeleteOnePod {
        /// Namespace of the pods.
        #[arg(long)]
        namespace: String,
        /// Label selector.
        #[arg(long)]
        selector: String,
    },
    /// A steady stream of admission requests: server-side dry-run creates of
    /// an Ingress that must be admitted and one that must be denied, in turn,
    /// at a fixed rate; counts what failed or was decided wrongly.
    Load {
        /// Namespace for the Ingresses (created if missing).
        #[arg(long)]
        namespace: String,
        /// Requests per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Seconds to run.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// AdmissionReview (or object) file whose object must be admitted.
        #[arg(long)]
        allowed: PathBuf,
        /// AdmissionReview (or object) file whose object must be denied.
        #[arg(long)]
        denied: PathBuf,
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
        Command::PodSecurity { namespace, selector, expect } => {
            let pods = cluster.list_in("v1", "Pod", &namespace, &selector).await?;
            if pods.len() != expect {
                bail!("{} pods match {selector:?} in {namespace}; expected {expect}", pods.len());
            }
            for pod in &pods {
                check_pod_security(pod)?;
            }
            println!(
                "{expect} pods run non-root with a read-only root filesystem, no privilege escalation, no capabilities"
            );
        }
        Command::DeleteOnePod { namespace, selector } => {
            let mut pods = cluster.list_in("v1", "Pod", &namespace, &selector).await?;
            pods.sort_by_key(|p| p.pointer("/metadata/creationTimestamp").and_then(|t| t.as_str()).map(str::to_owned));
            let pod = pods.first().with_context(|| format!("no pod matches {selector:?} in {namespace}"))?;
            let name = pod.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default().to_owned();
            cluster.delete(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}), &namespace).await?;
            println!("{name}");
        }
        Command::Load { namespace, rate, seconds, allowed, denied } => {
            ensure_namespace(&cluster, &namespace).await?;
            let outcome = load(&cluster, &namespace, rate, Duration::from_secs(seconds), &allowed, &denied).await?;
            println!("{outcome}");
            if outcome.failed + outcome.wrong > 0 {
                bail!("{} requests failed and {} were decided wrongly", outcome.failed, outcome.wrong);
            }
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

fn check_pod_security(pod: &serde_json::Value) -> anyhow::Result<()> {
    let name = pod.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("?");
    let pod_ctx = pod.pointer("/spec/securityContext").cloned().unwrap_or_default();
    let containers = pod.pointer("/spec/containers").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    for c in &containers {
        let ctx = c.get("securityContext").cloned().unwrap_or_default();
        let field = |key: &str| ctx.get(key).or_else(|| pod_ctx.get(key)).cloned().unwrap_or_default();
        let user = field("runAsUser").as_u64().unwrap_or(0);
        let problems: Vec<&str> = [
            (field("runAsNonRoot") != json!(true) || user == 0, "may run as root"),
            (ctx.get("readOnlyRootFilesystem") != Some(&json!(true)), "has a writable root filesystem"),
            (ctx.get("allowPrivilegeEscalation") != Some(&json!(false)), "allows privilege escalation"),
            (ctx.get("privileged").is_some_and(|p| p == &json!(true)), "is privileged"),
            (ctx.pointer("/capabilities/drop") != Some(&json!(["ALL"])), "does not drop all capabilities"),
        ]
        .into_iter()
        .filter_map(|(bad, what)| bad.then_some(what))
        .collect();
        if !problems.is_empty() {
            bail!("pod {name}, container {}: {}", c["name"], problems.join(", "));
        }
    }
    Ok(())
}

/// What a load run counted.
struct LoadOutcome {
    sent: u64,
    ok: u64,
    failed: u64,
    wrong: u64,
    failures: Vec<String>,
}

impl std::fmt::Display for LoadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "load: {} requests, {} decided right, {} failed, {} decided wrongly",
            self.sent, self.ok, self.failed, self.wrong
        )?;
        for failure in self.failures.iter().take(5) {
            write!(f, "\n  {failure}")?;
        }
        Ok(())
    }
}

fn object_of(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(value.pointer("/request/object").cloned().unwrap_or(value))
}

async fn load(
    cluster: &Cluster,
    namespace: &str,
    rate: u32,
    duration: Duration,
    allowed: &std::path::Path,
    denied: &std::path::Path,
) -> anyhow::Result<LoadOutcome> {
    let objects = [(object_of(allowed)?, true), (object_of(denied)?, false)];
    let mut outcome = LoadOutcome { sent: 0, ok: 0, failed: 0, wrong: 0, failures: Vec::new() };
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let started = std::time::Instant::now();
    while started.elapsed() < duration {
        ticker.tick().await;
        let (object, admit) = &objects[(outcome.sent % 2) as usize];
        let mut object = object.clone();
        object["metadata"]["name"] = json!(format!("load-{}", outcome.sent));
        object["metadata"]["namespace"] = json!(namespace);
        outcome.sent += 1;
        let at = started.elapsed().as_secs_f64();
        match cluster.send(cluster::Verb::Create, &object, namespace, true).await {
            Ok(r) if r.status == 201 && *admit => outcome.ok += 1,
            // A denial by the policy: 403 (or the code it chose) naming the webhook.
            Ok(r) if !admit && (400..500).contains(&r.status) && r.body.to_string().contains("denied the request") => {
                outcome.ok += 1;
            }
            Ok(r)
                if r.status == 201
                    || ((400..500).contains(&r.status) && r.body.to_string().contains("denied the request")) =>
            {
                outcome.wrong += 1;
                outcome.failures.push(format!("{at:.1}s: wrong decision: {} {}", r.status, r.body));
            }
            Ok(r) => {
                outcome.failed += 1;
                outcome.failures.push(format!("{at:.1}s: {} {}", r.status, r.body));
            }
            Err(e) => {
                outcome.failed += 1;
                outcome.failures.push(format!("{at:.1}s: {e}"));
            }
        }
    }
    Ok(outcome)
}
