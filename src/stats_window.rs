//! The last 15 minutes of traffic, second by second: requests, errors
//! (5xx answers, which include the proxy's own 502/504 for connect
//! failures and timeouts) and a latency histogram, per service and
//! overall.
//!
//! Two halves, so the request path stays cheap:
//!
//! - **Recording** ([`WindowCounters::record`]) is three relaxed atomic
//!   adds on cumulative counters (requests, errors when it was one, one
//!   latency bucket). No clock read of its own, no lock, no allocation.
//!   The handle is taken when a snapshot is built, never looked up per
//!   request.
//! - **Sampling** ([`StatsWindow::sample`], once a second off the request
//!   path) turns the cumulative counters into per-second deltas stored in
//!   a fixed ring of [`SECONDS_KEPT`] slots per service; the overall
//!   series is the sum of the services' deltas.
//!
//! [`StatsWindow::window`] sums a time range (Unix seconds) and adds what
//! was recorded since the last sample when the range reaches the present,
//! so a reader sees live figures. Latency percentiles come from fixed
//! log-scale buckets: four per power of two from 32 µs to about 134 s, so
//! a reported percentile is within about 12% of the true one.
//!
//! Memory is fixed per series: `SECONDS_KEPT × (2 + LATENCY_BUCKETS) × 4`
//! bytes (about 320 KiB). Series of services that left the config are
//! dropped once their last recorded second is older than the ring.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many seconds the ring keeps: 15 minutes.
pub const SECONDS_KEPT: usize = 900;

/// Latency buckets: one below 32 µs, then four per power of two up to
/// 2^27 µs; slower requests count in the last bucket.
pub const LATENCY_BUCKETS: usize = 1 + 22 * 4;

/// The smallest power of two (in µs) with its own buckets.
const FIRST_OCTAVE: u32 = 5;

/// The bucket of a request that took `elapsed`.
fn bucket(elapsed: Duration) -> usize {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    if micros < 1 << FIRST_OCTAVE {
        return 0;
    }
    let octave = 63 - micros.leading_zeros();
    // The two bits below the leading one split the octave in four.
    let quarter = ((micros >> (octave - 2)) & 3) as usize;
    let index = 1 + (octave - FIRST_OCTAVE) as usize * 4 + quarter;
    index.min(LATENCY_BUCKETS - 1)
}

/// The value reported for bucket `index`: the middle of its range.
fn bucket_value(index: usize) -> Duration {
    if index == 0 {
        return Duration::from_micros(1 << (FIRST_OCTAVE - 1));
    }
    let octave = (index - 1) / 4 + FIRST_OCTAVE as usize;
    let quarter = ((index - 1) % 4) as u64;
    let step = 1u64 << (octave - 2);
    let low = (4 + quarter) * step;
    Duration::from_micros(low + step / 2)
}

/// The request path's handle for one service: cumulative counters the
/// sampler reads.
#[derive(Debug)]
pub struct WindowCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for WindowCounters {
    fn default() -> Self {
        WindowCounters {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl WindowCounters {
    /// Counts one finished request that took `elapsed` and answered
    /// `status` (5xx is an error).
    #[inline]
    pub fn record(&self, elapsed: Duration, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    fn totals(&self) -> Totals {
        Totals {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
        }
    }
}

/// Cumulative counts at one moment.
#[derive(Debug, Clone)]
struct Totals {
    requests: u64,
    errors: u64,
    latency: [u64; LATENCY_BUCKETS],
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            requests: 0,
            errors: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

impl Totals {
    fn minus(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: std::array::from_fn(|i| self.latency[i].saturating_sub(earlier.latency[i])),
        }
    }

    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (sum, n) in self.latency.iter_mut().zip(other.latency.iter()) {
            *sum += n;
        }
    }
}

/// Per-second deltas, one slot per second of the ring.
#[derive(Debug)]
struct Ring {
    /// The Unix second each slot holds; 0 for a slot never written.
    seconds: Vec<u64>,
    requests: Vec<u32>,
    errors: Vec<u32>,
    /// `LATENCY_BUCKETS` counts per slot.
    latency: Vec<u32>,
}

fn narrow(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Ring {
    fn new() -> Ring {
        Ring {
            seconds: vec![0; SECONDS_KEPT],
            requests: vec![0; SECONDS_KEPT],
            errors: vec![0; SECONDS_KEPT],
            latency: vec![0; SECONDS_KEPT * LATENCY_BUCKETS],
        }
    }

    /// Adds `delta` to the slot of `second` (starting it afresh when it
    /// held an older second).
    fn put(&mut self, second: u64, delta: &Totals) {
        let slot = (second % SECONDS_KEPT as u64) as usize;
        let latency = &mut self.latency[slot * LATENCY_BUCKETS..(slot + 1) * LATENCY_BUCKETS];
        if self.seconds[slot] != second {
            self.seconds[slot] = second;
            self.requests[slot] = 0;
            self.errors[slot] = 0;
            latency.fill(0);
        }
        self.requests[slot] = self.requests[slot].saturating_add(narrow(delta.requests));
        self.errors[slot] = self.errors[slot].saturating_add(narrow(delta.errors));
        for (count, n) in latency.iter_mut().zip(delta.latency.iter()) {
            *count = count.saturating_add(narrow(*n));
        }
    }

    /// The sum of the slots of seconds in `from..to`.
    fn sum(&self, from: u64, to: u64, into: &mut Totals) {
        for (slot, &second) in self.seconds.iter().enumerate() {
            if second == 0 || second < from || second >= to {
                continue;
            }
            into.requests += u64::from(self.requests[slot]);
            into.errors += u64::from(self.errors[slot]);
            let latency = &self.latency[slot * LATENCY_BUCKETS..(slot + 1) * LATENCY_BUCKETS];
            for (sum, &n) in into.latency.iter_mut().zip(latency) {
                *sum += u64::from(n);
            }
        }
    }

    /// Adds the slots of seconds in `from..from + step × buckets.len()`
    /// to the bucket each second falls in, one pass over the ring.
    fn sum_buckets(&self, from: u64, step: u64, buckets: &mut [Totals]) {
        for (slot, &second) in self.seconds.iter().enumerate() {
            if second == 0 || second < from {
                continue;
            }
            let Some(bucket) = usize::try_from((second - from) / step)
                .ok()
                .and_then(|i| buckets.get_mut(i))
            else {
                continue;
            };
            bucket.requests += u64::from(self.requests[slot]);
            bucket.errors += u64::from(self.errors[slot]);
            let latency = &self.latency[slot * LATENCY_BUCKETS..(slot + 1) * LATENCY_BUCKETS];
            for (sum, &n) in bucket.latency.iter_mut().zip(latency) {
                *sum += u64::from(n);
            }
        }
    }

    fn newest(&self) -> u64 {
        self.seconds
            .iter()
            .zip(&self.requests)
            .filter(|(_, &n)| n > 0)
            .map(|(&s, _)| s)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug)]
struct Series {
    counters: Arc<WindowCounters>,
    /// The counters at the last sample.
    sampled: Totals,
    ring: Ring,
}

#[derive(Debug)]
struct Inner {
    services: BTreeMap<String, Series>,
    overall: Ring,
    /// The Unix second of the last sample (0: none yet).
    last_sample: u64,
}

/// The per-second figures of every service and of all of them together.
#[derive(Debug)]
pub struct StatsWindow {
    inner: Mutex<Inner>,
}

impl Default for StatsWindow {
    fn default() -> Self {
        StatsWindow::new()
    }
}

/// What a time range saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WindowStats {
    /// Requests finished in the range.
    pub requests: u64,
    /// Of those, answered with a 5xx (the proxy's own 502/504 for connect
    /// failures and timeouts included).
    pub errors: u64,
    /// Median latency (whole request, body included), when there were
    /// requests.
    #[serde(serialize_with = "millis")]
    pub p50: Option<Duration>,
    /// 99th percentile latency, when there were requests.
    #[serde(serialize_with = "millis")]
    pub p99: Option<Duration>,
}

fn millis<S: serde::Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => s.serialize_none(),
    }
}

impl WindowStats {
    /// Errors per request, 0 to 1 (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    fn of(totals: &Totals) -> WindowStats {
        WindowStats {
            requests: totals.requests,
            errors: totals.errors,
            p50: percentile(&totals.latency, 0.50),
            p99: percentile(&totals.latency, 0.99),
        }
    }
}

/// The counts of a time range: requests, errors and the latency
/// histogram (the fixed buckets above). Histograms of several ranges, or
/// of several proxies, merge by adding, and the percentiles of the sum are
/// real percentiles of the merged traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    /// Requests finished.
    pub requests: u64,
    /// Of those, 5xx answers.
    pub errors: u64,
    /// Requests per latency bucket.
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            requests: 0,
            errors: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

impl Histogram {
    /// Adds `count` requests of latency bucket `index` (ignored when there
    /// is no such bucket).
    pub fn add_latency(&mut self, index: usize, count: u64) {
        if let Some(n) = self.latency.get_mut(index) {
            *n = n.saturating_add(count);
        }
    }

    /// The requests, errors and percentiles.
    pub fn stats(&self) -> WindowStats {
        WindowStats {
            requests: self.requests,
            errors: self.errors,
            p50: percentile(&self.latency, 0.50),
            p99: percentile(&self.latency, 0.99),
        }
    }
}

/// The bucket value below which a fraction `q` of the counts fall.
fn percentile(latency: &[u64; LATENCY_BUCKETS], q: f64) -> Option<Duration> {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the q-quantile, 1-based: ceil(q × n).
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (index, &n) in latency.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_value(index));
        }
    }
    Some(bucket_value(LATENCY_BUCKETS - 1))
}

/// The current Unix second.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl StatsWindow {
    /// An empty window.
    pub fn new() -> StatsWindow {
        StatsWindow {
            inner: Mutex::new(Inner {
                services: BTreeMap::new(),
                overall: Ring::new(),
                last_sample: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The recording handle of `service` (the same one every time, so a
    /// rebuilt snapshot keeps counting into the same series).
    pub fn counters(&self, service: &str) -> Arc<WindowCounters> {
        let mut inner = self.lock();
        let series = inner
            .services
            .entry(service.to_string())
            .or_insert_with(|| Series {
                counters: Arc::default(),
                sampled: Totals::default(),
                ring: Ring::new(),
            });
        Arc::clone(&series.counters)
    }

    /// Moves what was recorded since the last sample into the slot of
    /// `second` (a Unix second). Called once a second.
    pub fn sample(&self, second: u64) {
        let mut inner = self.lock();
        let Inner {
            services, overall, ..
        } = &mut *inner;
        let mut sum = Totals::default();
        for series in services.values_mut() {
            let now = series.counters.totals();
            let delta = now.minus(&series.sampled);
            series.sampled = now;
            if delta.requests > 0 {
                series.ring.put(second, &delta);
                sum.add(&delta);
            }
        }
        if sum.requests > 0 {
            overall.put(second, &sum);
        }
        inner.last_sample = second;
        // A series nobody records into any more (its service left the
        // config) goes once the ring no longer holds any of its seconds.
        let horizon = second.saturating_sub(SECONDS_KEPT as u64);
        inner
            .services
            .retain(|_, s| Arc::strong_count(&s.counters) > 1 || s.ring.newest() > horizon);
    }

    /// What `service` (None: every service) saw in the Unix seconds
    /// `from..to`. Requests recorded since the last sample count as the
    /// present second, so a range reaching the present sees them.
    pub fn window(&self, service: Option<&str>, from: u64, to: u64) -> WindowStats {
        let inner = self.lock();
        let mut totals = Totals::default();
        // What is not sampled yet was recorded after the last sample.
        let live = to > inner.last_sample + 1 && from <= unix_now();
        match service {
            None => {
                inner.overall.sum(from, to, &mut totals);
                if live {
                    for series in inner.services.values() {
                        totals.add(&series.counters.totals().minus(&series.sampled));
                    }
                }
            }
            Some(name) => {
                if let Some(series) = inner.services.get(name) {
                    series.ring.sum(from, to, &mut totals);
                    if live {
                        totals.add(&series.counters.totals().minus(&series.sampled));
                    }
                }
            }
        }
        WindowStats::of(&totals)
    }

    /// What `service` (None: every service) saw in `count` consecutive
    /// buckets of `step` seconds each, the first starting at the Unix
    /// second `from`. Like [`StatsWindow::window`], what is not sampled
    /// yet counts as the present second (in the bucket holding it).
    pub fn series(
        &self,
        service: Option<&str>,
        from: u64,
        step: u64,
        count: usize,
    ) -> Vec<WindowStats> {
        self.buckets(service, from, step, count)
            .iter()
            .map(WindowStats::of)
            .collect()
    }

    /// Like [`StatsWindow::series`], but each bucket's counts and latency
    /// histogram rather than its percentiles: histograms of several
    /// ranges (or of several proxies) merge by adding.
    pub fn histograms(
        &self,
        service: Option<&str>,
        from: u64,
        step: u64,
        count: usize,
    ) -> Vec<Histogram> {
        self.buckets(service, from, step, count)
            .into_iter()
            .map(|t| Histogram {
                requests: t.requests,
                errors: t.errors,
                latency: t.latency,
            })
            .collect()
    }

    fn buckets(&self, service: Option<&str>, from: u64, step: u64, count: usize) -> Vec<Totals> {
        let step = step.max(1);
        let mut buckets = vec![Totals::default(); count];
        let inner = self.lock();
        let now = unix_now();
        let present = usize::try_from(now.saturating_sub(from) / step)
            .ok()
            .filter(|_| now >= from);
        let mut live = Totals::default();
        match service {
            None => {
                inner.overall.sum_buckets(from, step, &mut buckets);
                for series in inner.services.values() {
                    live.add(&series.counters.totals().minus(&series.sampled));
                }
            }
            Some(name) => {
                if let Some(series) = inner.services.get(name) {
                    series.ring.sum_buckets(from, step, &mut buckets);
                    live.add(&series.counters.totals().minus(&series.sampled));
                }
            }
        }
        if let Some(bucket) = present.and_then(|i| buckets.get_mut(i)) {
            bucket.add(&live);
        }
        buckets
    }

    /// The services that have a series, in name order.
    pub fn services(&self) -> Vec<String> {
        self.lock().services.keys().cloned().collect()
    }

    /// Samples once a second, on the second, until the task is dropped.
    pub async fn run_sampler(self: Arc<Self>) {
        loop {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let to_next = Duration::from_secs(1)
                .saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
            tokio::time::sleep(to_next).await;
            // Counts recorded during second N are stored as second N: the
            // sample just after the boundary closes the second before it.
            self.sample(unix_now().saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for micros in [
            1u64, 31, 32, 40, 63, 64, 100, 1000, 12_345, 300_000, 60_000_000,
        ] {
            let index = bucket(Duration::from_micros(micros));
            assert!(index >= last, "{micros}");
            last = index;
            if micros >= 32 {
                let value = bucket_value(index).as_micros() as f64;
                let error = (value - micros as f64).abs() / micros as f64;
                assert!(error <= 0.125, "{micros} µs reported as {value} µs");
            }
        }
        assert_eq!(bucket(Duration::from_secs(100_000)), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn window_sums_seconds_and_sees_the_present() {
        let window = StatsWindow::new();
        let web = window.counters("web");
        let api = window.counters("api");
        for _ in 0..98 {
            web.record(Duration::from_millis(2), 200);
        }
        web.record(Duration::from_millis(400), 500);
        web.record(Duration::from_millis(400), 502);
        window.sample(1000);
        api.record(Duration::from_millis(10), 200);
        window.sample(1001);
        // Not sampled yet: counts as the present second.
        web.record(Duration::from_millis(2), 503);

        let web_all = window.window(Some("web"), 1000, 1003);
        assert_eq!((web_all.requests, web_all.errors), (101, 3));
        let p50 = web_all.p50.unwrap().as_secs_f64();
        assert!((0.0018..0.0022).contains(&p50), "{p50}");
        let p99 = web_all.p99.unwrap().as_secs_f64();
        assert!((0.36..0.44).contains(&p99), "{p99}");

        let first = window.window(Some("web"), 1000, 1001);
        assert_eq!((first.requests, first.errors), (100, 2));
        let overall = window.window(None, 1000, 1003);
        assert_eq!((overall.requests, overall.errors), (102, 3));
        let past = window.window(None, 1001, 1002);
        assert_eq!(past.requests, 1);
        assert_eq!(window.window(Some("nope"), 0, u64::MAX).requests, 0);
        assert_eq!(window.window(None, 500, 900).p99, None);
    }

    #[test]
    fn series_puts_each_second_in_its_bucket() {
        let window = StatsWindow::new();
        let web = window.counters("web");
        for _ in 0..3 {
            web.record(Duration::from_millis(2), 200);
        }
        window.sample(1000);
        web.record(Duration::from_millis(50), 500);
        window.sample(1009);
        web.record(Duration::from_millis(8), 200);
        window.sample(1010);
        let points = window.series(Some("web"), 1000, 10, 3);
        assert_eq!(points.len(), 3);
        assert_eq!((points[0].requests, points[0].errors), (4, 1));
        assert_eq!((points[1].requests, points[1].errors), (1, 0));
        assert_eq!(points[2].requests, 0);
        let p99 = points[0].p99.unwrap().as_secs_f64();
        assert!((0.044..0.056).contains(&p99), "{p99}");
        // Second 1000 is before this range; 1009 and 1010 are in it.
        assert_eq!(window.series(Some("web"), 1001, 10, 1)[0].requests, 2);
        let overall = window.series(None, 1000, 10, 2);
        assert_eq!((overall[0].requests, overall[1].requests), (4, 1));
        // Not sampled yet: in the bucket of the present second.
        web.record(Duration::from_millis(1), 200);
        let now = unix_now();
        let live = window.series(Some("web"), now - 5, 10, 1);
        assert_eq!(live[0].requests, 1);
    }

    #[test]
    fn histograms_add_up_to_the_window() {
        let window = StatsWindow::new();
        let web = window.counters("web");
        let api = window.counters("api");
        for _ in 0..90 {
            web.record(Duration::from_millis(2), 200);
        }
        window.sample(1000);
        for _ in 0..10 {
            api.record(Duration::from_millis(400), 503);
        }
        window.sample(1001);
        let seconds = window.histograms(None, 1000, 1, 2);
        assert_eq!((seconds[0].requests, seconds[1].requests), (90, 10));
        let mut merged = Histogram::default();
        for second in &seconds {
            merged.requests += second.requests;
            merged.errors += second.errors;
            for (i, n) in second.latency.iter().enumerate() {
                merged.add_latency(i, *n);
            }
        }
        // Added up, the seconds say what the whole range says.
        assert_eq!(merged.stats(), window.window(None, 1000, 1002));
        assert_eq!(merged.stats().errors, 10);
        let p99 = merged.stats().p99.unwrap().as_secs_f64();
        assert!((0.36..0.44).contains(&p99), "{p99}");
        merged.add_latency(LATENCY_BUCKETS, 5);
        assert_eq!(merged.latency.iter().sum::<u64>(), 100);
    }

    #[test]
    fn old_seconds_are_overwritten_and_gone_services_dropped() {
        let window = StatsWindow::new();
        let web = window.counters("web");
        web.record(Duration::from_millis(1), 200);
        window.sample(10);
        web.record(Duration::from_millis(1), 200);
        window.sample(10 + SECONDS_KEPT as u64);
        assert_eq!(window.window(Some("web"), 0, 10_000).requests, 1);
        drop(web);
        window.sample(20 + 2 * SECONDS_KEPT as u64);
        assert!(window.services().is_empty());
    }
}
