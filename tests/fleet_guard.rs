//! Guarded pushes in fleet mode: the node that takes the push judges it
//! over every node's published traffic, and a tripped guard's rollback is
//! a fleet push that every node applies. Real etcd, nodes in this process,
//! real upstreams, traffic sent by the test through every node; the CLI is
//! the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::binary::config_cli;
use common::etcd::{self, Etcd};
use common::traffic::Traffic;
use http::{Method, Response};
use http_body_util::Full;
use serde_json::Value;
use switchyard::config::history::ConfigVersion;
use switchyard::server::{LiveOptions, Running};

/// Generous: the machine may be loaded.
const EVENTUALLY: Duration = Duration::from_secs(30);

macro_rules! need_etcd {
    () => {
        if !etcd::available() {
            common::skip_without(etcd::ETCD, "apt-get install etcd-server");
            return;
        }
    };
}

struct Node {
    dir: PathBuf,
    running: Option<Running>,
}

impl Node {
    fn running(&self) -> &Running {
        self.running.as_ref().expect("node is running")
    }

    fn url(&self) -> String {
        format!("http://{}/", self.running().listeners()[0].address)
    }

    fn admin(&self) -> SocketAddr {
        self.running().admin_address()
    }

    fn version(&self) -> Option<ConfigVersion> {
        self.running().reloader()?.status().current_version
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

async fn nodes<const N: usize>(etcd: &Etcd, test: &str, names: [&str; N]) -> [Node; N] {
    let endpoints = etcd.yaml_endpoints();
    let mut started = Vec::with_capacity(N);
    for name in names {
        let dir = common::binary::temp_dir();
        std::fs::write(
            dir.join("proxy.yaml"),
            format!(
                "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nfleet:\n  etcd:\n    endpoints: {endpoints}\n    dial_timeout: 500ms\n    request_timeout: 2s\n  prefix: /switchyard-test/{test}\n  node: {name}\n"
            ),
        )
        .unwrap();
        let mut options = LiveOptions::new(dir.join("proxy.yaml"));
        options.state_dir = Some(dir.join("state"));
        options.watch = false;
        let running = switchyard::server::start_live(options)
            .await
            .expect("start fleet node");
        started.push(Node {
            dir,
            running: Some(running),
        });
    }
    let Ok(nodes) = <[Node; N]>::try_from(started) else {
        unreachable!("one node per name")
    };
    nodes
}

/// A fleet version routing everything to `web` on `upstream`; `marker`
/// makes each text distinct.
fn shared(upstream: SocketAddr, marker: u32) -> String {
    format!(
        "# marker {marker}\nlisteners:\n  - address: 127.0.0.1:0\naccess_log:\n  enabled: false\nroutes:\n  - path_prefix: /\n    service: web\nservices:\n  web:\n    instances:\n      - id: web-1\n        address: {upstream}\n"
    )
}

async fn admin(node: &Node, method: Method, path: &str, body: Option<String>) -> (u16, Value) {
    let body = body.map(|text| ("application/yaml", Bytes::from(text)));
    let (status, text) = common::admin::call_raw(node.admin(), method, path, None, body)
        .await
        .expect("admin call");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status.as_u16(), json)
}

async fn push(node: &Node, query: &str, text: &str) -> (u16, Value) {
    let path = format!("/admin/config{query}");
    admin(node, Method::POST, &path, Some(text.to_string())).await
}

async fn all_apply(nodes: &[&Node], version: ConfigVersion) {
    let start = Instant::now();
    while !nodes.iter().all(|n| n.version() == Some(version)) {
        assert!(
            start.elapsed() < EVENTUALLY,
            "not every node applies version {} within {EVENTUALLY:?}",
            version.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream answering every request with `status`.
async fn answering(status: u16) -> SocketAddr {
    common::upstream(move |_req| async move {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap()
    })
    .await
}

/// Waits for the guard of `node` to reach a verdict (`limit` at most) and
/// returns its report.
async fn verdict(node: &Node, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, json) = admin(node, Method::GET, "/admin/config/guard", None).await;
        assert_eq!(status, 200, "{json}");
        let report = json["current"].clone();
        if report["state"]
            .as_str()
            .is_some_and(|s| s != "running" && s != "rolling_back")
        {
            return report;
        }
        assert!(
            started.elapsed() < limit,
            "no guard verdict within {limit:?}: {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn versions(node: &Node) -> Vec<Value> {
    let (status, json) = admin(node, Method::GET, "/admin/config/versions", None).await;
    assert_eq!(status, 200, "{json}");
    json["versions"].as_array().unwrap().clone()
}

async fn get(url: &str) -> common::Got {
    common::get(&common::client(), url, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_push_to_an_upstream_answering_500_is_rolled_back_on_every_node() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let good = common::echo("good").await;
    let bad = answering(500).await;
    let [a, b] = nodes(&etcd, "fleet-guard-trip", ["a", "b"]).await;
    let (status, first) = push(&a, "", &shared(good, 1)).await;
    assert_eq!(status, 200, "{first}");
    all_apply(&[&a, &b], ConfigVersion(1)).await;
    let on_a = Traffic::start(a.url(), 2);
    let on_b = Traffic::start(b.url(), 2);
    on_a.wait_for(100).await;
    on_b.wait_for(100).await;

    // The guarded push goes through node a with the CLI; the guard judges
    // both nodes' traffic, trips, and pushes version 1's text back.
    let file = a.dir.join("bad.yaml");
    std::fs::write(&file, shared(bad, 2)).unwrap();
    let pushed = Instant::now();
    let (code, out) = config_cli(
        a.admin(),
        &[
            "apply",
            file.to_str().unwrap(),
            "--guard",
            "error_rate < 1%",
            "--for",
            "20s",
            "--min-requests",
            "50",
        ],
    )
    .await;
    let took = pushed.elapsed();
    assert_eq!(code, 3, "exit code 3 for a rollback:\n{out}");
    assert!(
        out.contains("pushed") && out.contains("as version 2"),
        "{out}"
    );
    assert!(
        out.contains("verdict: guard tripped: fleet all services error_rate")
            || out.contains("verdict: guard tripped: fleet service web error_rate"),
        "{out}"
    );
    assert!(out.contains("(2 nodes)"), "both nodes judged:\n{out}");
    assert!(out.contains("restored as version 3"), "{out}");
    assert!(took < Duration::from_secs(20), "rolled back after {took:?}");
    println!("fleet guard tripped and the rollback was pushed after {took:?}");

    // Both nodes apply the rollback and serve the old upstream again.
    all_apply(&[&a, &b], ConfigVersion(3)).await;
    for node in [&a, &b] {
        let got = get(&node.url()).await;
        assert_eq!((got.status, got.served_by()), (200, "good".into()));
    }
    let report = verdict(&a, EVENTUALLY).await;
    assert_eq!(report["state"], "rolled_back", "{report}");
    assert_eq!(report["rollback_version"], 3);
    assert_eq!(report["fleet"]["nodes"], serde_json::json!(["a", "b"]));

    // The fleet history, read on the other node, has the push and the
    // rollback with their causes, and the guard's verdict on version 2.
    let listed = versions(&b).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[1]["source"], "push");
    assert_eq!(
        listed[1]["guard"]["state"], "rolled_back",
        "{:?}",
        listed[1]
    );
    assert_eq!(listed[1]["guard"]["rollback_version"], 3);
    assert_eq!(listed[2]["source"], "rollback");
    assert_eq!(listed[2]["rolled_back_from"], 1);
    let cause = listed[2]["cause"].as_str().unwrap();
    assert!(
        cause.starts_with("guard tripped: fleet ") && cause.ends_with("(2 nodes)"),
        "{cause}"
    );
    let (_, text) = admin(&b, Method::GET, "/admin/config/versions/3", None).await;
    assert!(text.as_str().unwrap().starts_with("# marker 1\n"), "{text}");

    let statuses = on_a.stop().await;
    assert!(
        statuses.contains(&500),
        "some requests met the bad upstream"
    );
    on_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harmless_guarded_push_is_kept_over_the_merged_figures_of_both_nodes() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let good = common::echo("good").await;
    let [a, b, mut c] = nodes(&etcd, "fleet-guard-keep", ["a", "b", "c"]).await;
    let (status, _) = push(&a, "", &shared(good, 1)).await;
    assert_eq!(status, 200);
    all_apply(&[&a, &b, &c], ConfigVersion(1)).await;
    // Most of the traffic goes through b: a's own figures alone would be
    // a fraction of what the guard judges.
    let on_a = Traffic::start(a.url(), 1);
    let on_b = Traffic::start(b.url(), 3);
    on_b.wait_for(200).await;
    // A baseline as long as the window: 6 s of traffic before the push.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let query =
        "?guard=error_rate%20%3C%201%25&guard=web%3A%20p99%20%3C%202s&for=6s&min_requests=50";
    let (status, answer) = push(&a, query, &shared(good, 2)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], "pushed");
    assert_eq!(answer["version"], 2);
    assert_eq!(answer["guard"]["state"], "running", "{answer}");
    let sent_on_a = on_a.count();
    // Node c stops right after the push: it is left out, and named.
    c.stop().await;

    // A second change on the same node while the guard runs is refused.
    let (status, refused) = push(&a, "", &shared(good, 3)).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["errors"][0]
            .as_str()
            .unwrap()
            .contains("version 2 is being watched"),
        "{refused}"
    );
    // So is one through another node, naming the judging node (once that
    // node has seen the guard's record).
    let fleet_b = b.running().reloader().and_then(|r| r.fleet()).unwrap();
    let seen = Instant::now();
    while fleet_b.guard_elsewhere().is_none() {
        assert!(seen.elapsed() < EVENTUALLY, "b never saw a's guard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fleet_b.guard_elsewhere(),
        Some(("a".to_string(), ConfigVersion(2)))
    );
    let (status, refused) = push(&b, "", &shared(good, 3)).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("node a is watching version 2 with a config guard"),
        "{refused}"
    );
    // Every node publishes its per-second figures meanwhile.
    let (status, fleet) = admin(&b, Method::GET, "/admin/fleet", None).await;
    assert_eq!(status, 200, "{fleet}");
    let listed = fleet["nodes"].as_array().unwrap();
    let own = listed.iter().find(|n| n["node"] == "b").unwrap();
    assert_eq!(own["recent"]["scopes"][0]["scope"], "all", "{own}");
    println!(
        "node b's status value with its recent traffic: {} bytes ({} bytes of it the per-second figures)",
        own.to_string().len(),
        own["recent"].to_string().len()
    );

    let report = verdict(&a, EVENTUALLY).await;
    let sent_on_a = on_a.count() - sent_on_a;
    assert_eq!(report["state"], "kept", "{report}");
    let text = report["verdict"].as_str().unwrap();
    assert!(text.starts_with("kept: every guard held for 6s"), "{text}");
    assert!(
        text.ends_with("(2 nodes; left out, not publishing their figures: c)"),
        "{text}"
    );
    assert_eq!(report["fleet"]["nodes"], serde_json::json!(["a", "b"]));
    assert_eq!(report["fleet"]["left_out"], serde_json::json!(["c"]));
    // The judged window holds b's requests too: far more than a sent.
    let all = &report["figures"][0];
    assert_eq!(all["scope"], "all");
    let judged = all["window"]["requests"].as_u64().unwrap();
    assert!(
        judged > 3 * sent_on_a as u64 / 2,
        "judged {judged} requests; a alone sent {sent_on_a}"
    );
    assert!(
        all["baseline"]["requests"].as_u64().unwrap() >= 100,
        "{all}"
    );
    println!("fleet guard kept version 2 over {judged} requests (a alone: {sent_on_a})");

    all_apply(&[&a, &b], ConfigVersion(2)).await;
    let listed = versions(&b).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[1]["guard"]["state"], "kept", "{:?}", listed[1]);
    // Once the verdict is in, changes go through again.
    let (status, again) = push(&a, "", &shared(good, 3)).await;
    assert_eq!(status, 200, "{again}");
    on_a.stop().await;
    on_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_push_with_too_little_traffic_is_kept_as_not_enough_traffic() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let good = common::echo("good").await;
    let [a, b] = nodes(&etcd, "fleet-guard-quiet", ["a", "b"]).await;
    let (status, _) = push(&a, "", &shared(good, 1)).await;
    assert_eq!(status, 200);
    all_apply(&[&a, &b], ConfigVersion(1)).await;
    for node in [&a, &b] {
        for _ in 0..5 {
            assert_eq!(get(&node.url()).await.status, 200);
        }
    }
    let query = "?guard=error_rate%20%3C%201%25&for=3s";
    let (status, answer) = push(&b, query, &shared(good, 2)).await;
    assert_eq!(status, 200, "{answer}");
    let report = verdict(&b, EVENTUALLY).await;
    assert_eq!(report["state"], "not_enough_traffic", "{report}");
    let text = report["verdict"].as_str().unwrap();
    assert!(text.contains("not enough traffic"), "{text}");
    assert!(text.ends_with("(2 nodes)"), "{text}");
    all_apply(&[&a, &b], ConfigVersion(2)).await;
    let listed = versions(&a).await;
    assert_eq!(listed[1]["guard"]["state"], "not_enough_traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_push_from_another_node_ends_a_running_fleet_guard_as_kept() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let good = common::echo("good").await;
    let [a, b] = nodes(&etcd, "fleet-guard-forced", ["a", "b"]).await;
    let (status, _) = push(&a, "", &shared(good, 1)).await;
    assert_eq!(status, 200);
    all_apply(&[&a, &b], ConfigVersion(1)).await;
    // A long window: only the forced push can end it within the test.
    let query = "?guard=error_rate%20%3C%201%25&for=120s";
    let (status, answer) = push(&a, query, &shared(good, 2)).await;
    assert_eq!(status, 200, "{answer}");
    all_apply(&[&a, &b], ConfigVersion(2)).await;
    let (status, answer) = push(&b, "?force=true", &shared(good, 3)).await;
    assert_eq!(status, 200, "{answer}");
    all_apply(&[&a, &b], ConfigVersion(3)).await;
    let report = verdict(&a, EVENTUALLY).await;
    assert_eq!(report["state"], "ended_by_force", "{report}");
    let text = report["verdict"].as_str().unwrap();
    assert!(text.contains("version 3 was pushed meanwhile"), "{text}");
    // The forced version serves: nothing was rolled back.
    assert_eq!(a.version(), Some(ConfigVersion(3)));
    assert_eq!(b.version(), Some(ConfigVersion(3)));
}
