//! What a request is for, as the proxy decides it: one host routes the
//! request and is the Host sent upstream, bad hosts and dot segments get
//! 400, underscored header names are dropped, and GET bodies of unknown
//! length arrive whole.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::raw::{exchange, read_response};
use common::*;
use http::Response;
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An upstream that counts the requests it gets.
async fn counting() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let address = upstream(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Response::new(Full::new(Bytes::from_static(b"reached"))) }
    })
    .await;
    (address, count)
}

/// Sends one HTTP/2 request (prior knowledge) with `headers` besides the
/// pseudo-headers of `uri`; returns the status and the body.
async fn h2_get(
    proxy: &switchyard::server::Running,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&'static [u8]>,
) -> (u16, String) {
    let exchange = async {
        let stream = TcpStream::connect(proxy.listeners()[0].address)
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(stream).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let mut request = http::Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap();
        let (response, mut stream) = client.send_request(request, body.is_none()).unwrap();
        if let Some(body) = body {
            // DATA frames without a content-length.
            stream.send_data(Bytes::from_static(body), true).unwrap();
        }
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        (status, String::from_utf8_lossy(&text).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an HTTP/2 answer within 10s")
}

fn echoed<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("  {name}: ");
    body.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_that_routes_is_the_host_forwarded() {
    let (demo, other) = (echo("demo").await, echo("other").await);
    let proxy = proxy(&format!(
        r#"
routes:
  - host: "*.demo.test"
    service: demo
  - host: internal.test
    service: demo
  - service: other
services:
  demo: {{instances: [{{address: "{demo}"}}]}}
  other: {{instances: [{{address: "{other}"}}]}}
"#
    ))
    .await;
    let address = proxy.listeners()[0].address;
    // HTTP/1.1 absolute form: the target's authority replaces Host.
    let got = exchange(
        address,
        "GET http://a.demo.test/api/x HTTP/1.1\r\nHost: other\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(got.body.contains("instance: demo"), "{}", got.body);
    assert_eq!(got.echoed("host").as_deref(), Some("a.demo.test"));
    assert_eq!(
        got.echoed("x-forwarded-host").as_deref(),
        Some("a.demo.test")
    );
    assert!(got.body.contains("path: /api/x"), "{}", got.body);

    // HTTP/2: :authority is the host; a Host that differs is malformed.
    let (status, body) = h2_get(&proxy, "http://internal.test/h2", &[], None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body, "host"), Some("internal.test"));
    assert_eq!(echoed(&body, "x-forwarded-host"), Some("internal.test"));
    let (status, body) = h2_get(
        &proxy,
        "http://internal.test/h2",
        &[("host", "mal.test")],
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("differs from :authority"), "{body}");
    let (status, body) = h2_get(
        &proxy,
        "http://internal.test/h2",
        &[("host", "internal.test")],
        None,
    )
    .await;
    assert_eq!(status, 200, "the same host twice is fine: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hosts_get_400_and_never_reach_an_upstream() {
    let (reached, count) = counting().await;
    let proxy = proxy(&format!(
        "routes:\n  - host: internal.test\n    service: s\nservices:\n  s: {{instances: [{{address: \"{reached}\"}}]}}\n"
    ))
    .await;
    let address = proxy.listeners()[0].address;
    let cases = [
        (
            "GET / HTTP/1.1\r\nHost: internal.test\r\nHost: internal.test\r\n\r\n",
            "more than one Host header",
        ),
        ("GET / HTTP/1.1\r\n\r\n", "no Host header"),
        (
            "GET / HTTP/1.1\r\nHost: internal.test x\r\n\r\n",
            "invalid Host header",
        ),
        (
            "GET / HTTP/1.1\r\nHost: evil@internal.test\r\n\r\n",
            "invalid Host header",
        ),
        (
            "GET / HTTP/1.1\r\nHost: internal.test:99999\r\n\r\n",
            "invalid Host header",
        ),
        (
            "GET http://evil@internal.test/ HTTP/1.1\r\nHost: internal.test\r\n\r\n",
            "user information",
        ),
    ];
    for (request, words) in cases {
        let got = exchange(address, request).await;
        assert_eq!(got.status, 400, "{request:?}: {got:?}");
        assert!(got.body.contains(words), "{request:?}: {}", got.body);
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "no bad request went upstream"
    );

    // A trailing dot names the same host; HTTP/1.0 may omit Host.
    let got = exchange(address, "GET / HTTP/1.1\r\nHost: Internal.Test.\r\n\r\n").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body, "reached");
    let got = exchange(address, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(got.status, 404, "no route for any host: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_refused_and_other_paths_pass_byte_for_byte() {
    let (api, web) = (echo("api").await, echo("web").await);
    let proxy = proxy(&format!(
        r#"
routes:
  - path_prefix: /api
    strip_prefix: true
    service: api
  - service: web
services:
  api: {{instances: [{{address: "{api}"}}]}}
  web: {{instances: [{{address: "{web}"}}]}}
"#
    ))
    .await;
    let address = proxy.listeners()[0].address;
    for path in [
        "/api/../../secret",
        "/api/%2e%2e/secret",
        "/api/.%2E/%2e%2e/secret",
        "/api/..%2fsecret",
        "/api/./x",
        "/api/..;/secret",
    ] {
        let got = exchange(
            address,
            &format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        )
        .await;
        assert_eq!(got.status, 400, "{path}: {got:?}");
        assert!(
            got.body.contains("`.` or `..` segment"),
            "{path}: {}",
            got.body
        );
    }
    for (path, instance, upstream_path) in [
        ("/api/.well-known/x?a=../b", "api", "/.well-known/x?a=../b"),
        ("/api/a%2Fb/..c/...", "api", "/a%2Fb/..c/..."),
        ("/web//x/", "web", "/web//x/"),
    ] {
        let got = exchange(
            address,
            &format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        )
        .await;
        assert_eq!(got.status, 200, "{path}: {got:?}");
        assert!(
            got.body.contains(&format!("instance: {instance}")),
            "{}",
            got.body
        );
        assert!(
            got.body.contains(&format!("path: {upstream_path}\n")),
            "{path}: {}",
            got.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_header_names_are_dropped_unless_kept() {
    let upstream = echo("up").await;
    let routes = format!(
        "routes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    );
    let headers = [
        ("x_forwarded_for", "6.6.6.6"),
        ("auth_user", "admin"),
        ("x-plain", "kept"),
    ];
    let dropping = proxy(&routes).await;
    let got = get(&client(), &format!("{}/", base(&dropping)), &headers).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.echoed("x_forwarded_for"), None, "{}", got.body);
    assert_eq!(got.echoed("auth_user"), None, "{}", got.body);
    assert_eq!(got.echoed("x-plain").as_deref(), Some("kept"));

    let keeping = proxy(&format!("underscores_in_headers: true\n{routes}")).await;
    let got = get(&client(), &format!("{}/", base(&keeping)), &headers).await;
    assert_eq!(got.echoed("x_forwarded_for").as_deref(), Some("6.6.6.6"));
    assert_eq!(got.echoed("auth_user").as_deref(), Some("admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_bodies_of_unknown_length_are_forwarded_whole() {
    let upstream = echo("up").await;
    let proxy = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    for method in ["GET", "POST"] {
        stream
            .write_all(
                format!(
                    "{method} /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let got = read_response(&mut stream).await;
        assert_eq!(got.status, 200, "{method}: {got:?}");
        assert!(
            got.body.contains("body_bytes: 11"),
            "{method}: {}",
            got.body
        );
        assert_eq!(got.echoed("transfer-encoding").as_deref(), Some("chunked"));
    }
    // The connection is still in step: a request without a body follows.
    stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let got = read_response(&mut stream).await;
    assert!(got.body.contains("path: /after"), "{}", got.body);
    assert!(got.body.contains("body_bytes: 0"), "{}", got.body);

    // HTTP/2 DATA frames without a content-length.
    let (status, body) = h2_get(&proxy, "http://a.test/h2", &[], Some(b"hello h2")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("body_bytes: 8"), "{body}");
}
