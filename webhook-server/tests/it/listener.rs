//! The listener against slow, idle and too many clients, on a real socket
//! (plain TCP: the TLS layer in front is the same for every client and has
//! its own handshake timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use webhook_server::metrics::Metrics;
use webhook_server::server::{AppState, ListenerLimits, RequestLimits, app, serve};

use crate::common::{entry, fixture, guest, load_ok, runtime};

struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start(limits: ListenerLimits, requests: RequestLimits) -> Server {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("allow-all", &guest("allow_all"), "")]).await;
    let state = Arc::new(AppState::with_limits(set, Arc::new(Metrics::new()), requests));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    tokio::spawn(serve(listener, app(state), None, limits, shutdown, Duration::from_secs(1)));
    Server { addr, _stop: stop }
}

fn review() -> String {
    fixture("webhook-server/tests/fixtures/pod-create.json")
}

fn head(content_length: usize) -> String {
    format!(
        "POST /validate/allow-all HTTP/1.1\r\nhost: portcullis\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    )
}

/// Reads until the peer closes or `limit` passes; returns what was read and
/// whether the peer closed.
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Reads one HTTP/1 response (headers and a content-length body), or gives up after `limit`.
async fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((headers, body)) = text.split_once("\r\n\r\n") {
            let length = headers
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Some(text);
            }
        }
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let requests = RequestLimits { body_timeout: Duration::from_millis(300), ..RequestLimits::default() };
    let server = start(ListenerLimits::default(), requests).await;
    let mut stream = connect(server.addr).await;
    let body = review();
    stream.write_all(head(body.len()).as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
    stream.write_all(&body.as_bytes()[..10]).await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let response = read_response(&mut stream, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("not received within"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_do_not_arrive_in_time_close_the_connection() {
    let limits = ListenerLimits { header_timeout: Duration::from_millis(300), ..ListenerLimits::default() };
    let server = start(limits, RequestLimits::default()).await;
    let mut stream = connect(server.addr).await;
    stream.write_all(b"POST /validate/allow-all HTTP/1.1\r\nhost: portc").await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "a slowloris client kept its connection");
    assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
}

/// A client that connects and sends nothing is held to the header
/// timeout, not the (longer) idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_first_request_is_closed_at_the_header_timeout() {
    let limits = ListenerLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(60),
        ..ListenerLimits::default()
    };
    let server = start(limits, RequestLimits::default()).await;
    let mut stream = connect(server.addr).await;
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "a silent client kept its connection");
    let after = started.elapsed();
    assert!(after >= Duration::from_millis(250) && after < Duration::from_secs(2), "closed after {after:?}");
}

/// HTTP/1 keep-alive: after its last answer, a connection idle for the
/// idle timeout is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_is_closed() {
    let limits = ListenerLimits { idle_timeout: Duration::from_millis(400), ..ListenerLimits::default() };
    let server = start(limits, RequestLimits::default()).await;
    let mut stream = connect(server.addr).await;
    let body = review();
    stream.write_all(format!("{}{body}", head(body.len())).as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
    let response = read_response(&mut stream, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let answered = Instant::now();
    let (_, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "the idle connection stayed open");
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_millis(300) && idle < Duration::from_secs(2), "closed after {idle:?} idle");
}

/// HTTP/2 (prior knowledge): an idle connection gets a GOAWAY and is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_goaway() {
    let limits = ListenerLimits { idle_timeout: Duration::from_millis(400), ..ListenerLimits::default() };
    let server = start(limits, RequestLimits::default()).await;
    let mut stream = connect(server.addr).await;
    // Connection preface, then an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    // Play a well-behaved peer: acknowledge SETTINGS and PINGs (the server's
    // graceful GOAWAY waits for a PING round trip), note each frame type.
    let mut pending = Vec::new();
    let mut types = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
        // Frames: a 9-byte header (24-bit length, type, flags, stream), then the payload.
        while pending.len() >= 9 {
            let len = usize::from(pending[0]) << 16 | usize::from(pending[1]) << 8 | usize::from(pending[2]);
            if pending.len() < 9 + len {
                break;
            }
            let frame: Vec<u8> = pending.drain(..9 + len).collect();
            let (kind, flags) = (frame[3], frame[4]);
            types.push(kind);
            let ack = match (kind, flags & 1) {
                (4, 0) => Some(vec![0, 0, 0, 4, 1, 0, 0, 0, 0]),
                (6, 0) => Some([&[0, 0, 8, 6, 1, 0, 0, 0, 0][..], &frame[9..]].concat()),
                _ => None,
            };
            if let Some(ack) = ack {
                let _ = stream.write_all(&ack).await;
            }
        }
    };
    assert!(closed, "the idle HTTP/2 connection stayed open (frames {types:?})");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed after {:?}", started.elapsed());
    assert!(types.contains(&7), "no GOAWAY among frame types {types:?}");
}

/// At the connection cap the server stops accepting: a further client waits
/// (in the kernel's backlog) until a connection closes, then is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_further_clients_back() {
    let limits = ListenerLimits { max_connections: 2, ..ListenerLimits::default() };
    let server = start(limits, RequestLimits::default()).await;
    let first = connect(server.addr).await;
    let _second = connect(server.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect(server.addr).await;
    let body = review();
    third.write_all(format!("{}{body}", head(body.len())).as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(read_response(&mut third, Duration::from_millis(500)).await.is_none(), "served over the cap");
    drop(first);
    let response = read_response(&mut third, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(response.starts_with("HTTP/1.1 200"), "not served once a slot freed: {response}");
}
