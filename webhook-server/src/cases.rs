//! The case runner: `webhook-server test --module M CASES.yaml...`, and the
//! code path the repository's own tests take for every built-in policy.
//!
//! A case file is a YAML list of cases ([`FixtureCase`]): an AdmissionReview
//! file, optional settings and a file of objects the lookups are answered
//! from, the expected verdict, fragments of the message and warnings, and for
//! mutators the object expected once the patch is applied (which is then
//! evaluated again and must be admitted unpatched). Files are relative to the
//! case file's directory.
//!
//! The module is compiled once; each case runs through a [`Policy`] built on
//! it with the case's settings (validated by the module, as at load) and
//! context, and through the server's own admission path (parse, evaluate,
//! decide, base64 patch), so a case passes here exactly when the server would
//! answer the same.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use portcullis_sdk::testing::{Answer, FixtureCase, load_case_file};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::admission::{self, Endpoint};
use crate::config::PolicyConfig;
use crate::context::{ContextStore, Kind};
use crate::policy::Policy;
use crate::runtime::{PolicyModule, Runtime};

/// Runs case files against one compiled module.
pub struct CaseRunner {
    name: String,
    sha256: String,
    module: PolicyModule,
    grants: Vec<Kind>,
    template: PolicyConfig,
    policies: HashMap<(String, Option<PathBuf>), Arc<Policy>>,
}

impl std::fmt::Debug for CaseRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseRunner").field("name", &self.name).field("grants", &self.grants).finish_non_exhaustive()
    }
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The case file.
    pub file: PathBuf,
    /// Position of the case in its file, from 1.
    pub index: usize,
    /// The AdmissionReview file it evaluates.
    pub request: String,
    /// Its settings.
    pub settings: Value,
    /// Why it failed (`None`: it passed).
    pub failure: Option<String>,
}

impl CaseReport {
    /// One line (more when it failed): `ok   FILE#N REQUEST` or `FAIL FILE#N REQUEST: why`.
    pub fn line(&self) -> String {
        let settings = match self.settings.as_object() {
            Some(map) if map.is_empty() => String::new(),
            _ => format!(" settings {}", shorten(&self.settings.to_string(), 80)),
        };
        let head = format!("{}#{} {}{settings}", self.file.display(), self.index, self.request);
        match &self.failure {
            None => format!("ok   {head}"),
            Some(why) => format!("FAIL {head}\n     {}", why.replace('\n', "\n     ")),
        }
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

impl CaseRunner {
    /// Compiles `wasm` (checked against the ABI as at load) as policy `name`.
    /// Lookups may ask for any kind unless [`CaseRunner::granting`] narrows them.
    pub fn new(runtime: &Runtime, name: &str, wasm: &[u8]) -> anyhow::Result<Self> {
        let template = PolicyConfig::for_tests(name)?;
        let module = runtime
            .load(name, wasm, template.limits())
            .map_err(|e| anyhow::anyhow!("module {name} was refused: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            sha256: hex::encode(Sha256::digest(wasm)),
            module,
            grants: vec![Kind::any()],
            template,
            policies: HashMap::new(),
        })
    }

    /// Grants only `kinds` to the module's lookups (others are refused, as
    /// the server refuses kinds a config does not grant).
    #[must_use]
    pub fn granting(mut self, kinds: Vec<Kind>) -> Self {
        self.grants = kinds;
        self.policies.clear();
        self
    }

    /// Runs every case of the case file at `path`. An error means the file
    /// itself could not be read; failing cases are reports.
    pub async fn run_file(&mut self, path: &Path) -> Result<Vec<CaseReport>, String> {
        let cases = load_case_file(path)?;
        let dir = path.parent().unwrap_or_else(|| Path::new(".")).to_owned();
        let mut reports = Vec::with_capacity(cases.len());
        for (i, case) in cases.iter().enumerate() {
            let failure = self.run_case(&dir, case).await.err();
            reports.push(CaseReport {
                file: path.to_owned(),
                index: i + 1,
                request: case.request.clone(),
                settings: case.settings_json(),
                failure,
            });
        }
        Ok(reports)
    }

    async fn run_case(&mut self, dir: &Path, case: &FixtureCase) -> Result<(), String> {
        let policy = self.policy(dir, case).await?;
        let review = case.review(dir)?;
        let first = answer(&policy, &review).await?;
        match case.check(dir, &review, &first)? {
            Some(rerun) => case.check_rerun(&answer(&policy, &rerun).await?),
            None => Ok(()),
        }
    }

    /// The policy for a case's settings and context, built once per pair.
    async fn policy(&mut self, dir: &Path, case: &FixtureCase) -> Result<Arc<Policy>, String> {
        let settings = case.settings_json();
        let context = case.context.as_ref().map(|file| dir.join(file));
        let key = (settings.to_string(), context.clone());
        if let Some(policy) = self.policies.get(&key) {
            return Ok(policy.clone());
        }
        let objects = case.context_objects(dir)?;
        let kinds: Vec<Kind> = self.grants.iter().filter(|k| !k.is_any()).cloned().collect();
        let store = Arc::new(ContextStore::offline(objects, &kinds));
        let mut config = self.template.clone();
        config.settings = settings;
        config.context = self.grants.clone();
        let policy = Policy::prepare(config, self.sha256.clone(), self.module.clone(), &store)
            .await
            .map_err(|e| format!("{e}"))?;
        let policy = Arc::new(policy);
        self.policies.insert(key, policy.clone());
        Ok(policy)
    }

    /// The policy's name (from the module's file name).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What the server answers on `/mutate/{policy}` for `review`, in the terms
/// a case is checked against (the patch decoded from base64); the uid must be echoed.
pub async fn answer(policy: &Policy, review: &Value) -> Result<Answer, String> {
    let body = review_json(review);
    let incoming = admission::parse(&body).map_err(|e| e.to_string())?;
    let verdict = policy.evaluate(incoming.raw.get()).await;
    let decision = admission::decide(policy, Endpoint::Mutate, &incoming, verdict);
    if let Some(failure) = decision.failure {
        return Err(format!("evaluation failed: {failure}"));
    }
    let response = decision.response;
    if response.uid != incoming.request.uid {
        return Err(format!("uid {:?} not echoed (got {:?})", incoming.request.uid, response.uid));
    }
    let patch = match decision.patch {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| e.to_string())?;
            Some(serde_json::from_slice(&bytes).map_err(|e| format!("patch: {e}"))?)
        }
        None => None,
    };
    Ok(Answer {
        allowed: response.allowed,
        message: response.result.message,
        warnings: response.warnings.unwrap_or_default(),
        patch,
    })
}

/// `review` as the API server writes it: the request's fields in its order
/// (a `serde_json::Value` sorts them, putting `object` before `operation`),
/// so that a policy's object projection decodes the object as in production.
fn review_json(review: &Value) -> Vec<u8> {
    let Some(fields) = review.as_object() else { return review.to_string().into_bytes() };
    let members: Vec<String> = fields
        .iter()
        .map(|(name, value)| {
            let value = if name == "request" { portcullis_sdk::request_json(value) } else { value.to_string() };
            format!("{}:{value}", Value::from(name.as_str()))
        })
        .collect();
    format!("{{{}}}", members.join(",")).into_bytes()
}

/// A policy name for a module file: its stem, as a DNS label.
pub fn name_for(module: &str) -> String {
    let last = module.split('@').next().unwrap_or_default().rsplit('/').next().unwrap_or_default();
    let stem = if module.starts_with("oci://") { last.split(':').next().unwrap_or_default() } else { last };
    let stem = stem.strip_suffix(".wasm").unwrap_or(stem);
    let mut name: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(63).collect();
    name = name.trim_matches('-').to_owned();
    if name.is_empty() { "policy".to_owned() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_module_file() {
        assert_eq!(name_for("target/policies/ingress-tls.wasm"), "ingress-tls");
        assert_eq!(name_for("./My_Policy.wasm"), "my-policy");
        assert_eq!(name_for("oci://registry.example:5000/policies/required-labels@sha256:ab"), "required-labels");
        assert_eq!(name_for("oci://registry.example/team/sai:v1@sha256:ab"), "sai");
        assert_eq!(name_for("___.wasm"), "policy");
    }

    #[test]
    fn a_failing_case_shows_why_on_indented_lines() {
        let report = CaseReport {
            file: PathBuf::from("cases.yaml"),
            index: 3,
            request: "no-tls.json".into(),
            settings: serde_json::json!({"allowDefaultCertificate": true}),
            failure: Some("expected allowed=true\ngot false".into()),
        };
        assert_eq!(
            report.line(),
            "FAIL cases.yaml#3 no-tls.json settings {\"allowDefaultCertificate\":true}\n     expected allowed=true\n     got false"
        );
        let passed = CaseReport { failure: None, settings: serde_json::json!({}), ..report };
        assert_eq!(passed.line(), "ok   cases.yaml#3 no-tls.json");
    }
}
