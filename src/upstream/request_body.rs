//! The client's request body on its way to an upstream, and a record of
//! how reading it from the client went.
//!
//! When a client stops sending its body (closes the connection, breaks the
//! chunked framing, or uploads slower than the request timeout), the
//! upstream client only reports that the exchange failed. The record lets
//! the proxy tell that failure apart from an instance's, so a client can
//! never get an instance ejected or a 502 logged for its own fault.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::http1::body::{BodyError, RequestBody as OwnedBody};

/// A client's request body, from whichever server read the request.
#[derive(Debug)]
pub enum ClientBody {
    /// From hyper's server (HTTP/2, or HTTP/1.1 when it serves the listener).
    Hyper(Incoming),
    /// From the owned HTTP/1.1 server.
    Owned(OwnedBody),
    /// Either, with a copy being taken for a mirror.
    Copied(Box<super::body_copy::BodyCopy>),
    /// Read whole already (to be sent again on a retry): the data, then
    /// the trailers, each given once.
    Buffered(Option<Bytes>, Option<Box<http::HeaderMap>>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(Into::into))),
            ClientBody::Owned(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(Into::into))),
            ClientBody::Copied(body) => Pin::new(body.as_mut()).poll_frame(cx),
            ClientBody::Buffered(data, trailers) => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|t| Frame::trailers(*t)))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Owned(body) => body.is_end_stream(),
            ClientBody::Copied(body) => body.is_end_stream(),
            ClientBody::Buffered(data, trailers) => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Owned(body) => body.size_hint(),
            ClientBody::Copied(body) => body.size_hint(),
            ClientBody::Buffered(data, _) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// How reading the client's body ended, if it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyState {
    /// Not started, or the last read got bytes: if it stalls now, the
    /// upstream is not taking them.
    Reading,
    /// The last read found nothing yet: the proxy waits for the client.
    WaitingForClient,
    /// Read to the end.
    Ended,
    /// The client broke the body's framing (bad chunk line, bad length).
    Malformed,
    /// The client went away (closed or reset) before the end.
    Gone,
}

const READING: u8 = 0;
const WAITING: u8 = 1;
const ENDED: u8 = 2;
const MALFORMED: u8 = 3;
const GONE: u8 = 4;

/// Shared between the body (which sets it) and the request path (which
/// reads it after the upstream client reported a failure).
#[derive(Debug, Default)]
pub struct ClientBodyWatch(AtomicU8);

impl ClientBodyWatch {
    /// How reading the body has gone so far.
    pub fn state(&self) -> ClientBodyState {
        match self.0.load(Ordering::Acquire) {
            WAITING => ClientBodyState::WaitingForClient,
            ENDED => ClientBodyState::Ended,
            MALFORMED => ClientBodyState::Malformed,
            GONE => ClientBodyState::Gone,
            _ => ClientBodyState::Reading,
        }
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Release);
    }
}

/// The body sent upstream: the client's, streamed through.
#[derive(Debug)]
pub struct RequestBody {
    inner: ClientBody,
    /// Only requests that have a body pay for the record.
    watch: Option<Arc<ClientBodyWatch>>,
}

impl RequestBody {
    /// Wraps the client's body; the second value reports how reading it
    /// went (`None` when the body is empty: it cannot fail).
    pub fn new(inner: ClientBody) -> (RequestBody, Option<Arc<ClientBodyWatch>>) {
        let watch = (!inner.is_end_stream()).then(Arc::default);
        let body = RequestBody {
            inner,
            watch: watch.clone(),
        };
        (body, watch)
    }

    /// A body read whole before, sent as it was read; nothing of it can
    /// fail on the client's side any more.
    pub fn buffered(data: Bytes, trailers: Option<http::HeaderMap>) -> RequestBody {
        RequestBody {
            inner: ClientBody::Buffered((!data.is_empty()).then_some(data), trailers.map(Box::new)),
            watch: None,
        }
    }
}

/// Whether a failed read of the client's body was the client breaking the
/// framing (hyper reports decoding errors as `InvalidData`/`InvalidInput`
/// I/O errors, the owned server as [`BodyError::Malformed`]), rather than
/// the client going away.
fn is_malformed(error: &super::BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(cause) = source {
        if let Some(owned) = cause.downcast_ref::<BodyError>() {
            return matches!(owned, BodyError::Malformed(_));
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        source = cause.source();
    }
    false
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(watch) = &self.watch {
            match &polled {
                Poll::Pending => watch.set(WAITING),
                Poll::Ready(None) => watch.set(ENDED),
                Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => watch.set(ENDED),
                Poll::Ready(Some(Ok(_))) => watch.set(READING),
                Poll::Ready(Some(Err(error))) => {
                    watch.set(if is_malformed(error) { MALFORMED } else { GONE })
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
