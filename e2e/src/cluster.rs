//! A connection to the cluster under test, whichever backend runs it: objects
//! are written as YAML/JSON values and resolved through API discovery, so a
//! case can send any kind the API server serves. The request under test goes
//! out as a raw HTTP request, so its status, body and `Warning` headers are all
//! seen as the API server sent them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Scope;
use kube::{Client, Resource as _};
use serde_json::Value;

use crate::case::ObjectId;
use crate::metrics::WebhookMetrics;

/// Environment variable naming the kubeconfig of the cluster under test.
pub const KUBECONFIG_ENV: &str = "PORTCULLIS_E2E_KUBECONFIG";

/// Field manager of everything this suite writes.
pub const FIELD_MANAGER: &str = "portcullis-e2e";

/// Errors talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig was named.
    #[error("set {KUBECONFIG_ENV} to the kubeconfig of the cluster under test (`cargo xtask e2e` does)")]
    NoKubeconfig,
    /// The kubeconfig could not be read or used.
    #[error("loading kubeconfig {path}")]
    Kubeconfig {
        /// Kubeconfig file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A client could not be built from the kubeconfig.
    #[error("building a client from {path}")]
    Client {
        /// Kubeconfig file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer `/readyz` with `ok` in time.
    #[error("the API server was not ready after {0:?}: {1}")]
    NotReady(Duration, String),
    /// The API server serves no resource for an object's apiVersion and kind.
    #[error("{id}: the API server serves no {gvk} (missing CRD?)")]
    UnknownKind {
        /// The object.
        id: ObjectId,
        /// What was looked up.
        gvk: String,
        /// What discovery said.
        #[source]
        source: kube::Error,
    },
    /// A request the suite relies on failed.
    #[error("{action} {id}")]
    Request {
        /// What was being done (`creating`, `deleting`, ...).
        action: &'static str,
        /// The object.
        id: ObjectId,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Any other API call failed.
    #[error("{0}")]
    Api(&'static str, #[source] kube::Error),
    /// An object could not be encoded or decoded.
    #[error("{0}")]
    Json(&'static str, #[source] serde_json::Error),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cluster under test.
pub struct Cluster {
    client: Client,
    resources: Mutex<HashMap<(String, String), (ApiResource, bool)>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

/// The kind of request under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// POST.
    Create,
    /// PUT.
    Update,
}

/// The API server's answer to a request, as sent.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The decoded body: the stored object, or a `Status` on failure.
    pub body: Value,
    /// The values of the `Warning` headers.
    pub warnings: Vec<String>,
}

impl Response {
    /// Whether the request succeeded.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `message` of a `Status` body (empty when there is none).
    pub fn message(&self) -> &str {
        self.body.get("message").and_then(Value::as_str).unwrap_or_default()
    }
}

impl Cluster {
    /// Connects to the cluster named by [`KUBECONFIG_ENV`].
    pub async fn from_env() -> Result<Self> {
        let path = std::env::var_os(KUBECONFIG_ENV).filter(|p| !p.is_empty()).ok_or(Error::NoKubeconfig)?;
        Self::from_kubeconfig(Path::new(&path)).await
    }

    /// Connects with the current context of a kubeconfig file.
    pub async fn from_kubeconfig(path: &Path) -> Result<Self> {
        let kubeconfig =
            Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig { path: path.into(), source })?;
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig { path: path.into(), source })?;
        config.read_timeout = Some(Duration::from_secs(60));
        let client = Client::try_from(config).map_err(|source| Error::Client { path: path.into(), source })?;
        Ok(Self { client, resources: Mutex::new(HashMap::new()) })
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Waits until `/readyz` answers `ok`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.get_text("/readyz").await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                return Err(Error::NotReady(timeout, last));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn get_text(&self, path: &str) -> Result<String> {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Api("building a request", kube::Error::HttpError(e)))?;
        self.client.request_text(request).await.map_err(|e| Error::Api("GET", e))
    }

    /// Scrapes the API server's admission-webhook metrics.
    pub async fn webhook_metrics(&self) -> Result<WebhookMetrics> {
        let text = self.get_text("/metrics").await?;
        Ok(WebhookMetrics::parse(&text))
    }

    /// Finds the resource serving an object's apiVersion and kind; the bool is
    /// whether it is namespaced.
    pub async fn resolve(&self, object: &Value) -> Result<(ApiResource, bool)> {
        let id = ObjectId::of(object);
        let key = (id.api_version.clone(), id.kind.clone());
        if let Some(found) = self.resources.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(found);
        }
        let (group, version) = id.api_version.rsplit_once('/').unwrap_or(("", &id.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &id.kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk).await.map_err(|source| {
            Error::UnknownKind { gvk: format!("{}/{}", id.api_version, id.kind), id: id.clone(), source }
        })?;
        let found = (resource, caps.scope == Scope::Namespaced);
        if let Ok(mut m) = self.resources.lock() {
            m.insert(key, found.clone());
        }
        Ok(found)
    }

    /// An API for the object's kind in its namespace (or `default_ns` when it names none).
    async fn api_for(&self, object: &Value, default_ns: &str) -> Result<(Api<DynamicObject>, ObjectId)> {
        let (resource, namespaced) = self.resolve(object).await?;
        let mut id = ObjectId::of(object);
        let api = if namespaced {
            if id.namespace.is_empty() {
                id.namespace = default_ns.to_owned();
            }
            Api::namespaced_with(self.client.clone(), &id.namespace, &resource)
        } else {
            id.namespace.clear();
            Api::all_with(self.client.clone(), &resource)
        };
        Ok((api, id))
    }

    /// Creates or updates an object by server-side apply; with `dry_run` the
    /// API server runs everything (admission included) but stores nothing.
    pub async fn apply(&self, object: &Value, default_ns: &str, dry_run: bool) -> Result<DynamicObject> {
        let (api, id) = self.api_for(object, default_ns).await?;
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        if dry_run {
            params = params.dry_run();
        }
        api.patch(&id.name, &params, &Patch::Apply(object)).await.map_err(|source| Error::Request {
            action: if dry_run { "dry-run applying" } else { "applying" },
            id,
            source,
        })
    }

    /// Creates an object (refusing to overwrite one that exists).
    pub async fn create(&self, object: &Value, default_ns: &str) -> Result<DynamicObject> {
        let (api, id) = self.api_for(object, default_ns).await?;
        let object: DynamicObject =
            serde_json::from_value(object.clone()).map_err(|e| Error::Json("decoding an object", e))?;
        let params = PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) };
        api.create(&params, &object).await.map_err(|source| Error::Request { action: "creating", id, source })
    }

    /// Reads an object back.
    pub async fn get(&self, object: &Value, default_ns: &str) -> Result<Value> {
        let (api, id) = self.api_for(object, default_ns).await?;
        let found = api.get(&id.name).await.map_err(|source| Error::Request { action: "reading", id, source })?;
        serde_json::to_value(found).map_err(|e| Error::Json("encoding an object", e))
    }

    /// Deletes an object; one that is already gone is fine.
    pub async fn delete(&self, object: &Value, default_ns: &str) -> Result<()> {
        let (api, id) = self.api_for(object, default_ns).await?;
        match api.delete(&id.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(Error::Request { action: "deleting", id, source }),
        }
    }

    /// Lists the names of the objects of a kind (cluster-wide) matching a label selector.
    pub async fn list_names(&self, api_version: &str, kind: &str, selector: &str) -> Result<Vec<String>> {
        let probe = serde_json::json!({"apiVersion": api_version, "kind": kind});
        let (resource, _) = self.resolve(&probe).await?;
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let list = api
            .list(&kube::api::ListParams::default().labels(selector))
            .await
            .map_err(|e| Error::Api("listing objects", e))?;
        Ok(list.items.into_iter().filter_map(|o| o.metadata.name).collect())
    }

    /// The objects of a kind in one namespace matching a label selector.
    pub async fn list_in(&self, api_version: &str, kind: &str, namespace: &str, selector: &str) -> Result<Vec<Value>> {
        let probe = serde_json::json!({"apiVersion": api_version, "kind": kind});
        let (resource, _) = self.resolve(&probe).await?;
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
        let list = api
            .list(&kube::api::ListParams::default().labels(selector))
            .await
            .map_err(|e| Error::Api("listing objects", e))?;
        let mut objects = Vec::with_capacity(list.items.len());
        for object in list.items {
            objects.push(serde_json::to_value(object).map_err(|e| Error::Json("encoding an object", e))?);
        }
        Ok(objects)
    }

    /// Sends the request under test as raw HTTP: `verb` of `object`, optionally
    /// as a dry run, and returns the answer whatever its status.
    pub async fn send(&self, verb: Verb, object: &Value, default_ns: &str, dry_run: bool) -> Result<Response> {
        let (resource, namespaced) = self.resolve(object).await?;
        let mut id = ObjectId::of(object);
        let mut object = object.clone();
        if namespaced && id.namespace.is_empty() {
            id.namespace = default_ns.to_owned();
            object["metadata"]["namespace"] = Value::String(id.namespace.clone());
        }
        let ns = namespaced.then_some(id.namespace.as_str());
        let request = kube::core::Request::new(DynamicObject::url_path(&resource, ns));
        let body = serde_json::to_vec(&object).map_err(|e| Error::Json("encoding an object", e))?;
        let params = PostParams { dry_run, field_manager: Some(FIELD_MANAGER.into()) };
        let built = match verb {
            Verb::Create => request.create(&params, body),
            Verb::Update => request.replace(&id.name, &params, body),
        }
        .map_err(|e| Error::Api("building a request", kube::Error::BuildRequest(e)))?;
        let response = self
            .client
            .send(built.map(kube::client::Body::from))
            .await
            .map_err(|source| Error::Request { action: "sending", id: id.clone(), source })?;
        let status = response.status().as_u16();
        let warnings = response
            .headers()
            .get_all(http::header::WARNING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let bytes = response.into_body().collect_bytes().await.map_err(|source| Error::Request {
            action: "reading the answer to",
            id,
            source,
        })?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Response { status, body, warnings })
    }
}
