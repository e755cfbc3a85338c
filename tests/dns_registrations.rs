//! Registrations and Consul entries that name their instance by host name,
//! resolved by a real DNS server on loopback (tests/common/dns.rs): every
//! record an instance with an id derived from the entry's id and the
//! address; a record that goes away takes its instance; deregistering
//! removes them all; NXDOMAIN leaves the registration listed without
//! instances until the name resolves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::{IpAddr, SocketAddr};

use common::consul::FakeConsul;
use common::dns::{Answer, FakeDns};
use common::*;
use http::Method;
use serde_json::{json, Value};
use switchyard::server::Running;

const NAME: &str = "api.test";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Echo upstreams named `a` and `b` on 127.0.0.1 and 127.0.0.2, on the
/// same port (a DNS name carries one port for all its addresses).
async fn two_upstreams() -> u16 {
    for _ in 0..20 {
        let first = echo("a").await;
        let port = first.port();
        let b = switchyard::demo::start_echo("b", SocketAddr::new(ip("127.0.0.2"), port)).await;
        if b.is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

fn yaml(dns: &FakeDns) -> String {
    format!(
        "dns: {{resolvers: [\"{}\"], refresh: 100ms}}\nroutes:\n  - service: web\nservices:\n  web:\n    instances: []\n",
        dns.address
    )
}

fn ids(view: &Value) -> Vec<String> {
    let mut ids: Vec<String> = view["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Registers `body` in `web` through the admin API (answer checked
/// against the contract).
async fn register(running: &Running, body: Value) -> (u16, Value) {
    let (status, text) = admin::call_with(
        running.admin_address(),
        Method::POST,
        "/admin/services/web/instances",
        None,
        Some(&body),
    )
    .await
    .unwrap();
    (status.as_u16(), serde_json::from_str(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_by_host_name_is_one_instance_per_record_and_follows_the_records() {
    let port = two_upstreams().await;
    let dns = FakeDns::start().await;
    dns.set(
        NAME,
        Answer::Records(vec![ip("127.0.0.1"), ip("127.0.0.2")], 1),
    );
    let running = proxy(&yaml(&dns)).await;
    let (status, answer) = register(
        &running,
        json!({"address": format!("{NAME}:{port}"), "id": "api", "weight": 2,
               "tags": ["by-name"], "metadata": {"team": "x"}, "version": "1.2"}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let named = &answer["dns_name"];
    assert_eq!(named["name"], format!("{NAME}:{port}"), "{answer}");
    assert_eq!(named["source"], "api");
    assert_eq!(named["resolved"], true, "{answer}");
    assert_eq!(
        named["instances"],
        json!(["api:127.0.0.1", "api:127.0.0.2"])
    );

    let view = view_until(&running, "web", "2 instances", |v| ids(v).len() == 2).await;
    assert_eq!(ids(&view), ["api:127.0.0.1", "api:127.0.0.2"]);
    let first = &view["instances"][0];
    assert_eq!(first["address"], format!("127.0.0.1:{port}"));
    assert_eq!(first["source"], "api");
    assert_eq!(first["weight"], 2, "settings are inherited: {first}");
    assert_eq!(first["tags"], json!(["by-name"]));
    assert_eq!(first["version"], "1.2");
    assert_eq!(first["metadata"]["team"], "x");
    assert_eq!(first["metadata"]["dns_name"], NAME);
    assert_eq!(view["dns_names"][0]["id"], "api");

    let (counts, _) = distribution(&format!("{}/", base(&running)), 20).await;
    for name in ["a", "b"] {
        assert!(counts.get(name).copied().unwrap_or(0) >= 5, "{counts:?}");
    }

    // /admin/status shows the name and its instances too.
    let (_, text) = admin::call(running.admin_address(), Method::GET, "/admin/status")
        .await
        .unwrap();
    let status: Value = serde_json::from_str(&text).unwrap();
    let web = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    assert_eq!(
        web["dns_names"][0]["addresses"].as_array().unwrap().len(),
        2,
        "{web}"
    );

    // A record goes away: its instance leaves, the other stays.
    dns.set(NAME, Answer::Records(vec![ip("127.0.0.1")], 1));
    let view = view_until(&running, "web", "1 instance", |v| ids(v).len() == 1).await;
    assert_eq!(ids(&view), ["api:127.0.0.1"]);
    let (counts, _) = distribution(&format!("{}/", base(&running)), 6).await;
    assert_eq!(counts.get("a").copied(), Some(6), "{counts:?}");

    // Deregistering the name removes every instance it became, at once.
    dns.set(
        NAME,
        Answer::Records(vec![ip("127.0.0.1"), ip("127.0.0.2")], 1),
    );
    view_until(&running, "web", "2 instances again", |v| ids(v).len() == 2).await;
    let (status, _) = admin::call(
        running.admin_address(),
        Method::DELETE,
        "/admin/services/web/instances/api",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let view = service_view(&running, "web").await;
    assert!(ids(&view).is_empty(), "{view}");
    assert!(view.get("dns_names").is_none(), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_name_does_not_resolve_stays_listed_until_it_does() {
    let port = two_upstreams().await;
    let dns = FakeDns::start().await;
    // Unknown names get NXDOMAIN.
    let running = proxy(&yaml(&dns)).await;
    let (status, answer) = register(&running, json!({"address": format!("{NAME}:{port}")})).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer["id"],
        format!("{NAME}:{port}"),
        "the id defaults to the name"
    );
    assert_eq!(answer["dns_name"]["resolved"], true, "{answer}");
    assert_eq!(answer["dns_name"]["instances"], json!([]));
    let view = service_view(&running, "web").await;
    assert!(ids(&view).is_empty(), "{view}");
    assert_eq!(
        view["dns_names"][0]["name"],
        format!("{NAME}:{port}"),
        "{view}"
    );
    let got = get(&client(), &format!("{}/", base(&running)), &[]).await;
    assert_eq!(got.status, 503, "{}", got.body);

    dns.set(NAME, Answer::Records(vec![ip("127.0.0.2")], 1));
    let view = view_until(&running, "web", "the instance", |v| ids(v).len() == 1).await;
    assert_eq!(ids(&view), [format!("{NAME}:{port}:127.0.0.2")]);
    let got = get(&client(), &format!("{}/", base(&running)), &[]).await;
    assert_eq!(got.served_by(), "b");

    // NXDOMAIN again: the instance goes, the registration stays.
    dns.set(NAME, Answer::NxDomain);
    let view = view_until(&running, "web", "no instance", |v| ids(v).is_empty()).await;
    assert_eq!(view["dns_names"][0]["resolved"], true, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_entry_with_a_host_name_address_becomes_one_instance_per_record() {
    let port = two_upstreams().await;
    let dns = FakeDns::start().await;
    dns.set(
        NAME,
        Answer::Records(vec![ip("127.0.0.1"), ip("127.0.0.2")], 1),
    );
    let consul = FakeConsul::start().await;
    consul.set(
        "web",
        vec![json!({
            "Node": {"ID": "0", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1", "Meta": {}},
            "Service": {"ID": "web", "Service": "web", "Tags": ["v1"], "Address": NAME, "Port": port,
                        "Meta": null, "Weights": {"Passing": 3, "Warning": 1}},
            "Checks": [{"Node": "n1", "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""}]
        })],
    );
    let running = proxy(&format!(
        "consul: {{address: \"{}\", wait: 1s}}\ndns: {{resolvers: [\"{}\"], refresh: 100ms}}\nroutes:\n  - service: web\nservices:\n  web:\n    discovery: {{consul: {{service: web}}}}\n",
        consul.address, dns.address
    ))
    .await;
    let view = view_until(&running, "web", "2 instances", |v| ids(v).len() == 2).await;
    assert_eq!(ids(&view), ["n1:web:127.0.0.1", "n1:web:127.0.0.2"]);
    let first = &view["instances"][0];
    assert_eq!(first["source"], "consul");
    assert_eq!(first["weight"], 3);
    assert_eq!(first["metadata"]["consul_node"], "n1");
    assert_eq!(view["dns_names"][0]["source"], "consul");
    let (counts, _) = distribution(&format!("{}/", base(&running)), 20).await;
    for name in ["a", "b"] {
        assert!(counts.get(name).copied().unwrap_or(0) >= 5, "{counts:?}");
    }
    // The entry leaves Consul: its instances go.
    consul.set("web", vec![]);
    view_until(&running, "web", "no instance", |v| ids(v).is_empty()).await;
}
