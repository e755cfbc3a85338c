//! Spans as an OTLP/HTTP JSON body (`ExportTraceServiceRequest` in the
//! protobuf JSON mapping, with the OTLP rules: trace and span ids as hex
//! strings, enums as numbers, 64-bit integers and nanosecond times as
//! decimal strings). Attribute names follow the OpenTelemetry HTTP
//! semantic conventions; the `switchyard.*` ones are this proxy's.

use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use super::context::{span_id_hex, trace_id_hex};
use super::span::{SpanKind, SpanRecord};

/// `STATUS_CODE_ERROR`.
const STATUS_ERROR: u8 = 2;

/// The request body exporting `spans` of service `service_name`.
pub(super) fn encode(service_name: &str, spans: &[SpanRecord]) -> Vec<u8> {
    let spans: Vec<Value> = spans.iter().map(span).collect();
    let body = json!({
        "resourceSpans": [{
            "resource": {"attributes": [string("service.name", service_name)]},
            "scopeSpans": [{
                "scope": {"name": "switchyard", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn string(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int(key: &str, value: u64) -> Value {
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

fn hex_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The host of a `Host` value without its port (and IPv6 brackets), and
/// the port if one was given.
fn host_and_port(value: &[u8]) -> (String, Option<u16>) {
    let text = String::from_utf8_lossy(value);
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host.to_string(), port);
        }
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host.to_string(), Some(port)),
            Err(_) => (text.to_string(), None),
        },
        _ => (text.to_string(), None),
    }
}

fn span(span: &SpanRecord) -> Value {
    let start = span
        .start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let end = start.saturating_add(u64::try_from(span.duration.as_nanos()).unwrap_or(u64::MAX));
    let method = span.method.as_str();
    let mut attributes = vec![string("http.request.method", method)];
    let mut error_type: Option<String> = span.error.map(str::to_string);
    let name = match span.kind {
        SpanKind::Server => {
            if let Some(uri) = &span.uri {
                attributes.push(string("url.path", uri.path()));
            }
            attributes.push(string("url.scheme", span.scheme));
            if let Some(host) = &span.host {
                let (host, port) = host_and_port(host.as_bytes());
                attributes.push(string("server.address", &host));
                if let Some(port) = port {
                    attributes.push(int("server.port", u64::from(port)));
                }
            }
            if let Some(client) = span.client {
                attributes.push(string("client.address", &client.to_string()));
            }
            if span.status >= 500 && error_type.is_none() {
                error_type = Some(span.status.to_string());
            }
            match &span.route {
                Some((index, pattern)) => {
                    attributes.push(string("http.route", pattern));
                    attributes.push(string("switchyard.route", &format!("routes[{index}]")));
                    format!("{method} {pattern}")
                }
                None => method.to_string(),
            }
        }
        SpanKind::Client => {
            if let Some((id, address)) = &span.instance {
                attributes.push(string("server.address", &address.ip().to_string()));
                attributes.push(int("server.port", u64::from(address.port())));
                attributes.push(string("switchyard.instance", id.as_str()));
            }
            attributes.push(int("switchyard.attempt", u64::from(span.attempt)));
            // A client span is in error for 4xx too (the semantic
            // conventions' rule for clients).
            if span.status >= 400 && error_type.is_none() {
                error_type = Some(span.status.to_string());
            }
            method.to_string()
        }
    };
    if span.status != 0 {
        attributes.push(int("http.response.status_code", u64::from(span.status)));
    }
    if let Some(service) = &span.service {
        attributes.push(string("switchyard.service", service.as_str()));
    }
    let status = match &error_type {
        Some(kind) => {
            attributes.push(string("error.type", kind));
            json!({"code": STATUS_ERROR})
        }
        None => json!({}),
    };
    let mut value = json!({
        "traceId": hex_string(&trace_id_hex(span.trace_id)),
        "spanId": hex_string(&span_id_hex(span.span_id)),
        "name": name,
        "kind": span.kind as u8,
        "startTimeUnixNano": start.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": attributes,
        "status": status,
    });
    if span.parent_id != 0 {
        value["parentSpanId"] = Value::String(hex_string(&span_id_hex(span.parent_id)));
    }
    value
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, SystemTime};

    use super::*;

    fn record(kind: SpanKind) -> SpanRecord {
        SpanRecord {
            kind,
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0xb7ad6b7169203331,
            parent_id: 0x00f067aa0ba902b7,
            start: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_micros(1500),
            method: http::Method::GET,
            status: 503,
            error: None,
            service: Some("web".into()),
            route: Some((2, "/api".into())),
            uri: Some("/api/x?y=1".parse().unwrap()),
            host: Some(http::HeaderValue::from_static("shop.test:8080")),
            client: Some("10.0.0.1".parse().unwrap()),
            scheme: "http",
            instance: Some(("one".into(), "127.0.0.1:9000".parse().unwrap())),
            attempt: 2,
        }
    }

    fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map_or(&Value::Null, |a| &a["value"])
    }

    #[test]
    fn spans_follow_the_otlp_json_mapping() {
        let body = encode(
            "edge",
            &[record(SpanKind::Server), record(SpanKind::Client)],
        );
        let body: Value = serde_json::from_slice(&body).unwrap();
        let resource = &body["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0]["value"]["stringValue"],
            "edge"
        );
        let spans = &resource["scopeSpans"][0]["spans"];
        let server = &spans[0];
        assert_eq!(server["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(server["spanId"], "b7ad6b7169203331");
        assert_eq!(server["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(server["kind"], 2);
        assert_eq!(server["name"], "GET /api");
        assert_eq!(server["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(server["endTimeUnixNano"], "1700000000001500000");
        assert_eq!(server["status"]["code"], 2);
        assert_eq!(attribute(server, "url.path")["stringValue"], "/api/x");
        assert_eq!(
            attribute(server, "server.address")["stringValue"],
            "shop.test"
        );
        assert_eq!(attribute(server, "server.port")["intValue"], "8080");
        assert_eq!(
            attribute(server, "client.address")["stringValue"],
            "10.0.0.1"
        );
        assert_eq!(
            attribute(server, "http.response.status_code")["intValue"],
            "503"
        );
        assert_eq!(
            attribute(server, "switchyard.route")["stringValue"],
            "routes[2]"
        );
        assert_eq!(
            attribute(server, "switchyard.service")["stringValue"],
            "web"
        );
        assert_eq!(attribute(server, "error.type")["stringValue"], "503");
        let client = &spans[1];
        assert_eq!(client["kind"], 3);
        assert_eq!(client["name"], "GET");
        assert_eq!(
            attribute(client, "server.address")["stringValue"],
            "127.0.0.1"
        );
        assert_eq!(attribute(client, "server.port")["intValue"], "9000");
        assert_eq!(attribute(client, "switchyard.attempt")["intValue"], "2");
        let mut root = record(SpanKind::Server);
        root.parent_id = 0;
        root.status = 200;
        let body: Value = serde_json::from_slice(&encode("edge", &[root])).unwrap();
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(span.get("parentSpanId").is_none());
        assert_eq!(span["status"], json!({}));
        assert!(SystemTime::now() > UNIX_EPOCH);
    }

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host_and_port(b"a.test"), ("a.test".into(), None));
        assert_eq!(host_and_port(b"a.test:81"), ("a.test".into(), Some(81)));
        assert_eq!(host_and_port(b"[::1]:82"), ("::1".into(), Some(82)));
        assert_eq!(host_and_port(b"[::1]"), ("::1".into(), None));
    }
}
