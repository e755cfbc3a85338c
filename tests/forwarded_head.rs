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
