//! Portcullis policy `hpa-resource-requests` (validating, context-aware):
//! a HorizontalPodAutoscaler that scales on resource utilization divides by
//! the pods' requests, and when a container lacks one the autoscaler
//! silently stops (`FailedGetResourceMetric: missing request for cpu`, hours
//! later, under load). This policy catches it at admission, from whichever
//! side is applied first:
//!
//! - an **HPA** ([`autoscaler`]) whose scale target (looked up) lacks the
//!   requests its metrics need, or cannot be scaled, or breaks the bounds of
//!   the settings;
//! - a **workload** (Deployment, StatefulSet, ReplicaSet,
//!   ReplicationController) whose pod template lacks what an HPA targeting it
//!   (looked up) needs;
//! - a **Pod** (CREATE, `checkPods`), reached through its owners, whose final
//!   containers lack it — a sidecar injected by another webhook, say;
//! - and, in `strict` namespaces, any workload or Pod without the listed
//!   requests, HPA or not.
//!
//! The semantics follow the HPA controller: see [`pods`] for which
//! containers count and when a limit stands in for a request. The README
//! next to `Cargo.toml` is the user's reference.

pub mod autoscaler;
pub mod pods;
pub mod settings;

use k8s_openapi::api::autoscaling::{v1, v2};
use portcullis_sdk::lookup::{Query, lookup, lookup_as};
use portcullis_sdk::{Operation, Request, Verdict};
use serde::Deserialize;

use crate::autoscaler::{Autoscaler, Scalability};
use crate::pods::{Missing, PodSpec, Source};
pub use crate::settings::Settings;

/// What the autoscaler does when a request is missing, for messages.
const CONSEQUENCE: &str = "without it the autoscaler cannot compute utilization and stops scaling \
                           (FailedGetResourceMetric: missing request)";

/// The version HPAs are looked up in (the config must grant `autoscaling/v2 HorizontalPodAutoscaler`).
pub const HPA_API_VERSION: &str = "autoscaling/v2";

/// Decides on one admission request.
pub fn validate(req: &Request, settings: &Settings) -> Result<Verdict, String> {
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Ok(Verdict::allow());
    }
    let write = matches!(req.operation, Operation::Create | Operation::Update);
    let k = &req.kind;
    if write && k.group == "autoscaling" && k.kind == "HorizontalPodAutoscaler" {
        review_autoscaler(req, settings)
    } else if write
        && ((k.group == "apps" && matches!(k.kind.as_str(), "Deployment" | "StatefulSet" | "ReplicaSet"))
            || (k.group.is_empty() && k.kind == "ReplicationController"))
    {
        review_workload(req, settings)
    } else if req.operation == Operation::Create && k.group.is_empty() && k.kind == "Pod" {
        review_pod(req, settings)
    } else {
        Ok(Verdict::allow())
    }
}

portcullis_sdk::policy!(settings = Settings, validate = validate);

/// Metadata fields the rules read.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
    #[serde(default)]
    deletion_timestamp: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct OwnerReference {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    controller: Option<bool>,
}

impl Meta {
    fn controller(&self) -> Option<&OwnerReference> {
        self.owner_references.as_deref()?.iter().find(|o| o.controller == Some(true))
    }

    fn display(&self, req: &Request) -> String {
        let namespace = self.namespace.as_deref().or(req.namespace.as_deref()).unwrap_or_default();
        let name = self
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| req.name.clone().filter(|n| !n.is_empty()))
            .or_else(|| self.generate_name.as_ref().map(|g| format!("{g}*")))
            .unwrap_or_default();
        format!("{:?}", format!("{namespace}/{name}"))
    }
}

/// A workload: its metadata and pod template.
#[derive(Debug, Default, Deserialize)]
struct Workload {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Option<WorkloadSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct WorkloadSpec {
    #[serde(default)]
    template: Option<Template>,
}

#[derive(Debug, Default, Deserialize)]
struct Template {
    #[serde(default)]
    spec: Option<PodSpec>,
}

impl Workload {
    fn pod_spec(&self) -> PodSpec {
        self.spec.as_ref().and_then(|s| s.template.as_ref()).and_then(|t| t.spec.clone()).unwrap_or_default()
    }
}

/// A Pod: its metadata and spec.
#[derive(Debug, Default, Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Option<PodSpec>,
}

fn decode<T: serde::de::DeserializeOwned>(req: &Request, what: &str) -> Result<T, String> {
    req.object::<T>()
        .map_err(|e| format!("cannot decode the object as a {what}: {e}"))?
        .ok_or_else(|| "the request has no object to check".to_string())
}

// ---- HPAs ----

fn review_autoscaler(req: &Request, settings: &Settings) -> Result<Verdict, String> {
    let hpa = match req.kind.version.as_str() {
        "v1" => {
            Autoscaler::from_v1(decode::<v1::HorizontalPodAutoscaler>(req, "autoscaling/v1 HorizontalPodAutoscaler")?)
        }
        _ => Autoscaler::from_v2(decode::<v2::HorizontalPodAutoscaler>(req, "autoscaling/v2 HorizontalPodAutoscaler")?),
    };
    let mut hpa = hpa;
    if hpa.namespace.is_empty() {
        hpa.namespace = req.namespace.clone().unwrap_or_default();
    }
    let mut problems = bounds(&hpa, settings);
    let mut warnings = Vec::new();
    let target = &hpa.target;
    let what = format!("{} {:?}", target.kind, target.name);
    match target.scalability() {
        Scalability::NotScalable => problems.push(format!(
            "spec.scaleTargetRef is {what}, which an autoscaler cannot scale (it has no scale subresource; \
             HPAs scale Deployments, StatefulSets, ReplicaSets, ReplicationControllers and custom resources with one)"
        )),
        Scalability::Custom => warnings.push(format!(
            "spec.scaleTargetRef is {what} ({}), a custom resource: its pods' requests are not checked",
            target.api_version
        )),
        Scalability::Workload(api_version) => {
            let found: Vec<Workload> =
                lookup_as(&Query::new(api_version, &target.kind).namespace(&hpa.namespace).name(&target.name))
                    .map_err(|e| e.to_string())?;
            match found.first() {
                None => warnings.push(format!(
                    "the scale target {what} does not exist yet; its requests are checked when it is created"
                )),
                Some(workload) => {
                    for m in workload.pod_spec().missing(&hpa.needs, Source::Template) {
                        problems.push(format!(
                            "it scales {what} on {}, but in its pod template {}: {CONSEQUENCE} for {}",
                            hpa.scales_on(),
                            m.describe(Source::Template),
                            m.resource()
                        ));
                    }
                }
            }
        }
    }
    let summary = format!("HorizontalPodAutoscaler {} cannot work as written", hpa.display());
    Ok(Verdict::deny_all(&summary, &problems).with_warnings(warnings))
}

/// The bounds of the settings that `hpa` breaks.
fn bounds(hpa: &Autoscaler, settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(min) = settings.min_replicas_at_least.filter(|m| hpa.min_replicas < *m) {
        problems.push(format!("spec.minReplicas is {}; this cluster requires at least {min}", hpa.min_replicas));
    }
    if let Some(max) = settings.max_replicas_at_most.filter(|m| hpa.max_replicas > *m) {
        problems.push(format!("spec.maxReplicas is {}; this cluster allows at most {max}", hpa.max_replicas));
    }
    if let Some(min) = settings.min_scale_down_stabilization_seconds.filter(|m| hpa.scale_down_window < *m) {
        problems.push(format!(
            "spec.behavior.scaleDown.stabilizationWindowSeconds is {}; this cluster requires at least {min}",
            hpa.scale_down_window
        ));
    }
    problems
}

// ---- Workloads ----

fn review_workload(req: &Request, settings: &Settings) -> Result<Verdict, String> {
    let kind = req.kind.kind.clone();
    let workload: Workload = decode(req, &kind)?;
    if workload.metadata.deletion_timestamp.is_some() {
        return Ok(Verdict::allow());
    }
    let namespace = workload.metadata.namespace.clone().or_else(|| req.namespace.clone()).unwrap_or_default();
    let name = workload.metadata.name.clone().or_else(|| req.name.clone()).unwrap_or_default();
    let spec = workload.pod_spec();
    let mut problems = strict(settings, &namespace, &spec, Source::Template);
    if !name.is_empty() {
        for hpa in autoscalers_of(&namespace, &kind, &name)? {
            for m in spec.missing(&hpa.needs, Source::Template) {
                problems.push(format!(
                    "HorizontalPodAutoscaler {:?} scales it on {}, but {}: {CONSEQUENCE} for {}",
                    hpa.name,
                    hpa.scales_on(),
                    m.describe(Source::Template),
                    m.resource()
                ));
            }
        }
    }
    let summary = format!("{kind} {} lacks resource requests", workload.metadata.display(req));
    Ok(Verdict::deny_all(&summary, &problems))
}

/// The HPAs of `namespace` whose target is `kind` `name`.
fn autoscalers_of(namespace: &str, kind: &str, name: &str) -> Result<Vec<Autoscaler>, String> {
    let found: Vec<v2::HorizontalPodAutoscaler> = lookup_as(
        &Query::new(HPA_API_VERSION, "HorizontalPodAutoscaler")
            .namespace(namespace)
            .field("/spec/scaleTargetRef/kind", kind)
            .field("/spec/scaleTargetRef/name", name),
    )
    .map_err(|e| e.to_string())?;
    Ok(found.into_iter().map(Autoscaler::from_v2).filter(|h| h.target.scalability() != Scalability::Custom).collect())
}

// ---- Pods ----

fn review_pod(req: &Request, settings: &Settings) -> Result<Verdict, String> {
    let pod: Pod = decode(req, "Pod")?;
    let namespace = pod.metadata.namespace.clone().or_else(|| req.namespace.clone()).unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut problems = strict(settings, &namespace, &spec, Source::Pod);
    if settings.check_pods {
        for (owner, via) in owners(&pod.metadata, &namespace)? {
            for hpa in autoscalers_of(&namespace, &owner.kind, &owner.name)? {
                for m in spec.missing(&hpa.needs, Source::Pod) {
                    problems.push(format!(
                        "it belongs to {} {:?}{via}, which HorizontalPodAutoscaler {:?} scales on {}, but {}: {CONSEQUENCE} \
                         for {} (was the container added by another webhook?)",
                        owner.kind,
                        owner.name,
                        hpa.name,
                        hpa.scales_on(),
                        m.describe(Source::Pod),
                        m.resource()
                    ));
                }
            }
        }
    }
    let summary = format!("Pod {} lacks resource requests", pod.metadata.display(req));
    Ok(Verdict::deny_all(&summary, &problems))
}

/// A scalable owner of a pod.
#[derive(Debug, Clone)]
struct Owner {
    kind: String,
    name: String,
}

/// The pod's scalable owners, with how each was reached for messages:
/// its controller (ReplicaSet, StatefulSet, ReplicationController) and, for
/// a ReplicaSet, the Deployment that controls it. A ReplicaSet not cached
/// yet (pods follow their ReplicaSet within milliseconds) is recognised by
/// the pod's `pod-template-hash` label, which suffixes a Deployment's
/// ReplicaSet names.
fn owners(meta: &Meta, namespace: &str) -> Result<Vec<(Owner, String)>, String> {
    let Some(controller) = meta.controller() else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    match controller.kind.as_str() {
        "ReplicaSet" => {
            let rs = Owner { kind: "ReplicaSet".into(), name: controller.name.clone() };
            out.push((rs.clone(), String::new()));
            let found = lookup(&Query::new("apps/v1", "ReplicaSet").namespace(namespace).name(&rs.name))
                .map_err(|e| e.to_string())?;
            let deployment = match found.first() {
                Some(object) => {
                    let meta: Meta = serde_json::from_value(object.get("metadata").cloned().unwrap_or_default())
                        .map_err(|e| format!("ReplicaSet {:?} in the cache: {e}", rs.name))?;
                    meta.controller().filter(|o| o.kind == "Deployment").map(|o| o.name.clone())
                }
                None => meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash"))
                    .and_then(|hash| rs.name.strip_suffix(&format!("-{hash}")))
                    .map(str::to_owned),
            };
            if let Some(name) = deployment {
                out.push((Owner { kind: "Deployment".into(), name }, format!(" (through ReplicaSet {:?})", rs.name)));
            }
        }
        "StatefulSet" | "ReplicationController" => {
            out.push((Owner { kind: controller.kind.clone(), name: controller.name.clone() }, String::new()));
        }
        _ => {}
    }
    Ok(out)
}

// ---- Strict mode ----

/// The problems of `strict` mode for a pod spec in `namespace`.
fn strict(settings: &Settings, namespace: &str, spec: &PodSpec, source: Source) -> Vec<String> {
    let Some(strict) = settings.strict.as_ref().filter(|s| s.covers(namespace)) else { return Vec::new() };
    let needs: Vec<pods::Need> = strict
        .resources
        .iter()
        .flat_map(|r| {
            spec.counted()
                .map(move |c| pods::Need::ContainerResource { container: c.name.clone(), resource: r.clone() })
        })
        .collect();
    spec.missing(&needs, source)
        .into_iter()
        .filter(|m| matches!(m, Missing::Request { .. }))
        .map(|m| {
            format!(
                "{} (every workload and Pod in namespace {namespace} needs {} requests)",
                m.describe(source),
                strict.resources.join(" and ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
