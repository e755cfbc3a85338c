//! HTTP/1.1 upgrades through the proxy: a real WebSocket client and server
//! (tokio-tungstenite) exchange messages through switchyard, across a config
//! reload, while the tunnel counts as in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that echoes every text message with a prefix.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    match message {
                        Message::Text(text) => {
                            let _ = socket.send(Message::text(format!("echo: {text}"))).await;
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
        }
    });
    address
}

async fn in_flight(admin: SocketAddr) -> u64 {
    let (_, body) = switchyard::admin_client::call(admin, Method::GET, "/admin/services/ws")
        .await
        .unwrap();
    let service: serde_json::Value = serde_json::from_str(&body).unwrap();
    service["instances"][0]["in_flight"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_talks_through_the_proxy_and_survives_a_reload() {
    let upstream = websocket_echo().await;
    let plain = echo("plain").await;
    let dir = common::binary::temp_dir();
    let path = dir.join("proxy.yaml");
    let text = |weight: u32| {
        format!(
            "listeners: [{{address: 127.0.0.1:0}}]\nadmin: {{address: 127.0.0.1:0}}\nroutes:\n  - {{host: ws.test, service: ws}}\n  - {{service: plain}}\nservices:\n  ws: {{strategy: least_connections, instances: [{{id: echo, address: \"{upstream}\", weight: {weight}}}]}}\n  plain: {{instances: [{{address: \"{plain}\"}}]}}\n"
        )
    };
    std::fs::write(&path, text(1)).unwrap();
    let mut options = switchyard::server::LiveOptions::new(&path);
    options.watch = false;
    let proxy = switchyard::server::start_live(options).await.unwrap();
    let listener = proxy.listeners()[0].address;

    let stream = TcpStream::connect(listener).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async("ws://ws.test/chat", stream)
        .await
        .expect("the WebSocket handshake goes through the proxy");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"));
    for i in 0..3 {
        socket
            .send(Message::text(format!("hello {i}")))
            .await
            .unwrap();
        let answer = socket.next().await.unwrap().unwrap();
        assert_eq!(
            answer.into_text().unwrap().as_str(),
            format!("echo: hello {i}")
        );
    }
    assert_eq!(
        in_flight(proxy.admin_address()).await,
        1,
        "the tunnel counts as in flight"
    );

    // A reload that keeps the instance (and changes its weight) leaves the
    // tunnel alone.
    std::fs::write(&path, text(3)).unwrap();
    let (status, body) =
        switchyard::admin_client::call(proxy.admin_address(), Method::POST, "/admin/reload")
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    socket
        .send(Message::text("after the reload"))
        .await
        .unwrap();
    let answer = socket.next().await.unwrap().unwrap();
    assert_eq!(
        answer.into_text().unwrap().as_str(),
        "echo: after the reload"
    );

    // Plain requests still work beside it.
    let got = get(&client(), &format!("http://{listener}/"), &[]).await;
    assert_eq!(got.served_by(), "plain");

    socket.close(None).await.unwrap();
    drop(socket);
    let started = Instant::now();
    while in_flight(proxy.admin_address()).await != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the tunnel never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_upstream_refuses_is_an_ordinary_response() {
    // The echo upstream answers 200 to anything, upgrade or not.
    let upstream = echo("plain").await;
    let proxy = proxy(&format!(
        "routes:\n  - service: s\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    let got = get(
        &client(),
        &format!("{}/", base(&proxy)),
        &[("connection", "upgrade"), ("upgrade", "websocket")],
    )
    .await;
    assert_eq!(got.status, 200);
    // The upstream was asked to switch: the two fields were forwarded.
    assert_eq!(got.echoed("upgrade").as_deref(), Some("websocket"));
    assert_eq!(got.echoed("connection").as_deref(), Some("upgrade"));
}
