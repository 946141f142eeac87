//! TLS for the webhook listener: the one place that picks the crypto provider
//! (ring), builds the rustls `ServerConfig`, and keeps the certificate fresh.
//!
//! The certificate and key are served through a [`CertificateStore`] that is
//! re-read from disk whenever the files change (cert-manager rotates them in
//! place, through the kubelet's symlink swap), so rotation needs no restart.
//! A half-written or mismatched pair is refused and the previous one served on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

/// Errors loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{path}: {reason}")]
    Pem {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The crypto provider of every TLS endpoint of the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })
}

/// Parses a PEM certificate chain and private key into a checked pair.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], cert_path: &Path, key_path: &Path) -> Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Pem { path: cert_path.to_owned(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(Error::Pem { path: cert_path.to_owned(), reason: "no CERTIFICATE block".into() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Pem { path: key_path.to_owned(), reason: format!("no usable private key: {e}") })?;
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

/// The serving certificate, reloaded from disk when its files change.
#[derive(Debug)]
pub struct CertificateStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    digest: std::sync::Mutex<[u8; 32]>,
}

impl CertificateStore {
    /// Loads the pair once; fails if it is unusable.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let (cert, key) = (read(cert_path)?, read(key_path)?);
        let pair = certified_key(&cert, &key, cert_path, key_path)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(pair),
            digest: std::sync::Mutex::new(digest(&cert, &key)),
        })
    }

    /// Re-reads the files; swaps in the new pair if they changed and are valid.
    /// Returns `Ok(true)` when a new certificate is now served.
    pub fn reload(&self) -> Result<bool> {
        let (cert, key) = (read(&self.cert_path)?, read(&self.key_path)?);
        let new_digest = digest(&cert, &key);
        let mut last = self.digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == new_digest {
            return Ok(false);
        }
        let pair = certified_key(&cert, &key, &self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(pair));
        *last = new_digest;
        Ok(true)
    }

    /// Polls the files every `interval`, forever; `on_reload` is told of each
    /// attempt that found a change (`Ok`) or failed (`Err`).
    pub async fn watch(self: Arc<Self>, interval: Duration, on_reload: impl Fn(&Result<bool>) + Send + 'static) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let store = self.clone();
            let result = tokio::task::spawn_blocking(move || store.reload()).await.unwrap_or_else(|e| {
                Err(Error::Pem { path: PathBuf::new(), reason: format!("reload task failed: {e}") })
            });
            match &result {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                    on_reload(&result);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate reload failed; still serving the previous one");
                    on_reload(&result);
                }
            }
        }
    }
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(cert);
    h.update([0]);
    h.update(key);
    h.finalize().into()
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Builds the server config: TLS 1.2 and 1.3, ALPN h2 and http/1.1, the
/// reloading certificate, and client-certificate verification when a CA is
/// given (optional at the handshake; the admission routes require it).
pub fn server_config(certs: Arc<CertificateStore>, client_ca: Option<&Path>) -> Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(path)?) {
                let cert = cert.map_err(|e| Error::Pem { path: path.to_owned(), reason: e.to_string() })?;
                roots.add(cert)?;
            }
            // The handshake accepts clients without a certificate so that the
            // kubelet's probes and Prometheus reach /healthz, /readyz and
            // /metrics; the admission routes refuse them (`require_client_cert`).
            // A certificate that is presented must verify.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Pem { path: path.to_owned(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
