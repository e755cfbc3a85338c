//! A differential test of the owned HTTP/1.1 request parser against
//! hyper's server: generated request byte streams (good, odd and broken
//! request lines, fields, framing and bodies) go to both, which must give
//! the same verdict and, when they accept, the same method, target,
//! version, fields and body.
//!
//! hyper runs over an in-memory duplex (its real connection code, no
//! socket); the owned side is the codec the server loop uses
//! (`http1::request::parse` and `http1::chunked`). Where the owned parser
//! is deliberately stricter — a request with both Transfer-Encoding and
//! Content-Length, or with more than one Content-Length field, both of
//! which hyper repairs — it must refuse, and hyper's verdict is not
//! compared.
//!
//! 256 cases by default; `PROPTEST_CASES=100000 cargo test --release
//! --test http1_differential` runs a longer search.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use switchyard::http1::chunked::{ChunkedDecoder, Decoded};
use switchyard::http1::request::{self, BodyFraming, HeadLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// hyper's smallest read buffer, and the same head limit for both.
const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 8192,
    max_headers: 100,
};

/// What a server made of a request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// No request was accepted.
    Refused,
    /// The first request, as the server read it.
    Accepted {
        method: String,
        target: String,
        version: String,
        fields: Vec<(String, Vec<u8>)>,
        /// `None` when the body was broken or cut short.
        body: Option<Vec<u8>>,
    },
}

fn fields(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect()
}

async fn hyper_verdict(input: Vec<u8>) -> Verdict {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (seen, mut first) = tokio::sync::mpsc::unbounded_channel();
    let service = service_fn(move |request: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.ok().map(|b| b.to_bytes().to_vec());
            let _ = seen.send(Verdict::Accepted {
                method: parts.method.to_string(),
                target: parts.uri.to_string(),
                version: format!("{:?}", parts.version),
                fields: fields(&parts.headers),
                body,
            });
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // The stream is closed after it is written: serve what came first.
        .half_close(true)
        .max_buf_size(LIMITS.max_head_bytes)
        .serve_connection(TokioIo::new(server), service);
    let served = tokio::spawn(connection);
    // Written whole, then closed: a request cut short ends at the close.
    let _ = client.write_all(&input).await;
    let _ = client.shutdown().await;
    let mut answers = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answers)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), served).await;
    first.try_recv().unwrap_or(Verdict::Refused)
}

fn owned_verdict(input: &[u8]) -> Verdict {
    let mut head = match request::parse(input, &LIMITS) {
        Ok(Some(head)) => head,
        Ok(None) | Err(_) => return Verdict::Refused,
    };
    let rest = &input[head.len..];
    let body = match head.framing {
        BodyFraming::Empty => Some(Vec::new()),
        BodyFraming::Length(n) => usize::try_from(n)
            .ok()
            .filter(|n| *n <= rest.len())
            .map(|n| rest[..n].to_vec()),
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            let mut buf = BytesMut::from(rest);
            let mut body = Vec::new();
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
                    Ok(Decoded::Done) => break Some(body),
                    Ok(Decoded::NeedMore) | Err(_) => break None,
                }
            }
        }
    };
    Verdict::Accepted {
        method: head.method.to_string(),
        target: head.uri.to_string(),
        version: format!("{:?}", head.version),
        fields: fields(&head.take_headers()),
        body,
    }
}

/// One generated request: its parts, so the test knows which framing
/// fields it carries.
#[derive(Debug, Clone)]
struct Generated {
    line: String,
    fields: Vec<(String, String)>,
    eol: &'static str,
    body: Vec<u8>,
}

impl Generated {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{}{}", self.line, self.eol).into_bytes();
        for (name, value) in &self.fields {
            if name.is_empty() {
                // A raw line (obs-fold, space before the colon, ...).
                out.extend_from_slice(value.as_bytes());
            } else {
                out.extend_from_slice(format!("{name}: {value}").as_bytes());
            }
            out.extend_from_slice(self.eol.as_bytes());
        }
        out.extend_from_slice(self.eol.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Framing the owned parser refuses on purpose where hyper repairs it.
    fn stricter_than_hyper(&self) -> bool {
        let count = |wanted: &str| {
            self.fields
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .count()
        };
        let (cl, te) = (count("content-length"), count("transfer-encoding"));
        cl > 1 || (cl > 0 && te > 0)
    }
}

fn one_of(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(options).prop_map(str::to_string)
}

fn field() -> impl Strategy<Value = (String, String)> {
    let framing = prop_oneof![
        one_of(&[
            "chunked",
            "Chunked",
            "  chunked",
            "\tchunked",
            "xchunked",
            "chunked, identity",
            "gzip, chunked",
            "identity",
            "\"chunked\"",
            "chunked,"
        ])
        .prop_map(|v| ("transfer-encoding".to_string(), v)),
        one_of(&[
            "0",
            "5",
            "005",
            "+5",
            "-1",
            "5, 5",
            "0x5",
            "",
            "18446744073709551616",
            "3",
            "12"
        ])
        .prop_map(|v| ("content-length".to_string(), v)),
    ];
    let ordinary = (
        "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,8}",
        "[ -~]{0,12}|[\u{80}-\u{ff}]{1,3}",
    );
    let raw = one_of(&[
        " folded",
        "\tfolded",
        "x : y",
        "x\t: y",
        "x: a\0b",
        "x: a\rb",
        "x:y",
        "x-empty:",
        ": no-name",
        "x y: z",
        "x\"y: z",
        "no-colon",
        "x: \u{7f}",
    ])
    .prop_map(|line| (String::new(), line));
    prop_oneof![
        3 => framing,
        3 => ordinary,
        1 => raw,
        1 => Just(("host".to_string(), "x".to_string())),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        one_of(&[
            "",
            "hello",
            "hello world, and more",
            "5\r\nhello\r\n0\r\n\r\n",
            "5;a=b\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            "5 ;a\r\nhello\r\n0\r\n\r\n",
            "0\r\nx-t: y\r\n\r\n",
            "0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "5\nhello\n0\n\n",
            "5;a\nhello\r\n0\r\n\r\n",
            "5;a\rb\r\nhello\r\n0\r\n\r\n",
            "ffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            "+5\r\nhello\r\n0\r\n\r\n",
            "5\r\nhelloXX0\r\n\r\n",
            "3\r\nhello\r\n0\r\n\r\n",
            "A\r\n0123456789\r\n0\r\n\r\n",
            "5\r\nhel",
        ])
        .prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..24),
    ]
}

fn request_stream() -> impl Strategy<Value = Generated> {
    let method = one_of(&[
        "GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "get", "G@T", "", "PO ST", "GE\0T",
    ]);
    let target = one_of(&[
        "/",
        "/a/b?c=d",
        "http://h/x",
        "http://h:8080/",
        "*",
        "/a b",
        "/%41",
        "",
        "/\u{7f}",
        "/é",
        "//x",
    ]);
    let version = one_of(&[
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/1.2",
        "http/1.1",
        "HTTP/2.0",
        "HTTP/1.1 ",
    ]);
    let eol = proptest::sample::select(&["\r\n", "\r\n", "\r\n", "\n"][..]);
    (
        method,
        target,
        version,
        eol,
        proptest::collection::vec(field(), 0..6),
        body(),
    )
        .prop_map(|(method, target, version, eol, fields, body)| Generated {
            line: format!("{method} {target} {version}"),
            fields,
            eol,
            body,
        })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

#[test]
fn the_owned_parser_reads_requests_as_hyper_does() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0u32);
    runner
        .run(&request_stream(), |generated| {
            let input = generated.bytes();
            let owned = owned_verdict(&input);
            if generated.stricter_than_hyper() {
                prop_assert_eq!(
                    &owned,
                    &Verdict::Refused,
                    "input: {:?}",
                    String::from_utf8_lossy(&input)
                );
                return Ok(());
            }
            let hyper = runtime.block_on(hyper_verdict(input.clone()));
            prop_assert_eq!(
                &owned,
                &hyper,
                "input: {:?}",
                String::from_utf8_lossy(&input)
            );
            if owned != Verdict::Refused {
                accepted.set(accepted.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // A generator that only makes garbage would compare nothing.
    assert!(accepted.get() > 0, "no generated request was accepted");
}

/// Fixed inputs the generator might miss, through the same comparison.
#[test]
fn known_inputs_are_read_as_hyper_does() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for input in [
        "GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        "POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
        "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /a HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: identity\r\n\r\n",
        "GET / HTTP/1.1\r\nx: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\nhost: x\n\n",
        "GET http://h/x?y HTTP/1.1\r\nhost: other\r\n\r\n",
    ] {
        let owned = owned_verdict(input.as_bytes());
        let hyper = runtime.block_on(hyper_verdict(input.as_bytes().to_vec()));
        assert_eq!(owned, hyper, "{input:?}");
    }
}
