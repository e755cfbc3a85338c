//! A copy of a client's request body, taken as the body streams to the
//! upstream (for a mirror): the upstream gets every byte as soon as it
//! would without the copy; the copy is handed over once the body has been
//! read to its end, and only if it fits the limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::ClientBody;

/// The client's body with a copy being taken.
#[derive(Debug)]
pub struct BodyCopy {
    inner: ClientBody,
    copy: BytesMut,
    limit: u64,
    /// Taken when the copy is handed over or given up (too long, failed).
    done: Option<oneshot::Sender<Bytes>>,
}

impl BodyCopy {
    /// `inner`, copied as it is read: the receiver gets the whole body if
    /// it is read to its end within `limit` bytes, and is closed
    /// otherwise (too long, a read failed, the body was dropped early).
    pub fn wrap(inner: ClientBody, limit: u64) -> (ClientBody, oneshot::Receiver<Bytes>) {
        let (done, copied) = oneshot::channel();
        let body = BodyCopy {
            inner,
            copy: BytesMut::new(),
            limit,
            done: Some(done),
        };
        (ClientBody::Copied(Box::new(body)), copied)
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(std::mem::take(&mut self.copy).freeze());
        }
    }

    fn give_up(&mut self) {
        self.done = None;
        self.copy = BytesMut::new();
    }
}

impl Body for BodyCopy {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.give_up(),
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(_)) = (frame.data_ref(), &this.done) {
                    let length = (this.copy.len() as u64).saturating_add(data.len() as u64);
                    if length > this.limit {
                        this.give_up();
                    } else {
                        this.copy.extend_from_slice(data);
                    }
                }
                // Readers stop at a known end without asking again.
                if this.inner.is_end_stream() {
                    this.finish();
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
