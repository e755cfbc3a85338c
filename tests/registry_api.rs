//! The registry API over real HTTP: registration, leases, deregistration,
//! drains, watches, the admin token, and registrations across reloads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::{call_with, checked};
use common::*;
use http::{Method, Request, Response};
use http_body_util::Full;
use serde_json::{json, Value};
use switchyard::server::Running;

async fn api(running: &Running, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    api_token(running.admin_address(), method, path, body, None).await
}

async fn api_token(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let (status, text) = call_with(admin, method, path, token, body.as_ref())
        .await
        .unwrap();
    (
        status.as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn ids(service: &Value) -> Vec<String> {
    service["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

async fn served(running: &Running, n: usize) -> Vec<String> {
    let client = client();
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(
            get(&client, &format!("{}/", base(running)), &[])
                .await
                .served_by(),
        );
    }
    seen
}

const CHECKED: &str = "routes:\n  - service: svc\nservices:\n  svc:\n    health_check: {path: /, interval: 50ms, timeout: 40ms, jitter: 0ms, healthy_threshold: 2}\n    instances: []\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_instance_gets_traffic_after_passing_its_checks() {
    let upstream = echo("reg").await;
    let proxy = proxy(CHECKED).await;
    let (status, answer) = api(
        &proxy,
        Method::POST,
        "/admin/services/svc/instances",
        Some(json!({"id": "reg-1", "address": upstream.to_string(), "weight": 2, "tags": ["blue"], "metadata": {"zone": "a"}})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["created"], true);

    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    let instance = &service["instances"][0];
    assert_eq!(instance["id"], "reg-1");
    assert_eq!(instance["source"], "api");
    assert_eq!(instance["weight"], 2);
    assert_eq!(instance["tags"][0], "blue");
    assert_eq!(instance["metadata"]["zone"], "a");
    assert!(instance["registered_at"].is_string());

    // It needs two passing checks first.
    let started = Instant::now();
    loop {
        let got = get(&client(), &format!("{}/", base(&proxy)), &[]).await;
        if got.status == 200 {
            assert_eq!(got.served_by(), "reg");
            break;
        }
        assert_eq!(got.status, 503);
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, healthy) = api(
        &proxy,
        Method::GET,
        "/admin/services/svc?healthy=true",
        None,
    )
    .await;
    assert_eq!(ids(&healthy), ["reg-1"]);

    // Registering the same id again updates it.
    let (status, answer) = api(
        &proxy,
        Method::POST,
        "/admin/services/svc/instances",
        Some(json!({"id": "reg-1", "address": upstream.to_string(), "weight": 5})),
    )
    .await;
    assert_eq!((status, &answer["created"]), (200, &json!(false)));
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    assert_eq!(service["instances"][0]["weight"], 5);
    assert_eq!(
        service["instances"][0]["health"], "healthy",
        "an update keeps the verdict"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_without_heartbeats_and_heartbeats_keep_them() {
    let (a, b) = (echo("a").await, echo("b").await);
    let proxy = proxy("routes:\n  - service: svc\nservices:\n  svc: {instances: []}\n").await;
    for (id, address) in [("a", a), ("b", b)] {
        let (status, _) = api(
            &proxy,
            Method::POST,
            "/admin/services/svc/instances",
            Some(json!({"id": id, "address": address.to_string(), "ttl": "400ms"})),
        )
        .await;
        assert_eq!(status, 201);
    }
    // Renew only `a`, for a second (2.5 leases).
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        let (status, _) = api(
            &proxy,
            Method::PUT,
            "/admin/services/svc/instances/a/heartbeat",
            None,
        )
        .await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    assert_eq!(ids(&service), ["a"], "b's lease ran out");
    assert_eq!(service["instances"][0]["lease"]["ttl_ms"], 400);
    assert!(served(&proxy, 6).await.iter().all(|s| s == "a"));
    let (status, _) = api(
        &proxy,
        Method::PUT,
        "/admin/services/svc/instances/b/heartbeat",
        None,
    )
    .await;
    assert_eq!(status, 404, "an expired instance is gone");

    // Stop renewing a: it leaves too.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    assert!(ids(&service).is_empty());
    assert_eq!(
        get(&client(), &format!("{}/", base(&proxy)), &[])
            .await
            .status,
        503
    );

    // Without a ttl there is no lease: a heartbeat is a conflict, and the
    // instance stays.
    let (status, _) = api(
        &proxy,
        Method::POST,
        "/admin/services/svc/instances",
        Some(json!({"id": "forever", "address": a.to_string()})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, answer) = api(
        &proxy,
        Method::PUT,
        "/admin/services/svc/instances/forever/heartbeat",
        None,
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("registered without a ttl")),
        "{answer}"
    );
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    assert_eq!(ids(&service), ["forever"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_lets_in_flight_requests_finish() {
    let slow = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Response::builder()
            .header("x-served-by", "slow")
            .body(Full::new(Bytes::from_static(b"done")))
            .unwrap()
    })
    .await;
    let fast = echo("fast").await;
    let proxy = proxy(&format!(
        "routes:\n  - service: svc\nservices:\n  svc: {{instances: [{{id: fast, address: \"{fast}\"}}]}}\n"
    ))
    .await;
    api(
        &proxy,
        Method::POST,
        "/admin/services/svc/instances",
        Some(json!({"id": "slow", "address": slow.to_string()})),
    )
    .await;
    // Round-robin: one of two requests lands on `slow`.
    let url = format!("{}/", base(&proxy));
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&client(), &url, &[]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, answer) = api(
        &proxy,
        Method::DELETE,
        "/admin/services/svc/instances/slow",
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        served(&proxy, 4).await.iter().all(|s| s == "fast"),
        "no new requests to slow"
    );
    let mut results: Vec<(u16, String)> = Vec::new();
    for request in in_flight {
        let got = request.await.unwrap();
        results.push((got.status, got.served_by()));
    }
    results.sort();
    assert_eq!(
        results,
        [(200, "fast".to_string()), (200, "slow".to_string())]
    );

    // File instances cannot be deregistered through the API.
    let (status, answer) = api(
        &proxy,
        Method::DELETE,
        "/admin/services/svc/instances/fast",
        None,
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["errors"][0]
        .as_str()
        .unwrap()
        .contains("comes from proxy.yaml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_undrain_take_an_instance_out_by_hand() {
    let (a, b) = (echo("a").await, echo("b").await);
    let proxy = proxy(&format!(
        "routes:\n  - service: svc\nservices:\n  svc: {{instances: [{{id: a, address: \"{a}\"}}, {{id: b, address: \"{b}\"}}]}}\n"
    ))
    .await;
    let (status, _) = api(
        &proxy,
        Method::PUT,
        "/admin/services/svc/instances/b/drain",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(served(&proxy, 6).await.iter().all(|s| s == "a"));
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    assert_eq!(service["instances"][1]["health"], "drained");
    api(
        &proxy,
        Method::PUT,
        "/admin/services/svc/instances/b/undrain",
        None,
    )
    .await;
    let seen = served(&proxy, 6).await;
    assert_eq!(seen.iter().filter(|s| *s == "b").count(), 3);
    let (status, _) = api(
        &proxy,
        Method::PUT,
        "/admin/services/svc/instances/zz/drain",
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_wakes_on_change_and_times_out_without_one() {
    let a = echo("a").await;
    let proxy = proxy("routes:\n  - service: svc\nservices:\n  svc: {instances: []}\n").await;
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    let index = service["index"].as_u64().unwrap();

    // No change: the watch returns when the wait runs out, same index.
    let started = Instant::now();
    let (_, unchanged) = api(
        &proxy,
        Method::GET,
        &format!("/admin/services/svc?index={index}&wait=300ms"),
        None,
    )
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(unchanged["index"], index);

    // A change wakes it at once.
    let admin = proxy.admin_address();
    let watch = tokio::spawn(async move {
        let started = Instant::now();
        let answer = api_token(
            admin,
            Method::GET,
            &format!("/admin/services/svc?index={index}&wait=30s"),
            None,
            None,
        )
        .await;
        (started.elapsed(), answer)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    api(
        &proxy,
        Method::POST,
        "/admin/services/svc/instances",
        Some(json!({"id": "a", "address": a.to_string()})),
    )
    .await;
    let (took, (_, changed)) = watch.await.unwrap();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(changed["index"].as_u64().unwrap() > index);
    assert_eq!(ids(&changed), ["a"]);

    let (status, _) = api(
        &proxy,
        Method::GET,
        "/admin/services/nope?index=1&wait=10s",
        None,
    )
    .await;
    assert_eq!(status, 404, "an unknown service answers at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_with_the_field_named() {
    let proxy = proxy("routes:\n  - service: svc\nservices:\n  svc: {instances: []}\n").await;
    let cases = [
        (
            json!({"address": "nowhere"}),
            400,
            "address: `nowhere` is not an IP address with a port",
        ),
        (
            json!({"address": "127.0.0.1:1", "weight": 0}),
            400,
            "weight: must be between 1 and 1000 (got 0)",
        ),
        (
            json!({"address": "127.0.0.1:1", "wieght": 2}),
            400,
            "unknown field `wieght`",
        ),
        (
            json!({"address": "127.0.0.1:1", "ttl": "soon"}),
            400,
            "ttl: `soon` is not a duration",
        ),
        (
            json!({"address": "127.0.0.1:1", "id": "a b"}),
            400,
            "id: `a b` contains ` `",
        ),
        (
            json!({"address": "127.0.0.1:0"}),
            400,
            "address: `127.0.0.1:0` has port 0; give the port the instance listens on",
        ),
    ];
    for (body, status, words) in cases {
        let (code, answer) = api(
            &proxy,
            Method::POST,
            "/admin/services/svc/instances",
            Some(body.clone()),
        )
        .await;
        assert_eq!(code, status, "{body}: {answer}");
        assert!(
            answer["errors"][0].as_str().unwrap().contains(words),
            "{body}: {answer}"
        );
    }
    let (code, answer) = api(
        &proxy,
        Method::POST,
        "/admin/services/other/instances",
        Some(json!({"address": "127.0.0.1:1"})),
    )
    .await;
    assert_eq!(code, 403, "{answer}");
    assert!(answer["errors"][0]
        .as_str()
        .unwrap()
        .contains("registry.allow_new_services is false"));
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    assert!(ids(&service).is_empty(), "nothing was registered");

    // With allow_new_services, a registration creates the service.
    let open = common::proxy("registry: {allow_new_services: true}\nroutes:\n  - service: svc\nservices:\n  svc: {instances: []}\n").await;
    let (code, _) = api(
        &open,
        Method::POST,
        "/admin/services/other/instances",
        Some(json!({"address": "127.0.0.1:1"})),
    )
    .await;
    assert_eq!(code, 201);
    let (_, all) = api(&open, Method::GET, "/admin/services", None).await;
    let names: Vec<&str> = all["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["svc", "other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_times_are_bounded_and_listing_keeps_working() {
    let proxy = proxy("routes:\n  - service: svc\nservices:\n  svc: {instances: []}\n").await;
    let path = "/admin/services/svc/instances";
    // The first once went in and then broke every listing; the second
    // panicked the call itself.
    for ttl in ["99999999999999999s", "18446744073709551615h", "721h"] {
        let body = json!({"address": "127.0.0.1:9", "ttl": ttl});
        let (code, answer) = api(&proxy, Method::POST, path, Some(body)).await;
        assert_eq!(code, 400, "{ttl}: {answer}");
        let expected = format!("ttl: `{ttl}` is too long; the most allowed is 720h");
        assert_eq!(answer["errors"][0], expected.as_str(), "{answer}");
    }
    let (code, all) = api(&proxy, Method::GET, "/admin/services", None).await;
    assert_eq!(code, 200, "{all}");
    assert!(ids(&all["services"][0]).is_empty(), "{all}");

    // The longest lease is accepted, listed and renewed.
    let body = json!({"id": "long", "address": "127.0.0.1:9", "ttl": "720h"});
    let (code, answer) = api(&proxy, Method::POST, path, Some(body)).await;
    assert_eq!(code, 201, "{answer}");
    let heartbeat = "/admin/services/svc/instances/long/heartbeat";
    assert_eq!(api(&proxy, Method::PUT, heartbeat, None).await.0, 200);
    let (code, all) = api(&proxy, Method::GET, "/admin/services", None).await;
    assert_eq!(code, 200, "{all}");
    let lease = &all["services"][0]["instances"][0]["lease"];
    assert_eq!(lease["ttl_ms"], 720 * 3_600_000_u64, "{all}");
    assert_eq!(api(&proxy, Method::GET, "/admin/status", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_comes_in_pages_for_a_large_registry() {
    let proxy = proxy("routes:\n  - service: svc\nservices:\n  svc: {instances: []}\n  other: {instances: [{address: \"127.0.0.1:9\"}]}\n").await;
    for i in 0..5 {
        let body = json!({"id": format!("i{i}"), "address": format!("127.0.0.1:{}", 1000 + i)});
        let (code, _) = api(
            &proxy,
            Method::POST,
            "/admin/services/svc/instances",
            Some(body),
        )
        .await;
        assert_eq!(code, 201);
    }
    // The default lists everything, as before, with the total beside it.
    let (code, status) = api(&proxy, Method::GET, "/admin/status", None).await;
    assert_eq!(code, 200, "{status}");
    let names: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["other", "svc"]);
    let svc = &status["services"][1];
    assert_eq!(ids(svc), ["i0", "i1", "i2", "i3", "i4"]);
    assert_eq!(svc["instances_total"], 5);
    assert!(svc.get("next_offset").is_none(), "{svc}");

    let (code, page) = api(
        &proxy,
        Method::GET,
        "/admin/status?service=svc&offset=1&limit=2",
        None,
    )
    .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["services"].as_array().unwrap().len(), 1, "{page}");
    let svc = &page["services"][0];
    assert_eq!(ids(svc), ["i1", "i2"]);
    assert_eq!(
        (svc["instances_total"].as_u64(), svc["next_offset"].as_u64()),
        (Some(5), Some(3))
    );
    let (_, last) = api(
        &proxy,
        Method::GET,
        "/admin/status?service=svc&offset=3&limit=2",
        None,
    )
    .await;
    assert_eq!(ids(&last["services"][0]), ["i3", "i4"]);
    assert!(last["services"][0].get("next_offset").is_none(), "{last}");

    let (code, summary) = api(&proxy, Method::GET, "/admin/status?instances=summary", None).await;
    assert_eq!(code, 200, "{summary}");
    let svc = &summary["services"][1];
    assert!(ids(svc).is_empty(), "{svc}");
    assert_eq!(svc["states"], json!({"healthy": 5}), "{svc}");
    assert_eq!(svc["instances_total"], 5);

    let (code, _) = api(&proxy, Method::GET, "/admin/status?service=nope", None).await;
    assert_eq!(code, 404);
    for bad in [
        "limit=0",
        "limit=x",
        "offset=-1",
        "colour=red",
        "instances=some",
    ] {
        let (code, answer) = api(&proxy, Method::GET, &format!("/admin/status?{bad}"), None).await;
        assert_eq!(code, 400, "{bad}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let text = "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n  token: s3cret\nroutes:\n  - service: svc\nservices:\n  svc: {instances: []}\n";
    let running = switchyard::server::start(switchyard::config::parse(text).unwrap())
        .await
        .unwrap();
    let url = format!(
        "http://{}/admin/services/svc/instances",
        running.admin_address()
    );
    let client = client();
    let register = |authorization: &str, port: u16| {
        http::Request::post(url.as_str())
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                "{{\"address\": \"127.0.0.1:{port}\"}}"
            ))))
            .unwrap()
    };
    // RFC 9110 §11.1: the scheme name is case-insensitive.
    for (i, authorization) in ["bearer s3cret", "BEARER s3cret", "Bearer s3cret"]
        .into_iter()
        .enumerate()
    {
        let got = send(&client, register(authorization, 1 + i as u16)).await;
        let got = checked("POST", "/admin/services/svc/instances", got);
        assert_eq!(got.status, 201, "{authorization}: {}", got.body);
    }
    let got = checked(
        "POST",
        "/admin/services/svc/instances",
        send(&client, register("Basic s3cret", 9)).await,
    );
    assert_eq!(got.status, 401, "{}", got.body);
    let got = checked(
        "POST",
        "/admin/services/svc/instances",
        send(&client, register("bearer wrong", 9)).await,
    );
    assert_eq!(got.status, 403, "{}", got.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_need_the_token_and_reads_may_too() {
    let yaml = "routes:\n  - service: svc\nservices:\n  svc: {instances: []}\n";
    let text = format!("listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n  token: s3cret\n{yaml}");
    let running = switchyard::server::start(switchyard::config::parse(&text).unwrap())
        .await
        .unwrap();
    let admin = running.admin_address();
    let register = || Some(json!({"address": "127.0.0.1:1"}));
    let path = "/admin/services/svc/instances";
    assert_eq!(
        api_token(admin, Method::POST, path, register(), None)
            .await
            .0,
        401
    );
    assert_eq!(
        api_token(admin, Method::POST, path, register(), Some("wrong"))
            .await
            .0,
        403
    );
    assert_eq!(
        api_token(admin, Method::POST, path, register(), Some("s3cret"))
            .await
            .0,
        201
    );
    assert_eq!(
        api_token(admin, Method::GET, "/admin/services", None, None)
            .await
            .0,
        200,
        "reads are open"
    );

    let locked = text.replace(
        "  token: s3cret\n",
        "  token: s3cret\n  read_requires_token: true\n",
    );
    let running = switchyard::server::start(switchyard::config::parse(&locked).unwrap())
        .await
        .unwrap();
    let admin = running.admin_address();
    assert_eq!(
        api_token(admin, Method::GET, "/admin/status", None, None)
            .await
            .0,
        401
    );
    assert_eq!(
        api_token(admin, Method::GET, "/admin/status", None, Some("s3cret"))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_survive_a_config_reload() {
    let (a, b) = (echo("a").await, echo("b").await);
    let dir = common::binary::temp_dir();
    let path = dir.join("proxy.yaml");
    let text = |weight: u32| {
        format!(
            "listeners: [{{address: 127.0.0.1:0}}]\nadmin: {{address: 127.0.0.1:0}}\nroutes:\n  - service: svc\nservices:\n  svc: {{instances: [{{id: a, address: \"{a}\", weight: {weight}}}]}}\n"
        )
    };
    std::fs::write(&path, text(1)).unwrap();
    let mut options = switchyard::server::LiveOptions::new(&path);
    options.watch = false;
    let proxy = switchyard::server::start_live(options).await.unwrap();
    api(
        &proxy,
        Method::POST,
        "/admin/services/svc/instances",
        Some(json!({"id": "b", "address": b.to_string()})),
    )
    .await;
    std::fs::write(&path, text(3)).unwrap();
    let (status, _) = api(&proxy, Method::POST, "/admin/reload", None).await;
    assert_eq!(status, 200);
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    assert_eq!(ids(&service), ["a", "b"]);
    assert_eq!(service["instances"][0]["weight"], 3);
    let seen = served(&proxy, 8).await;
    assert_eq!(seen.iter().filter(|s| *s == "b").count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_instance_ids_work_in_every_call() {
    let a = echo("a").await;
    let proxy = proxy("routes:\n  - service: svc\nservices:\n  svc: {instances: []}\n").await;
    // No id: the id is the address, with a `:` that URL encoders write as %3A.
    let (status, answer) = api(
        &proxy,
        Method::POST,
        "/admin/services/svc/instances",
        Some(json!({"address": a.to_string(), "ttl": "60s"})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let encoded = a.to_string().replace(':', "%3A");
    let instance = format!("/admin/services/svc/instances/{encoded}");
    for action in ["heartbeat", "drain", "undrain"] {
        let (status, answer) =
            api(&proxy, Method::PUT, &format!("{instance}/{action}"), None).await;
        assert_eq!(status, 200, "{action}: {answer}");
        assert_eq!(answer["id"], a.to_string(), "{action} names the decoded id");
    }
    // The service name is decoded too (`s%76c` is `svc`).
    let (status, service) = api(&proxy, Method::GET, "/admin/services/s%76c", None).await;
    assert_eq!(status, 200, "{service}");
    // An encoded `/` inside a segment is refused, not split or looked up.
    let (status, answer) = api(
        &proxy,
        Method::DELETE,
        "/admin/services/svc/instances/a%2Fb",
        None,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.as_str().unwrap().contains("encoded `/`"), "{answer}");
    let (status, answer) = api(&proxy, Method::DELETE, &instance, None).await;
    assert_eq!(status, 200, "{answer}");
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    assert!(ids(&service).is_empty(), "{service}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_take_fractional_and_combined_waits_and_consul_flags() {
    let proxy = proxy("routes:\n  - service: svc\nservices:\n  svc: {instances: []}\n").await;
    let (_, service) = api(&proxy, Method::GET, "/admin/services/svc", None).await;
    let index = service["index"].as_u64().unwrap();
    for wait in ["0.3s", "0m0.3s"] {
        let started = Instant::now();
        let (status, answer) = api(
            &proxy,
            Method::GET,
            &format!("/admin/services/svc?index={index}&wait={wait}&stale&consistent"),
            None,
        )
        .await;
        let waited = started.elapsed();
        assert_eq!(status, 200, "wait={wait}: {answer}");
        assert_eq!(answer["index"], index);
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
            "wait={wait} blocked {waited:?}"
        );
    }
    for (query, words) in [
        ("wait=-1s", "negative"),
        ("wait=1.5d", "unknown unit `d`"),
        ("wait=NaN", "not a duration"),
        ("nope=1", "unknown parameter `nope`"),
    ] {
        let (status, answer) = api(
            &proxy,
            Method::GET,
            &format!("/admin/services/svc?index={index}&{query}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(
            answer.as_str().unwrap().contains(words),
            "{query}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_answer_head_like_get_without_a_body() {
    let a = echo("a").await;
    let proxy = proxy(&format!(
        "routes:\n  - service: svc\nservices:\n  svc: {{instances: [{{id: a, address: \"{a}\"}}]}}\n"
    ))
    .await;
    let admin = proxy.admin_address();
    let client = client();
    for path in [
        "/admin/status",
        "/admin/health",
        "/admin/services",
        "/admin/services/svc",
        "/admin/services/svc?healthy=true",
        "/",
    ] {
        let url = format!("http://{admin}{path}");
        let got = checked("GET", path, get(&client, &url, &[]).await);
        assert_eq!(got.status, 200, "GET {path}: {}", got.body);
        let head = send(&client, Request::head(&url).body(Full::default()).unwrap()).await;
        let head = checked("HEAD", path, head);
        assert_eq!(head.status, 200, "HEAD {path}: {}", head.body);
        assert!(head.body.is_empty(), "HEAD {path} has no body");
        assert_eq!(
            head.headers["content-type"], got.headers["content-type"],
            "HEAD {path}"
        );
        let length: usize = head.headers["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // /admin/status carries timings that change between calls.
        if path != "/admin/status" {
            assert_eq!(
                length,
                got.body.len(),
                "HEAD {path}: the length GET would send"
            );
        } else {
            assert!(length > 0);
        }
    }
    // An unknown service is a 404 for HEAD as for GET.
    let head = send(
        &client,
        Request::head(format!("http://{admin}/admin/services/nope"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let head = checked("HEAD", "/admin/services/nope", head);
    assert_eq!(head.status, 404);
}
