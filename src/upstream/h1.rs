//! A lean HTTP/1.1 client for the most common exchange: a request without
//! a body, to an upstream over plain TCP.
//!
//! hyper's client runs every connection as its own task and hands requests
//! and responses to it through channels, so each request costs two extra
//! wake-ups and a task switch. Here the task serving the client writes the
//! request and reads the response itself, and the response body is read
//! from the socket as the client takes it. Requests with a body, upgrades,
//! TLS and HTTP/2 keep using hyper's client (see `Pool::checkout`).
//!
//! The response is parsed by `httparse` (as in hyper) and framed per
//! RFC 9112 §6.3; anything malformed fails the exchange and closes the
//! connection, never guesses.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::framing::{
    self, MAX_CHUNK_LINE, MAX_RESPONSE_FIELDS as MAX_FIELDS, MAX_RESPONSE_HEAD as MAX_HEAD,
};
use super::Pool;
use crate::http1::head::RawHead;

/// Read buffer of a connection; response heads may grow it to `MAX_HEAD`.
const BUFFER: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before a complete response head.
    #[error("connection closed before a complete response")]
    ClosedBeforeResponse,
    /// The upstream closed the connection in the middle of the body.
    #[error("connection closed before the end of the response body")]
    Truncated,
    /// The response broke HTTP/1.1.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

/// One HTTP/1.1 connection to an upstream.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    /// Bytes read: `buf[start..end]` is not yet consumed. Kept initialised
    /// (zeroed once) so reads need no unsafe code.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The request head being written; its capacity is reused.
    head: Vec<u8>,
    /// Its share of the instance's connection limit, while it is open.
    _permit: super::ConnectionPermit,
}

/// A failed exchange, and whether the request may go on another
/// connection: only when the upstream cannot have acted on it.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub error: Error,
    /// The request was certainly not processed (a reused connection that
    /// was closed under us).
    pub unsent: bool,
    /// The connection closed or reset before any response head arrived:
    /// the request may have been processed, but nothing was answered, so
    /// an idempotent request can be sent again.
    pub before_response: bool,
}

impl Conn {
    /// Wraps a connected socket. Boxed: it moves between the pool, the
    /// request and the response body, always as one pointer.
    pub fn new(io: TcpStream, permit: super::ConnectionPermit) -> Box<Conn> {
        Box::new(Conn {
            io,
            buf: vec![0; BUFFER],
            start: 0,
            end: 0,
            head: Vec::with_capacity(512),
            _permit: permit,
        })
    }

    /// Whether an idle pooled connection was closed (or sent bytes nobody
    /// asked for) while it waited. Costs no system call unless the socket
    /// became readable.
    pub fn closed_while_idle(&mut self, cx: &mut Context<'_>) -> bool {
        if self.start != self.end {
            return true;
        }
        match self.io.poll_read_ready(cx) {
            Poll::Pending => false,
            // Readiness can be left over from the last response: a read
            // that would block clears it and proves the socket quiet.
            Poll::Ready(_) => !matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Sends `request` (its body is not sent: callers use this only for
    /// requests without one) and reads the response head. The body is read
    /// as the returned response's body is polled; at its end the connection
    /// goes back to `pool` if it can carry another request.
    ///
    /// With `raw`, a response head of the usual shape (CRLF lines, at most
    /// one plain Content-Length, not both framing fields) is not made into
    /// a `HeaderMap`: the response's map is empty and its body carries the
    /// head as received ([`Body::take_raw_head`]), for a server that writes
    /// it on by copying.
    pub async fn send<B>(
        mut self: Box<Self>,
        request: &Request<B>,
        head: Option<&RawHead>,
        reused: bool,
        pool: Arc<Pool>,
        raw: bool,
    ) -> Result<Response<Body>, SendError> {
        encode_head(request, head, &mut self.head);
        if let Err(error) = self.io.write_all(&self.head).await {
            // A reused connection the upstream had closed: nothing arrived.
            let unsent = reused && is_closed_error(&error);
            let before_response = is_closed_error(&error);
            return Err(SendError {
                error: error.into(),
                unsent,
                before_response,
            });
        }
        let head_only = request.method() == Method::HEAD;
        let mut received_any = false;
        loop {
            match self.read_head(raw).await {
                Ok(head) => {
                    received_any = true;
                    // Informational answers (100, 102, 103) precede the real one.
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    let mut head = head;
                    let checked = framing(&head, head_only).and_then(|framing| {
                        // A raw head has one plain Content-Length at most
                        // and not with Transfer-Encoding: nothing to fold.
                        framing::check_response_head(head.status, &mut head.headers)
                            .map(|()| framing)
                            .map_err(Error::Invalid)
                    });
                    let framing = match checked {
                        Ok(framing) => framing,
                        Err(error) => {
                            return Err(SendError {
                                error,
                                unsent: false,
                                before_response: false,
                            })
                        }
                    };
                    let reusable = framing.reusable && keeps_alive(&head);
                    let mut response = Response::new(Body {
                        conn: Some(self),
                        pool: Some(pool),
                        state: framing.state,
                        reusable,
                        raw: head.raw,
                    });
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    let body = response.body_mut();
                    if body.is_end_stream() {
                        body.finish();
                    }
                    return Ok(response);
                }
                Err(error) => {
                    // A reused connection closed before any answer: the
                    // upstream dropped it as the request went out. Only a
                    // safe method is sent again (it may have been seen).
                    let closed = match &error {
                        Error::ClosedBeforeResponse => true,
                        Error::Io(error) => is_closed_error(error),
                        _ => false,
                    };
                    let unsent = reused
                        && !received_any
                        && closed
                        && matches!(
                            *request.method(),
                            Method::GET | Method::HEAD | Method::OPTIONS
                        );
                    let before_response = !received_any && closed;
                    return Err(SendError {
                        error,
                        unsent,
                        before_response,
                    });
                }
            }
        }
    }

    /// Reads until a complete response head is buffered, and parses it
    /// (kept as received with `raw`, when it can be).
    async fn read_head(&mut self, raw: bool) -> Result<Head, Error> {
        loop {
            if self.start != self.end {
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                let mut parsed = httparse::Response::new(&mut fields);
                match parsed.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(len)) => {
                        let bytes = &self.buf[self.start..self.start + len];
                        let head = match raw.then(|| Head::raw(&parsed, bytes)).flatten() {
                            Some(head) => head?,
                            None => Head::from_parsed(&parsed, bytes)?,
                        };
                        self.consume(len);
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(Error::Invalid("too many header fields"))
                    }
                    Err(_) => return Err(Error::Invalid("malformed response head")),
                }
                if self.end - self.start >= MAX_HEAD {
                    return Err(Error::Invalid("response head too large"));
                }
            }
            if std::future::poll_fn(|cx| self.poll_fill(cx, MAX_HEAD)).await? == 0 {
                return Err(if self.start == self.end {
                    Error::ClosedBeforeResponse
                } else {
                    Error::Invalid("connection closed in the middle of the response head")
                });
            }
        }
    }

    /// Reads more bytes after the unconsumed ones; `Ok(0)` is end of
    /// stream. The buffer grows (up to `limit`) only when it is full of
    /// unconsumed bytes.
    fn poll_fill(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < limit {
                let grown = (self.buf.len() * 2).min(limit);
                self.buf.resize(grown, 0);
            } else {
                return Poll::Ready(Err(io::Error::other("read buffer full")));
            }
        }
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Takes up to `max` buffered bytes as a body chunk.
    fn take(&mut self, max: u64) -> Bytes {
        let n = (self.end - self.start).min(usize::try_from(max).unwrap_or(usize::MAX));
        let chunk = Bytes::copy_from_slice(&self.buf[self.start..self.start + n]);
        self.consume(n);
        chunk
    }
}

fn is_closed_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// Writes the request line and fields: those of `head` (the request's head
/// as received, edited) when given, else the request's map. The target is
/// already in origin form and `Host` is set (see `proxy`).
fn encode_head<B>(request: &Request<B>, head: Option<&RawHead>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(head) = head {
        head.write_fields(out);
        out.extend_from_slice(b"\r\n");
        return;
    }
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head: its fields in a map, or as received.
struct Head {
    status: StatusCode,
    version: Version,
    /// Empty when `raw` has the fields.
    headers: HeaderMap,
    raw: Option<RawHead>,
}

fn status_and_version(parsed: &httparse::Response<'_, '_>) -> Result<(StatusCode, Version), Error> {
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(Error::Invalid("bad status code"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    Ok((status, version))
}

impl Head {
    /// The head kept as received, if it has the usual shape: CRLF lines,
    /// at most one Content-Length field without a list, and not both
    /// Content-Length and Transfer-Encoding (those are folded or dropped,
    /// which the map path does). `None`: take the map path.
    fn raw(parsed: &httparse::Response<'_, '_>, bytes: &[u8]) -> Option<Result<Head, Error>> {
        let mut lengths = 0;
        let mut transfer_encoding = false;
        for field in parsed.headers.iter() {
            if field.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                if field.value.contains(&b',') {
                    return None;
                }
            } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
            }
        }
        if lengths > 1 || (lengths == 1 && transfer_encoding) {
            return None;
        }
        // httparse already refused what HeaderName and HeaderValue would:
        // names are tokens, values have no control bytes but tab (nor DEL).
        let raw = RawHead::new(bytes, parsed.headers)?;
        Some(status_and_version(parsed).map(|(status, version)| Head {
            status,
            version,
            headers: HeaderMap::new(),
            raw: Some(raw),
        }))
    }

    /// The value of the last field called `name`.
    fn last(&self, name: &HeaderName) -> Option<&[u8]> {
        match &self.raw {
            Some(raw) => {
                // Looked up once: a standard name's text is a match each time.
                let name = name.as_str().as_bytes();
                raw.fields()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
                    .last()
            }
            None => self
                .headers
                .get_all(name)
                .iter()
                .next_back()
                .map(HeaderValue::as_bytes),
        }
    }

    /// Whether any field called `name` lists `token`.
    fn lists(&self, name: &HeaderName, token: &str) -> bool {
        let has = |value: &[u8]| {
            value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        };
        match &self.raw {
            Some(raw) => {
                let name = name.as_str().as_bytes();
                raw.fields()
                    .any(|(n, v)| n.eq_ignore_ascii_case(name) && has(v))
            }
            None => self.headers.get_all(name).iter().any(|v| has(v.as_bytes())),
        }
    }

    fn content_length(&self) -> Result<Option<u64>, Error> {
        match &self.raw {
            Some(raw) => raw
                .get("content-length")
                .map_or(Ok(None), |v| framing::content_length_value(v, None)),
            None => framing::content_length(&self.headers),
        }
        .map_err(Error::Invalid)
    }

    /// `parsed` was parsed from `raw`. Field values share one copy of the
    /// head rather than being copied one by one.
    fn from_parsed(parsed: &httparse::Response<'_, '_>, raw: &[u8]) -> Result<Head, Error> {
        let bytes = Bytes::copy_from_slice(raw);
        let (status, version) = status_and_version(parsed)?;
        let mut headers = HeaderMap::with_capacity(parsed.headers.len());
        for field in parsed.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| Error::Invalid("bad field name"))?;
            // The value's place in `raw` is its place in the copy.
            let start = (field.value.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
            let end = start.wrapping_add(field.value.len());
            if start > end || end > bytes.len() {
                return Err(Error::Invalid("bad field value"));
            }
            let value = HeaderValue::from_maybe_shared(bytes.slice(start..end))
                .map_err(|_| Error::Invalid("bad field value"))?;
            headers.append(name, value);
        }
        Ok(Head {
            status,
            version,
            headers,
            raw: None,
        })
    }
}

/// How the body is delimited, and whether the connection can be reused
/// as far as framing goes.
struct Framing {
    state: State,
    reusable: bool,
}

/// RFC 9112 §6.3. Content-Length is checked even where it delimits
/// nothing (HEAD, 204, 304): a bad one is forwarded by nobody.
fn framing(head: &Head, head_only: bool) -> Result<Framing, Error> {
    let length = head.content_length()?;
    let status = head.status;
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // A 101 hands the connection over; it is never reused.
        let reusable = status != StatusCode::SWITCHING_PROTOCOLS;
        return Ok(Framing {
            state: State::Length(0),
            reusable,
        });
    }
    if let Some(last) = head.last(&TRANSFER_ENCODING) {
        let chunked_last = last
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked_last {
            Framing {
                state: State::Chunked(Chunk::Size),
                // With Content-Length as well the message is suspect: close.
                reusable: length.is_none(),
            }
        } else {
            Framing {
                state: State::UntilClose,
                reusable: false,
            }
        });
    }
    Ok(match length {
        Some(n) => Framing {
            state: State::Length(n),
            reusable: true,
        },
        None => Framing {
            state: State::UntilClose,
            reusable: false,
        },
    })
}

/// Whether the upstream keeps the connection open after this response.
fn keeps_alive(head: &Head) -> bool {
    head.version == Version::HTTP_11 && !head.lists(&CONNECTION, "close")
}

/// Where the body reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes are left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    UntilClose,
    /// Read to the end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many data bytes are left in the chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// A response body read from the connection as it is polled.
#[derive(Debug)]
pub struct Body {
    conn: Option<Box<Conn>>,
    pool: Option<Arc<Pool>>,
    state: State,
    reusable: bool,
    /// The head as received, until the server writing it takes it.
    raw: Option<RawHead>,
}

impl Body {
    /// The response head as received, when it was kept that way (see
    /// [`Conn::send`]); the response's `HeaderMap` is then empty.
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        self.raw.take()
    }

    /// The response head as received, to edit before it is written.
    pub fn raw_head_mut(&mut self) -> Option<&mut RawHead> {
        self.raw.as_mut()
    }

    /// At the end: the connection goes back to the pool if the upstream
    /// keeps it open and sent nothing beyond this response.
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(mut conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            if self.reusable && conn.start == conn.end {
                (conn.start, conn.end) = (0, 0);
                if conn.buf.len() > BUFFER {
                    // Grown for a large head: idle connections keep the usual size.
                    conn.buf = vec![0; BUFFER];
                }
                pool.checkin_h1(conn);
            }
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }

    /// The next frame, or `Ok(None)` when a chunk boundary was consumed and
    /// the caller should go on.
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame<Bytes>>, Error>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        match self.state {
            State::Done | State::Length(0) => Poll::Ready(Ok(None)),
            State::Length(left) => {
                if conn.buffered().is_empty() && ready!(conn.poll_fill(cx, BUFFER))? == 0 {
                    return Poll::Ready(Err(Error::Truncated));
                }
                let chunk = conn.take(left);
                self.state = State::Length(left - chunk.len() as u64);
                Poll::Ready(Ok(Some(Frame::data(chunk))))
            }
            State::UntilClose => {
                if conn.buffered().is_empty() && ready!(conn.poll_fill(cx, BUFFER))? == 0 {
                    self.state = State::Done;
                    return Poll::Ready(Ok(None));
                }
                Poll::Ready(Ok(Some(Frame::data(conn.take(u64::MAX)))))
            }
            State::Chunked(Chunk::Data(left)) => {
                if conn.buffered().is_empty() && ready!(conn.poll_fill(cx, BUFFER))? == 0 {
                    return Poll::Ready(Err(Error::Truncated));
                }
                let chunk = conn.take(left);
                let left = left - chunk.len() as u64;
                self.state = State::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Poll::Ready(Ok(Some(Frame::data(chunk))))
            }
            State::Chunked(Chunk::Size) => {
                let Some(line_end) = find_crlf(conn.buffered())? else {
                    return more(conn, cx, MAX_CHUNK_LINE, "chunk-size line too long");
                };
                let size =
                    framing::chunk_size(&conn.buffered()[..line_end]).map_err(Error::Invalid)?;
                conn.consume(line_end + 2);
                self.state = State::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Poll::Ready(Ok(None))
            }
            State::Chunked(Chunk::DataEnd) => {
                if conn.buffered().len() < 2 {
                    return more(conn, cx, BUFFER, "");
                }
                if &conn.buffered()[..2] != b"\r\n" {
                    return Poll::Ready(Err(Error::Invalid("chunk data not followed by CRLF")));
                }
                conn.consume(2);
                self.state = State::Chunked(Chunk::Size);
                Poll::Ready(Ok(None))
            }
            State::Chunked(Chunk::Trailers) => {
                if conn.buffered().starts_with(b"\r\n") {
                    conn.consume(2);
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                match httparse::parse_headers(conn.buffered(), &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for field in fields {
                            let name = HeaderName::from_bytes(field.name.as_bytes())
                                .map_err(|_| Error::Invalid("bad trailer field name"))?;
                            let value = HeaderValue::from_bytes(field.value)
                                .map_err(|_| Error::Invalid("bad trailer field value"))?;
                            trailers.append(name, value);
                        }
                        conn.consume(len);
                        self.finish();
                        Poll::Ready(Ok(Some(Frame::trailers(trailers))))
                    }
                    Ok(httparse::Status::Partial) => {
                        more(conn, cx, MAX_HEAD, "trailer section too large")
                    }
                    Err(_) => Poll::Ready(Err(Error::Invalid("malformed trailer section"))),
                }
            }
        }
    }
}

/// Reads more for a framing element that is not complete yet; `Ok(None)`
/// asks the caller to look again.
fn more(
    conn: &mut Conn,
    cx: &mut Context<'_>,
    limit: usize,
    too_long: &'static str,
) -> Poll<Result<Option<Frame<Bytes>>, Error>> {
    if conn.buffered().len() >= limit {
        return Poll::Ready(Err(Error::Invalid(too_long)));
    }
    match ready!(conn.poll_fill(cx, limit.max(BUFFER))) {
        Ok(0) => Poll::Ready(Err(Error::Truncated)),
        Ok(_) => Poll::Ready(Ok(None)),
        Err(error) => Poll::Ready(Err(error.into())),
    }
}

/// Where the first line ends (its CR), if it has ended; a bare LF is an error.
fn find_crlf(bytes: &[u8]) -> Result<Option<usize>, Error> {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && bytes[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(Error::Invalid("chunk-size line not ended by CRLF")),
        None => Ok(None),
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            if this.state == State::Length(0) {
                this.finish();
            }
            if this.state == State::Done {
                return Poll::Ready(None);
            }
            match ready!(this.step(cx)) {
                Ok(Some(frame)) => {
                    if this.state == State::Length(0) {
                        // Hand the connection back as soon as the last
                        // byte is in: the caller may not poll again.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) => continue,
                Err(error) => return this.fail(error),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_end_with_crlf() {
        assert_eq!(find_crlf(b"3\r\nabc").unwrap(), Some(1));
        assert_eq!(find_crlf(b"3").unwrap(), None);
        assert_eq!(find_crlf(b"3\r").unwrap(), None);
        assert!(find_crlf(b"3\nabc").is_err());
        assert!(find_crlf(b"\n").is_err());
    }

    #[test]
    fn the_request_head_is_written_in_origin_form() {
        let request = Request::get("/a/b?c=d")
            .header("host", "example.com")
            .header("x-one", "1")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        encode_head(&request, None, &mut out);
        assert_eq!(
            out,
            b"GET /a/b?c=d HTTP/1.1\r\nhost: example.com\r\nx-one: 1\r\n\r\n".to_vec()
        );
    }

    fn head(status: u16, version: Version, fields: &[(&str, &str)]) -> Head {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Head {
            status: StatusCode::from_u16(status).unwrap(),
            version,
            headers,
            raw: None,
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let v11 = Version::HTTP_11;
        let f = framing(&head(200, v11, &[("content-length", "12")]), false).unwrap();
        assert_eq!((f.state, f.reusable), (State::Length(12), true));
        let f = framing(&head(200, v11, &[("content-length", "12")]), true).unwrap();
        assert_eq!(f.state, State::Length(0), "HEAD has no body");
        let f = framing(&head(204, v11, &[]), false).unwrap();
        assert_eq!(f.state, State::Length(0));
        let f = framing(&head(304, v11, &[("content-length", "99")]), false).unwrap();
        assert_eq!(f.state, State::Length(0));
        let f = framing(
            &head(200, v11, &[("transfer-encoding", "gzip, chunked")]),
            false,
        )
        .unwrap();
        assert_eq!((f.state, f.reusable), (State::Chunked(Chunk::Size), true));
        let f = framing(
            &head(
                200,
                v11,
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
            ),
            false,
        )
        .unwrap();
        assert_eq!((f.state, f.reusable), (State::Chunked(Chunk::Size), false));
        let f = framing(&head(200, v11, &[("transfer-encoding", "gzip")]), false).unwrap();
        assert_eq!((f.state, f.reusable), (State::UntilClose, false));
        let f = framing(&head(200, v11, &[]), false).unwrap();
        assert_eq!((f.state, f.reusable), (State::UntilClose, false));
        let f = framing(&head(200, v11, &[("content-length", "7, 7")]), false).unwrap();
        assert_eq!(f.state, State::Length(7));
        for bad in ["7, 8", "-1", "", "1e3", "+5"] {
            assert!(
                framing(&head(200, v11, &[("content-length", bad)]), false).is_err(),
                "{bad:?}"
            );
        }
        assert!(framing(
            &head(
                200,
                v11,
                &[("content-length", "1"), ("content-length", "2")]
            ),
            false
        )
        .is_err());
    }

    #[test]
    fn keep_alive_needs_http_1_1_without_close() {
        assert!(keeps_alive(&head(200, Version::HTTP_11, &[])));
        assert!(!keeps_alive(&head(
            200,
            Version::HTTP_11,
            &[("connection", "Close")]
        )));
        assert!(!keeps_alive(&head(200, Version::HTTP_10, &[])));
    }
}
