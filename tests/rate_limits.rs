//! `rate_limit`: token buckets per client IP, header or route, answered
//! 429 with `Retry-After` and the RateLimit fields; dry runs only count.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A proxy in front of one echo upstream with `limits` (top-level YAML:
/// `rate_limit:` and/or `trusted_proxies:`) and `route` (extra keys of the
/// one route, e.g. its `rate_limit`).
async fn limited(top: &str, route: &str) -> switchyard::server::Running {
    let upstream = echo("up").await;
    proxy(&format!(
        "{top}\nroutes: [{{service: s{route}}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await
}

fn header<'a>(got: &'a Got, name: &str) -> &'a str {
    got.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", got.headers))
        .to_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_ratelimit_headers() {
    let proxy = limited("rate_limit: {rate: 50, period: 1s, burst: 10}", "").await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    // One request every 10 ms (twice the rate), so that the run lasts
    // about a second and the refill shows next to the burst.
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut passed = 0u32;
    let mut limited = 0u32;
    let mut sent_at = Vec::with_capacity(100);
    for _ in 0..100 {
        pace.tick().await;
        sent_at.push(started.elapsed().as_secs_f64());
        let got = get(&client, &url, &[]).await;
        match got.status {
            200 => passed += 1,
            429 => {
                limited += 1;
                let retry_after: u64 = header(&got, "retry-after").parse().unwrap();
                assert!(retry_after >= 1, "{retry_after}");
                assert_eq!(header(&got, "ratelimit-policy"), "\"global\";q=50;w=1");
                assert!(
                    header(&got, "ratelimit").starts_with("\"global\";r=0;t="),
                    "{:?}",
                    got.headers
                );
                assert!(got.body.contains("too many requests"), "{}", got.body);
            }
            other => panic!("unexpected status {other}: {}", got.body),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Never more than the burst plus one token per 20 ms of the run (one
    // of slack for the last token still being made).
    let most = 10.0 + 50.0 * elapsed + 1.0;
    // And as many as an ideal bucket gives the requests at the times they
    // were sent: a stall of the machine fills the bucket and wastes
    // tokens, so the count of tokens made is not a lower bound. Slack for
    // the time between sending and the proxy's check.
    let ideal = ideal_bucket_passes(&sent_at, 50.0, 10.0);
    let least = ideal.saturating_sub(4);
    println!(
        "passed {passed}, limited {limited} in {elapsed:.3} s (ideal {ideal}, allowed {least}..{most:.1})"
    );
    assert_eq!(passed + limited, 100);
    assert!(f64::from(passed) <= most, "{passed} passed in {elapsed} s");
    assert!(
        passed >= least,
        "{passed} passed, an ideal bucket passes {ideal}"
    );
    assert!(
        limited > 0 || ideal == 100,
        "the run took {elapsed} s: nothing was limited"
    );
    let text = scrape(proxy.admin_address()).await;
    assert_eq!(
        sample(
            &text,
            "switchyard_rate_limited_total{limit=\"global\",mode=\"enforced\"}"
        ),
        Some(f64::from(limited)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_client_ips_are_limited_independently() {
    let proxy = limited(
        "trusted_proxies: [127.0.0.1]\nrate_limit: {rate: 1, period: 60s, burst: 2}",
        "",
    )
    .await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    let statuses = |ip: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                statuses.push(get(&client, &url, &[("x-forwarded-for", ip)]).await.status);
            }
            statuses
        }
    };
    assert_eq!(statuses("10.0.0.1").await, [200, 200, 429]);
    assert_eq!(statuses("10.0.0.2").await, [200, 200, 429]);
    // The first is still limited; its neighbour's requests did not help it.
    assert_eq!(statuses("10.0.0.1").await, [429, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_forwarded_for_does_not_make_a_new_client() {
    let proxy = limited("rate_limit: {rate: 1, period: 60s, burst: 1}", "").await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    let first = get(&client, &url, &[("x-forwarded-for", "10.0.0.1")]).await;
    let second = get(&client, &url, &[("x-forwarded-for", "10.0.0.2")]).await;
    assert_eq!((first.status, second.status), (200, 429));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_limits_each_value_and_lets_requests_without_it_pass() {
    let proxy = limited(
        "",
        ", rate_limit: {rate: 1, period: 60s, burst: 1, key: header, header: X-Api-Key}",
    )
    .await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    let with = |key: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url, &[("x-api-key", key)]).await }
    };
    assert_eq!(with("a").await.status, 200);
    let refused = with("a").await;
    assert_eq!(refused.status, 429);
    assert_eq!(header(&refused, "ratelimit-policy"), "\"*/\";q=1;w=60");
    assert_eq!(with("b").await.status, 200);
    for _ in 0..3 {
        assert_eq!(get(&client, &url, &[]).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_key_shares_one_bucket_between_clients() {
    let proxy = limited(
        "trusted_proxies: [127.0.0.1]",
        ", rate_limit: {rate: 1, period: 60s, burst: 2, key: route}",
    )
    .await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    let mut statuses = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        statuses.push(get(&client, &url, &[("x-forwarded-for", ip)]).await.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lets_everything_through_and_counts_what_it_would_refuse() {
    let proxy = limited(
        "rate_limit: {rate: 1, period: 60s, burst: 3, dry_run: true}",
        "",
    )
    .await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    for _ in 0..10 {
        assert_eq!(get(&client, &url, &[]).await.status, 200);
    }
    let text = scrape(proxy.admin_address()).await;
    assert_eq!(
        sample(
            &text,
            "switchyard_rate_limited_total{limit=\"global\",mode=\"dry_run\"}"
        ),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_rate_limited_total{limit=\"global\",mode=\"enforced\"}"
        ),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_buckets_of_an_unchanged_limit_and_resets_a_changed_one() {
    let upstream = echo("up").await;
    let text = |burst: u32| {
        format!(
            "rate_limit: {{rate: 1, period: 60s, burst: {burst}}}\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
        )
    };
    let proxy = proxy(&text(1)).await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    assert_eq!(get(&client, &url, &[]).await.status, 429);
    proxy.registry().apply_config(config(&text(1)));
    assert_eq!(get(&client, &url, &[]).await.status, 429);
    proxy.registry().apply_config(config(&text(2)));
    assert_eq!(get(&client, &url, &[]).await.status, 200);
}

#[test]
fn bad_limits_are_refused_with_every_field_named() {
    let text = "listeners: [{address: 127.0.0.1:0, limits: {max_connections_per_ip: 0}}]\nrate_limit: {rate: 0, period: 1500ms, key: header}\nroutes: [{service: s, rate_limit: {rate: 5, burst: -1, key: bogus, max_keys: 0}}]\nservices:\n  s:\n    circuit_breaker: {max_requests: 0, max_retries: -2, queue: {size: 0, timeout: 1x}}\n    instances: [{address: \"127.0.0.1:1\"}]\n";
    let errors = switchyard::config::parse(text).unwrap_err().to_string();
    for expected in [
        "listeners[0].limits.max_connections_per_ip: must be between 1 and 10000000 (got 0)",
        "rate_limit.rate: must be between 1 and 1000000000 (got 0)",
        "rate_limit.period: must be whole seconds",
        "rate_limit.header: is required with `key: header`",
        "routes[0].rate_limit.burst: must be between 1 and 1000000000 (got -1)",
        "routes[0].rate_limit.key: `bogus` is not a key",
        "routes[0].rate_limit.max_keys: must be between 1 and 100000000 (got 0)",
        "services.s.circuit_breaker.max_requests: must be between 1 and 1000000 (got 0)",
        "services.s.circuit_breaker.max_retries: must be between 0 and 1000000 (got -2)",
        "services.s.circuit_breaker.queue.size: must be between 1 and 1000000 (got 0)",
        "services.s.circuit_breaker.queue.timeout:",
    ] {
        assert!(
            errors.contains(expected),
            "missing `{expected}` in:\n{errors}"
        );
    }
    // A bucket that would take centuries to refill.
    let slow = "listeners: [{address: 127.0.0.1:0}]\nrate_limit: {rate: 1, period: 24h, burst: 1000000000}\nroutes: []\n";
    let errors = switchyard::config::parse(slow).unwrap_err().to_string();
    assert!(
        errors.contains("rate_limit.burst: 1000000000 tokens"),
        "{errors}"
    );
    // An unknown field is an error too.
    let unknown =
        "listeners: [{address: 127.0.0.1:0}]\nrate_limit: {rate: 1, burts: 2}\nroutes: []\n";
    let errors = switchyard::config::parse(unknown).unwrap_err().to_string();
    assert!(errors.contains("burts"), "{errors}");
}

/// How many requests sent at `times` (seconds) a token bucket with `rate`
/// tokens per second and `burst` saved, full at the first request, lets
/// through.
fn ideal_bucket_passes(times: &[f64], rate: f64, burst: f64) -> u32 {
    let mut tokens = burst;
    let mut last = times.first().copied().unwrap_or(0.0);
    let mut passes = 0;
    for &at in times {
        tokens = (tokens + (at - last) * rate).min(burst);
        last = at;
        if tokens >= 1.0 {
            tokens -= 1.0;
            passes += 1;
        }
    }
    passes
}
