//! Listener limits: oversize heads get 431, slow heads are cut off (the
//! slowloris defence), idle connections are closed, and HTTP/2 clients are
//! told the stream limit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn limited(limits: &str) -> switchyard::server::Running {
    let upstream = echo("up").await;
    let text = format!(
        "listeners:\n  - address: 127.0.0.1:0\n    limits: {limits}\nadmin:\n  address: 127.0.0.1:0\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    );
    switchyard::server::start(switchyard::config::parse(&text).unwrap())
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or 10 s pass).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    common::raw::until_closed(stream, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_head_gets_431() {
    let proxy = limited("{max_header_bytes: 8192}").await;
    let mut stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    let big = "x".repeat(20_000);
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A normal request on a new connection is fine.
    assert_eq!(
        get(&client(), &format!("{}/", base(&proxy)), &[])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_is_cut_off_at_the_header_timeout() {
    let proxy = limited("{header_read_timeout: 1s}").await;
    let mut stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    // One byte every 200 ms would take 10 s to finish the head.
    let mut closed_after = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stream.write_all(b"a").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the slow client was never cut off");
    assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
    assert!(
        closed_after >= Duration::from_millis(800),
        "{closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let proxy = limited("{idle_timeout: 500ms}").await;
    let mut stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: the proxy closes the connection.
    let started = Instant::now();
    let rest = read_until_closed(&mut stream).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(!rest.contains("HTTP/1.1"), "nothing more was sent: {rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_told_the_stream_limit() {
    let proxy = limited("{max_concurrent_streams: 7}").await;
    let stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    let (client, mut connection) = h2::client::handshake(stream).await.unwrap();
    // Drive the connection until the server's SETTINGS have arrived.
    let started = Instant::now();
    while connection.max_concurrent_send_streams() != 7 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "got {}",
            connection.max_concurrent_send_streams()
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), &mut connection).await;
    }
    drop(client);
}

/// A request head with `n` extra header fields (well under 8 KiB).
fn many_fields(n: usize) -> String {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..n {
        head.push_str(&format!("x-f{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_field_count_is_a_limit() {
    let default = limited("{}").await;
    let got = common::raw::exchange(default.listeners()[0].address, &many_fields(150)).await;
    assert_eq!(got.status, 431, "100 fields by default: {got:?}");
    let got = common::raw::exchange(default.listeners()[0].address, &many_fields(90)).await;
    assert_eq!(got.status, 200, "{got:?}");

    // hyper upstreams have the same 100-field limit: count the fields raw.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let fields = head.split(|b| *b == b'\n').count() - 3;
                let body = format!("fields: {fields}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let text = format!(
        "listeners:\n  - address: 127.0.0.1:0\n    limits: {{max_headers: 200}}\nadmin:\n  address: 127.0.0.1:0\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    );
    let raised = switchyard::server::start(switchyard::config::parse(&text).unwrap())
        .await
        .unwrap();
    let address = raised.listeners()[0].address;
    let got = common::raw::exchange(address, &many_fields(150)).await;
    assert_eq!(got.status, 200, "{got:?}");
    // 150, Host, and the X-Request-Id, three X-Forwarded-* and the
    // traceparent fields added.
    assert_eq!(got.body, "fields: 156");
    let got = common::raw::exchange(address, &many_fields(250)).await;
    assert_eq!(got.status, 431, "{got:?}");
}
