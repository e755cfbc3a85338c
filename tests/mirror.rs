//! Mirrors: a route's copies reach the mirror service (method, target,
//! body, also chunked), the primary's answers are untouched, long bodies
//! are skipped and counted, a black-holed mirror adds no latency and its
//! dropped copies are counted, `percent` copies about that share, and the
//! owned HTTP/1.1 server mirrors like hyper's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::exchange;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;

/// What a recording upstream saw: method, target, body.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// An upstream that records every request and answers 418 (so an answer
/// that leaked to a client would show).
async fn recorder() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let address = upstream(move |request: Request<hyper::body::Incoming>| {
        let log = Arc::clone(&log);
        async move {
            let method = request.method().to_string();
            let target = request.uri().to_string();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            log.lock()
                .unwrap()
                .push((method, target, String::from_utf8_lossy(&body).into_owned()));
            let mut response = http::Response::new(Full::new(Bytes::from_static(b"shadow")));
            *response.status_mut() = http::StatusCode::IM_A_TEAPOT;
            response
        }
    })
    .await;
    (address, seen)
}

/// A listener that accepts connections and never answers (and keeps them
/// open).
async fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    address
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_metric(admin: SocketAddr, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(admin, series).await;
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {now}, not {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn series(result: &str) -> String {
    format!("switchyard_mirror_requests_total{{service=\"shadow\",result=\"{result}\"}}")
}

#[tokio::test]
async fn the_mirror_gets_a_copy_and_the_primary_answer_is_untouched() {
    let primary = echo("primary").await;
    let (shadow, seen) = recorder().await;
    let running = proxy(&format!(
        "routes:\n  - service: web\n    mirror: {{service: shadow, max_body_bytes: 64}}\nservices:\n  web:\n    instances: [{{address: \"{primary}\"}}]\n  shadow:\n    instances: [{{address: \"{shadow}\"}}]\n"
    ))
    .await;
    let url = base(&running);
    let admin = running.admin_address();
    let client = client();

    let post = Request::post(format!("{url}/orders?id=7"))
        .header("x-trace", "abc")
        .body(Full::new(Bytes::from_static(b"two apples")))
        .unwrap();
    let got = send(&client, post).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.served_by(), "primary");
    assert!(got.body.contains("method: POST"), "{}", got.body);
    assert!(got.body.contains("body_bytes: 10"), "{}", got.body);

    let got = get(&client, &format!("{url}/cart"), &[]).await;
    assert_eq!((got.status, got.served_by()), (200, "primary".into()));

    // An idempotent request with a body is read whole first (so that it
    // can be retried); the copy is taken all the same.
    let put = Request::put(format!("{url}/items/1"))
        .body(Full::new(Bytes::from_static(b"blue")))
        .unwrap();
    let got = send(&client, put).await;
    assert_eq!((got.status, got.served_by()), (200, "primary".into()));

    // A chunked body is copied as it streams through.
    let raw = exchange(
        running.listeners()[0].address,
        "POST /upload HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.head);
    assert!(raw.body.contains("body_bytes: 11"), "{}", raw.body);

    wait_for("four copies", || seen.lock().unwrap().len() == 4).await;
    let mut copies = seen.lock().unwrap().clone();
    copies.sort();
    assert_eq!(
        copies,
        [
            ("GET".into(), "/cart".into(), String::new()),
            ("POST".into(), "/orders?id=7".into(), "two apples".into()),
            ("POST".into(), "/upload".into(), "hello world".into()),
            ("PUT".into(), "/items/1".into(), "blue".into()),
        ]
    );
    wait_for_metric(admin, &series("sent"), 4.0).await;

    // Over max_body_bytes, known up front or found while streaming: no
    // copy, counted; the primary is served all the same.
    let long = Request::post(format!("{url}/big"))
        .body(Full::new(Bytes::from(vec![b'x'; 100])))
        .unwrap();
    let got = send(&client, long).await;
    assert_eq!((got.status, got.served_by()), (200, "primary".into()));
    assert!(got.body.contains("body_bytes: 100"), "{}", got.body);
    let chunks = format!(
        "40\r\n{}\r\n40\r\n{}\r\n0\r\n\r\n",
        "y".repeat(64),
        "z".repeat(64)
    );
    let raw = exchange(
        running.listeners()[0].address,
        format!("POST /big-chunked HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunks}"),
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.head);
    assert!(raw.body.contains("body_bytes: 128"), "{}", raw.body);
    wait_for_metric(admin, &series("skipped_body"), 2.0).await;
    assert_eq!(seen.lock().unwrap().len(), 4, "no copy of a long body");
    running.shutdown().await;
}

/// The 99th percentile of `samples`.
fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

#[tokio::test]
async fn a_black_holed_mirror_adds_no_latency_and_dropped_copies_are_counted() {
    let primary = echo("primary").await;
    let hole = black_hole().await;
    let running = proxy(&format!(
        "routes:\n  - {{path_prefix: /plain, service: web}}\n  - {{path_prefix: /mirrored, service: web, mirror: {{service: shadow, max_in_flight: 4}}}}\nservices:\n  web:\n    instances: [{{address: \"{primary}\"}}]\n  shadow:\n    request_timeout: 60s\n    instances: [{{address: \"{hole}\"}}]\n"
    ))
    .await;
    let url = base(&running);
    let admin = running.admin_address();
    let client = client();
    for _ in 0..20 {
        get(&client, &format!("{url}/plain"), &[]).await;
    }
    let rounds = 200;
    let (mut plain, mut mirrored) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Interleaved, so both see the same load on the machine.
        for (path, samples) in [("plain", &mut plain), ("mirrored", &mut mirrored)] {
            let started = Instant::now();
            let got = if i % 2 == 0 {
                get(&client, &format!("{url}/{path}/{i}"), &[]).await
            } else {
                let post = Request::post(format!("{url}/{path}/{i}"))
                    .body(Full::new(Bytes::from_static(b"payload")))
                    .unwrap();
                send(&client, post).await
            };
            samples.push(started.elapsed());
            assert_eq!(
                (got.status, got.served_by()),
                (200, "primary".into()),
                "{path} {i}"
            );
        }
    }
    let (plain, mirrored) = (p99(plain), p99(mirrored));
    eprintln!("p99 over {rounds} requests: {plain:?} without a mirror, {mirrored:?} with the black-holed one");
    // Generous (the machine may be busy): a copy that held up its primary
    // would cost the mirror's whole 60 s request timeout.
    assert!(
        mirrored <= plain * 5 + Duration::from_millis(200),
        "p99 with a black-holed mirror {mirrored:?}, without {plain:?}"
    );
    // Four copies wait on the hole; every other one was dropped.
    let text = scrape(admin).await;
    assert_eq!(
        sample(&text, "switchyard_mirrors_in_flight{service=\"shadow\"}"),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, &series("dropped")),
        Some(f64::from(rounds - 4))
    );
    assert_eq!(sample(&text, &series("sent")), Some(0.0));
    running.shutdown().await;
}

#[tokio::test]
async fn percent_copies_about_that_share() {
    let primary = echo("primary").await;
    let (shadow, seen) = recorder().await;
    let running = proxy(&format!(
        "routes:\n  - service: web\n    mirror: {{service: shadow, percent: 25}}\nservices:\n  web:\n    instances: [{{address: \"{primary}\"}}]\n  shadow:\n    instances: [{{address: \"{shadow}\"}}]\n"
    ))
    .await;
    let url = base(&running);
    let client = client();
    for i in 0..400 {
        let got = get(&client, &format!("{url}/{i}"), &[]).await;
        assert_eq!(got.status, 200);
    }
    let admin = running.admin_address();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(admin, "switchyard_mirrors_in_flight{service=\"shadow\"}").await > 0.0 {
        assert!(Instant::now() < deadline, "copies still in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copies = seen.lock().unwrap().len();
    // 100 expected; the bounds are more than 5 standard deviations away.
    assert!(
        (50..=150).contains(&copies),
        "{copies} copies of 400 at 25%"
    );
    assert_eq!(metric(admin, &series("sent")).await, copies as f64);
    running.shutdown().await;
}

#[tokio::test]
async fn the_owned_http1_server_mirrors_too() {
    let primary = echo("primary").await;
    let (shadow, seen) = recorder().await;
    let text = format!(
        "listeners:\n  - {{address: 127.0.0.1:0, http1: owned}}\nadmin:\n  address: 127.0.0.1:0\nroutes:\n  - service: web\n    mirror: {{service: shadow}}\nservices:\n  web:\n    instances: [{{address: \"{primary}\"}}]\n  shadow:\n    instances: [{{address: \"{shadow}\"}}]\n"
    );
    let running = switchyard::server::start(switchyard::config::parse(&text).unwrap())
        .await
        .unwrap();
    let address = running.listeners()[0].address;
    let raw = exchange(
        address,
        "POST /chunked HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.head);
    assert!(raw.body.contains("body_bytes: 6"), "{}", raw.body);
    let raw = exchange(
        address,
        "GET /plain?q=1 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.head);
    wait_for("two copies", || seen.lock().unwrap().len() == 2).await;
    let mut copies = seen.lock().unwrap().clone();
    copies.sort();
    assert_eq!(
        copies,
        [
            ("GET".into(), "/plain?q=1".into(), String::new()),
            ("POST".into(), "/chunked".into(), "abcdef".into()),
        ]
    );
    running.shutdown().await;
}
