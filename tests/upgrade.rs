//! HTTP/1.1 upgrades through the proxy: a real WebSocket client and server
//! (tokio-tungstenite) exchange messages through switchyard, across a config
//! reload, while the tunnel counts as in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let (_, body) = common::admin::call(admin, Method::GET, "/admin/services/ws")
        .await
        .unwrap();
    let service: serde_json::Value = serde_json::from_str(&body).unwrap();
    service["instances"][0]["in_flight"].as_u64().unwrap()
}

/// The next text message on `socket` (10 s at most, so a tunnel that
/// stopped carrying fails the test instead of hanging it).
async fn next_text<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a message within 10s")
        .expect("the tunnel is open")
        .expect("a WebSocket message");
    message.into_text().expect("a text message").to_string()
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
    let handshake = tokio_tungstenite::client_async("ws://ws.test/chat", stream);
    let (mut socket, response) = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("a handshake answer within 10s")
        .expect("the WebSocket handshake goes through the proxy");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"));
    for i in 0..3 {
        socket
            .send(Message::text(format!("hello {i}")))
            .await
            .unwrap();
        assert_eq!(next_text(&mut socket).await, format!("echo: hello {i}"));
    }
    assert_eq!(
        in_flight(proxy.admin_address()).await,
        1,
        "the tunnel counts as in flight"
    );

    // A reload that keeps the instance (and changes its weight) leaves the
    // tunnel alone.
    std::fs::write(&path, text(3)).unwrap();
    let (status, body) = common::admin::call(proxy.admin_address(), Method::POST, "/admin/reload")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    socket
        .send(Message::text("after the reload"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut socket).await, "echo: after the reload");

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

/// A raw upstream that answers every request head with a 101 (whatever it
/// was asked) and then echoes every byte back, like a tunnel's far end.
/// Returns the request heads it read.
async fn switching_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let protocol = head
                    .lines()
                    .find_map(|l| l.strip_prefix("upgrade: "))
                    .unwrap_or("h2c")
                    .to_string();
                seen.lock().unwrap().push(head);
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n"
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_not_forwarded_and_a_101_to_it_is_not_tunnelled() {
    let (upstream, heads) = switching_upstream().await;
    let proxy = proxy(&format!(
        "routes:\n  - {{host: tunnel.test, service: s}}\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.listeners()[0].address)
        .await
        .unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: tunnel.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    let got = common::raw::read_response(&mut stream).await;
    assert_eq!(got.status, 502, "an unasked-for 101 is refused: {got:?}");
    let head = heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("get / http/1.1\r\n"), "{head}");
    for field in ["upgrade:", "http2-settings:", "connection:"] {
        assert!(!head.contains(field), "{field} was forwarded: {head}");
    }
    // The client connection is still HTTP, answered by the proxy: a request
    // for another host is not carried to the upstream.
    stream
        .write_all(
            b"GET /admin HTTP/1.1\r\nHost: elsewhere.test\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
        )
        .await
        .unwrap();
    let got = common::raw::read_response(&mut stream).await;
    assert_eq!(got.status, 404, "{got:?}");
    assert!(
        got.body.contains("no route for host `elsewhere.test`"),
        "{}",
        got.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_upgrades_a_route_allows_are_forwarded() {
    let (switching, heads) = switching_upstream().await;
    let plain = echo("plain").await;
    let proxy = proxy(&format!(
        r#"
routes:
  - {{host: custom.test, service: switching, upgrades: [my-proto]}}
  - {{host: none.test, service: plain, upgrades: []}}
services:
  switching: {{instances: [{{address: "{switching}"}}]}}
  plain: {{instances: [{{address: "{plain}"}}]}}
"#
    ))
    .await;
    let address = proxy.listeners()[0].address;
    // A route with no upgrades: a WebSocket handshake goes on as a plain GET.
    let got = common::raw::exchange(
        address,
        "GET /ws HTTP/1.1\r\nHost: none.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.echoed("upgrade"), None, "{}", got.body);
    assert_eq!(got.echoed("connection"), None, "{}", got.body);

    // A protocol the route lists is tunnelled once the upstream agrees; the
    // ones it does not list are left out of the Upgrade field.
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: custom.test\r\nConnection: upgrade\r\nUpgrade: h2c, My-Proto/2\r\n\r\n",
        )
        .await
        .unwrap();
    let got = common::raw::read_response(&mut stream).await;
    assert_eq!(got.status, 101, "{got:?}");
    assert!(heads.lock().unwrap()[0].contains("upgrade: my-proto/2\r\n"));
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
        .await
        .expect("the tunnel carries bytes within 10s")
        .unwrap();
    assert_eq!(&echoed, b"ping");
}
