//! The response body sent to clients, and what happens when an upstream
//! response body ends: the in-flight count drops, the connection goes back
//! to the pool (only if the body was read to the end), and the access-log
//! event is written with the bytes sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Sleep;

use crate::access_log::Record;
use crate::http1::body::{Io, PendingUpgrade};
use crate::http1::head::RawHead;
use crate::registry::InFlightGuard;
use crate::stats_window::WindowCounters;
use crate::upstream::{BoxError, Pool, ResponseBody, Sender};

/// A response body: streamed from an upstream, or a message of our own.
// The upstream variant is what nearly every response is: boxing it to
// even out the sizes would cost every response an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from an upstream.
    Upstream(UpstreamBody),
    /// Written by the proxy (errors, admin API).
    Message(Full<Bytes>),
}

impl ProxyBody {
    /// A body of our own.
    pub fn message(text: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Message(Full::new(text.into()))
    }

    /// The upstream's response head as received, when the lean client
    /// kept it that way for the owned server: the response's `HeaderMap`
    /// then holds only what the proxy added.
    pub fn raw_head_mut(&mut self) -> Option<&mut RawHead> {
        match self {
            ProxyBody::Upstream(body) => body.inner.raw_head_mut(),
            ProxyBody::Message(_) => None,
        }
    }

    /// Takes the head as received (see [`ProxyBody::raw_head_mut`]).
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        match self {
            ProxyBody::Upstream(body) => body.inner.take_raw_head(),
            ProxyBody::Message(_) => None,
        }
    }
}

/// An upstream response body with its bookkeeping. An upstream that goes
/// silent in the middle of a body for longer than `read_timeout` fails it,
/// so a stalled instance cannot hold a client forever.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: ResponseBody,
    /// A frame read before the head was forwarded (see [`peek`]).
    first: Option<Peeked>,
    completion: Option<Completion>,
    read_timeout: Duration,
    /// Armed when a poll finds no bytes; reset when bytes come.
    silence: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

/// A frame read before the head was forwarded; trailers (rare there) are
/// boxed to keep the body small.
#[derive(Debug)]
pub(crate) enum Peeked {
    Data(Bytes),
    Trailers(Box<http::HeaderMap>),
}

impl Peeked {
    fn into_frame(self) -> Frame<Bytes> {
        match self {
            Peeked::Data(data) => Frame::data(data),
            Peeked::Trailers(trailers) => Frame::trailers(*trailers),
        }
    }
}

/// Done once, when the body ends or is dropped.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) _in_flight: InFlightGuard,
    /// The request's place under the service's `max_requests`.
    pub(crate) _slot: Option<crate::limits::breaker::RequestSlot>,
    pub(crate) connection: Option<(Sender, Arc<Pool>)>,
    pub(crate) log: Option<Box<Record>>,
    /// The service's duration histogram and window series, when the
    /// request started and the status it answered.
    pub(crate) duration: Option<Timing>,
    /// The request's server span, when it is recorded.
    pub(crate) trace: Option<crate::trace::ServerSpan>,
    pub(crate) bytes: u64,
}

/// What the end of a response records about its request.
#[derive(Debug)]
pub(crate) struct Timing {
    pub(crate) histogram: Histogram,
    pub(crate) window: Arc<WindowCounters>,
    pub(crate) started: Instant,
    pub(crate) status: u16,
}

impl Completion {
    pub(crate) fn finish(mut self, complete: bool) {
        if complete {
            if let Some((sender, pool)) = self.connection.take() {
                pool.checkin(sender);
            }
        }
        if let Some(timing) = self.duration.take() {
            let elapsed = timing.started.elapsed();
            timing.histogram.observe(elapsed.as_secs_f64());
            timing.window.record(elapsed, timing.status);
        }
        if let Some(log) = self.log.take() {
            log.emit(self.bytes, complete);
        }
        if let Some(span) = self.trace.take() {
            span.finish(complete);
        }
    }
}

/// Carries bytes both ways between the client and the upstream once both
/// have switched protocols (101). The request counts as in flight until the
/// tunnel closes; the access-log event is written then, with the bytes
/// carried.
/// The client side of an upgrade, from whichever server read the request.
pub(crate) enum ClientUpgrade {
    Hyper(OnUpgrade),
    Owned(PendingUpgrade),
}

impl ClientUpgrade {
    /// Takes the upgrade a request carries.
    pub(crate) fn of<B>(request: &mut http::Request<B>) -> ClientUpgrade {
        match request.extensions_mut().remove::<PendingUpgrade>() {
            Some(pending) => ClientUpgrade::Owned(pending),
            None => ClientUpgrade::Hyper(hyper::upgrade::on(request)),
        }
    }

    async fn connection(self) -> Result<Box<dyn Io>, String> {
        match self {
            ClientUpgrade::Hyper(on) => match on.await {
                Ok(upgraded) => Ok(Box::new(TokioIo::new(upgraded))),
                Err(error) => Err(error.to_string()),
            },
            ClientUpgrade::Owned(pending) => match pending.connection().await {
                Ok(upgraded) => Ok(Box::new(upgraded)),
                Err(error) => Err(error.to_string()),
            },
        }
    }
}

pub(crate) async fn tunnel(client: ClientUpgrade, upstream: OnUpgrade, mut completion: Completion) {
    let carried = async {
        let (mut client, upstream) = tokio::try_join!(client.connection(), async {
            upstream.await.map_err(|e| e.to_string())
        })?;
        let mut upstream = TokioIo::new(upstream);
        tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match carried {
        Ok((up, down)) => {
            completion.bytes = up + down;
            completion.finish(true);
        }
        Err(error) => {
            tracing::debug!(%error, "upgraded connection ended with an error");
            completion.finish(false);
        }
    }
}

impl UpstreamBody {
    pub(crate) fn new(
        inner: ResponseBody,
        first: Option<Peeked>,
        completion: Completion,
        read_timeout: Duration,
    ) -> UpstreamBody {
        UpstreamBody {
            inner,
            first,
            completion: Some(completion),
            read_timeout,
            silence: None,
            waiting: false,
        }
    }

    /// Whether the upstream has now been silent for too long. Only a poll
    /// that found nothing pays for the timer.
    fn silent_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let now = tokio::time::Instant::now();
            // (A year stands in for "never" where the sum would overflow.)
            let deadline = now
                .checked_add(self.read_timeout)
                .unwrap_or(now + Duration::from_secs(365 * 86_400));
            match self.silence.as_mut() {
                Some(silence) => silence.as_mut().reset(deadline),
                None => self.silence = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.silence
            .as_mut()
            .is_some_and(|silence| silence.as_mut().poll(cx).is_ready())
    }

    fn finish(&mut self, complete: bool) {
        if let Some(completion) = self.completion.take() {
            completion.finish(complete);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Dropped before the end was seen: the client went away, unless the
        // body was empty and never polled.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match self.first.take() {
            Some(peeked) => Poll::Ready(Some(Ok(peeked.into_frame()))),
            None => Pin::new(&mut self.inner).poll_frame(cx),
        };
        if polled.is_pending() {
            if self.silent_too_long(cx) {
                self.finish(false);
                let error = format!(
                    "the upstream sent nothing for {:?} in the middle of the body",
                    self.read_timeout
                );
                tracing::warn!(%error, "response body cut short");
                return Poll::Ready(Some(Err(error.into())));
            }
            return Poll::Pending;
        }
        self.waiting = false;
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(c) = self.completion.as_mut() {
                    c.bytes += len;
                }
                // hyper stops polling a body that says it has ended, so the
                // end must be noticed here, not on the next poll.
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let Some(Peeked::Data(first)) = &self.first else {
            return self.inner.size_hint();
        };
        // The peeked bytes are still to be sent.
        let inner = self.inner.size_hint();
        let len = first.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(len));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(len));
        }
        hint
    }
}

/// The body's first frame if it is there already, without waiting: a
/// body that fails at once (its first chunk line broken, the connection
/// closed right after the head) is an error while the proxy can still
/// answer 502 instead of forwarding the head. `Ok(None)`: nothing yet, or
/// the body ended.
pub(crate) async fn peek(body: &mut ResponseBody) -> Result<Option<Peeked>, BoxError> {
    if body.is_end_stream() {
        return Ok(None);
    }
    match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
        Poll::Ready(Some(Ok(frame))) => Ok(match frame.into_data() {
            Ok(data) => Some(Peeked::Data(data)),
            Err(frame) => frame
                .into_trailers()
                .ok()
                .map(|t| Peeked::Trailers(Box::new(t))),
        }),
        Poll::Ready(Some(Err(error))) => Err(error),
        Poll::Ready(None) | Poll::Pending => Ok(None),
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            ProxyBody::Message(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) => body.is_end_stream(),
            ProxyBody::Message(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => body.size_hint(),
            ProxyBody::Message(full) => full.size_hint(),
        }
    }
}
