//! Observability: Prometheus metrics after known traffic (checked with
//! promtool when it is installed), and the dashboard in a real headless
//! browser.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::flippable::{Flippable, Mode};
use common::*;
use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic() {
    let (a, b) = (Flippable::start("a").await, Flippable::start("b").await);
    b.set(Mode::Status(500));
    let dead = dead_address().await;
    let good = echo("good").await;
    let proxy = proxy(&format!(
        "routes:\n  - host: web.test\n    service: web\n  - host: retry.test\n    service: retry\nservices:\n  web: {{instances: [{{id: a, address: \"{}\"}}, {{id: b, address: \"{}\"}}]}}\n  retry: {{retry: {{max_attempts: 2}}, instances: [{{id: dead, address: \"{dead}\"}}, {{id: good, address: \"{good}\"}}]}}\n",
        a.address, b.address
    ))
    .await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    for _ in 0..10 {
        get(&client, &url, &[("host", "web.test")]).await;
    }
    for _ in 0..2 {
        assert_eq!(
            get(&client, &url, &[("host", "nowhere.test")]).await.status,
            404
        );
    }
    // Round-robin over dead and good: each request starts at dead (the
    // retry moves the rotation on to good, the next request back to dead)
    // and is retried on good.
    for _ in 0..2 {
        assert_eq!(
            get(&client, &url, &[("host", "retry.test")]).await.status,
            200
        );
    }
    // A request is counted when its response body ends, a moment after the
    // client has read it: wait for the last of each service, then check
    // every figure exactly.
    let started = std::time::Instant::now();
    let text = loop {
        let text = scrape(proxy.admin_address()).await;
        let counted = |series: &str| sample(&text, series).unwrap_or(0.0);
        if counted(r#"switchyard_request_duration_seconds_count{service="web"}"#) >= 10.0
            && counted(r#"switchyard_requests_total{service="retry",instance="good",class="2xx"}"#)
                >= 2.0
        {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the requests were not all counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let check = |series: &str, expected: f64| {
        assert_eq!(
            sample(&text, series),
            Some(expected),
            "{series} in:\n{text}"
        );
    };
    check(
        r#"switchyard_requests_total{service="web",instance="a",class="2xx"}"#,
        5.0,
    );
    check(
        r#"switchyard_requests_total{service="web",instance="b",class="5xx"}"#,
        5.0,
    );
    check(
        r#"switchyard_request_duration_seconds_count{service="web"}"#,
        10.0,
    );
    check("switchyard_unrouted_requests_total", 2.0);
    check(
        r#"switchyard_upstream_connect_errors_total{service="retry"}"#,
        2.0,
    );
    check(r#"switchyard_upstream_retries_total{service="retry"}"#, 2.0);
    check(
        r#"switchyard_requests_total{service="retry",instance="good",class="2xx"}"#,
        2.0,
    );
    check(
        r#"switchyard_instance_in_flight{service="web",instance="a"}"#,
        0.0,
    );
    check(
        r#"switchyard_instance_healthy{service="web",instance="b"}"#,
        1.0,
    );
    check(r#"switchyard_registry_instances{source="file"}"#, 4.0);
    // The keep-alive client holds its connections open.
    let open = sample(
        &text,
        r#"switchyard_connections_open{listener="listeners[0]"}"#,
    )
    .unwrap();
    let accepted = sample(
        &text,
        r#"switchyard_connections_accepted_total{listener="listeners[0]"}"#,
    )
    .unwrap();
    assert!(
        open >= 1.0 && accepted >= open,
        "open {open}, accepted {accepted}"
    );

    promtool_check(&text);
}

/// Runs `promtool check metrics` on the exposition, when promtool is
/// installed (`.ci/run` installs it; elsewhere the check is skipped, loudly).
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        common::skip_without("promtool", "apt-get install prometheus");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "promtool refused the exposition:\n{report}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool found problems:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reload_metrics() {
    let a = Flippable::start("a").await;
    let dir = common::binary::temp_dir();
    let path = dir.join("proxy.yaml");
    let text = |weight: u32| {
        format!(
            "listeners: [{{address: 127.0.0.1:0}}]\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{service: web}}]\nservices:\n  web:\n    health_check: {{interval: 50ms, timeout: 40ms, jitter: 0ms, unhealthy_threshold: 1}}\n    instances: [{{id: a, address: \"{}\", weight: {weight}}}]\n",
            a.address
        )
    };
    std::fs::write(&path, text(1)).unwrap();
    let mut options = switchyard::server::LiveOptions::new(&path);
    options.watch = false;
    let proxy = switchyard::server::start_live(options).await.unwrap();
    std::fs::write(&path, text(2)).unwrap();
    common::admin::call(proxy.admin_address(), Method::POST, "/admin/reload")
        .await
        .unwrap();
    std::fs::write(&path, "listeners: [").unwrap();
    common::admin::call(proxy.admin_address(), Method::POST, "/admin/reload")
        .await
        .unwrap();
    a.set(Mode::Status(500));
    let started = std::time::Instant::now();
    let text = loop {
        let text = scrape(proxy.admin_address()).await;
        if sample(
            &text,
            r#"switchyard_instance_healthy{service="web",instance="a"}"#,
        ) == Some(0.0)
        {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a never became unhealthy:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(
            &text,
            r#"switchyard_config_reloads_total{result="applied"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"switchyard_config_reloads_total{result="failed"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "switchyard_config_version"), Some(2.0));
    assert_eq!(
        sample(
            &text,
            r#"switchyard_health_transitions_total{service="web",to="unhealthy"}"#
        ),
        Some(1.0)
    );
    promtool_check(&text);
}

/// Loads the dashboard in headless Chromium (Debian's package; `.ci/run`
/// installs it) and reads the table it built from the status API.
#[test]
fn the_dashboard_shows_services_and_instances_in_a_real_browser() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(chromium) = chromium else {
        common::skip_without("chromium", "apt-get install chromium");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (a, b) =
        runtime.block_on(async { (Flippable::start("a").await, Flippable::start("b").await) });
    b.set(Mode::Status(503));
    let process = common::binary::Process::start(
        &format!(
            "listeners: [{{address: 127.0.0.1:0}}]\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{service: shop}}]\nservices:\n  shop:\n    strategy: least_connections\n    health_check: {{interval: 100ms, timeout: 80ms, unhealthy_threshold: 1}}\n    instances:\n      - {{id: alpha, address: \"{}\", weight: 3}}\n      - {{id: beta, address: \"{}\"}}\n",
            a.address, b.address
        ),
        &[],
    );
    // Wait for the first checks (alpha passed, beta failed with the reason
    // the page must show), then send some traffic.
    runtime.block_on(async {
        let started = std::time::Instant::now();
        loop {
            let (_, text) = common::admin::call(process.admin, Method::GET, "/admin/services/shop")
                .await
                .unwrap();
            let view: serde_json::Value = serde_json::from_str(&text).unwrap();
            let instance = |id: &str| {
                view["instances"]
                    .as_array()
                    .and_then(|all| all.iter().find(|i| i["id"] == id).cloned())
                    .unwrap_or_default()
            };
            let beta_failed = instance("beta")["reason"]
                .as_str()
                .is_some_and(|r| r.contains("status 503"));
            if instance("alpha")["health"] == "healthy" && beta_failed {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the first checks did not run: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    runtime.block_on(async {
        let client = client();
        for _ in 0..5 {
            get(&client, &format!("http://{}/", process.listener), &[]).await;
        }
    });
    let profile = common::binary::temp_dir().join("chromium-profile");
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{}/", process.admin))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page never rendered the status:\n{dom}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row = |id: &str| -> String {
        let start = dom
            .find(&format!(r#"data-instance="shop/{id}""#))
            .unwrap_or_else(|| panic!("no row for {id}:\n{dom}"));
        let end = dom[start..].find("</tr>").unwrap() + start;
        dom[start..end].to_string()
    };
    let alpha = row("alpha");
    assert!(
        alpha.contains(r#"<td class="health healthy">healthy</td>"#),
        "{alpha}"
    );
    assert!(
        alpha.contains(r#"<td class="num weight">3</td>"#),
        "{alpha}"
    );
    assert!(
        alpha.contains(r#"<td class="num requests">5</td>"#),
        "{alpha}"
    );
    let beta = row("beta");
    assert!(
        beta.contains(r#"<td class="health unhealthy">unhealthy</td>"#),
        "{beta}"
    );
    assert!(beta.contains("status 503, expected 200-399"), "{beta}");
    // Alpha's first pass is a change of state, in its health history.
    assert!(
        alpha.contains("unhealthy → healthy: passed its first check at start-up"),
        "{alpha}"
    );
    assert!(
        dom.contains("shop — least_connections, 1 of 2 in rotation"),
        "{dom}"
    );
    assert!(
        dom.contains(r#"id="config-version">config version 1<"#),
        "{dom}"
    );
    // Self-contained: no external scripts, styles or fonts.
    let page = runtime
        .block_on(common::admin::call(process.admin, Method::GET, "/"))
        .unwrap()
        .1;
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http") && !page.contains("@import")
    );
}
