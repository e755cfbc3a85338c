//! What metrics add to one request: the handle updates the request path
//! makes (status-class counter, duration histogram, in-flight gauge), with
//! metrics on, against the in-flight count alone (which least_connections
//! needs anyway), with metrics off; and the same with the per-second
//! stats window's recording added, and one read of a 60-second window.

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
    group.bench_function("on_with_window", |b| {
        b.iter(|| {
            let started = Instant::now();
            instance.in_flight.inc();
            instance.response(black_box(200));
            instance.in_flight.dec();
            let elapsed = started.elapsed();
            service.duration.observe(elapsed.as_secs_f64());
            service.window.record(elapsed, black_box(200));
        })
    });
    group.bench_function("window_record_only", |b| {
        b.iter(|| {
            service.window.record(
                black_box(std::time::Duration::from_micros(850)),
                black_box(200),
            )
        })
    });
    group.finish();
    c.bench_function("window_read_60s_of_10_services", |b| {
        let window = metrics.window();
        let handles: Vec<_> = (0..10).map(|i| window.counters(&format!("s{i}"))).collect();
        let now = switchyard::stats_window::unix_now();
        for second in now - 900..now {
            for h in &handles {
                h.record(std::time::Duration::from_millis(second % 50), 200);
            }
            window.sample(second);
        }
        b.iter(|| black_box(window.window(None, now - 60, now + 1)));
    });
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
