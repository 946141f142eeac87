//! Pod CREATE: the ServiceAccount a pod runs as, the Azure opt-in label,
//! and, when token projection is on, what AWS's and Azure's own webhooks
//! would add (environment, mount, projected token volume).
//!
//! Everything is decided from the settings and the pod alone: no lookup of
//! the ServiceAccount that could miss (AWS's webhook skips a pod whose
//! ServiceAccount is not in its cache yet, and the pod silently falls back to
//! the node's credentials).

use portcullis_sdk::Verdict;
use portcullis_sdk::mutation::{Mutation, MutationError};
use portcullis_sdk::projection::Keep;
use serde_json::{Value, json};

use crate::identity::{self, Cloud};
use crate::settings::{
    AwsIdentity, AzureIdentity, Binding, MAX_TOKEN_EXPIRATION, MIN_TOKEN_EXPIRATION, PodAction, Settings,
};
use crate::{Object, annotation, at, pointer, string_at};

/// The parts of a Pod this policy reads or patches (see
/// `portcullis_sdk::projection`): the rest of a pod is never decoded.
pub const READ: Keep = Keep::Fields(&[
    ("apiVersion", Keep::All),
    ("kind", Keep::All),
    (
        "metadata",
        Keep::Fields(&[
            ("name", Keep::All),
            ("generateName", Keep::All),
            ("namespace", Keep::All),
            ("deletionTimestamp", Keep::All),
            ("labels", Keep::All),
            ("annotations", Keep::All),
        ]),
    ),
    (
        "spec",
        Keep::Fields(&[
            ("serviceAccountName", Keep::All),
            ("serviceAccount", Keep::All),
            ("nodeSelector", Keep::All),
            ("volumes", Keep::All),
            ("containers", Keep::Items(&CONTAINER)),
            ("initContainers", Keep::Items(&CONTAINER)),
        ]),
    ),
]);

const CONTAINER: Keep = Keep::Fields(&[("name", Keep::All), ("env", Keep::All), ("volumeMounts", Keep::All)]);

/// Name of the AWS token volume and of its mounts.
pub const AWS_VOLUME: &str = "aws-iam-token";
/// Where the AWS token directory is mounted.
pub const AWS_MOUNT_PATH: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
/// `AWS_WEB_IDENTITY_TOKEN_FILE` on Linux.
pub const AWS_TOKEN_FILE: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token";
/// `AWS_WEB_IDENTITY_TOKEN_FILE` on Windows nodes.
pub const AWS_TOKEN_FILE_WINDOWS: &str = r"C:\var\run\secrets\eks.amazonaws.com\serviceaccount\token";
/// AWS token lifetime unless the pod or the binding says otherwise.
pub const AWS_DEFAULT_EXPIRATION: i64 = 86_400;

/// Name of the Azure token volume and of its mounts.
pub const AZURE_VOLUME: &str = "azure-identity-token";
/// Where the Azure token directory is mounted.
pub const AZURE_MOUNT_PATH: &str = "/var/run/secrets/azure/tokens";
/// `AZURE_FEDERATED_TOKEN_FILE`.
pub const AZURE_TOKEN_FILE: &str = "/var/run/secrets/azure/tokens/azure-identity-token";
/// Audience of the Azure token.
pub const AZURE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Azure token lifetime bounds and default (seconds).
pub const AZURE_EXPIRATION: (i64, i64, i64) = (3_600, 86_400, 3_600);

/// What a pod review found.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    warnings: Vec<String>,
}

/// Decides on a Pod CREATE.
pub fn review(pod: Object, settings: &Settings) -> Result<Verdict, String> {
    let mut m = Mutation::new(pod.value);
    let mut found = Findings::default();
    let service_account = service_account(&mut m, &pod.namespace, settings, &mut found)?;
    if let Some((_, binding)) = service_account.and_then(|sa| settings.binding_for(&pod.namespace, &sa)) {
        apply_binding(&mut m, binding, settings, &mut found)?;
    }
    if !found.problems.is_empty() {
        let summary = format!("Pod {} cannot be admitted with its ServiceAccount's cloud identity", pod.display);
        return Ok(Verdict::deny_all(&summary, &found.problems).with_warnings(found.warnings));
    }
    Ok(m.into_verdict().with_warnings(found.warnings))
}

/// The ServiceAccount the pod runs as, after `podServiceAccounts`
/// assigned one; `None` when the pod is denied for running as `default`.
fn service_account(
    m: &mut Mutation,
    namespace: &str,
    settings: &Settings,
    found: &mut Findings,
) -> Result<Option<String>, String> {
    let object = m.object();
    // The deprecated `serviceAccount` counts when `serviceAccountName` is empty, as in the API server.
    let named = [string_at(object, &["spec", "serviceAccountName"])?, string_at(object, &["spec", "serviceAccount"])?]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty())
        .unwrap_or_default()
        .to_owned();
    if !(named.is_empty() || named == "default") {
        return Ok(Some(named));
    }
    let Some((i, rule)) = settings.pod_service_account_for(namespace) else {
        return Ok(Some("default".into()));
    };
    match rule.action {
        PodAction::Assign => {
            let assigned = Value::String(rule.service_account.clone());
            let set = |m: &mut Mutation, field| m.set(&pointer(&["spec", field]), assigned.clone());
            set(m, "serviceAccountName").map_err(|e| e.to_string())?;
            if m.get(&pointer(&["spec", "serviceAccount"])).is_some() {
                set(m, "serviceAccount").map_err(|e| e.to_string())?;
            }
            Ok(Some(rule.service_account.clone()))
        }
        PodAction::Deny => {
            let shown = if named.is_empty() { "not set".to_string() } else { format!("{named:?}") };
            found.problems.push(format!(
                "spec.serviceAccountName is {shown}, but pods in namespace {namespace} must run as ServiceAccount {:?} \
                 (podServiceAccounts[{i}]); set spec.serviceAccountName: {}",
                rule.service_account, rule.service_account
            ));
            Ok(None)
        }
    }
}

/// The label and token projections a bound ServiceAccount's pods get.
fn apply_binding(m: &mut Mutation, binding: &Binding, settings: &Settings, found: &mut Findings) -> Result<(), String> {
    if binding.azure.is_some() {
        let current = m.get(&pointer(&["metadata", "labels", identity::AZURE_USE])).cloned();
        if m.set_label(identity::AZURE_USE, "true").map_err(|e| e.to_string())?
            && let Some(previous) = current
        {
            found.warnings.push(format!(
                "label {} was {previous}; set to \"true\" because {} has an Azure identity",
                identity::AZURE_USE,
                binding.describe()
            ));
        }
    }
    let projection = &settings.token_projection;
    if projection.aws.enabled
        && let Some(aws) = &binding.aws
        && let Some(p) = aws_projection(m.object(), aws, projection.aws.region.as_deref(), found)?
    {
        p.apply(m, found).map_err(|e| e.to_string())?;
    }
    if projection.azure.enabled
        && let Some(azure) = &binding.azure
        && let Some(p) = azure_projection(m.object(), binding, azure, projection.azure.authority_host(), found)?
    {
        p.apply(m, found).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What one cloud's token projection adds to a pod.
#[derive(Debug)]
struct Projection {
    cloud: Cloud,
    volume: &'static str,
    mount_path: &'static str,
    audience: String,
    token_path: &'static str,
    expiration: i64,
    /// Variables, in order; each is added to a container only when it has no variable of that name.
    env: Vec<(&'static str, String)>,
    /// Containers left alone.
    skip: Vec<String>,
}

fn aws_projection(
    pod: &Value,
    aws: &AwsIdentity,
    region: Option<&str>,
    found: &mut Findings,
) -> Result<Option<Projection>, String> {
    let mut expiration = aws.token_expiration.unwrap_or(AWS_DEFAULT_EXPIRATION);
    if let Some(raw) = annotation(pod, identity::TOKEN_EXPIRATION)? {
        match raw.trim().parse::<i64>() {
            Ok(asked) => {
                let clamped = asked.clamp(MIN_TOKEN_EXPIRATION, MAX_TOKEN_EXPIRATION);
                if clamped != asked {
                    found.warnings.push(format!(
                        "annotation {} asks for a {asked} s token; it lasts {clamped} s \
                         ({MIN_TOKEN_EXPIRATION}..={MAX_TOKEN_EXPIRATION} s allowed)",
                        identity::TOKEN_EXPIRATION
                    ));
                }
                expiration = clamped;
            }
            Err(_) => found.warnings.push(format!(
                "annotation {} {raw:?} is not a number of seconds; the token lasts {expiration} s",
                identity::TOKEN_EXPIRATION
            )),
        }
    }
    let windows = ["kubernetes.io/os", "beta.kubernetes.io/os"]
        .iter()
        .any(|key| at(pod, &["spec", "nodeSelector", key]).and_then(Value::as_str) == Some("windows"));
    let mut env = Vec::new();
    if aws.sts_regional_endpoints == Some(true) {
        env.push(("AWS_STS_REGIONAL_ENDPOINTS", "regional".to_string()));
    }
    if let Some(region) = region {
        env.push(("AWS_DEFAULT_REGION", region.to_string()));
        env.push(("AWS_REGION", region.to_string()));
    }
    env.push(("AWS_ROLE_ARN", aws.role_arn.clone()));
    let token_file = if windows { AWS_TOKEN_FILE_WINDOWS } else { AWS_TOKEN_FILE };
    env.push(("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_string()));
    Ok(Some(Projection {
        cloud: Cloud::Aws,
        volume: AWS_VOLUME,
        mount_path: AWS_MOUNT_PATH,
        audience: aws.audience.clone().unwrap_or_else(|| crate::settings::DEFAULT_AWS_AUDIENCE.into()),
        token_path: "token",
        expiration,
        env,
        skip: split(annotation(pod, identity::AWS_SKIP_CONTAINERS)?, ','),
    }))
}

fn azure_projection(
    pod: &Value,
    binding: &Binding,
    azure: &AzureIdentity,
    authority_host: &str,
    found: &mut Findings,
) -> Result<Option<Projection>, String> {
    let (min, max, default) = AZURE_EXPIRATION;
    let expiration = match annotation(pod, identity::AZURE_TOKEN_EXPIRATION)? {
        None => default,
        Some(raw) => match raw.trim().parse::<i64>() {
            Ok(asked) if (min..=max).contains(&asked) => asked,
            _ => {
                found.problems.push(format!(
                    "annotation {} is {raw:?}; the Azure token lifetime must be {min}..={max} seconds",
                    identity::AZURE_TOKEN_EXPIRATION
                ));
                return Ok(None);
            }
        },
    };
    let mut env = vec![("AZURE_CLIENT_ID", azure.client_id.clone())];
    match &azure.tenant_id {
        Some(tenant) => env.push(("AZURE_TENANT_ID", tenant.clone())),
        None => found.warnings.push(format!(
            "the binding of {} sets no azure.tenantId, so AZURE_TENANT_ID is not set; Azure SDKs need it",
            binding.describe()
        )),
    }
    env.push(("AZURE_FEDERATED_TOKEN_FILE", AZURE_TOKEN_FILE.to_string()));
    env.push(("AZURE_AUTHORITY_HOST", authority_host.to_string()));
    Ok(Some(Projection {
        cloud: Cloud::Azure,
        volume: AZURE_VOLUME,
        mount_path: AZURE_MOUNT_PATH,
        audience: AZURE_AUDIENCE.into(),
        token_path: AZURE_VOLUME,
        expiration,
        env,
        skip: split(annotation(pod, identity::AZURE_SKIP_CONTAINERS)?, ';'),
    }))
}

impl Projection {
    fn apply(&self, m: &mut Mutation, found: &mut Findings) -> Result<(), MutationError> {
        let volumes = m.get(&pointer(&["spec", "volumes"])).and_then(Value::as_array);
        let existing = volumes.and_then(|v| {
            v.iter().enumerate().find(|(_, v)| v.get("name").and_then(Value::as_str) == Some(self.volume))
        });
        if let Some((i, volume)) = existing
            && !self.is_token_volume(volume)
        {
            found.problems.push(format!(
                "spec.volumes[{i}] {:?} is {}, but that name is reserved for the projected {} token (audience {:?}), \
                 which it would shadow; rename the volume",
                self.volume,
                describe_volume(volume),
                self.cloud.short_name(),
                self.audience
            ));
            return Ok(());
        }
        // Built once; every container gets the same (skipped ones none).
        let vars: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mount = json!({"name": self.volume, "mountPath": self.mount_path, "readOnly": true});
        for list in ["initContainers", "containers"] {
            let containers = at(m.object(), &["spec", list]).and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            let patched: Vec<usize> = (0..containers.len())
                .filter(|&i| {
                    let name = containers[i].get("name").and_then(Value::as_str).unwrap_or_default();
                    !self.skip.iter().any(|s| s == name)
                })
                .collect();
            for index in patched {
                let container = Mutation::container(list, index);
                m.add_envs(&container, &vars)?;
                m.add_volume_mount(&container, mount.clone())?;
            }
        }
        let volume = json!({
            "name": self.volume,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": self.audience,
                "expirationSeconds": self.expiration,
                "path": self.token_path,
            }}]},
        });
        m.add_volume(&pointer(&["spec"]), volume)?;
        Ok(())
    }

    /// Whether `volume` is the projected token this projection adds (the
    /// API server may have defaulted `defaultMode`; the lifetime may differ).
    fn is_token_volume(&self, volume: &Value) -> bool {
        let Some(map) = volume.as_object() else { return false };
        let sources = at(volume, &["projected", "sources"]).and_then(Value::as_array);
        let token = match sources.map(Vec::as_slice) {
            Some([only]) => only.get("serviceAccountToken"),
            _ => None,
        };
        map.keys().all(|k| k == "name" || k == "projected")
            && token.is_some_and(|t| {
                t.get("audience").and_then(Value::as_str) == Some(self.audience.as_str())
                    && t.get("path").and_then(Value::as_str) == Some(self.token_path)
            })
    }
}

/// `a hostPath volume`, from the volume's source field.
fn describe_volume(volume: &Value) -> String {
    match volume.as_object().and_then(|m| m.keys().find(|k| *k != "name")) {
        Some(source) if source == "projected" => "a projected volume with other sources, audience or path".into(),
        Some(source) => format!("a {source} volume"),
        None => "a volume without a source".into(),
    }
}

fn split(list: Option<&str>, separator: char) -> Vec<String> {
    list.map(|l| l.split(separator).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}
