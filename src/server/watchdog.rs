//! What a client connection is doing, for the limits that close it: has a
//! first request head arrived (`header_read_timeout`), is a request in
//! flight (idle shedding), and is a response waiting on a client that does
//! not take it (`send_timeout`). Also the process-wide signal to shed idle
//! connections when descriptors run out.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;

/// Counters one connection shares with its requests' response bodies.
/// Atomics, not a clock: nothing on the request path reads the time.
#[derive(Default)]
pub(super) struct Progress {
    /// Requests whose head arrived.
    started: AtomicU64,
    /// Requests whose response body is not done yet.
    in_flight: AtomicUsize,
    /// Response bodies with data hyper has not come back for yet: it asked
    /// for nothing since the last frame (or since the head), because the
    /// client is not taking what was sent.
    waiting: AtomicUsize,
    /// Polls of any response body, to see whether bodies move at all.
    polls: AtomicU64,
}

impl Progress {
    /// Notes a request head that arrived; the guard goes with its response.
    pub(super) fn start(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Whether any request head has arrived.
    pub(super) fn any_request(&self) -> bool {
        self.started.load(Ordering::Relaxed) > 0
    }

    /// Whether no request is being served.
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Returns once a response has waited on the client for a whole
    /// `timeout` (so between one and two timeouts after it stalled).
    pub(super) async fn stalled_for(&self, timeout: Duration) {
        let mut seen = None;
        loop {
            tokio::time::sleep(timeout).await;
            let polls = self.polls.load(Ordering::Relaxed);
            let waiting = self.waiting.load(Ordering::Relaxed) > 0;
            if waiting && seen == Some(polls) {
                return;
            }
            seen = waiting.then_some(polls);
        }
    }
}

/// A request being served; dropped with its response body.
pub(super) struct InFlight(Arc<Progress>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that reports to its connection's [`Progress`].
pub(super) struct Tracked<B> {
    inner: B,
    progress: InFlight,
    /// Counted in `waiting`: data is ready and hyper has not polled since.
    waiting: bool,
}

impl<B> Tracked<B> {
    /// Wraps a response body; until hyper first polls it, it waits.
    pub(super) fn new(inner: B, progress: InFlight) -> Tracked<B> {
        progress.0.waiting.fetch_add(1, Ordering::Relaxed);
        Tracked {
            inner,
            progress,
            waiting: true,
        }
    }

    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            let counter = &self.progress.0.waiting;
            if waiting {
                counter.fetch_add(1, Ordering::Relaxed);
            } else {
                counter.fetch_sub(1, Ordering::Relaxed);
            }
            self.waiting = waiting;
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.set_waiting(false);
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.progress.0.polls.fetch_add(1, Ordering::Relaxed);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // After a frame, the next move is hyper's (and so the client's);
        // while pending or done, it is not.
        let waiting = matches!(polled, Poll::Ready(Some(Ok(_))));
        self.set_waiting(waiting);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The process-wide request to close idle keep-alive connections, raised
/// when an accept fails for lack of descriptors: each idle connection gives
/// back one, and its client simply reconnects when it needs to.
pub(super) struct Pressure {
    shed: watch::Sender<u64>,
}

impl Pressure {
    pub(super) fn new() -> Arc<Pressure> {
        Arc::new(Pressure {
            shed: watch::Sender::new(0),
        })
    }

    /// A receiver that changes each time idle connections should go.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.shed.subscribe()
    }

    /// Asks every idle connection to close.
    pub(super) fn shed_idle(&self) {
        self.shed
            .send_modify(|round| *round = round.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn a_body_waits_until_polled_and_the_request_ends_with_it() {
        let progress = Arc::new(Progress::default());
        assert!(!progress.any_request() && progress.is_idle());
        let mut body = Tracked::new(Full::new(Bytes::from_static(b"x")), progress.start());
        assert!(progress.any_request() && !progress.is_idle());
        assert_eq!(progress.waiting.load(Ordering::Relaxed), 1);
        assert!(body.frame().await.is_some());
        // A frame handed out: hyper's move again.
        assert_eq!(progress.waiting.load(Ordering::Relaxed), 1);
        assert!(body.frame().await.is_none());
        assert_eq!(progress.waiting.load(Ordering::Relaxed), 0);
        drop(body);
        assert!(progress.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_polled_for_a_whole_timeout_is_stalled() {
        let progress = Arc::new(Progress::default());
        let body = Tracked::new(Full::new(Bytes::from_static(b"x")), progress.start());
        let started = tokio::time::Instant::now();
        progress.stalled_for(Duration::from_secs(1)).await;
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert!(started.elapsed() <= Duration::from_secs(2));
        drop(body);
        // Nothing waiting: never stalled.
        let never = tokio::time::timeout(
            Duration::from_secs(10),
            progress.stalled_for(Duration::from_secs(1)),
        );
        assert!(never.await.is_err());
    }
}
