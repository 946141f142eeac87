//! A [`PolicySet`]: every policy of a config file, compiled, ABI-checked and
//! with its settings validated by its own module, ready to evaluate requests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::abi;
use crate::config::{Config, PolicyConfig};
use crate::context::ContextStore;
use crate::runtime::{EvalError, LoadError, PolicyModule, Runtime};

/// Why a policy set could not be built. Every variant names the policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module file could not be read.
    #[error("policy {policy:?}: reading module {path}")]
    Read {
        /// Policy name.
        policy: String,
        /// Module path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The module's digest differs from its pin.
    #[error("policy {policy:?}: module {path} has sha256 {actual}, but the config pins {expected}")]
    Digest {
        /// Policy name.
        policy: String,
        /// Module path.
        path: PathBuf,
        /// Pinned digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// The module was refused.
    #[error("policy {policy:?}: module {path} was refused")]
    Load {
        /// Policy name.
        policy: String,
        /// Module path.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<LoadError>,
    },
    /// The module could not check its settings.
    #[error("policy {policy:?}: its module could not validate the settings")]
    SettingsCheck {
        /// Policy name.
        policy: String,
        /// Why.
        #[source]
        source: EvalError,
    },
    /// The module refused its settings.
    #[error("policy {policy:?}: invalid settings: {message}")]
    Settings {
        /// Policy name.
        policy: String,
        /// What the module said.
        message: String,
    },
    /// A compile task died.
    #[error("policy {policy:?}: compile task failed: {message}")]
    Task {
        /// Policy name.
        policy: String,
        /// Why.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One loaded policy.
#[derive(Debug)]
pub struct Policy {
    /// Its config entry.
    pub config: PolicyConfig,
    /// SHA-256 of the module file (hex).
    pub sha256: String,
    module: PolicyModule,
    settings_json: String,
}

impl Policy {
    /// The policy name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Evaluates one request, given the raw JSON of its `AdmissionRequest`.
    pub async fn evaluate(&self, raw_request: &str) -> Result<portcullis_sdk::Verdict, EvalError> {
        self.evaluate_until(raw_request, None).await
    }

    /// Evaluates one request whose answer is due by `until` (the API
    /// server's `?timeout=`): the wait for a slot and the evaluation end by then.
    pub async fn evaluate_until(
        &self,
        raw_request: &str,
        until: Option<std::time::Instant>,
    ) -> Result<portcullis_sdk::Verdict, EvalError> {
        let mut input = String::with_capacity(raw_request.len() + self.settings_json.len() + 24);
        input.push_str("{\"request\":");
        input.push_str(raw_request);
        input.push_str(",\"settings\":");
        input.push_str(&self.settings_json);
        input.push('}');
        let answer = self.module.validate_until(input.as_bytes(), until).await?;
        abi::decode_verdict(&answer)
    }

    /// A policy of a compiled module: it validates its settings (refused
    /// settings are an error), and its lookups are answered from `context`,
    /// limited to the kinds `config` grants. One compiled module may back
    /// several policies (the case runner's settings and contexts).
    pub async fn prepare(
        config: PolicyConfig,
        sha256: String,
        module: PolicyModule,
        context: &Arc<ContextStore>,
    ) -> Result<Self> {
        let settings_json = config.settings.to_string();
        let answer = module
            .validate_settings(settings_json.as_bytes())
            .await
            .map_err(|source| Error::SettingsCheck { policy: config.name.clone(), source })?;
        let validation = abi::decode_settings_validation(&answer)
            .map_err(|source| Error::SettingsCheck { policy: config.name.clone(), source })?;
        if !validation.valid {
            return Err(Error::Settings {
                policy: config.name.clone(),
                message: validation.message.unwrap_or_else(|| "refused without a reason".into()),
            });
        }
        let handler = context.for_policy(&config.name, config.context.clone(), config.memory_limit_bytes());
        let module = module.with_lookup(handler);
        Ok(Self { config, sha256, module, settings_json })
    }

    /// Evaluations of this policy waiting for a slot right now.
    pub fn queued(&self) -> usize {
        self.module.queued()
    }
}

/// The policies of one config, by name.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: HashMap<String, Arc<Policy>>,
}

impl PolicySet {
    /// Loads every policy of `config` with no context: a lookup finds no
    /// cache to answer from (offline checks, tests of policies that look
    /// nothing up).
    pub async fn load(runtime: &Arc<Runtime>, config: &Config) -> Result<Self> {
        Self::load_with_context(runtime, config, &Arc::new(ContextStore::default())).await
    }

    /// Loads every policy of `config`: modules are read and compiled in
    /// parallel, checked against the ABI, then each validates its settings.
    /// Each policy's lookups are answered from `context`, limited to the
    /// kinds its config grants.
    pub async fn load_with_context(
        runtime: &Arc<Runtime>,
        config: &Config,
        context: &Arc<ContextStore>,
    ) -> Result<Self> {
        let mut tasks = Vec::new();
        for policy in &config.policies {
            let runtime = runtime.clone();
            let policy = policy.clone();
            tasks.push(tokio::task::spawn_blocking(move || compile(&runtime, policy)));
        }
        let mut compiled = Vec::new();
        for (task, policy) in tasks.into_iter().zip(&config.policies) {
            let result = task.await.map_err(|e| Error::Task { policy: policy.name.clone(), message: e.to_string() })?;
            compiled.push(result?);
        }
        let mut policies = HashMap::new();
        for (config, sha256, module) in compiled {
            let policy = Policy::prepare(config, sha256, module, context).await?;
            policies.insert(policy.config.name.clone(), Arc::new(policy));
        }
        Ok(Self { policies })
    }

    /// Looks a policy up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Policy>> {
        self.policies.get(name)
    }

    /// Policy names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.policies.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

fn compile(runtime: &Runtime, config: PolicyConfig) -> Result<(PolicyConfig, String, PolicyModule)> {
    let wasm = std::fs::read(&config.module).map_err(|source| Error::Read {
        policy: config.name.clone(),
        path: config.module.clone(),
        source,
    })?;
    let sha256 = hex::encode(Sha256::digest(&wasm));
    if let Some(expected) = config.sha256.as_ref().filter(|e| !e.eq_ignore_ascii_case(&sha256)) {
        return Err(Error::Digest {
            policy: config.name.clone(),
            path: config.module.clone(),
            expected: expected.clone(),
            actual: sha256,
        });
    }
    let limits = config.limits();
    let module = runtime.load(&config.name, &wasm, limits).map_err(|source| Error::Load {
        policy: config.name.clone(),
        path: config.module.clone(),
        source: Box::new(source),
    })?;
    Ok((config, sha256, module))
}
