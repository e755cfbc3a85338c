//! The response body sent to clients, and what happens when an upstream
//! response body ends: the in-flight count drops, the connection goes back
//! to the pool (only if the body was read to the end), and the access-log
//! event is written with the bytes sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::histogram::Histogram;

use super::access_log::AccessLog;
use crate::registry::InFlightGuard;
use crate::upstream::{BoxError, Pool, ResponseBody, Sender};

/// A response body: streamed from an upstream, or a message of our own.
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
}

/// An upstream response body with its bookkeeping.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: ResponseBody,
    completion: Option<Completion>,
}

/// Done once, when the body ends or is dropped.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) _in_flight: InFlightGuard,
    pub(crate) connection: Option<(Sender, Arc<Pool>)>,
    pub(crate) log: Option<Box<AccessLog>>,
    /// The service's duration histogram and when the request started.
    pub(crate) duration: Option<(Histogram, Instant)>,
    pub(crate) bytes: u64,
}

impl Completion {
    pub(crate) fn finish(mut self, complete: bool) {
        if complete {
            if let Some((sender, pool)) = self.connection.take() {
                pool.checkin(sender);
            }
        }
        if let Some((histogram, started)) = self.duration.take() {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        if let Some(log) = self.log.take() {
            log.emit(self.bytes, complete);
        }
    }
}

/// Carries bytes both ways between the client and the upstream once both
/// have switched protocols (101). The request counts as in flight until the
/// tunnel closes; the access-log event is written then, with the bytes
/// carried.
pub(crate) async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, mut completion: Completion) {
    let carried = async {
        let (client, upstream) = tokio::try_join!(client, upstream).map_err(|e| e.to_string())?;
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
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
    pub(crate) fn new(inner: ResponseBody, completion: Completion) -> UpstreamBody {
        UpstreamBody {
            inner,
            completion: Some(completion),
        }
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
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
