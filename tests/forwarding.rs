//! Routing, header rules, error statuses and retries, through a real proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};

#[tokio::test]
async fn routes_by_most_specific_host_then_longest_prefix() {
    let (any, api, wild, exact) = (
        echo("any").await,
        echo("api").await,
        echo("wild").await,
        echo("exact").await,
    );
    let proxy = proxy(&format!(
        r#"
routes:
  - service: any
  - path_prefix: /api
    strip_prefix: true
    service: api
  - host: "*.example.com"
    service: wild
  - host: shop.example.com
    path_prefix: /cart
    service: exact
services:
  any: {{instances: [{{address: "{any}"}}]}}
  api: {{instances: [{{address: "{api}"}}]}}
  wild: {{instances: [{{address: "{wild}"}}]}}
  exact: {{instances: [{{address: "{exact}"}}]}}
"#
    ))
    .await;
    let base = base(&proxy);
    let client = client();
    let cases = [
        ("other.org", "/", "any", "/"),
        ("other.org", "/api/users?id=7", "api", "/users?id=7"),
        ("other.org", "/api", "api", "/"),
        ("other.org", "/apis", "any", "/apis"),
        ("a.example.com", "/api/x", "wild", "/api/x"),
        ("shop.example.com", "/cart/1", "exact", "/cart/1"),
        ("SHOP.example.com:8080", "/cart", "exact", "/cart"),
        ("shop.example.com", "/about", "wild", "/about"),
    ];
    for (host, path, service, upstream_path) in cases {
        let got = get(&client, &format!("{base}{path}"), &[("host", host)]).await;
        assert_eq!(got.served_by(), service, "{host}{path}");
        assert_eq!(got.echoed_path(), upstream_path, "{host}{path}");
    }
}

#[tokio::test]
async fn forwards_headers_by_the_rules() {
    let upstream = echo("up").await;
    let proxy = proxy(&format!(
        "routes:\n  - service: s\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    let url = format!("{}/h", base(&proxy));
    let client = client();
    let got = get(
        &client,
        &url,
        &[
            ("host", "shop.test"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("te", "gzip"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(got.status, 200);
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "te",
        "connection",
    ] {
        assert_eq!(got.echoed(gone), None, "{gone} must not reach the upstream");
    }
    assert_eq!(got.echoed("x-custom").as_deref(), Some("kept"));
    assert_eq!(got.echoed("host").as_deref(), Some("shop.test"));
    assert_eq!(
        got.echoed("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(got.echoed("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(got.echoed("x-forwarded-host").as_deref(), Some("shop.test"));
    // A request id is made, sent upstream and returned.
    let id = got.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(got.echoed("x-request-id"), Some(id));
    // A client's own id is kept.
    let got = get(&client, &url, &[("x-request-id", "abc-123")]).await;
    assert_eq!(got.headers["x-request-id"], "abc-123");
    assert_eq!(got.echoed("x-request-id").as_deref(), Some("abc-123"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let upstream = upstream(|_req| async {
        Response::builder()
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-end", "2")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
    .await;
    let proxy = proxy(&format!(
        "routes:\n  - service: s\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    let got = get(&client(), &format!("{}/", base(&proxy)), &[]).await;
    assert_eq!(got.body, "ok");
    assert!(got.headers.get("x-hop").is_none());
    assert!(got.headers.get("keep-alive").is_none());
    assert_eq!(got.headers["x-end"], "2");
}

#[tokio::test]
async fn errors_have_the_right_status_and_plain_words() {
    let dead = dead_address().await;
    let hang = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(Full::default())
    })
    .await;
    let proxy = proxy(&format!(
        r#"
routes:
  - host: empty.test
    service: empty
  - host: dead.test
    service: dead
  - host: slow.test
    service: slow
services:
  empty: {{instances: []}}
  dead: {{retry: {{max_attempts: 1}}, instances: [{{address: "{dead}"}}]}}
  slow: {{request_timeout: 300ms, instances: [{{address: "{hang}"}}]}}
"#
    ))
    .await;
    let base = base(&proxy);
    let client = client();
    let cases = [
        ("nothing.test", 404, "no route for host `nothing.test`"),
        ("empty.test", 503, "service `empty` has no instances"),
        ("dead.test", 502, "could not connect to service `dead`"),
        (
            "slow.test",
            504,
            "service `slow` did not answer within 300ms",
        ),
    ];
    for (host, status, words) in cases {
        let got = get(&client, &format!("{base}/x"), &[("host", host)]).await;
        assert_eq!(got.status, status, "{host}: {}", got.body);
        assert!(got.body.contains(words), "{host}: {}", got.body);
        assert!(got.headers.contains_key("x-request-id"));
    }
}

/// A proxy over two instances in round robin: one that reads a request and
/// closes without answering (how many connections it accepted is counted),
/// and an echo named `good`.
async fn rude_and_good() -> (
    switchyard::server::Running,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    // Reads the request, then closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let good = echo("good").await;
    let proxy = proxy(&format!(
        "routes:\n  - service: s\nservices:\n  s: {{strategy: round_robin, instances: [{{address: \"{rude}\"}}, {{address: \"{good}\"}}]}}\n"
    ))
    .await;
    (proxy, accepted)
}

#[tokio::test]
async fn a_reset_after_sending_is_a_502_for_a_post_and_a_retry_for_a_get() {
    let (proxy, accepted) = rude_and_good().await;
    // A POST may have had its effect: never sent again.
    let post = http::Request::post(format!("{}/", base(&proxy)))
        .body(http_body_util::Full::default())
        .unwrap();
    let got = send(&client(), post).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert!(got.body.contains("closed the connection"), "{}", got.body);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A GET is idempotent: when it meets the rude one (one of the next two
    // in round robin), the other instance answers it.
    for _ in 0..2 {
        let got = get(&client(), &format!("{}/", base(&proxy)), &[]).await;
        assert_eq!(
            (got.status, got.served_by()),
            (200, "good".into()),
            "{}",
            got.body
        );
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_post_without_a_body_but_with_an_idempotency_key_is_retried_after_a_reset() {
    let (proxy, accepted) = rude_and_good().await;
    // The key, read from the head as received (the lean path), makes the
    // POST as safe to send again as a GET: whichever instance the rotation
    // starts at, the good one answers both.
    for _ in 0..2 {
        let post = http::Request::post(format!("{}/", base(&proxy)))
            .header("idempotency-key", "order-17")
            .body(http_body_util::Full::default())
            .unwrap();
        let got = send(&client(), post).await;
        assert_eq!(
            (got.status, got.served_by()),
            (200, "good".into()),
            "{}",
            got.body
        );
    }
    // The rude one was met (once or twice, as the rotation went), and each
    // time the request went on to the other.
    let met = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&met), "{met}");
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_instance() {
    let dead1 = dead_address().await;
    let dead2 = dead_address().await;
    let good = echo("good").await;
    let proxy = proxy(&format!(
        r#"
routes:
  - service: s
services:
  s:
    strategy: round_robin
    retry: {{max_attempts: 3}}
    instances: [{{address: "{dead1}"}}, {{address: "{dead2}"}}, {{address: "{good}"}}]
"#
    ))
    .await;
    let client = client();
    for _ in 0..6 {
        // Whichever instance the rotation starts at, the client gets a 200,
        // and a POST body (not yet sent when connecting failed) arrives.
        let request = Request::post(format!("{}/", base(&proxy)))
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let got = send(&client, request).await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.served_by(), "good");
        assert!(got.body.contains("body_bytes: 5"), "{}", got.body);
    }
}

#[tokio::test]
async fn http2_clients_are_served_over_h2c() {
    let upstream = echo("up").await;
    let proxy = proxy(&format!(
        "routes:\n  - host: h2.test\n    service: s\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    // Speak HTTP/2 with prior knowledge on a plain TCP connection; the
    // :authority (h2.test) is what routes the request.
    let mut sender = h2c(proxy.listeners()[0].address).await;
    let request = Request::get("http://h2.test/two")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("path: /two"), "{text}");
}

#[tokio::test]
async fn admin_status_lists_services_and_instances() {
    let upstream = echo("up").await;
    let proxy = proxy(&format!(
        "routes:\n  - service: s\nservices:\n  s:\n    strategy: least_connections\n    instances: [{{id: one, address: \"{upstream}\", weight: 3, tags: [blue], metadata: {{zone: a}}}}]\n"
    ))
    .await;
    let client = client();
    get(&client, &format!("{}/", base(&proxy)), &[]).await;
    let got = get(
        &client,
        &format!("http://{}/admin/status", proxy.admin_address()),
        &[],
    )
    .await;
    let got = common::admin::checked("GET", "/admin/status", got);
    assert_eq!(got.status, 200);
    let status: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    let service = &status["services"][0];
    assert_eq!(service["name"], "s");
    assert_eq!(service["strategy"], "least_connections");
    let instance = &service["instances"][0];
    assert_eq!(instance["id"], "one");
    assert_eq!(instance["weight"], 3);
    assert_eq!(instance["tags"][0], "blue");
    assert_eq!(instance["metadata"]["zone"], "a");
    assert_eq!(instance["requests_total"], 1);
    assert_eq!(instance["in_flight"], 0);
    assert_eq!(
        status["listeners"][0]["address"],
        proxy.listeners()[0].address.to_string()
    );
    let missing = get(
        &client,
        &format!("http://{}/nope", proxy.admin_address()),
        &[],
    )
    .await;
    assert_eq!(missing.status, 404);
}
