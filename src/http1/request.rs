//! Request heads: parsed with `httparse` from the start of a connection's
//! read buffer, then judged by the framing rules of RFC 9112 §6, stricter
//! than hyper's where two readers could disagree about where the body ends
//! (a request with both Transfer-Encoding and Content-Length, or with
//! several Content-Length values, is refused, not repaired).

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::head::RawHead;

/// Longest request line accepted; a longer one gets 414, as nginx's
/// default `large_client_header_buffers` has it.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Fields a request usually gains on its way upstream (X-Forwarded-*,
/// X-Request-Id), reserved so that adding them does not grow the map.
const FIELDS_ADDED: usize = 6;

/// Field slots kept on the stack while parsing; more (a listener with a
/// larger `max_headers`) are allocated for that parse.
const STACK_FIELDS: usize = 128;

/// How large a head may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Request line and fields together; more gets 431.
    pub max_head_bytes: usize,
    /// Header fields; more gets 431.
    pub max_headers: usize,
}

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes (more than zero).
    Length(u64),
    /// The chunked coding, to its last chunk and trailer section.
    Chunked,
}

/// A parsed, accepted request head.
#[derive(Debug)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The target, as sent (origin-, absolute-, authority- or asterisk-form).
    pub uri: Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The fields, in the order sent, when the head could not be kept as
    /// received (`raw`); empty otherwise ([`RequestHead::take_headers`]).
    pub headers: HeaderMap,
    /// Where the body ends.
    pub framing: BodyFraming,
    /// Whether the client keeps the connection open after the response
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before its body.
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` field, on HTTP/1.1.
    pub wants_upgrade: bool,
    /// Bytes of the buffer the head took.
    pub len: usize,
    /// The head as received, to forward by editing (`None` when a line
    /// did not end in CRLF).
    pub raw: Option<RawHead>,
}

impl RequestHead {
    /// The fields as a map, made from the kept head if there is one (which
    /// then stays): for a request whose path needs a map.
    pub fn take_headers(&mut self) -> HeaderMap {
        match &self.raw {
            Some(raw) if self.headers.is_empty() => raw.to_header_map(),
            _ => std::mem::take(&mut self.headers),
        }
    }
}

/// Why a request head is refused: the status to answer with before closing
/// the connection, and the reason in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 414 or 431.
    pub status: StatusCode,
    /// What was wrong.
    pub reason: &'static str,
}

impl Refusal {
    fn bad(reason: &'static str) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }

    fn too_large(reason: &'static str) -> Refusal {
        Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            reason,
        }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete (and within the limits), the head once it is whole and
/// acceptable, or why it is refused.
pub fn parse(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, Refusal> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.unwrap_or(buf.len()) > MAX_REQUEST_LINE {
        return Err(Refusal {
            status: StatusCode::URI_TOO_LONG,
            reason: "request line too long",
        });
    }
    let mut stack = [httparse::EMPTY_HEADER; STACK_FIELDS];
    let mut heap = Vec::new();
    let fields: &mut [httparse::Header<'_>] = if limits.max_headers <= STACK_FIELDS {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize(limits.max_headers, httparse::EMPTY_HEADER);
        &mut heap
    };
    let mut request = httparse::Request::new(fields);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => {
            return Err(Refusal::too_large("request head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::too_large("too many header fields"))
        }
        Err(error) => return Err(Refusal::bad(parse_error(error))),
    };
    if len > limits.max_head_bytes {
        return Err(Refusal::too_large("request head too large"));
    }
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(Refusal::bad("incomplete request line"));
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Refusal::bad("bad method"))?;
    // One copy of the head; the target and the field values are slices of
    // it, not an allocation each.
    let shared = Bytes::copy_from_slice(&buf[..len]);
    let slice_of = |part: &[u8]| {
        let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        shared.slice(start..start + part.len())
    };
    let uri = Uri::from_maybe_shared(slice_of(target.as_bytes()))
        .map_err(|_| Refusal::bad("bad request target"))?;
    let http11 = minor == 1;
    // The head as received; a map of its fields only when it cannot be
    // kept so (a line that does not end in CRLF): the request path reads
    // the kept head and makes a map of it only for a feature that needs one.
    let raw = RawHead::of_shared(&shared, &buf[..len], request.headers);
    let mut head = RequestHead {
        method,
        uri,
        version: if http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        headers: HeaderMap::new(),
        framing: BodyFraming::Empty,
        keep_alive: http11,
        expect_continue: false,
        wants_upgrade: false,
        len,
        raw: None,
    };
    if raw.is_none() {
        // Room for the fields the proxy adds (forwarding, request id).
        head.headers = HeaderMap::with_capacity(request.headers.len() + FIELDS_ADDED);
    }
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = false;
    let mut connection_upgrade = false;
    let mut upgrade_field = false;
    for field in request.headers.iter() {
        // httparse has already refused what `HeaderName` and `HeaderValue`
        // would (names are tokens; values have no control bytes but tab,
        // nor DEL), so the names are compared as bytes, lengths first.
        let name = field.name.as_bytes();
        let is = |wanted: &str| {
            name.len() == wanted.len() && name.eq_ignore_ascii_case(wanted.as_bytes())
        };
        if is("transfer-encoding") {
            if !http11 {
                return Err(Refusal::bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            transfer_encoding = true;
            // The last field decides, as its last coding does (§6.1).
            chunked = ends_in_chunked(field.value);
        } else if is("content-length") {
            if length.is_some() {
                return Err(Refusal::bad("more than one Content-Length"));
            }
            length = Some(content_length(field.value)?);
        } else if is("connection") {
            for token in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    head.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if is("expect") {
            head.expect_continue = field.value.eq_ignore_ascii_case(b"100-continue");
        } else if is("upgrade") {
            upgrade_field = true;
        }
        if raw.is_none() {
            let name = HeaderName::from_bytes(name).map_err(|_| Refusal::bad("bad field name"))?;
            let value = HeaderValue::from_maybe_shared(slice_of(field.value))
                .map_err(|_| Refusal::bad("bad field value"))?;
            head.headers.append(name, value);
        }
    }
    if transfer_encoding && length.is_some() {
        return Err(Refusal::bad("both Transfer-Encoding and Content-Length"));
    }
    if transfer_encoding && !chunked {
        return Err(Refusal::bad("Transfer-Encoding does not end in chunked"));
    }
    head.raw = raw;
    // Once any Connection field says close, a keep-alive cannot undo it.
    head.keep_alive &= !close;
    head.wants_upgrade = http11 && connection_upgrade && upgrade_field;
    head.framing = match (chunked, length) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(0) | None) => BodyFraming::Empty,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    Ok(Some(head))
}

/// A Content-Length value: one decimal number, nothing else (no sign,
/// list, spaces inside or hex), within `u64`.
fn content_length(value: &[u8]) -> Result<u64, Refusal> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::bad("bad Content-Length"));
    }
    value
        .iter()
        .try_fold(0u64, |n, &digit| {
            n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        })
        .ok_or(Refusal::bad("Content-Length too large"))
}

/// Whether a Transfer-Encoding value's last coding is `chunked`.
fn ends_in_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "bad field name (or obs-fold, or space before the colon)",
        httparse::Error::HeaderValue => "bad field value",
        httparse::Error::NewLine => "bad line ending",
        httparse::Error::Status => "bad request line",
        httparse::Error::Token => "bad method or target",
        httparse::Error::Version => "bad HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 8192,
        max_headers: 100,
    };

    fn parsed(text: &str) -> Result<Option<RequestHead>, Refusal> {
        parse(text.as_bytes(), &LIMITS)
    }

    fn status(text: &str) -> u16 {
        match parsed(text) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(refusal) => refusal.status.as_u16(),
        }
    }

    #[test]
    fn a_plain_request_parses_whole() {
        let text = "GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nrest";
        let mut head = parsed(text).unwrap().unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri, "/a?b");
        assert_eq!(head.version, Version::HTTP_11);
        assert!(head.headers.is_empty() && head.raw.is_some());
        assert_eq!(head.take_headers().get_all("x-a").iter().count(), 2);
        // A bare LF line: not kept as received, so parsed into a map.
        let bare = parsed("GET / HTTP/1.1\nHost: x\nX-A: 1\n\n")
            .unwrap()
            .unwrap();
        assert!(bare.raw.is_none());
        assert_eq!(
            bare.headers.get("x-a").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(head.framing, BodyFraming::Empty);
        assert!(head.keep_alive && !head.expect_continue && !head.wants_upgrade);
        assert_eq!(&text[head.len..], "rest");
        assert!(parsed("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn framing_follows_rfc_9112_strictly() {
        let framing = |fields: &str| {
            parsed(&format!("POST / HTTP/1.1\r\nhost: x\r\n{fields}\r\n"))
                .map(|h| h.unwrap().framing)
        };
        assert_eq!(framing("content-length: 5\r\n"), Ok(BodyFraming::Length(5)));
        assert_eq!(
            framing("content-length: 005\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(framing("content-length: 0\r\n"), Ok(BodyFraming::Empty));
        assert_eq!(
            framing("transfer-encoding: chunked\r\n"),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            framing("transfer-encoding: gzip, Chunked\r\n"),
            Ok(BodyFraming::Chunked)
        );
        for bad in [
            "content-length: 5\r\ntransfer-encoding: chunked\r\n",
            "transfer-encoding: chunked\r\ncontent-length: 5\r\n",
            "content-length: 5\r\ncontent-length: 5\r\n",
            "content-length: 5, 5\r\n",
            "content-length: +5\r\n",
            "content-length: 0x5\r\n",
            "content-length: 1 0\r\n",
            "content-length: \r\n",
            "content-length: 18446744073709551616\r\n",
            "transfer-encoding: xchunked\r\n",
            "transfer-encoding: chunked, identity\r\n",
            "transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n",
            "transfer-encoding: \"chunked\"\r\n",
            "transfer-encoding: \x0bchunked\r\n",
            "transfer-encoding : chunked\r\n",
            "x: y\r\n transfer-encoding: chunked\r\n",
            "x-a: b\0c\r\n",
        ] {
            let refusal = framing(bad).unwrap_err();
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert_eq!(
            status("POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"),
            400
        );
    }

    #[test]
    fn bad_syntax_is_refused() {
        for bad in [
            "POST /first HTTP/1.1\rhost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: x\ry: z\r\n\r\n",
            "G@T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n: empty\r\n\r\n",
        ] {
            assert_eq!(status(bad), 400, "{bad:?}");
        }
    }

    #[test]
    fn limits_give_414_and_431() {
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(status(&long_line), 414);
        // Still incomplete, but already longer than a request line may be.
        assert_eq!(status(&"a".repeat(MAX_REQUEST_LINE + 1)), 414);
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(8192));
        assert_eq!(status(&big), 431);
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(8192))),
            431
        );
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "x: y\r\n".repeat(101));
        assert_eq!(status(&many), 431);
        let enough = format!("GET / HTTP/1.1\r\n{}\r\n", "x: y\r\n".repeat(100));
        assert_eq!(status(&enough), 200);
        let wide = HeadLimits {
            max_head_bytes: 65536,
            max_headers: 300,
        };
        let more = format!("GET / HTTP/1.1\r\n{}\r\n", "x: y\r\n".repeat(300));
        assert!(parse(more.as_bytes(), &wide).unwrap().is_some());
    }

    #[test]
    fn connection_expect_and_upgrade() {
        let head = |text: &str| parsed(text).unwrap().unwrap();
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nconnection: close\r\n\r\n").keep_alive);
        assert!(
            !head("GET / HTTP/1.1\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n")
                .keep_alive
        );
        assert!(head("PUT / HTTP/1.1\r\nexpect: 100-Continue\r\n\r\n").expect_continue);
        let upgrade = "GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n";
        assert!(head(upgrade).wants_upgrade);
        assert!(!head("GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n").wants_upgrade);
    }
}
