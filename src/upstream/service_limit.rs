//! A service-wide ceiling on upstream connections (Envoy's circuit-breaker
//! `max_connections`) and on requests waiting for one (`max_pending`).
//!
//! Every pool of the service's instances shares one [`ServiceConnections`]:
//! a connection holds one of its permits for as long as it is open, next to
//! its instance's own (`max_connections_per_instance`). A request that finds
//! no idle connection and may not open one waits as *pending*; at most
//! `max_pending` wait at once, more are refused at once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Pool;

/// Which service-wide limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceOverflow {
    /// No connection came free within the connect timeout.
    MaxConnections,
    /// `max_pending` requests were waiting already.
    MaxPending,
}

impl ServiceOverflow {
    /// The `x-switchyard-overflow` and metric value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceOverflow::MaxConnections => "max_connections",
            ServiceOverflow::MaxPending => "max_pending",
        }
    }
}

/// The connection and pending-request counters of one service, shared by
/// the pools of all its instances.
#[derive(Debug)]
pub struct ServiceConnections {
    max_connections: u32,
    max_pending: u32,
    connections: Arc<Semaphore>,
    pending: AtomicU32,
    /// The exported copy of `pending`.
    pending_gauge: Gauge,
    /// The pools holding connections under this limit, so that a request
    /// waiting for room can close an idle connection of another instance.
    pools: Mutex<Vec<Weak<Pool>>>,
    overflow: [Counter; 2],
}

/// A place among the pending requests, given back when dropped.
pub(super) struct Pending<'a>(&'a ServiceConnections);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.pending_gauge.dec();
    }
}

impl ServiceConnections {
    /// Counters for `max_connections` and `max_pending`; `overflow` makes
    /// the refusal counter of each [`ServiceOverflow`].
    pub fn new(
        max_connections: u32,
        max_pending: u32,
        pending_gauge: Gauge,
        overflow: impl Fn(&'static str) -> Counter,
    ) -> ServiceConnections {
        ServiceConnections {
            max_connections,
            max_pending,
            connections: Arc::new(Semaphore::new(max_connections as usize)),
            pending: AtomicU32::new(0),
            pending_gauge,
            pools: Mutex::new(Vec::new()),
            overflow: [ServiceOverflow::MaxConnections, ServiceOverflow::MaxPending]
                .map(|o| overflow(o.as_str())),
        }
    }

    /// Upstream connections open now under this limit.
    pub fn open(&self) -> usize {
        (self.max_connections as usize).saturating_sub(self.connections.available_permits())
    }

    /// Requests waiting for a connection now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// A permit for one more connection, if one is free now.
    pub(super) fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }

    /// Waits for a permit for one more connection.
    pub(super) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed.
        Arc::clone(&self.connections).acquire_owned().await.ok()
    }

    /// A place among the pending requests, or the refusal (counted).
    pub(super) fn enter_pending(&self) -> Result<Pending<'_>, ServiceOverflow> {
        // Counted before the check, so two requests cannot both take the
        // last place.
        self.pending_gauge.inc();
        let place = Pending(self);
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            drop(place);
            return Err(self.refused(ServiceOverflow::MaxPending));
        }
        Ok(place)
    }

    /// Counts a refusal and returns it.
    pub(super) fn refused(&self, which: ServiceOverflow) -> ServiceOverflow {
        self.overflow[which as usize].inc();
        which
    }

    /// Remembers `pool` as one holding connections under this limit.
    pub(super) fn track(&self, pool: &Arc<Pool>) {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|p| p.strong_count() > 0);
        if !pools
            .iter()
            .any(|p| std::ptr::eq(p.as_ptr(), Arc::as_ptr(pool)))
        {
            pools.push(Arc::downgrade(pool));
        }
    }

    /// Closes one idle connection of any of the service's pools, so its
    /// permit goes to a request that needs a new connection. Whether one
    /// was found.
    pub(super) fn close_one_idle(&self) -> bool {
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        pools.iter().any(|pool| pool.close_unusable_idle())
    }
}

/// The service limit in [`super::Settings`]: compared by identity, so a
/// pool is reconfigured when its service gets a new breaker.
#[derive(Debug, Clone)]
pub struct SharedServiceConnections(pub Arc<ServiceConnections>);

impl PartialEq for SharedServiceConnections {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedServiceConnections {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pending_places_are_bounded_and_given_back() {
        let limit = ServiceConnections::new(1, 2, Gauge::default(), |_| Counter::default());
        let first = limit.enter_pending().unwrap();
        let _second = limit.enter_pending().unwrap();
        assert_eq!(
            limit.enter_pending().err(),
            Some(ServiceOverflow::MaxPending)
        );
        assert_eq!(limit.overflow[1].get(), 1);
        assert_eq!(limit.pending(), 2);
        drop(first);
        assert!(limit.enter_pending().is_ok());
    }

    #[test]
    fn permits_count_open_connections() {
        let limit = ServiceConnections::new(2, 0, Gauge::default(), |_| Counter::default());
        let a = limit.try_permit().unwrap();
        let _b = limit.try_permit().unwrap();
        assert!(limit.try_permit().is_none());
        assert_eq!(limit.open(), 2);
        drop(a);
        assert!(limit.try_permit().is_some());
    }
}
