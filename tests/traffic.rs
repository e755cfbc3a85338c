//! Traffic policy over real sockets: route conditions and their
//! precedence, weighted splits (smooth and keyed), subsets by version and
//! tags with their fallbacks, header rewrites, and `check`'s warning about
//! routes that can never match.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::binary::{command, temp_dir};
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;
use switchyard::admin_client::{call, call_with};
use switchyard::server::{start_live, LiveOptions, Running};

/// A request with `method`, `path` and extra header fields.
async fn served(proxy: &Running, method: Method, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", base(proxy)));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(&client(), request.body(Full::default()).unwrap()).await
}

async fn who(proxy: &Running, method: Method, path: &str, headers: &[(&str, &str)]) -> String {
    let got = served(proxy, method, path, headers).await;
    assert_eq!(got.status, 200, "{path} {headers:?}: {}", got.body);
    got.served_by()
}

/// A request (method, path with query, extra header fields) and the
/// service whose route must win.
type RouteCase<'a> = (Method, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_condition_matches_and_precedence_is_host_then_path_then_conditions() {
    let mut services = String::from("services:\n");
    for name in [
        "post", "any", "exact", "prefix", "regex", "present", "absent", "qexact", "qpresent",
        "qnone", "pattern", "items", "two", "one", "shop", "beta",
    ] {
        let address = echo(name).await;
        services.push_str(&format!(
            "  {name}: {{instances: [{{address: \"{address}\"}}]}}\n"
        ));
    }
    let routes = r#"routes:
  - {path_prefix: /m, service: any}
  - {path_prefix: /m, methods: [post, PUT], service: post}
  - {path_prefix: /h, headers: {x-env: {exact: staging}}, service: exact}
  - {path_prefix: /h, headers: {x-user: {prefix: "beta-"}}, service: prefix}
  - {path_prefix: /h, headers: {x-build: {regex: "[0-9]+\\.[0-9]+"}}, service: regex}
  - {path_prefix: /h, headers: {x-debug: {present: true}}, service: present}
  - {path_prefix: /h, headers: {x-legacy: {present: false}}, service: absent}
  - {path_prefix: /h, service: any}
  - {path_prefix: /q, query: {v: {exact: "2 b"}}, service: qexact}
  - {path_prefix: /q, query: {debug: {present: true}}, service: qpresent}
  - {path_prefix: /q, service: qnone}
  - {path_prefix: /items, service: items}
  - {path_regex: "/items/[0-9]+", service: pattern}
  - {path_prefix: /p, headers: {x-a: {present: true}}, service: one}
  - {path_prefix: /p, headers: {x-a: {present: true}, x-b: {present: true}}, service: two}
  - {host: "*", path_prefix: /s, headers: {x-beta: {present: true}}, service: beta}
  - {host: shop.test, path_prefix: /, service: shop}
"#;
    let proxy = proxy(&format!("{routes}{services}")).await;
    let get = Method::GET;

    // Each request and the service whose route must win.
    let legacy = ("x-legacy", "1");
    let cases: &[RouteCase] = &[
        // Methods.
        (Method::POST, "/m", &[], "post"),
        (Method::PUT, "/m/x", &[], "post"),
        (get.clone(), "/m", &[], "any"),
        // Headers: exact, prefix, regex (whole value), present, absent.
        (get.clone(), "/h", &[("x-env", "staging"), legacy], "exact"),
        (get.clone(), "/h", &[("x-env", "staging2"), legacy], "any"),
        (
            get.clone(),
            "/h",
            &[("x-user", "beta-17"), legacy],
            "prefix",
        ),
        (
            get.clone(),
            "/h",
            &[("x-user", "alpha-beta-"), legacy],
            "any",
        ),
        (get.clone(), "/h", &[("x-build", "2.10"), legacy], "regex"),
        (get.clone(), "/h", &[("x-build", "v2.10"), legacy], "any"),
        (get.clone(), "/h", &[("x-debug", ""), legacy], "present"),
        (get.clone(), "/h", &[], "absent"),
        (get.clone(), "/h", &[legacy], "any"),
        // Query: exact (percent- and plus-decoded), present (with or without a value).
        (get.clone(), "/q?a=1&v=2+b", &[], "qexact"),
        (get.clone(), "/q?v=2%20b", &[], "qexact"),
        (get.clone(), "/q?v=2", &[], "qnone"),
        (get.clone(), "/q?debug", &[], "qpresent"),
        (get.clone(), "/q?debug=0", &[], "qpresent"),
        (get.clone(), "/q?debugx=1", &[], "qnone"),
        // A path pattern is tried before prefixes and must match the whole path.
        (get.clone(), "/items/42", &[], "pattern"),
        (get.clone(), "/items/42/x", &[], "items"),
        (get.clone(), "/items/abc", &[], "items"),
    ];
    for (method, path, headers, expected) in cases {
        assert_eq!(
            who(&proxy, method.clone(), path, headers).await,
            *expected,
            "{method} {path} {headers:?}"
        );
    }

    // Same host and path: more conditions first, whatever the config order.
    assert_eq!(
        who(&proxy, get.clone(), "/p", &[("x-a", "1"), ("x-b", "1")]).await,
        "two"
    );
    assert_eq!(who(&proxy, get.clone(), "/p", &[("x-a", "1")]).await, "one");
    assert_eq!(
        served(&proxy, get.clone(), "/p", &[("x-b", "1")])
            .await
            .status,
        404
    );

    // Host first: the exact host's route wins over a catch-all host's route
    // with more conditions.
    let beta = [("x-beta", "1")];
    assert_eq!(who(&proxy, get.clone(), "/s", &beta).await, "beta");
    let mut shop = beta.to_vec();
    shop.push(("host", "shop.test"));
    assert_eq!(who(&proxy, get.clone(), "/s", &shop).await, "shop");
}

/// A live proxy over `text`, written to a file that `POST /admin/reload`
/// reads again.
async fn live(text: &str) -> (Running, PathBuf) {
    let path = temp_dir().join("proxy.yaml");
    std::fs::write(&path, text).unwrap();
    let mut options = LiveOptions::new(&path);
    options.watch = false;
    (start_live(options).await.unwrap(), path)
}

async fn reload(proxy: &Running, path: &PathBuf, text: &str) {
    std::fs::write(path, text).unwrap();
    let (status, body) = call(proxy.admin_address(), Method::POST, "/admin/reload")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

fn split_config(
    v1: std::net::SocketAddr,
    v2: std::net::SocketAddr,
    weights: (u32, u32),
    split_by: &str,
) -> String {
    format!(
        "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nroutes:\n  - path_prefix: /\n    {split_by}\n    backends:\n      - {{service: web-v1, weight: {}}}\n      - {{service: web-v2, weight: {}}}\nservices:\n  web-v1: {{instances: [{{address: \"{v1}\"}}]}}\n  web-v2: {{instances: [{{address: \"{v2}\"}}]}}\n",
        weights.0, weights.1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_95_5_split_is_exact_over_2000_requests_and_interleaved() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let (proxy, path) = live(&split_config(v1, v2, (95, 5), "")).await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    let mut order = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let got = get(&client, &url, &[]).await;
        assert_eq!(got.status, 200, "{}", got.body);
        order.push(got.served_by());
    }
    let v2_at: Vec<usize> = (0..order.len()).filter(|i| order[*i] == "v2").collect();
    assert_eq!(v2_at.len(), 100, "v2 got {} of 2000", v2_at.len());
    assert_eq!(order.iter().filter(|s| *s == "v1").count(), 1900);
    // Smooth: one v2 in every 20 requests, never two close together.
    assert!(
        v2_at.windows(2).all(|w| w[1] - w[0] == 20),
        "v2 picks not evenly spaced: {v2_at:?}"
    );

    // A reload that changes the weights carries on counting: over the
    // next 1,000 requests 90/10 gives exactly 100 to v2.
    reload(&proxy, &path, &split_config(v1, v2, (90, 10), "")).await;
    let mut v2 = 0;
    for _ in 0..1000 {
        let got = get(&client, &url, &[]).await;
        assert_eq!(got.status, 200, "{}", got.body);
        v2 += usize::from(got.served_by() == "v2");
    }
    assert_eq!(v2, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_keyed_split_keeps_each_key_and_moves_only_the_keys_that_must_move() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let split_by = "split_by: header x-user";
    let (proxy, path) = live(&split_config(v1, v2, (95, 5), split_by)).await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    let round = |client, url| async move {
        let mut placed = HashMap::new();
        for key in 0..1000 {
            let user = format!("user-{key}");
            let got = get(client, url, &[("x-user", &user)]).await;
            assert_eq!(got.status, 200, "{}", got.body);
            placed.insert(user, got.served_by());
        }
        placed
    };
    let first = round(&client, &url).await;
    let again = round(&client, &url).await;
    assert_eq!(
        first, again,
        "a key changed backend with the weights unchanged"
    );
    let on_v2 = first.values().filter(|s| *s == "v2").count();
    assert!(
        (20..=90).contains(&on_v2),
        "{on_v2} of 1000 keys on v2 at 5%"
    );

    reload(&proxy, &path, &split_config(v1, v2, (90, 10), split_by)).await;
    let after = round(&client, &url).await;
    let moved: Vec<(&String, &String)> = first
        .iter()
        .filter(|(key, backend)| after[*key] != **backend)
        .collect();
    assert!(
        moved
            .iter()
            .all(|(key, from)| *from == "v1" && after[*key] == "v2"),
        "a key moved away from v2: {moved:?}"
    );
    assert!(
        (20..=90).contains(&moved.len()),
        "{} of 1000 keys moved from 5% to 10%",
        moved.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subsets_pick_by_version_or_tags_and_fall_back_to_any_or_503() {
    let (old, new, canary) = (echo("old").await, echo("new").await, echo("canary").await);
    let text = format!(
        r#"routes:
  - {{path_prefix: /v2, backends: [{{service: web, subset: {{version: "2.1"}}}}]}}
  - {{path_prefix: /canary, backends: [{{service: web, subset: {{tags: [canary]}}}}]}}
  - {{path_prefix: /v3any, backends: [{{service: web, subset: {{version: "3.0"}}, fallback: any}}]}}
  - {{path_prefix: /v3none, backends: [{{service: web, subset: {{version: "3.0"}}, fallback: none}}]}}
services:
  web:
    instances:
      - {{id: old, address: "{old}", version: "1.0"}}
      - {{id: new, address: "{new}", version: "2.1"}}
      - {{id: canary, address: "{canary}", version: "2.1", tags: [canary]}}
"#
    );
    let proxy = proxy(&text).await;
    let get = Method::GET;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let by = who(&proxy, get.clone(), "/v2", &[]).await;
        assert!(by == "new" || by == "canary", "{by} is not 2.1");
        seen.insert(by);
        assert_eq!(who(&proxy, get.clone(), "/canary", &[]).await, "canary");
    }
    assert_eq!(seen.len(), 2, "the subset balances over both 2.1 instances");
    // No 3.0 instance: `any` uses the whole service, `none` answers 503.
    let mut any = std::collections::BTreeSet::new();
    for _ in 0..12 {
        any.insert(who(&proxy, get.clone(), "/v3any", &[]).await);
    }
    assert_eq!(any.len(), 3, "{any:?}");
    let refused = served(&proxy, get.clone(), "/v3none", &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("version 3.0"), "{}", refused.body);

    // A 3.0 instance registered through the API with its version takes
    // the subset's traffic; the API and the status show the version.
    let v3 = echo("v3").await;
    let (status, body) = call_with(
        proxy.admin_address(),
        Method::POST,
        "/admin/services/web/instances",
        None,
        Some(&json!({"id": "v3", "address": v3.to_string(), "version": "3.0"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let started = Instant::now();
    loop {
        let got = served(&proxy, get.clone(), "/v3none", &[]).await;
        if got.status == 200 {
            assert_eq!(got.served_by(), "v3");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "v3 never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, status) = call(proxy.admin_address(), Method::GET, "/admin/status")
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let versions: HashMap<String, String> = status["services"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["version"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    assert_eq!(versions["old"], "1.0");
    assert_eq!(versions["v3"], "3.0");
    // With a 3.0 instance, `fallback: any` leaves the whole service: only
    // the subset serves.
    for i in 0..12 {
        assert_eq!(
            who(&proxy, get.clone(), "/v3any", &[]).await,
            "v3",
            "request {i}"
        );
    }

    // The other way: v3 deregistered, the subset is empty again; `none`
    // answers 503 and `any` falls back to the whole service once more.
    let (status, body) = call(
        proxy.admin_address(),
        Method::DELETE,
        "/admin/services/web/instances/v3",
    )
    .await
    .unwrap();
    assert!(status.is_success(), "{status} {body}");
    let started = Instant::now();
    loop {
        let got = served(&proxy, get.clone(), "/v3none", &[]).await;
        if got.status == 503 {
            assert!(got.body.contains("version 3.0"), "{}", got.body);
            break;
        }
        assert_eq!(got.served_by(), "v3");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "v3 never left the subset"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut any = std::collections::BTreeSet::new();
    for _ in 0..12 {
        any.insert(who(&proxy, get.clone(), "/v3any", &[]).await);
    }
    assert_eq!(
        any,
        ["canary", "new", "old"].map(String::from).into(),
        "back on the whole service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_headers_are_rewritten_and_the_backend_named() {
    let address = echo("e1").await;
    let text = format!(
        r#"routes:
  - path_prefix: /
    service: web
    backend_header: true
    request_headers:
      set: {{x-canary: "yes"}}
      add: {{x-tag: added}}
      remove: [x-secret]
    response_headers:
      set: {{cache-control: no-store}}
      remove: [x-served-by]
  - {{path_prefix: /plain, service: web}}
services:
  web: {{instances: [{{id: i1, address: "{address}"}}]}}
"#
    );
    let proxy = proxy(&text).await;
    let got = served(
        &proxy,
        Method::GET,
        "/",
        &[
            ("x-canary", "no"),
            ("x-secret", "hunter2"),
            ("x-tag", "mine"),
        ],
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.echoed("x-canary").as_deref(), Some("yes"));
    assert_eq!(got.echoed("x-secret"), None);
    let tags: Vec<&str> = got
        .body
        .lines()
        .filter(|l| l.starts_with("  x-tag: "))
        .collect();
    assert_eq!(tags, ["  x-tag: mine", "  x-tag: added"], "{}", got.body);
    assert_eq!(got.headers["cache-control"], "no-store");
    assert!(!got.headers.contains_key("x-served-by"));
    assert_eq!(got.headers["x-switchyard-backend"], "web/i1");

    let plain = served(&proxy, Method::GET, "/plain", &[("x-secret", "s")]).await;
    assert_eq!(plain.echoed("x-secret").as_deref(), Some("s"));
    assert!(!plain.headers.contains_key("x-switchyard-backend"));
    assert_eq!(plain.served_by(), "e1");
}

#[test]
fn check_warns_about_a_route_an_earlier_one_always_beats() {
    let text = r#"listeners: [{address: 127.0.0.1:0}]
admin: {address: 127.0.0.1:0}
routes:
  - {path_prefix: /api, headers: {x-beta: {present: true}}, service: a}
  - {path_prefix: /api, headers: {x-beta: {exact: "1"}}, service: b}
  - {path_prefix: /api, headers: {x-beta: {exact: "1"}, x-more: {present: true}}, service: b}
  - {path_prefix: /web, methods: [GET], service: a}
services:
  a: {instances: [{address: "127.0.0.1:9001"}]}
  b: {instances: [{address: "127.0.0.1:9002"}]}
"#;
    let path = temp_dir().join("proxy.yaml");
    std::fs::write(&path, text).unwrap();
    let output = command()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let warnings: Vec<&str> = stdout.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0].starts_with("routes[1]: warning: never matches: routes[0]"),
        "{stdout}"
    );
}
