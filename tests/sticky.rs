//! Sticky sessions: the cookie keeps a client on one instance over many
//! requests and across a reload, moves it (with a new cookie) when its
//! instance is drained or removed (within the subset when the route names
//! one), never shows the instance's address, carries the configured
//! attributes, and a forged or garbled cookie is only re-balanced.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::admin::call;
use common::binary::temp_dir;
use common::*;
use http::Method;
use switchyard::server::{start_live, LiveOptions, Running};

/// `routes:` and `services:` for one service `svc` over echo upstreams
/// `a`, `b`, `c` with `strategy` and the `sticky:` block `sticky`.
fn services(upstreams: &[(SocketAddr, &str)], strategy: &str, sticky: &str) -> String {
    let mut text = format!(
        "routes:\n  - service: svc\nservices:\n  svc:\n    strategy: {strategy}\n    sticky: {sticky}\n    instances:\n"
    );
    for (address, id) in upstreams {
        text.push_str(&format!("      - {{id: {id}, address: \"{address}\"}}\n"));
    }
    text
}

async fn three() -> Vec<(SocketAddr, &'static str)> {
    vec![
        (echo("a").await, "a"),
        (echo("b").await, "b"),
        (echo("c").await, "c"),
    ]
}

/// The `Set-Cookie` headers of a response.
fn set_cookies(got: &Got) -> Vec<String> {
    got.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The `name=value` part of the one sticky cookie a response sets.
fn sticky_pair(got: &Got) -> String {
    let cookies = set_cookies(got);
    assert_eq!(cookies.len(), 1, "one Set-Cookie: {cookies:?}");
    cookies[0].split(';').next().unwrap().to_string()
}

async fn get_with_cookie(url: &str, cookie: &str) -> Got {
    let headers: &[(&str, &str)] = if cookie.is_empty() {
        &[]
    } else {
        &[("cookie", cookie)]
    };
    let got = get(&client(), url, headers).await;
    assert_eq!(got.status, 200, "{}", got.body);
    got
}

#[tokio::test]
async fn the_cookie_holds_a_client_on_one_instance_and_never_names_its_address() {
    let upstreams = three().await;
    let running = proxy(&services(&upstreams, "round_robin", "{cookie: sy}")).await;
    let url = format!("{}/", base(&running));

    // Without a cookie, round-robin spreads requests over all three, and
    // every answer sets a cookie naming the instance that served it.
    let mut pairs = std::collections::HashMap::new();
    for _ in 0..3 {
        let got = get_with_cookie(&url, "").await;
        pairs.insert(got.served_by(), sticky_pair(&got));
    }
    assert_eq!(pairs.len(), 3, "{pairs:?}");

    for (served_by, pair) in &pairs {
        let value = pair.strip_prefix("sy=").unwrap();
        assert_eq!(value.len(), 32, "{pair}");
        assert!(value.bytes().all(|b| b.is_ascii_hexdigit()), "{pair}");
        for (address, _) in &upstreams {
            assert!(!pair.contains(&address.to_string()), "{pair}");
            assert!(!pair.contains(&address.port().to_string()), "{pair}");
            assert!(!pair.contains(&hex(&address.to_string())), "{pair}");
        }
        assert!(!pair.contains("127.0.0.1"), "{pair}");

        // 100 requests carrying it all go to its instance, and the
        // cookie is not set again.
        for i in 0..100 {
            let got = get_with_cookie(&url, &format!("theme=dark; {pair}")).await;
            assert_eq!(&got.served_by(), served_by, "request {i}");
            assert!(set_cookies(&got).is_empty(), "request {i}");
        }
    }
    running.shutdown().await;
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

async fn admin(running: &Running, method: Method, path: &str) -> (u16, String) {
    let (status, body) = call(running.admin_address(), method, path).await.unwrap();
    (status.as_u16(), body)
}

#[tokio::test]
async fn the_cookie_survives_a_reload_and_moves_when_its_instance_is_drained_or_removed() {
    let upstreams = three().await;
    let head = "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n";
    let text = format!(
        "{head}{}",
        services(&upstreams, "round_robin", "{cookie: sy, max_age: 1h}")
    );
    let path = temp_dir().join("proxy.yaml");
    std::fs::write(&path, &text).unwrap();
    let mut options = LiveOptions::new(&path);
    options.watch = false;
    let running = start_live(options).await.unwrap();
    let url = format!("{}/", base(&running));

    let first = get_with_cookie(&url, "").await;
    let home = first.served_by();
    let pair = sticky_pair(&first);

    // An unrelated edit (another service), applied by a reload.
    let generation = running.registry().snapshot().generation;
    let edited = format!(
        "{text}  other:\n    instances:\n      - address: \"{}\"\n",
        upstreams[0].0
    );
    std::fs::write(&path, edited).unwrap();
    let (status, answer) = admin(&running, Method::POST, "/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("applied"), "{answer}");
    assert!(running.registry().snapshot().generation > generation);
    for i in 0..20 {
        let got = get_with_cookie(&url, &pair).await;
        assert_eq!(got.served_by(), home, "request {i} after the reload");
        assert!(set_cookies(&got).is_empty(), "request {i} after the reload");
    }

    // Draining its instance sends the client elsewhere, with a new cookie
    // that holds it there.
    let (status, answer) = admin(
        &running,
        Method::PUT,
        &format!("/admin/services/svc/instances/{home}/drain"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let moved = get_with_cookie(&url, &pair).await;
    let new_home = moved.served_by();
    assert_ne!(new_home, home);
    let new_pair = sticky_pair(&moved);
    assert_ne!(new_pair, pair);
    for i in 0..20 {
        let got = get_with_cookie(&url, &new_pair).await;
        assert_eq!(got.served_by(), new_home, "request {i} after the drain");
        assert!(set_cookies(&got).is_empty(), "request {i} after the drain");
    }
    // The old cookie names an instance out of rotation: re-balanced each
    // time, never to it.
    for i in 0..6 {
        let got = get_with_cookie(&url, &pair).await;
        assert_ne!(got.served_by(), home, "request {i}");
        assert_eq!(set_cookies(&got).len(), 1, "request {i}");
    }

    // Back in rotation, the old cookie finds it again.
    let (status, answer) = admin(
        &running,
        Method::PUT,
        &format!("/admin/services/svc/instances/{home}/undrain"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get_with_cookie(&url, &pair).await;
        if got.served_by() == home {
            assert!(set_cookies(&got).is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the undrained instance never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Removed from the config by a reload: the client moves, with a new
    // cookie.
    let removed: String = text
        .lines()
        .filter(|line| !line.contains(&format!("{{id: {home},")))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(removed, text);
    std::fs::write(&path, removed).unwrap();
    let (status, answer) = admin(&running, Method::POST, "/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    let moved = get_with_cookie(&url, &pair).await;
    assert_ne!(moved.served_by(), home);
    let pair = sticky_pair(&moved);
    let got = get_with_cookie(&url, &pair).await;
    assert_eq!(got.served_by(), moved.served_by());
    assert!(set_cookies(&got).is_empty());
    running.shutdown().await;
}

#[tokio::test]
async fn the_cookie_carries_the_configured_attributes() {
    let upstreams = three().await;
    let cases = [
        ("{cookie: sy}", "; Path=/; HttpOnly"),
        (
            "{cookie: cart-id, max_age: 2h, secure: true, http_only: false, same_site: strict}",
            "; Path=/; Max-Age=7200; Secure; SameSite=Strict",
        ),
        (
            "{cookie: s, max_age: 30s, secure: true, same_site: None}",
            "; Path=/; Max-Age=30; Secure; HttpOnly; SameSite=None",
        ),
        (
            "{cookie: s, same_site: lax}",
            "; Path=/; HttpOnly; SameSite=Lax",
        ),
    ];
    for (sticky, attributes) in cases {
        let running = proxy(&services(&upstreams, "round_robin", sticky)).await;
        let got = get_with_cookie(&format!("{}/", base(&running)), "").await;
        let cookies = set_cookies(&got);
        assert_eq!(cookies.len(), 1, "{sticky}: {cookies:?}");
        let (pair, rest) = cookies[0].split_at(cookies[0].find(';').unwrap());
        assert_eq!(rest, attributes, "{sticky}");
        let name = sticky.split([' ', ',', '}']).nth(1).unwrap();
        assert!(pair.starts_with(&format!("{name}=")), "{sticky}: {pair}");
        running.shutdown().await;
    }
}

#[tokio::test]
async fn forged_and_garbled_cookies_are_re_balanced_never_refused() {
    let upstreams = three().await;
    let running = proxy(&services(&upstreams, "round_robin", "{cookie: sy}")).await;
    let url = format!("{}/", base(&running));
    let good = sticky_pair(&get_with_cookie(&url, "").await);
    let value = good.strip_prefix("sy=").unwrap();
    let flipped = format!(
        "sy={}{}",
        &value[..31],
        if value.ends_with('0') { '1' } else { '0' }
    );
    let garbage = [
        "sy=".to_string(),
        "sy".to_string(),
        "sy=../../etc/passwd".to_string(),
        "sy=127.0.0.1:8080".to_string(),
        format!("sy={}", "f".repeat(32)),
        format!("sy={}", "z".repeat(32)),
        format!("sy={value}{value}"),
        flipped,
        format!("sy=\"{value}\""),
        ";;;=;=".to_string(),
        "sy==%00%ff".to_string(),
    ];
    let mut served = std::collections::HashSet::new();
    for cookie in &garbage {
        let got = get(&client(), &url, &[("cookie", cookie.as_str())]).await;
        assert_eq!(got.status, 200, "{cookie}: {}", got.body);
        served.insert(got.served_by());
        let pair = sticky_pair(&got);
        assert_ne!(&pair, cookie, "a new cookie replaces {cookie}");
        // The new cookie holds.
        let again = get_with_cookie(&url, &pair).await;
        assert_eq!(again.served_by(), got.served_by(), "{cookie}");
    }
    assert_eq!(
        served.len(),
        3,
        "re-balanced over every instance: {served:?}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn every_strategy_honours_the_cookie_and_a_shared_secret_works_on_every_node() {
    let upstreams = three().await;
    let sticky = "{cookie: sy, secret: correct-horse-battery}";
    // One cookie per instance, from a first node.
    let first = proxy(&services(&upstreams, "round_robin", sticky)).await;
    let mut cookies = Vec::new();
    for _ in 0..3 {
        let got = get_with_cookie(&format!("{}/", base(&first)), "").await;
        cookies.push((got.served_by(), sticky_pair(&got)));
    }
    first.shutdown().await;
    let ids: std::collections::HashSet<_> = cookies.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 3, "{cookies:?}");

    // Other nodes with the same secret, one per strategy, honour them.
    for strategy in [
        "round_robin",
        "random",
        "weighted_round_robin",
        "least_connections",
        "ip_hash",
    ] {
        let node = proxy(&services(&upstreams, strategy, sticky)).await;
        let url = format!("{}/", base(&node));
        for (id, pair) in &cookies {
            for i in 0..10 {
                let got = get_with_cookie(&url, pair).await;
                assert_eq!(&got.served_by(), id, "{strategy} request {i}");
                assert!(set_cookies(&got).is_empty(), "{strategy} request {i}");
            }
        }
        node.shutdown().await;
    }
}

#[tokio::test]
async fn an_unhealthy_instance_loses_its_clients_with_a_new_cookie() {
    use common::flippable::{Flippable, Mode};
    let (a, b) = (Flippable::start("a").await, Flippable::start("b").await);
    let running = proxy(&format!(
        "routes:\n  - service: svc\nservices:\n  svc:\n    sticky: {{cookie: sy}}\n    health_check: {{path: /healthz, interval: 50ms, timeout: 40ms, jitter: 0ms, unhealthy_threshold: 2, healthy_threshold: 1, initial: healthy}}\n    instances:\n      - {{id: a, address: \"{}\"}}\n      - {{id: b, address: \"{}\"}}\n",
        a.address, b.address
    ))
    .await;
    let url = format!("{}/", base(&running));
    let deadline = Instant::now() + Duration::from_secs(10);
    let pair = loop {
        let got = get_with_cookie(&url, "").await;
        if got.served_by() == "a" {
            break sticky_pair(&got);
        }
        assert!(Instant::now() < deadline, "a never served");
    };
    a.set(Mode::Status(500));
    view_until(&running, "svc", "a out of rotation", |view| {
        view["instances"].as_array().is_some_and(|list| {
            list.iter()
                .any(|i| i["id"] == "a" && i["health"] == "unhealthy")
        })
    })
    .await;
    let moved = get_with_cookie(&url, &pair).await;
    assert_eq!(moved.served_by(), "b");
    let new_pair = sticky_pair(&moved);
    assert_ne!(new_pair, pair);
    for i in 0..10 {
        let got = get_with_cookie(&url, &new_pair).await;
        assert_eq!(got.served_by(), "b", "request {i}");
        assert!(set_cookies(&got).is_empty(), "request {i}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn the_owned_http1_server_sets_and_honours_the_cookie_too() {
    let upstreams = three().await;
    let text = format!(
        "listeners:\n  - {{address: 127.0.0.1:0, http1: owned}}\nadmin:\n  address: 127.0.0.1:0\n{}",
        services(&upstreams, "round_robin", "{cookie: sy, same_site: strict}")
    );
    let running = switchyard::server::start(switchyard::config::parse(&text).unwrap())
        .await
        .unwrap();
    let url = format!("{}/", base(&running));
    let first = get_with_cookie(&url, "").await;
    let cookies = set_cookies(&first);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(
        cookies[0].ends_with("; Path=/; HttpOnly; SameSite=Strict"),
        "{cookies:?}"
    );
    let pair = sticky_pair(&first);
    for i in 0..20 {
        let got = get_with_cookie(&url, &pair).await;
        assert_eq!(got.served_by(), first.served_by(), "request {i}");
        assert!(set_cookies(&got).is_empty(), "request {i}");
    }
    // A body goes through the other client; the cookie works the same.
    let post = http::Request::post(&url)
        .header("cookie", &pair)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
        .unwrap();
    let got = send(&client(), post).await;
    assert_eq!((got.status, got.served_by()), (200, first.served_by()));
    running.shutdown().await;
}

#[tokio::test]
async fn a_request_that_fails_over_gets_the_cookie_of_the_instance_that_answered() {
    let sticky = "{cookie: sy, secret: shared}";
    let alive = vec![(echo("a").await, "a"), (echo("b").await, "b")];
    // A cookie naming `a`, from a node where `a` answers.
    let first = proxy(&services(&alive, "round_robin", sticky)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pair = loop {
        let got = get_with_cookie(&format!("{}/", base(&first)), "").await;
        if got.served_by() == "a" {
            break sticky_pair(&got);
        }
        assert!(Instant::now() < deadline, "a never served");
    };
    first.shutdown().await;
    // On a node where `a` refuses connections (no health checks, so it
    // stays in rotation), the retry's instance answers and is named.
    let refusing = vec![(dead_address().await, "a"), (alive[1].0, "b")];
    let node = proxy(&services(&refusing, "round_robin", sticky)).await;
    let url = format!("{}/", base(&node));
    let got = get_with_cookie(&url, &pair).await;
    assert_eq!(got.served_by(), "b");
    let moved = sticky_pair(&got);
    assert_ne!(moved, pair);
    let again = get_with_cookie(&url, &moved).await;
    assert_eq!(again.served_by(), "b");
    assert!(set_cookies(&again).is_empty());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_decision_is_sticky_too() {
    // 50/50 over two services, each with two instances: without a cookie
    // the smooth split alternates; with one, the client stays on the
    // backend and the instance its cookie names.
    let (v1a, v1b, v2a, v2b) = (
        echo("v1-a").await,
        echo("v1-b").await,
        echo("v2-a").await,
        echo("v2-b").await,
    );
    let running = proxy(&format!(
        "routes:\n  - backends: [{{service: v1, weight: 1}}, {{service: v2, weight: 1}}]\nservices:\n  v1:\n    sticky: {{cookie: sy}}\n    instances: [{{id: a, address: \"{v1a}\"}}, {{id: b, address: \"{v1b}\"}}]\n  v2:\n    sticky: {{cookie: sy}}\n    instances: [{{id: a, address: \"{v2a}\"}}, {{id: b, address: \"{v2b}\"}}]\n"
    ))
    .await;
    let url = format!("{}/", base(&running));
    let served = |got: &Got| {
        got.headers
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut without = std::collections::BTreeSet::new();
    for _ in 0..4 {
        without.insert(served(&get_with_cookie(&url, "").await));
    }
    assert!(
        without.iter().any(|s| s.starts_with("v1")) && without.iter().any(|s| s.starts_with("v2")),
        "without a cookie both backends serve: {without:?}"
    );
    for _ in 0..2 {
        let first = get_with_cookie(&url, "").await;
        let (pair, by) = (sticky_pair(&first), served(&first));
        for i in 0..40 {
            let got = get_with_cookie(&url, &pair).await;
            assert_eq!(served(&got), by, "request {i} with {pair}");
            assert!(set_cookies(&got).is_empty(), "the cookie stands");
        }
    }
}

#[tokio::test]
async fn the_cookie_holds_a_client_inside_a_subset_and_moves_within_it() {
    // Service `web`: two instances of version 1, three of version 2. The
    // main route sends only to the version-2 subset; `/all` sends to the
    // whole service (to get a cookie naming a version-1 instance).
    let mut instances = String::new();
    for (id, version) in [
        ("v1-a", "1"),
        ("v1-b", "1"),
        ("v2-a", "2"),
        ("v2-b", "2"),
        ("v2-c", "2"),
    ] {
        instances.push_str(&format!(
            "      - {{id: {id}, address: \"{}\", version: \"{version}\"}}\n",
            echo(id).await
        ));
    }
    let running = proxy(&format!(
        "routes:\n  - {{path_prefix: /all, service: web}}\n  - path_prefix: /\n    backends: [{{service: web, subset: {{version: \"2\"}}}}]\nservices:\n  web:\n    sticky: {{cookie: sy}}\n    instances:\n{instances}"
    ))
    .await;
    let url = format!("{}/", base(&running));

    let first = get_with_cookie(&url, "").await;
    let home = first.served_by();
    assert!(home.starts_with("v2-"), "{home}");
    let pair = sticky_pair(&first);
    for i in 0..50 {
        let got = get_with_cookie(&url, &pair).await;
        assert_eq!(got.served_by(), home, "request {i}");
        assert!(set_cookies(&got).is_empty(), "request {i}");
    }

    // A cookie naming a version-1 instance (valid for the service) is not
    // honoured here: re-balanced within the subset, and rewritten.
    let all = format!("{}/all", base(&running));
    let mut v1_pair = None;
    for _ in 0..5 {
        let got = get_with_cookie(&all, "").await;
        if got.served_by().starts_with("v1-") {
            v1_pair = Some((got.served_by(), sticky_pair(&got)));
            break;
        }
    }
    let (v1_home, v1_pair) = v1_pair.expect("a version-1 instance served /all");
    let on_all = get_with_cookie(&all, &v1_pair).await;
    assert_eq!(on_all.served_by(), v1_home, "honoured on the whole service");
    for i in 0..6 {
        let got = get_with_cookie(&url, &v1_pair).await;
        assert!(got.served_by().starts_with("v2-"), "request {i}");
        let rewritten = sticky_pair(&got);
        assert_ne!(rewritten, v1_pair, "request {i}");
        let again = get_with_cookie(&url, &rewritten).await;
        assert_eq!(again.served_by(), got.served_by(), "request {i}");
        assert!(set_cookies(&again).is_empty(), "request {i}");
    }

    // Draining its instance moves the client to another version-2
    // instance, with a new cookie that holds it there; never to version 1.
    let (status, answer) = admin(
        &running,
        Method::PUT,
        &format!("/admin/services/web/instances/{home}/drain"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let moved = get_with_cookie(&url, &pair).await;
    let new_home = moved.served_by();
    assert!(
        new_home.starts_with("v2-") && new_home != home,
        "{new_home}"
    );
    let new_pair = sticky_pair(&moved);
    assert_ne!(new_pair, pair);
    for i in 0..20 {
        let got = get_with_cookie(&url, &new_pair).await;
        assert_eq!(got.served_by(), new_home, "request {i} after the drain");
        assert!(set_cookies(&got).is_empty(), "request {i} after the drain");
    }
    for i in 0..10 {
        let got = get_with_cookie(&url, &pair).await;
        let by = got.served_by();
        assert!(by.starts_with("v2-") && by != home, "request {i}: {by}");
        assert_eq!(set_cookies(&got).len(), 1, "request {i}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn a_split_over_two_subsets_of_one_service_is_sticky_too() {
    // 50/50 between the version-1 and version-2 subsets of one service: a
    // cookie naming an instance keeps the client on the subset holding it.
    let mut instances = String::new();
    for (id, version) in [("v1-a", "1"), ("v1-b", "1"), ("v2-a", "2"), ("v2-b", "2")] {
        instances.push_str(&format!(
            "      - {{id: {id}, address: \"{}\", version: \"{version}\"}}\n",
            echo(id).await
        ));
    }
    let running = proxy(&format!(
        "routes:\n  - backends: [{{service: web, weight: 1, subset: {{version: \"1\"}}}}, {{service: web, weight: 1, subset: {{version: \"2\"}}}}]\nservices:\n  web:\n    sticky: {{cookie: sy}}\n    instances:\n{instances}"
    ))
    .await;
    let url = format!("{}/", base(&running));
    let mut homes = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let first = get_with_cookie(&url, "").await;
        let (pair, home) = (sticky_pair(&first), first.served_by());
        homes.insert(home.clone());
        for i in 0..20 {
            let got = get_with_cookie(&url, &pair).await;
            assert_eq!(got.served_by(), home, "request {i} with {pair}");
            assert!(set_cookies(&got).is_empty(), "request {i}");
        }
    }
    assert!(
        homes.iter().any(|h| h.starts_with("v1-")) && homes.iter().any(|h| h.starts_with("v2-")),
        "both subsets served first requests: {homes:?}"
    );
    running.shutdown().await;
}
