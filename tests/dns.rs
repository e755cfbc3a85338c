//! Instances by host name, resolved by a real DNS server on loopback
//! (tests/common/dns.rs): every record an instance, balanced; a record that
//! goes away takes only its instance; a silent or failing resolver keeps
//! the last answer; NXDOMAIN removes; `check` and start-up survive a name
//! that does not resolve.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::binary::{command, temp_dir};
use common::dns::{Answer, FakeDns};
use common::*;
use serde_json::Value;
use switchyard::server::Running;

const NAME: &str = "api.test";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Echo upstreams named `a`, `b`, `c` on 127.0.0.1, .2 and .3, all on the
/// same port (a DNS name carries one port for all its addresses).
async fn three_upstreams() -> u16 {
    for _ in 0..20 {
        let first = echo("a").await;
        let port = first.port();
        let b = switchyard::demo::start_echo("b", SocketAddr::new(ip("127.0.0.2"), port)).await;
        let c = switchyard::demo::start_echo("c", SocketAddr::new(ip("127.0.0.3"), port)).await;
        if b.is_ok() && c.is_ok() {
            return port;
        }
    }
    panic!("no port free on 127.0.0.1-3");
}

fn yaml(dns: &FakeDns, port: u16, extra: &str) -> String {
    format!(
        "dns: {{resolvers: [\"{}\"], refresh: 100ms{extra}}}\nroutes:\n  - service: web\nservices:\n  web:\n    health_check: {{path: /, interval: 300ms, timeout: 300ms, jitter: 0ms, healthy_threshold: 1, unhealthy_threshold: 10}}\n    instances:\n      - address: \"{NAME}:{port}\"\n        tags: [dns]\n",
        dns.address
    )
}

fn instances(view: &Value) -> Vec<Value> {
    let mut list = view["instances"].as_array().cloned().unwrap_or_default();
    list.sort_by_key(|i| i["id"].as_str().unwrap_or_default().to_string());
    list
}

fn ids(view: &Value) -> Vec<String> {
    instances(view)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (up to 30 s) until the server saw `more` queries after `from`.
async fn queries_after(dns: &FakeDns, from: usize, more: usize) {
    let started = Instant::now();
    while dns.queries() < from + more {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the proxy stopped asking"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resolutions of `service` that ended in `result`, from /metrics.
async fn resolutions(running: &Running, result: &str) -> u64 {
    let text = scrape(running.admin_address()).await;
    let label = format!("result=\"{result}\"");
    sum(&text, "switchyard_dns_resolutions_total", &label) as u64
}

/// Waits (up to 30 s) until `more` resolutions failed after `from`.
async fn failures_after(running: &Running, from: u64, more: u64) {
    let started = Instant::now();
    while resolutions(running, "failed").await < from + more {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "resolutions never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all_healthy(view: &Value, n: usize) -> bool {
    let list = instances(view);
    list.len() == n && list.iter().all(|i| i["health"] == "healthy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_an_instance_and_a_removed_record_takes_only_its_own() {
    let port = three_upstreams().await;
    let dns = FakeDns::start().await;
    dns.set(
        NAME,
        Answer::Records(vec![ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")], 1),
    );
    let running = proxy(&yaml(&dns, port, "")).await;
    let view = view_until(&running, "web", "3 healthy instances", |v| {
        all_healthy(v, 3)
    })
    .await;
    assert_eq!(
        ids(&view),
        [1, 2, 3].map(|n| format!("{NAME}:{port}:127.0.0.{n}")),
    );
    let first = &instances(&view)[0];
    assert_eq!(first["tags"][0], "dns", "settings are inherited: {first}");
    assert_eq!(first["metadata"]["dns_name"], NAME);

    let (counts, _) = distribution(&format!("{}/", base(&running)), 30).await;
    for name in ["a", "b", "c"] {
        assert!(counts.get(name).copied().unwrap_or(0) >= 5, "{counts:?}");
    }

    // Refreshes that return the same addresses change nothing.
    let before = instances(&service_view(&running, "web").await);
    queries_after(&dns, dns.queries(), 6).await;
    let after = instances(&service_view(&running, "web").await);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old["registered_at"], new["registered_at"], "{new}");
        assert_eq!(new["health"], "healthy", "{new}");
    }

    // .3 leaves; .1 and .2 keep their state (same registration, health,
    // counters).
    dns.set(
        NAME,
        Answer::Records(vec![ip("127.0.0.1"), ip("127.0.0.2")], 1),
    );
    let view = view_until(&running, "web", ".3 leaves", |v| instances(v).len() == 2).await;
    for (old, new) in before.iter().zip(instances(&view)) {
        assert_eq!(old["id"], new["id"]);
        assert_eq!(old["registered_at"], new["registered_at"], "{new}");
        assert_eq!(new["health"], "healthy", "{new}");
        assert!(new["requests_total"].as_u64() >= old["requests_total"].as_u64());
        assert!(new["requests_total"].as_u64().unwrap() >= 5, "{new}");
    }
    let (counts, _) = distribution(&format!("{}/", base(&running)), 10).await;
    assert!(!counts.contains_key("c"), "{counts:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_failing_resolver_keeps_the_last_answer_and_nxdomain_removes() {
    let port = three_upstreams().await;
    let dns = FakeDns::start().await;
    dns.set(
        NAME,
        Answer::Records(vec![ip("127.0.0.1"), ip("127.0.0.2")], 1),
    );
    let running = proxy(&yaml(&dns, port, ", hold: 1s")).await;
    let url = format!("{}/", base(&running));
    let view = view_until(&running, "web", "2 healthy instances", |v| {
        all_healthy(v, 2)
    })
    .await;
    let kept = ids(&view);

    for failure in [Answer::Silent, Answer::ServFail] {
        let failed = resolutions(&running, "failed").await;
        dns.set(NAME, failure.clone());
        // Refreshes fail (a silent server times out on each), past
        // dns.hold: the instances stay and serve.
        failures_after(&running, failed, 2).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        failures_after(&running, failed, 3).await;
        let view = service_view(&running, "web").await;
        assert_eq!(ids(&view), kept, "after {failure:?}: {view}");
        let client = client();
        for _ in 0..4 {
            assert_eq!(get(&client, &url, &[]).await.status, 200, "{failure:?}");
        }
    }

    dns.set(NAME, Answer::NxDomain);
    view_until(&running, "web", "NXDOMAIN removes the instances", |v| {
        instances(v).is_empty()
    })
    .await;
    let got = get(&client(), &url, &[]).await;
    assert_eq!(got.status, 503, "{}", got.body);

    // An empty answer (the name exists, no address) removes them too; the
    // name coming back brings them back.
    dns.set(NAME, Answer::Records(vec![ip("127.0.0.3")], 1));
    view_until(&running, "web", "the name is back", |v| all_healthy(v, 1)).await;
    dns.set(NAME, Answer::Records(vec![], 1));
    view_until(&running, "web", "an empty answer removes", |v| {
        instances(v).is_empty()
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_start_up_succeed_with_a_name_that_does_not_resolve() {
    let port = three_upstreams().await;
    let dns = FakeDns::start().await;
    dns.set(NAME, Answer::NxDomain);
    let text = format!(
        "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n{}",
        yaml(&dns, port, "")
    );
    let path = temp_dir().join("proxy.yaml");
    std::fs::write(&path, &text).unwrap();
    // `check` runs its own runtime; keep it off this one's threads.
    let output = tokio::task::spawn_blocking(move || {
        command()
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("services.web.instances: warning: `api.test` does not resolve"),
        "{stderr}"
    );

    let running = proxy(&yaml(&dns, port, "")).await;
    let url = format!("{}/", base(&running));
    assert_eq!(get(&client(), &url, &[]).await.status, 503);
    // A and AAAA records both become instances.
    dns.set(NAME, Answer::Records(vec![ip("127.0.0.2"), ip("::1")], 1));
    let view = view_until(&running, "web", "the instances appear", |v| {
        instances(v).len() == 2
    })
    .await;
    assert_eq!(
        ids(&view),
        [
            format!("{NAME}:{port}:127.0.0.2"),
            format!("{NAME}:{port}:::1")
        ]
    );
    dns.set(NAME, Answer::Records(vec![ip("127.0.0.2")], 1));
    view_until(&running, "web", "the AAAA record leaves", |v| {
        all_healthy(v, 1)
    })
    .await;
    let got = get(&client(), &url, &[]).await;
    assert_eq!((got.status, got.served_by()), (200, "b".to_string()));
    running.shutdown().await;
}

#[test]
fn bad_host_names_and_dns_settings_are_refused_with_their_field() {
    let bad = |rest: &str| {
        let text = format!("listeners:\n  - address: 127.0.0.1:0\n{rest}");
        switchyard::config::parse(&text).unwrap_err().to_string()
    };
    let errors = bad("services:\n  web:\n    instances:\n      - address: \"bad_-.name-:80\"\n      - address: \"api.test:0\"\n      - address: \"api.test:http\"\n");
    assert!(
        errors.contains("services.web.instances[0].address: `bad_-.name-` is not a host name"),
        "{errors}"
    );
    assert!(
        errors.contains("services.web.instances[1].address: `0` is not a port"),
        "{errors}"
    );
    assert!(
        errors.contains("services.web.instances[2].address: `http` is not a port"),
        "{errors}"
    );
    let errors = bad("dns: {resolvers: [\"nowhere\"], refresh: 0s}\n");
    assert!(errors.contains("dns.resolvers[0]"), "{errors}");
    assert!(
        errors.contains("dns.refresh: must be more than zero"),
        "{errors}"
    );
    let errors = bad("dns: {resolver: [\"127.0.0.1\"]}\n");
    assert!(errors.contains("resolver"), "{errors}");
    // A mistyped IP address is not taken for a name.
    let errors = bad("services:\n  web:\n    instances:\n      - address: \"127.0.0.300:80\"\n");
    assert!(errors.contains("is not an IP address"), "{errors}");
}
