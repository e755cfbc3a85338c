//! The access log: its two formats as written to a file (escaping included),
//! live changes by reload, the off switches, reopening for log rotation
//! (SIGUSR1 and the admin API), and plain text logs on a pipe.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::binary::{temp_dir, Process};
use common::raw::exchange;
use common::*;
use http::Method;
use switchyard::server::Running;

/// Generous: lines must appear within this on a loaded machine.
const EVENTUALLY: Duration = Duration::from_secs(20);

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the file at `path` has at least `n` lines.
async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let found = lines(path);
        if found.len() >= n {
            return found;
        }
        assert!(
            started.elapsed() < EVENTUALLY,
            "{} has {} of {n} lines: {found:?}",
            path.display(),
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn yaml_path(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}

/// A proxy in front of an echo upstream (instance `one` of service `web`)
/// that logs to a new file, `access_log: {path: FILE<settings>}`; and the
/// file.
async fn logging_proxy(settings: &str) -> (Running, PathBuf) {
    let up = echo("up").await;
    let file = temp_dir().join("access.log");
    let proxy = proxy(&format!(
        "access_log: {{path: {}{settings}}}\nroutes: [{{service: web}}]\nservices:\n  web: {{instances: [{{id: one, address: \"{up}\"}}]}}\n",
        yaml_path(&file)
    ))
    .await;
    (proxy, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_escape_quotes_control_characters_and_bad_utf8() {
    let (proxy, file) = logging_proxy("").await;
    let address = proxy.listeners()[0].address;
    // A quote in the path, and a host the proxy refuses (logged as sent):
    // quote, backslash, tab and bytes that are not UTF-8.
    assert_eq!(
        exchange(
            address,
            b"GET /a\"b?q=1 HTTP/1.1\r\nHost: ok.test\r\nX-Request-Id: id-1\r\n\r\n"
        )
        .await
        .status,
        200
    );
    assert_eq!(
        exchange(
            address,
            b"GET /x HTTP/1.1\r\nHost: we\"ird\\\thost\xff\xfe\r\nX-Request-Id: id-\t\xc3\xa9\xff\r\n\r\n"
        ).await.status,
        400
    );
    proxy.access_log().flush(EVENTUALLY);
    let found = lines(&file);
    assert_eq!(found.len(), 2, "{found:?}");
    let events: Vec<serde_json::Value> = found
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Lines of different connections need not come in request order.
    let find = |status: u64| {
        let i = events.iter().position(|e| e["status"] == status).unwrap();
        (&events[i], &found[i])
    };
    let (ok, _) = find(200);
    assert_eq!(ok["target"], "switchyard::access");
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["message"], "request");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["host"], "ok.test");
    assert_eq!(ok["path"], "/a\"b");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["service"], "web");
    assert_eq!(ok["instance"], "one");
    assert_eq!(ok["request_id"], "id-1");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["complete"], true);
    assert!(ok["bytes"].as_u64().unwrap() > 0, "{ok}");
    assert!(ok["upstream_ms"].as_f64().unwrap() <= ok["total_ms"].as_f64().unwrap());
    assert!(ok["timestamp"].as_str().unwrap().ends_with('Z'));
    let (refused, refused_line) = find(400);
    assert_eq!(refused["status"], 400);
    assert_eq!(refused["host"], "we\"ird\\\thost\u{FFFD}\u{FFFD}");
    assert_eq!(refused["request_id"], "id-\t\u{e9}\u{FFFD}");
    assert_eq!(refused["service"], "-");
    assert!(refused.get("upstream_ms").is_none(), "{refused}");
    // Escaped on the wire, not only decodable.
    assert!(
        refused_line.contains(r#""host":"we\"ird\\\thost"#),
        "{refused_line}"
    );
    assert!(
        refused_line.contains(r#""request_id":"id-\té�""#),
        "{refused_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_are_nginx_combined_with_request_id_and_upstream_time() {
    let (proxy, file) = logging_proxy(", format: combined").await;
    let address = proxy.listeners()[0].address;
    assert_eq!(
        exchange(
            address,
            b"GET /p?q=1&r HTTP/1.1\r\nHost: h.test\r\nUser-Agent: agent \"x\"\xff\r\nReferer: http://r.test/\r\nX-Request-Id: rid\r\n\r\n"
        ).await.status,
        200
    );
    assert_eq!(
        exchange(address, b"GET /none HTTP/1.0\r\nHost: bad host\r\n\r\n")
            .await
            .status,
        400
    );
    proxy.access_log().flush(EVENTUALLY);
    let found = lines(&file);
    assert_eq!(found.len(), 2, "{found:?}");
    // 127.0.0.1 - - [01/Dec/2026:15:25:51 +0000] "GET /p?q=1&r HTTP/1.1" 200 N "http://r.test/" "agent \x22x\x22\xFF" "rid" 0.001
    // Lines of different connections need not come in request order.
    let line = found.iter().find(|l| l.contains("/p?")).unwrap();
    let other = found.iter().find(|l| !l.contains("/p?")).unwrap();
    let (start, rest) = line.split_once(" [").unwrap();
    assert_eq!(start, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert_eq!(time.len(), "01/Dec/2026:15:25:51 +0000".len(), "{line}");
    assert!(time.ends_with(" +0000"), "{line}");
    let rest = rest
        .strip_prefix("\"GET /p?q=1&r HTTP/1.1\" 200 ")
        .unwrap_or_else(|| panic!("{line}"));
    let (bytes, rest) = rest.split_once(' ').unwrap();
    assert!(bytes.parse::<u64>().unwrap() > 0, "{line}");
    let rest = rest
        .strip_prefix(r#""http://r.test/" "agent \x22x\x22\xFF" "rid" "#)
        .unwrap_or_else(|| panic!("{line}"));
    let (upstream_time, trace) = rest.split_once(' ').unwrap();
    let (secs, millis) = upstream_time.split_once('.').unwrap();
    assert!(secs.parse::<u64>().is_ok() && millis.len() == 3, "{line}");
    // Then the trace id and the proxy's span id, quoted.
    let (trace_id, span_id) = trace.split_once(' ').unwrap();
    let hex = |quoted: &str, len: usize| {
        let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
        inner.is_some_and(|i| i.len() == len && i.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert!(hex(trace_id, 32) && hex(span_id, 16), "{line}");
    // Refused by the proxy: no upstream time, no referer or agent.
    assert!(
        other.contains("\"GET /none HTTP/1.0\" 400 0 \"-\" \"-\" \""),
        "{other}"
    );
    let (before_trace, trace) = other.rsplit_once(" \"").unwrap();
    assert!(hex(&format!("\"{trace}"), 16), "{other}");
    assert!(
        before_trace.rsplit_once(" \"").unwrap().0.ends_with("\" -"),
        "{other}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_log_changes_its_format_and_turns_it_off() {
    let up = echo("up").await;
    let dir = temp_dir();
    let (first, second) = (dir.join("first.log"), dir.join("second.log"));
    let config = dir.join("proxy.yaml");
    let write = |access_log: &str| {
        std::fs::write(
            &config,
            format!(
                "listeners: [{{address: 127.0.0.1:0}}]\nadmin: {{address: 127.0.0.1:0}}\naccess_log: {access_log}\nroutes: [{{service: web}}]\nservices:\n  web: {{instances: [{{address: \"{up}\"}}]}}\n"
            ),
        )
        .unwrap();
    };
    write(&format!("{{path: {}}}", yaml_path(&first)));
    let mut options = switchyard::server::LiveOptions::new(&config);
    options.watch = false;
    let proxy = switchyard::server::start_live(options).await.unwrap();
    let client = client();
    let url = format!("{}/", base(&proxy));
    let reload = || async {
        let (status, body) =
            common::admin::call(proxy.admin_address(), Method::POST, "/admin/reload")
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("access_log changed"), "{body}");
    };
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    proxy.access_log().flush(EVENTUALLY);
    assert_eq!(lines(&first).len(), 1);

    write(&format!(
        "{{path: {}, format: combined}}",
        yaml_path(&second)
    ));
    reload().await;
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    proxy.access_log().flush(EVENTUALLY);
    assert_eq!(lines(&first).len(), 1, "the old file got a new line");
    let moved = lines(&second);
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(moved[0].starts_with("127.0.0.1 - - ["), "{moved:?}");

    write(&format!("{{path: {}, enabled: false}}", yaml_path(&second)));
    reload().await;
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    proxy.access_log().flush(EVENTUALLY);
    assert_eq!(lines(&second).len(), 1, "a line although the log is off");

    // A file that cannot be opened fails the reload; the log stays put.
    write(&format!(
        "{{path: {}}}",
        yaml_path(&dir.join("missing-dir").join("x.log"))
    ));
    let (status, body) = common::admin::call(proxy.admin_address(), Method::POST, "/admin/reload")
        .await
        .unwrap();
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("access_log.path"), "{body}");
    proxy.shutdown().await;
}

#[test]
fn bad_access_log_settings_name_the_field() {
    let error = switchyard::config::parse(
        "listeners: [{address: 127.0.0.1:0}]\naccess_log: {format: xml, path: \"\"}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("access_log.format: unknown format `xml`"),
        "{error}"
    );
    assert!(
        error.contains("access_log.path: must be a file path"),
        "{error}"
    );
    let error = switchyard::config::parse(
        "listeners: [{address: 127.0.0.1:0}]\naccess_log: {colour: true}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("colour"), "{error}");
}

/// logrotate renames the file, then signals; lines before the signal stay in
/// the renamed file, lines after go to a new file at the configured path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_and_the_admin_api_reopen_the_file_after_rotation() {
    let up = echo("up").await;
    let dir = temp_dir();
    let file = dir.join("access.log");
    let process = Process::start(
        &format!(
            "listeners: [{{address: 127.0.0.1:0}}]\nadmin: {{address: 127.0.0.1:0, token: sekrit}}\naccess_log: {{path: {}}}\nroutes: [{{service: web}}]\nservices:\n  web: {{instances: [{{address: \"{up}\"}}]}}\n",
            yaml_path(&file)
        ),
        &[],
    );
    let client = client();
    let url = format!("http://{}/", process.listener);
    let request = |id: &'static str| {
        let (client, url) = (&client, &url);
        async move {
            let got = get(client, url, &[("x-request-id", id)]).await;
            assert_eq!(got.status, 200);
        }
    };
    let ids = |path: &Path| -> Vec<String> {
        lines(path)
            .iter()
            .map(|l| {
                let event: serde_json::Value = serde_json::from_str(l).unwrap();
                event["request_id"].as_str().unwrap().to_string()
            })
            .collect()
    };

    request("before-1").await;
    wait_for_lines(&file, 1).await;
    let rotated = dir.join("access.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    process.signal("USR1");
    // The reopened file exists at the path again.
    let started = Instant::now();
    while !file.exists() {
        assert!(
            started.elapsed() < EVENTUALLY,
            "SIGUSR1 did not reopen the file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    request("after-1").await;
    wait_for_lines(&file, 1).await;
    assert_eq!(ids(&file), ["after-1"]);
    assert_eq!(ids(&rotated), ["before-1"]);

    // The admin API: a mutating call, so it needs the token.
    let rotated_again = dir.join("access.log.2");
    std::fs::rename(&file, &rotated_again).unwrap();
    let admin = |token: Option<&'static str>| {
        let admin = process.admin;
        async move {
            let mut request = http::Request::post(format!("http://{admin}/admin/logs/reopen"));
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let got = send(&common::client(), request.body(Default::default()).unwrap()).await;
            let got = common::admin::checked("POST", "/admin/logs/reopen", got);
            (got.status, got.body)
        }
    };
    let (status, _) = admin(None).await;
    assert_eq!(status, 401);
    assert!(!file.exists(), "reopened without the token");
    let (status, body) = admin(Some("sekrit")).await;
    assert_eq!(status, 200, "{body}");
    assert!(file.exists());
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["access_log"], file.display().to_string());
    request("after-2").await;
    wait_for_lines(&file, 1).await;
    assert_eq!(ids(&file), ["after-2"]);
    assert_eq!(ids(&rotated_again), ["after-1"]);
    assert_eq!(ids(&rotated), ["before-1"]);
}

/// The text log is for people at a terminal and for files; a pipe (here) or
/// a file gets no colour codes.
#[test]
fn text_logs_on_a_pipe_have_no_colour_codes() {
    let dir = temp_dir();
    let config = dir.join("proxy.yaml");
    std::fs::write(
        &config,
        "listeners: [{address: 127.0.0.1:0}]\nadmin: {address: 127.0.0.1:0}\nroutes: [{service: web}]\nservices:\n  web: {instances: [{address: \"127.0.0.1:1\"}]}\n",
    )
    .unwrap();
    let mut child = common::binary::command()
        .args(["run", "--no-watch", "-c"])
        .arg(&config)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + EVENTUALLY;
    let mut seen: Vec<String> = Vec::new();
    while !seen.iter().any(|l| l.contains("admin API listening")) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no `admin API listening` line in {seen:?}"));
        assert!(!line.contains('\x1b'), "colour codes on a pipe: {line:?}");
        seen.push(line);
    }
    // A request whose upstream refuses: warnings and an access line too.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let listener = seen
            .iter()
            .find(|l| l.contains("switchyard::server: listening "))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no listener line in {seen:?}"));
        get(&client(), &format!("http://{listener}/"), &[])
            .await
            .status
    });
    assert_eq!(status, 502);
    let deadline = Instant::now() + EVENTUALLY;
    while !seen.iter().any(|l| l.contains("connect failed")) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no `connect failed` warning in {seen:?}"));
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    seen.extend(rx.try_iter());
    for line in &seen {
        assert!(!line.contains('\x1b'), "colour codes on a pipe: {line:?}");
    }
}
