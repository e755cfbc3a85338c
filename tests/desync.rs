//! Request smuggling and response mixing, end to end.
//!
//! The corpus: classic desync inputs (CL.TE, TE.CL, obfuscated
//! Transfer-Encoding, odd Content-Length forms, chunk-size overflows, bare
//! LF/CR, obs-fold, NUL in fields, absolute-form targets, bad methods),
//! each carrying a smuggled `GET /smuggled`, sent as raw bytes to the
//! proxy, once per HTTP/1.1 server (`owned` and `hyper`). For each the
//! test states the answers the client gets and, byte for byte, what the
//! upstream — a raw one that records exactly what it receives — gets:
//! never a second request hidden in the first.
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
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// A raw upstream that records every byte
// ---------------------------------------------------------------------------

/// One request the upstream parsed.
#[derive(Debug, Clone)]
struct Parsed {
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

/// The request hidden after what a lenient parser might take as the end of
/// the first one; `{id}` is the case's, so its bytes can be found upstream.
fn smuggled(id: usize) -> String {
    format!("GET /smuggled HTTP/1.1\r\nhost: x\r\nx-request-id: s{id}\r\n\r\n")
}

/// One desync vector: the raw input, and for each HTTP/1.1 server what the
/// client must get and what the upstream must receive.
struct Case {
    name: &'static str,
    input: String,
    owned: Expect,
    hyper: Expect,
}

/// What a case must produce.
#[derive(Clone)]
struct Expect {
    /// The statuses of the answers the client reads, in order.
    statuses: &'static [u16],
    /// Exactly what the upstream receives for the case, over all its
    /// connections in the order they were made (the request id is the
    /// case's own, so the bytes repeat run after run).
    upstream: Vec<String>,
}

const REFUSED: Expect = Expect {
    statuses: &[400],
    upstream: Vec::new(),
};

/// The head the proxy forwards for a request the corpus sends: the
/// client's fields in the order sent (here `host`, the request id, then
/// the case's), then the forwarding fields, then the body.
fn forwarded(request_line: &str, fields: &[&str], body: &str) -> String {
    let mut head = format!("{request_line}\r\n");
    for field in fields {
        head.push_str(field);
        head.push_str("\r\n");
    }
    let host = fields
        .iter()
        .find_map(|f| f.strip_prefix("host: "))
        .unwrap_or("x");
    format!(
        "{head}x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: {host}\r\ntraceparent: (new)\r\n\r\n{body}"
    )
}

/// Every case is refused by both servers (the usual verdict).
fn refused(name: &'static str, input: String) -> Case {
    Case {
        name,
        input,
        owned: REFUSED,
        hyper: REFUSED,
    }
}

/// The corpus. Every input carries a smuggled request; ids are the
/// positions, `c{id}` for the first request and `s{id}` for the smuggled
/// one.
fn corpus() -> Vec<Case> {
    let mut cases: Vec<Box<dyn Fn(usize) -> Case>> = Vec::new();
    let post = |id: usize, fields: &str, body: &str| {
        format!(
            "POST /first HTTP/1.1\r\nhost: x\r\nx-request-id: c{id}\r\n{fields}\r\n{body}{}",
            smuggled(id)
        )
    };
    let chunked_body = "5\r\nhello\r\n0\r\n\r\n";
    // The first request, answered; the smuggled one then is the client's
    // own next request, answered separately (no smuggling: the proxy saw it).
    let both_answered = |id: usize, first: String| Expect {
        statuses: &[200, 200],
        upstream: vec![
            first,
            forwarded(
                "GET /smuggled HTTP/1.1",
                &["host: x", &format!("x-request-id: s{id}")],
                "",
            ),
        ],
    };
    let re_chunked = move |id: usize| {
        both_answered(
            id,
            forwarded(
                "POST /first HTTP/1.1",
                &[
                    "host: x",
                    &format!("x-request-id: c{id}"),
                    "transfer-encoding: chunked",
                ],
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        )
    };
    let sized = move |id: usize, length: &str| {
        both_answered(
            id,
            forwarded(
                "POST /first HTTP/1.1",
                &[
                    "host: x",
                    &format!("x-request-id: c{id}"),
                    &format!("content-length: {length}"),
                ],
                "hello",
            ),
        )
    };
    // CL.TE: a Content-Length reader takes `0\r\n\r\n` as the body... and
    // a Transfer-Encoding reader the smuggled request as the next one.
    cases.push(Box::new(move |id| Case {
        name: "CL.TE",
        input: post(
            id,
            "content-length: 6\r\ntransfer-encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        owned: REFUSED,
        // hyper lets chunked win and closes after the answer.
        hyper: Expect {
            statuses: &[200],
            upstream: vec![forwarded(
                "POST /first HTTP/1.1",
                &[
                    "host: x",
                    &format!("x-request-id: c{id}"),
                    "transfer-encoding: chunked",
                ],
                "0\r\n\r\n",
            )],
        },
    }));
    // TE.CL: a Content-Length reader stops after the chunk-size line and
    // takes the chunk's data as the next request.
    cases.push(Box::new(move |id| {
        let smuggled_chunk = format!("{:x}\r\n{}\r\n0\r\n\r\n", smuggled(id).len(), smuggled(id));
        let cl = smuggled_chunk.find("GET").unwrap_or(0);
        Case {
            name: "TE.CL",
            input: format!(
                "POST /first HTTP/1.1\r\nhost: x\r\nx-request-id: c{id}\r\ntransfer-encoding: chunked\r\ncontent-length: {cl}\r\n\r\n{smuggled_chunk}"
            ),
            owned: REFUSED,
            hyper: Expect {
                statuses: &[200],
                upstream: vec![forwarded(
                    "POST /first HTTP/1.1",
                    &["host: x", &format!("x-request-id: c{id}"), "transfer-encoding: chunked"],
                    &smuggled_chunk,
                )],
            },
        }
    }));
    for (name, fields) in [
        ("TE xchunked", "transfer-encoding: xchunked\r\n"),
        (
            "TE chunked, identity",
            "transfer-encoding: chunked, identity\r\n",
        ),
        (
            "TE duplicated",
            "transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n",
        ),
        ("TE vertical tab", "transfer-encoding: \x0bchunked\r\n"),
        ("TE quoted", "transfer-encoding: \"chunked\"\r\n"),
        ("TE space before colon", "transfer-encoding : chunked\r\n"),
        (
            "TE obs-fold line",
            "host2: y\r\n transfer-encoding: chunked\r\n",
        ),
        (
            "obs-fold TE value",
            "transfer-encoding: identity\r\n chunked\r\n",
        ),
        (
            "TE in HTTP/1.0 style twice",
            "transfer-encoding: identity\r\ntransfer-encoding: xchunked\r\n",
        ),
    ] {
        cases.push(Box::new(move |id| {
            refused(name, post(id, fields, chunked_body))
        }));
    }
    // Valid spellings of chunked: whitespace around the value is not part
    // of it (RFC 9110 §5.5) and codings are case-insensitive.
    for (name, fields) in [
        ("TE leading space", "transfer-encoding:  chunked\r\n"),
        ("TE tab before the value", "transfer-encoding:\tchunked\r\n"),
        ("TE upper case", "Transfer-Encoding: CHUNKED\r\n"),
        ("TE mixed case", "transfer-ENCODING: cHuNkEd\r\n"),
    ] {
        cases.push(Box::new(move |id| Case {
            name,
            input: post(id, fields, chunked_body),
            owned: re_chunked(id),
            hyper: re_chunked(id),
        }));
    }
    for (name, fields) in [
        ("CL +5", "content-length: +5\r\n"),
        ("CL -5", "content-length: -5\r\n"),
        ("CL 5, 6", "content-length: 5, 6\r\n"),
        (
            "CL twice, differing",
            "content-length: 5\r\ncontent-length: 6\r\n",
        ),
        ("CL hex", "content-length: 0x5\r\n"),
        ("CL overflow", "content-length: 18446744073709551621\r\n"),
        ("CL space inside", "content-length: 1 0\r\n"),
        ("CL empty", "content-length: \r\n"),
        ("obs-fold CL", "content-length: 5\r\n 6\r\n"),
        ("NUL in a value", "x-a: b\0c\r\ncontent-length: 5\r\n"),
        ("bare CR in a value", "x-a: b\rc\r\ncontent-length: 5\r\n"),
        ("NUL in a name", "x-\0a: b\r\ncontent-length: 5\r\n"),
        ("CL space before colon", "content-length : 5\r\n"),
    ] {
        cases.push(Box::new(move |id| refused(name, post(id, fields, "hello"))));
    }
    cases.push(Box::new(move |id| Case {
        name: "CL leading zeros",
        input: post(id, "content-length: 005\r\n", "hello"),
        owned: sized(id, "005"),
        hyper: sized(id, "005"),
    }));
    // Identical values: hyper folds them to one; the owned server refuses
    // any second Content-Length (a reader behind it might not fold).
    cases.push(Box::new(move |id| Case {
        name: "CL twice, same",
        input: post(id, "content-length: 5\r\ncontent-length: 5\r\n", "hello"),
        owned: REFUSED,
        hyper: sized(id, "5"),
    }));
    cases.push(Box::new(move |id| {
        refused("CL 5, 5", post(id, "content-length: 5, 5\r\n", "hello"))
    }));
    // Broken chunked bodies: the head was fine, so the request may be on
    // its way before the body breaks (the owned server reads a body only
    // as the upstream takes it; hyper's had it all buffered and failed it
    // before its client wrote a byte); the upstream then gets a body that
    // never ends, and no second request.
    for (name, body, hyper_sent) in [
        (
            "chunk size overflow",
            "ffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            None,
        ),
        ("chunk size with sign", "+5\r\nhello\r\n0\r\n\r\n", None),
        ("chunk bare LF", "5\nhello\n0\n\n", None),
        ("chunk ext bare LF", "5;ext=1\nhello\r\n0\r\n\r\n", None),
        ("chunk ext bare CR", "5;a\rb\r\nhello\r\n0\r\n\r\n", None),
        (
            "chunk data overrun",
            "3\r\nhello\r\n0\r\n\r\n",
            Some("3\r\nhel\r\n"),
        ),
    ] {
        cases.push(Box::new(move |id| {
            let head_then = |body: &str| {
                forwarded(
                    "POST /first HTTP/1.1",
                    &[
                        "host: x",
                        &format!("x-request-id: c{id}"),
                        "transfer-encoding: chunked",
                    ],
                    body,
                )
            };
            let owned_sent = hyper_sent.unwrap_or("");
            Case {
                name,
                input: post(id, "transfer-encoding: chunked\r\n", body),
                owned: Expect {
                    statuses: &[400],
                    upstream: vec![head_then(owned_sent)],
                },
                hyper: Expect {
                    statuses: &[400],
                    upstream: hyper_sent.map(head_then).into_iter().collect(),
                },
            }
        }));
    }
    cases.push(Box::new(move |id| {
        refused(
            "head bare CR",
            format!(
                "POST /first HTTP/1.1\rhost: x\rx-request-id: c{id}\rcontent-length: 5\r\r\nhello{}",
                smuggled(id)
            ),
        )
    }));
    // Bare LF line endings are allowed to recipients (RFC 9112 §2.2),
    // as httparse and hyper do; the body is then read by its framing.
    cases.push(Box::new(move |id| {
        let expect = re_chunked(id);
        Case {
            name: "head bare LF",
            input: format!(
                "POST /first HTTP/1.1\nhost: x\nx-request-id: c{id}\ntransfer-encoding: chunked\n\n{chunked_body}{}",
                smuggled(id)
            ),
            owned: expect.clone(),
            hyper: expect,
        }
    }));
    // A GET may have a body; it is forwarded with it, never taken as the
    // start of the next request.
    cases.push(Box::new(move |id| {
        let expect = both_answered(
            id,
            forwarded(
                "GET /first HTTP/1.1",
                &["host: x", &format!("x-request-id: c{id}"), "content-length: 5"],
                "hello",
            ),
        );
        Case {
            name: "GET with a body",
            input: format!(
                "GET /first HTTP/1.1\r\nhost: x\r\nx-request-id: c{id}\r\ncontent-length: 5\r\n\r\nhello{}",
                smuggled(id)
            ),
            owned: expect.clone(),
            hyper: expect,
        }
    }));
    // The absolute-form authority is the host (RFC 9112 §3.2.2): it
    // replaces Host, and the target goes upstream in origin form.
    cases.push(Box::new(move |id| {
        let expect = Expect {
            statuses: &[200, 200],
            upstream: vec![
                forwarded(
                    "GET /first HTTP/1.1",
                    &["host: other", &format!("x-request-id: c{id}")],
                    "",
                ),
                forwarded(
                    "GET /smuggled HTTP/1.1",
                    &["host: x", &format!("x-request-id: s{id}")],
                    "",
                ),
            ],
        };
        Case {
            name: "absolute form, other Host",
            input: format!(
                "GET http://other/first HTTP/1.1\r\nhost: x\r\nx-request-id: c{id}\r\n\r\n{}",
                smuggled(id)
            ),
            owned: expect.clone(),
            hyper: expect,
        }
    }));
    for (name, line) in [
        ("method with @", "G@T /first HTTP/1.1"),
        ("method with a space", "G ET /first HTTP/1.1"),
        ("method with NUL", "GE\0T /first HTTP/1.1"),
        ("empty method", " /first HTTP/1.1"),
        ("lower-case version", "GET /first http/1.1"),
        ("HTTP/1.2", "GET /first HTTP/1.2"),
    ] {
        cases.push(Box::new(move |id| {
            refused(
                name,
                format!(
                    "{line}\r\nhost: x\r\nx-request-id: c{id}\r\n\r\n{}",
                    smuggled(id)
                ),
            )
        }));
    }
    cases
        .iter()
        .enumerate()
        .map(|(id, case)| case(id))
        .collect()
}

/// Sends `bytes` on a fresh connection and reads the proxy's answers until
/// it closes the connection, or 3 s pass (an input it takes as the start of
/// a longer body leaves it waiting).
async fn exchange(proxy: SocketAddr, bytes: &[u8]) -> String {
    common::raw::send_until_closed(proxy, bytes, Duration::from_secs(3)).await
}

/// The status codes at the start of each response in `answer`.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| answer[at + 9..].get(..3)?.parse().ok())
        .collect()
}

/// `text` with the value of each `traceparent` field (new per request:
/// the proxy's own span) replaced by `(new)` once it has the right shape.
fn without_traceparent(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some((before, after)) = rest.split_once("traceparent: ") {
        out.push_str(before);
        out.push_str("traceparent: ");
        match after
            .get(..55)
            .filter(|v| v.starts_with("00-") && v.is_ascii())
        {
            Some(_) => {
                out.push_str("(new)");
                rest = &after[55..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// The request id in the first head of an upstream connection's bytes.
fn request_id(bytes: &str) -> Option<&str> {
    let head = &bytes[..bytes.find("\r\n\r\n")?];
    let at = head.find("x-request-id: ")? + "x-request-id: ".len();
    head[at..].split("\r\n").next()
}

/// Runs the corpus against a listener with `server` as its HTTP/1.1
/// server, and lists every way the answers or the upstream's bytes differ
/// from the expected ones.
async fn run_corpus(server: &str) -> Vec<String> {
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
    let config = switchyard::config::parse(&format!(
        "listeners: [{{address: 127.0.0.1:0, http1: {server}}}]\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{}\"}}]}}\n",
        upstream.address
    ))
    .unwrap();
    let proxy = switchyard::server::start(config).await.unwrap();
    let address = proxy.listeners()[0].address;
    let cases = corpus();
    let mut running = tokio::task::JoinSet::new();
    for (id, case) in cases.iter().enumerate() {
        let input = case.input.clone();
        running.spawn(async move { (id, exchange(address, input.as_bytes()).await) });
    }
    let mut answers = vec![String::new(); cases.len()];
    while let Some(done) = running.join_next().await {
        let (id, answer) = done.unwrap();
        answers[id] = answer;
    }
    drop(proxy);
    let received = upstream.all_closed().await;

    let mut problems = Vec::new();
    let mut by_case: Vec<Vec<String>> = vec![Vec::new(); cases.len()];
    for bytes in received.iter().filter(|b| !b.is_empty()) {
        let text = String::from_utf8_lossy(bytes).into_owned();
        if let Ok(Some(first)) = parse_request(bytes) {
            if let Some(ambiguous) = &first.ambiguous {
                problems.push(format!("{server}: {ambiguous}: {text:?}"));
            }
        }
        let id = request_id(&text)
            .and_then(|id| id.get(1..)?.parse::<usize>().ok())
            .filter(|id| *id < cases.len());
        match id {
            Some(id) => by_case[id].push(without_traceparent(&text)),
            None => problems.push(format!("{server}: upstream bytes of no case: {text:?}")),
        }
    }
    for (id, case) in cases.iter().enumerate() {
        let expect = if server == "owned" {
            &case.owned
        } else {
            &case.hyper
        };
        let got = statuses(&answers[id]);
        if got != expect.statuses {
            problems.push(format!(
                "{server} {}: client got {got:?}, expected {:?}: {:?}",
                case.name, expect.statuses, answers[id]
            ));
        }
        // The first request before the smuggled one (connections are
        // recorded in the order they were accepted).
        let mut upstream_got = by_case[id].clone();
        upstream_got.sort_by_key(|text| text.contains("x-request-id: s"));
        if upstream_got != expect.upstream {
            problems.push(format!(
                "{server} {}: upstream received {upstream_got:#?}, expected {:#?}",
                case.name, expect.upstream
            ));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desync_corpus_on_the_owned_server() {
    let problems = run_corpus("owned").await;
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desync_corpus_on_hypers_server() {
    let problems = run_corpus("hyper").await;
    assert!(problems.is_empty(), "{problems:#?}");
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
    try_send(&client(), request).await
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
