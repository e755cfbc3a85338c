//! `retry.max_body_bytes`: an idempotent request whose body fits is read
//! whole first and sent again after a reset; a larger body streams through
//! and is never sent twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// An upstream that reads each request whole (head and `Content-Length`
/// body), records its `x-test-id` and body size, then resets the
/// connection without answering.
async fn resetting(seen: Arc<Mutex<Vec<(String, usize)>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buffer = vec![0u8; 64 * 1024];
                let whole = tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        let n = stream.read(&mut buffer).await.ok()?;
                        if n == 0 {
                            return None;
                        }
                        read.extend_from_slice(&buffer[..n]);
                        let text = String::from_utf8_lossy(&read).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let head = text[..end].to_ascii_lowercase();
                        let field = |name: &str| {
                            head.lines()
                                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                                .map(str::to_string)
                        };
                        let length: usize = field("content-length")?.trim().parse().ok()?;
                        if read.len() >= end + 4 + length {
                            return Some((field("x-test-id").unwrap_or_default(), length));
                        }
                    }
                })
                .await;
                if let Ok(Some(request)) = whole {
                    seen.lock().unwrap().push(request);
                    // A reset, not an orderly close.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
            });
        }
    });
    address
}

struct Setup {
    proxy: switchyard::server::Running,
    reset_seen: Arc<Mutex<Vec<(String, usize)>>>,
}

async fn setup(retry: &str) -> Setup {
    let reset_seen = Arc::new(Mutex::new(Vec::new()));
    let resets = resetting(Arc::clone(&reset_seen)).await;
    let fine = echo("fine").await;
    let proxy = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    retry: {retry}\n    instances: [{{address: \"{resets}\"}}, {{address: \"{fine}\"}}]\n"
    ))
    .await;
    Setup { proxy, reset_seen }
}

async fn put(proxy: &switchyard::server::Running, id: usize, size: usize) -> Got {
    let request = Request::put(format!("{}/upload", base(proxy)))
        .header("x-test-id", id.to_string())
        .body(Full::new(Bytes::from(vec![b'x'; size])))
        .unwrap();
    send(&client(), request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_body_fits_is_sent_again_after_a_reset() {
    let setup = setup("{max_attempts: 2}").await;
    // Round-robin over two instances: half the first tries meet the reset.
    for id in 0..4 {
        let got = put(&setup.proxy, id, 10 * 1024).await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.served_by(), "fine");
        assert!(got.body.contains("body_bytes: 10240"), "{}", got.body);
    }
    let seen = setup.reset_seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "no request met the resetting instance");
    assert!(seen.iter().all(|(_, size)| *size == 10 * 1024), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_body_is_over_max_body_bytes_is_not_sent_again() {
    let setup = setup("{max_attempts: 2, max_body_bytes: 65536}").await;
    let mut failed = Vec::new();
    for id in 0..4 {
        let got = put(&setup.proxy, id, 200 * 1024).await;
        match got.status {
            200 => assert!(got.body.contains("body_bytes: 204800"), "{}", got.body),
            502 => failed.push(id.to_string()),
            other => panic!("unexpected {other}: {}", got.body),
        }
    }
    let seen = setup.reset_seen.lock().unwrap().clone();
    assert!(!failed.is_empty(), "no request met the resetting instance");
    // Each request that failed reached the resetting instance exactly once
    // (and was not retried on the other: it would have succeeded there).
    for id in &failed {
        let times = seen.iter().filter(|(seen_id, _)| seen_id == id).count();
        assert_eq!(times, 1, "request {id} seen {times} times: {seen:?}");
    }
    assert_eq!(seen.len(), failed.len(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_bytes_0_buffers_nothing_and_a_sent_put_is_not_retried() {
    let setup = setup("{max_attempts: 2, max_body_bytes: 0}").await;
    let mut statuses = Vec::new();
    for id in 0..4 {
        statuses.push(put(&setup.proxy, id, 1024).await.status);
    }
    assert!(statuses.contains(&502), "{statuses:?}");
}

#[test]
fn max_body_bytes_beyond_16_mib_is_refused_with_its_field() {
    let text = "listeners: [{address: 127.0.0.1:0}]\nroutes: [{service: s}]\nservices:\n  s:\n    retry: {max_body_bytes: 16777217}\n    instances: [{address: \"127.0.0.1:1\"}]\n";
    let errors = switchyard::config::parse(text).unwrap_err().to_string();
    assert!(
        errors.contains(
            "services.s.retry.max_body_bytes: must be between 0 and 16777216 (got 16777217)"
        ),
        "{errors}"
    );
}
