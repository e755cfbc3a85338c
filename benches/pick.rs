//! Cost of one pick per strategy at 3, 100 and 1,000 instances, of the
//! sticky-cookie lookup, and of building each balancer and sticky table
//! (done once per snapshot, not per request).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use switchyard::balance::{hash_ip, Balancer, Load, Member, Strategy};
use switchyard::config::{InstanceId, SameSite, Secret, ServiceName, StickyConfig};
use switchyard::traffic::sticky::StickyTable;

struct InFlight(AtomicU64);

impl Load for InFlight {
    fn in_flight(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("svc/10.0.{}.{}:8080", i / 250, i % 250))
        .collect()
}

fn members(keys: &[String]) -> Vec<Member<'_>> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| Member {
            key,
            weight: 1 + (i % 5) as u32,
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 100, 1_000] {
        let keys = keys(n);
        let members = members(&keys);
        let loads: Vec<InFlight> = (0..n)
            .map(|i| InFlight(AtomicU64::new((i % 7) as u64)))
            .collect();
        let clients: Vec<u64> = (0..1024u32)
            .map(|i| hash_ip(std::net::Ipv4Addr::from(0x0a00_0000 + i * 13).into()))
            .collect();
        for strategy in Strategy::ALL {
            let balancer = Balancer::build(strategy, &members);
            let mut next = 0usize;
            group.bench_with_input(BenchmarkId::new(strategy.as_str(), n), &n, |b, _| {
                b.iter(|| {
                    next = (next + 1) & 1023;
                    black_box(balancer.pick(black_box(clients[next]), &loads))
                })
            });
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for n in [3usize, 100, 1_000] {
        let keys = keys(n);
        let members = members(&keys);
        for strategy in [Strategy::WeightedRoundRobin, Strategy::IpHash] {
            group.bench_with_input(BenchmarkId::new(strategy.as_str(), n), &n, |b, _| {
                b.iter(|| black_box(Balancer::build(strategy, black_box(&members))))
            });
        }
    }
    group.finish();
}

fn sticky_config() -> StickyConfig {
    StickyConfig {
        cookie: "sy_session".into(),
        max_age: Some(std::time::Duration::from_secs(3600)),
        secure: true,
        http_only: true,
        same_site: Some(SameSite::Lax),
        secret: Some(Secret("bench-secret".into())),
    }
}

/// One lookup of the sticky cookie in a request's `Cookie` field (three
/// other cookies around it), and one in a request without the cookie.
fn sticky(c: &mut Criterion) {
    let mut group = c.benchmark_group("sticky");
    let service = ServiceName::from("web");
    for n in [3usize, 100, 1_000] {
        let ids: Vec<InstanceId> = keys(n)
            .iter()
            .map(|k| InstanceId::from(k.as_str()))
            .collect();
        let table = StickyTable::build(&sticky_config(), &service, ids.iter());
        let requests: Vec<HeaderMap> = (0..64)
            .map(|i| {
                let set = table.set_cookie(i % n).unwrap().to_str().unwrap();
                let pair = set.split(';').next().unwrap();
                let line = format!("theme=dark; lang=en-GB; {pair}; _ga=GA1.2.3456789.1234567890");
                let mut headers = HeaderMap::new();
                headers.insert(COOKIE, HeaderValue::try_from(line).unwrap());
                headers
            })
            .collect();
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::new("cookie_hit", n), &n, |b, _| {
            b.iter(|| {
                next = (next + 1) & 63;
                black_box(table.find(black_box(&requests[next])))
            })
        });
        let none = HeaderMap::new();
        group.bench_with_input(BenchmarkId::new("no_cookie", n), &n, |b, _| {
            b.iter(|| black_box(table.find(black_box(&none))))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for n in [3usize, 100, 1_000] {
        let ids: Vec<InstanceId> = keys(n)
            .iter()
            .map(|k| InstanceId::from(k.as_str()))
            .collect();
        group.bench_with_input(BenchmarkId::new("sticky_table", n), &n, |b, _| {
            b.iter(|| black_box(StickyTable::build(&sticky_config(), &service, ids.iter())))
        });
    }
    group.finish();
}

criterion_group!(benches, pick, build, sticky);
criterion_main!(benches);
