//! Guarded config changes: a change is applied, its traffic watched for
//! the guard window, and the previous version restored when a guard trips.
//! Real proxy, real upstreams, traffic sent by the test; the CLI is the
//! real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::{call, call_raw};
use common::binary::{config_cli, temp_dir};
use common::traffic::Traffic;
use common::*;
use http::{Method, Request, Response};
use http_body_util::Full;
use switchyard::server::{start_live, LiveOptions, Running};

/// A config routing `/` to service `web` with `instances` (address, id,
/// weight), plus `extra` top-level YAML.
fn yaml(instances: &[(SocketAddr, &str, u32)], extra: &str) -> String {
    let mut text = String::from(
        "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\naccess_log:\n  enabled: false\nroutes:\n  - service: web\nservices:\n  web:\n    instances:\n",
    );
    for (address, id, weight) in instances {
        text.push_str(&format!(
            "      - {{id: {id}, address: \"{address}\", weight: {weight}}}\n"
        ));
    }
    text.push_str("    strategy: weighted_round_robin\n");
    text.push_str(extra);
    text
}

async fn live(text: &str, watch: bool) -> (Running, PathBuf) {
    let dir = temp_dir();
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, text).unwrap();
    let mut options = LiveOptions::new(&path);
    options.watch = watch;
    (start_live(options).await.unwrap(), path)
}

/// An upstream answering every request with `status` after `delay`.
async fn answering(status: u16, delay: Duration) -> SocketAddr {
    upstream(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap()
    })
    .await
}

async fn admin_json(running: &Running, method: Method, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = call(running.admin_address(), method, path).await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status.as_u16(), json)
}

async fn versions(running: &Running) -> Vec<serde_json::Value> {
    let (status, json) = admin_json(running, Method::GET, "/admin/config/versions").await;
    assert_eq!(status, 200, "{json}");
    json["versions"].as_array().unwrap().clone()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Waits for the guard of the current report to leave `running` (for
/// `limit` at most) and returns its report.
async fn verdict(running: &Running, limit: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (_, json) = admin_json(running, Method::GET, "/admin/config/guard").await;
        let report = json["current"].clone();
        if report["state"]
            .as_str()
            .is_some_and(|s| s != "running" && s != "rolling_back")
        {
            return report;
        }
        assert!(
            started.elapsed() < limit,
            "no guard verdict within {limit:?}: {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_an_instance_answering_500_is_rolled_back_within_the_window() {
    let good = echo("good").await;
    let bad = answering(500, Duration::ZERO).await;
    let old = yaml(&[(good, "good", 1)], "");
    let (running, path) = live(&old, false).await;
    let traffic = Traffic::start(format!("{}/", base(&running)), 4);
    traffic.wait_for(100).await;

    let new = write(
        path.parent().unwrap(),
        "new.yaml",
        &yaml(&[(good, "good", 1), (bad, "bad", 1)], ""),
    );
    let started = Instant::now();
    let (code, out) = config_cli(
        running.admin_address(),
        &[
            "apply",
            &new,
            "--guard",
            "error_rate < 1%",
            "--for",
            "20s",
            "--min-requests",
            "50",
        ],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("verdict: guard tripped: ") && out.contains("error_rate"),
        "{out}"
    );
    assert!(out.contains("restored as version 3"), "{out}");
    // Tripped as soon as enough traffic showed it, long before the window's end.
    assert!(took < Duration::from_secs(15), "took {took:?}\n{out}");

    // The old config serves again: only the good instance answers.
    traffic.wait_for(50).await;
    let statuses = traffic.stop().await;
    let after = Traffic::start(format!("{}/", base(&running)), 2);
    after.wait_for(50).await;
    let statuses_after = after.stop().await;
    assert!(statuses.contains(&500), "the bad instance never answered");
    assert!(
        statuses_after.iter().all(|s| *s == 200),
        "{statuses_after:?}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), old);

    let versions = versions(&running).await;
    assert_eq!(versions.len(), 3, "{versions:?}");
    assert_eq!(versions[1]["source"], "api");
    assert_eq!(versions[1]["guard"]["state"], "rolled_back");
    assert_eq!(versions[1]["guard"]["rollback_version"], 3);
    assert_eq!(versions[2]["source"], "rollback");
    assert_eq!(versions[2]["rolled_back_from"], 1);
    let cause = versions[2]["cause"].as_str().unwrap();
    assert!(
        cause.starts_with("guard tripped: ")
            && cause.contains(" error_rate ")
            && cause.contains("% > 1% over "),
        "{cause}"
    );

    let (_, status) = admin_json(&running, Method::GET, "/admin/status").await;
    assert_eq!(
        status["config"]["guard"]["state"], "rolled_back",
        "{status}"
    );
    assert_eq!(status["config"]["current_version"], 3);
    let (_, metrics) = call(running.admin_address(), Method::GET, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_config_guard_verdicts_total{result=\"rolled_back\"} 1"),
        "{metrics}"
    );
    let (code, listing) = config_cli(running.admin_address(), &["versions"]).await;
    assert_eq!(code, 0, "{listing}");
    assert!(listing.contains("rolled back"), "{listing}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_trips_a_p99_guard_given_over_the_api() {
    let good = echo("good").await;
    let slow = answering(200, Duration::from_millis(600)).await;
    let old = yaml(&[(good, "good", 1)], "");
    let (running, path) = live(&old, false).await;
    let traffic = Traffic::start(format!("{}/", base(&running)), 6);
    traffic.wait_for(100).await;

    let new = yaml(&[(good, "good", 1), (slow, "slow", 1)], "");
    let (status, body) = call_raw(
        running.admin_address(),
        Method::POST,
        "/admin/config?guard=web%3A+p99+%3C+300ms&for=20s&min_requests=30",
        None,
        Some(("application/yaml", Bytes::from(new))),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let applied: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(applied["guard"]["state"], "running", "{applied}");
    assert_eq!(applied["guard"]["checks"][0], "web: p99 < 300ms");

    let report = verdict(&running, Duration::from_secs(25)).await;
    traffic.stop().await;
    assert_eq!(report["state"], "rolled_back", "{report}");
    let cause = report["verdict"].as_str().unwrap();
    assert!(
        cause.starts_with("guard tripped: service web p99 ") && cause.contains("> 300ms over"),
        "{cause}"
    );
    assert!(report["elapsed_seconds"].as_u64().unwrap() < 20, "{report}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), old);
    let versions = versions(&running).await;
    assert_eq!(versions.last().unwrap()["source"], "rollback");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harmless_change_is_kept_after_the_window() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (running, path) = live(&yaml(&[(a, "a", 1)], ""), false).await;
    let traffic = Traffic::start(format!("{}/", base(&running)), 4);
    // A baseline: at least the window's length of traffic before the change.
    tokio::time::sleep(Duration::from_secs(4)).await;
    traffic.wait_for(100).await;

    let new = write(
        path.parent().unwrap(),
        "new.yaml",
        &yaml(&[(a, "a", 1), (b, "b", 1)], ""),
    );
    let started = Instant::now();
    let (code, out) = config_cli(
        running.admin_address(),
        &[
            "apply",
            &new,
            "--guard",
            "error_rate < baseline + 1%",
            "--guard",
            "p99 < 2s",
            "--for",
            "3s",
            "--min-requests",
            "30",
        ],
    )
    .await;
    let statuses = traffic.stop().await;
    assert_eq!(code, 0, "{out}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(
        out.contains("verdict: kept: every guard held for 3s"),
        "{out}"
    );
    assert!(!out.contains("not enough traffic"), "{out}");
    // Progress was printed while the window ran.
    assert!(out.contains("s/3s  all: "), "{out}");
    assert!(statuses.iter().all(|s| *s == 200));
    let versions = versions(&running).await;
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["guard"]["state"], "kept");
    let (code, listing) = config_cli(running.admin_address(), &["versions"]).await;
    assert_eq!(code, 0);
    assert!(listing.contains("kept"), "{listing}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_keeps_the_change_without_a_verdict() {
    let (a, bad) = (echo("a").await, answering(500, Duration::ZERO).await);
    let (running, path) = live(&yaml(&[(a, "a", 1)], ""), false).await;
    let new = write(
        path.parent().unwrap(),
        "new.yaml",
        &yaml(&[(bad, "bad", 1)], ""),
    );
    // A handful of requests, all failing: fewer than min_requests (100).
    let client = client();
    let sender = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..10 {
            let request = Request::get(format!("{}/", base(&running)))
                .body(Full::default())
                .unwrap();
            assert_eq!(try_send(&client, request).await.unwrap().0, 500);
        }
    };
    let args = ["apply", &new, "--guard", "error_rate < 1%", "--for", "2s"];
    let ((code, out), ()) = tokio::join!(config_cli(running.admin_address(), &args), sender);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: kept: not enough traffic"), "{out}");
    let versions = versions(&running).await;
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["guard"]["state"], "not_enough_traffic");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_change_during_the_window_is_refused_unless_forced() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (running, path) = live(&yaml(&[(a, "a", 1)], ""), false).await;
    let dir = path.parent().unwrap().to_path_buf();
    let second = write(&dir, "second.yaml", &yaml(&[(a, "a", 1), (b, "b", 1)], ""));
    let third = write(&dir, "third.yaml", &yaml(&[(b, "b", 1)], ""));

    let (status, body) = call_raw(
        running.admin_address(),
        Method::POST,
        "/admin/config?guard=error_rate+%3C+1%25&for=60s",
        None,
        Some((
            "application/yaml",
            Bytes::from(std::fs::read(&second).unwrap()),
        )),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    let (code, out) = config_cli(running.admin_address(), &["apply", &third]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("version 2 is being watched by a config guard") && out.contains("--force"),
        "{out}"
    );
    // A rollback is a change too.
    let (status, json) = admin_json(&running, Method::POST, "/admin/config/rollback/1").await;
    assert_eq!(status, 409, "{json}");
    assert_eq!(versions(&running).await.len(), 2);

    let (code, out) = config_cli(running.admin_address(), &["apply", &third, "--force"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("as version 3"), "{out}");
    let versions = versions(&running).await;
    assert_eq!(versions[1]["guard"]["state"], "ended_by_force");
    assert_eq!(versions.len(), 3);
    assert_eq!(
        get(&client(), &format!("{}/", base(&running)), &[])
            .await
            .served_by(),
        "b"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_guard_is_refused_naming_it() {
    let a = echo("a").await;
    let (running, path) = live(&yaml(&[(a, "a", 1)], ""), false).await;
    let new = write(
        path.parent().unwrap(),
        "new.yaml",
        &yaml(&[(a, "a", 2)], ""),
    );
    let (code, out) = config_cli(
        running.admin_address(),
        &[
            "apply",
            &new,
            "--guard",
            "error_rate > 1%",
            "--guard",
            "latency < 1s",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("guard `error_rate > 1%`: "), "{out}");
    assert!(
        out.contains("guard `latency < 1s`: unknown metric `latency`"),
        "{out}"
    );
    let (code, out) = config_cli(
        running.admin_address(),
        &["apply", &new, "--guard", "api: error_rate < 1%"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("service `api`"), "{out}");
    // Nothing was applied.
    assert_eq!(versions(&running).await.len(), 1);

    // In proxy.yaml, every problem with its field path.
    let errors = switchyard::config::parse(&yaml(
        &[(a, "a", 1)],
        "guard:\n  checks: [\"p99 < fast\", \"nope: p99 < 1s\"]\n  for: 0s\n  min_requests: 0\n",
    ))
    .unwrap_err()
    .to_string();
    for expected in [
        "guard.checks[0]: guard `p99 < fast`",
        "guard.checks[1]: guard `nope: p99 < 1s`: no service named `nope`",
        "guard.for: the guard window must be at least 1s",
        "guard.min_requests: must be at least 1",
    ] {
        assert!(errors.contains(expected), "{expected}\n{errors}");
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edit_is_guarded_by_the_default_in_proxy_yaml() {
    let good = echo("good").await;
    let bad = answering(503, Duration::ZERO).await;
    let guard = "guard:\n  checks: [\"error_rate < 5%\"]\n  for: 20s\n  min_requests: 50\n";
    let old = yaml(&[(good, "good", 1)], guard);
    let (running, path) = live(&old, true).await;
    let traffic = Traffic::start(format!("{}/", base(&running)), 4);
    traffic.wait_for(50).await;

    let temporary = path.with_file_name("proxy.yaml.swp");
    std::fs::write(&temporary, yaml(&[(bad, "bad", 1)], guard)).unwrap();
    std::fs::rename(&temporary, &path).unwrap();

    let report = verdict(&running, Duration::from_secs(30)).await;
    traffic.stop().await;
    assert_eq!(report["state"], "rolled_back", "{report}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), old);
    let versions = versions(&running).await;
    let sources: Vec<&str> = versions
        .iter()
        .map(|v| v["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["startup", "file", "rollback"]);
    // The rewritten file is what serves: no further version appears.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(self::versions(&running).await.len(), 3);
    assert_eq!(
        get(&client(), &format!("{}/", base(&running)), &[])
            .await
            .status,
        200
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_takes_guard_parameters() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (running, path) = live(&yaml(&[(a, "a", 1)], ""), false).await;
    let (status, json) = admin_json(
        &running,
        Method::POST,
        "/admin/reload?guard=p99+%3C+fast&min_requests=0",
    )
    .await;
    assert_eq!(status, 400, "{json}");
    let errors = json["errors"].to_string();
    assert!(errors.contains("guard `p99 < fast`"), "{errors}");
    assert!(errors.contains("min_requests"), "{errors}");

    std::fs::write(&path, yaml(&[(b, "b", 1)], "")).unwrap();
    let (status, json) = admin_json(
        &running,
        Method::POST,
        "/admin/reload?guard=error_rate+%3C+1%25&for=1s",
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["guard"]["checks"][0], "error_rate < 1%", "{json}");
    let report = verdict(&running, Duration::from_secs(10)).await;
    assert_eq!(report["state"], "not_enough_traffic", "{report}");
    assert_eq!(report["version"], 2);
    running.shutdown().await;
}
