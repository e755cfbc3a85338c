//! Each strategy's distribution, measured through a real proxy in front of
//! real upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;

async fn three_echoes() -> [std::net::SocketAddr; 3] {
    [echo("a").await, echo("b").await, echo("c").await]
}

fn service(strategy: &str, instances: &[(std::net::SocketAddr, &str, u32)]) -> String {
    let mut yaml = format!(
        "routes:\n  - service: svc\nservices:\n  svc:\n    strategy: {strategy}\n    instances:\n"
    );
    for (address, id, weight) in instances {
        yaml.push_str(&format!(
            "      - {{id: {id}, address: \"{address}\", weight: {weight}}}\n"
        ));
    }
    yaml
}

#[tokio::test]
async fn round_robin_is_an_exact_rotation() {
    let [a, b, c] = three_echoes().await;
    let proxy = proxy(&service(
        "round_robin",
        &[(a, "a", 1), (b, "b", 1), (c, "c", 1)],
    ))
    .await;
    let (counts, order) = distribution(&format!("{}/", base(&proxy)), 300).await;
    assert_eq!((counts["a"], counts["b"], counts["c"]), (100, 100, 100));
    for window in order.chunks(3) {
        let mut sorted = window.to_vec();
        sorted.sort();
        assert_eq!(
            sorted,
            ["a", "b", "c"],
            "each turn of 3 visits all three: {window:?}"
        );
    }
}

#[tokio::test]
async fn weighted_round_robin_is_exact_and_interleaved() {
    let [a, b, c] = three_echoes().await;
    let proxy = proxy(&service(
        "weighted_round_robin",
        &[(a, "a", 5), (b, "b", 1), (c, "c", 1)],
    ))
    .await;
    let (counts, order) = distribution(&format!("{}/", base(&proxy)), 700).await;
    assert_eq!((counts["a"], counts["b"], counts["c"]), (500, 100, 100));
    let longest_run = order
        .chunk_by(|x, y| x == y)
        .map(<[String]>::len)
        .max()
        .unwrap();
    assert!(
        longest_run < 5,
        "`a` was picked {longest_run} times in a row"
    );
}

#[tokio::test]
async fn random_spreads_roughly_evenly() {
    let [a, b, c] = three_echoes().await;
    let proxy = proxy(&service("random", &[(a, "a", 1), (b, "b", 1), (c, "c", 1)])).await;
    let (counts, _) = distribution(&format!("{}/", base(&proxy)), 600).await;
    for name in ["a", "b", "c"] {
        // 200 expected; ±80 is more than 6 standard deviations.
        assert!((120..=280).contains(&counts[name]), "{counts:?}");
    }
}

#[tokio::test]
async fn least_connections_sends_new_requests_away_from_a_busy_instance() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = Arc::clone(&release);
    // `slow` holds every request until the test releases it.
    let slow = upstream(move |_req| {
        let gate = Arc::clone(&gate);
        async move {
            let _ = gate.acquire().await.map(|p| p.forget());
            let mut response = Response::new(Full::new(Bytes::from_static(b"slow")));
            response
                .headers_mut()
                .insert("x-served-by", "slow".parse().unwrap());
            response
        }
    })
    .await;
    let fast1 = echo("fast1").await;
    let fast2 = echo("fast2").await;
    let proxy = proxy(&service(
        "least_connections",
        &[(slow, "slow", 1), (fast1, "fast1", 1), (fast2, "fast2", 1)],
    ))
    .await;
    let url = format!("{}/", base(&proxy));

    // Park requests until three are held by the slow instance.
    let mut parked = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        parked.push(tokio::spawn(async move { get(&client(), &url, &[]).await }));
    }
    let registry = Arc::clone(proxy.registry());
    let held = || {
        let snapshot = registry.snapshot();
        snapshot.services[0]
            .instances
            .iter()
            .find(|i| i.id.as_str() == "slow")
            .map(|i| i.state.stats.in_flight())
            .unwrap()
    };
    // Requests that landed on the fast instances finish at once; keep
    // sending until the slow one holds some.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request reached the slow instance"
        );
        let url = url.clone();
        parked.push(tokio::spawn(async move { get(&client(), &url, &[]).await }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (counts, _) = distribution(&url, 100).await;
    assert_eq!(
        counts.get("slow"),
        None,
        "busy instance got requests: {counts:?}"
    );
    assert!(
        counts["fast1"] >= 25 && counts["fast2"] >= 25,
        "ties shared: {counts:?}"
    );

    release.add_permits(1_000);
    for request in parked {
        assert_eq!(request.await.unwrap().status, 200);
    }
    assert_eq!(
        held(),
        0,
        "in-flight count returns to zero when responses end"
    );
}

#[tokio::test]
async fn ip_hash_keeps_clients_and_moves_only_the_removed_instances_clients() {
    let mut instances = Vec::new();
    for name in ["i0", "i1", "i2", "i3", "i4"] {
        instances.push((echo(name).await, name, 1));
    }
    let trusted = "trusted_proxies: [127.0.0.1]\n";
    let proxy = proxy(&format!("{trusted}{}", service("ip_hash", &instances))).await;
    let url = format!("{}/", base(&proxy));
    let client = client();
    let clients: Vec<String> = (0..200)
        .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
        .collect();

    let mut owner = std::collections::HashMap::new();
    for ip in &clients {
        let first = get(&client, &url, &[("x-forwarded-for", ip)])
            .await
            .served_by();
        let again = get(&client, &url, &[("x-forwarded-for", ip)])
            .await
            .served_by();
        assert_eq!(first, again, "client {ip} changed instance");
        owner.insert(ip.clone(), first);
    }
    let used: std::collections::HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 5, "200 clients should reach all 5 instances");

    // Remove i2 from the config, as a reload would.
    let remaining: Vec<_> = instances.iter().filter(|i| i.1 != "i2").cloned().collect();
    proxy.registry().apply_config(config(&format!(
        "{trusted}{}",
        service("ip_hash", &remaining)
    )));
    let mut moved_to = std::collections::HashSet::new();
    for ip in &clients {
        let now = get(&client, &url, &[("x-forwarded-for", ip)])
            .await
            .served_by();
        if owner[ip] == "i2" {
            moved_to.insert(now);
        } else {
            assert_eq!(owner[ip], now, "client {ip} of a remaining instance moved");
        }
    }
    assert!(
        moved_to.len() >= 2,
        "i2's clients should spread: {moved_to:?}"
    );
    assert!(!moved_to.contains("i2"));
}
