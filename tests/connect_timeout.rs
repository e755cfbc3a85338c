//! `connect_timeout` against an instance that never completes the TCP
//! handshake: a loopback listener whose accept queue is full drops every
//! further SYN, which is how a host behind a silent firewall looks. The
//! request gets a 504 once the timeout runs out, or is served by another
//! instance when there is one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};

/// A listener that never accepts, with its accept queue filled, and the
/// connections that fill it (kept open so the queue stays full).
struct BlackHole {
    address: SocketAddr,
    _listener: Socket,
    _queued: Vec<TcpStream>,
}

impl BlackHole {
    fn start() -> BlackHole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(0).unwrap();
        let address = listener.local_addr().unwrap().as_socket().unwrap();
        // Connect until a handshake does not complete: from then on the
        // kernel drops SYNs to this port. Bounded: the queue holds a few.
        let mut queued = Vec::new();
        let mut full = false;
        for _ in 0..32 {
            match TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
                Ok(stream) => queued.push(stream),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        assert!(full, "the accept queue of {address} never filled");
        BlackHole {
            address,
            _listener: listener,
            _queued: queued,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_completes_the_handshake_gets_504_after_the_connect_timeout() {
    let hole = tokio::task::spawn_blocking(BlackHole::start).await.unwrap();
    let proxy = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    connect_timeout: 300ms\n    instances: [{{address: \"{}\"}}]\n",
        hole.address
    ))
    .await;
    let started = Instant::now();
    let answer = get(&client(), &format!("{}/", base(&proxy)), &[]).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert!(
        answer.body.contains("did not accept a connection in time"),
        "{}",
        answer.body
    );
    assert!(
        !answer.body.contains(&hole.address.port().to_string()),
        "no internal address in the answer: {}",
        answer.body
    );
    // At least one timeout ran out; every attempt is bounded by it (the
    // default of three attempts all go to the one instance).
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_is_retried_on_another_instance() {
    let hole = tokio::task::spawn_blocking(BlackHole::start).await.unwrap();
    let good = echo("good").await;
    let proxy = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    strategy: round_robin\n    connect_timeout: 300ms\n    instances: [{{address: \"{}\"}}, {{address: \"{good}\"}}]\n",
        hole.address
    ))
    .await;
    let url = format!("{}/", base(&proxy));
    for i in 0..6 {
        let answer = get(&client(), &url, &[]).await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
        assert_eq!(
            answer
                .headers
                .get("x-served-by")
                .and_then(|v| v.to_str().ok()),
            Some("good"),
            "request {i}"
        );
    }
}
