//! Wasm policy modules distributed through OCI registries.
//!
//! A module is named by a pinned [`Reference`],
//! `oci://HOST[:PORT]/REPO[:TAG]@sha256:HEX`: the digest is that of the
//! manifest, so the bytes a reference names never change. [`Registry::fetch`]
//! serves a module from the on-disk cache when it is there (no network), and
//! otherwise pulls the manifest by digest, checks it against the pin, picks
//! the one wasm layer, refuses it when its descriptor says it is over
//! [`MAX_MODULE_BYTES`], and checks the downloaded layer against its
//! descriptor's digest before caching it. [`Registry::push`] publishes a
//! module as a CNCF TAG Runtime wasm artifact (config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer).
//!
//! Transport is HTTPS only, trusting the system roots plus an optional CA
//! file. Credentials come from a docker `config.json` (`auths` entries only;
//! credential helpers are not supported); a registry without an entry is
//! accessed anonymously.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::manifest::{IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The largest module [`Registry::fetch`] downloads (and [`Registry::push`] publishes).
pub const MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;

/// Every value of [`OciError::kind`], for metric labels.
pub const ERROR_KINDS: &[&str] = &[
    "reference",
    "unreachable",
    "auth",
    "not_found",
    "digest_mismatch",
    "no_wasm_layer",
    "too_large",
    "cache",
    "config",
    "registry",
];

/// Config media type of a pushed module (CNCF TAG Runtime wasm OCI artifact).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of a pushed module.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Layer media types a fetched module may have: the CNCF one (also what
/// `oras push … policy.wasm:application/wasm` writes), Kubewarden's and the
/// older module one.
pub const ACCEPTED_LAYER_MEDIA_TYPES: &[&str] = &[
    WASM_LAYER_MEDIA_TYPE,
    oci_client::manifest::WASM_LAYER_MEDIA_TYPE,
    "application/vnd.module.wasm.content.layer.v1+wasm",
];

const SCHEME: &str = "oci://";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The config is fixed (no creation time), so one module always publishes
/// to the same manifest digest.
const CREATED: &str = "1970-01-01T00:00:00Z";

/// Errors of references, options, and registry traffic. Each message names
/// the reference (or file) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The text is not a valid module reference or push target.
    #[error("{reference}: {reason}")]
    Reference {
        /// The text as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file named in the options could not be read.
    #[error("reading {path}")]
    ReadFile {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file named in the options does not hold what it should.
    #[error("{path}: {reason}")]
    InvalidFile {
        /// File.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTPS client could not be built from the options.
    #[error("building the registry client: {reason}")]
    Client {
        /// What the client library said.
        reason: String,
    },
    /// The cache directory could not be created.
    #[error("creating the module cache {path}")]
    Cache {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No answer from the registry: DNS, TCP, TLS or a timeout.
    #[error("{reference}: registry unreachable: {cause}")]
    Unreachable {
        /// Module reference or push target.
        reference: String,
        /// What failed.
        cause: String,
    },
    /// The registry wants credentials we do not have, or refused ours.
    #[error("{reference}: not authorized: {cause}")]
    Auth {
        /// Module reference or push target.
        reference: String,
        /// Which credentials were used, and from where.
        cause: String,
    },
    /// The registry has no such repository, manifest or blob.
    #[error("{reference}: not found in the registry: {cause}")]
    NotFound {
        /// Module reference.
        reference: String,
        /// What the registry said.
        cause: String,
    },
    /// Content did not hash to the digest that names it.
    #[error("{reference}: the {what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Module reference.
        reference: String,
        /// `manifest` or `layer`.
        what: &'static str,
        /// The digest that names the content.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The manifest does not hold exactly one wasm layer.
    #[error("{reference}: {reason}")]
    NoWasmLayer {
        /// Module reference.
        reference: String,
        /// What the manifest holds instead.
        reason: String,
    },
    /// The module is over [`MAX_MODULE_BYTES`].
    #[error("{reference}: the module is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Module reference or push target.
        reference: String,
        /// Its size (from its descriptor when fetching).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Any other failure the registry reported, or a malformed answer.
    #[error("{reference}: {cause}")]
    Registry {
        /// Module reference or push target.
        reference: String,
        /// What went wrong.
        cause: String,
    },
}

/// Result type of this module.
pub type Result<T, E = OciError> = std::result::Result<T, E>;

impl OciError {
    /// A short label for metrics: one of [`ERROR_KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Reference { .. } => "reference",
            Self::Unreachable { .. } => "unreachable",
            Self::Auth { .. } => "auth",
            Self::NotFound { .. } => "not_found",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::NoWasmLayer { .. } => "no_wasm_layer",
            Self::TooLarge { .. } => "too_large",
            Self::Cache { .. } => "cache",
            Self::ReadFile { .. } | Self::InvalidFile { .. } | Self::Client { .. } => "config",
            Self::Registry { .. } => "registry",
        }
    }
}

/// Whether a policy's `module` names an OCI reference rather than a file.
pub fn is_oci(module: &str) -> bool {
    module.starts_with(SCHEME)
}

/// A pinned module reference: `oci://HOST[:PORT]/REPO[:TAG]@sha256:HEX`.
///
/// The digest is the manifest's; a tag may come along for the reader but is
/// not used to pull.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: String,
}

impl Reference {
    /// The manifest digest, `sha256:<64 hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The registry, `HOST[:PORT]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository within the registry.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag written alongside the pin, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    fn to_client(&self) -> oci_client::Reference {
        oci_client::Reference::with_digest(self.registry.clone(), self.repository.clone(), self.digest.clone())
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(text: &str) -> Result<Self> {
        let fail = |reason: String| OciError::Reference { reference: text.to_owned(), reason };
        let rest = strip_scheme(text).map_err(fail)?;
        let Some((name, digest)) = rest.rsplit_once('@') else {
            let (_, _, tag) = parse_name(rest).map_err(fail)?;
            return Err(fail(match tag {
                Some(_) => "a tag alone is not accepted; pin the module with @sha256:<digest> \
                            (a tag may come along with the pin)"
                    .into(),
                None => "no digest; pin the module with @sha256:<digest>".into(),
            }));
        };
        let (registry, repository, tag) = parse_name(name).map_err(fail)?;
        check_digest(digest).map_err(fail)?;
        Ok(Self { registry, repository, tag, digest: digest.to_owned() })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        write!(f, "@{}", self.digest)
    }
}

/// A push destination: `oci://HOST[:PORT]/REPO:TAG` (a tag, no digest).
#[derive(Debug, Clone)]
pub struct PushTarget {
    registry: String,
    repository: String,
    tag: String,
}

impl PushTarget {
    /// The registry, `HOST[:PORT]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository within the registry.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag to publish under.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl FromStr for PushTarget {
    type Err = OciError;

    fn from_str(text: &str) -> Result<Self> {
        let fail = |reason: String| OciError::Reference { reference: text.to_owned(), reason };
        let rest = strip_scheme(text).map_err(fail)?;
        if rest.rsplit_once('@').is_some_and(|(_, after)| !after.contains('/')) {
            return Err(fail("a push target takes a tag, not a digest (the push prints the digest to pin)".into()));
        }
        let (registry, repository, tag) = parse_name(rest).map_err(fail)?;
        let Some(tag) = tag else {
            return Err(fail("no tag; a push target is oci://HOST[:PORT]/REPO:TAG".into()));
        };
        Ok(Self { registry, repository, tag })
    }
}

impl fmt::Display for PushTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

fn strip_scheme(text: &str) -> Result<&str, String> {
    text.strip_prefix(SCHEME).ok_or_else(|| format!("not an OCI reference: it must start with {SCHEME}"))
}

/// `HOST[:PORT]/REPO[:TAG]` into its parts.
fn parse_name(name: &str) -> Result<(String, String, Option<String>), String> {
    let (host, path) = name.split_once('/').unwrap_or((name, ""));
    if host.is_empty() {
        return Err("no registry host; expected oci://HOST[:PORT]/REPO".into());
    }
    check_host(host)?;
    let (repository, tag) = match path.rsplit_once(':') {
        Some((repository, tag)) => (repository, Some(tag)),
        None => (path, None),
    };
    if repository.is_empty() {
        return Err("no repository; expected oci://HOST[:PORT]/REPO".into());
    }
    check_repository(repository)?;
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    Ok((host.to_owned(), repository.to_owned(), tag.map(str::to_owned)))
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-']);
    if !name_ok {
        return Err(format!("registry host `{host}` is not a host name or IPv4 address with an optional :PORT"));
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err(format!("registry port `{port}` is not a port number"));
    }
    Ok(())
}

/// Repository path components: lowercase letters and digits, joined by `.`, `_` or `-`.
fn check_repository(repository: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if repository.len() > 255 || !repository.split('/').all(component_ok) {
        return Err(format!(
            "repository `{repository}` is not valid: path components of lowercase letters and digits, \
             separated by `.`, `_` or `-`"
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(format!("tag `{tag}` is not valid: up to 128 letters, digits, `_`, `.` or `-`"));
    }
    Ok(())
}

fn check_digest(digest: &str) -> Result<(), String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!("digest `{digest}` is not accepted: only sha256:<64 lowercase hex digits>"));
    };
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        return Err(format!("digest `{digest}` is not sha256:<64 lowercase hex digits>"));
    }
    Ok(())
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Where modules come from: the CA to trust, the credentials, the cache.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// PEM file of extra CA certificates, trusted besides the system roots.
    pub ca: Option<PathBuf>,
    /// Docker `config.json` holding registry credentials.
    pub auth: Option<PathBuf>,
    /// Cache directory; modules are kept in `<cache>/oci/sha256/<hex>.wasm`
    /// (with their manifests, `<hex>.manifest.json`).
    pub cache: Option<PathBuf>,
}

/// A fetched module.
pub struct Fetched {
    /// The module.
    pub bytes: Vec<u8>,
    /// Whether it came from the cache rather than the registry.
    pub from_cache: bool,
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched").field("bytes", &self.bytes.len()).field("from_cache", &self.from_cache).finish()
    }
}

/// An OCI registry client for wasm modules. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    client: oci_client::Client,
    credentials: Arc<Credentials>,
    /// `<cache>/oci/sha256`, created.
    cache: Option<PathBuf>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("credentials", &self.credentials).field("cache", &self.cache).finish()
    }
}

impl Registry {
    /// Reads the CA file (PEM, one or more certificates) and the docker
    /// config.json now, and creates the cache directory, so mistakes surface
    /// at start with the file named.
    pub fn new(options: &RegistryOptions) -> Result<Self> {
        // reqwest is built without a crypto provider and takes the process
        // default: make it ring, the provider of every TLS endpoint here.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err means another thread installed one first: that one serves.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let extra_root_certificates = match &options.ca {
            Some(path) => read_ca(path)?,
            None => Vec::new(),
        };
        let credentials = match &options.auth {
            Some(path) => Credentials::parse(&read(path)?, path)?,
            None => Credentials::default(),
        };
        let cache = match &options.cache {
            Some(dir) => {
                let dir = dir.join("oci/sha256");
                std::fs::create_dir_all(&dir).map_err(|source| OciError::Cache { path: dir.clone(), source })?;
                Some(dir)
            }
            None => None,
        };
        let config = ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            platform_resolver: None,
            user_agent: concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| OciError::Client { reason: causes(&e) })?;
        Ok(Self { client, credentials: Arc::new(credentials), cache })
    }

    /// Cache first (`<cache>/oci/sha256/<hex>.wasm`, keyed by the pinned
    /// manifest digest; a hit needs no network). Otherwise pulls the manifest
    /// by digest, checks it against the pin, picks the wasm layer, refuses it
    /// when its descriptor says it is over [`MAX_MODULE_BYTES`], pulls it,
    /// checks it against the descriptor's digest and caches it (a cache write
    /// failure is logged, not returned).
    ///
    /// The manifest is cached beside the module (`<hex>.manifest.json`), and
    /// a hit is checked the same way: the manifest against the pin, the module
    /// against the manifest's layer digest. An entry that fails is pulled again.
    pub async fn fetch(&self, reference: &Reference) -> Result<Fetched> {
        let entry = self.cache.as_ref().map(|dir| CacheEntry::new(dir, reference));
        if let Some(entry) = &entry
            && let Some(bytes) = entry.load(reference).await
        {
            return Ok(Fetched { bytes, from_cache: true });
        }
        let name = reference.to_string();
        let image = reference.to_client();
        let auth = self.credentials.auth(reference.registry());
        let (manifest, _) = self
            .client
            .pull_manifest_raw(&image, &auth, &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE])
            .await
            .map_err(|e| self.classify(&name, reference.registry(), e))?;
        let actual = sha256_digest(&manifest);
        if actual != reference.digest {
            return Err(OciError::DigestMismatch {
                reference: name,
                what: "manifest",
                expected: reference.digest.clone(),
                actual,
            });
        }
        let layer =
            wasm_layer(&manifest).map_err(|reason| OciError::NoWasmLayer { reference: name.clone(), reason })?;
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > MAX_MODULE_BYTES {
            return Err(OciError::TooLarge { reference: name, size, limit: MAX_MODULE_BYTES });
        }
        let bytes = self.pull_layer(&name, reference.registry(), &image, &layer, size).await?;
        if let Some(entry) = &entry {
            // The manifest first: a module file without it is not used.
            if store(&entry.manifest, &manifest).await {
                store(&entry.module, &bytes).await;
            }
        }
        Ok(Fetched { bytes, from_cache: false })
    }

    /// Publishes one module under `target`'s tag; returns its pinned
    /// reference, `oci://HOST[:PORT]/REPO@sha256:<manifest digest>`.
    pub async fn push(&self, wasm: &[u8], target: &PushTarget) -> Result<Reference> {
        let name = target.to_string();
        let size = u64::try_from(wasm.len()).unwrap_or(u64::MAX);
        if size > MAX_MODULE_BYTES {
            return Err(OciError::TooLarge { reference: name, size, limit: MAX_MODULE_BYTES });
        }
        let layer_digest = sha256_digest(wasm);
        let config = serde_json::to_vec(&serde_json::json!({
            "created": CREATED,
            "architecture": "wasm",
            "os": "wasip1",
            "layerDigests": [layer_digest],
        }))
        .map_err(|e| OciError::Registry { reference: name.clone(), cause: format!("encoding the config: {e}") })?;
        let descriptor = |media_type: &str, bytes: &[u8], digest: String| OciDescriptor {
            media_type: media_type.to_owned(),
            digest,
            size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
            urls: None,
            annotations: None,
            artifact_type: None,
        };
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
            config: descriptor(WASM_CONFIG_MEDIA_TYPE, &config, sha256_digest(&config)),
            layers: vec![descriptor(WASM_LAYER_MEDIA_TYPE, wasm, layer_digest.clone())],
            ..OciImageManifest::default()
        };
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| OciError::Registry {
            reference: name.clone(),
            cause: format!("encoding the manifest: {e}"),
        })?;

        let image =
            oci_client::Reference::with_tag(target.registry.clone(), target.repository.clone(), target.tag.clone());
        let registry = target.registry();
        let fail = |e| self.classify(&name, registry, e);
        self.client.store_auth_if_needed(image.resolve_registry(), &self.credentials.auth(registry)).await;
        self.client.push_blob(&image, wasm.to_vec(), &layer_digest).await.map_err(fail)?;
        self.client.push_blob(&image, config.clone(), &manifest.config.digest).await.map_err(fail)?;
        self.client
            .push_manifest_raw(
                &image,
                manifest_bytes.clone(),
                axum::http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
            )
            .await
            .map_err(fail)?;
        Ok(Reference {
            registry: target.registry.clone(),
            repository: target.repository.clone(),
            tag: None,
            digest: sha256_digest(&manifest_bytes),
        })
    }

    /// Downloads a layer of `size` bytes (from its descriptor), checking its digest.
    async fn pull_layer(
        &self,
        name: &str,
        registry: &str,
        image: &oci_client::Reference,
        layer: &OciDescriptor,
        size: u64,
    ) -> Result<Vec<u8>> {
        let mut stream =
            self.client.pull_blob_stream(image, layer).await.map_err(|e| self.classify(name, registry, e))?;
        let limit = usize::try_from(size).unwrap_or(usize::MAX);
        let mut bytes = Vec::with_capacity(limit);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // The client checks the digest at the end of the stream too.
                Err(e) => match e.get_ref().and_then(|inner| inner.downcast_ref::<DigestError>()) {
                    Some(DigestError::VerificationError { expected, actual }) => {
                        return Err(OciError::DigestMismatch {
                            reference: name.to_owned(),
                            what: "layer",
                            expected: expected.clone(),
                            actual: actual.clone(),
                        });
                    }
                    _ => return Err(self.classify(name, registry, OciDistributionError::IoError(e))),
                },
            };
            if bytes.len().saturating_add(chunk.len()) > limit {
                return Err(OciError::Registry {
                    reference: name.to_owned(),
                    cause: format!("the wasm layer is longer than the {size} bytes its descriptor declares"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = sha256_digest(&bytes);
        if actual != layer.digest {
            return Err(OciError::DigestMismatch {
                reference: name.to_owned(),
                what: "layer",
                expected: layer.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Sorts a client error into our kinds.
    fn classify(&self, name: &str, registry: &str, error: OciDistributionError) -> OciError {
        use OciDistributionError as E;
        let reference = name.to_owned();
        match &error {
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) | E::ServerError { code: 401 | 403, .. } => {
                OciError::Auth { reference, cause: self.credentials.refusal(registry) }
            }
            E::RegistryError { envelope, .. }
                if has_code(envelope, &[OciErrorCode::Unauthorized, OciErrorCode::Denied]) =>
            {
                OciError::Auth { reference, cause: self.credentials.refusal(registry) }
            }
            E::RegistryError { envelope, .. }
                if has_code(
                    envelope,
                    &[
                        OciErrorCode::ManifestUnknown,
                        OciErrorCode::BlobUnknown,
                        OciErrorCode::NameUnknown,
                        OciErrorCode::NotFound,
                    ],
                ) =>
            {
                OciError::NotFound { reference, cause: envelope_messages(envelope) }
            }
            E::ServerError { code: 404, message, .. } => {
                OciError::NotFound { reference, cause: format!("HTTP 404: {}", excerpt(message)) }
            }
            E::ServerError { code, message, .. } => OciError::Registry {
                reference,
                cause: format!("the registry answered HTTP {code}: {}", excerpt(message)),
            },
            E::RegistryError { envelope, .. } => OciError::Registry {
                reference,
                cause: format!("the registry answered: {}", envelope_messages(envelope)),
            },
            E::DigestError(DigestError::VerificationError { expected, actual }) => OciError::DigestMismatch {
                reference,
                what: "manifest",
                expected: expected.clone(),
                actual: actual.clone(),
            },
            E::RequestError(e) if e.is_connect() || e.is_timeout() => {
                OciError::Unreachable { reference, cause: transport_cause(registry, &error) }
            }
            E::IoError(_) => OciError::Unreachable { reference, cause: transport_cause(registry, &error) },
            _ => OciError::Registry { reference, cause: causes(&error) },
        }
    }
}

fn has_code(envelope: &OciEnvelope, codes: &[OciErrorCode]) -> bool {
    envelope.errors.iter().any(|e| codes.contains(&e.code))
}

fn envelope_messages(envelope: &OciEnvelope) -> String {
    let messages: Vec<String> = envelope
        .errors
        .iter()
        .map(|e| if e.message.is_empty() { format!("{:?}", e.code) } else { format!("{} ({:?})", e.message, e.code) })
        .collect();
    messages.join("; ")
}

/// The start of a response body, for a message.
fn excerpt(body: &str) -> &str {
    let body = body.trim();
    match body.char_indices().nth(200) {
        Some((end, _)) => &body[..end],
        None => body,
    }
}

/// The error and its sources, joined, without repeats.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// What went wrong reaching `registry`: the root cause, and for a TLS
/// failure what to do about it.
fn transport_cause(registry: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut root = error.to_string();
    let mut tls: Option<&rustls::Error> = None;
    let mut next = Some(error);
    while let Some(e) = next {
        root = e.to_string();
        // io::Error::source skips the error it wraps: look inside by hand.
        let mut inner: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(i) = inner {
            tls = tls.or_else(|| i.downcast_ref::<rustls::Error>());
            inner = i.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|b| b as _);
        }
        next = e.source();
    }
    match tls {
        Some(rustls::Error::InvalidCertificate(cert)) => format!(
            "TLS with {registry} failed: its certificate is not trusted or not valid ({cert:?}); \
             if a private CA signed it, give that CA in the registry CA file"
        ),
        Some(tls) => format!("TLS with {registry} failed: {tls}"),
        None => format!("connecting to {registry}: {root}"),
    }
}

/// The one layer of a wasm media type in a manifest.
fn wasm_layer(manifest: &[u8]) -> Result<OciDescriptor, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
    }
    let probe: Probe = serde_json::from_slice(manifest).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    if let Some(media_type) = probe.media_type.filter(|m| m != OCI_IMAGE_MEDIA_TYPE && m != IMAGE_MANIFEST_MEDIA_TYPE) {
        return Err(format!("the digest names a {media_type}, not an image manifest holding a wasm module"));
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(manifest).map_err(|e| format!("the manifest is not an OCI image manifest: {e}"))?;
    let mut wasm = manifest.layers.iter().filter(|l| ACCEPTED_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()));
    match (wasm.next(), wasm.next()) {
        (Some(layer), None) => Ok(layer.clone()),
        (Some(_), Some(_)) => Err("the manifest has more than one wasm layer; a module artifact has one".into()),
        (None, _) => {
            let found: Vec<&str> = manifest.layers.iter().map(|l| l.media_type.as_str()).collect();
            Err(format!(
                "no wasm layer (media type one of {}); the manifest's layers are [{}]",
                ACCEPTED_LAYER_MEDIA_TYPES.join(", "),
                found.join(", ")
            ))
        }
    }
}

/// The two files of a cached module.
struct CacheEntry {
    /// `<hex>.wasm`: the module.
    module: PathBuf,
    /// `<hex>.manifest.json`: the pinned manifest, to check the module against.
    manifest: PathBuf,
}

impl CacheEntry {
    fn new(dir: &Path, reference: &Reference) -> Self {
        let hex = reference.hex();
        Self { module: dir.join(format!("{hex}.wasm")), manifest: dir.join(format!("{hex}.manifest.json")) }
    }

    /// The cached module, when both files are there and check out.
    async fn load(&self, reference: &Reference) -> Option<Vec<u8>> {
        let read = |path: PathBuf| async move {
            match tokio::fs::read(&path).await {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => {
                    tracing::warn!(%reference, path = %path.display(), %error, "module cache unreadable; pulling");
                    None
                }
            }
        };
        let manifest = read(self.manifest.clone()).await?;
        let module = read(self.module.clone()).await?;
        let layer = (sha256_digest(&manifest) == reference.digest).then(|| wasm_layer(&manifest).ok()).flatten();
        if layer.is_some_and(|layer| layer.digest == sha256_digest(&module)) {
            return Some(module);
        }
        tracing::warn!(%reference, path = %self.module.display(), "cached module does not match its pin; pulling");
        None
    }
}

/// Writes a cache file through a temp file and a rename, so readers never
/// see half of it. A failure is logged (the fetch still succeeds): returns
/// whether the file was written.
async fn store(path: &Path, bytes: &[u8]) -> bool {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    let temp = path.with_file_name(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let write = async {
        use tokio::io::AsyncWriteExt as _;
        let mut file = tokio::fs::File::create(&temp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        tokio::fs::rename(&temp, path).await
    };
    match write.await {
        Ok(()) => true,
        Err(error) => {
            let _ = tokio::fs::remove_file(&temp).await;
            tracing::warn!(path = %path.display(), %error, "could not write the module cache; the module is used uncached");
            false
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| OciError::ReadFile { path: path.to_owned(), source })
}

fn read_ca(path: &Path) -> Result<Vec<Certificate>> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| OciError::InvalidFile { path: path.to_owned(), reason: format!("not PEM certificates: {e}") })?;
    if certs.is_empty() {
        return Err(OciError::InvalidFile { path: path.to_owned(), reason: "no CERTIFICATE block".into() });
    }
    Ok(certs.into_iter().map(|der| Certificate { encoding: CertificateEncoding::Der, data: der.to_vec() }).collect())
}

/// Registry credentials from a docker `config.json`.
#[derive(Debug, Default)]
struct Credentials {
    /// The file, for messages.
    file: Option<PathBuf>,
    /// By registry, normalised with [`registry_key`].
    logins: HashMap<String, Login>,
    /// `credsStore`: not supported, named in auth errors.
    store: Option<String>,
    /// `credHelpers`, by registry: not supported, named in auth errors.
    helpers: HashMap<String, String>,
}

struct Login {
    username: String,
    password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login").field("username", &self.username).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Credentials {
    fn parse(text: &[u8], path: &Path) -> Result<Self> {
        let invalid = |reason: String| OciError::InvalidFile { path: path.to_owned(), reason };
        let config: DockerConfig =
            serde_json::from_slice(text).map_err(|e| invalid(format!("not a docker config.json: {e}")))?;
        let mut logins = HashMap::new();
        for (key, entry) in config.auths {
            let login = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                        .ok_or_else(|| invalid(format!("auths.{key}.auth is not base64 of user:password")))?;
                    let (username, password) = decoded
                        .split_once(':')
                        .ok_or_else(|| invalid(format!("auths.{key}.auth is not base64 of user:password")))?;
                    Login { username: username.to_owned(), password: password.to_owned() }
                }
                (_, Some(username), Some(password)) => Login { username, password },
                // `{}` entries: docker writes them when a helper holds the secret.
                _ => continue,
            };
            logins.insert(registry_key(&key), login);
        }
        let helpers = config.cred_helpers.into_iter().map(|(key, helper)| (registry_key(&key), helper)).collect();
        Ok(Self { file: Some(path.to_owned()), logins, store: config.creds_store, helpers })
    }

    fn auth(&self, registry: &str) -> RegistryAuth {
        match self.logins.get(&registry_key(registry)) {
            Some(login) => RegistryAuth::Basic(login.username.clone(), login.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Why the registry said no, as far as our credentials go.
    fn refusal(&self, registry: &str) -> String {
        let key = registry_key(registry);
        let Some(file) = &self.file else {
            return format!("{registry} requires credentials and no docker config.json was given (registry auth file)");
        };
        let file = file.display();
        if let Some(login) = self.logins.get(&key) {
            return format!("{registry} refused user `{}` from {file}", login.username);
        }
        if let Some(helper) = self.helpers.get(&key) {
            return format!(
                "{file} names credential helper `{helper}` for {registry} (credHelpers), which is not supported; \
                 put the credentials under `auths`"
            );
        }
        match &self.store {
            Some(store) => format!(
                "no credentials for {registry} in {file}; its credsStore `{store}` is not supported, \
                 put the credentials under `auths`"
            ),
            None => format!("no credentials for {registry} in {file}"),
        }
    }
}

/// A docker config key or registry as `host[:port]`: no scheme, no path,
/// lowercase, with Docker Hub's aliases folded into `docker.io`.
fn registry_key(key: &str) -> String {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn reference(text: &str) -> Result<Reference> {
        text.parse()
    }

    fn reason(result: Result<impl fmt::Debug>) -> String {
        match result {
            Ok(value) => panic!("accepted: {value:?}"),
            Err(e) => {
                assert_eq!(e.kind(), "reference", "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn pinned_references_parse_and_round_trip() {
        for text in [
            format!("oci://registry.example.com/policies/ingress-tls@sha256:{HEX}"),
            format!("oci://127.0.0.1:5000/ingress-tls:v1.2.0@sha256:{HEX}"),
            format!("oci://localhost/a/b/c_d.e-f:latest@sha256:{HEX}"),
        ] {
            let parsed = reference(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.digest(), format!("sha256:{HEX}"));
        }
        let parsed =
            reference(&format!("oci://127.0.0.1:5000/team/policy:v1@sha256:{HEX}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.registry(), "127.0.0.1:5000");
        assert_eq!(parsed.repository(), "team/policy");
        assert_eq!(parsed.tag(), Some("v1"));
    }

    #[test]
    fn a_tag_without_a_pin_is_refused_with_how_to_pin() {
        assert_eq!(
            reason(reference("oci://h/r:v1")),
            "oci://h/r:v1: a tag alone is not accepted; pin the module with @sha256:<digest> \
             (a tag may come along with the pin)"
        );
        assert_eq!(reason(reference("oci://h/r")), "oci://h/r: no digest; pin the module with @sha256:<digest>");
    }

    #[test]
    fn bad_references_are_refused_with_the_reason() {
        let cases = [
            (format!("h/r@sha256:{HEX}"), "must start with oci://"),
            (format!("https://h/r@sha256:{HEX}"), "must start with oci://"),
            (format!("oci:///r@sha256:{HEX}"), "no registry host"),
            (format!("oci://h@sha256:{HEX}"), "no repository"),
            (format!("oci://h/@sha256:{HEX}"), "no repository"),
            (format!("oci://h:99999/r@sha256:{HEX}"), "is not a port number"),
            (format!("oci://user@h/r@sha256:{HEX}"), "not a host name"),
            (format!("oci://h/Policy@sha256:{HEX}"), "repository `Policy` is not valid"),
            (format!("oci://h/a//b@sha256:{HEX}"), "repository `a//b` is not valid"),
            (format!("oci://h/r:@sha256:{HEX}"), "tag `` is not valid"),
            (format!("oci://h/r:-x@sha256:{HEX}"), "tag `-x` is not valid"),
            (format!("oci://h/r@sha512:{HEX}{HEX}"), "only sha256"),
            (format!("oci://h/r@sha256:{}", HEX.to_uppercase()), "not sha256:<64 lowercase hex digits>"),
            ("oci://h/r@sha256:abc".to_owned(), "not sha256:<64 lowercase hex digits>"),
            (format!("oci://h/r@sha256:{HEX}0"), "not sha256:<64 lowercase hex digits>"),
        ];
        for (text, expected) in cases {
            let message = reason(reference(&text));
            assert!(message.starts_with(&format!("{text}: ")), "{message}");
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn push_targets_need_a_tag_and_no_digest() {
        let target: PushTarget = "oci://127.0.0.1:5000/team/policy:v1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(target.to_string(), "oci://127.0.0.1:5000/team/policy:v1");
        assert_eq!((target.registry(), target.repository(), target.tag()), ("127.0.0.1:5000", "team/policy", "v1"));

        let no_tag = reason("oci://h/r".parse::<PushTarget>());
        assert_eq!(no_tag, "oci://h/r: no tag; a push target is oci://HOST[:PORT]/REPO:TAG");
        let pinned = reason(format!("oci://h/r:v1@sha256:{HEX}").parse::<PushTarget>());
        assert!(pinned.contains("a push target takes a tag, not a digest"), "{pinned}");
        assert!(reason("h/r:v1".parse::<PushTarget>()).contains("must start with oci://"));
        assert!(reason("oci://user@h/r:v1".parse::<PushTarget>()).contains("not a host name"));
    }

    #[test]
    fn is_oci_tells_references_from_paths() {
        assert!(is_oci("oci://h/r:v1"));
        assert!(!is_oci("/policies/ingress-tls.wasm"));
        assert!(!is_oci("policies/oci://x"));
    }

    fn credentials(json: &str) -> Result<Credentials> {
        Credentials::parse(json.as_bytes(), Path::new("/etc/portcullis/config.json"))
    }

    fn basic(auth: RegistryAuth) -> Option<(String, String)> {
        match auth {
            RegistryAuth::Basic(user, password) => Some((user, password)),
            _ => None,
        }
    }

    #[test]
    fn docker_config_auth_entries_are_read_in_both_forms() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let creds = credentials(&format!(
            r#"{{"auths": {{
                "registry.example.com": {{"auth": "{encoded}"}},
                "https://127.0.0.1:5000": {{"username": "bob", "password": "pw"}},
                "https://index.docker.io/v1/": {{"auth": "{encoded}"}},
                "helper.example.com": {{}}
            }}}}"#
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(basic(creds.auth("registry.example.com")), Some(("alice".into(), "s3cr:et".into())));
        assert_eq!(basic(creds.auth("127.0.0.1:5000")), Some(("bob".into(), "pw".into())));
        assert_eq!(basic(creds.auth("docker.io")), Some(("alice".into(), "s3cr:et".into())));
        assert!(matches!(creds.auth("127.0.0.1:5001"), RegistryAuth::Anonymous));
        assert!(matches!(creds.auth("helper.example.com"), RegistryAuth::Anonymous));
        assert_eq!(
            creds.refusal("127.0.0.1:5000"),
            "127.0.0.1:5000 refused user `bob` from /etc/portcullis/config.json"
        );
        assert_eq!(creds.refusal("other:1"), "no credentials for other:1 in /etc/portcullis/config.json");
        assert!(!format!("{creds:?}").contains("s3cr"), "the password is not in Debug output");
    }

    #[test]
    fn credential_helpers_are_named_in_the_refusal() {
        let creds = credentials(
            r#"{"auths": {"a.example": {}}, "credsStore": "desktop", "credHelpers": {"ecr.example": "ecr-login"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ecr = creds.refusal("ecr.example");
        assert!(ecr.contains("credential helper `ecr-login` for ecr.example"), "{ecr}");
        assert!(ecr.contains("not supported"), "{ecr}");
        let other = creds.refusal("a.example");
        assert!(other.contains("credsStore `desktop` is not supported"), "{other}");
        assert!(Credentials::default().refusal("h").contains("no docker config.json was given"));
    }

    #[test]
    fn malformed_docker_configs_name_the_file() {
        for (json, expected) in [
            ("{", "not a docker config.json"),
            (r#"{"auths": []}"#, "not a docker config.json"),
            (r#"{"auths": {"h": {"auth": "!!!"}}}"#, "auths.h.auth is not base64 of user:password"),
            (r#"{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}"#, "auths.h.auth is not base64 of user:password"),
        ] {
            let error = match credentials(json) {
                Ok(_) => panic!("accepted {json}"),
                Err(e) => e,
            };
            assert_eq!(error.kind(), "config");
            let message = error.to_string();
            assert!(message.starts_with("/etc/portcullis/config.json: "), "{message}");
            assert!(message.contains(expected), "{json}: {message}");
        }
    }

    #[test]
    fn a_manifest_must_hold_one_wasm_layer() {
        let layer =
            |media_type: &str| format!(r#"{{"mediaType": "{media_type}", "digest": "sha256:{HEX}", "size": 10}}"#);
        let manifest = |layers: &[String]| {
            format!(
                r#"{{"schemaVersion": 2, "mediaType": "{OCI_IMAGE_MEDIA_TYPE}",
                    "config": {{"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:{HEX}", "size": 2}},
                    "layers": [{}]}}"#,
                layers.join(",")
            )
        };
        for media_type in ACCEPTED_LAYER_MEDIA_TYPES {
            let found = wasm_layer(manifest(&[layer(media_type)]).as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(found.size, 10);
        }
        let none = wasm_layer(manifest(&[layer("application/vnd.oci.image.layer.v1.tar")]).as_bytes());
        assert!(none.is_err_and(|e| e.contains("no wasm layer") && e.contains("image.layer.v1.tar")));
        let two = wasm_layer(manifest(&[layer(WASM_LAYER_MEDIA_TYPE), layer(WASM_LAYER_MEDIA_TYPE)]).as_bytes());
        assert!(two.is_err_and(|e| e.contains("more than one wasm layer")));
        let index = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{}", "manifests": []}}"#,
            oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE
        );
        assert!(wasm_layer(index.as_bytes()).is_err_and(|e| e.contains("not an image manifest")));
    }

    #[test]
    fn every_kind_is_listed() {
        let errors = [
            OciError::Reference { reference: String::new(), reason: String::new() },
            OciError::InvalidFile { path: PathBuf::new(), reason: String::new() },
            OciError::Cache { path: PathBuf::new(), source: std::io::Error::other("x") },
            OciError::Unreachable { reference: String::new(), cause: String::new() },
            OciError::Auth { reference: String::new(), cause: String::new() },
            OciError::NotFound { reference: String::new(), cause: String::new() },
            OciError::DigestMismatch {
                reference: String::new(),
                what: "layer",
                expected: String::new(),
                actual: String::new(),
            },
            OciError::NoWasmLayer { reference: String::new(), reason: String::new() },
            OciError::TooLarge { reference: String::new(), size: 0, limit: 0 },
            OciError::Registry { reference: String::new(), cause: String::new() },
        ];
        for error in &errors {
            assert!(ERROR_KINDS.contains(&error.kind()), "{}", error.kind());
        }
        assert_eq!(errors.len(), ERROR_KINDS.len());
    }

    #[test]
    fn ca_and_auth_files_are_read_at_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        let error = Registry::new(&RegistryOptions { ca: Some(not_pem.clone()), ..RegistryOptions::default() })
            .err()
            .unwrap_or_else(|| panic!("accepted a CA file without certificates"));
        assert_eq!(error.kind(), "config");
        assert_eq!(error.to_string(), format!("{}: no CERTIFICATE block", not_pem.display()));

        let missing = dir.path().join("missing.json");
        let error = Registry::new(&RegistryOptions { auth: Some(missing.clone()), ..RegistryOptions::default() })
            .err()
            .unwrap_or_else(|| panic!("accepted a missing auth file"));
        assert_eq!((error.kind(), error.to_string()), ("config", format!("reading {}", missing.display())));

        // A cache "directory" under a file cannot be created.
        let cache = not_pem.join("cache");
        let error = Registry::new(&RegistryOptions { cache: Some(cache.clone()), ..RegistryOptions::default() })
            .err()
            .unwrap_or_else(|| panic!("accepted a cache under a file"));
        assert_eq!(error.kind(), "cache");
        assert_eq!(error.to_string(), format!("creating the module cache {}", cache.join("oci/sha256").display()));
    }
}
