//! The `switchyard` command: `check`, `--help`, and SIGTERM draining.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::binary::{command, temp_dir, Process};
use common::*;
use http::Response;
use http_body_util::Full;

const VALID: &str = "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nroutes:\n  - service: api\nservices:\n  api:\n    strategy: round_robin\n    instances:\n      - address: 127.0.0.1:9001\n        weight: 2\n";

fn check(text: &str) -> (bool, String, String) {
    let path = temp_dir().join("proxy.yaml");
    std::fs::write(&path, text).unwrap();
    let output = command()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_valid_config_and_the_shipped_one() {
    let (ok, stdout, _) = check(VALID);
    assert!(ok);
    assert!(
        stdout.contains("ok (1 listener(s), 1 route(s), 1 service(s), 1 instance(s))"),
        "{stdout}"
    );
    let shipped = command()
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        shipped.status.success(),
        "{}",
        String::from_utf8_lossy(&shipped.stderr)
    );
}

#[test]
fn check_names_the_field_of_each_broken_config() {
    let cases = [
        ("listeners:\n  - address: [oops\n", "line 2, column"),
        (
            &VALID.replace("weight: 2", "wieght: 2"),
            "line 11, column 9: services.api.instances[0].wieght: unknown field `wieght`",
        ),
        (
            &VALID.replace("127.0.0.1:9001", "127.0.0.1"),
            "services.api.instances[0].address: `127.0.0.1` is not an IP address with a port",
        ),
        (
            &VALID.replace("weight: 2", "weight: 0"),
            "services.api.instances[0].weight: must be between 1 and 1000 (got 0)",
        ),
        (
            &VALID.replace("round_robin", "fastest"),
            "services.api.strategy: unknown strategy `fastest`",
        ),
        (
            &VALID.replace("- service: api", "- service: web"),
            "routes[0].service: no service named `web` (services defined: api)",
        ),
    ];
    for (text, expected) in cases {
        let (ok, _, stderr) = check(text);
        assert!(!ok, "accepted:\n{text}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
}

#[test]
fn check_refuses_durations_too_long_for_the_running_proxy() {
    // Each of these once passed `check` and then panicked a part of the
    // running proxy (connections, probes, ejections, shutdown).
    let huge = "18446744073709551615s";
    let text = format!("drain_timeout: {huge}\n{VALID}")
        .replace(
            "  - address: 127.0.0.1:0\nadmin",
            &format!("  - address: 127.0.0.1:0\n    limits: {{header_read_timeout: {huge}, idle_timeout: 25h}}\nadmin"),
        )
        .replace(
            "    strategy: round_robin\n",
            &format!("    strategy: round_robin\n    request_timeout: {huge}\n    health_check: {{interval: {huge}}}\n    outlier_detection: {{base_ejection_time: {huge}, max_ejection_time: {huge}}}\n"),
        );
    let (ok, _, stderr) = check(&text);
    assert!(!ok, "accepted:\n{text}");
    let too_long = format!("`{huge}` is too long; the most allowed is 24h");
    for field in [
        "drain_timeout",
        "listeners[0].limits.header_read_timeout",
        "services.api.request_timeout",
        "services.api.health_check.interval",
        "services.api.outlier_detection.base_ejection_time",
        "services.api.outlier_detection.max_ejection_time",
    ] {
        let expected = format!("{field}: {too_long}");
        assert!(
            stderr.contains(&expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(
            "listeners[0].limits.idle_timeout: `25h` is too long; the most allowed is 24h"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("7 problem(s) found"), "{stderr}");

    // The bound itself is accepted.
    let longest = VALID.replace(
        "    strategy: round_robin\n",
        "    strategy: round_robin\n    request_timeout: 24h\n    outlier_detection: {base_ejection_time: 24h, max_ejection_time: 24h}\n",
    );
    let (ok, _, stderr) = check(&longest);
    assert!(ok, "{stderr}");
}

#[test]
fn check_refuses_a_config_over_4_mib_without_reading_it_all() {
    let mut text = VALID.to_string();
    // 50 MB, as once went through a reload and into the history.
    text.push_str(&"# padding\n".repeat(5_000_000));
    let (ok, _, stderr) = check(&text);
    assert!(!ok);
    assert!(
        stderr.contains("the config is larger than 4 MiB (4194304 bytes), the most accepted"),
        "{stderr}"
    );
}

#[test]
fn check_lists_all_problems_at_once() {
    let text = VALID
        .replace("weight: 2", "weight: 0")
        .replace("round_robin", "fastest")
        .replace("- service: api", "- service: web");
    let (ok, _, stderr) = check(&text);
    assert!(!ok);
    assert!(stderr.contains("3 problem(s) found"), "{stderr}");
}

#[test]
fn check_reports_a_missing_file() {
    let output = command()
        .args(["check", "-c", "/nonexistent/proxy.yaml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/proxy.yaml"));
}

#[test]
fn a_taken_address_is_reported_once_in_plain_words() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let dir = temp_dir();
    let path = dir.join("proxy.yaml");
    std::fs::write(
        &path,
        VALID.replacen("127.0.0.1:0", &address.to_string(), 1),
    )
    .unwrap();
    let output = command()
        .args(["run", "--no-watch", "-c"])
        .arg(&path)
        .arg("--state-dir")
        .arg(dir.join("versions"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|line| line.starts_with("switchyard: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        line.contains(&format!("cannot listen on {address}")),
        "{line}"
    );
    assert_eq!(line.matches("in use").count(), 1, "{line}");
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["demo", "--help"],
    ] {
        let output = command().args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let slow = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(Full::new(Bytes::from_static(b"finished")))
    })
    .await;
    let mut process = Process::start(
        &format!(
            "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\ndrain_timeout: 10s\nroutes:\n  - service: s\nservices:\n  s: {{instances: [{{address: \"{slow}\"}}]}}\n"
        ),
        &[],
    );
    let url = format!("http://{}/", process.listener);
    let in_flight = tokio::spawn(async move { get(&client(), &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    process.signal("TERM");
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "finished");
    let status = tokio::task::spawn_blocking(move || {
        let status = process.wait_exit(Duration::from_secs(10));
        (status, process)
    })
    .await
    .unwrap();
    let (status, process) = status;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit status");
    // No longer accepting.
    assert!(std::net::TcpStream::connect(process.listener).is_err());

    // Every log line is one JSON object; the request has an access event.
    let log = process.log.lock().unwrap().clone();
    let events: Vec<serde_json::Value> = log
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let access = events
        .iter()
        .find(|e| e["target"] == "switchyard::access")
        .expect("an access-log event");
    assert_eq!(access["status"], 200);
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/");
    assert_eq!(access["service"], "s");
    assert_eq!(access["bytes"], 8);
    assert_eq!(access["complete"], true);
    assert_eq!(
        access["request_id"],
        got.headers["x-request-id"].to_str().unwrap()
    );
    assert!(access["total_ms"].as_f64().unwrap() >= 800.0, "{access}");
    // The upstream took its 800 ms before answering; the proxy's own part is
    // the rest.
    let upstream_ms = access["upstream_ms"].as_f64().unwrap();
    assert!(upstream_ms >= 800.0, "{access}");
    assert!(
        upstream_ms <= access["total_ms"].as_f64().unwrap(),
        "{access}"
    );
    assert!(access["timestamp"].as_str().unwrap().contains('T'));
    assert!(events.iter().any(|e| e["message"] == "stopped"));
}

#[test]
fn a_list_of_config_errors_is_one_text_log_line() {
    let dir = temp_dir();
    let path = dir.join("proxy.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - address: nowhere\nadmin:\n  address: 127.0.0.1:0\nroutes:\n  - service: missing\nservices: {}\n",
    )
    .unwrap();
    let output = command()
        .args(["run", "--no-watch", "--log-format", "text", "-c"])
        .arg(&path)
        .arg("--state-dir")
        .arg(dir.join("versions"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let events: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(events.len(), 1, "one error event: {stderr}");
    assert!(
        events[0].contains("listeners[0].address") && events[0].contains("routes[0].service"),
        "both errors on the event's line: {stderr}"
    );
}

#[test]
fn config_durations_take_fractions_and_combined_units() {
    let config = VALID
        .replace("admin:\n", "drain_timeout: 1m30s\nadmin:\n")
        .replace(
            "strategy: round_robin\n",
            "strategy: round_robin\n    health_check: {path: /, interval: 1.5s, timeout: 0.25s}\n",
        );
    let (ok, stdout, stderr) = check(&config);
    assert!(ok, "{stdout}{stderr}");
    let (ok, _, stderr) = check(&VALID.replace("admin:\n", "drain_timeout: -1.5s\nadmin:\n"));
    assert!(!ok);
    assert!(
        stderr.contains("drain_timeout: `-1.5s` is negative"),
        "{stderr}"
    );
    let (ok, _, stderr) = check(&VALID.replace("admin:\n", "drain_timeout: 24h0.5s\nadmin:\n"));
    assert!(!ok);
    assert!(
        stderr.contains("drain_timeout: `24h0.5s` is too long; the most allowed is 24h"),
        "{stderr}"
    );
}
