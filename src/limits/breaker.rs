//! A service's circuit breaker (`circuit_breaker`): a ceiling on the
//! requests in progress, with an optional bounded queue in front of it
//! (HAProxy's `maxconn` + `queue`), and a ceiling on retries in progress.
//!
//! Requests over `max_requests` are answered 503 at once (Envoy's
//! overflow), or, with a queue, wait in it first-come first-served for up
//! to `timeout`. The counters live outside the snapshot, so a reload that
//! keeps the settings keeps them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::CircuitBreakerConfig;
use crate::upstream::{ServiceConnections, ServiceOverflow};

impl From<ServiceOverflow> for Overflow {
    fn from(which: ServiceOverflow) -> Overflow {
        match which {
            ServiceOverflow::MaxConnections => Overflow::MaxConnections,
            ServiceOverflow::MaxPending => Overflow::MaxPending,
        }
    }
}

/// Which limit refused a request (the `x-switchyard-overflow` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_requests` were in progress (and the queue, if any, was full).
    MaxRequests,
    /// The request waited in the queue for `queue.timeout`.
    QueueTimeout,
    /// `max_retries` retries were in progress.
    MaxRetries,
    /// `max_connections` upstream connections stayed open (none idle)
    /// for the connect timeout.
    MaxConnections,
    /// `max_pending` requests were waiting for a connection already.
    MaxPending,
}

impl Overflow {
    /// The header and metric value.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::MaxRequests => "max_requests",
            Overflow::QueueTimeout => "queue_timeout",
            Overflow::MaxRetries => "max_retries",
            Overflow::MaxConnections => "max_connections",
            Overflow::MaxPending => "max_pending",
        }
    }
}

/// The breaker of one service.
#[derive(Debug)]
pub struct Breaker {
    config: CircuitBreakerConfig,
    requests: Arc<Semaphore>,
    queued: AtomicU32,
    retries: AtomicU32,
    overflow: [Counter; 3],
    connections: Arc<ServiceConnections>,
}

/// A place among the requests in progress, held until the request is done.
#[derive(Debug)]
pub struct RequestSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// A place among the retries in progress.
#[derive(Debug)]
pub struct RetrySlot(Arc<Breaker>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place in the queue, given back when dropped.
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    /// A breaker with `config`; `overflow` makes the counter of each
    /// [`Overflow`].
    pub fn new(
        config: CircuitBreakerConfig,
        pending: Gauge,
        overflow: impl Fn(&'static str) -> Counter,
    ) -> Breaker {
        Breaker {
            config,
            requests: Arc::new(Semaphore::new(config.max_requests.get() as usize)),
            queued: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            connections: Arc::new(ServiceConnections::new(
                config.max_connections.get(),
                config.max_pending,
                pending,
                &overflow,
            )),
            overflow: [
                Overflow::MaxRequests,
                Overflow::QueueTimeout,
                Overflow::MaxRetries,
            ]
            .map(|o| overflow(o.as_str())),
        }
    }

    /// The service-wide connection and pending-request counters, shared
    /// by the pools of the service's instances.
    pub fn connections(&self) -> &Arc<ServiceConnections> {
        &self.connections
    }

    /// The settings this was built for.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    /// Requests in progress now.
    pub fn in_progress(&self) -> usize {
        (self.config.max_requests.get() as usize).saturating_sub(self.requests.available_permits())
    }

    /// A place for one request: at once, after waiting in the queue, or
    /// the overflow that refused it (counted).
    pub async fn admit(&self) -> Result<RequestSlot, Overflow> {
        let result = self.try_admit().await;
        if let Err(overflow) = result {
            self.overflow[overflow as usize].inc();
        }
        result
    }

    async fn try_admit(&self) -> Result<RequestSlot, Overflow> {
        if let Ok(permit) = Arc::clone(&self.requests).try_acquire_owned() {
            return Ok(RequestSlot(permit));
        }
        let Some(queue) = self.config.queue else {
            return Err(Overflow::MaxRequests);
        };
        // Counted before the check, so two requests cannot both take the
        // last place.
        // The place is given back when dropped, also when the wait is
        // (the client went away).
        let place = Queued(&self.queued);
        if self.queued.fetch_add(1, Ordering::AcqRel) >= queue.size {
            return Err(Overflow::MaxRequests);
        }
        let waited =
            tokio::time::timeout(queue.timeout, Arc::clone(&self.requests).acquire_owned()).await;
        drop(place);
        match waited {
            Ok(Ok(permit)) => Ok(RequestSlot(permit)),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(Overflow::QueueTimeout),
        }
    }

    /// A place for one retry under `max_retries`, if set (`Some(None)`:
    /// no ceiling); `None` when the ceiling is reached (counted).
    pub fn retry(self: &Arc<Self>) -> Option<Option<RetrySlot>> {
        let Some(max) = self.config.max_retries else {
            return Some(None);
        };
        if self.retries.fetch_add(1, Ordering::AcqRel) >= max {
            self.retries.fetch_sub(1, Ordering::AcqRel);
            self.overflow[Overflow::MaxRetries as usize].inc();
            return None;
        }
        Some(Some(RetrySlot(Arc::clone(self))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;
    use crate::config::QueueConfig;

    fn breaker(max_requests: u32, queue: Option<QueueConfig>) -> Breaker {
        Breaker::new(
            CircuitBreakerConfig {
                max_requests: NonZeroU32::new(max_requests).unwrap(),
                max_retries: Some(1),
                queue,
                ..CircuitBreakerConfig::default()
            },
            Gauge::default(),
            |_| Counter::default(),
        )
    }

    #[tokio::test]
    async fn over_max_requests_is_refused_until_one_finishes() {
        let b = breaker(2, None);
        let first = b.admit().await.unwrap();
        let _second = b.admit().await.unwrap();
        assert_eq!(b.admit().await.unwrap_err(), Overflow::MaxRequests);
        assert_eq!(b.overflow[0].get(), 1);
        drop(first);
        assert!(b.admit().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_waits_for_a_place_then_times_out() {
        let queue = QueueConfig {
            size: 1,
            timeout: Duration::from_secs(2),
        };
        let b = Arc::new(breaker(1, Some(queue)));
        let first = b.admit().await.unwrap();
        let waiter = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.admit().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        // The queue (size 1) is full.
        assert_eq!(b.admit().await.unwrap_err(), Overflow::MaxRequests);
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // Nobody lets go now: the wait runs out.
        let _held = b.admit().await.unwrap();
        assert_eq!(b.admit().await.unwrap_err(), Overflow::QueueTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_given_up_leaves_the_queue() {
        let queue = QueueConfig {
            size: 1,
            timeout: Duration::from_secs(60),
        };
        let b = breaker(1, Some(queue));
        let _held = b.admit().await.unwrap();
        // The client goes away while waiting: its place is freed.
        let gone = tokio::time::timeout(Duration::from_secs(1), b.admit()).await;
        assert!(gone.is_err());
        assert_eq!(b.queued.load(Ordering::Acquire), 0);
    }

    #[test]
    fn retries_have_their_own_ceiling() {
        let b = Arc::new(breaker(10, None));
        let slot = b.retry().unwrap();
        assert!(slot.is_some());
        assert!(b.retry().is_none());
        drop(slot);
        assert!(b.retry().unwrap().is_some());
    }
}
