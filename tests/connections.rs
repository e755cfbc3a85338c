//! Client connections against the listener limits: slow readers are closed
//! (send_timeout, and a deadline after an idle close), slowloris before the
//! first request head is cut off on HTTP/1.1 and HTTP/2, max_connections
//! refuses the extra ones, and a reload that changes limits reaches new
//! connections.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::call;
use common::binary::temp_dir;
use common::*;
use http::{Method, Response};
use http_body_util::Full;
use switchyard::server::{start_live, LiveOptions, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response far larger than any socket buffer.
const BIG: usize = 20 * 1024 * 1024;

/// Generous: every "it eventually happens" wait is bounded by this.
const PATIENCE: Duration = Duration::from_secs(20);

fn yaml(limits: &str, upstream: SocketAddr) -> String {
    format!(
        "listeners:\n  - name: edge\n    address: 127.0.0.1:0\n    limits: {limits}\nadmin:\n  address: 127.0.0.1:0\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    )
}

async fn proxy_with(limits: &str, upstream: SocketAddr) -> Running {
    switchyard::server::start(switchyard::config::parse(&yaml(limits, upstream)).unwrap())
        .await
        .unwrap()
}

/// An upstream answering every request with `BIG` bytes.
async fn big_upstream() -> SocketAddr {
    let body = Bytes::from(vec![b'x'; BIG]);
    upstream(move |_| {
        let body = body.clone();
        async move { Response::new(Full::new(body)) }
    })
    .await
}

/// Waits (bounded) until the metric sample equals `want`.
async fn metric_becomes(running: &Running, series: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = metric(running.admin_address(), series).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new HTTP/1.1 client connection that has asked for the big response.
async fn big_request(proxy: &Running) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    stream
}

/// Requests in flight to the upstream, as the admin status shows them:
/// 0 once the proxy let go of the upstream side too.
async fn upstream_in_flight(running: &Running) -> u64 {
    let (_, text) = call(running.admin_address(), Method::GET, "/admin/status")
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    status["services"][0]["instances"][0]["in_flight"]
        .as_u64()
        .unwrap()
}

/// The streams' bodies are dropped as their connection task ends, which
/// can come just after the connection was counted closed.
async fn in_flight_drops_to_zero(running: &Running) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let in_flight = upstream_in_flight(running).await;
        if in_flight == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{in_flight} requests still in flight upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const OPEN: &str = "switchyard_connections_open{listener=\"edge\"}";
const TIMED_OUT: &str = "switchyard_connections_timed_out_total{listener=\"edge\"}";
const REJECTED: &str = "switchyard_connections_rejected_total{listener=\"edge\"}";

/// Whether the peer closed `stream` (EOF or reset) within `limit`, without
/// consuming more than what a closed connection still delivers.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_never_reads_is_closed_after_the_idle_close_deadline() {
    let proxy = proxy_with("{idle_timeout: 1s}", big_upstream().await).await;
    let mut stream = big_request(&proxy).await;
    metric_becomes(&proxy, OPEN, 1.0).await;
    // The client reads nothing. Once the idle close and its deadline (both
    // 1 s here) are over, the proxy lets the connection go.
    metric_becomes(&proxy, OPEN, 0.0).await;
    assert_eq!(metric(proxy.admin_address(), TIMED_OUT).await, 1.0);
    in_flight_drops_to_zero(&proxy).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received)).await;
    assert!(received.len() < BIG, "the whole response was buffered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_that_the_client_never_lets_through_are_closed_by_the_send_timeout() {
    let proxy = proxy_with("{send_timeout: 1s}", big_upstream().await).await;
    let stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    // Window 0: the server may send headers but not one byte of data.
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(stream)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut responses = Vec::new();
    for _ in 0..20 {
        client = client.ready().await.unwrap();
        let request = http::Request::get("http://a/big").body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        responses.push(response);
    }
    for response in responses.iter_mut() {
        let response = tokio::time::timeout(PATIENCE, response).await;
        assert_eq!(response.unwrap().unwrap().status(), 200);
    }
    metric_becomes(&proxy, OPEN, 1.0).await;
    assert_eq!(upstream_in_flight(&proxy).await, 20);
    // The connection ends from the proxy's side.
    let ended = tokio::time::timeout(PATIENCE, connection).await;
    assert!(ended.is_ok(), "the connection is still open");
    metric_becomes(&proxy, OPEN, 0.0).await;
    assert_eq!(metric(proxy.admin_address(), TIMED_OUT).await, 1.0);
    in_flight_drops_to_zero(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    let proxy = proxy_with("{send_timeout: 5s, idle_timeout: 5s}", big_upstream().await).await;
    let mut stream = big_request(&proxy).await;
    // 20 MB in pieces with pauses shorter than the timeouts: progress.
    let mut received = 0;
    let mut buf = vec![0u8; 1024 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < BIG {
        assert!(Instant::now() < deadline, "only {received} bytes in time");
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {received} bytes");
        received += n;
        if received % (4 * 1024 * 1024) < n {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert_eq!(metric(proxy.admin_address(), TIMED_OUT).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let proxy = proxy_with("{header_read_timeout: 1s}", echo("up").await).await;
    let mut stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    let started = Instant::now();
    // idle_timeout is 75 s: only the header timeout can close it this soon.
    assert!(closed_within(&mut stream, PATIENCE).await, "never closed");
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(metric(proxy.admin_address(), TIMED_OUT).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_and_headers_trickled_byte_by_byte_are_cut_off() {
    let proxy = proxy_with("{header_read_timeout: 1s}", echo("up").await).await;
    let mut stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    // The preface, an empty SETTINGS frame, then a HEADERS frame that never
    // ends: one byte every 300 ms keeps the connection from being idle.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&[0, 0, 100, 1, 4, 0, 0, 0, 1]);
    bytes.extend(std::iter::repeat_n(0x82, 100));
    let started = Instant::now();
    let mut cut_off = false;
    for byte in bytes.iter().take(60) {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        if closed_within(&mut stream, Duration::from_millis(300)).await {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "still open after {:?}", started.elapsed());
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_extra_ones_and_counts_them() {
    let proxy = proxy_with("{max_connections: 3}", echo("up").await).await;
    let address = proxy.listeners()[0].address;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(address).await.unwrap());
    }
    metric_becomes(&proxy, OPEN, 3.0).await;
    let mut extra = TcpStream::connect(address).await.unwrap();
    assert!(
        closed_within(&mut extra, PATIENCE).await,
        "the fourth stayed open"
    );
    assert_eq!(metric(proxy.admin_address(), REJECTED).await, 1.0);
    // The ones inside still work.
    held[0]
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, held[0].read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A freed place takes a new client.
    drop(held.pop());
    metric_becomes(&proxy, OPEN, 2.0).await;
    let got = get(&client(), &format!("{}/", base(&proxy)), &[]).await;
    assert_eq!(got.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_limits_lists_them_and_new_connections_get_them() {
    let upstream = echo("up").await;
    let dir = temp_dir();
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, yaml("{header_read_timeout: 30s}", upstream)).unwrap();
    let mut options = LiveOptions::new(&path);
    options.watch = false;
    let running = start_live(options).await.unwrap();
    std::fs::write(&path, yaml("{header_read_timeout: 1s}", upstream)).unwrap();
    let outcome = running
        .reloader()
        .unwrap()
        .reload(switchyard::config::history::ChangeSource::Api, "test")
        .await
        .unwrap();
    let described = serde_json::to_string(&outcome).unwrap();
    assert!(
        described.contains("header_read_timeout 30s → 1s"),
        "{described}"
    );
    // A new connection starts a head and stops: cut off at the new 1 s,
    // long before the old 30 s.
    let mut stream = TcpStream::connect(running.listeners()[0].address)
        .await
        .unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(15)).await);
    assert!(started.elapsed() < Duration::from_secs(15));
}
