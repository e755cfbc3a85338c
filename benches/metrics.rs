//! What metrics add to one request: the handle updates the request path
//! makes (status-class counter, duration histogram, in-flight gauge), with
//! metrics on, against the in-flight count alone (which least_connections
//! needs anyway), with metrics off.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::metrics::Metrics;

fn per_request(c: &mut Criterion) {
    let metrics = Metrics::new();
    let instance = metrics.instance("api", "10.0.0.1:8080");
    let service = metrics.service("api");
    let mut group = c.benchmark_group("metrics_per_request");
    group.bench_function("off", |b| {
        b.iter(|| {
            instance.in_flight.inc();
            black_box(&instance);
            instance.in_flight.dec();
        })
    });
    group.bench_function("on", |b| {
        b.iter(|| {
            let started = Instant::now();
            instance.in_flight.inc();
            instance.response(black_box(200));
            instance.in_flight.dec();
            service.duration.observe(started.elapsed().as_secs_f64());
        })
    });
    group.finish();
    c.bench_function("metrics_scrape_100_instances", |b| {
        let handles: Vec<_> = (0..100)
            .map(|i| metrics.instance("api", &format!("i{i}")))
            .collect();
        b.iter(|| black_box(metrics.encode().len()));
        drop(handles);
    });
}

criterion_group!(benches, per_request);
criterion_main!(benches);
