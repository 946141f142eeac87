//! One real TLS listener on port 0: a request over HTTPS, certificate
//! rotation without restart, and graceful shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::sync::oneshot;
use webhook_server::metrics::Metrics;
use webhook_server::server::{AppState, ListenerLimits, app, serve};
use webhook_server::tls::{self, CertificateStore};

use crate::common::{entry, fixture, load_ok, policy_module, runtime};

/// A CA (PEM) and a serving certificate and key it signed, for 127.0.0.1.
pub fn issue(cn: &str) -> (String, String, String) {
    let fail = |e: rcgen::Error| -> ! { panic!("rcgen: {e}") };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let ca =
        CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap_or_else(|e| fail(e))).unwrap_or_else(|e| fail(e));
    let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .and_then(|p| p.signed_by(&key, &ca))
        .unwrap_or_else(|e| fail(e));
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

fn write(dir: &Path, cert: &str, key: &str) {
    // Write the key first and the certificate last, as a rotation would.
    std::fs::write(dir.join("tls.key"), key).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("tls.crt"), cert).unwrap_or_else(|e| panic!("{e}"));
}

fn client(ca_pem: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap_or_else(|e| panic!("CA: {e}"));
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .https_only(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path, reload: Duration) -> Server {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("ingress-tls", &policy_module("ingress-tls"), "")]).await;
    let state = Arc::new(AppState::new(set, Arc::new(Metrics::new())));
    let store = Arc::new(
        CertificateStore::load(&dir.join("tls.crt"), &dir.join("tls.key")).unwrap_or_else(|e| panic!("cert: {e}")),
    );
    let config = tls::server_config(store.clone(), None).unwrap_or_else(|e| panic!("tls config: {e}"));
    tokio::spawn(store.watch(reload, |_| {}));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(serve(
        listener,
        app(state),
        Some(acceptor),
        ListenerLimits::default(),
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    Server { addr, stop: Some(stop), task }
}

async fn validate(client: &reqwest::Client, addr: SocketAddr, body: String) -> reqwest::Result<serde_json::Value> {
    client
        .post(format!("https://{addr}/validate/ingress-tls"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_request_is_answered_and_shutdown_is_graceful() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (ca, cert, key) = issue("first CA");
    write(dir.path(), &cert, &key);
    let mut server = start(dir.path(), Duration::from_secs(60)).await;

    let review = validate(&client(&ca), server.addr, fixture("policies-wasm/ingress-tls/test_data/no-tls.json"))
        .await
        .unwrap_or_else(|e| panic!("request over TLS: {e:?}"));
    assert_eq!(review["response"]["allowed"], false);
    assert_eq!(review["response"]["uid"], "8660cdff-db1c-4bcd-99bf-7eb8710856cd");

    let health = client(&ca).get(format!("https://{}/healthz", server.addr)).send().await;
    assert!(health.is_ok_and(|r| r.status().is_success()));

    let (unknown_ca, _, _) = issue("unrelated CA");
    assert!(
        validate(&client(&unknown_ca), server.addr, fixture("policies-wasm/ingress-tls/test_data/covered.json"))
            .await
            .is_err()
    );

    if let Some(stop) = server.stop.take() {
        let _ = stop.send(());
    }
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .unwrap_or_else(|_| panic!("server did not stop"))
        .unwrap_or_else(|e| panic!("server task: {e}"));
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "listener still open after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_is_served_without_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (old_ca, cert, key) = issue("old CA");
    write(dir.path(), &cert, &key);
    let server = start(dir.path(), Duration::from_millis(50)).await;
    let body = || fixture("policies-wasm/ingress-tls/test_data/covered.json");
    assert!(validate(&client(&old_ca), server.addr, body()).await.is_ok());

    let (new_ca, cert, key) = issue("new CA");
    write(dir.path(), &cert, &key);
    let started = Instant::now();
    loop {
        match validate(&client(&new_ca), server.addr, body()).await {
            Ok(review) => {
                assert_eq!(review["response"]["allowed"], true);
                break;
            }
            Err(e) if started.elapsed() > Duration::from_secs(10) => panic!("new certificate never served: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(validate(&client(&old_ca), server.addr, body()).await.is_err(), "old certificate still served");

    // A broken pair (key from another certificate) is refused; the new one stays.
    let (_, other_cert, _) = issue("other CA");
    write(dir.path(), &other_cert, &key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(validate(&client(&new_ca), server.addr, body()).await.is_ok(), "a mismatched pair replaced a good one");
    server.task.abort();
}
