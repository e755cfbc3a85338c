//! The recent traffic a node publishes in its status key, second by
//! second, and the merge of several nodes' figures into the fleet's.
//!
//! Each second carries requests, errors and the stats window's latency
//! histogram, sparse (`[bucket, count]` pairs for the buckets that are not
//! empty). Histograms merge by adding counts, so the fleet's p99 is the
//! p99 of the merged histogram, not an average of the nodes' p99s.
//!
//! The value stays small: only seconds and services with traffic, and at
//! most [`MAX_RECENT_BYTES`] of JSON (all services together always; then
//! the busiest services while they fit; the others are counted in
//! `omitted_services`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats_window::{Histogram, StatsWindow, WindowStats, LATENCY_BUCKETS};

/// How many seconds of traffic a node publishes.
pub const RECENT_SECONDS: u64 = 90;

/// The most JSON the recent traffic may take in a status value (etcd
/// refuses values above 1.5 MiB; every node reads every status value).
pub const MAX_RECENT_BYTES: usize = 192 * 1024;

/// The scope of all services together.
pub const ALL: &str = "all";

/// One second of one scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentSecond {
    /// The Unix second.
    pub at: u64,
    /// Requests finished in it.
    pub requests: u64,
    /// Of those, 5xx answers (the proxy's own 502/504 included).
    pub errors: u64,
    /// `[bucket, count]` for each latency bucket with requests (the stats
    /// window's fixed log-scale buckets).
    pub latency: Vec<(u16, u64)>,
}

/// The seconds of one scope that had traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentScope {
    /// `all`, or a service name.
    pub scope: String,
    /// Oldest first.
    pub seconds: Vec<RecentSecond>,
}

/// A node's traffic over the seconds `from..from + seconds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentTraffic {
    /// The first Unix second covered.
    pub from: u64,
    /// How many seconds are covered (a second with no entry had no
    /// requests).
    pub seconds: u64,
    /// `all` first, then services by traffic, busiest first.
    pub scopes: Vec<RecentScope>,
    /// Services with traffic left out to keep the value small.
    #[serde(default)]
    pub omitted_services: u64,
}

fn scope_of(window: &StatsWindow, service: Option<&str>, from: u64) -> RecentScope {
    let histograms = window.histograms(service, from, 1, RECENT_SECONDS as usize);
    let seconds = histograms
        .iter()
        .zip(from..)
        .filter(|(h, _)| h.requests > 0)
        .map(|(h, at)| RecentSecond {
            at,
            requests: h.requests,
            errors: h.errors,
            latency: h
                .latency
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(i, &n)| (u16::try_from(i).unwrap_or(u16::MAX), n))
                .collect(),
        })
        .collect();
    RecentScope {
        scope: service.unwrap_or(ALL).to_string(),
        seconds,
    }
}

fn json_size<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// The last [`RECENT_SECONDS`] of `window`, up to and including the Unix
/// second `now`.
pub fn recent(window: &StatsWindow, now: u64) -> RecentTraffic {
    let from = now.saturating_add(1).saturating_sub(RECENT_SECONDS);
    let all = scope_of(window, None, from);
    let mut size = json_size(&all);
    let mut services: Vec<(u64, RecentScope)> = window
        .services()
        .iter()
        .map(|s| scope_of(window, Some(s), from))
        .filter(|s| !s.seconds.is_empty())
        .map(|s| (s.seconds.iter().map(|x| x.requests).sum(), s))
        .collect();
    services.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.scope.cmp(&b.1.scope)));
    let mut scopes = Vec::with_capacity(services.len() + 1);
    let mut omitted = 0;
    if !all.seconds.is_empty() {
        scopes.push(all);
    }
    for (_, scope) in services {
        let more = json_size(&scope).saturating_add(1);
        if size.saturating_add(more) > MAX_RECENT_BYTES {
            omitted += 1;
            continue;
        }
        size += more;
        scopes.push(scope);
    }
    RecentTraffic {
        from,
        seconds: RECENT_SECONDS,
        scopes,
        omitted_services: omitted,
    }
}

/// The fleet's traffic as gathered from the nodes' publications: each
/// node's seconds, per scope, kept across reads (a later read replaces the
/// seconds it covers), so a window longer than what one publication holds
/// is still whole.
#[derive(Debug, Default)]
pub struct FleetTraffic {
    nodes: BTreeMap<String, BTreeMap<String, BTreeMap<u64, RecentSecond>>>,
}

impl FleetTraffic {
    /// Takes in what `node` published. Seconds outside what it says it
    /// covers, and latency buckets that do not exist, are ignored.
    pub fn absorb(&mut self, node: &str, recent: &RecentTraffic) {
        let from = recent.from;
        let to = recent
            .from
            .saturating_add(recent.seconds.min(crate::stats_window::SECONDS_KEPT as u64));
        let scopes = self.nodes.entry(node.to_string()).or_default();
        for seconds in scopes.values_mut() {
            seconds.retain(|&at, _| at < from || at >= to);
        }
        for scope in &recent.scopes {
            let seconds = scopes.entry(scope.scope.clone()).or_default();
            for second in &scope.seconds {
                if second.at >= from && second.at < to {
                    seconds.insert(second.at, second.clone());
                }
            }
        }
    }

    /// What `scope` saw on `nodes` in the Unix seconds `from..to`.
    pub fn stats<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a str>,
        scope: &str,
        from: u64,
        to: u64,
    ) -> WindowStats {
        let mut sum = Histogram::default();
        for node in nodes {
            let Some(seconds) = self.nodes.get(node).and_then(|s| s.get(scope)) else {
                continue;
            };
            for second in seconds.range(from..to.max(from)).map(|(_, s)| s) {
                sum.requests = sum.requests.saturating_add(second.requests);
                sum.errors = sum
                    .errors
                    .saturating_add(second.errors.min(second.requests));
                for &(bucket, count) in &second.latency {
                    if usize::from(bucket) < LATENCY_BUCKETS {
                        sum.add_latency(usize::from(bucket), count);
                    }
                }
            }
        }
        sum.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_node_publishes_only_what_had_traffic() {
        let window = StatsWindow::new();
        let web = window.counters("web");
        let _idle = window.counters("idle");
        for _ in 0..10 {
            web.record(Duration::from_millis(3), 200);
        }
        web.record(Duration::from_millis(300), 503);
        let now = crate::stats_window::unix_now();
        window.sample(now - 2);
        let recent = recent(&window, now);
        assert_eq!(recent.from, now + 1 - RECENT_SECONDS);
        let names: Vec<&str> = recent.scopes.iter().map(|s| s.scope.as_str()).collect();
        assert_eq!(names, ["all", "web"]);
        let second = &recent.scopes[1].seconds[0];
        assert_eq!(
            (second.at, second.requests, second.errors),
            (now - 2, 11, 1)
        );
        assert_eq!(second.latency.iter().map(|(_, n)| n).sum::<u64>(), 11);
        assert_eq!(recent.omitted_services, 0);
    }

    fn second(at: u64, requests: u64, errors: u64, millis: u64) -> RecentSecond {
        let window = StatsWindow::new();
        let counters = window.counters("x");
        for _ in 0..requests {
            counters.record(Duration::from_millis(millis), 200);
        }
        // Not sampled: counted in the present second, wherever it falls.
        let now = crate::stats_window::unix_now();
        let mut histogram = Histogram::default();
        for h in window.histograms(Some("x"), now - 5, 1, 10) {
            for (i, n) in h.latency.iter().enumerate() {
                histogram.add_latency(i, *n);
            }
        }
        RecentSecond {
            at,
            requests,
            errors,
            latency: histogram
                .latency
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(i, &n)| (i as u16, n))
                .collect(),
        }
    }

    fn published(from: u64, seconds: Vec<RecentSecond>) -> RecentTraffic {
        RecentTraffic {
            from,
            seconds: RECENT_SECONDS,
            scopes: vec![RecentScope {
                scope: "web".into(),
                seconds,
            }],
            omitted_services: 0,
        }
    }

    #[test]
    fn two_nodes_merge_into_one_histogram() {
        let mut fleet = FleetTraffic::default();
        // Node a: 980 fast requests; node b: 20 slow ones. Each node's own
        // p99 is its own speed; the fleet's p99 is over all 1000.
        fleet.absorb(
            "a",
            &published(1000, vec![second(1010, 490, 0, 2), second(1011, 490, 5, 2)]),
        );
        fleet.absorb("b", &published(1000, vec![second(1010, 20, 20, 400)]));
        let a = fleet.stats(["a"], "web", 1010, 1012);
        let b = fleet.stats(["b"], "web", 1010, 1012);
        let both = fleet.stats(["a", "b"], "web", 1010, 1012);
        assert_eq!((both.requests, both.errors), (1000, 25));
        let ms = |s: WindowStats| s.p99.unwrap().as_secs_f64() * 1000.0;
        assert!(ms(a) < 3.0, "{}", ms(a));
        assert!(ms(b) > 350.0, "{}", ms(b));
        // 2% of the merged requests are slow: the merged p99 is slow too,
        // which no average of the two p99s would say.
        assert!(ms(both) > 350.0, "{}", ms(both));
        let p50 = both.p50.unwrap().as_secs_f64() * 1000.0;
        assert!(p50 < 3.0, "{p50}");
        // Only the range asked for, only the nodes asked for.
        assert_eq!(fleet.stats(["a", "b"], "web", 1011, 1012).requests, 490);
        assert_eq!(fleet.stats(["b"], "all", 0, u64::MAX).requests, 0);
    }

    #[test]
    fn a_later_publication_replaces_the_seconds_it_covers() {
        let mut fleet = FleetTraffic::default();
        fleet.absorb("a", &published(1000, vec![second(1005, 10, 0, 1)]));
        // The same second, complete now, and a newer one.
        fleet.absorb(
            "a",
            &published(1001, vec![second(1005, 30, 1, 1), second(1090, 7, 0, 1)]),
        );
        assert_eq!(fleet.stats(["a"], "web", 1000, 1100).requests, 37);
        // Seconds that fell out of a publication are kept.
        fleet.absorb("a", &published(1200, vec![second(1250, 1, 0, 1)]));
        assert_eq!(fleet.stats(["a"], "web", 1000, 1300).requests, 38);
        // Nonsense from the network is ignored, not trusted.
        let mut bad = published(2000, vec![second(2001, 3, 9, 1), second(5, 100, 0, 1)]);
        bad.scopes[0].seconds[0].latency.push((u16::MAX, 1_000));
        fleet.absorb("b", &bad);
        let stats = fleet.stats(["b"], "web", 0, u64::MAX);
        assert_eq!((stats.requests, stats.errors), (3, 3));
    }

    #[test]
    fn the_value_stays_within_its_budget() {
        let window = StatsWindow::new();
        let now = crate::stats_window::unix_now();
        let mut handles = Vec::new();
        for s in 0..400 {
            let counters = window.counters(&format!("service-{s:03}"));
            // Many latency buckets per second: the worst case for size.
            for i in 0..40u64 {
                counters.record(Duration::from_micros(40 << (i / 4)), 200);
            }
            handles.push(counters);
        }
        for second in 0..RECENT_SECONDS {
            for counters in &handles {
                counters.record(Duration::from_millis(1 + second), 200);
            }
            window.sample(now + 1 - RECENT_SECONDS + second);
        }
        let recent = recent(&window, now);
        let size = serde_json::to_vec(&recent).unwrap().len();
        assert!(size <= MAX_RECENT_BYTES + 1024, "{size}");
        assert_eq!(recent.scopes[0].scope, "all");
        assert!(recent.omitted_services > 0);
        assert_eq!(
            recent.scopes.len() as u64 - 1 + recent.omitted_services,
            400
        );
    }
}
