//! The lean HTTP/1.1 upstream client (requests without a body to plain-TCP
//! HTTP/1.1 instances), through a real proxy, against an upstream that
//! writes scripted raw bytes: response framing (chunked, close-delimited,
//! bodiless answers), keep-alive reuse and its limits, and how malformed,
//! oversized, truncated and missing answers are reported.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use switchyard::server::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// A scripted raw upstream
// ---------------------------------------------------------------------------

/// A request as the scripted upstream read it.
#[derive(Debug)]
struct Seen {
    /// Which accepted connection it came on (the first is 1).
    connection: usize,
    /// The request line and fields, up to and including the blank line.
    head: String,
    /// The body, read by its Content-Length.
    body: Vec<u8>,
}

impl Seen {
    fn method(&self) -> &str {
        self.head.split(' ').next().unwrap_or_default()
    }

    fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or_default()
    }
}

/// What the scripted upstream does about one request.
struct Reply {
    /// Written in order, one write each, with a short pause between them so
    /// the proxy sees them in separate reads.
    pieces: Vec<Vec<u8>>,
    /// What happens to the connection afterwards.
    then: Then,
}

enum Then {
    /// Wait for the next request.
    KeepOpen,
    /// Close the connection (the end of a close-delimited body).
    Close,
    /// Leave the connection idle this long, then close it.
    CloseAfter(Duration),
    /// Never write or close again while the test runs.
    Stall,
}

impl Reply {
    /// `bytes` in one write; the connection stays open.
    fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::pieces([bytes], Then::KeepOpen)
    }

    /// `bytes` in one write, then the connection is closed.
    fn close(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::pieces([bytes], Then::Close)
    }

    fn pieces<P: Into<Vec<u8>>>(pieces: impl IntoIterator<Item = P>, then: Then) -> Reply {
        Reply {
            pieces: pieces.into_iter().map(Into::into).collect(),
            then,
        }
    }

    /// No answer at all.
    fn silence() -> Reply {
        Reply::pieces(Vec::<Vec<u8>>::new(), Then::Stall)
    }
}

/// A `200 OK` with `body` and its Content-Length.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

const PIECE_GAP: Duration = Duration::from_millis(10);

/// A deliberately raw HTTP/1.1 server, so the tests control every byte the
/// proxy reads: on each connection it reads a request head (up to the blank
/// line) and a Content-Length body, writes whatever `script` says, and goes
/// on as the reply says. It counts accepted connections, which is how the
/// tests see whether the proxy reused one.
struct Scripted {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start<S>(script: S) -> Scripted
    where
        S: Fn(&Seen) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(stream, connection, Arc::clone(&script)));
            }
        });
        Scripted { address, accepted }
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve<S>(mut stream: TcpStream, connection: usize, script: Arc<S>)
where
    S: Fn(&Seen) -> Reply,
{
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    while let Some(seen) = read_request(&mut stream, &mut buf, connection).await {
        let reply = script(&seen);
        for (i, piece) in reply.pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(PIECE_GAP).await;
            }
            // The proxy may give up on the connection mid-answer.
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        match reply.then {
            Then::KeepOpen => {}
            Then::Close => return,
            Then::CloseAfter(idle) => {
                tokio::time::sleep(idle).await;
                return;
            }
            Then::Stall => std::future::pending().await,
        }
    }
}

/// The next request on the connection, or `None` once the peer closed it.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    connection: usize,
) -> Option<Seen> {
    let head_len = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let head = String::from_utf8(buf.drain(..head_len).collect()).unwrap();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.trim().parse().unwrap());
    while buf.len() < length {
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    let body = buf.drain(..length).collect();
    Some(Seen {
        connection,
        head,
        body,
    })
}

/// A proxy sending everything to `upstream`, with extra service settings
/// (`"key: value, "`). One traffic worker: pools are per worker, so the
/// connection counts must not depend on which worker the kernel hands the
/// client's connection to.
async fn proxy_to(upstream: &Scripted, settings: &str) -> Running {
    // `error_detail: full`: these tests read what the proxy saw of the
    // upstream's bytes from the error body.
    proxy(&format!(
        "workers: 1\nerror_detail: full\nroutes:\n  - service: s\nservices:\n  s: {{{settings}instances: [{{address: \"{}\"}}]}}\n",
        upstream.address
    ))
    .await
}

/// GETs `url` and reads the whole answer; `Err` when the request or the
/// body fails (which the common `send` treats as a test failure).
async fn fetch_whole(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
) -> Result<(u16, Bytes), String> {
    try_send(client, Request::get(url).body(Full::default()).unwrap()).await
}

/// GETs `url` and checks the answer is a 200 with `body`.
async fn get_ok(client: &Client<HttpConnector, Full<Bytes>>, url: &str, body: &str) -> Got {
    let got = get(client, url, &[]).await;
    assert_eq!(got.status, 200, "{url}: {}", got.body);
    assert_eq!(got.body, body, "{url}");
    got
}

/// For answers the proxy cannot relay whole: a failed exchange (the client
/// learns the body is broken) or a proxy error status is right; a clean 200
/// is not, whatever its body.
fn assert_not_whole_200(case: &str, fetched: Result<(u16, Bytes), String>) {
    if let Ok((status, body)) = fetched {
        assert_ne!(
            status, 200,
            "{case}: a broken body was passed off as complete: {body:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_with_extensions_and_trailers_is_read_and_the_connection_reused() {
    // Split mid-data, mid-size-line, between the CR and LF after a chunk's
    // data, and before the final empty line, so every parser state has to
    // wait for more bytes.
    let upstream = Scripted::start(|_| {
        Reply::pieces(
            [
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhel",
                "lo\r\n9\r\n chunked \r\n1",
                "A;name=\"quoted\"\r\nabcdefghijklmnopqrstuvwxyz\r",
                "\n0\r\nx-trailer: yes\r\n",
                "\r\n",
            ],
            Then::KeepOpen,
        )
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    for _ in 0..2 {
        get_ok(
            &client,
            &format!("{}/chunked", base(&proxy)),
            "hello chunked abcdefghijklmnopqrstuvwxyz",
        )
        .await;
    }
    assert_eq!(upstream.accepted(), 1, "the connection was not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_wins_over_content_length_and_the_length_is_not_forwarded() {
    // RFC 9112 §6.3: with both, the chunked framing counts, the proxy must
    // drop Content-Length before forwarding, and the connection is closed.
    let upstream = Scripted::start(|_| {
        Reply::keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    for _ in 0..2 {
        let got = get_ok(&client, &url, "ok").await;
        assert!(
            got.headers.get("content-length").is_none(),
            "{:?}",
            got.headers
        );
    }
    assert_eq!(upstream.accepted(), 2, "a suspect connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_body_is_read_to_the_end_and_the_connection_not_reused() {
    let upstream = Scripted::start(|_| {
        Reply::pieces(["HTTP/1.1 200 OK\r\n\r\nuntil ", "the end"], Then::Close)
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    get_ok(&client, &url, "until the end").await;
    get_ok(&client, &url, "until the end").await;
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answer_has_no_body_despite_its_content_length() {
    let upstream = Scripted::start(|seen| match seen.method() {
        "HEAD" => Reply::keep("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
        _ => Reply::keep(ok("hello")),
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    let head = Request::head(&url).body(Full::default()).unwrap();
    let got = send(&client, head).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.headers["content-length"], "5");
    assert_eq!(got.body, "");
    // Had the client waited for 5 body bytes, the GET's answer would have
    // been taken as the HEAD's body.
    get_ok(&client, &url, "hello").await;
    assert_eq!(upstream.accepted(), 1, "the connection was not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_answers_have_no_body() {
    let upstream = Scripted::start(|seen| match seen.path() {
        "/204" => Reply::keep("HTTP/1.1 204 No Content\r\nx-kind: none\r\n\r\n"),
        // A 304's Content-Length is the unsent representation's.
        "/304" => {
            Reply::keep("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 5\r\n\r\n")
        }
        _ => Reply::keep(ok("hello")),
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let base = base(&proxy);
    let got = get(&client, &format!("{base}/204"), &[]).await;
    assert_eq!(got.status, 204, "{}", got.body);
    assert_eq!(got.headers["x-kind"], "none");
    assert_eq!(got.body, "");
    let got = get(
        &client,
        &format!("{base}/304"),
        &[("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!(got.status, 304, "{}", got.body);
    assert_eq!(got.headers["etag"], "\"v1\"");
    assert_eq!(got.body, "");
    get_ok(&client, &format!("{base}/after"), "hello").await;
    assert_eq!(upstream.accepted(), 1, "the connection was not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_answers_before_the_final_one_are_skipped() {
    let upstream = Scripted::start(|_| {
        Reply::pieces(
            [
                "HTTP/1.1 100 Continue\r\n\r\n".to_string(),
                format!(
                    "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n{}",
                    ok("final")
                ),
            ],
            Then::KeepOpen,
        )
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    for _ in 0..2 {
        get_ok(&client, &format!("{}/", base(&proxy)), "final").await;
    }
    assert_eq!(upstream.accepted(), 1, "the connection was not reused");
}

// ---------------------------------------------------------------------------
// Keep-alive
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_answer_is_not_reused() {
    // The upstream leaves the connection open anyway: only the proxy
    // honouring `connection: close` makes it open another.
    let upstream = Scripted::start(|_| {
        Reply::keep("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye")
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    for _ in 0..2 {
        get_ok(&client, &url, "bye").await;
    }
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_keep_alive_connection() {
    // Each answer names its request, so an answer read for the wrong
    // request (bytes left over on the connection) shows.
    let upstream = Scripted::start(|seen| Reply::keep(ok(seen.path()))).await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    for i in 0..5 {
        get_ok(
            &client,
            &format!("{}/req/{i}", base(&proxy)),
            &format!("/req/{i}"),
        )
        .await;
    }
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_beyond_the_response_retire_the_connection() {
    // Bytes after a complete response belong to no request: whether they
    // come with the response or while the connection waits in the pool, the
    // connection is not used again (reading them as the next answer would
    // hand one client another's response).
    for (case, pieces) in [
        (
            "with the response",
            vec![format!("{}stray", ok("connection 1"))],
        ),
        ("while idle", vec![ok("connection 1"), "stray".to_string()]),
    ] {
        let upstream = Scripted::start(move |seen| {
            if seen.connection == 1 {
                Reply::pieces(pieces.clone(), Then::KeepOpen)
            } else {
                Reply::keep(ok(&format!("connection {}", seen.connection)))
            }
        })
        .await;
        let proxy = proxy_to(&upstream, "").await;
        let client = client();
        let url = format!("{}/", base(&proxy));
        get_ok(&client, &url, "connection 1").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = get(&client, &url, &[]).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (200, "connection 2"),
            "{case}"
        );
        assert_eq!(upstream.accepted(), 2, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_closed_by_the_upstream_is_replaced() {
    let upstream = Scripted::start(|seen| {
        let then = if seen.connection == 1 {
            Then::CloseAfter(Duration::from_millis(100))
        } else {
            Then::KeepOpen
        };
        Reply::pieces([ok(&format!("connection {}", seen.connection))], then)
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    get_ok(&client, &url, "connection 1").await;
    // The pooled connection is closed by the upstream while idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    get_ok(&client, &url, "connection 2").await;
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_closed_by_the_upstream_is_not_used_for_a_request_that_cannot_be_resent() {
    // A bodiless POST may not be sent again once it went out, so unlike a
    // GET it cannot recover from landing on the dead connection: the pool
    // has to notice the close before handing the connection out.
    let upstream = Scripted::start(|seen| {
        let then = if seen.connection == 1 {
            Then::CloseAfter(Duration::from_millis(100))
        } else {
            Then::KeepOpen
        };
        Reply::pieces(
            [ok(&format!(
                "{} on connection {}",
                seen.method(),
                seen.connection
            ))],
            then,
        )
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    let got = get(&client, &url, &[]).await;
    assert_eq!(got.body, "GET on connection 1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let post = Request::post(&url).body(Full::default()).unwrap();
    let got = send(&client, post).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body, "POST on connection 2");
}

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_response_is_a_502() {
    let upstream = Scripted::start(|_| Reply::keep("garbage\r\n\r\n")).await;
    let proxy = proxy_to(&upstream, "").await;
    let got = get(&client(), &format!("{}/", base(&proxy)), &[]).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert!(
        got.body
            .contains("service `s` closed the connection without a valid response"),
        "{}",
        got.body
    );
    assert!(got.body.contains("invalid response"), "{}", got.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_a_502() {
    let upstream = Scripted::start(|_| {
        Reply::keep("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!")
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let got = get(&client(), &format!("{}/", base(&proxy)), &[]).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert!(got.body.contains("invalid response"), "{}", got.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_head_is_a_502_and_the_proxy_goes_on() {
    let upstream = Scripted::start(|seen| match seen.path() {
        "/big" => Reply::keep(format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
            "a".repeat(70 * 1024)
        )),
        _ => Reply::keep(ok("fine")),
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let base = base(&proxy);
    let got = get(&client, &format!("{base}/big"), &[]).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert!(got.body.contains("invalid response"), "{}", got.body);
    get_ok(&client, &format!("{base}/small"), "fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_not_passed_off_as_complete() {
    // With a Content-Length the proxy's own server would notice a short
    // body too; a chunked one is relayed chunked, so only the upstream
    // client can tell the client the end never came.
    let upstream = Scripted::start(|seen| match seen.path() {
        "/length" => Reply::close("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"),
        _ => Reply::close("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n01234"),
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    for path in ["/length", "/chunked"] {
        let url = format!("{}{path}", base(&proxy));
        let fetched = tokio::time::timeout(Duration::from_secs(10), fetch_whole(&client, &url))
            .await
            .expect("the exchange ends within 10s");
        assert_not_whole_200(path, fetched);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_size_lines_fail_the_body() {
    // RFC 9112 §7.1: chunk-size is 1*HEXDIG, then optional `;` extensions
    // (whitespace allowed only before a `;`), then CRLF. hyper's client
    // fails all three bodies at once.
    let upstream = Scripted::start(|seen| {
        let body = match seen.path() {
            "/sign" => "+3\r\nabc\r\n0\r\n\r\n",
            "/junk" => "3 junk\r\nabc\r\n0\r\n\r\n",
            // Bare LF throughout: no CRLF ever comes.
            _ => "3\nabc\n0\n\n",
        };
        Reply::keep(format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{body}"
        ))
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    // Every case is tried, so a failure lists all that were accepted.
    let mut accepted = Vec::new();
    for path in ["/sign", "/junk", "/bare-lf"] {
        let url = format!("{}{path}", base(&proxy));
        // The upstream leaves the connection open: the body has to fail on
        // the bytes alone, not on the upstream closing.
        match tokio::time::timeout(Duration::from_secs(2), fetch_whole(&client, &url)).await {
            Err(_) => accepted.push(format!(
                "{path}: the body neither ended nor failed within 2s"
            )),
            Ok(Ok((200, body))) => accepted.push(format!("{path}: a clean 200 with {body:?}")),
            Ok(_) => {}
        }
    }
    assert!(accepted.is_empty(), "{accepted:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_is_a_504_at_the_request_timeout() {
    let upstream = Scripted::start(|_| Reply::silence()).await;
    let proxy = proxy_to(&upstream, "request_timeout: 300ms, ").await;
    let started = Instant::now();
    let got = get(&client(), &format!("{}/", base(&proxy)), &[]).await;
    assert_eq!(got.status, 504, "{}", got.body);
    assert!(
        got.body.contains("service `s` did not answer within 300ms"),
        "{}",
        got.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Alongside hyper's client
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_silent_mid_body_is_cut_off_at_the_request_timeout() {
    // Half a body, then nothing: for a GET (lean client) and a POST
    // (hyper's client) alike, the client learns the body is broken soon
    // after `request_timeout` instead of waiting forever.
    let upstream = Scripted::start(|_| {
        Reply::pieces(
            ["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf."],
            Then::Stall,
        )
    })
    .await;
    let proxy = proxy_to(&upstream, "request_timeout: 300ms, ").await;
    let client = client();
    for method in ["GET", "POST"] {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}/", base(&proxy)))
            .body(Full::new(Bytes::from(if method == "POST" {
                "data"
            } else {
                ""
            })))
            .unwrap();
        let started = Instant::now();
        let exchange = async {
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| e.to_string())
        };
        let result = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .unwrap_or_else(|_| panic!("{method}: the body was still open after 5s"));
        assert!(result.is_err(), "{method}: {result:?}");
        assert!(started.elapsed() >= Duration::from_millis(300), "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_with_a_body_then_one_without_both_get_their_answers() {
    // The answer repeats the request, body included, so each side's bytes
    // are checked.
    let upstream = Scripted::start(|seen| {
        Reply::keep(ok(&format!(
            "{} {} [{}]",
            seen.method(),
            seen.path(),
            String::from_utf8_lossy(&seen.body)
        )))
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let base = base(&proxy);
    let post = Request::post(format!("{base}/submit"))
        .header("content-length", "5")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let got = send(&client, post).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body, "POST /submit [hello]");
    get_ok(&client, &format!("{base}/fetch"), "GET /fetch []").await;
}

// ---------------------------------------------------------------------------
// One set of rules for both clients
// ---------------------------------------------------------------------------

/// The two ways to an upstream: a request without a body takes the lean
/// client, one with a body takes hyper's.
const BOTH_CLIENTS: [(&str, &str); 2] = [("lean", ""), ("hyper", "x")];

/// Sends `method` to `url` with `body` and reads the whole answer (10 s at
/// most); `Err` when the request or its body fails.
async fn fetch_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    body: &'static str,
) -> Result<(u16, http::HeaderMap, Bytes), String> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no end within 10s".into()))
}

/// Each `(path, answer)` is what the upstream sends for that path; every
/// one must come back from the proxy as a 502 through both clients, and
/// each failure is listed.
async fn assert_502_on_both_clients(method: &str, cases: &[(&str, String)]) {
    let answers: Vec<(String, String)> = cases
        .iter()
        .map(|(path, answer)| (path.to_string(), answer.clone()))
        .collect();
    let upstream = Scripted::start(move |seen| {
        let answer = answers
            .iter()
            .find(|(path, _)| path == seen.path())
            .map_or_else(|| ok("unknown case"), |(_, answer)| answer.clone());
        Reply::keep(answer)
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let mut wrong = Vec::new();
    for (name, body) in BOTH_CLIENTS {
        for (path, _) in cases {
            let url = format!("{}{path}", base(&proxy));
            match fetch_with(&client, method, &url, body).await {
                Ok((502, _, _)) => {}
                other => wrong.push(format!("{name} {method} {path}: {other:?}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The proxy goes on serving through both clients.
    for (name, body) in BOTH_CLIENTS {
        let got = fetch_with(&client, method, &format!("{}/fine", base(&proxy)), body).await;
        assert_eq!(got.map(|g| g.0), Ok(200), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_with_invalid_framing_fields_are_502_on_both_clients() {
    let cl = |value: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: {value}\r\n\r\n");
    assert_502_on_both_clients(
        "HEAD",
        &[
            ("/negative", cl("-1")),
            ("/hex", cl("0x2")),
            ("/huge", cl("12345678901234567890123")),
            ("/differing", cl("5\r\ncontent-length: 6")),
            ("/list", cl("5, 6")),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_identical_content_length_is_folded_into_one_on_both_clients() {
    let upstream = Scripted::start(|seen| {
        let body = if seen.method() == "HEAD" { "" } else { "hello" };
        Reply::keep(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n{body}"
        ))
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    for method in ["HEAD", "GET"] {
        for (name, body) in BOTH_CLIENTS {
            let (status, headers, text) = fetch_with(&client, method, &url, body)
                .await
                .unwrap_or_else(|e| panic!("{name} {method}: {e}"));
            assert_eq!(status, 200, "{name} {method}");
            let lengths: Vec<_> = headers.get_all("content-length").iter().collect();
            assert_eq!(lengths, ["5"], "{name} {method}");
            let expected = if method == "HEAD" { "" } else { "hello" };
            assert_eq!(text, expected, "{name} {method}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_answers_are_502_on_both_clients() {
    let head = |status_line: &str, fields: &str| {
        format!("HTTP/1.1 {status_line}\r\n{fields}content-length: 2\r\n\r\nok")
    };
    assert_502_on_both_clients(
        "GET",
        &[
            // RFC 9110 §15: status codes are 100–599.
            ("/600", head("600 Beyond", "")),
            ("/999", head("999 Beyond", "")),
            (
                "/oversized",
                head("200 OK", &format!("x-big: {}\r\n", "a".repeat(70 * 1024))),
            ),
            (
                "/plus",
                "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok".into(),
            ),
            (
                "/list",
                "HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok".into(),
            ),
            (
                "/two",
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".into(),
            ),
            (
                "/status",
                "HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok".into(),
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_cr_in_a_chunk_extension_fails_the_body_on_both_clients() {
    let upstream = Scripted::start(|_| {
        Reply::keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;a\rb\r\nabc\r\n0\r\n\r\n",
        )
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    for (name, body) in BOTH_CLIENTS {
        let fetched = fetch_with(&client, "GET", &url, body)
            .await
            .map(|(status, _, body)| (status, body));
        assert_not_whole_200(name, fetched);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_at_once_is_a_502_on_both_clients() {
    // The broken chunk line comes with the head: the proxy sees the body
    // fail before it has forwarded anything, so it can still say so.
    let upstream = Scripted::start(|_| {
        Reply::keep("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    })
    .await;
    let proxy = proxy_to(&upstream, "").await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    for (name, body) in BOTH_CLIENTS {
        let fetched = fetch_with(&client, "GET", &url, body).await;
        let (status, _, text) = fetched.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(status, 502, "{name}: {text:?}");
        assert!(
            String::from_utf8_lossy(&text).contains("response body failed at once"),
            "{name}: {text:?}"
        );
    }
}
