//! Heads forwarded by editing their bytes: what the client receives from
//! the owned HTTP/1.1 server, byte for byte, when the upstream's response
//! head is copied with only what must change edited (hop-by-hop fields and
//! the fields `Connection` names removed, `X-Request-Id` set, the framing
//! the client's connection needs), and that the upstream's order, case and
//! spacing survive otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An upstream that answers every request head on a connection with
/// `answer`, and reports each head it received (bytes as read).
async fn canned_upstream(answer: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (heads, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut chunk = [0u8; 4096];
                // At most 100 requests per connection.
                for _ in 0..100 {
                    let end = loop {
                        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head: Vec<u8> = bytes.drain(..end).collect();
                    let _ = heads.send(head);
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, received)
}

async fn proxy_to(upstream: SocketAddr, server: &str) -> (switchyard::server::Running, SocketAddr) {
    let config = switchyard::config::parse(&format!(
        "listeners: [{{address: 127.0.0.1:0, http1: {server}}}]\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .unwrap();
    let proxy = switchyard::server::start(config).await.unwrap();
    let address = proxy.listeners()[0].address;
    (proxy, address)
}

/// Reads exactly `n` bytes (10 s at most).
async fn read_exactly(stream: &mut TcpStream, n: usize) -> String {
    let mut bytes = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut bytes))
        .await
        .expect("an answer within 10 s")
        .expect("read the answer");
    String::from_utf8(bytes).unwrap()
}

const UPSTREAM_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: canned\r\n\
Date: Tue, 01 Dec 2026 10:00:00 GMT\r\n\
X-Mixed-Case:   Value  With  Spaces\r\n\
Connection: keep-alive, X-Secret\r\n\
x-secret: only for the proxy\r\n\
Keep-Alive: timeout=5\r\n\
Proxy-Authenticate: Basic\r\n\
X-Request-Id: from-upstream\r\n\
x-last:tail\r\n\
Content-Length: 5\r\n\
\r\n\
hello";

/// What the client gets: the same bytes, without the hop-by-hop fields and
/// the one `Connection` names, and with the request's id.
const CLIENT_ANSWER: &str = "HTTP/1.1 200 OK\r\n\
Server: canned\r\n\
Date: Tue, 01 Dec 2026 10:00:00 GMT\r\n\
X-Mixed-Case:   Value  With  Spaces\r\n\
x-last:tail\r\n\
Content-Length: 5\r\n\
x-request-id: from-client\r\n\
\r\n\
hello";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_head_is_copied_with_only_the_needed_edits() {
    let (upstream, _heads) = canned_upstream(UPSTREAM_ANSWER).await;
    let (_proxy, address) = proxy_to(upstream, "owned").await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    // Twice on one connection: the second goes over a reused upstream
    // connection too.
    for _ in 0..2 {
        stream
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: from-client\r\n\r\n")
            .await
            .unwrap();
        let answer = read_exactly(&mut stream, CLIENT_ANSWER.len()).await;
        assert_eq!(answer, CLIENT_ANSWER);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copied_head_gets_the_framing_of_the_client_connection() {
    // A chunked upstream answer: Transfer-Encoding is hop-by-hop, so the
    // owned server frames the body itself, and says so.
    let (upstream, _heads) = canned_upstream(
        b"HTTP/1.1 201 Created\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let (_proxy, address) = proxy_to(upstream, "owned").await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: r1\r\n\r\n")
        .await
        .unwrap();
    let expected_head = "HTTP/1.1 201 Created\r\nX-A: 1\r\nX-B: 2\r\nx-request-id: r1\r\ntransfer-encoding: chunked\r\n\r\n";
    let head = read_exactly(&mut stream, expected_head.len() + "date: \r\n".len() + 29).await;
    // The upstream sent no Date: the server adds one right after the status line.
    let (status, rest) = head.split_once("\r\n").unwrap();
    assert_eq!(status, "HTTP/1.1 201 Created");
    let (date, rest) = rest.split_once("\r\n").unwrap();
    assert!(
        date.starts_with("date: ") && date.ends_with(" GMT"),
        "{date}"
    );
    assert_eq!(
        format!("{status}\r\n{rest}"),
        expected_head,
        "the whole head: {head:?}"
    );
    assert_eq!(read_exactly(&mut stream, 13).await, "3\r\nabc\r\n0\r\n\r\n");

    // HTTP/1.0 without keep-alive: the server says it closes.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: x\r\nX-Request-Id: r2\r\n\r\n")
        .await
        .unwrap();
    let mut all = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut all))
        .await
        .expect("closed within 10 s")
        .unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    let lines: Vec<&str> = head.lines().filter(|l| !l.starts_with("date: ")).collect();
    assert_eq!(
        lines,
        [
            "HTTP/1.1 201 Created",
            "X-A: 1",
            "X-B: 2",
            "x-request-id: r2",
            "connection: close"
        ]
    );
    assert_eq!(body, "abc", "an HTTP/1.0 body ends at the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypers_server_gets_the_same_fields_from_a_map() {
    let (upstream, _heads) = canned_upstream(UPSTREAM_ANSWER).await;
    let (_proxy, address) = proxy_to(upstream, "hyper").await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: from-client\r\n\r\n")
        .await
        .unwrap();
    let answer = common::raw::read_response(&mut stream).await;
    let mut names: Vec<String> = answer
        .head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "content-length",
            "date",
            "server",
            "x-last",
            "x-mixed-case",
            "x-request-id"
        ]
    );
    assert!(answer.head.contains("x-request-id: from-client\r\n"));
    assert_eq!(answer.body, "hello");
}

/// A client request with hop-by-hop fields, a field its `Connection`
/// names, an underscored name, forwarding fields of its own and a prefix
/// the route strips.
const CLIENT_REQUEST: &[u8] = b"GET /api/items?x=1 HTTP/1.1\r\n\
Host: Example.Test\r\n\
User-Agent: test/1\r\n\
Connection: keep-alive, X-Hop\r\n\
X-Hop: secret\r\n\
Keep-Alive: timeout=5\r\n\
X_Under: no\r\n\
X-Forwarded-For: 10.0.0.1\r\n\
X-Forwarded-Proto: https\r\n\
X-Request-Id: rid-1\r\n\
Accept: */*\r\n\
\r\n";

/// What the upstream receives for [`CLIENT_REQUEST`]: the peer is not a
/// trusted proxy, so its X-Forwarded-For is kept with the peer appended,
/// Proto and Host are this proxy's own; the prefix is gone from the target,
/// the hop-by-hop fields, the one `Connection` names and the underscored
/// one are gone, the rest keeps its order, case and spacing.
const UPSTREAM_REQUEST: &str = "GET /items?x=1 HTTP/1.1\r\n\
Host: Example.Test\r\n\
User-Agent: test/1\r\n\
X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n\
X-Forwarded-Proto: http\r\n\
X-Request-Id: rid-1\r\n\
Accept: */*\r\n\
x-forwarded-host: Example.Test\r\n\
traceparent: (new)\r\n\
\r\n";

/// `head` with the value of its one `traceparent` field (new per request:
/// the proxy's own span) checked and replaced by `(new)`.
fn without_traceparent(head: &str) -> String {
    let (before, after) = head
        .split_once("traceparent: ")
        .unwrap_or_else(|| panic!("no traceparent: {head}"));
    let (value, after) = after.split_once("\r\n").unwrap();
    assert_eq!(value.len(), 55, "{value}");
    assert!(value.starts_with("00-"), "{value}");
    assert!(!after.contains("traceparent: "), "one traceparent: {head}");
    format!("{before}traceparent: (new)\r\n{after}")
}

/// Sends [`CLIENT_REQUEST`] through a proxy with `server`, `times` times on
/// one connection; what the upstream received each time.
async fn forwarded_heads(server: &str, client_request: &[u8], times: usize) -> Vec<String> {
    let (upstream, mut heads) =
        canned_upstream(b"HTTP/1.1 204 No Content\r\nServer: canned\r\n\r\n").await;
    let config = switchyard::config::parse(&format!(
        "listeners: [{{address: 127.0.0.1:0, http1: {server}}}]\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{path_prefix: /api, strip_prefix: true, service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .unwrap();
    let proxy = switchyard::server::start(config).await.unwrap();
    let mut stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    let mut received = Vec::new();
    for _ in 0..times {
        stream.write_all(client_request).await.unwrap();
        let answer = common::raw::read_response(&mut stream).await;
        assert_eq!(answer.status, 204, "{server}: {}", answer.head);
        let head = tokio::time::timeout(Duration::from_secs(10), heads.recv())
            .await
            .expect("the upstream got a request within 10 s")
            .unwrap();
        received.push(without_traceparent(&String::from_utf8(head).unwrap()));
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_receives_the_request_head_with_only_the_needed_edits() {
    // Twice: the second time over the pooled upstream connection.
    for head in forwarded_heads("owned", CLIENT_REQUEST, 2).await {
        assert_eq!(head, UPSTREAM_REQUEST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_an_id_gets_one_in_its_forwarded_head() {
    let request = b"GET /api/ HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n";
    let heads = forwarded_heads("owned", request, 1).await;
    let (before, id) = heads[0]
        .split_once("x-request-id: ")
        .expect("an id was added");
    assert_eq!(before, "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n");
    let (id, rest) = id.split_once("\r\n").unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(
        rest,
        "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: h\r\ntraceparent: (new)\r\n\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypers_server_forwards_the_same_fields_rebuilt() {
    // The map path: the same fields, names in lower case, in its own order.
    let heads = forwarded_heads("hyper", CLIENT_REQUEST, 1).await;
    let lines = |text: &str| {
        let mut lines: Vec<String> = text
            .lines()
            .map(|line| match line.split_once(": ") {
                Some((name, value)) => format!("{}: {value}", name.to_ascii_lowercase()),
                None => line.to_string(),
            })
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(lines(&heads[0]), lines(UPSTREAM_REQUEST));
}
