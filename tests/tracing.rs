//! Trace context: W3C `traceparent`/`tracestate` accepted and propagated
//! (a new trace when absent or malformed; the proxy's own span as the
//! upstream's parent, a new one per attempt), the trace id in the access
//! log, and the OTLP/HTTP JSON export of server and client spans to a
//! receiver in the test that decodes what it gets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::binary::temp_dir;
use common::raw::exchange;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Lines and spans must appear within this on a loaded machine.
const EVENTUALLY: Duration = Duration::from_secs(20);

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// A `traceparent` sent upstream, split: (trace id, parent id, flags).
fn split(value: &str) -> (String, String, String) {
    assert_eq!(value.len(), 55, "{value}");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "always sent as version 00: {value}");
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    for part in &parts {
        assert!(lower_hex(part), "{value}");
    }
    assert_ne!(parts[1], "0".repeat(32), "{value}");
    assert_ne!(parts[2], "0".repeat(16), "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// Every value of the echoed header `name`, in order.
fn echoed_all(body: &str, name: &str) -> Vec<String> {
    let prefix = format!("  {name}: ");
    body.lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn yaml_path(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}

/// Waits until the file at `path` has at least `n` lines.
async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            started.elapsed() < EVENTUALLY,
            "{} has {} of {n} lines",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw HTTP/1.1 GET with extra header lines (each ending in CRLF).
async fn raw_get(address: std::net::SocketAddr, extra: &str) -> common::raw::RawResponse {
    exchange(
        address,
        format!("GET /t HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n"),
    )
    .await
}

/// An OTLP/HTTP receiver: decodes each JSON export request and keeps its
/// spans (with the resource's `service.name`), answering 200.
struct Receiver {
    address: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let requests: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (kept, seen) = (Arc::clone(&spans), Arc::clone(&requests));
        let address = upstream(move |request: Request<hyper::body::Incoming>| {
            let (kept, seen) = (Arc::clone(&kept), Arc::clone(&seen));
            async move {
                let path = request.uri().path().to_string();
                let content_type = request
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                seen.lock().unwrap().push((path, content_type));
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let export: Value = serde_json::from_slice(&body).expect("an OTLP JSON body");
                for resource in export["resourceSpans"].as_array().unwrap() {
                    let service = resource["resource"]["attributes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|a| a["key"] == "service.name")
                        .map(|a| a["value"]["stringValue"].clone())
                        .unwrap();
                    for scope in resource["scopeSpans"].as_array().unwrap() {
                        for span in scope["spans"].as_array().unwrap() {
                            let mut span = span.clone();
                            span["service.name"] = service.clone();
                            kept.lock().unwrap().push(span);
                        }
                    }
                }
                Response::new(Full::new(Bytes::from_static(b"{}")))
            }
        })
        .await;
        Receiver {
            address,
            spans,
            requests,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.address)
    }

    /// The spans of trace `trace_id` once at least `n` have come.
    async fn spans_of(&self, trace_id: &str, n: usize) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let spans: Vec<Value> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s["traceId"] == trace_id)
                .cloned()
                .collect();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                started.elapsed() < EVENTUALLY,
                "{} of {n} spans of {trace_id}: {:?}",
                spans.len(),
                self.spans.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The spans of trace `trace_id` once its server span has come: it
    /// ends last, and batches go out in order, so its client spans are
    /// in by then.
    async fn whole_trace(&self, trace_id: &str) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let spans = self.spans_of(trace_id, 1).await;
            if spans.iter().any(|s| s["kind"] == 2) {
                return spans;
            }
            assert!(started.elapsed() < EVENTUALLY, "no server span: {spans:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn all(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }
}

/// The value of attribute `key` of `span` (`stringValue` or `intValue`).
fn attribute(span: &Value, key: &str) -> Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map_or(Value::Null, |a| {
            let value = &a["value"];
            value
                .get("stringValue")
                .or_else(|| value.get("intValue"))
                .cloned()
                .unwrap_or(Value::Null)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_traceparent_starts_a_trace_that_the_access_log_names() {
    let up = echo("up").await;
    let json_log = temp_dir().join("access.log");
    let combined_log = temp_dir().join("access.log");
    let routes = format!(
        "routes: [{{service: web}}]\nservices:\n  web: {{instances: [{{id: one, address: \"{up}\"}}]}}\n"
    );
    let json = proxy(&format!(
        "access_log: {{path: {}}}\n{routes}",
        yaml_path(&json_log)
    ))
    .await;
    let combined = proxy(&format!(
        "access_log: {{path: {}, format: combined}}\n{routes}",
        yaml_path(&combined_log)
    ))
    .await;

    let got = raw_get(json.listeners()[0].address, "").await;
    assert_eq!(got.status, 200, "{}", got.body);
    let sent = got.echoed("traceparent").expect("a traceparent upstream");
    let (trace_id, parent_id, flags) = split(&sent);
    assert_eq!(
        flags, "01",
        "new traces are sampled by default (sample_ratio 1)"
    );
    assert!(got.echoed("tracestate").is_none());
    let line: Value = serde_json::from_str(&wait_for_lines(&json_log, 1).await[0]).unwrap();
    assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    let span_id = line["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(
        span_id, parent_id,
        "the upstream's parent is the attempt's span, not the request's"
    );

    // A second request is a second trace.
    let again = raw_get(json.listeners()[0].address, "").await;
    let (second, _, _) = split(&again.echoed("traceparent").unwrap());
    assert_ne!(second, trace_id);

    let got = raw_get(combined.listeners()[0].address, "").await;
    assert_eq!(got.status, 200, "{}", got.body);
    let (trace_id, _, _) = split(&got.echoed("traceparent").unwrap());
    let line = wait_for_lines(&combined_log, 1).await.remove(0);
    let fields: Vec<&str> = line.rsplitn(3, ' ').collect();
    assert_eq!(fields[1], format!("\"{trace_id}\""), "{line}");
    assert_eq!(fields[0].len(), 18, "a quoted span id last: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_traceparent_keeps_its_trace_on_every_server_path() {
    let up = echo("up").await;
    let rest = format!(
        "routes: [{{service: web}}]\nservices:\n  web: {{instances: [{{address: \"{up}\"}}]}}\n"
    );
    let owned = proxy(&rest).await;
    let hyper_config = switchyard::config::parse(&format!(
        "listeners: [{{address: 127.0.0.1:0, http1: hyper}}]\nadmin: {{address: 127.0.0.1:0}}\n{rest}"
    ))
    .unwrap();
    let hyper_server = switchyard::server::start(hyper_config).await.unwrap();

    for (what, address) in [
        ("owned HTTP/1.1 server", owned.listeners()[0].address),
        (
            "hyper's HTTP/1.1 server",
            hyper_server.listeners()[0].address,
        ),
    ] {
        let got = raw_get(
            address,
            &format!("traceparent: {PARENT}\r\ntracestate: rojo=00f067aa0ba902b7, congo=t61rcWkgMzE\r\nTraceState: a@b=1\r\n"),
        )
        .await;
        assert_eq!(got.status, 200, "{what}: {}", got.body);
        let sent = echoed_all(&got.body, "traceparent");
        assert_eq!(sent.len(), 1, "{what}: one traceparent upstream: {sent:?}");
        let (trace_id, parent_id, flags) = split(&sent[0]);
        assert_eq!(trace_id, TRACE_ID, "{what}");
        assert_ne!(parent_id, PARENT_ID, "{what}: the proxy is a hop");
        assert_eq!(flags, "01", "{what}");
        assert_eq!(
            echoed_all(&got.body, "tracestate"),
            ["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "a@b=1"],
            "{what}: tracestate unchanged"
        );
    }

    // HTTP/2 (hyper's server, the header-map path).
    let mut sender = h2c(owned.listeners()[0].address).await;
    let request = Request::get("http://app.test/two")
        .header("traceparent", PARENT.replace("-01", "-00"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    let sent = echoed_all(&body, "traceparent");
    assert_eq!(sent.len(), 1, "{body}");
    let (trace_id, parent_id, flags) = split(&sent[0]);
    assert_eq!(trace_id, TRACE_ID);
    assert_ne!(parent_id, PARENT_ID);
    assert_eq!(flags, "00", "an unsampled caller stays unsampled");
    assert_eq!(echoed_all(&body, "tracestate"), ["congo=t61rcWkgMzE"]);

    // A later version is read as version 00 and sent on as 00.
    let got = raw_get(
        owned.listeners()[0].address,
        &format!(
            "traceparent: cc-{TRACE_ID}-{PARENT_ID}-01-what-comes-later\r\ntracestate: k=v\r\n"
        ),
    )
    .await;
    let (trace_id, _, flags) = split(&got.echoed("traceparent").unwrap());
    assert_eq!((trace_id.as_str(), flags.as_str()), (TRACE_ID, "01"));
    assert_eq!(echoed_all(&got.body, "tracestate"), ["k=v"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_traceparents_are_replaced_by_a_new_trace() {
    let up = echo("up").await;
    let proxy = proxy(&format!(
        "routes: [{{service: web}}]\nservices:\n  web: {{instances: [{{address: \"{up}\"}}]}}\n"
    ))
    .await;
    let address = proxy.listeners()[0].address;
    let malformed = [
        format!("00-{TRACE_ID}-{PARENT_ID}-01-"),
        format!("00-{}-{PARENT_ID}-01", TRACE_ID.to_uppercase()),
        format!("00-{}-{PARENT_ID}-01", "0".repeat(32)),
        format!("00-{TRACE_ID}-{}-01", "0".repeat(16)),
        format!("ff-{TRACE_ID}-{PARENT_ID}-01"),
        format!("00-{TRACE_ID}-{PARENT_ID}-1"),
        format!("00-{TRACE_ID}-{PARENT_ID}"),
        format!("00_{TRACE_ID}_{PARENT_ID}_01"),
        format!("01-{TRACE_ID}-{PARENT_ID}-01x"),
        "garbage".to_string(),
    ];
    for value in &malformed {
        let got = raw_get(
            address,
            &format!("traceparent: {value}\r\ntracestate: congo=t61rcWkgMzE\r\n"),
        )
        .await;
        assert_eq!(got.status, 200, "{value}: {}", got.body);
        let sent = echoed_all(&got.body, "traceparent");
        assert_eq!(sent.len(), 1, "{value}: {sent:?}");
        let (trace_id, _, _) = split(&sent[0]);
        assert_ne!(trace_id, TRACE_ID, "{value}: a new trace");
        assert!(
            echoed_all(&got.body, "tracestate").is_empty(),
            "{value}: the caller's tracestate goes with its trace"
        );
    }
    // Two traceparent fields: which one is meant cannot be told.
    let got = raw_get(
        address,
        &format!("traceparent: {PARENT}\r\ntraceparent: {PARENT}\r\n"),
    )
    .await;
    let sent = echoed_all(&got.body, "traceparent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_ne!(split(&sent[0]).0, TRACE_ID);
    // A valid traceparent with a tracestate over its limits: the trace is
    // kept, the tracestate dropped.
    let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let got = raw_get(
        address,
        &format!(
            "traceparent: {PARENT}\r\ntracestate: {}\r\n",
            members.join(",")
        ),
    )
    .await;
    assert_eq!(split(&got.echoed("traceparent").unwrap()).0, TRACE_ID);
    assert!(echoed_all(&got.body, "tracestate").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http_json() {
    let receiver = Receiver::start().await;
    let up = echo("up").await;
    let proxy = proxy(&format!(
        "tracing: {{otlp_endpoint: \"{}\", sample_ratio: 0.5, service_name: edge}}\nroutes: [{{path_prefix: /t, service: web}}]\nservices:\n  web: {{instances: [{{id: one, address: \"{up}\"}}]}}\n",
        receiver.endpoint()
    ))
    .await;
    let got = raw_get(
        proxy.listeners()[0].address,
        &format!("traceparent: {PARENT}\r\n"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    let (_, upstream_parent, _) = split(&got.echoed("traceparent").unwrap());

    let spans = receiver.whole_trace(TRACE_ID).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let server = spans
        .iter()
        .find(|s| s["kind"] == 2)
        .expect("a server span");
    let client = spans
        .iter()
        .find(|s| s["kind"] == 3)
        .expect("a client span");
    assert_eq!(server["name"], "GET /t");
    assert_eq!(server["parentSpanId"], PARENT_ID, "the caller's span");
    assert_eq!(client["name"], "GET");
    assert_eq!(client["parentSpanId"], server["spanId"]);
    assert_eq!(
        client["spanId"],
        upstream_parent.as_str(),
        "what the upstream saw"
    );
    assert_eq!(server["service.name"], "edge");
    for span in [server, client] {
        let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start > 1_600_000_000_000_000_000 && end >= start, "{span}");
    }
    let client_start: u64 = client["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let server_start: u64 = server["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(client_start >= server_start, "{server} {client}");
    assert_eq!(attribute(server, "http.request.method"), "GET");
    assert_eq!(attribute(server, "url.path"), "/t");
    assert_eq!(attribute(server, "http.response.status_code"), "200");
    assert_eq!(attribute(server, "server.address"), "app.test");
    assert_eq!(attribute(server, "client.address"), "127.0.0.1");
    assert_eq!(attribute(server, "switchyard.service"), "web");
    assert_eq!(attribute(server, "switchyard.route"), "routes[0]");
    assert_eq!(attribute(server, "http.route"), "/t");
    assert_eq!(attribute(client, "server.address"), "127.0.0.1");
    assert_eq!(attribute(client, "server.port"), up.port().to_string());
    assert_eq!(attribute(client, "http.response.status_code"), "200");
    assert_eq!(attribute(client, "switchyard.attempt"), "1");
    assert_eq!(attribute(client, "switchyard.instance"), "one");
    assert!(client.get("status").is_none_or(|s| s.get("code").is_none()));

    // An answer the proxy gives itself (no route) is a server span alone,
    // in error for a 5xx only.
    let got = exchange(
        proxy.listeners()[0].address,
        format!("GET /none HTTP/1.1\r\nHost: app.test\r\ntraceparent: 00-{}-{PARENT_ID}-01\r\nConnection: close\r\n\r\n", "1".repeat(32)),
    )
    .await;
    assert_eq!(got.status, 404);
    let spans = receiver.spans_of(&"1".repeat(32), 1).await;
    assert_eq!(spans[0]["name"], "GET");
    assert_eq!(attribute(&spans[0], "http.response.status_code"), "404");

    let requests = receiver.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|(path, kind)| path == "/v1/traces" && kind == "application/json"),
        "{requests:?}"
    );
    let metrics = scrape(proxy.admin_address()).await;
    assert!(
        sample(&metrics, "switchyard_trace_spans_exported_total").unwrap() >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "switchyard_trace_spans_dropped_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_a_second_client_span_with_its_own_id() {
    let receiver = Receiver::start().await;
    let up = echo("up").await;
    let dead = dead_address().await;
    let proxy = proxy(&format!(
        "tracing: {{otlp_endpoint: \"{}\"}}\nroutes: [{{service: web}}]\nservices:\n  web:\n    strategy: round_robin\n    retry: {{max_attempts: 2}}\n    instances: [{{id: dead, address: \"{dead}\"}}, {{id: live, address: \"{up}\"}}]\n",
        receiver.endpoint()
    ))
    .await;
    // Round robin: one of two requests meets the dead instance first.
    let mut retried = None;
    for i in 0..2 {
        let trace_id = format!("{:032x}", 0xabc0 + i);
        let got = raw_get(
            proxy.listeners()[0].address,
            &format!("traceparent: 00-{trace_id}-{PARENT_ID}-01\r\n"),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.body);
        let (_, upstream_parent, _) = split(&got.echoed("traceparent").unwrap());
        let spans = receiver.whole_trace(&trace_id).await;
        let clients = spans.iter().filter(|s| s["kind"] == 3).count();
        if clients == 2 {
            retried = Some((trace_id, upstream_parent));
        }
    }
    let (trace_id, upstream_parent) = retried.expect("one request tried the dead instance first");
    let spans = receiver.whole_trace(&trace_id).await;
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    let mut clients: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 3).collect();
    clients.sort_by_key(|s| {
        attribute(s, "switchyard.attempt")
            .as_str()
            .unwrap()
            .to_string()
    });
    assert_eq!(clients.len(), 2, "{spans:?}");
    assert_eq!(attribute(clients[0], "switchyard.attempt"), "1");
    assert_eq!(attribute(clients[0], "switchyard.instance"), "dead");
    assert_eq!(attribute(clients[0], "error.type"), "connect_failed");
    assert_eq!(clients[0]["status"]["code"], 2);
    assert_eq!(attribute(clients[1], "switchyard.attempt"), "2");
    assert_eq!(attribute(clients[1], "switchyard.instance"), "live");
    assert_eq!(attribute(clients[1], "http.response.status_code"), "200");
    assert_ne!(clients[0]["spanId"], clients[1]["spanId"]);
    for client in &clients {
        assert_eq!(client["parentSpanId"], server["spanId"]);
    }
    assert_eq!(
        clients[1]["spanId"],
        upstream_parent.as_str(),
        "the upstream saw the second attempt's span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_exports_only_what_the_caller_sampled() {
    let receiver = Receiver::start().await;
    let up = echo("up").await;
    let proxy = proxy(&format!(
        "tracing: {{otlp_endpoint: \"{}\", sample_ratio: 0}}\nroutes: [{{service: web}}]\nservices:\n  web: {{instances: [{{address: \"{up}\"}}]}}\n",
        receiver.endpoint()
    ))
    .await;
    let address = proxy.listeners()[0].address;
    let mut unsampled = Vec::new();
    for _ in 0..5 {
        let got = raw_get(address, "").await;
        let (trace_id, _, flags) = split(&got.echoed("traceparent").unwrap());
        assert_eq!(flags, "00", "sample_ratio 0: new traces are not sampled");
        unsampled.push(trace_id);
    }
    let got = raw_get(
        address,
        &format!("traceparent: {}\r\n", PARENT.replace("-01", "-00")),
    )
    .await;
    assert_eq!(split(&got.echoed("traceparent").unwrap()).2, "00");
    // The caller sampled this one: it is exported, and it was sent last,
    // so once its spans are in, nothing else can still be on its way.
    let sampled_id = format!("{:032x}", 0x5a);
    let got = raw_get(
        address,
        &format!("traceparent: 00-{sampled_id}-{PARENT_ID}-01\r\n"),
    )
    .await;
    assert_eq!(split(&got.echoed("traceparent").unwrap()).2, "01");
    receiver.whole_trace(&sampled_id).await;
    let all = receiver.all();
    assert!(
        all.iter().all(|s| s["traceId"] == sampled_id.as_str()),
        "only the sampled trace: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_costs_requests_nothing_and_is_counted() {
    let up = echo("up").await;
    let down = dead_address().await;
    let proxy = proxy(&format!(
        "tracing: {{otlp_endpoint: \"http://{down}/v1/traces\"}}\nroutes: [{{service: web}}]\nservices:\n  web: {{instances: [{{address: \"{up}\"}}]}}\n"
    ))
    .await;
    let started = Instant::now();
    for _ in 0..20 {
        let got = raw_get(proxy.listeners()[0].address, "").await;
        assert_eq!(got.status, 200, "{}", got.body);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests waited for the exporter: {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    loop {
        let metrics = scrape(proxy.admin_address()).await;
        let failures = sample(&metrics, "switchyard_trace_export_failures_total").unwrap_or(0.0);
        let dropped = sample(&metrics, "switchyard_trace_spans_dropped_total").unwrap_or(0.0);
        if failures >= 1.0 && dropped >= 2.0 {
            assert_eq!(
                sample(&metrics, "switchyard_trace_spans_exported_total"),
                Some(0.0)
            );
            break;
        }
        assert!(
            started.elapsed() < EVENTUALLY,
            "failures {failures}, dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn tracing_settings_are_validated_with_their_field_paths() {
    let errors = switchyard::config::parse(
        "listeners: [{address: 127.0.0.1:0}]\ntracing: {otlp_endpoint: \"https://collector:4318/v1/traces\", sample_ratio: 2, service_name: \"\"}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        errors.contains("tracing.otlp_endpoint") && errors.contains("https is not supported"),
        "{errors}"
    );
    assert!(errors.contains("tracing.sample_ratio"), "{errors}");
    assert!(errors.contains("tracing.service_name"), "{errors}");
    let errors = switchyard::config::parse(
        "listeners: [{address: 127.0.0.1:0}]\ntracing: {otlp_endpoint: x, sampling: 1}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(errors.contains("sampling"), "{errors}");
    let config = switchyard::config::parse(
        "listeners: [{address: 127.0.0.1:0}]\ntracing: {otlp_endpoint: \"http://127.0.0.1:4318\", sample_ratio: 1}\n",
    )
    .unwrap();
    assert_eq!(config.tracing.sample_ratio, 1.0);
    assert_eq!(config.tracing.otlp_endpoint.unwrap().path, "/v1/traces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_export_on_and_off() {
    let receiver = Receiver::start().await;
    let up = echo("up").await;
    let rest = format!(
        "routes: [{{service: web}}]\nservices:\n  web: {{instances: [{{address: \"{up}\"}}]}}\n"
    );
    let proxy = proxy(&rest).await;
    let address = proxy.listeners()[0].address;
    let traced = |n: u32| format!("traceparent: 00-{:032x}-{PARENT_ID}-01\r\n", 0x7000 + n);
    raw_get(address, &traced(1)).await;
    let mut config = common::config(&format!(
        "tracing: {{otlp_endpoint: \"{}\"}}\n{rest}",
        receiver.endpoint()
    ));
    // The listeners as bound, so that only the tracing settings change.
    config.listeners[0].address = address;
    config.admin.address = proxy.admin_address();
    proxy.registry().apply_config(config);
    raw_get(address, &traced(2)).await;
    receiver.whole_trace(&format!("{:032x}", 0x7002)).await;
    assert!(
        receiver
            .all()
            .iter()
            .all(|s| s["traceId"] != format!("{:032x}", 0x7001).as_str()),
        "nothing of the request before the reload"
    );
    proxy.registry().apply_config(common::config(&rest));
    raw_get(address, &traced(3)).await;
    // Off again: the last request's spans never come. (Its batch would
    // have gone within about a second.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        receiver
            .all()
            .iter()
            .all(|s| s["traceId"] != format!("{:032x}", 0x7003).as_str()),
        "{:?}",
        receiver.all()
    );
}
