//! Fleet mode against real etcd members started by the tests: shared
//! config versions, shared registry, node status, and the faults (etcd
//! killed, a member of three lost, compaction, a node restarted while etcd
//! is down). Nodes run in this process (`start_live`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::{self, Etcd};
use http::Method;
use serde_json::Value;
use switchyard::config::history::ConfigVersion;
use switchyard::server::{LiveOptions, Running};

/// Generous: the machine may be loaded.
const EVENTUALLY: Duration = Duration::from_secs(20);

macro_rules! need_etcd {
    () => {
        if !etcd::available() {
            common::skip_without(etcd::ETCD, "apt-get install etcd-server");
            return;
        }
    };
}

/// One node: its directory (proxy.yaml and state) and the running proxy.
struct Node {
    name: String,
    dir: PathBuf,
    running: Option<Running>,
}

impl Node {
    fn running(&self) -> &Running {
        self.running.as_ref().expect("node is running")
    }

    fn traffic(&self) -> String {
        format!("http://{}", self.running().listeners()[0].address)
    }

    fn admin(&self) -> SocketAddr {
        self.running().admin_address()
    }

    fn version(&self) -> Option<ConfigVersion> {
        self.running().reloader()?.status().current_version
    }

    fn fleet_status(&self) -> switchyard::fleet::NodeStatus {
        self.running()
            .reloader()
            .and_then(|r| r.fleet())
            .expect("fleet node")
            .status()
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    async fn start(&mut self) {
        let mut options = LiveOptions::new(self.dir.join("proxy.yaml"));
        options.state_dir = Some(self.dir.join("state"));
        options.watch = false;
        self.running = Some(
            switchyard::server::start_live(options)
                .await
                .expect("start fleet node"),
        );
    }
}

/// The node's own file: listeners, admin, and the fleet section.
fn bootstrap(endpoints: &str, prefix: &str, node: &str) -> String {
    format!(
        "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nfleet:\n  etcd:\n    endpoints: {endpoints}\n    dial_timeout: 500ms\n    request_timeout: 2s\n  prefix: {prefix}\n  node: {node}\n"
    )
}

async fn node(endpoints: &str, prefix: &str, name: &str) -> Node {
    let dir = common::binary::temp_dir();
    std::fs::write(dir.join("proxy.yaml"), bootstrap(endpoints, prefix, name)).unwrap();
    let mut node = Node {
        name: name.to_string(),
        dir,
        running: None,
    };
    node.start().await;
    node
}

/// Nodes `names` of one fleet on `etcd`'s members, keys under `prefix`.
async fn nodes<const N: usize>(etcd: &Etcd, prefix: &str, names: [&str; N]) -> [Node; N] {
    let endpoints = etcd.yaml_endpoints();
    let mut started = Vec::with_capacity(N);
    for name in names {
        started.push(node(&endpoints, prefix, name).await);
    }
    let Ok(nodes) = <[Node; N]>::try_from(started) else {
        unreachable!("one node per name")
    };
    nodes
}

/// A shared version: one route to `web` on `upstream`, `/reg` to the
/// registered service `reg`, and a marker that makes each text distinct.
fn shared(upstream: SocketAddr, marker: u32) -> String {
    format!(
        "# marker {marker}\nlisteners:\n  - address: 127.0.0.1:0\nregistry:\n  allow_new_services: true\nroutes:\n  - path_prefix: /reg\n    service: reg\n  - path_prefix: /\n    service: web\nservices:\n  reg: {{}}\n  web:\n    instances:\n      - id: web-1\n        address: {upstream}\n"
    )
}

async fn admin(
    node: &Node,
    method: Method,
    path: &str,
    body: Option<(&str, String)>,
) -> (u16, Value) {
    let body = body.map(|(kind, text)| (kind, bytes::Bytes::from(text)));
    let (status, text) = common::admin::call_raw(node.admin(), method, path, None, body)
        .await
        .expect("admin call");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status.as_u16(), json)
}

async fn push(node: &Node, text: &str) -> (u16, Value) {
    admin(
        node,
        Method::POST,
        "/admin/config",
        Some(("application/yaml", text.to_string())),
    )
    .await
}

/// Pushes and returns the new version (the push must succeed).
async fn push_ok(node: &Node, text: &str) -> ConfigVersion {
    let (status, body) = push(node, text).await;
    assert_eq!(status, 200, "push refused: {body}");
    ConfigVersion(body["version"].as_u64().expect("a new version"))
}

/// Polls `check` every 10 ms until it holds, up to `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

async fn served_by(url: &str) -> Option<String> {
    let client = common::client();
    let request = http::Request::get(url)
        .body(http_body_util::Full::default())
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .ok()?
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    response
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn eventually_served(limit: Duration, url: &str, by: &str) -> Duration {
    let start = Instant::now();
    loop {
        if served_by(url).await.as_deref() == Some(by) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{url} not served by {by} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every node of `nodes` runs `version`.
async fn all_apply<'a>(nodes: impl IntoIterator<Item = &'a Node>, version: ConfigVersion) {
    let nodes: Vec<&Node> = nodes.into_iter().collect();
    let what = format!("every node applies version {}", version.0);
    eventually(EVENTUALLY, &what, || {
        nodes.iter().all(|n| n.version() == Some(version))
    })
    .await;
}

/// Registers an instance of service `reg` through `node` (`body` is the
/// registration's JSON); it must be accepted.
async fn register(node: &Node, body: String) {
    let (status, answer) = admin(
        node,
        Method::POST,
        "/admin/services/reg/instances",
        Some(("application/json", body)),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
}

fn has_instance(node: &Node, service: &str, id: &str) -> bool {
    node.running()
        .registry()
        .snapshot()
        .services
        .iter()
        .any(|s| s.name.as_str() == service && s.all_instances.iter().any(|i| i.id.as_str() == id))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn prefix(test: &str) -> String {
    format!("/switchyard-test/{test}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_applied_by_all_three_nodes() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let upstream = common::echo("v-a").await;
    let nodes = nodes(&etcd, &prefix("push3"), ["n1", "n2", "n3"]).await;
    let mut latencies = Vec::new();
    for i in 0..50 {
        let start = Instant::now();
        let version = push_ok(&nodes[i % 3], &shared(upstream, i as u32)).await;
        eventually(EVENTUALLY, "every node applies the push", || {
            nodes.iter().all(|n| n.version() == Some(version))
        })
        .await;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!(
        "push applied by all 3 nodes over 50 pushes: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    for node in &nodes {
        eventually_served(EVENTUALLY, &format!("{}/", node.traffic()), "v-a").await;
    }
    // The history is the fleet's: every node lists the same versions, and
    // identical text is not a new version.
    let (status, again) = push(&nodes[0], &shared(upstream, 49)).await;
    assert_eq!(status, 200);
    assert_eq!(again["result"], "unchanged", "{again}");
    let (_, listed) = admin(&nodes[2], Method::GET, "/admin/config/versions", None).await;
    let versions = listed["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 50, "{listed}");
    assert_eq!(versions[49]["version"], 50);
    assert_eq!(versions[49]["source"], "push");
    let (status, diff) = admin(
        &nodes[1],
        Method::GET,
        "/admin/config/diff?from=1&to=2",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(diff.as_str().unwrap().contains("+# marker 1"), "{diff}");
    // Rollback is a push of the old text as a new version, applied by all.
    let (status, rolled) = admin(&nodes[1], Method::POST, "/admin/config/rollback/3", None).await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["result"], "pushed");
    assert_eq!(rolled["version"], 51);
    eventually(EVENTUALLY, "every node applies the rollback", || {
        nodes.iter().all(|n| n.version() == Some(ConfigVersion(51)))
    })
    .await;
    let (_, shown) = admin(&nodes[0], Method::GET, "/admin/config/versions/51", None).await;
    assert!(
        shown.as_str().unwrap().starts_with("# marker 2\n"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_on_one_node_is_served_by_another() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let upstream = common::echo("web").await;
    let registered = common::echo("reg-1").await;
    let p = prefix("registry");
    let [mut a, b] = nodes(&etcd, &p, ["a", "b"]).await;
    let version = push_ok(&a, &shared(upstream, 1)).await;
    all_apply([&a, &b], version).await;

    let start = Instant::now();
    let body = format!(r#"{{"id": "reg-1", "address": "{registered}"}}"#);
    register(&a, body).await;
    eventually_served(EVENTUALLY, &format!("{}/reg", b.traffic()), "reg-1").await;
    println!(
        "registration on node a served by node b after {:?}",
        start.elapsed()
    );

    // Drain is shared: drained through b, out of rotation on a.
    let (status, _) = admin(
        &b,
        Method::PUT,
        "/admin/services/reg/instances/reg-1/drain",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let drained = |n: &Node| {
        n.running()
            .registry()
            .instances()
            .iter()
            .any(|i| i.key.id.as_str() == "reg-1" && i.health().drained)
    };
    eventually(EVENTUALLY, "a sees the drain", || drained(&a)).await;
    let (status, _) = admin(
        &a,
        Method::PUT,
        "/admin/services/reg/instances/reg-1/undrain",
        None,
    )
    .await;
    assert_eq!(status, 200);
    eventually(EVENTUALLY, "b sees the undrain", || !drained(&b)).await;

    // A registrant with a ttl that stops heart-beating disappears from
    // every node within ttl + 1 s.
    let leased = common::echo("leased").await;
    let body = format!(r#"{{"id": "leased", "address": "{leased}", "ttl": "2s"}}"#);
    register(&b, body).await;
    eventually(EVENTUALLY, "a learns the leased instance", || {
        has_instance(&a, "reg", "leased")
    })
    .await;
    for target in [&a, &b, &a] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (status, answer) = admin(
            target,
            Method::PUT,
            "/admin/services/reg/instances/leased/heartbeat",
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let last_heartbeat = Instant::now();
    assert!(has_instance(&a, "reg", "leased") && has_instance(&b, "reg", "leased"));
    eventually(
        Duration::from_secs(10),
        "the lease expires everywhere",
        || !has_instance(&a, "reg", "leased") && !has_instance(&b, "reg", "leased"),
    )
    .await;
    let gone_after = last_heartbeat.elapsed();
    println!("registrant with ttl 2s gone from both nodes {gone_after:?} after its last heartbeat");
    assert!(
        gone_after <= Duration::from_secs(3),
        "ttl 2s: gone within ttl + 1 s, not {gone_after:?}"
    );
    // And not early: the last heartbeat renewed the lease for its whole
    // ttl (half of it is a bound a loaded machine cannot miss).
    assert!(
        gone_after >= Duration::from_secs(1),
        "ttl 2s: gone only {gone_after:?} after a heartbeat"
    );

    // A node that stops does not take other registrations with it.
    a.stop().await;
    let later = push_ok(&b, &shared(upstream, 2)).await;
    eventually(EVENTUALLY, "b applies a later version", || {
        b.version() == Some(later)
    })
    .await;
    assert!(has_instance(&b, "reg", "reg-1"), "reg-1 survives node a");
    eventually_served(EVENTUALLY, &format!("{}/reg", b.traffic()), "reg-1").await;
    // Deregistration deletes it everywhere.
    let (status, _) = admin(
        &b,
        Method::DELETE,
        "/admin/services/reg/instances/reg-1",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!has_instance(&b, "reg", "reg-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_by_host_name_is_resolved_and_served_by_every_node() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let upstream = common::echo("web").await;
    let registered = common::echo("reg-dns").await;
    let dns = common::dns::FakeDns::start().await;
    dns.set(
        "reg.test",
        common::dns::Answer::Records(vec!["127.0.0.1".parse().unwrap()], 1),
    );
    let p = prefix("registry-dns");
    let [a, b] = nodes(&etcd, &p, ["a", "b"]).await;
    let text = format!(
        "dns: {{resolvers: [\"{}\"], refresh: 100ms}}\n{}",
        dns.address,
        shared(upstream, 1)
    );
    let version = push_ok(&a, &text).await;
    all_apply([&a, &b], version).await;

    let port = registered.port();
    register(
        &a,
        format!(r#"{{"id": "reg-dns", "address": "reg.test:{port}"}}"#),
    )
    .await;
    // Node b gets the name from etcd and resolves it itself.
    eventually_served(EVENTUALLY, &format!("{}/reg", b.traffic()), "reg-dns").await;
    assert!(has_instance(&b, "reg", "reg-dns:127.0.0.1"));
    assert!(has_instance(&a, "reg", "reg-dns:127.0.0.1"));

    let (status, _) = admin(
        &b,
        Method::DELETE,
        "/admin/services/reg/instances/reg-dns",
        None,
    )
    .await;
    assert_eq!(status, 200);
    eventually(EVENTUALLY, "both nodes drop the name's instance", || {
        !has_instance(&a, "reg", "reg-dns:127.0.0.1")
            && !has_instance(&b, "reg", "reg-dns:127.0.0.1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_push_is_refused_by_every_node_and_the_old_config_serves() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let upstream = common::echo("old").await;
    let p = prefix("refuse");
    let nodes = nodes(&etcd, &p, ["r1", "r2", "r3"]).await;
    let good = push_ok(&nodes[0], &shared(upstream, 1)).await;
    all_apply(&nodes, good).await;

    // A node's config comes from etcd: a file reload is refused, and says
    // how to change it.
    let (status, answer) = admin(&nodes[2], Method::POST, "/admin/reload", None).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("in fleet mode") && e.contains("config push")),
        "{answer}"
    );
    assert_eq!(nodes[2].version(), Some(good));

    // Invalid text is refused at the push: no version is written.
    let (status, answer) = push(&nodes[1], "listeners: [{address: nowhere}]\n").await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["errors"][0]
            .as_str()
            .unwrap()
            .contains("listeners[0].address"),
        "{answer}"
    );
    let (status, answer) = push(
        &nodes[1],
        &format!("admin:\n  address: 127.0.0.1:1\n{}", shared(upstream, 5)),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["errors"][0].as_str().unwrap().contains("node-local"),
        "{answer}"
    );

    // Valid text that no node can apply: a listener on a port taken here.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let bad = shared(upstream, 2).replace(
        "listeners:\n  - address: 127.0.0.1:0\n",
        &format!("listeners:\n  - address: 127.0.0.1:0\n  - address: 127.0.0.1:{port}\n"),
    );
    let bad_version = push_ok(&nodes[2], &bad).await;
    eventually(EVENTUALLY, "every node refuses the bad version", || {
        nodes.iter().all(|n| {
            n.fleet_status()
                .refused
                .is_some_and(|r| r.version == bad_version)
        })
    })
    .await;
    for node in &nodes {
        assert_eq!(
            node.version(),
            Some(good),
            "{} keeps the old version",
            node.name
        );
        eventually_served(EVENTUALLY, &format!("{}/", node.traffic()), "old").await;
    }
    // And the fleet status says so, for every node.
    let (status, fleet) = admin(&nodes[0], Method::GET, "/admin/fleet", None).await;
    assert_eq!(status, 200);
    let listed = fleet["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{fleet}");
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let (_, fleet) = admin(&nodes[0], Method::GET, "/admin/fleet", None).await;
        let all_refused = fleet["nodes"].as_array().unwrap().iter().all(|n| {
            n["refused"]["version"].as_u64() == Some(bad_version.0)
                && n["applied_version"].as_u64() == Some(good.0)
                && n["refused"]["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&port.to_string())
        });
        if all_refused {
            break;
        }
        assert!(Instant::now() < deadline, "fleet status: {fleet}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(taken);

    // A value written by hand that is not a version is refused (log and
    // metric); the old config keeps serving; the next push repairs it.
    let mut client = etcd.client().await;
    let next = bad_version.0 + 1;
    client
        .put(
            format!("{p}/config/versions/{next:020}"),
            "not a version",
            None,
        )
        .await
        .unwrap();
    client
        .put(format!("{p}/config/current"), next.to_string(), None)
        .await
        .unwrap();
    let refused_metric = |n: &Node| {
        let text = n.running().registry().metrics().encode();
        common::sample(&text, "switchyard_fleet_refused_total").unwrap_or(0.0)
    };
    eventually(EVENTUALLY, "the hand-written value is refused", || {
        nodes.iter().all(|n| refused_metric(n) >= 2.0)
    })
    .await;
    for node in &nodes {
        assert_eq!(node.version(), Some(good));
    }
    let repaired = push_ok(&nodes[0], &shared(upstream, 3)).await;
    assert_eq!(repaired.0, next + 1);
    all_apply(&nodes, repaired).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_pushes_make_one_version_and_one_refusal() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let upstream = common::echo("c").await;
    let p = prefix("race");
    let [a, b] = nodes(&etcd, &p, ["a", "b"]).await;
    let base = push_ok(&a, &shared(upstream, 1)).await;
    let path = format!("/admin/config?base={base}");
    let one = admin(
        &a,
        Method::POST,
        &path,
        Some(("application/yaml", shared(upstream, 2))),
    );
    let two = admin(
        &b,
        Method::POST,
        &path,
        Some(("application/yaml", shared(upstream, 3))),
    );
    let ((s1, r1), (s2, r2)) = tokio::join!(one, two);
    let mut statuses = [s1, s2];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{r1} {r2}");
    let refusal = if s1 == 409 { &r1 } else { &r2 };
    let winner = if s1 == 200 { &r1 } else { &r2 };
    assert_eq!(winner["version"], base.0 + 1);
    assert_eq!(
        refusal["errors"][0],
        format!("version {} was pushed meanwhile; re-base on it", base.0 + 1)
    );
    let (_, listed) = admin(&b, Method::GET, "/admin/config/versions", None).await;
    assert_eq!(listed["versions"].as_array().unwrap().len(), 2, "{listed}");
}

/// A TCP relay in front of etcd that a test can cut (connections dropped,
/// new ones closed at once) and restore.
struct Relay {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            address: listener.local_addr().unwrap(),
            cut: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
        };
        let (cut, generation) = (Arc::clone(&relay.cut), Arc::clone(&relay.generation));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let born = generation.load(Ordering::SeqCst);
                let generation = Arc::clone(&generation);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while generation.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = watch => {}
                    }
                });
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_past_a_nodes_revision_makes_it_re_read_and_converge() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let upstream = common::echo("k").await;
    let p = prefix("compact");
    let relay = Relay::start(etcd.members[0].address().parse().unwrap()).await;
    let a = node(&etcd.yaml_endpoints(), &p, "a").await;
    let b = node(&format!("[{}]", relay.address), &p, "b").await;
    let first = push_ok(&a, &shared(upstream, 1)).await;
    all_apply([&a, &b], first).await;
    let resyncs_before = b.fleet_status().resyncs;

    relay.cut();
    eventually(EVENTUALLY, "b notices it lost etcd", || {
        b.fleet_status().stale
    })
    .await;
    let mut last = first;
    for i in 2..6 {
        last = push_ok(&a, &shared(upstream, i)).await;
    }
    let mut client = etcd.client().await;
    let revision = client
        .get(format!("{p}/config/current"), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    assert_eq!(b.version(), Some(first), "b is cut off");

    relay.restore();
    eventually(EVENTUALLY, "b re-reads and converges", || {
        b.version() == Some(last) && !b.fleet_status().stale
    })
    .await;
    assert!(
        b.fleet_status().resyncs > resyncs_before,
        "the resumed watch hit the compaction and b re-read everything"
    );
    eventually_served(EVENTUALLY, &format!("{}/", b.traffic()), "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_while_etcd_is_down_serves_from_its_snapshot() {
    need_etcd!();
    let mut etcd = Etcd::start().await;
    let upstream = common::echo("snap").await;
    let registered = common::echo("snap-reg").await;
    let p = prefix("snapshot");
    let mut a = node(&etcd.yaml_endpoints(), &p, "a").await;
    let version = push_ok(&a, &shared(upstream, 7)).await;
    eventually(EVENTUALLY, "a applies", || a.version() == Some(version)).await;
    let body = format!(r#"{{"id": "snap-reg", "address": "{registered}"}}"#);
    register(&a, body).await;
    eventually(EVENTUALLY, "a applies", || a.version() == Some(version)).await;
    let snapshot = a.dir.join("state").join("fleet-snapshot.json");
    eventually(
        EVENTUALLY,
        "the snapshot holds the version and the registration",
        || snapshot_has(&snapshot, version, "snap-reg"),
    )
    .await;

    a.stop().await;
    etcd.members[0].kill();
    let start = Instant::now();
    a.start().await;
    println!(
        "node restarted with etcd down, serving after {:?}",
        start.elapsed()
    );
    assert_eq!(a.version(), Some(version));
    assert!(a.fleet_status().stale, "marked stale");
    eventually_served(EVENTUALLY, &format!("{}/", a.traffic()), "snap").await;
    eventually_served(EVENTUALLY, &format!("{}/reg", a.traffic()), "snap-reg").await;

    etcd.members[0].restart();
    etcd.wait_ready(EVENTUALLY).await;
    eventually(EVENTUALLY, "a catches up", || !a.fleet_status().stale).await;
    let next = push_ok(&a, &shared(upstream, 8)).await;
    eventually(EVENTUALLY, "a applies a new push", || {
        a.version() == Some(next)
    })
    .await;
}

fn snapshot_has(path: &Path, version: ConfigVersion, id: &str) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let Ok(json) = serde_json::from_slice::<Value>(&bytes) else {
        return false;
    };
    json["version"]["version"].as_u64() == Some(version.0) && json.to_string().contains(id)
}

/// Sends GETs from `clients` keep-alive clients until `stop`; returns
/// (requests, failures).
fn load(
    urls: Vec<String>,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..clients {
            let url = urls[i % urls.len()].clone();
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let client = common::client();
                let (mut sent, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let request = http::Request::get(&url)
                        .body(http_body_util::Full::default())
                        .unwrap();
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(10), client.request(request)).await,
                        Ok(Ok(response)) if response.status() == 200
                    );
                    sent += 1;
                    failed += u64::from(!ok);
                }
                (sent, failed)
            }));
        }
        let mut total = (0, 0);
        for task in tasks {
            let (sent, failed) = task.await.unwrap();
            total.0 += sent;
            total.1 += failed;
        }
        total
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_under_load_fails_no_request_and_the_nodes_catch_up() {
    need_etcd!();
    let mut etcd = Etcd::start().await;
    let upstream = common::echo("load").await;
    let p = prefix("load");
    let [a, b] = nodes(&etcd, &p, ["a", "b"]).await;
    let first = push_ok(&a, &shared(upstream, 1)).await;
    all_apply([&a, &b], first).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(
        vec![format!("{}/", a.traffic()), format!("{}/", b.traffic())],
        32,
        Arc::clone(&stop),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.members[0].kill();
    eventually(EVENTUALLY, "both nodes are stale", || {
        a.fleet_status().stale && b.fleet_status().stale
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.members[0].restart();
    etcd.wait_ready(EVENTUALLY).await;
    eventually(EVENTUALLY, "both catch up", || {
        !a.fleet_status().stale && !b.fleet_status().stale
    })
    .await;
    let next = push_ok(&b, &shared(upstream, 2)).await;
    all_apply([&a, &b], next).await;
    stop.store(true, Ordering::SeqCst);
    let (sent, failed) = traffic.await.unwrap();
    println!("32 clients through an etcd kill and restart: {sent} requests, {failed} failed");
    assert!(sent > 100, "the load ran ({sent} requests)");
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_of_three_lost_pushes_and_registrations_keep_working() {
    need_etcd!();
    let mut etcd = Etcd::cluster(3).await;
    let upstream = common::echo("m").await;
    let registered = common::echo("m-reg").await;
    let p = prefix("members");
    let [a, b] = nodes(&etcd, &p, ["a", "b"]).await;
    let first = push_ok(&a, &shared(upstream, 1)).await;
    all_apply([&a, &b], first).await;
    etcd.members[0].kill();
    let start = Instant::now();
    let mut attempts = 0;
    let next = loop {
        attempts += 1;
        let (status, body) = push(&b, &shared(upstream, 2)).await;
        if status == 200 {
            break ConfigVersion(body["version"].as_u64().unwrap());
        }
        println!("push attempt {attempts} with a member down: {status} {body}");
        assert!(
            attempts < 5,
            "push keeps failing with a member down: {status} {body}"
        );
    };
    println!(
        "push with one member of three down: {attempts} attempt(s), {:?}",
        start.elapsed()
    );
    all_apply([&a, &b], next).await;
    let body = format!(r#"{{"id": "m-reg", "address": "{registered}"}}"#);
    register(&a, body).await;
    eventually_served(EVENTUALLY, &format!("{}/reg", b.traffic()), "m-reg").await;
}

/// Runs the `switchyard` binary with `args`; returns (success, stdout, stderr).
async fn cli(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = common::binary::command().args(&args).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pushes_lists_and_shows_the_fleet() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let upstream = common::echo("cli").await;
    let p = prefix("cli");
    let [a, b] = nodes(&etcd, &p, ["cli-a", "cli-b"]).await;
    // `check --connect` validates the fleet section and asks etcd.
    let bootstrap_file = a.dir.join("proxy.yaml").display().to_string();
    let (ok, out, err) = cli(vec![
        "check".into(),
        "--connect".into(),
        "-c".into(),
        bootstrap_file,
    ])
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("has no version yet, node cli-a"), "{out}");
    let dead = a.dir.join("dead.yaml");
    let dead_address = common::dead_address().await;
    std::fs::write(&dead, bootstrap(&format!("[{dead_address}]"), &p, "x")).unwrap();
    let (ok, _, err) = cli(vec![
        "check".into(),
        "--connect".into(),
        "-c".into(),
        dead.display().to_string(),
    ])
    .await;
    assert!(!ok);
    assert!(
        err.contains(&format!("etcd at http://{dead_address}: ")),
        "{err}"
    );
    // Plain `check` is offline: the same file is valid.
    let (ok, out, err) = cli(vec![
        "check".into(),
        "-c".into(),
        dead.display().to_string(),
    ])
    .await;
    assert!(ok, "{out}{err}");
    assert!(!out.contains("etcd at"), "{out}");

    let file = a.dir.join("fleet.yaml");
    std::fs::write(&file, shared(upstream, 1)).unwrap();
    let admin = a.admin().to_string();
    let push = vec![
        "config".into(),
        "--admin".into(),
        admin.clone(),
        "push".into(),
        file.display().to_string(),
    ];
    let (ok, out, err) = cli(push.clone()).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("as version 1"), "{out}");
    all_apply([&a, &b], ConfigVersion(1)).await;
    let (ok, out, _) = cli(push.clone()).await;
    assert!(ok && out.contains("current version already"), "{out}");

    // A stale base is refused with the version to re-base on.
    std::fs::write(&file, shared(upstream, 2)).unwrap();
    let mut stale = push.clone();
    stale.extend(["--base".to_string(), "0".to_string()]);
    let (ok, _, err) = cli(stale).await;
    assert!(!ok);
    assert!(
        err.contains("version 1 was pushed meanwhile; re-base on it"),
        "{err}"
    );

    let (ok, out, err) = cli(vec![
        "config".into(),
        "--admin".into(),
        admin.clone(),
        "versions".into(),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("push") && l.trim_start().starts_with('*')),
        "{out}"
    );

    let publish = || {
        let (a, b) = (a.fleet_status(), b.fleet_status());
        a.applied_version == Some(ConfigVersion(1)) && b.applied_version == Some(ConfigVersion(1))
    };
    eventually(EVENTUALLY, "statuses know version 1", publish).await;
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let (ok, out, err) = cli(vec![
            "fleet".into(),
            "--admin".into(),
            admin.clone(),
            "status".into(),
        ])
        .await;
        assert!(ok, "{err}");
        let line = |name: &str| {
            out.lines()
                .find(|l| l.starts_with(name))
                .map(str::to_string)
        };
        let both = [line("cli-a"), line("cli-b")].iter().all(|l| {
            l.as_ref()
                .is_some_and(|l| l.split_whitespace().nth(1) == Some("1") && l.contains("false"))
        });
        if both {
            assert!(out.starts_with("fleet current version: 1"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "fleet status:\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_etcd_whose_revision_went_backwards_makes_nodes_re_read() {
    need_etcd!();
    let mut etcd = Etcd::start().await;
    let upstream = common::echo("w").await;
    let p = prefix("wiped");
    let [a, b] = nodes(&etcd, &p, ["a", "b"]).await;
    // Enough history that the revision is well past a fresh store's.
    let mut last = ConfigVersion(0);
    for i in 0..10 {
        last = push_ok(&a, &shared(upstream, i)).await;
    }
    all_apply([&a, &b], last).await;
    let resyncs_before = b.fleet_status().resyncs;

    etcd.members[0].kill();
    std::fs::remove_dir_all(&etcd.members[0].data_dir).unwrap();
    etcd.members[0].restart();
    etcd.wait_ready(EVENTUALLY).await;
    // The wiped store starts over at version 1, with new text.
    let mut attempts = 0;
    let restarted = loop {
        let (status, body) = push(&a, &shared(upstream, 100)).await;
        if status == 200 {
            break ConfigVersion(body["version"].as_u64().unwrap());
        }
        attempts += 1;
        assert!(attempts < 100, "no push after the wipe: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(restarted, ConfigVersion(1));
    eventually(EVENTUALLY, "b re-reads the wiped store and applies", || {
        b.version() == Some(restarted) && !b.fleet_status().stale
    })
    .await;
    assert!(b.fleet_status().resyncs > resyncs_before);
}

/// The `switchyard_registry_instances{source="api"}` value of a node's
/// metrics, read over its admin API.
async fn api_instances(admin: SocketAddr) -> Option<u64> {
    let series = "switchyard_registry_instances{source=\"api\"}";
    metric(admin, series).await.map(|v| v as u64)
}

/// 10,000 registrations across the fleet: each node's resident memory and
/// the time a new node takes to load them. A measurement, not a check:
/// `cargo test --test fleet -- --ignored --nocapture ten_thousand` (the
/// dev profile, as the figures in benches/README.md were taken; add
/// `--release` for an optimized build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (benches/README.md), run by hand"]
async fn ten_thousand_registrations_memory_and_load_time() {
    need_etcd!();
    const COUNT: usize = 10_000;
    let etcd = Etcd::start().await;
    let upstream = common::echo("big").await;
    let p = prefix("big");
    let boot = bootstrap(&etcd.yaml_endpoints(), &p, "big-a");
    let state_a = common::binary::temp_dir().join("state");
    let a = common::binary::Process::start(&boot, &["--state-dir", state_a.to_str().unwrap()]);
    let admin_a = a.admin;
    let (status, body) = common::admin::call_raw(
        admin_a,
        Method::POST,
        "/admin/config",
        None,
        Some(("application/yaml", shared(upstream, 1).into())),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let empty_rss = a.peak_rss_kib();

    // Written straight to etcd, as registrations through many nodes would
    // be: 100 per transaction.
    let mut client = etcd.client().await;
    let started = Instant::now();
    for batch in 0..COUNT / 100 {
        let ops: Vec<etcd_client::TxnOp> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                let address = format!("127.0.{}.{}:{}", n / 250, n % 250 + 1, 10_000 + n % 50_000);
                let value = serde_json::json!({
                    "id": format!("i-{n}"), "address": address, "weight": 1,
                    "tags": ["bench"], "metadata": {"zone": "a"}, "node": "bench"
                });
                etcd_client::TxnOp::put(
                    format!("{p}/registry/svc-{}/i-{n}", n % 100),
                    value.to_string(),
                    None,
                )
            })
            .collect();
        client
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .unwrap();
    }
    println!(
        "{COUNT} registrations written to etcd in {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while api_instances(admin_a).await != Some(COUNT as u64) {
        assert!(Instant::now() < deadline, "node a did not learn them all");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "node a (running) followed them all by watch {:?} after the first write",
        started.elapsed()
    );
    let rss_a = a.peak_rss_kib();

    let started = Instant::now();
    let state_b = common::binary::temp_dir().join("state");
    let b = common::binary::Process::start(
        &bootstrap(&etcd.yaml_endpoints(), &p, "big-b"),
        &["--state-dir", state_b.to_str().unwrap()],
    );
    while api_instances(b.admin).await != Some(COUNT as u64) {
        assert!(Instant::now() < deadline, "node b did not load them all");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_time = started.elapsed();
    let rss_b = b.peak_rss_kib();
    println!(
        "new node: process start to {COUNT} registrations served {load_time:?}; peak RSS: node a {} MiB before, {} MiB with them; node b {} MiB",
        empty_rss / 1024,
        rss_a / 1024,
        rss_b / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fleet_writes_nothing_to_etcd() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let upstream = common::echo("idle").await;
    let p = prefix("idle");
    let [a, b] = nodes(&etcd, &p, ["a", "b"]).await;
    let version = push_ok(&a, &shared(upstream, 1)).await;
    let mut client = etcd.client().await;
    // Both statuses say version 1: every write caused by the push is done.
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let nodes = client
            .get(
                format!("{p}/nodes/"),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let applied = nodes.kvs().iter().filter(|kv| {
            serde_json::from_slice::<Value>(kv.value())
                .is_ok_and(|v| v["applied_version"].as_u64() == Some(version.0))
        });
        if applied.count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "statuses not published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revision = |r: etcd_client::GetResponse| r.header().unwrap().revision();
    let before = revision(client.get("/", None).await.unwrap());
    // Two lease renewals of each node's status (every 3 s) and several
    // watch progress requests: none of it may write a revision.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = revision(client.get("/", None).await.unwrap());
    assert_eq!(
        after,
        before,
        "an idle fleet wrote {} revisions",
        after - before
    );
    assert_eq!((a.version(), b.version()), (Some(version), Some(version)));
}

/// A metric's value from a node's `/metrics`, read over its admin API.
async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    common::sample(&common::scrape(admin).await, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_is_logged_once_and_its_end_once() {
    need_etcd!();
    let mut etcd = Etcd::start().await;
    let boot = bootstrap(&etcd.yaml_endpoints(), &prefix("outage-log"), "logged");
    let state = common::binary::temp_dir().join("state");
    let node = common::binary::Process::start(&boot, &["--state-dir", state.to_str().unwrap()]);
    let deadline = Instant::now() + EVENTUALLY;
    while metric(node.admin, "switchyard_fleet_stale").await != Some(0.0) {
        assert!(Instant::now() < deadline, "the node never reached etcd");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    etcd.members[0].kill();
    // Several reconnect attempts fail while etcd is down.
    let restarts = |n: Option<f64>| n.unwrap_or(0.0);
    let deadline = Instant::now() + EVENTUALLY;
    while restarts(metric(node.admin, "switchyard_fleet_watch_restarts_total").await) < 4.0 {
        assert!(Instant::now() < deadline, "no reconnect attempts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(node.admin, "switchyard_fleet_stale").await,
        Some(1.0)
    );
    etcd.members[0].restart();
    etcd.wait_ready(EVENTUALLY).await;
    let deadline = Instant::now() + EVENTUALLY;
    while metric(node.admin, "switchyard_fleet_stale").await != Some(0.0) {
        assert!(Instant::now() < deadline, "the node did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The log is written off the runtime: the line may come after the metric.
    let recovered = |log: &[String]| log.iter().any(|l| l.contains("etcd reachable again"));
    while !recovered(&node.log.lock().unwrap()) {
        assert!(Instant::now() < deadline, "the recovery was not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = node.log.lock().unwrap().clone();
    let count = |text: &str| log.iter().filter(|l| l.contains(text)).count();
    assert_eq!(count("etcd unreachable"), 1, "{log:#?}");
    assert_eq!(count("etcd reachable again"), 1, "{log:#?}");
    let loud = log
        .iter()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .count();
    assert_eq!(loud, 1, "one warning for the whole outage: {log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_auth_on_nodes_need_their_password() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let _ = client.role_add("root").await;
    client.user_add("root", "root-pw", None).await.unwrap();
    client.user_grant_role("root", "root").await.unwrap();
    client.user_add("edge", "edge-pw", None).await.unwrap();
    client.role_add("edge").await.unwrap();
    let p = prefix("auth");
    client
        .role_grant_permission(
            "edge",
            etcd_client::Permission::read_write(format!("{p}/")).with_prefix(),
        )
        .await
        .unwrap();
    client.user_grant_role("edge", "edge").await.unwrap();
    client.auth_enable().await.unwrap();

    let upstream = common::echo("auth").await;
    let with_user = |node: &str, password: &str| {
        bootstrap(&etcd.yaml_endpoints(), &p, node).replace(
            "    dial_timeout:",
            &format!("    username: edge\n    password: {password}\n    dial_timeout:"),
        )
    };
    let dir = common::binary::temp_dir();
    std::fs::write(dir.join("proxy.yaml"), with_user("good", "edge-pw")).unwrap();
    let mut good = Node {
        name: "good".into(),
        dir,
        running: None,
    };
    good.start().await;
    let version = push_ok(&good, &shared(upstream, 1)).await;
    eventually(EVENTUALLY, "the node with the password applies", || {
        good.version() == Some(version)
    })
    .await;

    let dir = common::binary::temp_dir();
    std::fs::write(dir.join("proxy.yaml"), with_user("bad", "wrong")).unwrap();
    let mut bad = Node {
        name: "bad".into(),
        dir,
        running: None,
    };
    bad.start().await;
    assert!(bad.fleet_status().stale);
    let (status, answer) = push(&bad, &shared(upstream, 2)).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["errors"][0]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{answer}"
    );
    assert_eq!(bad.version(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speak_tls_to_etcd_and_refuse_an_unknown_certificate() {
    need_etcd!();
    let dir = common::binary::temp_dir();
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("etcd.pem"), dir.join("etcd.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let other_ca = dir.join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let etcd = Etcd::start_tls(cert.clone(), key).await;

    let upstream = common::echo("tls").await;
    let p = prefix("tls");
    let with_ca = |node: &str, ca: &Path| {
        bootstrap(&format!("[\"{}\"]", etcd.endpoints()[0]), &p, node).replace(
            "    dial_timeout:",
            &format!("    tls: {{ca_file: {}}}\n    dial_timeout:", ca.display()),
        )
    };
    let start = |name: &str, text: String| {
        let dir = common::binary::temp_dir();
        std::fs::write(dir.join("proxy.yaml"), text).unwrap();
        Node {
            name: name.into(),
            dir,
            running: None,
        }
    };
    let mut trusted = start("trusted", with_ca("trusted", &cert));
    trusted.start().await;
    let version = push_ok(&trusted, &shared(upstream, 1)).await;
    eventually(
        EVENTUALLY,
        "the node that trusts etcd's certificate applies",
        || trusted.version() == Some(version) && !trusted.fleet_status().stale,
    )
    .await;

    let mut stranger = start("stranger", with_ca("stranger", &other_ca));
    stranger.start().await;
    assert!(stranger.fleet_status().stale);
    let (status, answer) = push(&stranger, &shared(upstream, 2)).await;
    println!("push through a node that does not trust etcd's certificate: {status} {answer}");
    assert_eq!(status, 503, "{answer}");
    assert_eq!(stranger.version(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_running_nodes_with_one_name_both_report_the_conflict_and_a_restart_does_not() {
    need_etcd!();
    let etcd = Etcd::start().await;
    let [twin_a, twin_b, mut solo] = nodes(&etcd, &prefix("twins"), ["twin", "twin", "solo"]).await;
    eventually(EVENTUALLY, "both twins see the other", || {
        twin_a.fleet_status().name_conflict.is_some()
            && twin_b.fleet_status().name_conflict.is_some()
    })
    .await;
    let conflict = twin_a.fleet_status().name_conflict.unwrap_or_default();
    assert!(
        conflict.contains(&twin_b.admin().to_string()) && conflict.contains("unique"),
        "the conflict names the other process: {conflict}"
    );
    let (status, fleet) = admin(&twin_b, Method::GET, "/admin/fleet", None).await;
    assert_eq!(status, 200);
    let published = fleet["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == "twin"))
        .cloned()
        .unwrap_or_default();
    assert!(published["name_conflict"].is_string(), "{fleet}");

    // A node that restarts finds its previous process's status key (its
    // lease has not run out yet) and must not take it for a twin.
    assert!(solo.fleet_status().name_conflict.is_none());
    let before = solo.fleet_status().process;
    solo.stop().await;
    solo.start().await;
    assert_ne!(solo.fleet_status().process, before, "a new process token");
    eventually(EVENTUALLY, "the restarted node is caught up", || {
        !solo.fleet_status().stale
    })
    .await;
    // Its own status writes come back through its watch meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(solo.fleet_status().name_conflict, None);
    let (_, fleet) = admin(&solo, Method::GET, "/admin/fleet", None).await;
    let published = fleet["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == "solo"))
        .cloned()
        .unwrap_or_default();
    assert!(published["name_conflict"].is_null(), "{fleet}");
}
