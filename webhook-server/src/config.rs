//! The policy config file (YAML): which policies to serve and under which
//! limits. It is parsed and validated entirely before anything binds a port;
//! every error names the file, the policy and the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::context::Kind;

/// Longest deadline a policy may ask for: the API server's own maximum webhook timeout.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// Largest memory cap a policy may ask for; also the size of each pooled memory slot.
pub const MAX_MEMORY_MIB: u64 = 1024;
/// Largest verdict a policy may be allowed to return.
pub const MAX_OUTPUT_KIB: u64 = 64 * 1024;

/// Errors reading or validating a config file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading config {path}")]
    Read {
        /// Config file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("parsing config {path}: {message}")]
    Parse {
        /// Config file.
        path: PathBuf,
        /// What the parser said, with the location.
        message: String,
    },
    /// A policy entry has a bad value.
    #[error("config {path}: policy {policy:?}: {field}: {reason}")]
    Invalid {
        /// Config file.
        path: PathBuf,
        /// Policy name (or `policies[N]` when the name itself is bad).
        policy: String,
        /// Offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a policy's module comes from: a file, or an OCI artifact pinned by
/// digest (`oci://HOST[:PORT]/REPO[:TAG]@sha256:DIGEST`, pulled over HTTPS
/// and cached by digest; see [`crate::oci`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// A `.wasm` file; relative paths are relative to the config file.
    File(PathBuf),
    /// A pinned OCI reference.
    Oci(crate::oci::Reference),
}

impl ModuleSource {
    /// Reads `module:` text: `oci://…` is a reference (a tag alone is
    /// refused), anything else a path.
    pub fn parse(text: &str) -> Result<Self, String> {
        if crate::oci::is_oci(text) {
            return text.parse().map(Self::Oci).map_err(|e: crate::oci::OciError| e.to_string());
        }
        if text.is_empty() {
            return Err("is empty: give a .wasm file or an oci:// reference".into());
        }
        Ok(Self::File(PathBuf::from(text)))
    }

    /// The file, when the module is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Oci(_) => None,
        }
    }
}

impl std::fmt::Display for ModuleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Oci(reference) => write!(f, "{reference}"),
        }
    }
}

impl<'de> Deserialize<'de> for ModuleSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether a denial is enforced or only reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials deny.
    #[default]
    Enforce,
    /// Denials are admitted with a warning and counted.
    Audit,
}

/// What to answer when a policy cannot evaluate a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum FailurePolicy {
    /// Deny (fail closed); the Kubernetes default.
    #[default]
    Fail,
    /// Admit with a warning (fail open).
    Ignore,
}

/// One policy entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyConfig {
    /// Name used in the URL path (`/validate/{name}`): a DNS label.
    pub name: String,
    /// The wasm module: a file (relative paths are relative to the config
    /// file) or a pinned `oci://` reference.
    pub module: ModuleSource,
    /// Served on `/mutate/{name}` (true) or `/validate/{name}` (false).
    #[serde(default)]
    pub mutating: bool,
    /// Enforce or audit.
    #[serde(default)]
    pub mode: Mode,
    /// Applied when evaluation fails (trap, timeout, memory, bad output).
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Deadline for one evaluation (wall-clock), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear memory cap for one evaluation, in MiB.
    #[serde(default = "default_memory_limit_mib", rename = "memoryLimitMiB")]
    pub memory_limit_mib: u64,
    /// Largest verdict accepted from the module, in KiB.
    #[serde(default = "default_max_output_kib", rename = "maxOutputKiB")]
    pub max_output_kib: u64,
    /// Evaluations of this policy running at once (its bulkhead).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// Evaluations waiting for one of its slots; beyond this a request is
    /// answered at once by the failurePolicy instead of queueing.
    #[serde(default = "default_max_queued")]
    pub max_queued: u32,
    /// Expected SHA-256 of the module file (hex); the module is refused if it differs.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Policy settings, handed to the module and validated by it at load.
    #[serde(default = "empty_settings")]
    pub settings: serde_json::Value,
    /// Kinds the policy may look up (context-aware policies): watched by
    /// `serve`, read from `--context` offline.
    #[serde(default)]
    pub context: Vec<Kind>,
}

fn default_timeout_ms() -> u64 {
    1000
}
fn default_memory_limit_mib() -> u64 {
    64
}
fn default_max_output_kib() -> u64 {
    4096
}
fn default_max_concurrent() -> u32 {
    8
}
fn default_max_queued() -> u32 {
    64
}

/// Most evaluations of one policy at once.
pub const MAX_CONCURRENT: u32 = 1024;
/// Longest queue of one policy.
pub const MAX_QUEUED: u32 = 65_536;
fn empty_settings() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl PolicyConfig {
    /// An entry with every default, as a config naming only `name` (a DNS
    /// label) and a module would give: the case runner and `bench` use it.
    pub fn for_tests(name: &str) -> Result<Self> {
        let entry = serde_json::json!({"name": name, "module": format!("{name}.wasm"), "mutating": true});
        serde_json::from_value(entry).map_err(|e| Error::Parse { path: PathBuf::from(name), message: e.to_string() })
    }

    /// The evaluation deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The memory cap in bytes.
    pub fn memory_limit_bytes(&self) -> usize {
        usize::try_from(self.memory_limit_mib << 20).unwrap_or(usize::MAX)
    }

    /// The output cap in bytes.
    pub fn max_output_bytes(&self) -> usize {
        usize::try_from(self.max_output_kib << 10).unwrap_or(usize::MAX)
    }

    /// The sandbox limits of each evaluation.
    pub fn limits(&self) -> crate::runtime::Limits {
        crate::runtime::Limits {
            timeout: self.timeout(),
            memory_bytes: self.memory_limit_bytes(),
            max_output_bytes: self.max_output_bytes(),
            max_concurrent: self.max_concurrent,
            max_queued: self.max_queued,
        }
    }
}

/// What the whole server may spend on evaluations: the instance pool, and
/// (optionally) the memory the pod is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Instances in the pool (`--max-instances`).
    pub max_instances: u32,
    /// Memory for guest instances (`--memory-budget-mib`); `None`: unchecked.
    pub memory_mib: Option<u64>,
}

/// A config that asks for more than the [`Budget`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// More concurrent evaluations than pool instances.
    #[error(
        "the policies may run {wanted} evaluations at once ({detail}), but the instance pool has {max_instances} \
         (--max-instances): lower maxConcurrent or raise --max-instances"
    )]
    Instances {
        /// Σ maxConcurrent.
        wanted: u64,
        /// Per-policy terms.
        detail: String,
        /// Pool size.
        max_instances: u32,
    },
    /// More guest memory than budgeted.
    #[error(
        "the policies may use {wanted} MiB of guest memory at once ({detail}), over the {budget} MiB budget \
         (--memory-budget-mib): lower maxConcurrent or memoryLimitMiB, or raise the pod's memory limit"
    )]
    Memory {
        /// Σ maxConcurrent × memoryLimitMiB.
        wanted: u64,
        /// Per-policy terms.
        detail: String,
        /// Budget.
        budget: u64,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    policies: Vec<PolicyConfig>,
}

/// A validated config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// The policies, module paths resolved.
    pub policies: Vec<PolicyConfig>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// Validates config text as if read from `path` (module paths resolve against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let file: File =
            serde_yaml::from_str(text).map_err(|e| Error::Parse { path: path.to_owned(), message: e.to_string() })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let mut policies = file.policies;
        let invalid = |policy: &str, field, reason: String| Error::Invalid {
            path: path.to_owned(),
            policy: policy.to_owned(),
            field,
            reason,
        };
        if policies.is_empty() {
            return Err(Error::Parse { path: path.to_owned(), message: "`policies` lists no policy".into() });
        }
        for (i, p) in policies.iter_mut().enumerate() {
            if !is_dns_label(&p.name) {
                return Err(invalid(
                    &format!("policies[{i}]"),
                    "name",
                    format!("{:?} is not a DNS label (lowercase letters, digits and '-', at most 63)", p.name),
                ));
            }
            if !(1..=MAX_TIMEOUT_MS).contains(&p.timeout_ms) {
                return Err(invalid(
                    &p.name,
                    "timeoutMs",
                    format!("must be 1..={MAX_TIMEOUT_MS}, got {}", p.timeout_ms),
                ));
            }
            if !(1..=MAX_MEMORY_MIB).contains(&p.memory_limit_mib) {
                return Err(invalid(
                    &p.name,
                    "memoryLimitMiB",
                    format!("must be 1..={MAX_MEMORY_MIB}, got {}", p.memory_limit_mib),
                ));
            }
            if !(1..=MAX_OUTPUT_KIB).contains(&p.max_output_kib) {
                return Err(invalid(
                    &p.name,
                    "maxOutputKiB",
                    format!("must be 1..={MAX_OUTPUT_KIB}, got {}", p.max_output_kib),
                ));
            }
            if !(1..=MAX_CONCURRENT).contains(&p.max_concurrent) {
                return Err(invalid(
                    &p.name,
                    "maxConcurrent",
                    format!("must be 1..={MAX_CONCURRENT}, got {}", p.max_concurrent),
                ));
            }
            if p.max_queued > MAX_QUEUED {
                return Err(invalid(&p.name, "maxQueued", format!("must be 0..={MAX_QUEUED}, got {}", p.max_queued)));
            }
            if let Some(digest) = &p.sha256
                && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(invalid(&p.name, "sha256", "must be 64 hexadecimal digits".into()));
            }
            if !p.settings.is_object() && !p.settings.is_null() {
                return Err(invalid(&p.name, "settings", "must be a mapping".into()));
            }
            if p.settings.is_null() {
                p.settings = empty_settings();
            }
            if let ModuleSource::File(path) = &mut p.module
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
            for (k, kind) in p.context.iter().enumerate() {
                if let Err(reason) = check_kind(kind) {
                    return Err(invalid(&p.name, "context", format!("context[{k}] ({kind}): {reason}")));
                }
                if p.context[..k].contains(kind) {
                    return Err(invalid(&p.name, "context", format!("context[{k}] ({kind}) is listed twice")));
                }
            }
        }
        for (i, p) in policies.iter().enumerate() {
            if policies[..i].iter().any(|q| q.name == p.name) {
                return Err(invalid(&p.name, "name", "is used by more than one policy".into()));
            }
        }
        Ok(Self { path: path.to_owned(), policies })
    }

    /// Checks that every policy's slots together fit the instance pool and
    /// that their memory caps together fit the memory budget.
    pub fn check_budget(&self, budget: Budget) -> Result<(), BudgetError> {
        let instances: u64 = self.policies.iter().map(|p| u64::from(p.max_concurrent)).sum();
        if instances > u64::from(budget.max_instances) {
            let detail = self.policies.iter().map(|p| format!("{} {}", p.name, p.max_concurrent)).collect();
            return Err(BudgetError::Instances {
                wanted: instances,
                detail: join(detail, " + "),
                max_instances: budget.max_instances,
            });
        }
        if let Some(limit) = budget.memory_mib {
            let memory: u64 = self.policies.iter().map(|p| u64::from(p.max_concurrent) * p.memory_limit_mib).sum();
            if memory > limit {
                let detail = self
                    .policies
                    .iter()
                    .map(|p| format!("{} {} × {} MiB", p.name, p.max_concurrent, p.memory_limit_mib))
                    .collect();
                return Err(BudgetError::Memory { wanted: memory, detail: join(detail, " + "), budget: limit });
            }
        }
        Ok(())
    }

    /// Every kind some policy is granted, sorted, once each: what `serve` watches.
    pub fn granted_kinds(&self) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = self.policies.iter().flat_map(|p| p.context.iter().cloned()).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }
}

/// Checks the form of a granted kind: `apiVersion` is `v1`-like or
/// `group/version`, `kind` is a CamelCase name.
fn check_kind(kind: &Kind) -> Result<(), String> {
    let version_ok =
        |v: &str| v.starts_with('v') && v.len() > 1 && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let group_ok = |g: &str| {
        !g.is_empty()
            && g.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    };
    let api_ok = match kind.api_version.split_once('/') {
        Some((group, version)) => group_ok(group) && version_ok(version),
        None => version_ok(&kind.api_version),
    };
    if !api_ok {
        return Err(format!("apiVersion {:?} is not `v1` or `group/version`", kind.api_version));
    }
    if !kind.kind.starts_with(|c: char| c.is_ascii_uppercase()) || !kind.kind.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!("kind {:?} is not a kind such as Deployment", kind.kind));
    }
    Ok(())
}

fn join(parts: Vec<String>, sep: &str) -> String {
    parts.join(sep)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/etc/portcullis/config.yaml"), text)
    }

    #[test]
    fn defaults_and_relative_module() -> Result<()> {
        let c = parse("policies:\n- name: ingress-tls\n  module: ../policies/ingress-tls.wasm\n")?;
        let p = &c.policies[0];
        assert_eq!(p.module.path(), Some(Path::new("/etc/portcullis/../policies/ingress-tls.wasm")));
        assert_eq!((p.mutating, p.mode, p.failure_policy), (false, Mode::Enforce, FailurePolicy::Fail));
        assert_eq!((p.timeout_ms, p.memory_limit_mib, p.max_output_kib), (1000, 64, 4096));
        assert_eq!(p.settings, serde_json::json!({}));
        Ok(())
    }

    #[test]
    fn oci_modules_must_be_pinned_by_digest() -> Result<()> {
        let digest = "sha256:".to_owned() + &"ab".repeat(32);
        let c = parse(&format!(
            "policies:\n- name: a\n  module: oci://registry.example:5000/policies/a@{digest}\n\
             - name: b\n  module: oci://registry.example/b:v1@{digest}\n"
        ))?;
        assert!(c.policies.iter().all(|p| matches!(p.module, ModuleSource::Oci(_)) && p.module.path().is_none()));
        assert_eq!(c.policies[0].module.to_string(), format!("oci://registry.example:5000/policies/a@{digest}"));
        let e = error_of("policies:\n- name: a\n  module: oci://registry.example/a:v1\n");
        assert!(e.contains("policies[0]") && e.contains("a tag alone is not accepted"), "{e}");
        let e = error_of("policies:\n- name: a\n  module: ''\n");
        assert!(e.contains("is empty"), "{e}");
        Ok(())
    }

    #[test]
    fn all_fields() -> Result<()> {
        let c = parse(
            "policies:\n- name: a\n  module: /a.wasm\n  mutating: true\n  mode: audit\n  failurePolicy: Ignore\n  \
             timeoutMs: 50\n  memoryLimitMiB: 8\n  maxOutputKiB: 16\n  sha256: \"{}\"\n  settings: {{x: [1]}}\n"
                .replace("{}", &"ab".repeat(32))
                .replace("{{x: [1]}}", "{x: [1]}")
                .as_str(),
        )?;
        let p = &c.policies[0];
        assert!(p.mutating);
        assert_eq!((p.mode, p.failure_policy), (Mode::Audit, FailurePolicy::Ignore));
        assert_eq!(p.timeout(), Duration::from_millis(50));
        assert_eq!(p.memory_limit_bytes(), 8 << 20);
        assert_eq!(p.max_output_bytes(), 16 << 10);
        assert_eq!(p.settings, serde_json::json!({"x": [1]}));
        Ok(())
    }

    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(c) => format!("unexpectedly valid: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_file_policy_and_field() {
        let e = error_of("policies:\n- name: slow\n  module: a.wasm\n  timeoutMs: 0\n");
        assert!(e.contains("/etc/portcullis/config.yaml") && e.contains("\"slow\"") && e.contains("timeoutMs"), "{e}");
        let e = error_of("policies:\n- name: big\n  module: a.wasm\n  memoryLimitMiB: 4096\n");
        assert!(e.contains("\"big\"") && e.contains("memoryLimitMiB"), "{e}");
        let e = error_of("policies:\n- name: pinned\n  module: a.wasm\n  sha256: nope\n");
        assert!(e.contains("sha256"), "{e}");
        let e = error_of("policies:\n- name: s\n  module: a.wasm\n  settings: [1]\n");
        assert!(e.contains("settings"), "{e}");
    }

    #[test]
    fn context_grants_are_checked_and_gathered() -> Result<()> {
        let c = parse(
            "policies:\n- name: a\n  module: a.wasm\n  context:\n  - {apiVersion: autoscaling/v2, kind: HorizontalPodAutoscaler}\n  \
             - {apiVersion: apps/v1, kind: Deployment}\n- name: b\n  module: b.wasm\n  context: [{apiVersion: apps/v1, kind: Deployment}, \
             {apiVersion: v1, kind: ReplicationController}]\n",
        )?;
        let kinds: Vec<String> = c.granted_kinds().iter().map(ToString::to_string).collect();
        assert_eq!(kinds, ["apps/v1 Deployment", "autoscaling/v2 HorizontalPodAutoscaler", "v1 ReplicationController"]);
        for (entry, fragment) in [
            ("{apiVersion: apps, kind: Deployment}", "context[0] (apps Deployment): apiVersion \"apps\""),
            ("{apiVersion: apps/v1, kind: deployment}", "kind \"deployment\""),
            ("{apiVersion: Apps/v1, kind: Deployment}", "apiVersion"),
            ("{apiVersion: apps/v1, kind: Deployment}, {apiVersion: apps/v1, kind: Deployment}", "listed twice"),
            ("{apiVersion: apps/v1}", "missing field `kind`"),
            ("{apiVersion: apps/v1, kind: Deployment, verbs: [list]}", "unknown field `verbs`"),
        ] {
            let e = error_of(&format!("policies:\n- name: p\n  module: a.wasm\n  context: [{entry}]\n"));
            assert!(e.contains(fragment), "{entry}: {e}");
        }
        Ok(())
    }

    #[test]
    fn budget_counts_every_policys_slots_and_memory() -> Result<()> {
        let c = parse(
            "policies:\n- name: a\n  module: a.wasm\n  maxConcurrent: 4\n  memoryLimitMiB: 32\n\
             - name: b\n  module: b.wasm\n  maxConcurrent: 2\n  maxQueued: 0\n",
        )?;
        assert_eq!((c.policies[1].max_concurrent, c.policies[1].max_queued), (2, 0));
        assert_eq!(c.check_budget(Budget { max_instances: 6, memory_mib: Some(256) }), Ok(()));
        let e = c.check_budget(Budget { max_instances: 5, memory_mib: None }).map_err(|e| e.to_string());
        assert!(
            matches!(&e, Err(m) if m.contains("6 evaluations") && m.contains("a 4 + b 2") && m.contains("--max-instances")),
            "{e:?}"
        );
        let e = c.check_budget(Budget { max_instances: 128, memory_mib: Some(200) }).map_err(|e| e.to_string());
        assert!(
            matches!(&e, Err(m) if m.contains("256 MiB") && m.contains("a 4 × 32 MiB + b 2 × 64 MiB") && m.contains("200 MiB budget")),
            "{e:?}"
        );
        let e = error_of("policies:\n- name: z\n  module: a.wasm\n  maxConcurrent: 0\n");
        assert!(e.contains("\"z\"") && e.contains("maxConcurrent"), "{e}");
        Ok(())
    }

    #[test]
    fn unknown_fields_and_bad_names_are_refused() {
        let e = error_of("policies:\n- name: a\n  module: a.wasm\n  timeout: 5\n");
        assert!(e.contains("unknown field `timeout`"), "{e}");
        let e = error_of("policies:\n- name: Not_A_Label\n  module: a.wasm\n");
        assert!(e.contains("policies[0]") && e.contains("DNS label"), "{e}");
        let e = error_of("policies:\n- name: a\n  module: a.wasm\n- name: a\n  module: b.wasm\n");
        assert!(e.contains("more than one"), "{e}");
        let e = error_of("policies: []\n");
        assert!(e.contains("no policy"), "{e}");
        let e = error_of("policies:\n- name: a\n  module: a.wasm\n  mode: strict\n");
        assert!(e.contains("mode") || e.contains("strict"), "{e}");
    }
}
