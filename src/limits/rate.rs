//! Token-bucket rate limits (`rate_limit`), one bucket per key.
//!
//! Each bucket is kept as one number, its "theoretical arrival time" (the
//! generic cell rate algorithm, which is a token bucket written another
//! way): the time at which the bucket would be full again. A request is let
//! through when, after adding one emission interval (`period / rate`), that
//! time is at most `burst` intervals ahead of now. A time in the past is a
//! full bucket, so forgetting a key whose time has passed changes nothing.
//!
//! Exact across worker threads: a `route` key is one atomic updated by
//! compare-and-swap; keyed buckets live in shards behind a mutex each,
//! held only for one lookup and update. No request is ever let through
//! that a single-threaded bucket would refuse, and the other way round.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;

use crate::config::{RateLimitConfig, RateLimitKey};

/// At most this many shards; fewer for small tables, so that every shard
/// holds a useful number of keys and the total stays within `max_keys`.
const MAX_SHARDS: usize = 64;

/// When a full shard must take a new key, this share of its keys (the
/// least recently used) is dropped at once, so the scan that finds them is
/// paid once per that many new keys.
const EVICT_DIVISOR: usize = 8;

/// What a rate limit said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let through (no key, within the limit, or a dry run).
    Allowed,
    /// Refused: answer 429.
    Limited(Limited),
}

/// The figures a 429 answer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// The limit's name, for `RateLimit-Policy`.
    pub policy: Box<str>,
    /// Seconds until a request would be let through (`Retry-After`).
    pub retry_after: u64,
    /// Tokens added per window.
    pub quota: u32,
    /// The window, in seconds.
    pub window: u64,
}

impl Limited {
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the
    /// quota of the window.
    pub fn policy_header(&self) -> String {
        format!("\"{}\";q={};w={}", self.policy, self.quota, self.window)
    }

    /// `RateLimit`: nothing remains, back in `retry_after` seconds.
    pub fn limit_header(&self) -> String {
        format!("\"{}\";r=0;t={}", self.policy, self.retry_after)
    }
}

/// One configured limit with its buckets. Lives outside the snapshot: a
/// reload that keeps the limit unchanged keeps the buckets.
pub struct RateLimiter {
    config: RateLimitConfig,
    /// The name as an sf-string body (printable ASCII, no `"` or `\\`).
    name: Box<str>,
    /// Nanoseconds per token.
    interval: u64,
    /// Nanoseconds a bucket may run ahead of now: `burst` intervals.
    tolerance: u64,
    epoch: Instant,
    /// The bucket of a `route` key.
    single: AtomicU64,
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    hasher: RandomState,
    limited: Counter,
    dry_run_limited: Counter,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shard {
    /// Key hash → bucket.
    buckets: HashMap<u64, Bucket>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// When the bucket is full again, in nanoseconds since the epoch.
    full_at: u64,
    /// Last request, for eviction.
    used: u64,
}

impl RateLimiter {
    /// A limiter for `config`, named `name` in metrics and headers, with
    /// its metric handles (refused, refused in a dry run).
    pub fn new(
        name: &str,
        config: &RateLimitConfig,
        (limited, dry_run_limited): (Counter, Counter),
    ) -> RateLimiter {
        let period = u64::try_from(config.period.as_nanos()).unwrap_or(u64::MAX);
        let interval = (period / u64::from(config.rate.get())).max(1);
        let shards = (config.max_keys / 1024).clamp(1, MAX_SHARDS);
        RateLimiter {
            config: config.clone(),
            name: name
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() && c != '"' && c != '\\' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst.get())),
            epoch: Instant::now(),
            single: AtomicU64::new(0),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            shard_capacity: (config.max_keys / shards).max(1),
            hasher: RandomState::new(),
            limited,
            dry_run_limited,
        }
    }

    /// The limit this was built for.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Takes a token for a request from `client_ip` with `headers`.
    pub fn check(&self, client_ip: IpAddr, headers: &HeaderMap) -> Decision {
        let now = self.now();
        let wait = match &self.config.key {
            RateLimitKey::Route => self.take_single(now),
            RateLimitKey::ClientIp => self.take_keyed(self.hasher.hash_one(client_ip), now),
            RateLimitKey::Header(name) => match headers.get(name) {
                Some(value) => self.take_keyed(self.hasher.hash_one(value.as_bytes()), now),
                // As nginx does with an empty key: not limited.
                None => None,
            },
        };
        self.decide(wait)
    }

    fn decide(&self, wait: Option<u64>) -> Decision {
        let Some(wait) = wait else {
            return Decision::Allowed;
        };
        if self.config.dry_run {
            self.dry_run_limited.inc();
            return Decision::Allowed;
        }
        self.limited.inc();
        Decision::Limited(Limited {
            policy: self.name.clone(),
            retry_after: wait.div_ceil(1_000_000_000).max(1),
            quota: self.config.rate.get(),
            window: self.config.period.as_secs(),
        })
    }

    fn now(&self) -> u64 {
        // Starts at one tolerance so that a bucket at 0 is full.
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(self.tolerance)
    }

    /// The bucket after one more request at `now`: `Ok(new full_at)`, or
    /// `Err(nanoseconds until one would be let through)`.
    fn take(&self, full_at: u64, now: u64) -> Result<u64, u64> {
        let after = full_at.max(now).saturating_add(self.interval);
        let ahead = after - now;
        if ahead > self.tolerance {
            Err(ahead - self.tolerance)
        } else {
            Ok(after)
        }
    }

    fn take_single(&self, now: u64) -> Option<u64> {
        let mut current = self.single.load(Ordering::Acquire);
        // Each failed exchange means another thread took a token: bounded
        // by the number of threads racing, not a spin on a lock.
        loop {
            match self.take(current, now) {
                Err(wait) => return Some(wait),
                Ok(next) => match self.single.compare_exchange_weak(
                    current,
                    next,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return None,
                    Err(actual) => current = actual,
                },
            }
        }
    }

    fn take_keyed(&self, key: u64, now: u64) -> Option<u64> {
        // The low bits pick the shard; HashMap uses its own hash of the key.
        let index = usize::try_from(key % self.shards.len() as u64).unwrap_or(0);
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = shard.buckets.get_mut(&key) {
            bucket.used = now;
            return match self.take(bucket.full_at, now) {
                Ok(next) => {
                    bucket.full_at = next;
                    None
                }
                Err(wait) => Some(wait),
            };
        }
        // A new key starts full; the first request always passes
        // (burst >= 1), so only room is needed.
        if shard.buckets.len() >= self.shard_capacity {
            self.make_room(&mut shard, now);
        }
        let full_at = self.take(0, now).unwrap_or(now);
        shard.buckets.insert(key, Bucket { full_at, used: now });
        None
    }

    /// Drops keys whose bucket is full again (forgetting them changes
    /// nothing); if that frees nothing, the least recently used eighth.
    fn make_room(&self, shard: &mut Shard, now: u64) {
        shard.buckets.retain(|_, b| b.full_at > now);
        if shard.buckets.len() < self.shard_capacity {
            return;
        }
        let mut used: Vec<u64> = shard.buckets.values().map(|b| b.used).collect();
        let evict = (used.len() / EVICT_DIVISOR).max(1);
        let (_, threshold, _) = used.select_nth_unstable(evict - 1);
        let threshold = *threshold;
        shard.buckets.retain(|_, b| b.used > threshold);
    }

    /// Keys held now (all shards).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .buckets
                    .len()
            })
            .sum()
    }

    /// Time for `tokens` tokens to come back, for tests and docs.
    pub fn refill_time(&self, tokens: u32) -> Duration {
        Duration::from_nanos(self.interval.saturating_mul(u64::from(tokens)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::num::NonZeroU32;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;

    fn limit(rate: u32, period: u64, burst: u32, key: RateLimitKey) -> RateLimitConfig {
        RateLimitConfig {
            rate: NonZeroU32::new(rate).unwrap(),
            period: Duration::from_secs(period),
            burst: NonZeroU32::new(burst).unwrap(),
            key,
            max_keys: 100_000,
            dry_run: false,
        }
    }

    fn limiter(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter::new("test", config, (Counter::default(), Counter::default()))
    }

    #[test]
    fn a_bucket_lets_the_burst_through_then_one_per_interval() {
        let l = limiter(&limit(10, 1, 3, RateLimitKey::Route));
        let t0 = l.tolerance;
        let step = 100_000_000; // 100 ms: one token
        assert_eq!(l.take_single(t0), None);
        assert_eq!(l.take_single(t0), None);
        assert_eq!(l.take_single(t0), None);
        assert_eq!(l.take_single(t0), Some(step));
        assert_eq!(l.take_single(t0 + step / 2), Some(step / 2));
        assert_eq!(l.take_single(t0 + step), None);
        assert_eq!(l.take_single(t0 + step), Some(step));
        // Long idle: full again, no more than the burst.
        let later = t0 + 100 * step;
        for _ in 0..3 {
            assert_eq!(l.take_single(later), None);
        }
        assert!(l.take_single(later).is_some());
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let l = limiter(&limit(1, 60, 2, RateLimitKey::ClientIp));
        let now = l.tolerance;
        assert_eq!(l.take_keyed(1, now), None);
        assert_eq!(l.take_keyed(1, now), None);
        assert!(l.take_keyed(1, now).is_some());
        assert_eq!(l.take_keyed(2, now), None);
        assert_eq!(l.take_keyed(2, now), None);
        assert!(l.take_keyed(2, now).is_some());
    }

    #[test]
    fn a_limited_answer_says_when_to_come_back() {
        let l = limiter(&limit(1, 10, 1, RateLimitKey::Route));
        let headers = HeaderMap::new();
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(l.check(ip, &headers), Decision::Allowed);
        let Decision::Limited(limited) = l.check(ip, &headers) else {
            panic!("second request must be limited");
        };
        assert!((9..=10).contains(&limited.retry_after), "{limited:?}");
        assert_eq!(limited.policy_header(), "\"test\";q=1;w=10");
        assert!(limited.limit_header().starts_with("\"test\";r=0;t="));
    }

    #[test]
    fn a_dry_run_lets_everything_through_and_counts() {
        let mut config = limit(1, 60, 1, RateLimitKey::Route);
        config.dry_run = true;
        let l = limiter(&config);
        let headers = HeaderMap::new();
        let ip = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..5 {
            assert_eq!(l.check(ip, &headers), Decision::Allowed);
        }
        assert_eq!(l.dry_run_limited.get(), 4);
        assert_eq!(l.limited.get(), 0);
    }

    #[test]
    fn requests_without_the_header_are_not_limited() {
        let name = http::HeaderName::from_static("x-api-key");
        let l = limiter(&limit(1, 60, 1, RateLimitKey::Header(name)));
        let ip = IpAddr::from([127, 0, 0, 1]);
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert("x-api-key", http::HeaderValue::from_static("a"));
        assert_eq!(l.check(ip, &keyed), Decision::Allowed);
        assert!(matches!(l.check(ip, &keyed), Decision::Limited(_)));
        for _ in 0..3 {
            assert_eq!(l.check(ip, &none), Decision::Allowed);
        }
    }

    #[test]
    fn a_million_distinct_keys_stay_within_max_keys() {
        let mut config = limit(1, 3600, 5, RateLimitKey::ClientIp);
        config.max_keys = 10_000;
        let l = limiter(&config);
        let now = l.tolerance;
        for key in 0..1_000_000u64 {
            // Every bucket stays not full (1 token an hour), so eviction
            // has to drop the least recently used.
            assert_eq!(l.take_keyed(l.hasher.hash_one(key), now + key), None);
            if key % 100_000 == 0 {
                assert!(l.keys() <= 10_000, "{} keys", l.keys());
            }
        }
        assert!(l.keys() <= 10_000, "{} keys", l.keys());
        // The most recent keys are still remembered: their bucket is used.
        let recent = l.hasher.hash_one(999_999u64);
        assert_eq!(l.take_keyed(recent, now + 1_000_000), None);
        for _ in 0..3 {
            l.take_keyed(recent, now + 1_000_000);
        }
        assert!(l.take_keyed(recent, now + 1_000_000).is_some());
    }

    /// Several threads hammer one bucket: exactly `burst` pass (the rate
    /// adds nothing within the test: one token an hour), for both kinds of
    /// bucket. The documented bound is 0: the count is exact.
    #[test]
    fn threads_hammering_one_bucket_pass_exactly_the_burst() {
        for key in [RateLimitKey::Route, RateLimitKey::ClientIp] {
            let l = Arc::new(limiter(&limit(1, 3600, 1000, key)));
            let passed = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (l, passed) = (Arc::clone(&l), Arc::clone(&passed));
                    std::thread::spawn(move || {
                        let headers = HeaderMap::new();
                        let ip = IpAddr::from([10, 0, 0, 1]);
                        for _ in 0..5_000 {
                            if l.check(ip, &headers) == Decision::Allowed {
                                passed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            assert_eq!(passed.load(Ordering::Relaxed), 1000);
            assert_eq!(l.limited.get(), 40_000 - 1000);
        }
    }
}
