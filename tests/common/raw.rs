//! Raw HTTP/1.1 over TCP, for requests a well-behaved client library will
//! not send (bad hosts, dot segments, upgrades, chunked GETs).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The status line and fields.
    pub head: String,
    /// The body, read by its Content-Length (empty without one).
    pub body: String,
}

impl RawResponse {
    /// The value of the field line `name: value` in an echo body.
    pub fn echoed(&self, name: &str) -> Option<String> {
        let prefix = format!("  {name}: ");
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }
}

/// Reads one response from `stream` (10 s at most, so a broken proxy fails
/// the test instead of hanging it).
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let read = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read a response");
            assert!(n > 0, "closed before a whole response head: {bytes:?}");
            bytes.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while bytes.len() < head_end + length {
            let n = stream.read(&mut chunk).await.expect("read a response body");
            assert!(n > 0, "closed in the middle of a body");
            bytes.extend_from_slice(&chunk[..n]);
        }
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        RawResponse {
            status,
            body: String::from_utf8_lossy(&bytes[head_end..head_end + length]).into_owned(),
            head,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a whole response within 10s")
}

/// Sends `request` as is on a new connection and reads one response.
pub async fn exchange(address: SocketAddr, request: impl AsRef<[u8]>) -> RawResponse {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(request.as_ref())
        .await
        .expect("write a request");
    read_response(&mut stream).await
}

/// Everything `stream` delivers until the peer closes it, or what came
/// within `limit` (so a peer that keeps the connection open fails the
/// caller's check of the answer instead of hanging the test).
pub async fn until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `bytes` on a new connection and reads until the peer closes it
/// (`limit` at most).
pub async fn send_until_closed(address: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    until_closed(&mut stream, limit).await
}
