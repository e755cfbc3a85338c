//! Retries: the retry budget caps retries when every instance fails (no
//! N× amplification), and `retry.on: [gateway-error]` sends an idempotent
//! request that got a 503 to another instance, but never a POST.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// An upstream that reads a request, waits `hold`, and closes the
/// connection without answering; counts the requests it got.
async fn resetting(hold: Duration, seen: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                if matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {
                    seen.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(hold).await;
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_when_every_instance_resets() {
    let seen = Arc::new(AtomicUsize::new(0));
    // Each try holds for a second, so the 32 first tries overlap and every
    // retry holds its budget slot while the other first tries fail.
    let hold = Duration::from_secs(1);
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(format!("\"{}\"", resetting(hold, Arc::clone(&seen)).await));
    }
    let proxy = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    retry: {{max_attempts: 3}}\n    instances: [{}]\n",
        instances
            .iter()
            .map(|a| format!("{{address: {a}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await;
    let url = format!("{}/", base(&proxy));
    let mut requests = Vec::new();
    for _ in 0..32 {
        let url = url.clone();
        requests.push(tokio::spawn(async move {
            let client = client();
            get(&client, &url, &[]).await.status
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 502);
    }
    let tries = seen.load(Ordering::SeqCst);
    let text = scrape(proxy.admin_address()).await;
    let exhausted = sum(
        &text,
        "switchyard_upstream_retry_budget_exhausted_total",
        "",
    );
    let retries = sum(&text, "switchyard_upstream_retries_total", "");
    println!(
        "32 requests: {tries} tries upstream, {retries} retries, {exhausted} refused by the budget"
    );
    // 20% of 32 active = 6 requests may retry (2 more tries each): at most
    // 32 + 12 tries, against 96 without a budget.
    assert!(tries >= 32, "{tries}");
    assert!(tries <= 32 + 12, "{tries} tries: the budget did not hold");
    assert!(exhausted >= f64::from(32 - 6), "{exhausted}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_retried_for_idempotent_requests_only() {
    let failing = upstream(|_| async {
        Response::builder()
            .status(503)
            .header("x-served-by", "failing")
            .body(Full::new(Bytes::from_static(b"down")))
            .unwrap()
    })
    .await;
    let fine = echo("fine").await;
    let proxy = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    retry: {{max_attempts: 2, on: [connect-failure, reset, gateway-error]}}\n    instances: [{{address: \"{failing}\"}}, {{address: \"{fine}\"}}]\n"
    ))
    .await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    let mut posts_failed = 0;
    for _ in 0..6 {
        let got = get(&client, &url, &[]).await;
        assert_eq!((got.status, got.served_by()), (200, "fine".into()));
        let post = Request::post(url.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let got = send(&client, post).await;
        if got.status == 503 {
            posts_failed += 1;
        }
    }
    assert!(posts_failed > 0, "a POST was retried after a 503");
    proxy.shutdown().await;
}
