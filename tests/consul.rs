//! Consul discovery against a stand-in Consul agent (tests/common/consul.rs,
//! written from Consul's documented HTTP API; a real Consul cannot be
//! installed here): instances follow Consul, blocking queries (no tight
//! polling), outages keep the last instances, recovery, index resets, bad
//! answers, and switchyard's own registration.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::consul::{entry, FakeConsul};
use common::*;
use http::Method;
use serde_json::Value;
use switchyard::server::Running;

fn yaml(consul: &FakeConsul, wait: &str, extra: &str) -> String {
    format!(
        "consul: {{address: \"{}\", wait: {wait}{extra}}}\nroutes:\n  - service: web\nservices:\n  web:\n    discovery: {{consul: {{service: web}}}}\n",
        consul.address
    )
}

async fn served_set(running: &Running, n: usize) -> HashSet<String> {
    let client = client();
    let mut seen = HashSet::new();
    for _ in 0..n {
        let got = get(&client, &format!("{}/", base(running)), &[]).await;
        seen.insert(if got.status == 200 {
            got.served_by()
        } else {
            got.status.to_string()
        });
    }
    seen
}

fn names(view: &Value) -> Vec<String> {
    let mut names: Vec<String> = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_follow_consul_with_blocking_queries() {
    let (a, b) = (echo("a").await, echo("b").await);
    let consul = FakeConsul::start().await;
    consul.set("web", vec![entry("node-a", a, 1, "passing")]);
    let proxy = proxy(&yaml(&consul, "1s", "")).await;

    let view = view_until(&proxy, "web", "node-a appears", |v| {
        names(v) == ["node-a:web"]
    })
    .await;
    assert_eq!(view["instances"][0]["source"], "consul");
    assert_eq!(view["instances"][0]["metadata"]["consul_node"], "node-a");
    assert_eq!(view["discovery"]["stale"], false);
    assert_eq!(
        served_set(&proxy, 4).await,
        HashSet::from(["a".to_string()])
    );

    // Added, then removed, in Consul.
    consul.set(
        "web",
        vec![
            entry("node-a", a, 1, "passing"),
            entry("node-b", b, 1, "passing"),
        ],
    );
    view_until(&proxy, "web", "node-b appears", |v| names(v).len() == 2).await;
    assert_eq!(
        served_set(&proxy, 6).await,
        HashSet::from(["a".to_string(), "b".to_string()])
    );
    // A critical check hides it (passing_only asks Consul for passing ones).
    consul.set(
        "web",
        vec![
            entry("node-a", a, 1, "critical"),
            entry("node-b", b, 1, "passing"),
        ],
    );
    view_until(&proxy, "web", "node-a leaves", |v| {
        names(v) == ["node-b:web"]
    })
    .await;
    assert_eq!(
        served_set(&proxy, 4).await,
        HashSet::from(["b".to_string()])
    );

    // Idle: the watcher blocks in Consul instead of polling. With a 1 s
    // wait, 3 s of quiet allow about 3 queries; a polling loop would make
    // hundreds.
    let before = consul.health_queries();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_queries = consul.health_queries() - before;
    eprintln!("{idle_queries} queries in 3 s of quiet");
    assert!(
        idle_queries <= 5,
        "{idle_queries} queries while nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_last_instances_serving_until_consul_recovers() {
    let (a, b) = (echo("a").await, echo("b").await);
    let consul = FakeConsul::start().await;
    consul.set("web", vec![entry("node-a", a, 1, "passing")]);
    let proxy = proxy(&yaml(&consul, "1s", "")).await;
    view_until(&proxy, "web", "node-a appears", |v| {
        names(v) == ["node-a:web"]
    })
    .await;

    consul.fail_with(Some((500, "No cluster leader")));
    let view = view_until(&proxy, "web", "marked stale", |v| {
        v["discovery"]["stale"] == true
    })
    .await;
    assert!(
        view["discovery"]["last_error"]
            .as_str()
            .unwrap()
            .contains("No cluster leader"),
        "{view}"
    );
    assert_eq!(
        served_set(&proxy, 6).await,
        HashSet::from(["a".to_string()]),
        "still routing to the last instances"
    );

    // A garbage answer (a 200 that is not Consul's) is refused the same
    // way: once the watcher has read it (its error is the last one), the
    // instances are still there.
    consul.fail_with(Some((200, "<html>proxy error</html>")));
    let view = view_until(&proxy, "web", "the garbage answer is read", |v| {
        v["discovery"]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Consul's answer"))
    })
    .await;
    assert_eq!(names(&view), ["node-a:web"], "{view}");

    // Recovery, with new data.
    consul.fail_with(None);
    consul.set("web", vec![entry("node-b", b, 1, "passing")]);
    let view = view_until(&proxy, "web", "recovered", |v| {
        names(v) == ["node-b:web"] && v["discovery"]["stale"] == false
    })
    .await;
    assert!(view["discovery"]["last_error"].is_null());
    assert_eq!(
        served_set(&proxy, 4).await,
        HashSet::from(["b".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_goes_backwards_starts_the_watch_over() {
    let (a, b) = (echo("a").await, echo("b").await);
    let consul = FakeConsul::start().await;
    consul.set_with_index("web", vec![entry("node-a", a, 1, "passing")], 500);
    let proxy = proxy(&yaml(&consul, "1s", "")).await;
    view_until(&proxy, "web", "node-a appears", |v| {
        names(v) == ["node-a:web"]
    })
    .await;

    // As after a snapshot restore: a lower index and different data.
    consul.set_with_index("web", vec![entry("node-b", b, 1, "passing")], 3);
    let view = view_until(&proxy, "web", "node-b after the reset", |v| {
        names(v) == ["node-b:web"]
    })
    .await;
    assert_eq!(view["discovery"]["index"], 3);
    // And it keeps following from there.
    consul.set(
        "web",
        vec![
            entry("node-a", a, 1, "passing"),
            entry("node-b", b, 1, "passing"),
        ],
    );
    view_until(&proxy, "web", "both after the reset", |v| {
        names(v).len() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_instances_go_through_switchyards_own_health_checks() {
    let (a, dead) = (echo("a").await, dead_address().await);
    let consul = FakeConsul::start().await;
    // Consul says both pass; switchyard's own checks know better.
    consul.set(
        "web",
        vec![
            entry("node-a", a, 1, "passing"),
            entry("node-dead", dead, 1, "passing"),
        ],
    );
    let text = yaml(&consul, "1s", "").replace(
        "    discovery:",
        "    health_check: {type: tcp, interval: 50ms, timeout: 40ms, jitter: 0ms}\n    discovery:",
    );
    let proxy = proxy(&text).await;
    let view = view_until(&proxy, "web", "checked", |v| {
        v["instances"]
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|i| i["last_check_at"].is_string()))
            && v["healthy_instances"] == 1
    })
    .await;
    let dead_view = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "node-dead:web")
        .unwrap()
        .clone();
    assert_eq!(dead_view["health"], "unhealthy", "{dead_view}");
    assert_eq!(
        served_set(&proxy, 6).await,
        HashSet::from(["a".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_registers_itself_and_deregisters_on_shutdown() {
    let consul = FakeConsul::start().await;
    let proxy = proxy(&yaml(&consul, "1s", ", register: {name: edge, tags: [lb]}")).await;
    let started = Instant::now();
    while consul.registered().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let registration = consul.registered()[0].clone();
    let listener = proxy.listeners()[0].address;
    assert_eq!(registration["Name"], "edge");
    assert_eq!(registration["Port"], listener.port());
    assert_eq!(registration["Tags"][0], "lb");
    assert_eq!(
        registration["Check"]["HTTP"],
        format!("http://{}/admin/health", proxy.admin_address())
    );
    let id = registration["ID"].as_str().unwrap().to_string();
    // The check it registered answers.
    let health = get(
        &client(),
        &format!("http://{}/admin/health", proxy.admin_address()),
        &[],
    )
    .await;
    let health = common::admin::checked("GET", "/admin/health", health);
    assert_eq!(health.status, 200);
    proxy.shutdown().await;
    assert_eq!(consul.deregistered(), [id]);
}

#[test]
fn check_tests_the_consul_connection() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let consul = runtime.block_on(FakeConsul::start());
    let dir = common::binary::temp_dir();
    let path = dir.join("proxy.yaml");
    let text = format!(
        "listeners: [{{address: 127.0.0.1:0}}]\nadmin: {{address: 127.0.0.1:0}}\n{}",
        yaml(&consul, "5s", "")
    );
    std::fs::write(&path, &text).unwrap();
    let output = common::binary::command()
        .args(["check", "--connect"])
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("leader 127.0.0.1:8300"));

    let dead = runtime.block_on(dead_address());
    std::fs::write(
        &path,
        text.replace(&consul.address.to_string(), &dead.to_string()),
    )
    .unwrap();
    let output = common::binary::command()
        .args(["check", "--connect"])
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach Consul"));

    // Without --connect, `check` validates offline (like `nginx -t`): an
    // unreachable agent does not make a valid file invalid.
    let output = common::binary::command()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(": ok ("), "{stdout}");
    assert!(!stdout.contains("consul at"), "not contacted: {stdout}");
}

/// The JSON log events of `process` named `message`, waiting (up to 20 s)
/// until there are `count` of them.
fn events(process: &common::binary::Process, message: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<Value> = process
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["message"] == message)
            .collect();
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} `{message}` events in 20s, wanted {count}: {found:?}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_membership_changes_are_logged_once_each_with_counts() {
    let (a, b) = (echo("a").await, echo("b").await);
    let consul = FakeConsul::start().await;
    consul.set("web", vec![entry("node-a", a, 1, "passing")]);
    let config = format!(
        "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n{}",
        yaml(&consul, "1s", "")
    );
    let process = tokio::task::spawn_blocking(move || common::binary::Process::start(&config, &[]))
        .await
        .unwrap();
    let message = "Consul membership changed";
    let first = tokio::task::block_in_place(|| events(&process, message, 1));
    assert_eq!(
        (
            &first[0]["added"],
            &first[0]["removed"],
            &first[0]["instances"]
        ),
        (&Value::from(1), &Value::from(0), &Value::from(1)),
        "{first:?}"
    );
    assert_eq!(first[0]["service"], "web");

    consul.set(
        "web",
        vec![
            entry("node-a", a, 1, "passing"),
            entry("node-b", b, 1, "passing"),
        ],
    );
    let second = tokio::task::block_in_place(|| events(&process, message, 2));
    assert_eq!(second[1]["added"], 1, "{second:?}");
    assert_eq!(second[1]["instances"], 2, "{second:?}");
    assert!(
        second[1]["added_ids"].as_str().unwrap().contains("node-b"),
        "{second:?}"
    );

    // A new index with the same members (a weight changed) is no membership
    // change; the removal after it is the third event.
    consul.set(
        "web",
        vec![
            entry("node-a", a, 5, "passing"),
            entry("node-b", b, 1, "passing"),
        ],
    );
    let admin = process.admin;
    let started = Instant::now();
    loop {
        let (_, body) = common::admin::call(admin, Method::GET, "/admin/services/web")
            .await
            .unwrap();
        let view: Value = serde_json::from_str(&body).unwrap();
        if view["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["weight"] == 5)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "weight never changed: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consul.set("web", vec![entry("node-b", b, 1, "passing")]);
    let third = tokio::task::block_in_place(|| events(&process, message, 3));
    assert_eq!(
        third.len(),
        3,
        "the weight change was not logged: {third:?}"
    );
    assert_eq!(third[2]["removed"], 1, "{third:?}");
    assert_eq!(third[2]["added"], 0, "{third:?}");
    assert!(
        third[2]["removed_ids"].as_str().unwrap().contains("node-a"),
        "{third:?}"
    );
}
