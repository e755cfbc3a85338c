//! `max_connections_per_instance`: however many requests arrive at once,
//! the proxy never has more connections open to an instance than the
//! limit; a request beyond it waits for a free connection up to the
//! connect timeout, then gets a 503 that does not count against the
//! instance.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// An HTTP/1.1 upstream that counts its open connections (and the most it
/// ever had) and the requests it is serving; each request waits for a
/// permit of `gate`, which it gives back when done.
struct Counting {
    address: SocketAddr,
    open: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
    serving: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Counting {
    async fn start(gate_permits: usize) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let counting = Counting {
            address: listener.local_addr().unwrap(),
            open: Arc::default(),
            max_open: Arc::default(),
            serving: Arc::default(),
            gate: Arc::new(Semaphore::new(gate_permits)),
        };
        let (open, max_open, serving, gate) = (
            Arc::clone(&counting.open),
            Arc::clone(&counting.max_open),
            Arc::clone(&counting.serving),
            Arc::clone(&counting.gate),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                max_open.fetch_max(now, Ordering::SeqCst);
                let (open, serving, gate) =
                    (Arc::clone(&open), Arc::clone(&serving), Arc::clone(&gate));
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        let (serving, gate) = (Arc::clone(&serving), Arc::clone(&gate));
                        async move {
                            serving.fetch_add(1, Ordering::SeqCst);
                            let permit = gate.acquire().await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            drop(permit);
                            serving.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        counting
    }
}

/// Waits (up to 10 s) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether request `i` of a burst has a body.
type WithBody = fn(usize) -> bool;

/// Sends `n` requests at once, each on its own client connection; request
/// `i` has a body (so takes hyper's upstream client) if `with_body(i)`,
/// else none (the lean client). Each must be answered by the upstream.
async fn burst(url: &str, n: usize, with_body: WithBody) {
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = url.to_string();
        requests.spawn(async move {
            let (method, body) = if with_body(i) {
                ("POST", "data")
            } else {
                ("GET", "")
            };
            let request = http::Request::builder()
                .method(method)
                .uri(&url)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            send(&client(), request).await
        });
    }
    while let Some(got) = requests.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.body, "done");
    }
}

fn limited(workers: usize, limit: u32, upstream: &Counting) -> String {
    format!(
        "workers: {workers}\nroutes: [{{service: s}}]\nservices:\n  s: {{max_connections_per_instance: {limit}, connect_timeout: 5s, instances: [{{address: \"{}\"}}]}}\n",
        upstream.address
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_open_more_connections_than_allowed() {
    // Without a body (lean client), then with one (hyper's), each against
    // its own upstream: the upstream's count is exact only while the proxy
    // closes nothing, and switching kinds closes idle connections.
    let kinds: [(&str, WithBody); 2] = [("lean", |_| false), ("hyper", |_| true)];
    for (kind, with_body) in kinds {
        let upstream = Counting::start(usize::MAX >> 4).await;
        let proxy = proxy(&limited(1, 2, &upstream)).await;
        burst(&format!("{}/", base(&proxy)), 24, with_body).await;
        let max_open = upstream.max_open.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&max_open),
            "{kind}: {max_open} connections were open at once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_both_kinds_on_every_worker_wait_their_turn_and_are_all_served() {
    // Two workers, both clients: idle connections one request cannot use
    // (another worker's, the other kind) are closed to make room for it.
    let upstream = Counting::start(usize::MAX >> 4).await;
    let proxy = proxy(&limited(2, 2, &upstream)).await;
    let url = format!("{}/", base(&proxy));
    for _ in 0..3 {
        burst(&url, 24, |i| i % 2 == 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beyond_the_limit_waits_then_gets_503_without_blame() {
    // The gate starts closed: the first request holds the only connection.
    let upstream = Counting::start(0).await;
    let proxy = proxy(&format!(
        "workers: 1\nroutes: [{{service: s}}]\nservices:\n  s:\n    max_connections_per_instance: 1\n    connect_timeout: 300ms\n    outlier_detection: {{consecutive_failures: 1, base_ejection_time: 60s, max_ejection_percent: 100}}\n    instances: [{{id: a, address: \"{}\"}}]\n",
        upstream.address
    ))
    .await;
    let url = format!("{}/", base(&proxy));
    let first = tokio::spawn({
        let url = url.clone();
        async move { get(&client(), &url, &[]).await }
    });
    let serving = Arc::clone(&upstream.serving);
    eventually("the first request reaches the upstream", || {
        serving.load(Ordering::SeqCst) == 1
    })
    .await;

    let started = Instant::now();
    let second = get(&client(), &url, &[]).await;
    assert_eq!(second.status, 503, "{}", second.body);
    assert!(second.body.contains("connection limit"), "{}", second.body);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(upstream.max_open.load(Ordering::SeqCst), 1);

    upstream.gate.add_permits(1_000);
    assert_eq!(first.await.unwrap().status, 200);
    // Not ejected: the limit is the proxy's, not the instance's fault.
    let (_, status) = common::admin::call(proxy.admin_address(), Method::GET, "/admin/status")
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["services"][0]["instances"][0]["health"], "healthy");
    let third = get(&client(), &url, &[]).await;
    assert_eq!(third.status, 200, "{}", third.body);
    assert_eq!(upstream.max_open.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_http2_streams_from_one_client_share_the_allowed_connections() {
    // One HTTP/2 client connection, 200 streams at once (the default
    // stream limit): without a cap each would open its own upstream
    // HTTP/1.1 connection.
    let upstream = Counting::start(usize::MAX >> 4).await;
    let proxy = proxy(&limited(1, 4, &upstream)).await;
    let sender = h2c(proxy.listeners()[0].address).await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut sender = sender.clone();
        requests.spawn(async move {
            // With a body, so all take hyper's client and no idle
            // connection of the other kind is ever closed to make room
            // (which the upstream would notice late, blurring its count).
            let request = http::Request::post("http://s.test/")
                .body(Full::new(Bytes::from("data")))
                .unwrap();
            let exchange = async {
                let response = sender.send_request(request).await.unwrap();
                let status = response.status().as_u16();
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (status, body)
            };
            tokio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .expect("an answer within 10s")
        });
    }
    while let Some(done) = requests.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!((status, body.as_ref()), (200, &b"done"[..]));
    }
    let max_open = upstream.max_open.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&max_open),
        "{max_open} connections were open at once"
    );
}
