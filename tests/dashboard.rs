//! The dashboard (`GET /` on the admin listener) in a real headless
//! Chromium, driven through the DevTools protocol: the charts draw the
//! traffic the test sent, the diff view shows what changed between two
//! config versions, and the rollback button, with the admin token typed
//! into the page's field, rolls the proxy back. Screenshots are kept under
//! `target/test-artifacts/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::flippable::{Flippable, Mode};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "dash-s3cret";

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A headless Chromium with remote debugging, killed when dropped.
struct Browser {
    child: Child,
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(chromium: &str, url: &str) -> Browser {
        let profile = common::binary::temp_dir().join("chromium-profile");
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,2400",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("Chromium did not report its DevTools address");
            // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap().parse::<u16>().unwrap();
            }
        };
        Browser { child, port }
    }
}

/// One page's DevTools session.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    async fn attach(browser: &Browser, url_start: &str) -> Page {
        let client = client();
        let started = Instant::now();
        let ws_url = loop {
            let got = get(
                &client,
                &format!("http://127.0.0.1:{}/json/list", browser.port),
                &[],
            )
            .await;
            let targets: Value = serde_json::from_str(&got.body).unwrap_or_default();
            let page = targets.as_array().and_then(|all| {
                all.iter()
                    .find(|t| {
                        t["type"] == "page"
                            && t["url"].as_str().is_some_and(|u| u.starts_with(url_start))
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(url) = page {
                break url;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no page target: {}",
                got.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        Page { ws, next_id: 0 }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(message)).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools connection closed")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is true, up to `limit`.
    async fn wait_for(&mut self, expression: &str, limit: Duration) {
        let started = Instant::now();
        // While the page is still loading, `document.body` may be null: that
        // is "not yet", not a failure.
        let guarded = format!(
            "(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
        );
        while self.eval(&guarded).await != Value::Bool(true) {
            assert!(
                started.elapsed() < limit,
                "never true: {expression}\n{}",
                self.eval("document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `selector` names with the mouse, at its centre,
    /// as a user would (the browser's own hit testing decides what gets
    /// the click).
    async fn click(&mut self, selector: &str) {
        let quoted = serde_json::to_string(selector).unwrap();
        let centre = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({quoted}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (x, y) = (
            centre[0]
                .as_f64()
                .unwrap_or_else(|| panic!("no {selector}")),
            centre[1].as_f64().unwrap(),
        );
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }
}

/// Standard base64 (what DevTools sends screenshots in).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for c in text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
    {
        bits = (bits << 6) | value(c);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

fn config(slow: &Flippable, failing: &Flippable, with_spare: bool) -> String {
    let mut text = format!(
        "listeners: [{{address: 127.0.0.1:0}}]\nadmin: {{address: 127.0.0.1:0, token: {TOKEN}}}\nroutes:\n"
    );
    if with_spare {
        text.push_str("  - {host: spare.test, service: spare}\n");
    }
    text.push_str(&format!(
        "  - {{service: shop}}\nservices:\n  shop:\n    instances:\n      - {{id: alpha, address: \"{}\"}}\n      - {{id: beta, address: \"{}\"}}\n",
        slow.address, failing.address
    ));
    if with_spare {
        text.push_str(&format!(
            "  spare:\n    instances:\n      - {{id: spare-one, address: \"{}\"}}\n",
            slow.address
        ));
    }
    text
}

async fn versions(admin: std::net::SocketAddr) -> Value {
    let (status, text) = common::admin::call(admin, Method::GET, "/admin/config/versions")
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_dashboard_charts_traffic_shows_a_diff_and_rolls_back_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        common::skip_without("chromium", "apt-get install chromium");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (slow, failing) = runtime.block_on(async {
        (
            Flippable::start("alpha").await,
            Flippable::start("beta").await,
        )
    });
    slow.set(Mode::Slow(Duration::from_millis(30)));
    failing.set(Mode::Status(500));
    let process = common::binary::Process::start(&config(&slow, &failing, false), &["--no-watch"]);
    let admin = process.admin;

    // Version 2 adds a service; then traffic: half slow answers, half 500s.
    std::fs::write(&process.config_path, config(&slow, &failing, true)).unwrap();
    runtime.block_on(async {
        let (status, text) =
            common::admin::call_with(admin, Method::POST, "/admin/reload", Some(TOKEN), None)
                .await
                .unwrap();
        assert_eq!(status, 200, "{text}");
        assert_eq!(versions(admin).await["current"], 2);
        let client = client();
        for _ in 0..20 {
            get(&client, &format!("http://{}/", process.listener), &[]).await;
        }
        // Counted when the body ends: wait until the series hold them all.
        let started = Instant::now();
        loop {
            let (_, text) = common::admin::call(admin, Method::GET, "/admin/stats")
                .await
                .unwrap();
            let stats: Value = serde_json::from_str(&text).unwrap();
            let shop = stats["services"]
                .as_array()
                .and_then(|all| all.iter().find(|s| s["name"] == "shop").cloned())
                .unwrap_or_default();
            let total: u64 = shop["points"]
                .as_array()
                .map(|p| p.iter().filter_map(|p| p["requests"].as_u64()).sum())
                .unwrap_or(0);
            if total >= 20 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the requests were not counted: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let url = format!("http://{admin}/");
    let browser = Browser::start(chromium, &url);
    runtime.block_on(async {
        let mut page = Page::attach(&browser, &url).await;
        page.wait_for(
            "document.body.dataset.loaded === 'true' && document.body.dataset.stats === 'true' \
             && document.body.dataset.versions === '2' && !!document.querySelector('#diff .add')",
            Duration::from_secs(20),
        )
        .await;

        // The charts: every one of the shop's four has drawn points above
        // its baseline, from the traffic sent.
        let charts = page
            .eval(
                "[...document.querySelectorAll('figure.chart')].map(f => ({ series: f.dataset.series, \
                 max: +f.dataset.max, points: +f.dataset.points, \
                 line: [...f.querySelectorAll('path.line, path.dot')].map(p => p.getAttribute('d')).join(' ') }))",
            )
            .await;
        let chart = |series: &str| -> Value {
            charts
                .as_array()
                .and_then(|all| all.iter().find(|c| c["series"] == series).cloned())
                .unwrap_or_else(|| panic!("no chart {series}: {charts}"))
        };
        for kind in ["rate", "errors", "p50", "p99"] {
            let c = chart(&format!("shop/{kind}"));
            assert!(c["max"].as_f64().unwrap() > 0.0, "{c}");
            assert!(c["points"].as_u64().unwrap() >= 1, "{c}");
            let line = c["line"].as_str().unwrap();
            let ys: Vec<f64> = line
                .split(['M', 'L'])
                .filter_map(|p| p.replace("h0", "").trim().split(',').nth(1).map(str::to_string))
                .filter_map(|y| y.trim().parse().ok())
                .collect();
            assert!(!ys.is_empty(), "{c}");
            assert!(ys.iter().any(|&y| y < 60.0), "nothing above the baseline: {c}");
        }
        // Half the requests failed; the slow half took about 30 ms.
        let errors = chart("shop/errors")["max"].as_f64().unwrap();
        assert!((30.0..=70.0).contains(&errors), "error rate {errors}%");
        let p99 = chart("shop/p99")["max"].as_f64().unwrap();
        assert!(p99 >= 25.0, "p99 {p99} ms");
        // The service added by version 2 has its charts, without traffic.
        assert_eq!(chart("spare/rate")["max"], 0.0);

        // The diff view: version 1 → 2 added the spare service and route.
        let diff = page.eval("document.getElementById('diff').innerText").await;
        let diff = diff.as_str().unwrap();
        assert!(diff.contains("version 1") && diff.contains("version 2"), "{diff}");
        let added: Vec<String> = page
            .eval("[...document.querySelectorAll('#diff .add')].map(e => e.textContent)")
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert!(
            added.iter().any(|l| l.contains("spare.test")),
            "{added:?}"
        );
        assert!(added.iter().any(|l| l.contains("spare-one")), "{added:?}");
        assert!(
            diff.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).count() == 0,
            "nothing was removed: {diff}"
        );
        // The instance table, with its health history and buttons.
        let row = page
            .eval("document.querySelector('tr[data-instance=\"shop/alpha\"]').innerText")
            .await;
        assert!(row.as_str().unwrap().contains("Drain"), "{row}");
        page.screenshot("dashboard-charts-and-diff.png").await;

        // Rollback: the button opens the page's dialog; the token is typed
        // into its field, then Confirm.
        page.click("button.rollback[data-version=\"1\"]").await;
        page.wait_for(
            "document.getElementById('confirm').open === true",
            Duration::from_secs(5),
        )
        .await;
        // A wrong token first: refused, the dialog stays open and says so.
        page.click("#token").await;
        page.call("Input.insertText", json!({ "text": "not-the-token" }))
            .await;
        page.click("#confirm-ok").await;
        page.wait_for(
            "document.getElementById('confirm-error').textContent.includes('the admin token is wrong') \
             && document.getElementById('confirm').open === true",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(versions(admin).await["current"], 2);
        page.eval("document.getElementById('token').select()").await;
        page.call("Input.insertText", json!({ "text": TOKEN })).await;
        page.screenshot("dashboard-rollback-dialog.png").await;
        page.click("#confirm-ok").await;
        let started = Instant::now();
        let now = loop {
            let now = versions(admin).await;
            if now["current"] == 3 {
                break now;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the rollback did not happen: {now}\n{}",
                page.eval("document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let newest = now["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"] == 3)
            .cloned()
            .unwrap();
        assert_eq!(newest["rolled_back_from"], 1, "{newest}");
        page.wait_for(
            "document.getElementById('notice').textContent.includes('now at config version 3') \
             && document.body.dataset.versions === '3' \
             && document.getElementById('confirm').open === false",
            Duration::from_secs(10),
        )
        .await;
        // The token stayed in the page: not in storage, cookies or the URL.
        let leaked = page
            .eval(&format!(
                "localStorage.length + sessionStorage.length + document.cookie.length \
                 + (location.href.includes({TOKEN:?}) ? 1 : 0) + (document.getElementById('token').value.length)"
            ))
            .await;
        assert_eq!(leaked, 0);
        page.screenshot("dashboard-after-rollback.png").await;

        // Drain from the page: the token is remembered for the session, so
        // the dialog has it; the registry drains the instance.
        page.click("button[data-key=\"drain/shop/alpha\"]").await;
        page.wait_for(
            "document.getElementById('confirm').open === true",
            Duration::from_secs(5),
        )
        .await;
        page.click("#confirm-ok").await;
        page.wait_for(
            "(document.querySelector('tr[data-instance=\"shop/alpha\"] td.history-cell') || {}).innerText?.includes('healthy → drained')",
            Duration::from_secs(10),
        )
        .await;
        let (_, status) = common::admin::call(admin, Method::GET, "/admin/services/shop")
            .await
            .unwrap();
        let status: Value = serde_json::from_str(&status).unwrap();
        let alpha = status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == "alpha")
            .cloned()
            .unwrap();
        assert_eq!(alpha["health"], "drained", "{alpha}");
        assert_eq!(alpha["health_history"][0]["to"], "drained", "{alpha}");

        // A guarded change: the page shows the guard while it runs.
        std::fs::write(&process.config_path, config(&slow, &failing, true)).unwrap();
        let (status, text) = common::admin::call_with(
            admin,
            Method::POST,
            "/admin/reload?guard=error_rate+%3C+90%25&for=60s",
            Some(TOKEN),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{text}");
        page.wait_for(
            "!document.getElementById('guard-section').hidden \
             && document.getElementById('guard-state').textContent.startsWith('Running: version 4') \
             && document.getElementById('guard').innerText.includes('error_rate')",
            Duration::from_secs(10),
        )
        .await;
        page.screenshot("dashboard-guard.png").await;
    });

    // The page on a phone-sized screen, through Chromium's own screenshot.
    let phone = artifacts().join("dashboard-phone.png");
    let profile = common::binary::temp_dir().join("chromium-phone");
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            "--window-size=390,2400",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", phone.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        std::fs::metadata(&phone).is_ok_and(|m| m.len() > 0),
        "no phone screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("screenshot: {}", phone.display());
}

/// The instance table groups each service's instances by version: a
/// header per version with its instance count, healthy count and share of
/// the service's requests, the instances without one last as
/// "unversioned"; a group folds and unfolds from the keyboard, and the
/// headers fit a phone's width.
#[test]
fn the_dashboard_groups_instances_by_version() {
    let Some(chromium) = chromium() else {
        common::skip_without("chromium", "apt-get install chromium");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let running = runtime.block_on(async {
        let mut instances = String::new();
        for (id, version) in [
            ("v1-a", Some("1.9")),
            ("v1-b", Some("1.9")),
            ("v2-a", Some("2.10")),
            ("plain", None),
        ] {
            let version = version.map_or_else(String::new, |v| format!(", version: \"{v}\""));
            instances.push_str(&format!(
                "      - {{id: {id}, address: \"{}\"{version}}}\n",
                echo(id).await
            ));
        }
        // 3:1 between the two version subsets: 40 requests give exactly
        // 30 to version 1.9 and 10 to version 2.10, none to `plain`.
        let running = proxy(&format!(
            "routes:\n  - {{host: other.test, service: other}}\n  - backends: [{{service: web, weight: 3, subset: {{version: \"1.9\"}}}}, {{service: web, weight: 1, subset: {{version: \"2.10\"}}}}]\nservices:\n  web:\n    instances:\n{instances}  other:\n    instances:\n      - {{id: lone, address: \"{}\"}}\n",
            echo("lone").await
        ))
        .await;
        let client = client();
        for _ in 0..40 {
            let got = get(&client, &format!("{}/", base(&running)), &[]).await;
            assert_eq!(got.status, 200, "{}", got.body);
        }
        view_until(&running, "web", "all 40 requests counted", |view| {
            view["instances"].as_array().is_some_and(|list| {
                list.iter()
                    .filter_map(|i| i["requests_total"].as_u64())
                    .sum::<u64>()
                    == 40
            })
        })
        .await;
        let (status, answer) = common::admin::call(
            running.admin_address(),
            Method::PUT,
            "/admin/services/web/instances/v1-b/drain",
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{answer}");
        running
    });
    let url = format!("http://{}/", running.admin_address());
    let browser = Browser::start(chromium, &url);
    runtime.block_on(async {
        let mut page = Page::attach(&browser, &url).await;
        page.wait_for(
            "document.body.dataset.loaded === 'true' && !!document.querySelector('tr[data-instance=\"web/v1-b\"] td.health.drained')",
            Duration::from_secs(20),
        )
        .await;
        // Group headers in order (numeric versions, highest first, then
        // the unversioned), each with what it holds.
        let groups = page
            .eval(
                "[...document.querySelectorAll('table[data-service=\"web\"] tbody.version-group')].map(g => ({ \
                 version: g.dataset.version, header: g.querySelector('tr.group-header').innerText.trim(), \
                 instances: [...g.querySelectorAll('tr[data-instance]')].map(r => r.dataset.instance) }))",
            )
            .await;
        let groups = groups.as_array().unwrap();
        assert_eq!(groups.len(), 3, "{groups:?}");
        let expect = [
            ("2.10", "version 2.10", vec!["web/v2-a"], "1 instance, 1 healthy", "25% of requests"),
            (
                "1.9",
                "version 1.9",
                vec!["web/v1-a", "web/v1-b"],
                "2 instances, 1 healthy",
                "75% of requests",
            ),
            ("", "unversioned", vec!["web/plain"], "1 instance, 1 healthy", "0% of requests"),
        ];
        for (group, (version, title, members, counts, share)) in groups.iter().zip(expect) {
            assert_eq!(group["version"], version, "{group}");
            let header = group["header"].as_str().unwrap();
            assert!(header.starts_with(title), "{header}");
            assert!(header.contains(counts), "{header}");
            assert!(header.contains(share), "{header}");
            let got: Vec<&str> = group["instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(got, members, "{group}");
        }
        // A service whose instances carry no version is not grouped.
        let other = page
            .eval("document.querySelectorAll('table[data-service=\"other\"] tbody.version-group').length")
            .await;
        assert_eq!(other, 0);
        page.screenshot("dashboard-version-groups.png").await;

        // From the keyboard: focus the 1.9 group's toggle, press Enter and
        // its rows fold (and stay folded, with focus, across refreshes);
        // Space unfolds them.
        let toggle = "button[data-key=\"group/web/1.9\"]";
        let rows = "[...document.querySelectorAll('tbody.version-group[data-version=\"1.9\"] tr[data-instance]')]";
        page.eval(&format!("document.querySelector('{toggle}').focus()")).await;
        for (key, code, text) in [("Enter", "Enter", "\r"), (" ", "Space", " ")] {
            let before = page.eval(&format!("{rows}.every(r => !r.hidden)")).await;
            for kind in ["keyDown", "keyUp"] {
                let mut event = json!({ "type": kind, "key": key, "code": code,
                    "windowsVirtualKeyCode": if code == "Enter" { 13 } else { 32 } });
                if kind == "keyDown" {
                    event["text"] = json!(text);
                }
                page.call("Input.dispatchKeyEvent", event).await;
            }
            let folded = before == Value::Bool(true);
            page.wait_for(
                &format!(
                    "{rows}.every(r => r.hidden === {folded}) && document.querySelector('{toggle}').getAttribute('aria-expanded') === '{}'",
                    !folded
                ),
                Duration::from_secs(5),
            )
            .await;
            if folded {
                // Past a refresh (every 3 s): still folded, focus kept.
                let seen = page.eval("+document.body.dataset.refreshes").await;
                let seen = seen.as_u64().unwrap();
                page.wait_for(
                    &format!("+document.body.dataset.refreshes > {seen}"),
                    Duration::from_secs(10),
                )
                .await;
                page.wait_for(
                    &format!("{rows}.every(r => r.hidden) && document.activeElement === document.querySelector('{toggle}')"),
                    Duration::from_secs(5),
                )
                .await;
                page.screenshot("dashboard-version-group-folded.png").await;
            }
        }

        // On a phone-wide screen the group headers' text fits the width.
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
        )
        .await;
        page.wait_for("window.innerWidth <= 400", Duration::from_secs(5))
            .await;
        let overflow = page
            .eval(
                "[...document.querySelectorAll('tr.group-header .group-title')].map(e => { \
                 e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); \
                 return [r.left, r.right, window.innerWidth, parseFloat(getComputedStyle(e).fontSize)]; })",
            )
            .await;
        for rect in overflow.as_array().unwrap() {
            let (left, right, width, font) = (
                rect[0].as_f64().unwrap(),
                rect[1].as_f64().unwrap(),
                rect[2].as_f64().unwrap(),
                rect[3].as_f64().unwrap(),
            );
            assert!(left >= 0.0 && right <= width, "off screen: {rect}");
            assert!(font >= 12.0, "too small: {rect}");
        }
        page.screenshot("dashboard-version-groups-phone.png").await;
    });
    drop(browser);
    runtime.block_on(running.shutdown());
}
