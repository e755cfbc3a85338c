//! Route mirrors: which requests are copied, and the bound on copies in
//! flight. The sending is the proxy's (`proxy::mirror`).

use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::Ordering;

use crate::config::MirrorConfig;

/// A route's mirror as compiled into the snapshot.
#[derive(Debug, Clone)]
pub struct MirrorRoute {
    /// Index of the mirror service in the snapshot.
    pub service: usize,
    /// Share of requests copied, 1 to 100.
    pub percent: u8,
    /// Longest body copied.
    pub max_body_bytes: u64,
    /// Copies in flight to the service at most.
    pub max_in_flight: u32,
}

impl MirrorRoute {
    /// The mirror of `config`, sending to the service at index `service`.
    pub fn new(config: &MirrorConfig, service: usize) -> MirrorRoute {
        MirrorRoute {
            service,
            percent: config.percent,
            max_body_bytes: config.max_body_bytes,
            max_in_flight: config.max_in_flight,
        }
    }

    /// Whether this request is one of the `percent` copied. `roll` is a
    /// uniform number below 100.
    pub fn samples(&self, roll: u8) -> bool {
        roll < self.percent
    }
}

/// One copy's place under `max_in_flight`, given back when dropped.
#[derive(Debug)]
pub struct MirrorSlot {
    in_flight: Gauge,
}

impl MirrorSlot {
    /// A place if fewer than `max` copies are in flight on `in_flight`
    /// (the mirror service's gauge, shared by every snapshot).
    pub fn take(in_flight: &Gauge, max: u32) -> Option<MirrorSlot> {
        let counter = in_flight.inner();
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            if current >= i64::from(max) {
                return None;
            }
            match counter.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(MirrorSlot {
                        in_flight: in_flight.clone(),
                    })
                }
                Err(now) => current = now,
            }
        }
    }
}

impl Drop for MirrorSlot {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let gauge = Gauge::default();
        let first = MirrorSlot::take(&gauge, 2).unwrap();
        let second = MirrorSlot::take(&gauge, 2).unwrap();
        assert!(MirrorSlot::take(&gauge, 2).is_none());
        assert_eq!(gauge.get(), 2);
        drop(first);
        let third = MirrorSlot::take(&gauge, 2).unwrap();
        drop((second, third));
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn percent_samples_that_share_of_rolls() {
        let route = |percent| MirrorRoute {
            service: 0,
            percent,
            max_body_bytes: 0,
            max_in_flight: 1,
        };
        assert_eq!((0..100).filter(|r| route(10).samples(*r)).count(), 10);
        assert_eq!((0..100).filter(|r| route(100).samples(*r)).count(), 100);
        assert_eq!((0..100).filter(|r| route(1).samples(*r)).count(), 1);
    }
}
