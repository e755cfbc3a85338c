//! The admin API's contract (`GET /admin/openapi.json`): the document is
//! sound OpenAPI 3.1, the router serves exactly the endpoints it lists,
//! and every endpoint answers as documented, error paths included. Every
//! other test's admin calls go through `common::admin`, which checks each
//! answer against the same document.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use common::binary::temp_dir;
use common::openapi::{check_answer, document, document_problems, validate};
use http::Method;
use serde_json::{json, Value};
use switchyard::admin::endpoints::ENDPOINTS;
use switchyard::server::{start_live, LiveOptions, Running};

const TOKEN: &str = "s3cret";

/// Operations of the document, as (path template, method upper case).
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut all = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                all.insert((path.clone(), method.to_ascii_uppercase()));
            }
        }
    }
    all
}

/// A path of `template` with its parameters filled in.
fn concrete(template: &str) -> String {
    template
        .replace("{service}", "svc")
        .replace("{id}", "a")
        .replace("{version}", "1")
}

#[test]
fn the_document_is_sound_openapi() {
    let doc = document();
    let problems = document_problems(doc);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(doc["openapi"], "3.1.0");

    // The checks can fail: a broken copy of the document is caught.
    let mut broken = doc.clone();
    broken["paths"]["/admin/status"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"]["$ref"] = json!("#/components/schemas/Nothing");
    broken["paths"]["/admin/health"]["get"]["responses"] = json!({});
    broken["components"]["schemas"]["Errors"]["maxLength"] = json!(3);
    broken["components"]["schemas"]["Errors"]["required"] = json!(["result", "nope"]);
    let problems = document_problems(&broken).join("\n");
    for expected in [
        "$ref #/components/schemas/Nothing does not resolve",
        "paths./admin/health.get: has no responses",
        "keyword `maxLength` is not supported",
        "components.schemas.Errors.required: malformed",
    ] {
        assert!(
            problems.contains(expected),
            "{expected} not caught:\n{problems}"
        );
    }
}

#[test]
fn the_validator_catches_what_does_not_fit() {
    let doc = document();
    let errors = json!({"$ref": "#/components/schemas/Errors"});
    assert!(validate(
        doc,
        &errors,
        &json!({"result": "failed", "errors": ["x"]}),
        "b"
    )
    .is_ok());
    for (bad, why) in [
        (
            json!({"result": "failed"}),
            "required field `errors` is missing",
        ),
        (json!({"result": "ok", "errors": []}), "is not one of"),
        (
            json!({"result": "failed", "errors": [1]}),
            "b.errors[0]: expected",
        ),
        (
            json!({"result": "failed", "errors": [], "more": 1}),
            "b.more: field not in the document",
        ),
        (json!([]), "expected [\"object\"]"),
    ] {
        let error = validate(doc, &errors, &bad, "b").unwrap_err();
        assert!(error.contains(why), "{bad}: {error}");
    }
    // oneOf: exactly one option; type lists hold null.
    let outcome = json!({"$ref": "#/components/schemas/ReloadOutcome"});
    assert!(validate(
        doc,
        &outcome,
        &json!({"result": "applied", "version": null, "changes": []}),
        "b"
    )
    .is_ok());
    assert!(validate(
        doc,
        &outcome,
        &json!({"result": "pushed", "version": null}),
        "b"
    )
    .is_err());
    assert!(validate(
        doc,
        &outcome,
        &json!({"result": "unchanged", "version": 1}),
        "b"
    )
    .is_err());
    let instance = json!({"$ref": "#/components/schemas/Registration"});
    assert!(
        validate(doc, &instance, &json!({"address": "x", "weight": 0}), "b")
            .unwrap_err()
            .contains("below the minimum")
    );

    // An answer: undeclared status, wrong content type, body off-schema.
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let ok = r#"{"result": "failed", "errors": ["no service named `x`"]}"#;
    assert!(check_answer("GET", "/admin/services/x", 404, &headers, ok).is_ok());
    let error = check_answer("GET", "/admin/services/x", 418, &headers, ok).unwrap_err();
    assert!(error.contains("status 418 is not declared"), "{error}");
    let error = check_answer("GET", "/admin/services/x", 404, &headers, "{}").unwrap_err();
    assert!(error.contains("required field"), "{error}");
    headers.insert("content-type", "text/html".parse().unwrap());
    let error = check_answer("GET", "/admin/services/x", 404, &headers, ok).unwrap_err();
    assert!(error.contains("is not one of"), "{error}");
    let error = check_answer("PATCH", "/admin/status", 200, &headers, "").unwrap_err();
    assert!(error.contains("only 405"), "{error}");
    let error = check_answer("GET", "/admin/nothing", 200, &headers, "").unwrap_err();
    assert!(error.contains("not in the document"), "{error}");
}

/// The router's list and the document name the same paths and methods.
#[test]
fn the_router_list_and_the_document_agree() {
    let doc = document();
    let documented = operations(doc);
    let routed: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .flat_map(|e| {
            e.methods
                .iter()
                .map(|m| (e.path.to_string(), m.to_string()))
        })
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "served but not in openapi.json: {undocumented:?}\nin openapi.json but not served: {unrouted:?}"
    );
}

/// A config with one file instance `a` of `svc`, the admin token, and the
/// access log in `log`.
fn yaml(upstream: SocketAddr, log: &Path, marker: u32) -> String {
    format!(
        "# {marker}\nlisteners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n  token: {TOKEN}\naccess_log:\n  path: \"{}\"\nroutes:\n  - service: svc\nservices:\n  svc:\n    instances:\n      - {{id: a, address: \"{upstream}\"}}\n",
        log.display()
    )
}

async fn live(path: &Path, text: &str) -> Running {
    std::fs::write(path, text).unwrap();
    let mut options = LiveOptions::new(path);
    options.watch = false;
    start_live(options).await.unwrap()
}

/// Calls the admin API, checks the answer against the document, and
/// records what was covered.
struct Caller {
    admin: SocketAddr,
    covered: BTreeSet<(String, String, u16)>,
}

impl Caller {
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &str)>,
    ) -> (u16, String) {
        let body = body.map(|(kind, text)| (kind, Bytes::from(text.to_string())));
        let answer =
            switchyard::admin_client::exchange(self.admin, method.clone(), path, token, body)
                .await
                .expect("admin call");
        let status = answer.status.as_u16();
        let template = check_answer(method.as_str(), path, status, &answer.headers, &answer.body)
            .unwrap_or_else(|problem| panic!("the admin API broke its contract: {problem}"));
        let method = if method == Method::HEAD {
            "GET".to_string()
        } else {
            method.to_string()
        };
        self.covered.insert((template, method, status));
        (status, answer.body)
    }

    /// A call that must answer `expected`.
    async fn expect(
        &mut self,
        expected: u16,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &str)>,
    ) -> String {
        let (status, text) = self.call(method.clone(), path, token, body).await;
        assert_eq!(status, expected, "{method} {path}: {text}");
        text
    }
}

/// Statuses the document declares that this test does not provoke, and why.
fn exempt(path: &str, status: u16) -> bool {
    match status {
        // A disk that fails, or etcd going down mid-call: tests/fleet.rs
        // covers the outages through the checking client.
        500 | 503 => !(path == "/admin/logs/reopen" && status == 500),
        // A rollback to a version that no longer validates, or whose
        // listener is taken: the same refusals as a reload, checked here
        // on `/admin/reload`.
        409 | 422 => path == "/admin/config/rollback/{version}",
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_documented() {
    let doc = document();
    let upstream = common::echo("a").await;
    let dir = temp_dir();
    let log_dir = dir.join("logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log = log_dir.join("access.log");
    let config = dir.join("proxy.yaml");
    let running = live(&config, &yaml(upstream, &log, 1)).await;
    let mut api = Caller {
        admin: running.admin_address(),
        covered: BTreeSet::new(),
    };
    let t = Some(TOKEN);
    use Method as M;

    // Reads.
    api.expect(200, M::GET, "/", None, None).await;
    api.expect(200, M::HEAD, "/", None, None).await;
    api.expect(200, M::GET, "/metrics", None, None).await;
    let served = api
        .expect(200, M::GET, "/admin/openapi.json", None, None)
        .await;
    assert_eq!(serde_json::from_str::<Value>(&served).unwrap(), *doc);
    api.expect(200, M::HEAD, "/admin/openapi.json", None, None)
        .await;
    api.expect(200, M::GET, "/admin/health", None, None).await;
    api.expect(200, M::GET, "/admin/status", None, None).await;
    api.expect(
        200,
        M::GET,
        "/admin/status?service=svc&offset=0&limit=1",
        None,
        None,
    )
    .await;
    api.expect(200, M::GET, "/admin/status?instances=summary", None, None)
        .await;
    api.expect(400, M::GET, "/admin/status?limit=0", None, None)
        .await;
    api.expect(404, M::GET, "/admin/status?service=nope", None, None)
        .await;
    // The dashboard's series, with some traffic in them.
    let client = common::client();
    for _ in 0..3 {
        common::get(&client, &format!("{}/", common::base(&running)), &[]).await;
    }
    let stats = api.expect(200, M::GET, "/admin/stats", None, None).await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["step"], 10);
    assert_eq!(stats["services"][0]["points"].as_array().unwrap().len(), 90);
    api.expect(200, M::GET, "/admin/stats?seconds=60&step=1", None, None)
        .await;
    api.expect(400, M::GET, "/admin/stats?seconds=0", None, None)
        .await;
    api.expect(400, M::GET, "/admin/stats?bogus=1", None, None)
        .await;
    api.expect(200, M::GET, "/admin/services?healthy=true", None, None)
        .await;
    api.expect(400, M::GET, "/admin/services?bogus=1", None, None)
        .await;
    api.expect(200, M::GET, "/admin/services/svc", None, None)
        .await;
    api.expect(
        200,
        M::GET,
        "/admin/services/svc?index=0&wait=1.5s&stale",
        None,
        None,
    )
    .await;
    api.expect(400, M::GET, "/admin/services/svc?wait=soon", None, None)
        .await;
    api.expect(404, M::GET, "/admin/services/nope", None, None)
        .await;
    api.expect(404, M::HEAD, "/admin/services/nope", None, None)
        .await;
    api.expect(404, M::GET, "/admin/fleet", None, None).await;

    // The registry API.
    let register = |address: &str, ttl: &str| {
        json!({"id": "r1", "address": address, "weight": 2, "tags": ["t"], "metadata": {"k": "v"}, "ttl": ttl}).to_string()
    };
    let instances = "/admin/services/svc/instances";
    let body = register(&upstream.to_string(), "30s");
    let json_body = Some(("application/json", body.as_str()));
    api.expect(401, M::POST, instances, None, json_body).await;
    api.expect(403, M::POST, instances, Some("wrong"), json_body)
        .await;
    api.expect(201, M::POST, instances, t, json_body).await;
    api.expect(200, M::POST, instances, t, json_body).await;
    api.expect(
        400,
        M::POST,
        instances,
        t,
        Some(("application/json", "{\"address\": 5}")),
    )
    .await;
    api.expect(
        400,
        M::POST,
        instances,
        t,
        Some(("application/json", "{\"address\": \"nowhere\"}")),
    )
    .await;
    let file_id = json!({"id": "a", "address": upstream.to_string()}).to_string();
    api.expect(
        409,
        M::POST,
        instances,
        t,
        Some(("application/json", &file_id)),
    )
    .await;
    api.expect(
        403,
        M::POST,
        "/admin/services/other/instances",
        t,
        json_body,
    )
    .await;
    let view = api
        .expect(200, M::GET, "/admin/services/svc", None, None)
        .await;
    let view: Value = serde_json::from_str(&view).unwrap();
    assert!(view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["lease"].is_object()));
    for action in ["heartbeat", "drain", "undrain"] {
        let path = format!("{instances}/r1/{action}");
        api.expect(401, M::PUT, &path, None, None).await;
        api.expect(200, M::PUT, &path, t, None).await;
        api.expect(404, M::PUT, &format!("{instances}/zz/{action}"), t, None)
            .await;
    }
    for action in ["heartbeat", "drain", "undrain"] {
        let path = format!("{instances}/a%2Fb/{action}");
        api.expect(400, M::PUT, &path, t, None).await;
    }
    api.expect(400, M::DELETE, &format!("{instances}/%FF"), t, None)
        .await;
    api.expect(409, M::PUT, &format!("{instances}/a/heartbeat"), t, None)
        .await;
    api.expect(409, M::DELETE, &format!("{instances}/a"), t, None)
        .await;
    api.expect(200, M::DELETE, &format!("{instances}/r1"), t, None)
        .await;
    api.expect(404, M::DELETE, &format!("{instances}/r1"), t, None)
        .await;

    // Live config and its history.
    api.expect(401, M::POST, "/admin/reload", None, None).await;
    let unchanged = api.expect(200, M::POST, "/admin/reload", t, None).await;
    assert!(unchanged.contains("unchanged"), "{unchanged}");
    std::fs::write(&config, yaml(upstream, &log, 2)).unwrap();
    api.expect(200, M::POST, "/admin/reload", t, None).await;
    std::fs::write(&config, "services: [").unwrap();
    api.expect(422, M::POST, "/admin/reload", t, None).await;
    // A listener that cannot be bound: the reload is refused whole.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = yaml(upstream, &log, 3).replace(
        "listeners:\n  - address: 127.0.0.1:0\n",
        &format!(
            "listeners:\n  - address: 127.0.0.1:0\n  - address: \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    );
    std::fs::write(&config, text).unwrap();
    api.expect(409, M::POST, "/admin/reload", t, None).await;
    drop(taken);
    api.expect(200, M::GET, "/admin/config/versions", None, None)
        .await;
    api.expect(200, M::GET, "/admin/config/versions/1", None, None)
        .await;
    api.expect(400, M::GET, "/admin/config/versions/one", None, None)
        .await;
    api.expect(404, M::GET, "/admin/config/versions/99", None, None)
        .await;
    api.expect(200, M::GET, "/admin/config/diff?from=1&to=2", None, None)
        .await;
    api.expect(200, M::GET, "/admin/config/diff?from=1", None, None)
        .await;
    api.expect(400, M::GET, "/admin/config/diff", None, None)
        .await;
    api.expect(404, M::GET, "/admin/config/diff?from=99", None, None)
        .await;
    api.expect(401, M::POST, "/admin/config/rollback/1", None, None)
        .await;
    api.expect(200, M::POST, "/admin/config/rollback/1", t, None)
        .await;
    api.expect(400, M::POST, "/admin/config/rollback/x", t, None)
        .await;
    api.expect(404, M::POST, "/admin/config/rollback/99", t, None)
        .await;
    // On a single node a posted config is written and applied, under a
    // guard when one is given; `base` is for fleet pushes.
    let shared = yaml(upstream, &log, 4);
    let yaml_body = Some(("application/yaml", shared.as_str()));
    api.expect(401, M::POST, "/admin/config", None, yaml_body)
        .await;
    api.expect(200, M::POST, "/admin/config", t, yaml_body)
        .await;
    api.expect(400, M::POST, "/admin/config?base=x", t, yaml_body)
        .await;
    api.expect(
        422,
        M::POST,
        "/admin/config",
        t,
        Some(("application/yaml", "services: [")),
    )
    .await;
    let guarded = yaml(upstream, &log, 5);
    api.expect(
        200,
        M::POST,
        "/admin/config?guard=error_rate%20%3C%201%25&for=30s&min_requests=1",
        t,
        Some(("application/yaml", guarded.as_str())),
    )
    .await;
    api.expect(200, M::GET, "/admin/config/guard", None, None)
        .await;
    api.expect(200, M::GET, "/admin/status", None, None).await;
    api.expect(200, M::GET, "/admin/config/versions", None, None)
        .await;
    // A second change while the guard runs is refused, then forced.
    std::fs::write(&config, yaml(upstream, &log, 6)).unwrap();
    api.expect(409, M::POST, "/admin/reload", t, None).await;
    let next = yaml(upstream, &log, 7);
    let next_body = Some(("application/yaml", next.as_str()));
    api.expect(409, M::POST, "/admin/config", t, next_body)
        .await;
    api.expect(400, M::POST, "/admin/config?base=1", t, next_body)
        .await;
    api.expect(400, M::POST, "/admin/config?for=10s", t, next_body)
        .await;
    api.expect(400, M::POST, "/admin/config/rollback/1?guard=x", t, None)
        .await;
    let rollback = "/admin/config/rollback/1?force=maybe";
    api.expect(400, M::POST, rollback, t, None).await;
    api.expect(400, M::POST, "/admin/config?guard=latency%3F", t, yaml_body)
        .await;
    api.expect(400, M::POST, "/admin/reload?for=soon", t, None)
        .await;
    api.expect(200, M::POST, "/admin/reload?force=true", t, None)
        .await;

    // Log rotation: reopened; then refused when the directory is gone.
    api.expect(401, M::POST, "/admin/logs/reopen", None, None)
        .await;
    api.expect(200, M::POST, "/admin/logs/reopen", t, None)
        .await;
    std::fs::remove_dir_all(&log_dir).unwrap();
    api.expect(500, M::POST, "/admin/logs/reopen", t, None)
        .await;

    // Every path: a method it does not answer is a 405 with `Allow`; an
    // unknown path is a 404.
    for (path, _) in operations(doc) {
        let documented: Vec<String> = ["get", "put", "post", "delete", "patch"]
            .iter()
            .filter(|m| doc["paths"][&path].get(**m).is_some())
            .map(|m| m.to_ascii_uppercase())
            .collect();
        for method in [M::GET, M::PUT, M::POST, M::DELETE, M::PATCH] {
            if !documented.contains(&method.to_string()) {
                api.expect(405, method, &concrete(&path), t, None).await;
            }
        }
    }
    api.expect(404, M::GET, "/admin/nothing", None, None).await;
    api.expect(
        404,
        M::GET,
        "/admin/services/svc/instances/a/b/c",
        None,
        None,
    )
    .await;
    running.shutdown().await;

    // With `read_requires_token`, every operation refuses a missing (401)
    // and a wrong (403) token.
    let text = format!(
        "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n  token: {TOKEN}\n  read_requires_token: true\nroutes:\n  - service: svc\nservices:\n  svc:\n    instances:\n      - {{id: a, address: \"{upstream}\"}}\n"
    );
    let config = dir.join("locked.yaml");
    let locked = live(&config, &text).await;
    api.admin = locked.admin_address();
    for (path, method) in operations(doc) {
        let method: Method = method.parse().unwrap();
        api.expect(401, method.clone(), &concrete(&path), None, None)
            .await;
        api.expect(403, method, &concrete(&path), Some("wrong"), None)
            .await;
    }
    locked.shutdown().await;

    // Without a config file there is nothing to reload or list.
    let bare = common::proxy(&format!(
        "routes:\n  - service: svc\nservices:\n  svc: {{instances: [{{id: a, address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    api.admin = bare.admin_address();
    api.expect(404, M::POST, "/admin/reload", None, None).await;
    api.expect(404, M::GET, "/admin/config/versions", None, None)
        .await;
    api.expect(404, M::GET, "/admin/config/versions/1", None, None)
        .await;
    api.expect(404, M::GET, "/admin/config/diff?from=1", None, None)
        .await;
    api.expect(404, M::POST, "/admin/config/rollback/1", None, None)
        .await;
    api.expect(404, M::GET, "/admin/config/guard", None, None)
        .await;
    let body = Some(("application/yaml", "listeners: []"));
    api.expect(422, M::POST, "/admin/config", None, body).await;
    bare.shutdown().await;

    fleet_mode(&mut api).await;

    // Everything the document declares was seen, but for the exemptions.
    let mut missing = Vec::new();
    for (path, method) in operations(doc) {
        let responses = doc["paths"][&path][method.to_ascii_lowercase()]["responses"]
            .as_object()
            .unwrap();
        for code in responses.keys() {
            let code: u16 = code.parse().unwrap();
            if !api.covered.contains(&(path.clone(), method.clone(), code)) && !exempt(&path, code)
            {
                missing.push(format!("{method} {path} {code}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "never provoked:\n{}",
        missing.join("\n")
    );
}

/// The fleet answers: a node on a real etcd.
async fn fleet_mode(api: &mut Caller) {
    if !common::etcd::available() {
        common::skip_without(common::etcd::ETCD, "apt-get install etcd-server");
        return;
    }
    let etcd = common::etcd::Etcd::start().await;
    let dir = temp_dir();
    let text = format!(
        "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nfleet:\n  etcd:\n    endpoints: {}\n    dial_timeout: 500ms\n    request_timeout: 2s\n  prefix: /contract\n  node: n1\n",
        etcd.yaml_endpoints()
    );
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, text).unwrap();
    let mut options = LiveOptions::new(&config);
    options.state_dir = Some(dir.join("state"));
    options.watch = false;
    let node = start_live(options).await.unwrap();
    api.admin = node.admin_address();
    let upstream = common::echo("f").await;
    let shared = format!(
        "listeners:\n  - address: 127.0.0.1:0\nregistry:\n  allow_new_services: true\nroutes:\n  - service: web\nservices:\n  web:\n    instances:\n      - {{id: w, address: \"{upstream}\"}}\n"
    );
    let body = Some(("application/yaml", shared.as_str()));
    let pushed = api
        .expect(200, Method::POST, "/admin/config", None, body)
        .await;
    let version = serde_json::from_str::<Value>(&pushed).unwrap()["version"]
        .as_u64()
        .unwrap();
    api.expect(200, Method::POST, "/admin/config", None, body)
        .await;
    let stale = format!("/admin/config?base={}", version.saturating_sub(1));
    let changed = shared.replace("web:\n", "web:\n    strategy: random\n");
    api.expect(
        409,
        Method::POST,
        &stale,
        None,
        Some(("application/yaml", &changed)),
    )
    .await;
    api.expect(
        422,
        Method::POST,
        "/admin/config",
        None,
        Some(("application/yaml", "routes: 5")),
    )
    .await;
    api.expect(409, Method::POST, "/admin/reload", None, None)
        .await;
    api.expect(200, Method::GET, "/admin/fleet", None, None)
        .await;
    // The pushed version reaches the node through its watch.
    let started = std::time::Instant::now();
    loop {
        let (status, _) = api
            .call(Method::GET, "/admin/services/web", None, None)
            .await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the pushed version never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let registration =
        json!({"id": "f1", "address": upstream.to_string(), "ttl": "30s"}).to_string();
    api.expect(
        201,
        Method::POST,
        "/admin/services/web/instances",
        None,
        Some(("application/json", &registration)),
    )
    .await;
    api.expect(
        200,
        Method::PUT,
        "/admin/services/web/instances/f1/heartbeat",
        None,
        None,
    )
    .await;
    api.expect(
        200,
        Method::DELETE,
        "/admin/services/web/instances/f1",
        None,
        None,
    )
    .await;
    node.shutdown().await;
}
