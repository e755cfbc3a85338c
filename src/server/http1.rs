//! The owned HTTP/1.1 server loop (`listeners[].http1: owned`): one task
//! per connection reads request heads into a per-connection buffer, parses
//! them with the `http1` codec, hands each request to the proxy, and writes
//! the response, one request at a time, so pipelined requests are answered
//! in order. The buffers are dropped whenever the connection waits for a
//! new request, so an idle keep-alive connection holds none.
//!
//! The request body is read from the socket only when the proxy asks for
//! it (which is also when a client that sent `Expect: 100-continue` gets
//! its `100 Continue`), one frame ahead at most. A body the proxy did not
//! read to its end closes the connection after the response: whatever
//! follows it cannot be told apart from a next request.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use crate::http1::body::{self, BodySender, PendingUpgrade, Upgraded};
use crate::http1::chunked::{ChunkedDecoder, Decoded};
use crate::http1::head::RawHead;
use crate::http1::request::{self, BodyFraming, HeadLimits, Refusal};
use crate::proxy::ProxyBody;
use crate::upstream::ClientBody;

use super::watchdog::{Progress, Tracked};

/// Room reserved in the read buffer per read once a request arrives.
const READ_BUFFER: usize = 8 * 1024;

/// What the first read of an idle connection goes into: allocated for each
/// poll of that read and freed when it finds nothing, so a connection
/// waiting for a request holds no buffer. Large enough for most request
/// heads in one read.
const FIRST_READ: usize = 2 * 1024;

/// The most of an unread request body thrown away to keep a connection,
/// and how long that may wait for it (nginx discards unread bodies too).
const DISCARD_LIMIT: u64 = 64 * 1024;
const DISCARD_WAIT: Duration = Duration::from_secs(1);

/// Response bytes gathered before they are written.
const WRITE_BATCH: usize = 16 * 1024;

/// The HTTP/2 connection preface (RFC 9113 §3.4): a cleartext client that
/// starts with it speaks HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The limits the loop applies itself (the others are the caller's).
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub(super) head: HeadLimits,
    /// From the first byte of a later request head to its end.
    pub(super) header_read_timeout: Duration,
    /// Whether the first bytes may be an HTTP/2 preface (cleartext only;
    /// on TLS, ALPN decided).
    pub(super) detect_h2: bool,
    /// Whether a request without a body or upgrade goes to the handler
    /// with its head as received and an empty map (see `exchange`).
    pub(super) keep_heads: bool,
}

/// How a connection's HTTP/1.1 service ended.
pub(super) enum Ended {
    /// Closed, or handed to a tunnel.
    Closed,
    /// The client spoke HTTP/2 with prior knowledge: its connection, with
    /// the bytes read so far to be read again.
    Http2(Upgraded),
}

/// Serves HTTP/1.1 on `io` until the client closes, an error, or `closing`
/// becomes true (checked after each response; a connection waiting for a
/// request is closed by dropping this future).
pub(super) async fn serve<I, H, F>(
    mut io: I,
    peer: SocketAddr,
    handler: &H,
    progress: &Arc<Progress>,
    settings: Settings,
    closing: watch::Receiver<bool>,
) -> io::Result<Ended>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<ClientBody>, SocketAddr) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    let mut buf = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    let mut first = settings.detect_h2;
    loop {
        // The head: from what is buffered (pipelined), or read anew.
        let mut head_deadline = None;
        let head = loop {
            if first && !buf.is_empty() {
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Ok(Ended::Http2(Upgraded::new(Box::new(io), buf.freeze())));
                    }
                } else {
                    first = false;
                }
            }
            if !first && !buf.is_empty() {
                match request::parse(&buf, &settings.head) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(refusal) => {
                        refuse(&mut io, refusal, &mut out).await;
                        return Ok(Ended::Closed);
                    }
                }
            }
            if buf.is_empty() {
                // Idle: nothing held but the task itself.
                buf = BytesMut::new();
                out = Vec::new();
                if *closing.borrow() {
                    return Ok(Ended::Closed);
                }
                // Asked to close while waiting here, the connection is
                // dropped by the caller (it has no request in flight).
                let read =
                    std::future::poll_fn(|cx| poll_first_read(&mut io, &mut buf, cx)).await?;
                if read == 0 {
                    return Ok(Ended::Closed);
                }
                head_deadline = Some(tokio::time::Instant::now() + settings.header_read_timeout);
            } else {
                buf.reserve(READ_BUFFER);
                let read = match head_deadline {
                    Some(deadline) => {
                        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
                            Ok(read) => read?,
                            Err(_) => return Ok(Ended::Closed),
                        }
                    }
                    None => io.read_buf(&mut buf).await?,
                };
                if read == 0 {
                    return Ok(Ended::Closed);
                }
            }
        };
        first = false;
        buf.advance(head.len);
        let mut head = head;
        if !settings.keep_heads {
            // A handler that reads maps only gets no head as received.
            head.headers = head.take_headers();
            head.raw = None;
        }
        // Boxed: the exchange's state (request, response, body) exists
        // only while a request is served, not in every idle connection.
        let keep_alive = Box::pin(exchange(
            &mut io, &mut buf, &mut out, head, peer, handler, progress,
        ))
        .await?;
        match keep_alive {
            Next::KeepAlive if !*closing.borrow() => {}
            Next::KeepAlive | Next::Close => {
                let _ = io.shutdown().await;
                return Ok(Ended::Closed);
            }
            Next::Upgrade(sender) => {
                let _ = sender.send(Upgraded::new(Box::new(io), buf.freeze()));
                return Ok(Ended::Closed);
            }
            Next::Drop => return Ok(Ended::Closed),
        }
    }
}

/// The read of a connection waiting for a request: into a buffer that
/// exists only during the poll, unless bytes came.
fn poll_first_read<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<io::Result<usize>> {
    buf.resize(FIRST_READ, 0);
    let mut read = tokio::io::ReadBuf::new(&mut buf[..]);
    let polled = std::pin::Pin::new(io).poll_read(cx, &mut read);
    let n = read.filled().len();
    match polled {
        std::task::Poll::Ready(Ok(())) => {
            buf.truncate(n);
            std::task::Poll::Ready(Ok(n))
        }
        std::task::Poll::Ready(Err(error)) => {
            *buf = BytesMut::new();
            std::task::Poll::Ready(Err(error))
        }
        std::task::Poll::Pending => {
            *buf = BytesMut::new();
            std::task::Poll::Pending
        }
    }
}

/// What the connection does after an exchange.
enum Next {
    KeepAlive,
    /// Close gracefully (the response is complete).
    Close,
    /// The 101 is written: the connection goes to the tunnel.
    Upgrade(oneshot::Sender<Upgraded>),
    /// Close at once (the response could not be completed).
    Drop,
}

/// Answers a refused head and closes (RFC 9112 §9.6: after a framing
/// error, what follows cannot be trusted).
async fn refuse<I: AsyncWrite + Unpin>(io: &mut I, refusal: Refusal, out: &mut Vec<u8>) {
    let text = format!("switchyard: {}\n", refusal.reason);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(refusal.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        refusal
            .status
            .canonical_reason()
            .unwrap_or("Bad Request")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(text.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(text.as_bytes());
    if io.write_all(out).await.is_ok() {
        let _ = io.flush().await;
        let _ = io.shutdown().await;
    }
}

/// Reads a request body from the socket into its channel, as it is wanted.
struct Pump {
    sender: Option<BodySender>,
    decoder: BodyDecoder,
    /// Whether the client waits for `100 Continue`, and how much of it
    /// has been written.
    expect_continue: bool,
    continue_written: usize,
    wanted: bool,
    /// The body was read to its end.
    complete: bool,
}

enum BodyDecoder {
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl Pump {
    fn active(&self) -> bool {
        self.sender.is_some()
    }

    /// Moves the body on by one frame (or to its end). Cancel-safe: every
    /// await is a single read, write or wait that loses nothing if dropped.
    async fn step<I: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut I, buf: &mut BytesMut) {
        let Some(sender) = &self.sender else {
            return std::future::pending().await;
        };
        if !self.wanted {
            sender.wanted.notified().await;
            self.wanted = true;
        }
        if self.expect_continue {
            while self.continue_written < CONTINUE.len() {
                match io.write(&CONTINUE[self.continue_written..]).await {
                    Ok(0) | Err(_) => return self.end(Some(body::BodyError::Gone)),
                    Ok(n) => self.continue_written += n,
                }
            }
            if io.flush().await.is_err() {
                return self.end(Some(body::BodyError::Gone));
            }
            self.expect_continue = false;
        }
        let Ok(permit) = sender.frames.reserve().await else {
            // Nobody reads the body any more: it stays unread.
            self.sender = None;
            return;
        };
        // Whether the body is over (to its end, or broken).
        let over = loop {
            match self.decoder.decode(buf) {
                Ok(Decoded::Data(data)) => {
                    permit.send(Ok(data));
                    self.complete = self.decoder.is_done();
                    break self.complete;
                }
                Ok(Decoded::Done) => {
                    drop(permit);
                    self.complete = true;
                    break true;
                }
                Ok(Decoded::NeedMore) => {}
                Err(invalid) => {
                    permit.send(Err(body::BodyError::Malformed(invalid)));
                    break true;
                }
            }
            buf.reserve(READ_BUFFER);
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => {
                    permit.send(Err(body::BodyError::Gone));
                    break true;
                }
                Ok(_) => {}
            }
        };
        if over {
            self.sender = None;
        }
    }

    /// Whether the proxy still holds the body (it may read on while the
    /// response goes out).
    fn still_read(&self) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|sender| !sender.frames.is_closed())
    }

    /// Reads and drops the rest of a body nobody reads, when it is at most
    /// [`DISCARD_LIMIT`] bytes and arrives within [`DISCARD_WAIT`]; true
    /// when it reached its end (the next bytes are a request head again).
    /// A client still waiting for `100 Continue` may never send its body,
    /// so then nothing is read.
    async fn discard<I: AsyncRead + Unpin>(&mut self, io: &mut I, buf: &mut BytesMut) -> bool {
        self.sender = None;
        if self.expect_continue {
            return false;
        }
        if let BodyDecoder::Length(left) = self.decoder {
            if left > DISCARD_LIMIT {
                return false;
            }
        }
        let mut dropped: u64 = 0;
        let deadline = tokio::time::Instant::now() + DISCARD_WAIT;
        loop {
            match self.decoder.decode(buf) {
                Ok(Decoded::Data(data)) => {
                    dropped = dropped.saturating_add(data.len() as u64);
                    if self.decoder.is_done() {
                        break;
                    }
                    if dropped > DISCARD_LIMIT {
                        return false;
                    }
                    continue;
                }
                Ok(Decoded::Done) => break,
                Ok(Decoded::NeedMore) => {}
                Err(_) => return false,
            }
            buf.reserve(READ_BUFFER);
            match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return false,
            }
        }
        self.complete = true;
        true
    }

    fn end(&mut self, error: Option<body::BodyError>) {
        if let (Some(sender), Some(error)) = (self.sender.take(), error) {
            let _ = sender.frames.try_send(Err(error));
        }
    }
}

impl BodyDecoder {
    fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length(left) => *left == 0,
            BodyDecoder::Chunked(decoder) => decoder.is_done(),
        }
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, crate::http1::framing::Invalid> {
        match self {
            BodyDecoder::Length(0) => Ok(Decoded::Done),
            BodyDecoder::Length(_) if buf.is_empty() => Ok(Decoded::NeedMore),
            BodyDecoder::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            BodyDecoder::Chunked(decoder) => decoder.decode(buf),
        }
    }
}

/// One request and its response.
async fn exchange<I, H, F>(
    io: &mut I,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    mut head: request::RequestHead,
    peer: SocketAddr,
    handler: &H,
    progress: &Arc<Progress>,
) -> io::Result<Next>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<ClientBody>, SocketAddr) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    // Only a request without a body or upgrade can take the lean upstream
    // client, which forwards the head by editing it: it goes with its head
    // as received and an empty map (the proxy reads the head, and makes a
    // map of it only where it needs one). Any other request gets the map.
    let lean = head.framing == BodyFraming::Empty && !head.wants_upgrade;
    let headers = if lean {
        std::mem::take(&mut head.headers)
    } else {
        let headers = head.take_headers();
        head.raw = None;
        headers
    };
    let (body, sender, decoder) = match head.framing {
        BodyFraming::Empty => (
            body::RequestBody::empty().with_head(head.raw.take()),
            None,
            BodyDecoder::Length(0),
        ),
        BodyFraming::Length(n) => {
            let (sender, body) = body::channel(Some(n));
            (body, Some(sender), BodyDecoder::Length(n))
        }
        BodyFraming::Chunked => {
            let (sender, body) = body::channel(None);
            (
                body,
                Some(sender),
                BodyDecoder::Chunked(ChunkedDecoder::default()),
            )
        }
    };
    let mut pump = Pump {
        complete: sender.is_none(),
        sender,
        decoder,
        expect_continue: head.expect_continue && head.framing != BodyFraming::Empty,
        continue_written: 0,
        wanted: false,
    };
    let is_head = head.method == Method::HEAD;
    let version = head.version;
    let mut request = Request::new(ClientBody::Owned(body));
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = headers;
    let upgrade = head.wants_upgrade.then(|| {
        let (sender, pending) = PendingUpgrade::new();
        request.extensions_mut().insert(pending);
        sender
    });
    let in_flight = progress.start();
    let response = {
        // Boxed: the request future is large, and inline it would be part
        // of every connection's task, idle or not.
        let mut response = Box::pin(handler(request, peer));
        loop {
            tokio::select! {
                response = response.as_mut() => break response,
                () = pump.step(io, buf), if pump.active() => {}
            }
        }
    };
    let (mut parts, mut body) = response.into_parts();
    // The upstream's head as received (the usual case): only the fields
    // that must change are edited, the rest is copied as it came.
    let mut raw = body.take_raw_head();
    let mut fields = Fields {
        map: &mut parts.headers,
        raw: raw.as_mut(),
    };
    let mut body = Tracked::new(body, in_flight);
    let status = parts.status;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
    let bodyless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep_alive = head.keep_alive && !switching;
    fields.remove(&TRANSFER_ENCODING);
    let length = match fields.content_length() {
        Some(Ok(length)) => length,
        Some(Err(invalid)) => {
            tracing::debug!(
                invalid,
                "response Content-Length unreadable; closing after it"
            );
            None
        }
        None => body.size_hint().exact(),
    };
    if length.is_none() {
        fields.remove(&CONTENT_LENGTH);
    }
    let chunked = !bodyless && length.is_none() && version == Version::HTTP_11;
    if !bodyless && length.is_none() && !chunked {
        // An HTTP/1.0 client without a length: the body ends at the close.
        keep_alive = false;
    }
    if keep_alive && !pump.complete && !pump.still_read() {
        // Nobody will read the rest of the body. The connection stays only
        // if the rest is small enough to throw away now; otherwise the
        // answer says it closes, so that no client sends another request
        // on a connection about to end.
        keep_alive = pump.discard(io, buf).await;
    }
    if !switching {
        fields.remove(&CONNECTION);
        if !keep_alive {
            fields.insert(CONNECTION, HeaderValue::from_static("close"));
        } else if version == Version::HTTP_10 {
            fields.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    }
    if let (false, Some(length), false) = (bodyless, length, fields.contains(&CONTENT_LENGTH)) {
        fields.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    if chunked {
        fields.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    out.clear();
    // Room for a usual head and a small body: one allocation, not growth.
    out.reserve(1024);
    write_head(out, status, &fields);
    drop(raw);

    let mut sent: u64 = 0;
    let mut complete = true;
    if !bodyless && !body.is_end_stream() {
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = pump.step(io, buf), if pump.active() => continue,
            };
            let data = match frame {
                None => break,
                Some(Err(error)) => {
                    tracing::debug!(%peer, %error, "response body failed; closing the connection");
                    complete = false;
                    break;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers are not sent on HTTP/1.1 responses.
                    Err(_) => continue,
                },
            };
            let data = match length {
                Some(length) => {
                    let room = length.saturating_sub(sent);
                    let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
                    data.slice(..take)
                }
                None => data,
            };
            sent = sent.saturating_add(data.len() as u64);
            if data.is_empty() {
                continue;
            }
            if chunked {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            if out.len() + data.len() <= WRITE_BATCH {
                out.extend_from_slice(&data);
            } else {
                io.write_all(out).await?;
                out.clear();
                io.write_all(&data).await?;
            }
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            if body.is_end_stream() {
                break;
            }
            // More is coming, maybe not at once: what is gathered goes now.
            io.write_all(out).await?;
            io.flush().await?;
            out.clear();
        }
    }
    if chunked && complete {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    io.write_all(out).await?;
    io.flush().await?;
    out.clear();
    drop(body);
    if !complete || length.is_some_and(|length| !bodyless && sent < length) {
        return Ok(Next::Drop);
    }
    if switching {
        if let Some(upgrade) = upgrade {
            return Ok(Next::Upgrade(upgrade));
        }
    }
    if !pump.complete {
        // The rest of the body is unread: what follows is not a request.
        return Ok(Next::Close);
    }
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// A response's fields: the map the proxy built and, when the upstream's
/// head was kept as received, that head (its fields first, then the map's).
struct Fields<'a> {
    map: &'a mut http::HeaderMap,
    raw: Option<&'a mut RawHead>,
}

impl Fields<'_> {
    fn remove(&mut self, name: &HeaderName) {
        self.map.remove(name);
        if let Some(raw) = self.raw.as_deref_mut() {
            raw.remove(name.as_str());
        }
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.map.contains_key(name)
            || self
                .raw
                .as_deref()
                .is_some_and(|raw| raw.contains(name.as_str()))
    }

    /// Sets `name` (after [`Fields::remove`], where it could be there).
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        match self.raw.as_deref_mut() {
            Some(raw) => raw.append(name.as_str().as_bytes(), value.as_bytes()),
            None => {
                self.map.insert(name, value);
            }
        }
    }

    /// The body length the Content-Length fields give, if there are any.
    fn content_length(&self) -> Option<Result<Option<u64>, crate::http1::framing::Invalid>> {
        if self.map.contains_key(CONTENT_LENGTH) {
            return Some(crate::http1::framing::content_length(self.map));
        }
        let value = self.raw.as_deref()?.get("content-length")?;
        Some(crate::http1::framing::content_length_value(value, None))
    }
}

fn write_head(out: &mut Vec<u8>, status: StatusCode, fields: &Fields<'_>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // As hyper's server does: the proxy's own answers get one too.
    if !fields.contains(&DATE) {
        out.extend_from_slice(b"date: ");
        crate::http1::date::append_now(out);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(raw) = fields.raw.as_deref() {
        raw.write_fields(out);
    }
    for (name, value) in fields.map.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
