//! Cost of one pick per strategy at 3, 100 and 1,000 instances, and of
//! building each balancer (done once per snapshot, not per request).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard::balance::{hash_ip, Balancer, Load, Member, Strategy};

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

criterion_group!(benches, pick, build);
criterion_main!(benches);
