//! A [`PolicySet`]: every policy of a config file, compiled, ABI-checked and
//! with its settings validated by its own module, ready to evaluate requests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::abi;
use crate::config::{Config, ModuleSource, PolicyConfig};
use crate::context::ContextStore;
use crate::metrics::Metrics;
use crate::oci::{Registry, RegistryOptions};
use crate::runtime::{EvalError, LoadError, PolicyModule, Runtime};

/// Why a policy set could not be built. Every variant names the policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `oci://` module could not be fetched (or its registry client set up).
    #[error("policy {policy:?}: pulling its module")]
    Pull {
        /// Policy name.
        policy: String,
        /// Why.
        #[source]
        source: crate::oci::OciError,
    },
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
    #[error("policy {policy:?}: module {module} has sha256 {actual}, but the config pins {expected}")]
    Digest {
        /// Policy name.
        policy: String,
        /// The module (file or reference).
        module: String,
        /// Pinned digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// The module was refused.
    #[error("policy {policy:?}: module {module} was refused")]
    Load {
        /// Policy name.
        policy: String,
        /// The module (file or reference).
        module: String,
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

impl Error {
    /// Whether this is a failure to fetch an `oci://` module (which a
    /// server starting up retries, reporting it on `/readyz`, rather than exit).
    pub fn is_pull(&self) -> bool {
        matches!(self, Self::Pull { .. })
    }
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
    pub async fn evaluate(&self, raw_request: &str) -> Result<abi::GuestVerdict, EvalError> {
        self.evaluate_until(raw_request, None).await
    }

    /// Evaluates one request whose answer is due by `until` (the API
    /// server's `?timeout=`): the wait for a slot and the evaluation end by then.
    pub async fn evaluate_until(
        &self,
        raw_request: &str,
        until: Option<std::time::Instant>,
    ) -> Result<abi::GuestVerdict, EvalError> {
        let mut input = String::with_capacity(raw_request.len() + self.settings_json.len() + 24);
        input.push_str("{\"request\":");
        input.push_str(raw_request);
        input.push_str(",\"settings\":");
        input.push_str(&self.settings_json);
        input.push('}');
        let answer = self.module.validate_until(input.into_bytes(), until).await?;
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

/// Where modules come from besides files: the registry client for `oci://`
/// modules, made on first use (or at start by [`Sources::connect`]) from its
/// options, and where pulls are counted.
#[derive(Clone, Default)]
pub struct Sources {
    options: RegistryOptions,
    registry: Arc<std::sync::OnceLock<Arc<Registry>>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Sources {
    /// `oci://` modules fetched with `options`; pulls counted in `metrics`.
    pub fn new(options: RegistryOptions, metrics: Option<Arc<Metrics>>) -> Self {
        Self { options, registry: Arc::default(), metrics }
    }

    /// Makes the registry client now, reading the CA and credentials files,
    /// so that a mistake in them stops a start rather than a later pull.
    pub fn connect(&self) -> std::result::Result<(), crate::oci::OciError> {
        self.registry().map(drop)
    }

    fn registry(&self) -> std::result::Result<Arc<Registry>, crate::oci::OciError> {
        if let Some(registry) = self.registry.get() {
            return Ok(registry.clone());
        }
        let made = Arc::new(Registry::new(&self.options)?);
        Ok(self.registry.get_or_init(|| made).clone())
    }

    /// Reads a module's bytes: a file on the blocking pool, an `oci://`
    /// reference from the cache or the registry (verified against its digest).
    pub async fn fetch(&self, policy: &str, module: &ModuleSource) -> Result<Vec<u8>> {
        match module {
            ModuleSource::File(path) => {
                let path = path.clone();
                let read = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(&read))
                    .await
                    .map_err(|e| Error::Task { policy: policy.to_owned(), message: e.to_string() })?
                    .map_err(|source| Error::Read { policy: policy.to_owned(), path, source })
            }
            ModuleSource::Oci(reference) => {
                let pull_error = |source| Error::Pull { policy: policy.to_owned(), source };
                let registry = self.registry().map_err(pull_error)?;
                let result = registry.fetch(reference).await;
                if let Some(metrics) = &self.metrics {
                    let label = match &result {
                        Ok(fetched) if fetched.from_cache => "cached",
                        Ok(_) => "pulled",
                        Err(e) => e.kind(),
                    };
                    metrics.module_pull(reference.registry(), label);
                }
                match result {
                    Ok(fetched) => {
                        tracing::info!(policy, module = %reference, cached = fetched.from_cache, bytes = fetched.bytes.len(), "module fetched");
                        Ok(fetched.bytes)
                    }
                    Err(source) => Err(pull_error(source)),
                }
            }
        }
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
        Self::load_from(runtime, config, context, &Sources::default()).await
    }

    /// [`PolicySet::load_with_context`], with `oci://` modules fetched
    /// through `sources` (all fetched, concurrently, before any compiles).
    pub async fn load_from(
        runtime: &Arc<Runtime>,
        config: &Config,
        context: &Arc<ContextStore>,
        sources: &Sources,
    ) -> Result<Self> {
        let fetches = config.policies.iter().map(|p| sources.fetch(&p.name, &p.module));
        let modules = futures::future::try_join_all(fetches).await?;
        // Compiling is CPU- and memory-heavy and already parallel inside (a
        // thread per core): more compilations at once than cores only add
        // peak memory.
        let turns = Arc::new(tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from)));
        // Largest module first: the longest compilation starts at once
        // instead of after the short ones, so the last one ends sooner.
        let mut order: Vec<(&PolicyConfig, Vec<u8>)> = config.policies.iter().zip(modules).collect();
        order.sort_by_key(|(_, wasm)| std::cmp::Reverse(wasm.len()));
        let mut tasks = Vec::new();
        for (policy, wasm) in order {
            let runtime = runtime.clone();
            let policy = policy.clone();
            let name = policy.name.clone();
            let turn = turns
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| Error::Task { policy: policy.name.clone(), message: e.to_string() })?;
            let task = tokio::task::spawn_blocking(move || {
                let _turn = turn;
                compile(&runtime, policy, &wasm)
            });
            tasks.push((name, task));
        }
        let mut compiled = Vec::new();
        for (name, task) in tasks {
            let result = task.await.map_err(|e| Error::Task { policy: name, message: e.to_string() })?;
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

fn compile(runtime: &Runtime, config: PolicyConfig, wasm: &[u8]) -> Result<(PolicyConfig, String, PolicyModule)> {
    let sha256 = hex::encode(Sha256::digest(wasm));
    if let Some(expected) = config.sha256.as_ref().filter(|e| !e.eq_ignore_ascii_case(&sha256)) {
        return Err(Error::Digest {
            policy: config.name.clone(),
            module: config.module.to_string(),
            expected: expected.clone(),
            actual: sha256,
        });
    }
    let limits = config.limits();
    let module = runtime.load(&config.name, wasm, limits).map_err(|source| Error::Load {
        policy: config.name.clone(),
        module: config.module.to_string(),
        source: Box::new(source),
    })?;
    Ok((config, sha256, module))
}
