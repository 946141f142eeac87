//! Context for context-aware policies: in-memory caches of the kinds that
//! policies are granted (`context:` in the config), and the answers to their
//! lookups.
//!
//! A [`ContextStore`] holds one [`KindCache`] per granted kind. In `serve`
//! the caches are filled and kept current by watches ([`watch`]); offline
//! (`run --context`, tests, benchmarks) from a file of objects. Either way a
//! lookup is answered from memory: no API call per admission request.
//!
//! Each object is kept as the JSON text a lookup returns (with
//! `managedFields` stripped), so an answer costs a copy, not a
//! re-serialization; its labels are kept parsed for label selectors; and
//! every JSON Pointer that lookups filter on (`fields`) gets an index from
//! value to objects the first time it is asked for, maintained on every
//! change after that (at most [`MAX_INDEXES`] per kind; further pointers are
//! read from the candidates' JSON). Matching is the SDK's
//! [`Query::matches`], the code the policies' native test double uses.

pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use portcullis_sdk::lookup::{Checked, Query};
use serde::Deserialize;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::runtime::LookupHandler;

/// Most field indexes kept per kind; pointers beyond are read from the
/// candidates' JSON (bounded memory whatever pointers policies ask for).
pub const MAX_INDEXES: usize = 16;
/// Most lookups answered in one evaluation; later ones get an error.
pub const MAX_LOOKUPS_PER_EVALUATION: u32 = 64;

/// A kind policies may be granted: `apiVersion` and `kind`, as in objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kind {
    /// `group/version`, or `v1` for the core group.
    pub api_version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
}

impl Kind {
    /// `apiVersion` and `kind`.
    pub fn new(api_version: impl Into<String>, kind: impl Into<String>) -> Self {
        Self { api_version: api_version.into(), kind: kind.into() }
    }

    /// The API group (empty for the core group).
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(group, _)| group)
    }

    /// The version.
    pub fn version(&self) -> &str {
        self.api_version.rsplit_once('/').map_or(self.api_version.as_str(), |(_, version)| version)
    }

    /// The grant of every kind, which no config can spell (configs are
    /// checked for real kinds): the case runner's default, as the SDK's
    /// native test double. A kind with no objects then finds nothing.
    pub fn any() -> Self {
        Self::new("*", "*")
    }

    /// Whether this is [`Kind::any`].
    pub fn is_any(&self) -> bool {
        self.api_version == "*" && self.kind == "*"
    }

    /// The kind of an object, from its `apiVersion` and `kind`.
    pub fn of(object: &Value) -> Option<Self> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        Some(Self::new(api_version, kind))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version, self.kind)
    }
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
type Key = (String, String);

/// One cached object.
#[derive(Debug)]
struct Entry {
    /// The object as a lookup returns it.
    json: Arc<str>,
    /// Its labels.
    labels: BTreeMap<String, String>,
}

/// Objects of one JSON Pointer's string value, and back.
#[derive(Debug, Default)]
struct FieldIndex {
    pointer: String,
    by_value: HashMap<String, HashSet<Key>>,
    by_key: HashMap<Key, String>,
}

impl FieldIndex {
    fn insert(&mut self, key: &Key, object: &Value) {
        if let Some(value) = object.pointer(&self.pointer).and_then(Value::as_str) {
            self.by_value.entry(value.to_owned()).or_default().insert(key.clone());
            self.by_key.insert(key.clone(), value.to_owned());
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(value) = self.by_key.remove(key)
            && let Some(keys) = self.by_value.get_mut(&value)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_value.remove(&value);
            }
        }
    }
}

/// The objects of one kind, with their indexes.
#[derive(Debug, Default)]
struct KindState {
    objects: HashMap<Key, Entry>,
    by_namespace: HashMap<String, HashSet<Key>>,
    indexes: Vec<FieldIndex>,
}

impl KindState {
    fn upsert(&mut self, mut object: Value) {
        let Some(key) = key_of(&object) else { return };
        self.remove(&key);
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        for index in &mut self.indexes {
            index.insert(&key, &object);
        }
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|l| l.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
            .unwrap_or_default();
        self.by_namespace.entry(key.0.clone()).or_default().insert(key.clone());
        self.objects.insert(key, Entry { json: object.to_string().into(), labels });
    }

    fn remove(&mut self, key: &Key) {
        if self.objects.remove(key).is_none() {
            return;
        }
        if let Some(keys) = self.by_namespace.get_mut(&key.0) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_namespace.remove(&key.0);
            }
        }
        for index in &mut self.indexes {
            index.remove(key);
        }
    }

    /// An empty state with the same indexed pointers.
    fn fresh(&self) -> Self {
        Self {
            indexes: self
                .indexes
                .iter()
                .map(|i| FieldIndex { pointer: i.pointer.clone(), ..Default::default() })
                .collect(),
            ..Self::default()
        }
    }

    fn has_index(&self, pointer: &str) -> bool {
        self.indexes.iter().any(|i| i.pointer == pointer)
    }

    /// Adds an index on `pointer`, reading it from every cached object.
    fn add_index(&mut self, pointer: &str) {
        let mut index = FieldIndex { pointer: pointer.to_owned(), ..Default::default() };
        for (key, entry) in &self.objects {
            if let Ok(object) = serde_json::from_str::<Value>(&entry.json) {
                index.insert(key, &object);
            }
        }
        self.indexes.push(index);
    }

    /// The JSON of every object that `query` selects.
    fn select(&self, query: &Query, checked: &Checked) -> Vec<Arc<str>> {
        let namespace = query.namespace.as_deref();
        let candidates: Box<dyn Iterator<Item = &Key>> = if let Some(name) = query.name.as_deref() {
            match namespace {
                Some(ns) => {
                    let key = (ns.to_owned(), name.to_owned());
                    Box::new(self.objects.get_key_value(&key).map(|(k, _)| k).into_iter())
                }
                None => Box::new(self.objects.keys().filter(move |k| k.1 == name)),
            }
        } else if let Some(keys) = self.smallest_index_set(query) {
            Box::new(keys.iter())
        } else if let Some(ns) = namespace {
            Box::new(self.by_namespace.get(ns).into_iter().flatten())
        } else {
            Box::new(self.objects.keys())
        };
        let mut items: Vec<(&Key, Arc<str>)> = candidates
            .filter_map(|key| {
                let entry = self.objects.get(key)?;
                let view = View { state: self, key, entry, parsed: std::cell::OnceCell::new() };
                query.matches_candidate(checked, &view).then(|| (key, entry.json.clone()))
            })
            .collect();
        // A stable order (namespace, name), as the API server lists.
        items.sort_unstable_by(|a, b| a.0.cmp(b.0));
        items.into_iter().map(|(_, json)| json).collect()
    }

    /// The smallest set of keys an indexed field of `query` allows.
    fn smallest_index_set(&self, query: &Query) -> Option<&HashSet<Key>> {
        static EMPTY: std::sync::LazyLock<HashSet<Key>> = std::sync::LazyLock::new(HashSet::new);
        query
            .fields
            .iter()
            .filter_map(|(pointer, value)| {
                let index = self.indexes.iter().find(|i| i.pointer == *pointer)?;
                Some(index.by_value.get(value).unwrap_or(&EMPTY))
            })
            .min_by_key(|keys| keys.len())
    }
}

/// A cached object as [`Query::matches_candidate`] sees it.
struct View<'a> {
    state: &'a KindState,
    key: &'a Key,
    entry: &'a Entry,
    parsed: std::cell::OnceCell<Option<Value>>,
}

impl portcullis_sdk::lookup::Candidate for View<'_> {
    fn namespace(&self) -> &str {
        &self.key.0
    }

    fn name(&self) -> &str {
        &self.key.1
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.entry.labels.get(key).map(String::as_str)
    }

    fn field(&self, pointer: &str) -> Option<&str> {
        if let Some(index) = self.state.indexes.iter().find(|i| i.pointer == pointer) {
            return index.by_key.get(self.key).map(String::as_str);
        }
        let parsed = self.parsed.get_or_init(|| serde_json::from_str(&self.entry.json).ok());
        parsed.as_ref()?.pointer(pointer)?.as_str()
    }
}

fn key_of(object: &Value) -> Option<Key> {
    let meta = object.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_owned();
    let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or_default().to_owned();
    Some((namespace, name))
}

/// The cached objects of one kind.
#[derive(Debug)]
pub struct KindCache {
    kind: Kind,
    state: RwLock<KindState>,
    synced: AtomicBool,
}

impl KindCache {
    fn new(kind: Kind) -> Self {
        Self { kind, state: RwLock::new(KindState::default()), synced: AtomicBool::new(false) }
    }

    /// The kind cached.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// Whether the cache has listed its kind once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Number of objects cached.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// True when no object is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces an object.
    pub fn apply(&self, object: Value) {
        self.write().upsert(object);
    }

    /// Removes an object.
    pub fn delete(&self, object: &Value) {
        if let Some(key) = key_of(object) {
            self.write().remove(&key);
        }
    }

    /// Replaces every object (a fresh list) and marks the cache synced.
    pub fn replace(&self, objects: Vec<Value>) {
        let mut listing = self.relist();
        for object in objects {
            listing.apply(object);
        }
        self.finish(listing);
    }

    /// Starts a fresh list of the kind, built beside the served state (which
    /// keeps answering) one object at a time, so a list of thousands of
    /// objects never exists as parsed values all at once.
    pub fn relist(&self) -> Listing {
        Listing(self.read().fresh())
    }

    /// Serves a finished list and marks the cache synced.
    pub fn finish(&self, listing: Listing) {
        *self.write() = listing.0;
        self.synced.store(true, Ordering::Release);
    }

    /// Answers a checked query.
    fn select(&self, query: &Query, checked: &Checked) -> Vec<Arc<str>> {
        let missing: Vec<&String> = {
            let state = self.read();
            let room = MAX_INDEXES.saturating_sub(state.indexes.len());
            query.fields.keys().filter(|p| !state.has_index(p)).take(room).collect()
        };
        if !missing.is_empty() {
            let mut state = self.write();
            for pointer in missing {
                if !state.has_index(pointer) && state.indexes.len() < MAX_INDEXES {
                    state.add_index(pointer);
                }
            }
        }
        self.read().select(query, checked)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KindState> {
        // A writer that panicked left consistent data (every update is one
        // map operation at a time); keep serving it.
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KindState> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A list of one kind being built ([`KindCache::relist`]).
#[derive(Debug)]
pub struct Listing(KindState);

impl Listing {
    /// Adds an object (kept as JSON at once).
    pub fn apply(&mut self, object: Value) {
        self.0.upsert(object);
    }
}

/// The caches of every watched kind.
#[derive(Debug, Default)]
pub struct ContextStore {
    kinds: RwLock<BTreeMap<Kind, Arc<KindCache>>>,
    metrics: Option<Arc<Metrics>>,
}

impl ContextStore {
    /// An empty store (lookups of any kind find nothing to look up).
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self { kinds: RwLock::default(), metrics }
    }

    /// A store answering from `objects`, every kind synced: the kinds of
    /// the objects and `kinds` (empty when the file has none of them).
    pub fn offline(objects: Vec<Value>, kinds: &[Kind]) -> Self {
        let store = Self::new(None);
        store.fill(objects, kinds);
        store
    }

    /// Replaces the caches of the objects' kinds and of `kinds` (empty when
    /// `objects` has none of them) with `objects`, all synced.
    pub fn fill(&self, objects: impl IntoIterator<Item = Value>, kinds: &[Kind]) {
        let mut listings: BTreeMap<Kind, Listing> = kinds.iter().map(|k| (k.clone(), self.cache(k).relist())).collect();
        for object in objects {
            let Some(kind) = Kind::of(&object) else { continue };
            listings.entry(kind.clone()).or_insert_with(|| self.cache(&kind).relist()).apply(object);
        }
        for (kind, listing) in listings {
            self.cache(&kind).finish(listing);
        }
        self.update_metrics();
    }

    /// Fills the store from a file of objects (see [`ContextStore::fill`]):
    /// a JSON `List` is read one item at a time; other files are YAML
    /// documents or a `kind: List`. Returns the number of objects.
    pub fn fill_from_file(&self, path: &std::path::Path, kinds: &[Kind]) -> Result<usize, String> {
        #[derive(Deserialize)]
        struct RawList {
            #[serde(default)]
            kind: String,
            #[serde(default)]
            items: Vec<Box<serde_json::value::RawValue>>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let invalid = |e: String| format!("{} is not a file of objects: {e}", path.display());
        if text.trim_start().starts_with('{')
            && let Ok(list) = serde_json::from_str::<RawList>(&text)
            && list.kind.ends_with("List")
        {
            // One item at a time: a list of thousands never exists as values all at once.
            let count = list.items.len();
            let mut bad = None;
            let objects =
                list.items.iter().enumerate().filter_map(|(i, raw)| match serde_json::from_str::<Value>(raw.get()) {
                    Ok(object) if Kind::of(&object).is_some() && key_of(&object).is_some() => Some(object),
                    _ => {
                        bad.get_or_insert(i);
                        None
                    }
                });
            self.fill(objects, kinds);
            return match bad {
                Some(i) => Err(invalid(format!("items[{i}] is not an object with apiVersion, kind and metadata.name"))),
                None => Ok(count),
            };
        }
        let objects = portcullis_sdk::lookup::objects_from_yaml(&text).map_err(invalid)?;
        let count = objects.len();
        self.fill(objects, kinds);
        Ok(count)
    }

    /// The cache of `kind`, created (unsynced) if new.
    pub fn cache(&self, kind: &Kind) -> Arc<KindCache> {
        if let Some(cache) = self.get(kind) {
            return cache;
        }
        let mut kinds = self.kinds.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        kinds.entry(kind.clone()).or_insert_with(|| Arc::new(KindCache::new(kind.clone()))).clone()
    }

    /// The cache of `kind`, if it is watched.
    pub fn get(&self, kind: &Kind) -> Option<Arc<KindCache>> {
        self.kinds.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(kind).cloned()
    }

    /// Drops the caches of kinds not in `keep`.
    pub fn retain(&self, keep: &[Kind]) {
        let mut kinds = self.kinds.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        kinds.retain(|k, _| keep.contains(k));
    }

    /// The kinds whose caches have not listed yet, for `/readyz`.
    pub fn unsynced(&self) -> Vec<Kind> {
        let kinds = self.kinds.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        kinds.values().filter(|c| !c.is_synced()).map(|c| c.kind.clone()).collect()
    }

    /// Every cache.
    pub fn caches(&self) -> Vec<Arc<KindCache>> {
        self.kinds.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }

    /// Answers one lookup of `policy`, which is granted `granted`. Returns
    /// the answer JSON and the result label of the lookup metric.
    pub fn lookup(&self, granted: &[Kind], query: &[u8]) -> (Vec<u8>, &'static str) {
        self.lookup_within(granted, query, usize::MAX)
    }

    /// [`ContextStore::lookup`], refusing answers over `max_bytes` (a policy's
    /// memory limit: an answer it could not hold is not built at all).
    pub fn lookup_within(&self, granted: &[Kind], query: &[u8], max_bytes: usize) -> (Vec<u8>, &'static str) {
        let query: Query = match serde_json::from_slice(query) {
            Ok(q) => q,
            Err(e) => return (error_answer(&format!("invalid lookup query: {e}")), "invalid"),
        };
        let kind = Kind::new(query.api_version.clone(), query.kind.clone());
        let any = granted.iter().any(Kind::is_any);
        if !any && !granted.contains(&kind) {
            let grants = if granted.is_empty() {
                "it is granted no kinds".to_string()
            } else {
                format!("it is granted {}", granted.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            };
            return (
                error_answer(&format!(
                    "{kind} is not granted to this policy ({grants}; add it to the policy's `context:`)"
                )),
                "refused",
            );
        }
        let checked = match query.check() {
            Ok(c) => c,
            Err(e) => return (error_answer(&e.error), "invalid"),
        };
        let Some(cache) = self.get(&kind) else {
            if any {
                return (b"{\"items\":[]}".to_vec(), "ok");
            }
            return (error_answer(&format!("{kind} is not watched (is the policy set still loading?)")), "unsynced");
        };
        if !cache.is_synced() {
            return (error_answer(&format!("the cache of {kind} has not synced with the API server yet")), "unsynced");
        }
        let items = cache.select(&query, &checked);
        let size = 12 + items.iter().map(|i| i.len() + 1).sum::<usize>();
        if size > max_bytes {
            let message = format!(
                "the answer would hold {} objects, {size} bytes: over the policy's memory limit of {max_bytes} bytes; \
                 narrow the query (namespace, name, labelSelector, fields)",
                items.len()
            );
            return (error_answer(&message), "too_large");
        }
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(b"{\"items\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item.as_bytes());
        }
        out.extend_from_slice(b"]}");
        (out, "ok")
    }

    /// The lookup handler of one policy.
    pub fn for_policy(self: &Arc<Self>, policy: &str, granted: Vec<Kind>, max_bytes: usize) -> Arc<dyn LookupHandler> {
        Arc::new(PolicyContext { policy: policy.to_owned(), granted, max_bytes, store: self.clone() })
    }

    /// Publishes object counts and sync state.
    pub fn update_metrics(&self) {
        let Some(metrics) = &self.metrics else { return };
        for cache in self.caches() {
            let label = cache.kind.to_string();
            metrics.context_objects(&label, cache.len(), cache.is_synced());
        }
    }

    pub(crate) fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }
}

fn error_answer(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

/// What one policy may look up.
#[derive(Debug)]
struct PolicyContext {
    policy: String,
    granted: Vec<Kind>,
    max_bytes: usize,
    store: Arc<ContextStore>,
}

impl LookupHandler for PolicyContext {
    fn lookup(&self, query: &[u8]) -> Vec<u8> {
        let (answer, result) = self.store.lookup_within(&self.granted, query, self.max_bytes);
        if let Some(metrics) = self.store.metrics() {
            metrics.lookup(&self.policy, result);
        }
        answer
    }
}

#[cfg(test)]
mod tests;
