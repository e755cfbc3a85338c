//! Request smuggling and response mixing, end to end.
//!
//! The corpus: classic desync inputs (CL.TE, TE.CL, obfuscated
//! Transfer-Encoding, odd Content-Length forms, chunk-size overflows, bare
//! LF/CR, obs-fold), each carrying a smuggled `GET /smuggled`, sent as raw
//! bytes to the proxy. Each must be refused (400) or handled, and the
//! upstream — a raw one that records exactly the bytes it receives — must
//! never find a second request, or any byte, after the one request the
//! proxy meant to send on a connection.
//!
//! The malicious upstream: answers with bad framing, a bad status line, an
//! oversized head or bytes beyond the response must never leak into another
//! client's exchange: after each, a victim request gets its own answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// A raw upstream that records every byte
// ---------------------------------------------------------------------------

/// One request the upstream parsed.
#[derive(Debug, Clone)]
struct Parsed {
    method: String,
    path: String,
    /// How many bytes of the stream it took, head and body.
    len: usize,
    /// A framing problem an upstream could read two ways (both CL and TE,
    /// differing CLs): the proxy must never send one.
    ambiguous: Option<String>,
}

/// Parses one request from the start of `bytes`: `Ok(None)` if incomplete,
/// `Err` if it is not HTTP/1.1 at all. Framing as RFC 9112 §6: chunked when
/// Transfer-Encoding ends in chunked, else Content-Length, else no body.
fn parse_request(bytes: &[u8]) -> Result<Option<Parsed>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut fields);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("unparseable request head: {error}")),
    };
    let get_all = |name: &str| -> Vec<String> {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
            .collect()
    };
    let te = get_all("transfer-encoding");
    let cl = get_all("content-length");
    let mut ambiguous = None;
    if !te.is_empty() && !cl.is_empty() {
        ambiguous = Some(format!(
            "both Transfer-Encoding {te:?} and Content-Length {cl:?}"
        ));
    }
    if cl.len() > 1 || cl.iter().any(|v| v.contains(',')) {
        ambiguous = Some(format!("several Content-Length values {cl:?}"));
    }
    let chunked = te
        .last()
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
    if !te.is_empty() && !chunked {
        ambiguous = Some(format!(
            "a request Transfer-Encoding not ending in chunked: {te:?}"
        ));
    }
    let body_len = if chunked {
        match chunked_len(&bytes[head_len..])? {
            Some(len) => len,
            None => return Ok(None),
        }
    } else {
        let length = match cl.first() {
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| format!("bad Content-Length {v:?}"))?,
            None => 0,
        };
        if bytes.len() - head_len < length {
            return Ok(None);
        }
        length
    };
    Ok(Some(Parsed {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        len: head_len + body_len,
        ambiguous,
    }))
}

/// The length of a complete chunked body at the start of `bytes` (with
/// its trailer section), `Ok(None)` if incomplete.
fn chunked_len(bytes: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let Some(lf) = bytes[at..].iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line = &bytes[at..at + lf];
        let line = line
            .strip_suffix(b"\r")
            .ok_or("chunk-size line without CRLF")?;
        let digits: Vec<u8> = line
            .iter()
            .copied()
            .take_while(u8::is_ascii_hexdigit)
            .collect();
        let size = usize::from_str_radix(std::str::from_utf8(&digits).unwrap(), 16)
            .map_err(|_| format!("bad chunk size {:?}", String::from_utf8_lossy(line)))?;
        at += lf + 1;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(lf) = bytes[at..].iter().position(|&b| b == b'\n') else {
                    return Ok(None);
                };
                let empty = lf == 1 && bytes[at] == b'\r';
                at += lf + 1;
                if empty {
                    return Ok(Some(at));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return Ok(None);
        }
        if &bytes[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// What the upstream answers to a request on `path`, and whether it closes
/// the connection afterwards (it still reads, and records, until the proxy
/// closes its side).
type Script = dyn Fn(&str) -> (Vec<u8>, bool) + Send + Sync;

struct Recorder {
    address: SocketAddr,
    /// Everything received, one entry per connection.
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    open: Arc<AtomicUsize>,
}

impl Recorder {
    async fn start(script: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let (all, count) = (Arc::clone(&received), Arc::clone(&open));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let index = {
                    let mut all = all.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (all, count, script) =
                    (Arc::clone(&all), Arc::clone(&count), Arc::clone(&script));
                tokio::spawn(async move {
                    record(stream, index, &all, &*script).await;
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Recorder {
            address,
            received,
            open,
        }
    }

    /// Waits (up to 10 s) until the proxy has closed every connection, so
    /// everything it sent has been recorded.
    async fn all_closed(&self) -> Vec<Vec<u8>> {
        let started = Instant::now();
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the proxy kept upstream connections open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.received.lock().unwrap().clone()
    }
}

async fn record(mut stream: TcpStream, index: usize, all: &Mutex<Vec<Vec<u8>>>, script: &Script) {
    let mut buf = Vec::new();
    let mut answered = 0;
    let mut closing = false;
    loop {
        let mut chunk = [0u8; 16 * 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        all.lock().unwrap()[index].extend_from_slice(&chunk[..n]);
        while !closing {
            let Ok(Some(parsed)) = parse_request(&buf[answered..]) else {
                break;
            };
            answered += parsed.len;
            let (reply, close) = script(&parsed.path);
            if stream.write_all(&reply).await.is_err() {
                return;
            }
            closing = close;
        }
        if closing {
            // Half-close, then go on reading what the proxy still sends.
            let _ = stream.shutdown().await;
        }
    }
}

// ---------------------------------------------------------------------------
// The smuggling corpus
// ---------------------------------------------------------------------------

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";

/// Every input carries a smuggled request after what a lenient parser
/// might take as the end of the first one.
fn corpus() -> Vec<(&'static str, String)> {
    let post = |fields: &str, body: &str| {
        format!("POST /first HTTP/1.1\r\nhost: x\r\n{fields}\r\n{body}{SMUGGLED}")
    };
    let chunked_body = "5\r\nhello\r\n0\r\n\r\n";
    let smuggled_chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    vec![
        (
            "CL.TE",
            post(
                "content-length: 6\r\ntransfer-encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            // A Content-Length reader stops after the chunk-size line and
            // takes the chunk's data as the next request.
            "TE.CL",
            post(
                &format!("transfer-encoding: chunked\r\ncontent-length: {}\r\n", smuggled_chunk.find(SMUGGLED).unwrap()),
                &smuggled_chunk,
            ),
        ),
        ("TE xchunked", post("transfer-encoding: xchunked\r\n", chunked_body)),
        ("TE space before colon", post("transfer-encoding : chunked\r\n", chunked_body)),
        ("TE leading-space line", post("host2: y\r\n transfer-encoding: chunked\r\n", chunked_body)),
        ("TE chunked, identity", post("transfer-encoding: chunked, identity\r\n", chunked_body)),
        ("TE tab", post("transfer-encoding:\tchunked\r\n", chunked_body)),
        (
            "TE duplicated",
            post(
                "transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n",
                chunked_body,
            ),
        ),
        ("TE vertical tab", post("transfer-encoding: \x0bchunked\r\n", chunked_body)),
        ("TE quoted", post("transfer-encoding: \"chunked\"\r\n", chunked_body)),
        ("CL +5", post("content-length: +5\r\n", "hello")),
        ("CL 05", post("content-length: 05\r\n", "hello")),
        ("CL 5, 6", post("content-length: 5, 6\r\n", "hello")),
        ("CL twice, differing", post("content-length: 5\r\ncontent-length: 6\r\n", "hello")),
        ("CL hex", post("content-length: 0x5\r\n", "hello")),
        ("CL overflow", post("content-length: 18446744073709551621\r\n", "hello")),
        ("CL space inside", post("content-length: 1 0\r\n", "hello")),
        (
            "chunk size overflow",
            post(
                "transfer-encoding: chunked\r\n",
                "ffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk size with sign",
            post("transfer-encoding: chunked\r\n", "+5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk bare LF",
            post("transfer-encoding: chunked\r\n", "5\nhello\n0\n\n"),
        ),
        (
            "chunk ext bare CR",
            post(
                "transfer-encoding: chunked\r\n",
                "5;a\rb\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "head bare LF",
            format!(
                "POST /first HTTP/1.1\nhost: x\ntransfer-encoding: chunked\n\n{chunked_body}{SMUGGLED}"
            ),
        ),
        (
            "head bare CR",
            format!(
                "POST /first HTTP/1.1\rhost: x\rcontent-length: 5\r\r\nhello{SMUGGLED}"
            ),
        ),
        (
            "obs-fold TE",
            post("transfer-encoding: identity\r\n chunked\r\n", chunked_body),
        ),
        (
            "obs-fold CL",
            post("content-length: 5\r\n 6\r\n", "hello"),
        ),
        ("GET with a body", format!("GET /first HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello{SMUGGLED}")),
        ("NUL in a field", post("x-a: b\0c\r\ncontent-length: 5\r\n", "hello")),
    ]
}

/// Sends `bytes` on a fresh connection and reads the proxy's answers until
/// it closes the connection, or 3 s pass (an input it takes as the start of
/// a longer body leaves it waiting).
async fn exchange(proxy: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status codes at the start of each response in `answer`.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| answer[at + 9..].get(..3)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_requests_never_reach_the_upstream() {
    // Each answer closes its connection, so a connection carries exactly
    // one request the proxy meant to send; anything after it was smuggled.
    let upstream = Recorder::start(|path| {
        let body = format!("upstream saw {path}");
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        (reply.into_bytes(), true)
    })
    .await;
    let proxy = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{}\"}}]}}\n",
        upstream.address
    ))
    .await;
    let address = proxy.listeners()[0].address;
    let mut cases = tokio::task::JoinSet::new();
    for (name, input) in corpus() {
        cases.spawn(async move { (name, exchange(address, input.as_bytes()).await) });
    }
    let mut answers = Vec::new();
    while let Some(done) = cases.join_next().await {
        answers.push(done.unwrap());
    }
    drop(proxy);

    let mut problems = Vec::new();
    for (name, answer) in &answers {
        let statuses = statuses(answer);
        // Refused, or answered by the upstream (the smuggled request then
        // counts as the client's own next request, which is no smuggling:
        // the proxy saw it too and answered it separately).
        match statuses.first() {
            Some(400) => {}
            Some(200) if answer.contains("upstream saw /first") => {}
            _ => problems.push(format!("{name}: neither refused nor handled: {answer:?}")),
        }
        if answer.contains("upstream saw /smuggled") && !statuses.starts_with(&[200, 200]) {
            problems.push(format!(
                "{name}: an answer to a smuggled request: {answer:?}"
            ));
        }
    }
    for (connection, bytes) in upstream.all_closed().await.iter().enumerate() {
        let text = String::from_utf8_lossy(bytes);
        match parse_request(bytes) {
            Ok(Some(first)) => {
                if let Some(ambiguous) = &first.ambiguous {
                    problems.push(format!("connection {connection}: {ambiguous}: {text:?}"));
                }
                if first.len != bytes.len() {
                    problems.push(format!(
                        "connection {connection}: bytes after the {} {} request: {:?}",
                        first.method,
                        first.path,
                        String::from_utf8_lossy(&bytes[first.len..])
                    ));
                }
            }
            // Cut off as the client went away: no second request in it.
            Ok(None) => {}
            Err(error) => problems.push(format!("connection {connection}: {error}: {text:?}")),
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\nall answers: {answers:#?}"
    );
}

// ---------------------------------------------------------------------------
// A malicious upstream
// ---------------------------------------------------------------------------

/// What a hijacker appends: a whole response of its own.
const HIJACK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nhijacked";

/// The evil answers, by path; `/victim` gets an honest one.
fn evil_answer(path: &str) -> Vec<u8> {
    let answer = match path {
        "/bad-length" => format!("HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello{HIJACK}"),
        "/length-and-chunked" => format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 50\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{HIJACK}"
        ),
        "/two-lengths" => format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 47\r\n\r\nok{HIJACK}"
        ),
        "/length-list" => {
            format!("HTTP/1.1 200 OK\r\ncontent-length: 2, 47\r\n\r\nok{HIJACK}")
        }
        "/bad-status-line" => format!("HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok{HIJACK}"),
        "/status-600" => format!("HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nok{HIJACK}"),
        "/oversized-head" => format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok{HIJACK}",
            "a".repeat(70 * 1024)
        ),
        "/extra-bytes" => format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok{HIJACK}"),
        // For a GET the "hijack" is this answer's body; for a HEAD, extra bytes.
        "/head-extra" => format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{HIJACK}",
            HIJACK.len()
        ),
        "/short-chunked" => {
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{HIJACK}")
        }
        _ => "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nvictim".into(),
    };
    answer.into_bytes()
}

const EVIL_PATHS: [&str; 10] = [
    "/bad-length",
    "/length-and-chunked",
    "/two-lengths",
    "/length-list",
    "/bad-status-line",
    "/status-600",
    "/oversized-head",
    "/extra-bytes",
    "/head-extra",
    "/short-chunked",
];

async fn fetch(method: &str, url: &str, body: &'static str) -> Result<(u16, Bytes), String> {
    // A fresh client each time: the only connection two exchanges can
    // share is the proxy's to the upstream.
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let exchange = async {
        let response = client()
            .request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no end within 10s".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_upstream_never_answers_another_clients_request() {
    let upstream = Recorder::start(|path| (evil_answer(path), false)).await;
    // One worker: every exchange shares the same pool of upstream connections.
    let proxy = proxy(&format!(
        "workers: 1\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{}\"}}]}}\n",
        upstream.address
    ))
    .await;
    let base = base(&proxy);
    let mut problems = Vec::new();
    // GET and HEAD without a body take the lean client; with a body,
    // hyper's client.
    for (method, body) in [("GET", ""), ("POST", "x"), ("HEAD", "")] {
        for path in EVIL_PATHS {
            let evil = fetch(method, &format!("{base}{path}"), body).await;
            if let Ok((_, text)) = &evil {
                if text.as_ref() == b"hijacked" {
                    problems.push(format!("{method} {path}: the hijack was relayed"));
                }
            }
            for victim in 0..2 {
                let got = fetch(method, &format!("{base}/victim"), body).await;
                let expected = if method == "HEAD" { "" } else { "victim" };
                match got {
                    Ok((200, text)) if text == expected.as_bytes() => {}
                    other => problems.push(format!(
                        "{method} victim {victim} after {path} (which got {evil:?}): {other:?}"
                    )),
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
