//! Reloading the policy config and its modules without a restart.
//!
//! On SIGHUP, and whenever a poll finds that the config file or any module it
//! names changed, the new config is loaded into a complete new [`PolicySet`]
//! (compiled, ABI-checked, settings validated) and only then swapped in. A bad
//! new config leaves the old set serving; the failure is logged and counted.
//!
//! A poll first compares the files' metadata (size, mtime, ctime, inode);
//! only when one differs are the files read and hashed, and all of that file
//! work runs on the blocking pool, never on an async worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{Budget, Config};
use crate::context::watch::ContextSource;
use crate::policy::{PolicySet, Sources};
use crate::runtime::Runtime;
use crate::server::AppState;

/// Watches one config file and swaps the served policy set when it changes.
#[derive(Debug)]
pub struct ConfigWatcher {
    path: PathBuf,
    runtime: Arc<Runtime>,
    state: Arc<AppState>,
    watches: Arc<ContextSource>,
    budget: Budget,
    sources: Sources,
    seen: Fingerprint,
}

/// What a poll compares: the files' metadata, and the hash of their contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fingerprint {
    /// The config, then every module it names, with their metadata (`None`: unreadable).
    stamps: Vec<(PathBuf, Option<Stamp>)>,
    hash: [u8; 32],
}

/// File metadata that changes whenever the contents do (a symlink swap of a
/// mounted ConfigMap changes the inode; an in-place write, mtime and ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    ctime: (i64, i64),
    #[cfg(unix)]
    inode: (u64, u64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt as _;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        ctime: (meta.ctime(), meta.ctime_nsec()),
        #[cfg(unix)]
        inode: (meta.dev(), meta.ino()),
    })
}

/// Longest wait for the caches of newly granted kinds before a reload gives up (and retries at the next poll).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

impl ConfigWatcher {
    /// Starts from the config currently served; `watches` fills `state`'s
    /// context caches for the kinds the configs grant; a new config must fit `budget`.
    pub async fn new(
        path: &Path,
        runtime: Arc<Runtime>,
        state: Arc<AppState>,
        watches: Arc<ContextSource>,
        budget: Budget,
    ) -> Self {
        let seen = poll(path.to_owned(), Fingerprint::default()).await;
        Self { path: path.to_owned(), runtime, state, watches, budget, sources: Sources::default(), seen }
    }

    /// Fetches `oci://` modules through `sources` (default: the system
    /// roots, no credentials, no cache).
    #[must_use]
    pub fn with_sources(mut self, sources: Sources) -> Self {
        self.sources = sources;
        self
    }

    /// Reloads if anything changed (or always, when `force`). `Ok(true)` when
    /// a new set is now served.
    pub async fn reload(&mut self, force: bool) -> anyhow::Result<bool> {
        let now = poll(self.path.clone(), self.seen.clone()).await;
        if now.hash == self.seen.hash && !force {
            self.seen = now; // metadata may have moved (touch) without a change
            return Ok(false);
        }
        // Remember this version even if it fails, so one bad edit is reported once.
        let previous = std::mem::replace(&mut self.seen, now);
        let path = self.path.clone();
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| anyhow::anyhow!("config task failed: {e}"))??;
        config.check_budget(self.budget)?;
        let kinds = config.granted_kinds();
        // New kinds are watched (and synced) before the set that looks them up
        // serves; kinds only the old set needs stay until the swap.
        self.watches.watch(&kinds).await?;
        if let Err(unsynced) = self.watches.wait_synced(&kinds, SYNC_TIMEOUT).await {
            self.seen = previous; // retried at the next poll
            let kinds: Vec<String> = unsynced.iter().map(ToString::to_string).collect();
            anyhow::bail!("the context caches of {} did not sync within {SYNC_TIMEOUT:?}", kinds.join(", "));
        }
        let set = PolicySet::load_from(&self.runtime, &config, &self.state.context, &self.sources).await?;
        self.state.metrics.policies.set(i64::try_from(set.len()).unwrap_or(i64::MAX));
        let names = set.names().join(", ");
        let old = self.state.policies.swap(Arc::new(set));
        let served = self.state.policies.load();
        for gone in old.names().into_iter().filter(|name| served.get(name).is_none()) {
            self.state.metrics.forget_policy(gone);
        }
        self.watches.unwatch_others(&kinds);
        self.state.set_load_error(None);
        tracing::info!(config = %self.path.display(), policies = %names, "policy config reloaded");
        Ok(true)
    }

    /// Reloads on SIGHUP (forced) and on every `interval` poll that sees a
    /// change; every poll while the policies failed to load at start (a
    /// module pull), until they load.
    pub async fn watch(mut self, interval: Duration) {
        let mut hangup = sighup();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let force = tokio::select! {
                _ = ticker.tick() => false,
                _ = recv(&mut hangup) => true,
            };
            let starting = self.state.load_error().is_some();
            match self.reload(force || starting).await {
                Ok(false) => {}
                Ok(true) => self.state.metrics.reload("config", true),
                Err(e) => {
                    if starting {
                        self.state.set_load_error(Some(format!("{e:#}")));
                    }
                    self.state.metrics.reload("config", false);
                    tracing::error!(config = %self.path.display(), error = format!("{e:#}"), "config reload failed; the previous policies keep serving");
                }
            }
        }
    }
}

/// Fingerprints the config and its modules on the blocking pool: metadata
/// first, and only when it differs from `last`, the contents.
async fn poll(path: PathBuf, last: Fingerprint) -> Fingerprint {
    let fallback = last.clone();
    tokio::task::spawn_blocking(move || {
        let unchanged = !last.stamps.is_empty() && last.stamps.iter().all(|(file, seen)| stamp(file) == *seen);
        if unchanged { last } else { fingerprint(&path) }
    })
    .await
    .unwrap_or(fallback)
}

/// Metadata and hash of the config text and of every module file it names.
fn fingerprint(path: &Path) -> Fingerprint {
    let mut hash = Sha256::new();
    let mut stamps = vec![(path.to_owned(), stamp(path))];
    match std::fs::read(path) {
        Ok(text) => hash.update(&text),
        Err(e) => hash.update(e.to_string()),
    }
    if let Ok(config) = Config::load(path) {
        // An `oci://` module is pinned by digest: the config text covers it.
        for path in config.policies.iter().filter_map(|p| p.module.path()) {
            stamps.push((path.to_owned(), stamp(path)));
            match std::fs::read(path) {
                Ok(bytes) => hash.update(&bytes),
                Err(e) => hash.update(e.to_string()),
            }
        }
    }
    Fingerprint { stamps, hash: hash.finalize().into() }
}

#[cfg(unix)]
fn sighup() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(unix)]
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn sighup() -> Option<()> {
    None
}

#[cfg(not(unix))]
async fn recv(_: &mut Option<()>) {
    std::future::pending().await
}
