//! Modules through a real OCI registry: the CNCF distribution registry
//! (Debian's `docker-registry`) on 127.0.0.1 with TLS from a test CA and
//! htpasswd auth, one per test, killed on drop. `cargo xtask test` installs it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use webhook_server::oci::{OciError, PushTarget, Reference, Registry, RegistryOptions};

use crate::common::policy_module;

const BINARY: &str = "/usr/bin/docker-registry";
const USER: &str = "portcullis";
const PASSWORD: &str = "correct horse";

/// A running registry and the files to reach it: its CA, a docker
/// config.json with the right credentials, and a module cache.
struct TestRegistry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    fn start() -> Self {
        assert!(
            Path::new(BINARY).is_file(),
            "{BINARY} not found: the registry tests need the CNCF distribution registry \
             (Debian package docker-registry); `cargo xtask test` installs it, or run \
             `apt-get install docker-registry` (and stop the service it starts)"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (ca, cert, key) = crate::tls::issue("registry test CA");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("writing {name}: {e}"))
        };
        write("ca.pem", &ca);
        write("tls.crt", &cert);
        write("tls.key", &key);
        // Cost 4, the least bcrypt allows: the registry checks it on every request.
        let hash = bcrypt::hash(PASSWORD, 4).unwrap_or_else(|e| panic!("bcrypt: {e}"));
        write("htpasswd", &format!("{USER}:{hash}\n"));
        let addr = free_port();
        let root = dir.path().display();
        write(
            "config.yml",
            &format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {root}/data\n\
                 http:\n  addr: {addr}\n  secret: portcullis-test\n  \
                 tls:\n    certificate: {root}/tls.crt\n    key: {root}/tls.key\n\
                 auth:\n  htpasswd:\n    realm: portcullis-test\n    path: {root}/htpasswd\n"
            ),
        );
        write("auth.json", &docker_config(addr, USER, PASSWORD));
        let mut registry = Self { child: None, addr, dir };
        registry.restart();
        registry
    }

    /// Starts (again, after [`TestRegistry::stop`]) on the same address and storage.
    fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap_or_else(|e| panic!("log: {e}"));
        let err_log = log.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BINARY}: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("docker-registry exited with {status}:\n{}", self.log());
            }
            if started.elapsed() > Duration::from_secs(15) {
                panic!("docker-registry not listening on {} after 15 s:\n{}", self.addr, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Options trusting the registry's CA, with its credentials and a cache in `cache`.
    fn options(&self, cache: &Path) -> RegistryOptions {
        RegistryOptions {
            ca: Some(self.file("ca.pem")),
            auth: Some(self.file("auth.json")),
            cache: Some(cache.to_owned()),
        }
    }

    fn target(&self, repo_tag: &str) -> PushTarget {
        format!("oci://{}/{repo_tag}", self.addr).parse().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

fn docker_config(addr: SocketAddr, user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::json!({ "auths": { addr.to_string(): { "auth": auth } } }).to_string()
}

fn registry(options: &RegistryOptions) -> Registry {
    Registry::new(options).unwrap_or_else(|e| panic!("registry options: {e}"))
}

fn module() -> Vec<u8> {
    let path = policy_module("ingress-tls");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn error<T>(result: Result<T, OciError>) -> OciError {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            eprintln!("[{}] {e}", e.kind());
            e
        }
    }
}

/// Pushes the module with full access and returns its pinned reference.
async fn push(server: &TestRegistry, cache: &Path) -> Reference {
    registry(&server.options(cache))
        .push(&module(), &server.target("policies/ingress-tls:v1"))
        .await
        .unwrap_or_else(|e| panic!("push: {e}\nregistry log:\n{}", server.log()))
}

#[tokio::test]
async fn pushed_module_is_fetched_by_its_pin_then_from_cache_with_the_registry_down() {
    let mut server = TestRegistry::start();
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let wasm = module();

    let pinned = push(&server, cache.path()).await;
    assert_eq!(pinned.registry(), server.addr.to_string());
    assert_eq!(pinned.to_string(), format!("oci://{}/policies/ingress-tls@{}", server.addr, pinned.digest()));
    // The same module publishes to the same digest.
    let again = registry(&server.options(cache.path()))
        .push(&wasm, &server.target("policies/ingress-tls:v1-again"))
        .await
        .unwrap_or_else(|e| panic!("second push: {e}"));
    assert_eq!(again, pinned);

    let client = registry(&server.options(cache.path()));
    let fetched = client.fetch(&pinned).await.unwrap_or_else(|e| panic!("fetch: {e}\n{}", server.log()));
    assert!(!fetched.from_cache);
    assert_eq!(fetched.bytes, wasm);
    let hex = pinned.digest().trim_start_matches("sha256:");
    let cached = cache.path().join(format!("oci/sha256/{hex}.wasm"));
    assert_eq!(std::fs::read(&cached).ok(), Some(wasm.clone()), "{} not written", cached.display());

    // A tag may come along with the pin.
    let with_tag: Reference = format!("oci://{}/policies/ingress-tls:v1@{}", server.addr, pinned.digest())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let fresh_cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fetched = registry(&server.options(fresh_cache.path())).fetch(&with_tag).await;
    assert!(fetched.is_ok_and(|f| !f.from_cache && f.bytes == wasm));

    // A cached module that does not match its pin is pulled again.
    std::fs::write(&cached, b"\0asm tampered").unwrap_or_else(|e| panic!("{e}"));
    let fetched = client.fetch(&pinned).await.unwrap_or_else(|e| panic!("fetch over a bad cache entry: {e}"));
    assert!(!fetched.from_cache);
    assert_eq!(std::fs::read(&cached).ok(), Some(wasm.clone()), "the bad entry was not replaced");

    server.stop();
    let started = Instant::now();
    let fetched = client.fetch(&pinned).await.unwrap_or_else(|e| panic!("fetch with the registry down: {e}"));
    assert!(fetched.from_cache);
    assert_eq!(fetched.bytes, wasm);
    assert!(started.elapsed() < Duration::from_secs(1), "a cache hit took {:?}", started.elapsed());

    // With the registry down, a bad entry is an error, never the bad bytes.
    std::fs::write(&cached, b"\0asm tampered").unwrap_or_else(|e| panic!("{e}"));
    let e = error(client.fetch(&pinned).await);
    assert_eq!(e.kind(), "unreachable", "{e}");
}

#[tokio::test]
async fn a_digest_the_registry_does_not_hold_is_not_found() {
    let server = TestRegistry::start();
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pinned = push(&server, cache.path()).await;
    let other = format!("sha256:{}", hex::encode(Sha256::digest(b"some other manifest")));
    let wrong: Reference =
        format!("oci://{}/policies/ingress-tls@{other}", server.addr).parse().unwrap_or_else(|e| panic!("{e}"));
    let e = error(registry(&server.options(cache.path())).fetch(&wrong).await);
    assert!(matches!(e.kind(), "not_found" | "digest_mismatch"), "{}: {e}", e.kind());
    assert!(e.to_string().starts_with(&wrong.to_string()), "{e}");

    // Another repository of the same registry does not have it either.
    let elsewhere: Reference =
        format!("oci://{}/policies/other@{}", server.addr, pinned.digest()).parse().unwrap_or_else(|e| panic!("{e}"));
    let e = error(registry(&server.options(cache.path())).fetch(&elsewhere).await);
    assert_eq!(e.kind(), "not_found", "{e}");
}

#[tokio::test]
async fn an_unreachable_registry_fails_fast_and_says_so() {
    let addr = free_port(); // Bound and released: nothing listens there.
    let reference: Reference = format!("oci://{addr}/policies/ingress-tls@sha256:{}", "ab".repeat(32))
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let e = error(registry(&RegistryOptions::default()).fetch(&reference).await);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(e.kind(), "unreachable", "{e}");
    let message = e.to_string();
    assert!(message.starts_with(&reference.to_string()), "{message}");
    assert!(message.contains(&format!("connecting to {addr}")), "{message}");

    let tag_only = error(format!("oci://{addr}/policies/ingress-tls:v1").parse::<Reference>());
    assert_eq!(tag_only.kind(), "reference");
    assert!(tag_only.to_string().contains("a tag alone is not accepted"), "{tag_only}");
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_auth_errors() {
    let server = TestRegistry::start();
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pinned = push(&server, cache.path()).await;
    let empty_cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));

    let anonymous = RegistryOptions { auth: None, ..server.options(empty_cache.path()) };
    let e = error(registry(&anonymous).fetch(&pinned).await);
    assert_eq!(e.kind(), "auth", "{e}");
    assert!(e.to_string().contains("no docker config.json was given"), "{e}");
    let e = error(registry(&anonymous).push(&module(), &server.target("policies/ingress-tls:v2")).await);
    assert_eq!(e.kind(), "auth", "{e}");

    let wrong = server.file("wrong.json");
    std::fs::write(&wrong, docker_config(server.addr, USER, "wrong password")).unwrap_or_else(|e| panic!("{e}"));
    let e = error(
        registry(&RegistryOptions { auth: Some(wrong), ..server.options(empty_cache.path()) }).fetch(&pinned).await,
    );
    assert_eq!(e.kind(), "auth", "{e}");
    assert!(e.to_string().contains(&format!("refused user `{USER}`")), "{e}");

    let other_host = server.file("other.json");
    std::fs::write(&other_host, docker_config(free_port(), USER, PASSWORD)).unwrap_or_else(|e| panic!("{e}"));
    let e = error(
        registry(&RegistryOptions { auth: Some(other_host), ..server.options(empty_cache.path()) })
            .fetch(&pinned)
            .await,
    );
    assert_eq!(e.kind(), "auth", "{e}");
    assert!(e.to_string().contains(&format!("no credentials for {}", server.addr)), "{e}");
}

#[tokio::test]
async fn a_registry_signed_by_an_untrusted_ca_is_a_clear_tls_error() {
    let server = TestRegistry::start();
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pinned = push(&server, cache.path()).await;
    let empty_cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let untrusting = RegistryOptions { ca: None, ..server.options(empty_cache.path()) };
    let e = error(registry(&untrusting).fetch(&pinned).await);
    assert_eq!(e.kind(), "unreachable", "{e}");
    let message = e.to_string();
    assert!(message.contains("TLS") && message.contains("certificate"), "{message}");
    assert!(message.contains("CA file"), "{message}");
}

/// Pushes `blobs` and a manifest of `manifest` (JSON) under `repo:tag` with
/// the client library directly, as other tools would; returns the pin.
async fn push_raw(server: &TestRegistry, repo: &str, tag: &str, blobs: &[&[u8]], manifest: &str) -> Reference {
    // The client takes the process's crypto provider, which `Registry::new` sets.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::try_from(oci_client::client::ClientConfig {
        extra_root_certificates: vec![oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Pem,
            data: std::fs::read(server.file("ca.pem")).unwrap_or_else(|e| panic!("{e}")),
        }],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("client: {e}"));
    let image = oci_client::Reference::with_tag(server.addr.to_string(), repo.to_owned(), tag.to_owned());
    let auth = oci_client::secrets::RegistryAuth::Basic(USER.to_owned(), PASSWORD.to_owned());
    client.store_auth_if_needed(&server.addr.to_string(), &auth).await;
    for blob in blobs {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(blob)));
        client.push_blob(&image, blob.to_vec(), &digest).await.unwrap_or_else(|e| panic!("blob: {e}"));
    }
    let media_type = axum::http::HeaderValue::from_static(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE);
    client
        .push_manifest_raw(&image, manifest.as_bytes().to_vec(), media_type)
        .await
        .unwrap_or_else(|e| panic!("manifest: {e}\n{}", server.log()));
    let digest = hex::encode(Sha256::digest(manifest.as_bytes()));
    format!("oci://{}/{repo}@sha256:{digest}", server.addr).parse().unwrap_or_else(|e| panic!("{e}"))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        "size": bytes.len(),
    })
}

/// What `oras push HOST/REPO:TAG policy.wasm:application/wasm` (oras 1.x) writes:
/// the empty config, an artifact type, a title annotation on the layer.
#[tokio::test]
async fn an_oras_style_artifact_is_fetched() {
    let server = TestRegistry::start();
    let wasm = module();
    let empty = b"{}";
    let mut layer = descriptor("application/wasm", &wasm);
    layer["annotations"] = serde_json::json!({ "org.opencontainers.image.title": "policy.wasm" });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.unknown.artifact.v1",
        "config": descriptor("application/vnd.oci.empty.v1+json", empty),
        "layers": [layer],
        "annotations": { "org.opencontainers.image.created": "2026-01-01T00:00:00Z" },
    });
    let pinned = push_raw(&server, "policies/oras", "v1", &[&wasm, empty], &manifest.to_string()).await;
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fetched = registry(&server.options(cache.path())).fetch(&pinned).await;
    assert!(fetched.is_ok_and(|f| f.bytes == wasm), "{}", server.log());

    // Kubewarden's layer media type too.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.wasm.config.v1+json", empty),
        "layers": [descriptor("application/vnd.wasm.content.layer.v1+wasm", &wasm)],
    });
    let pinned = push_raw(&server, "policies/kubewarden", "v1", &[&wasm, empty], &manifest.to_string()).await;
    let fetched = registry(&server.options(cache.path())).fetch(&pinned).await;
    assert!(fetched.is_ok_and(|f| f.bytes == wasm));
}

#[tokio::test]
async fn an_image_without_a_wasm_layer_or_too_large_a_layer_is_refused() {
    let server = TestRegistry::start();
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let empty = b"{}";
    let tar = b"not a wasm module";
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", empty),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", tar)],
    });
    let pinned = push_raw(&server, "images/app", "v1", &[tar, empty], &manifest.to_string()).await;
    let e = error(registry(&server.options(cache.path())).fetch(&pinned).await);
    assert_eq!(e.kind(), "no_wasm_layer", "{e}");
    assert!(e.to_string().contains("application/vnd.oci.image.layer.v1.tar"), "{e}");

    // A descriptor claiming more than 64 MiB is refused before any download.
    let wasm = module();
    let mut layer = descriptor("application/wasm", &wasm);
    layer["size"] = serde_json::json!(64 * 1024 * 1024 + 1);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.wasm.config.v0+json", empty),
        "layers": [layer],
    });
    let pinned = push_raw(&server, "policies/huge", "v1", &[&wasm, empty], &manifest.to_string()).await;
    let e = error(registry(&server.options(cache.path())).fetch(&pinned).await);
    assert_eq!(e.kind(), "too_large", "{e}");
    assert!(e.to_string().contains("67108865 bytes"), "{e}");
}

/// The registry's storage is changed under it: it then serves bytes that do
/// not match their digests, as a compromised or broken registry would.
#[tokio::test]
async fn bytes_that_do_not_match_their_digest_are_refused() {
    let server = TestRegistry::start();
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pinned = push(&server, cache.path()).await;
    let blob = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        server.file(&format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    };

    let layer = blob(&format!("sha256:{}", hex::encode(Sha256::digest(module()))));
    let mut bytes = std::fs::read(&layer).unwrap_or_else(|e| panic!("{}: {e}", layer.display()));
    if let Some(last) = bytes.last_mut() {
        *last ^= 0xff;
    }
    std::fs::write(&layer, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let e = error(registry(&server.options(cache.path())).fetch(&pinned).await);
    assert_eq!(e.kind(), "digest_mismatch", "{e}");
    assert!(e.to_string().contains("the layer does not match its digest"), "{e}");
    let hex = pinned.digest().trim_start_matches("sha256:");
    assert!(!cache.path().join(format!("oci/sha256/{hex}.wasm")).exists(), "a bad module was cached");

    let manifest = blob(pinned.digest());
    let mut text = std::fs::read(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    text.push(b'\n');
    std::fs::write(&manifest, &text).unwrap_or_else(|e| panic!("{e}"));
    let e = error(registry(&server.options(cache.path())).fetch(&pinned).await);
    assert_eq!(e.kind(), "digest_mismatch", "{e}");
    assert!(e.to_string().contains("the manifest does not match its digest"), "{e}");
}

/// What `oras push` itself writes (the test above imitates it): run by hand
/// with `ORAS=/path/to/oras cargo test … registry::oras -- --ignored`.
#[tokio::test]
#[ignore = "needs the oras CLI: set ORAS to its path"]
async fn oras_pushed_module_is_fetched() {
    let oras = std::env::var_os("ORAS").unwrap_or_else(|| panic!("set ORAS to the oras binary"));
    let server = TestRegistry::start();
    let wasm = module();
    std::fs::write(server.file("policy.wasm"), &wasm).unwrap_or_else(|e| panic!("{e}"));
    let target = format!("{}/policies/oras:v1", server.addr);
    let ca = server.file("ca.pem");
    let run = |args: &[&str]| {
        let out = Command::new(&oras)
            .args(args)
            .args([
                "--ca-file".as_ref(),
                ca.as_os_str(),
                "-u".as_ref(),
                USER.as_ref(),
                "-p".as_ref(),
                PASSWORD.as_ref(),
            ])
            .current_dir(server.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running oras: {e}"));
        assert!(out.status.success(), "oras {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    run(&["push", &target, "policy.wasm:application/wasm"]);
    let digest = run(&["resolve", &target]);
    let pinned: Reference =
        format!("oci://{}/policies/oras:v1@{digest}", server.addr).parse().unwrap_or_else(|e| panic!("{e}"));
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fetched = registry(&server.options(cache.path())).fetch(&pinned).await;
    let fetched = fetched.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fetched.bytes, wasm);
    eprintln!("fetched {} bytes from {pinned}", fetched.bytes.len());
}

/// A `webhook-server serve` child on a free port (plain HTTP), killed on drop.
struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Server {
    fn start(config: &Path, cache: &Path, registry: &TestRegistry) -> Self {
        let addr = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_webhook-server"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--addr", &addr.to_string(), "--reload-interval", "0.2", "--module-cache"])
            .arg(cache)
            .arg("--registry-ca")
            .arg(registry.file("ca.pem"))
            .arg("--registry-auth")
            .arg(registry.file("auth.json"))
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting webhook-server: {e}"));
        Self { child, base: format!("http://{addr}"), client: reqwest::Client::new() }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.ok()?;
        Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
    }

    /// Waits until `/readyz` answers `status` and returns its body.
    async fn readyz(&mut self, status: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((code, body)) = self.get("/readyz").await
                && code == status
            {
                return body;
            }
            assert!(self.child.try_wait().ok().flatten().is_none(), "webhook-server exited");
            assert!(Instant::now() < deadline, "/readyz did not answer {status} within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The response to the ingress-tls fixture `no-tls.json` on `/validate/gate`.
    async fn decide(&self) -> serde_json::Value {
        let body = std::fs::read(crate::common::workspace().join("policies-wasm/ingress-tls/test_data/no-tls.json"))
            .unwrap_or_else(|e| panic!("{e}"));
        let answer = self.client.post(format!("{}/validate/gate", self.base)).body(body).send().await;
        match answer {
            Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default()["response"].clone(),
            Err(e) => panic!("POST /validate/gate: {e}"),
        }
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.map(|(_, body)| body).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The issue's acceptance, through the binaries: `webhook-server push`
/// publishes a module and prints its pin; a running server whose config is
/// changed to that pin pulls it through the hot reload (no restart, no image)
/// and decides a request with it; a pin the registry does not hold leaves the
/// served set alone; a restart with the registry down serves from the module
/// cache; a start with the registry down and an empty cache stays not ready,
/// `/readyz` naming the module, until the registry is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_module_rolls_into_a_running_server_by_digest() {
    let mut registry = TestRegistry::start();
    let out = Command::new(env!("CARGO_BIN_EXE_webhook-server"))
        .arg("push")
        .arg(policy_module("ingress-tls"))
        .arg(format!("oci://{}/platform/ingress-tls:v1", registry.addr))
        .arg("--registry-ca")
        .arg(registry.file("ca.pem"))
        .arg("--registry-auth")
        .arg(registry.file("auth.json"))
        .output()
        .unwrap_or_else(|e| panic!("push: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "push failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let pinned = stdout.lines().last().unwrap_or_default().to_owned();
    let prefix = format!("oci://{}/platform/ingress-tls@sha256:", registry.addr);
    assert!(pinned.starts_with(&prefix) && pinned.len() == prefix.len() + 64, "{pinned}");

    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = work.path().join("config.yaml");
    let write_config = |module: &str| {
        let text = format!("policies:\n- name: gate\n  module: \"{module}\"\n");
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    };
    let cache = work.path().join("cache");
    write_config(&crate::common::guest("allow_all").display().to_string());
    let mut server = Server::start(&config, &cache, &registry);
    server.readyz(200).await;
    assert_eq!(server.decide().await["allowed"], true);

    // The config now names the pushed module: the next poll pulls and serves it.
    write_config(&pinned);
    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        let response = server.decide().await;
        if response["allowed"] == false {
            break response;
        }
        assert!(Instant::now() < deadline, "the pushed module was not rolled in: {response}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("is not covered"), "{message}");
    let pulled = format!("portcullis_module_pulls_total{{registry=\"{}\",result=\"pulled\"}} 1", registry.addr);
    assert!(server.metrics().await.contains(&pulled), "{}", server.metrics().await);

    // A pin the registry does not hold: the reload fails, ingress-tls keeps serving.
    write_config(&format!("oci://{}/platform/ingress-tls@sha256:{}", registry.addr, "0".repeat(64)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = server.metrics().await;
        if metrics.contains("result=\"not_found\"") && metrics.contains("kind=\"config\",result=\"failure\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the failed pull was not counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.decide().await["allowed"], false, "the previous set no longer serves");
    drop(server);

    // Restarted with the registry down: the module comes from the cache.
    registry.stop();
    write_config(&pinned);
    let mut server = Server::start(&config, &cache, &registry);
    server.readyz(200).await;
    assert_eq!(server.decide().await["allowed"], false);
    assert!(server.metrics().await.contains("result=\"cached\"} 1"), "{}", server.metrics().await);
    drop(server);

    // An empty cache and no registry: up but not ready, saying why, until the registry returns.
    let mut server = Server::start(&config, &work.path().join("cold-cache"), &registry);
    let why = server.readyz(503).await;
    assert!(why.contains("policy \"gate\"") && why.contains(&pinned), "{why}");
    registry.restart();
    let ready = server.readyz(200).await;
    assert!(ready.contains("1 policies"), "{ready}");
    assert_eq!(server.decide().await["allowed"], false);
}
