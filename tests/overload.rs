//! Overload protection: a service's circuit breaker (`max_requests`, the
//! optional queue) and the listener's connections per client IP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// An upstream that holds every request until released, counting the
/// requests that arrived.
struct Held {
    address: SocketAddr,
    arrived: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl Held {
    async fn start() -> Held {
        let arrived = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let count = Arc::clone(&arrived);
        let address = upstream(move |_request| {
            let (count, mut released) = (Arc::clone(&count), released.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                // Bounded: a test that forgets to release fails, not hangs.
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), released.wait_for(|r| *r)).await;
                http::Response::new(Full::new(Bytes::from_static(b"done")))
            }
        })
        .await;
        Held {
            address,
            arrived,
            release,
        }
    }

    /// Waits (10 s at most) until `n` requests have arrived.
    async fn until_arrived(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.arrived.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests arrived",
                self.arrived.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn breaker_proxy(held: &Held, breaker: &str) -> switchyard::server::Running {
    proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    request_timeout: 30s\n    circuit_breaker: {breaker}\n    instances: [{{address: \"{}\"}}]\n",
        held.address
    ))
    .await
}

fn spawn_get(url: &str) -> tokio::task::JoinHandle<Got> {
    let url = url.to_string();
    tokio::spawn(async move { get(&client(), &url, &[]).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_third_concurrent_request_over_max_requests_2_gets_503_with_the_overflow_header() {
    let held = Held::start().await;
    let proxy = breaker_proxy(&held, "{max_requests: 2}").await;
    let url = format!("{}/", base(&proxy));
    let first = spawn_get(&url);
    let second = spawn_get(&url);
    held.until_arrived(2).await;
    let third = get(&client(), &url, &[]).await;
    assert_eq!(third.status, 503, "{}", third.body);
    assert_eq!(
        third.headers.get("x-switchyard-overflow").unwrap(),
        "max_requests"
    );
    assert!(third.body.contains("max_requests"), "{}", third.body);
    assert_eq!(held.arrived.load(Ordering::SeqCst), 2);
    held.release.send(true).unwrap();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    // Places are given back when the responses end.
    assert_eq!(get(&client(), &url, &[]).await.status, 200);
    let text = scrape(proxy.admin_address()).await;
    assert_eq!(
        sample(
            &text,
            "switchyard_circuit_breaker_overflow_total{service=\"s\",which=\"max_requests\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_waits_for_a_place_then_is_served() {
    let held = Held::start().await;
    let proxy = breaker_proxy(&held, "{max_requests: 1, queue: {size: 1, timeout: 10s}}").await;
    let url = format!("{}/", base(&proxy));
    let first = spawn_get(&url);
    held.until_arrived(1).await;
    let queued = spawn_get(&url);
    // Only the first reached the upstream; the second waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held.arrived.load(Ordering::SeqCst), 1);
    assert!(!queued.is_finished());
    held.release.send(true).unwrap();
    assert_eq!(first.await.unwrap().status, 200);
    let served = queued.await.unwrap();
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(held.arrived.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_gets_503_when_its_wait_runs_out() {
    let held = Held::start().await;
    let proxy = breaker_proxy(&held, "{max_requests: 1, queue: {size: 4, timeout: 500ms}}").await;
    let url = format!("{}/", base(&proxy));
    let first = spawn_get(&url);
    held.until_arrived(1).await;
    let started = Instant::now();
    let waited = get(&client(), &url, &[]).await;
    let elapsed = started.elapsed();
    assert_eq!(waited.status, 503, "{}", waited.body);
    assert_eq!(
        waited.headers.get("x-switchyard-overflow").unwrap(),
        "queue_timeout"
    );
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    held.release.send(true).unwrap();
    assert_eq!(first.await.unwrap().status, 200);
}

/// Sends one request on `stream` and reads the head of its answer.
async fn one_request(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    common::raw::read_response(stream).await.head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ip_gets_no_more_connections_than_max_connections_per_ip() {
    let upstream = echo("up").await;
    let text = format!(
        "listeners:\n  - address: 127.0.0.1:0\n    limits: {{max_connections_per_ip: 2}}\nadmin:\n  address: 127.0.0.1:0\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    );
    let proxy = switchyard::server::start(switchyard::config::parse(&text).unwrap())
        .await
        .unwrap();
    let address = proxy.listeners()[0].address;
    let mut first = TcpStream::connect(address).await.unwrap();
    let mut second = TcpStream::connect(address).await.unwrap();
    assert!(one_request(&mut first).await.starts_with("HTTP/1.1 200"));
    assert!(one_request(&mut second).await.starts_with("HTTP/1.1 200"));
    // The third is closed at once, before anything is read.
    let mut third = TcpStream::connect(address).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buffer))
        .await
        .expect("the third connection is closed, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // One closes: a new connection is let in (the count drops when the
    // proxy sees the close, so poll).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = TcpStream::connect(address).await.unwrap();
        let _ = again.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let mut buffer = [0u8; 12];
        if let Ok(Ok(12)) =
            tokio::time::timeout(Duration::from_secs(5), again.read_exact(&mut buffer)).await
        {
            assert_eq!(&buffer, b"HTTP/1.1 200");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection let in after one closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(one_request(&mut second).await.starts_with("HTTP/1.1 200"));
    let metrics = scrape(proxy.admin_address()).await;
    assert!(
        sum(&metrics, "switchyard_connections_rejected_per_ip_total", "") >= 1.0,
        "{metrics}"
    );
}

/// A slow upstream like [`Held`] that also counts the TCP connections it
/// accepted.
struct Counted {
    held: Held,
    accepted: Arc<AtomicUsize>,
}

impl Counted {
    async fn start() -> Counted {
        let held = Held::start().await;
        // A front that counts accepts and pipes each connection to `held`.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let behind = held.address;
        tokio::spawn(async move {
            for _ in 0..1000 {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(behind).await {
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                    }
                });
            }
        });
        Counted {
            held: Held {
                address: front,
                ..held
            },
            accepted,
        }
    }
}

async fn services_proxy(instances: &[SocketAddr], service: &str) -> switchyard::server::Running {
    let list: Vec<String> = instances
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    request_timeout: 30s\n{service}    instances: [{}]\n",
        list.join(", ")
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_2_opens_two_connections_and_the_rest_wait_up_to_max_pending() {
    let a = Counted::start().await;
    let proxy = services_proxy(
        &[a.held.address],
        "    connect_timeout: 10s\n    circuit_breaker: {max_connections: 2, max_pending: 1}\n",
    )
    .await;
    let url = format!("{}/", base(&proxy));
    let first = spawn_get(&url);
    let second = spawn_get(&url);
    a.held.until_arrived(2).await;
    // The third waits for a connection: it is pending.
    let third = spawn_get(&url);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        proxy.admin_address(),
        "switchyard_upstream_pending{service=\"s\"}",
    )
    .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "the third request never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fourth finds the one pending place taken.
    let fourth = get(&client(), &url, &[]).await;
    assert_eq!(fourth.status, 503, "{}", fourth.body);
    assert_eq!(
        fourth.headers.get("x-switchyard-overflow").unwrap(),
        "max_pending"
    );
    assert!(fourth.body.contains("max_pending"), "{}", fourth.body);
    assert!(!third.is_finished());
    assert_eq!(a.held.arrived.load(Ordering::SeqCst), 2);
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        2,
        "upstream connections opened"
    );
    a.held.release.send(true).unwrap();
    for request in [first, second, third] {
        let got = request.await.unwrap();
        assert_eq!(got.status, 200, "{}", got.body);
    }
    // The third goes on a connection the first two give back, or, when
    // that one went back to another worker's idle list, on a new one
    // opened after closing it: never more than two open at once.
    assert!(a.accepted.load(Ordering::SeqCst) <= 3);
    let text = scrape(proxy.admin_address()).await;
    assert_eq!(
        sample(
            &text,
            "switchyard_circuit_breaker_overflow_total{service=\"s\",which=\"max_pending\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "switchyard_upstream_pending{service=\"s\"}"),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_counts_the_connections_to_all_instances_of_the_service() {
    let (a, b, c) = (
        Counted::start().await,
        Counted::start().await,
        Counted::start().await,
    );
    let proxy = services_proxy(
        &[a.held.address, b.held.address, c.held.address],
        "    connect_timeout: 10s\n    circuit_breaker: {max_connections: 2, max_pending: 0}\n",
    )
    .await;
    let url = format!("{}/", base(&proxy));
    let first = spawn_get(&url);
    let second = spawn_get(&url);
    let arrived = || {
        [&a, &b, &c]
            .iter()
            .map(|u| u.held.arrived.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived() < 2 {
        assert!(Instant::now() < deadline, "the first two never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Whichever instance the third is sent to, the service has its two
    // connections open, and no request may wait.
    let third = get(&client(), &url, &[]).await;
    assert_eq!(third.status, 503, "{}", third.body);
    assert_eq!(
        third.headers.get("x-switchyard-overflow").unwrap(),
        "max_pending"
    );
    for u in [&a, &b, &c] {
        u.held.release.send(true).unwrap();
    }
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    let accepted: usize = [&a, &b, &c]
        .iter()
        .map(|u| u.accepted.load(Ordering::SeqCst))
        .sum();
    assert_eq!(accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_connection_past_the_connect_timeout_gets_503_max_connections() {
    let a = Counted::start().await;
    let proxy = services_proxy(
        &[a.held.address],
        "    connect_timeout: 500ms\n    circuit_breaker: {max_connections: 1}\n",
    )
    .await;
    let url = format!("{}/", base(&proxy));
    let first = spawn_get(&url);
    a.held.until_arrived(1).await;
    let started = Instant::now();
    let waited = get(&client(), &url, &[]).await;
    let elapsed = started.elapsed();
    assert_eq!(waited.status, 503, "{}", waited.body);
    assert_eq!(
        waited.headers.get("x-switchyard-overflow").unwrap(),
        "max_connections"
    );
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    a.held.release.send(true).unwrap();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        metric(
            proxy.admin_address(),
            "switchyard_circuit_breaker_overflow_total{service=\"s\",which=\"max_connections\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_of_another_instance_makes_room_under_max_connections() {
    let instances = [echo("a").await, echo("b").await, echo("c").await];
    let proxy = services_proxy(
        &instances,
        "    connect_timeout: 5s\n    circuit_breaker: {max_connections: 2}\n",
    )
    .await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    // Round robin over three instances with room for two connections:
    // each request after the second needs an idle one elsewhere closed.
    let started = Instant::now();
    let mut served = std::collections::HashSet::new();
    for _ in 0..6 {
        let got = get(&client, &url, &[]).await;
        assert_eq!(got.status, 200, "{}", got.body);
        served.insert(got.served_by());
    }
    assert_eq!(served.len(), 3, "{served:?}");
    // No request waited for the connect timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
