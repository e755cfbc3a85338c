//! A client that fails its own request body (goes away or resets its
//! HTTP/2 stream mid-upload, breaks the chunked framing, uploads slower
//! than the request timeout) gets 499
//! (logged; it is gone), 400 or 408, never a 502, and never counts against
//! the instance: outlier detection does not eject it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Response};
use http_body_util::{BodyExt, Full};
use switchyard::server::Running;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An upstream that reads the whole request body and answers with its size.
async fn body_reader() -> SocketAddr {
    upstream(|request| async move {
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::new(),
        };
        Response::new(Full::new(Bytes::from(format!("read {}", body.len()))))
    })
    .await
}

/// One instance that five failures in a row would eject.
async fn proxy_with_outlier_detection(settings: &str) -> Running {
    let upstream = body_reader().await;
    proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    {settings}outlier_detection: {{consecutive_failures: 5, base_ejection_time: 60s, max_ejection_percent: 100}}\n    instances: [{{id: a, address: \"{upstream}\"}}]\n"
    ))
    .await
}

async fn instance_health(running: &Running) -> serde_json::Value {
    let (_, body) = common::admin::call(running.admin_address(), Method::GET, "/admin/status")
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["services"][0]["instances"][0].clone()
}

const ANSWERED_4XX: &str =
    "switchyard_requests_total{service=\"s\",instance=\"none\",class=\"4xx\"}";
const ANSWERED_5XX: &str =
    "switchyard_requests_total{service=\"s\",instance=\"none\",class=\"5xx\"}";

/// Waits (up to 10 s) until the proxy has counted `n` answers of its own
/// in the 4xx class: a client that left gets no answer to read, so the
/// metric is how the test sees the request was dealt with.
async fn wait_for_4xx(running: &Running, n: f64) {
    let started = Instant::now();
    loop {
        let seen = metric(running.admin_address(), ANSWERED_4XX).await;
        if seen >= n {
            assert_eq!(seen, n);
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {seen} of {n} client failures were counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The instance took no blame: still in, and serving.
async fn assert_instance_untouched(running: &Running) {
    let instance = instance_health(running).await;
    assert_eq!(instance["health"], "healthy", "{instance}");
    assert_eq!(instance["ejections"], 0, "{instance}");
    assert_eq!(metric(running.admin_address(), ANSWERED_5XX).await, 0.0);
    let got = get(&client(), &format!("{}/", base(running)), &[]).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body, "read 0");
}

/// Sends `bytes` and reads the answer until the proxy closes (10 s at most).
async fn exchange(running: &Running, bytes: &[u8]) -> String {
    let address = running.listeners()[0].address;
    common::raw::send_until_closed(address, bytes, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_closing_mid_upload_are_499_and_eject_nothing() {
    let proxy = proxy_with_outlier_detection("").await;
    for _ in 0..15 {
        let mut stream = TcpStream::connect(proxy.listeners()[0].address)
            .await
            .unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(stream);
    }
    wait_for_4xx(&proxy, 15.0).await;
    assert_instance_untouched(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_are_400_and_eject_nothing() {
    let proxy = proxy_with_outlier_detection("").await;
    for _ in 0..15 {
        let answer = exchange(
            &proxy,
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
        assert!(answer.contains("request body is malformed"), "{answer:?}");
    }
    wait_for_4xx(&proxy, 15.0).await;
    assert_instance_untouched(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_slower_than_the_request_timeout_are_408_and_eject_nothing() {
    let proxy = proxy_with_outlier_detection("request_timeout: 300ms\n    ").await;
    for _ in 0..6 {
        // Ten bytes of a thousand, then nothing: the client stalls.
        let answer = exchange(
            &proxy,
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
    wait_for_4xx(&proxy, 6.0).await;
    assert_instance_untouched(&proxy).await;
}

/// A request body that sends ten bytes, then fails after 150 ms: the
/// client gives up on its upload (hyper resets the HTTP/2 stream).
struct Aborting {
    sent: bool,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Aborting {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"0123456789",
            )))));
        }
        ready!(self.pause.as_mut().poll(cx));
        Poll::Ready(Some(Err("the client gave up".into())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_resetting_mid_upload_are_499_and_eject_nothing() {
    let proxy = proxy_with_outlier_detection("").await;
    let mut sender = h2c(proxy.listeners()[0].address).await;
    for _ in 0..15 {
        let request = http::Request::post("http://s.test/")
            .header("content-length", "1000")
            .body(Aborting {
                sent: false,
                pause: Box::pin(tokio::time::sleep(Duration::from_millis(150))),
            })
            .unwrap();
        // The exchange fails on the client's side; only the proxy's
        // accounting is of interest.
        let _ = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await;
    }
    wait_for_4xx(&proxy, 15.0).await;
    assert_instance_untouched(&proxy).await;
}
