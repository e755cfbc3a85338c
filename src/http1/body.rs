//! The hand-over between a connection loop that reads a request body from
//! the socket and the code that consumes it as an [`http_body::Body`], and
//! the connection itself once a protocol switch (101) hands it over.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, Notify};

use super::head::RawHead;

/// Why a request body ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The client broke the body's framing.
    #[error("malformed request body: {0}")]
    Malformed(&'static str),
    /// The client closed or reset the connection before the end.
    #[error("the client went away before the end of its body")]
    Gone,
}

/// A request body read by the owned server's connection loop.
#[derive(Debug)]
pub struct RequestBody {
    /// `None` for a request without a body.
    frames: Option<mpsc::Receiver<Result<Bytes, BodyError>>>,
    /// Bytes still to come, for a body with a Content-Length.
    remaining: Option<u64>,
    /// Told at the first poll: the loop then sends `100 Continue` to a
    /// client that waits for it, and starts reading.
    wanted: Option<Arc<Notify>>,
    ended: bool,
    /// The request head as received, for the lean upstream client to
    /// forward by editing it (see `proxy`).
    head: Option<RawHead>,
}

/// The connection loop's end of a [`RequestBody`].
#[derive(Debug)]
pub struct BodySender {
    /// Gives room for one frame at a time, so a body is read from the
    /// socket only as fast as it is consumed.
    pub frames: mpsc::Sender<Result<Bytes, BodyError>>,
    /// Notified when the body is first polled.
    pub wanted: Arc<Notify>,
}

/// A body channel: `length` is the Content-Length, `None` for chunked.
pub fn channel(length: Option<u64>) -> (BodySender, RequestBody) {
    let (frames, receiver) = mpsc::channel(1);
    let wanted = Arc::new(Notify::new());
    (
        BodySender {
            frames,
            wanted: Arc::clone(&wanted),
        },
        RequestBody {
            frames: Some(receiver),
            remaining: length,
            wanted: Some(wanted),
            ended: false,
            head: None,
        },
    )
}

impl RequestBody {
    /// The body of a request that has none.
    pub fn empty() -> RequestBody {
        RequestBody {
            frames: None,
            remaining: Some(0),
            wanted: None,
            ended: true,
            head: None,
        }
    }

    /// Carries the request's head as received.
    pub fn with_head(mut self, head: Option<RawHead>) -> RequestBody {
        self.head = head;
        self
    }

    /// The request's head as received, if it came with one.
    pub fn head(&self) -> Option<&RawHead> {
        self.head.as_ref()
    }

    /// Takes the request's head as received, if it came with one.
    pub fn take_head(&mut self) -> Option<RawHead> {
        self.head.take()
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(wanted) = self.wanted.take() {
            wanted.notify_one();
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let Some(frames) = self.frames.as_mut() else {
            return Poll::Ready(None);
        };
        match frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                if let Some(remaining) = self.remaining.as_mut() {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                    self.ended = *remaining == 0;
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(error))) => {
                self.ended = true;
                Poll::Ready(Some(Err(error)))
            }
            // The loop closes the channel after the last chunk; before the
            // end of a sized body, closing means the client went away.
            Poll::Ready(None) => {
                self.ended = true;
                match self.remaining {
                    Some(n) if n > 0 => Poll::Ready(Some(Err(BodyError::Gone))),
                    _ => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A connection's I/O, boxed for the tunnel.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client connection after a protocol switch: the bytes the loop had
/// read past the request head first, then the socket.
pub struct Upgraded {
    io: Box<dyn Io>,
    read_ahead: Bytes,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("read_ahead", &self.read_ahead.len())
            .finish()
    }
}

impl Upgraded {
    /// The connection `io`, with `read_ahead` to be read first.
    pub fn new(io: Box<dyn Io>, read_ahead: Bytes) -> Upgraded {
        Upgraded { io, read_ahead }
    }
}

/// Where a request that asked for a protocol switch gets its connection,
/// once the 101 has been written; the sender is dropped unanswered if
/// there is none. Carried in the request's extensions (hence `Clone`; only
/// the one that takes it gets the connection).
#[derive(Debug, Clone)]
pub struct PendingUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    /// A pending upgrade and the loop's end of it.
    pub fn new() -> (oneshot::Sender<Upgraded>, PendingUpgrade) {
        let (sender, receiver) = oneshot::channel();
        let pending = PendingUpgrade(Arc::new(std::sync::Mutex::new(Some(receiver))));
        (sender, pending)
    }

    /// Waits for the connection; an error when there will be none.
    pub async fn connection(self) -> Result<Upgraded, &'static str> {
        let receiver = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match receiver {
            Some(receiver) => receiver
                .await
                .map_err(|_| "the client connection was not handed over"),
            None => Err("the upgrade was already taken"),
        }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.remaining());
            buf.put_slice(&self.read_ahead[..n]);
            self.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
