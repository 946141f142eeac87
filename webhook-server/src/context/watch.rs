//! Filling the context caches from the API server: one kube-runtime
//! `watcher` per granted kind, cluster-wide, applied to the kind's
//! [`KindCache`] as a reflector does.
//!
//! kube-runtime's own reflector store keeps typed objects; ours keeps the
//! JSON that lookups return and field indexes (see the parent module), so the
//! watcher's events are applied here instead. A kind's cache becomes synced
//! after its first complete list; afterwards a lost watch keeps the last
//! state served while the watcher re-lists with backoff (each failure counted
//! in `portcullis_context_watch_restarts_total`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use kube::api::{Api, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{ContextStore, Kind, KindCache};

/// Where the context caches come from: watches of the kinds policies are
/// granted, or (`serve --context`) a file read once. Connects to the cluster
/// only when some kind is to be watched: a config without context grants
/// never contacts one.
pub struct ContextSource {
    kubeconfig: Option<PathBuf>,
    store: Arc<ContextStore>,
    client: tokio::sync::OnceCell<kube::Client>,
    tasks: Mutex<BTreeMap<Kind, JoinHandle<()>>>,
    /// No cluster: the store was filled from a file (`serve --context`);
    /// newly granted kinds get empty, synced caches.
    offline: bool,
}

impl ContextSource {
    /// Watches that will fill `store`, connecting with `kubeconfig` (else
    /// as kube-rs infers it: `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account) when first needed.
    pub fn new(kubeconfig: Option<PathBuf>, store: Arc<ContextStore>) -> Self {
        Self { kubeconfig, store, client: tokio::sync::OnceCell::new(), tasks: Mutex::default(), offline: false }
    }

    /// No watches: `store` holds objects read from a file, and stays as it is.
    pub fn offline(store: Arc<ContextStore>) -> Self {
        let mut watches = Self::new(None, store);
        watches.offline = true;
        watches
    }

    async fn client(&self) -> anyhow::Result<kube::Client> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let config = match &self.kubeconfig {
                    Some(path) => {
                        let file = kube::config::Kubeconfig::read_from(path)
                            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                            .await
                            .with_context(|| format!("kubeconfig {}", path.display()))?
                    }
                    None => kube::Config::infer().await.context(
                        "finding the cluster for the context caches (no --kubeconfig, KUBECONFIG or in-cluster \
                         config; `serve --context FILE` answers lookups from a file instead)",
                    )?,
                };
                kube::Client::try_from(config).context("creating the Kubernetes client")
            })
            .await?;
        Ok(client.clone())
    }

    /// Starts watching every kind of `kinds` not watched yet (the others
    /// keep their watches: see [`ContextSource::unwatch_others`]).
    pub async fn watch(&self, kinds: &[Kind]) -> anyhow::Result<()> {
        if self.offline {
            let missing: Vec<Kind> = kinds.iter().filter(|k| self.store.get(k).is_none()).cloned().collect();
            self.store.fill(Vec::new(), &missing);
            return Ok(());
        }
        let missing: Vec<&Kind> = {
            let tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            kinds.iter().filter(|k| !tasks.contains_key(*k)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let mut tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for kind in missing {
            if tasks.contains_key(kind) {
                continue;
            }
            tracing::info!(kind = %kind, "watching for context lookups");
            let cache = self.store.cache(kind);
            tasks.insert(kind.clone(), tokio::spawn(run(client.clone(), cache, self.store.clone())));
        }
        Ok(())
    }

    /// Stops the watches (and drops the caches) of kinds not in `kinds`.
    pub fn unwatch_others(&self, kinds: &[Kind]) {
        if self.offline {
            return;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.retain(|kind, task| {
            let keep = kinds.contains(kind);
            if !keep {
                task.abort();
                tracing::info!(kind = %kind, "no policy is granted this kind any more: watch stopped");
            }
            keep
        });
        self.store.retain(kinds);
    }

    /// Waits until the caches of `kinds` have listed once; the kinds still
    /// unsynced when `timeout` passes are the error.
    pub async fn wait_synced(&self, kinds: &[Kind], timeout: Duration) -> Result<(), Vec<Kind>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let unsynced: Vec<Kind> =
                kinds.iter().filter(|k| !self.store.get(k).is_some_and(|c| c.is_synced())).cloned().collect();
            if unsynced.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unsynced);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl std::fmt::Debug for ContextSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.debug_struct("ContextSource")
            .field("kubeconfig", &self.kubeconfig)
            .field("connected", &self.client.initialized())
            .field("kinds", &tasks.keys().map(ToString::to_string).collect::<Vec<_>>())
            .finish()
    }
}

impl Drop for ContextSource {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for task in tasks.values() {
            task.abort();
        }
    }
}

/// Resolves the kind's resource, then applies its watch events to the cache, for ever.
async fn run(client: kube::Client, cache: Arc<KindCache>, store: Arc<ContextStore>) {
    let kind = cache.kind().clone();
    let label = kind.to_string();
    let gvk = GroupVersionKind::gvk(kind.group(), kind.version(), &kind.kind);
    let mut backoff = Duration::from_millis(500);
    let resource = loop {
        match kube::discovery::pinned_kind(&client, &gvk).await {
            Ok((resource, _)) => break resource,
            Err(e) => {
                tracing::warn!(kind = %label, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot find the kind's resource on the API server");
                restarted(&store, &label);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut listing = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing = Some(cache.relist()),
            Ok(Event::InitApply(object)) => {
                listing.get_or_insert_with(|| cache.relist()).apply(to_value(object, &kind))
            }
            Ok(Event::InitDone) => {
                let first = !cache.is_synced();
                cache.finish(listing.take().unwrap_or_else(|| cache.relist()));
                if first {
                    tracing::info!(kind = %label, objects = cache.len(), "context cache synced");
                }
            }
            Ok(Event::Apply(object)) => cache.apply(to_value(object, &kind)),
            Ok(Event::Delete(object)) => cache.delete(&to_value(object, &kind)),
            Err(e) => {
                tracing::warn!(kind = %label, error = %e, "watch failed; serving the last state while it re-lists with backoff");
                restarted(&store, &label);
            }
        }
        if let Some(metrics) = store.metrics() {
            metrics.context_objects(&label, cache.len(), cache.is_synced());
        }
    }
}

fn restarted(store: &ContextStore, kind: &str) {
    if let Some(metrics) = store.metrics() {
        metrics.watch_restart(kind);
    }
}

/// The object as lookups return it: `managedFields` dropped, `apiVersion`
/// and `kind` set (list items may come without them).
fn to_value(mut object: DynamicObject, kind: &Kind) -> Value {
    object.metadata.managed_fields = None;
    let mut value = serde_json::to_value(&object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(kind.api_version.clone()));
        map.insert("kind".into(), Value::String(kind.kind.clone()));
    }
    value
}
