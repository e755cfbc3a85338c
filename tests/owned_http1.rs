//! The owned HTTP/1.1 server (`listeners[].http1: owned`), over raw TCP:
//! pipelining, `Expect: 100-continue`, HTTP/1.0 and `Connection: close`,
//! its head limits and timeouts, HTTP/2 with prior knowledge handed to
//! hyper, and the choice of server per listener.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::read_response;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream that answers `METHOD PATH BODY`.
async fn echo_upstream() -> SocketAddr {
    upstream(|request: Request<hyper::body::Incoming>| async move {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let text = format!(
            "{} {} {}",
            parts.method,
            parts.uri.path(),
            String::from_utf8_lossy(&body)
        );
        Response::new(Full::new(Bytes::from(text)))
    })
    .await
}

async fn owned_proxy(listener_extra: &str) -> (switchyard::server::Running, SocketAddr) {
    let upstream = echo_upstream().await;
    let config = switchyard::config::parse(&format!(
        "listeners: [{{address: 127.0.0.1:0, http1: owned{listener_extra}}}]\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .unwrap();
    let proxy = switchyard::server::start(config).await.unwrap();
    let address = proxy.listeners()[0].address;
    (proxy, address)
}

/// Reads until the peer closes (10 s at most); whether it closed.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (_proxy, address) = owned_proxy("").await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    // One write: three requests, the second with a body, the third chunked.
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n\
              POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
              PUT /three HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              GET /four HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await
        .unwrap();
    // The answers may arrive in one segment: read them off one buffer.
    let mut bytes = Vec::new();
    let mut bodies = Vec::new();
    let started = Instant::now();
    while bodies.len() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answers so far: {bodies:?}"
        );
        if let Some((head, body, used)) = split_response(&bytes) {
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            assert!(head.contains("\r\ndate: "), "{head}");
            bodies.push(body);
            bytes.drain(..used);
            continue;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {bodies:?}");
        bytes.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(
        bodies,
        [
            "GET /one ",
            "POST /two hello",
            "PUT /three abc",
            "GET /four "
        ]
    );
}

/// The first whole response in `bytes` (framed by Content-Length): its
/// head, its body and how many bytes it took.
fn split_response(bytes: &[u8]) -> Option<(String, String, usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let body = bytes.get(head_end..head_end + length)?;
    Some((
        head,
        String::from_utf8_lossy(body).into_owned(),
        head_end + length,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body() {
    let (_proxy, address) = owned_proxy("").await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    // The body is sent only after the 100, as a waiting client does.
    let interim = read_response(&mut stream).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    stream.write_all(b"data").await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "POST /up data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_and_connection_close_end_the_connection() {
    let (_proxy, address) = owned_proxy("").await;
    for request in [
        "GET /a HTTP/1.0\r\nhost: x\r\n\r\n",
        "GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, 200);
        assert!(
            response
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{}",
            response.head
        );
        assert!(
            closed(&mut stream).await,
            "{request:?} left the connection open"
        );
    }
    // HTTP/1.0 asking for keep-alive gets it, and a second request.
    let mut stream = TcpStream::connect(address).await.unwrap();
    for path in ["/1", "/2"] {
        let request = format!("GET {path} HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert_eq!(response.body, format!("GET {path} "));
        assert!(
            response.head.contains("connection: keep-alive"),
            "{}",
            response.head
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_limits_give_414_and_431_and_close() {
    let (_proxy, address) =
        owned_proxy(", limits: {max_headers: 16, max_header_bytes: 8192}").await;
    let long_target = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(9000));
    let many = format!(
        "GET / HTTP/1.1\r\nhost: x\r\n{}\r\n",
        "x-a: b\r\n".repeat(16)
    );
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "b".repeat(8200)
    );
    for (request, status) in [(long_target, 414), (many, 431), (big, 431)] {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, status, "{}", &request[..40]);
        assert!(closed(&mut stream).await);
    }
    // Fifteen fields and a host: within the limit.
    let fits = format!(
        "GET /ok HTTP/1.1\r\nhost: x\r\n{}\r\n",
        "x-a: b\r\n".repeat(15)
    );
    let response = common::raw::exchange(address, &fits).await;
    assert_eq!(response.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_head_that_stalls_is_cut_off() {
    let (_proxy, address) = owned_proxy(", limits: {header_read_timeout: 1s}").await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    // Half a head, then nothing: closed after the timeout (the 10 s
    // bound in `closed` is far beyond the 1 s asked for).
    let started = Instant::now();
    stream
        .write_all(b"GET /second HTTP/1.1\r\nho")
        .await
        .unwrap();
    assert!(
        closed(&mut stream).await,
        "the stalled head was not cut off"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_goes_to_hyper() {
    let (_proxy, address) = owned_proxy("").await;
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(format!("http://{address}/h2"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(text, b"GET /h2 ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_is_chosen_per_listener() {
    // A request with both framing fields: the owned server refuses it,
    // hyper's lets chunked win (and closes after the answer).
    let request = "POST /both HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let (_owned, owned) = owned_proxy("").await;
    assert_eq!(common::raw::exchange(owned, request).await.status, 400);
    let upstream = echo_upstream().await;
    let hyper = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    let text = "listeners: [{address: 127.0.0.1:0, http1: hyper}]";
    switchyard::config::parse(text).unwrap();
    let with_hyper = switchyard::config::parse(&format!(
        "{text}\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .unwrap();
    let explicit = switchyard::server::start(with_hyper).await.unwrap();
    let response = common::raw::exchange(explicit.listeners()[0].address, request).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "POST /both abc");
    drop(hyper);
    let error = switchyard::config::parse("listeners: [{address: 127.0.0.1:0, http1: fast}]")
        .unwrap_err()
        .to_string();
    assert!(error.contains("listeners[0].http1"), "{error}");
    assert!(error.contains("`hyper` or `owned`"), "{error}");
}

/// A proxy whose admin API wants a token: a POST without one is answered
/// 401 before its body is read.
async fn token_proxy() -> (switchyard::server::Running, SocketAddr) {
    let config = switchyard::config::parse(
        "listeners: [{address: 127.0.0.1:0}]\nadmin: {address: 127.0.0.1:0, token: s3cret}\nroutes: [{service: s}]\nservices:\n  s: {instances: []}\n",
    )
    .unwrap();
    let proxy = switchyard::server::start(config).await.unwrap();
    let admin = proxy.admin_address();
    (proxy, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_nobody_read_is_discarded_and_the_connection_kept() {
    let (_proxy, admin) = token_proxy().await;
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let body = "{\"address\": \"127.0.0.1:9\"}";
    stream
        .write_all(
            format!(
                "POST /admin/services/s/instances HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let first = read_response(&mut stream).await;
    assert_eq!(first.status, 401, "{first:?}");
    assert!(
        !first
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{first:?}"
    );
    // The body was not taken for the next request, and the connection
    // was not closed under a client that could reuse it.
    stream
        .write_all(b"GET /admin/health HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let second = read_response(&mut stream).await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.body, "ok\n");
    // A chunked body nobody read goes the same way.
    stream
        .write_all(b"POST /admin/services/s/instances HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
        .await
        .unwrap();
    let third = read_response(&mut stream).await;
    assert_eq!(third.status, 401, "{third:?}");
    assert!(!third
        .head
        .to_ascii_lowercase()
        .contains("connection: close"));
    stream
        .write_all(b"GET /admin/health HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_unread_body_or_an_unanswered_expect_is_announced_as_a_close() {
    let (_proxy, admin) = token_proxy().await;
    let cases: [(&str, &[u8]); 3] = [
        // 10 MB announced, a little sent: too much to read and throw away.
        (
            "large body",
            b"POST /admin/services/s/instances HTTP/1.1\r\nhost: a\r\ncontent-length: 10000000\r\n\r\n{\"address\":",
        ),
        // A small body that stops coming: thrown away for a second at
        // most, then the connection ends with the answer.
        (
            "stalled body",
            b"POST /admin/services/s/instances HTTP/1.1\r\nhost: a\r\ncontent-length: 20\r\n\r\n{\"a\":",
        ),
        // The client waits for 100 Continue, which never comes: its body
        // may follow later or never, so the connection ends with the answer.
        (
            "unanswered expect",
            b"POST /admin/services/s/instances HTTP/1.1\r\nhost: a\r\ncontent-length: 20\r\nexpect: 100-continue\r\n\r\n",
        ),
    ];
    for (case, request) in cases {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        stream.write_all(request).await.unwrap();
        let answer = read_response(&mut stream).await;
        assert_eq!(answer.status, 401, "{case}: {answer:?}");
        assert!(
            answer
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{case}: a client must not reuse this connection: {answer:?}"
        );
        assert!(
            closed(&mut stream).await,
            "{case}: the connection stays open"
        );
    }
}
