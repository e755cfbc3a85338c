//! Traffic limits: rate limits per key, circuit breakers per service and
//! connections per client IP.
//!
//! The buckets and counters live here, outside the snapshot; the snapshot
//! only holds `Arc`s to them, taken from a [`Limits`] store when it is
//! built. A limit whose settings did not change between two builds is the
//! same object in both, so a reload does not refill buckets or forget
//! requests in progress.

pub mod breaker;
pub mod connections;
pub mod rate;

use std::collections::HashMap;
use std::sync::Arc;

pub use breaker::{Breaker, Overflow};
pub use connections::ConnectionsPerIp;
pub use rate::{Decision, Limited, RateLimiter};

use crate::config::{CircuitBreakerConfig, RateLimitConfig};
use crate::metrics::Metrics;

/// The limits of the current config, by name, kept from build to build.
#[derive(Debug, Default)]
pub struct Limits {
    rate: HashMap<String, Arc<RateLimiter>>,
    breakers: HashMap<String, Arc<Breaker>>,
}

impl Limits {
    /// The rate limiter named `name` for `config`: the one already built
    /// when its settings are the same, else a new one.
    pub fn rate_limiter(
        &mut self,
        name: &str,
        config: &RateLimitConfig,
        metrics: &Metrics,
    ) -> Arc<RateLimiter> {
        if let Some(existing) = self.rate.get(name).filter(|l| l.config() == config) {
            return Arc::clone(existing);
        }
        let limiter = Arc::new(RateLimiter::new(name, config, metrics.rate_limit(name)));
        self.rate.insert(name.to_string(), Arc::clone(&limiter));
        limiter
    }

    /// Forgets rate limiters not named in `kept`.
    pub fn retain_rate_limiters(&mut self, kept: &[&str]) {
        self.rate.retain(|name, _| kept.contains(&name.as_str()));
    }

    /// The breaker of `service` for `config`, kept when unchanged. A
    /// changed one starts empty: requests in progress under the old one
    /// finish there, so for their duration both ceilings apply separately.
    pub fn breaker(
        &mut self,
        service: &str,
        config: &CircuitBreakerConfig,
        metrics: &Metrics,
    ) -> Arc<Breaker> {
        if let Some(existing) = self.breakers.get(service).filter(|b| b.config() == config) {
            return Arc::clone(existing);
        }
        let breaker = Arc::new(Breaker::new(
            *config,
            metrics.upstream_pending(service),
            |which| metrics.breaker_overflow(service, which),
        ));
        self.breakers
            .insert(service.to_string(), Arc::clone(&breaker));
        breaker
    }

    /// Forgets the breaker of a service that left.
    pub fn remove_breaker(&mut self, service: &str) {
        self.breakers.remove(service);
    }
}
