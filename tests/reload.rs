//! Live config: reload by file edit, SIGHUP and API; bad edits refused;
//! listeners added and removed; version history, diff and rollback over the
//! API and the CLI; history across restarts and crashes; and no request
//! dropped while reloads churn.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin::call;
use common::binary::{command, temp_dir, Process};
use common::*;
use http::Method;
use switchyard::server::{start_live, LiveOptions, Running};

/// A config: listeners on `listeners` (port 0 when empty), the admin API on
/// an OS-picked port, and one service `svc` routed from `/`.
fn yaml(listeners: &[SocketAddr], strategy: &str, instances: &[(SocketAddr, &str, u32)]) -> String {
    let mut text = String::from("listeners:\n");
    if listeners.is_empty() {
        text.push_str("  - address: 127.0.0.1:0\n");
    }
    for address in listeners {
        text.push_str(&format!("  - address: \"{address}\"\n"));
    }
    text.push_str(&format!(
        "admin:\n  address: 127.0.0.1:0\ndrain_timeout: 2s\nroutes:\n  - service: svc\nservices:\n  svc:\n    strategy: {strategy}\n    instances:\n"
    ));
    for (address, id, weight) in instances {
        text.push_str(&format!(
            "      - {{id: {id}, address: \"{address}\", weight: {weight}}}\n"
        ));
    }
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

async fn admin(running: &Running, method: Method, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = call(running.admin_address(), method, path).await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status.as_u16(), json)
}

async fn served_by(running: &Running) -> String {
    get(&client(), &format!("{}/", base(running)), &[])
        .await
        .served_by()
}

/// Polls until `check` holds, for up to 10 s; returns how long it took.
async fn eventually<F: std::future::Future<Output = bool>>(
    mut check: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "condition not reached in 10s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    started.elapsed()
}

/// Runs `switchyard config --admin ADMIN ARGS…`, with
/// `SWITCHYARD_ADMIN_TOKEN` set to `env_token` (or unset); whether it
/// succeeded, and what it printed.
fn config_cli(admin: SocketAddr, env_token: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut command = command();
    command.env_remove("SWITCHYARD_ADMIN_TOKEN");
    if let Some(token) = env_token {
        command.env("SWITCHYARD_ADMIN_TOKEN", token);
    }
    let output = command
        .args(["config", "--admin", &admin.to_string()])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edit_changes_instances_and_strategy_live() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (running, path) = live(&yaml(&[], "round_robin", &[(a, "a", 1)]), true).await;
    assert_eq!(served_by(&running).await, "a");

    // Save by rename, as editors do.
    let temporary = path.with_file_name("proxy.yaml.swp");
    std::fs::write(
        &temporary,
        yaml(&[], "weighted_round_robin", &[(b, "b", 1)]),
    )
    .unwrap();
    std::fs::rename(&temporary, &path).unwrap();
    let took = eventually(|| async { served_by(&running).await == "b" }).await;
    eprintln!("file edit served after {took:?}");

    // The version is recorded (and fsynced) just after the swap.
    let started = Instant::now();
    let status = loop {
        let (_, status) = admin(&running, Method::GET, "/admin/status").await;
        if status["config"]["current_version"] == 2 {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "version 2 not recorded in 10s: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(status["services"][0]["strategy"], "weighted_round_robin");
    assert_eq!(status["config"]["last"]["source"], "file");
    assert_eq!(status["config"]["last"]["result"], "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_edits_are_refused_and_the_old_config_keeps_serving() {
    let (a, b) = (echo("a").await, echo("b").await);
    let good = yaml(&[], "round_robin", &[(a, "a", 1)]);
    let (running, path) = live(&good, false).await;

    let broken = [
        (good.replace("services:", "services: ["), "line "),
        (
            good.replace("weight: 1", "wieght: 1"),
            "unknown field `wieght`",
        ),
        (
            yaml(&[], "round_robin", &[(b, "b", 1)]).replace(&b.to_string(), "127.0.0.1"),
            "services.svc.instances[0].address",
        ),
        (
            good.replace("round_robin", "fastest"),
            "services.svc.strategy: unknown strategy",
        ),
        (
            format!("{good}{}", "# padding\n".repeat(5_000_000)),
            "the config is larger than 4 MiB (4194304 bytes), the most accepted",
        ),
        // Valid, but the admin API cannot move while running (with b, so
        // that an apply would show).
        (
            yaml(&[], "round_robin", &[(b, "b", 1)]).replace(
                "admin:\n  address: 127.0.0.1:0",
                "admin:\n  address: 127.0.0.2:0",
            ),
            "admin.address cannot change while running",
        ),
    ];
    for (number, (text, expected)) in broken.iter().enumerate() {
        std::fs::write(&path, text).unwrap();
        let (status, answer) = admin(&running, Method::POST, "/admin/reload").await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["errors"][0].as_str().unwrap().contains(expected),
            "{answer}"
        );
        assert_eq!(
            served_by(&running).await,
            "a",
            "the old config still serves"
        );
        let (_, status) = admin(&running, Method::GET, "/admin/status").await;
        assert_eq!(status["config"]["failed"], number + 1);
        assert_eq!(status["config"]["last"]["result"], "failed");
        assert!(status["config"]["last"]["error"]
            .as_str()
            .unwrap()
            .contains(expected));
        assert_eq!(status["config"]["current_version"], 1);
    }

    // Fixing the file applies it.
    std::fs::write(&path, yaml(&[], "round_robin", &[(b, "b", 1)])).unwrap();
    let (status, answer) = admin(&running, Method::POST, "/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], "applied");
    assert_eq!(answer["version"], 2);
    assert_eq!(served_by(&running).await, "b");
    // Reloading the same text is a no-op, not a new version.
    let (_, answer) = admin(&running, Method::POST, "/admin/reload").await;
    assert_eq!(answer["result"], "unchanged");

    // On a single node a posted config is written to its file and applied
    // like an edit (fleet nodes push it instead).
    let text = yaml(&[], "round_robin", &[(a, "a", 1)]);
    let (status, answer) = common::admin::call_raw(
        running.admin_address(),
        Method::POST,
        "/admin/config",
        None,
        Some(("application/yaml", bytes::Bytes::from(text.clone()))),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"applied\""), "{answer}");
    assert_eq!(served_by(&running).await, "a");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_live_and_a_taken_port_refuses_the_whole_reload() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (first, second) = (free_port(), free_port());
    let (running, path) = live(&yaml(&[first], "round_robin", &[(a, "a", 1)]), false).await;
    let url = |address: SocketAddr| format!("http://{address}/");
    let client = client();
    assert_eq!(get(&client, &url(first), &[]).await.served_by(), "a");

    // Add a listener.
    std::fs::write(&path, yaml(&[first, second], "round_robin", &[(a, "a", 1)])).unwrap();
    let (status, answer) = admin(&running, Method::POST, "/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(get(&client, &url(second), &[]).await.served_by(), "a");

    // Remove the first: it stops accepting.
    std::fs::write(&path, yaml(&[second], "round_robin", &[(a, "a", 1)])).unwrap();
    admin(&running, Method::POST, "/admin/reload").await;
    eventually(|| async { tokio::net::TcpStream::connect(first).await.is_err() }).await;
    assert_eq!(get(&client, &url(second), &[]).await.served_by(), "a");

    // A config whose new listener's port is taken is refused as a whole:
    // the instance change in it does not apply either.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    std::fs::write(&path, yaml(&[second, taken], "round_robin", &[(b, "b", 1)])).unwrap();
    let (status, answer) = admin(&running, Method::POST, "/admin/reload").await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["errors"][0]
            .as_str()
            .unwrap()
            .contains(&taken.to_string()),
        "{answer}"
    );
    assert_eq!(get(&client, &url(second), &[]).await.served_by(), "a");
    let (_, status) = admin(&running, Method::GET, "/admin/status").await;
    assert_eq!(status["listeners"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_listed_diffed_and_rolled_back_over_the_api() {
    let (a, b) = (echo("a").await, echo("b").await);
    let v1 = yaml(&[], "round_robin", &[(a, "a", 1)]);
    let v2 = yaml(&[], "round_robin", &[(b, "b", 1)]);
    let (running, path) = live(&v1, false).await;
    std::fs::write(&path, &v2).unwrap();
    admin(&running, Method::POST, "/admin/reload").await;

    let (_, versions) = admin(&running, Method::GET, "/admin/config/versions").await;
    let list = versions["versions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["source"], "startup");
    assert_eq!(list[1]["source"], "api");
    assert!(list[1]["cause"]
        .as_str()
        .unwrap()
        .starts_with("POST /admin/reload from 127.0.0.1:"));
    assert_eq!(list[1]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(versions["current"], 2);

    let (status, text) = call(
        running.admin_address(),
        Method::GET,
        "/admin/config/versions/1",
    )
    .await
    .unwrap();
    assert_eq!((status.as_u16(), text.as_str()), (200, v1.as_str()));
    let (_, diff) = call(
        running.admin_address(),
        Method::GET,
        "/admin/config/diff?from=1",
    )
    .await
    .unwrap();
    assert!(
        diff.contains("--- version 1") && diff.contains("+++ version 2"),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("-      - {{id: a, address: \"{a}\"")),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("+      - {{id: b, address: \"{b}\"")),
        "{diff}"
    );

    let (status, answer) = admin(&running, Method::POST, "/admin/config/rollback/1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], 3);
    assert_eq!(served_by(&running).await, "a");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        v1,
        "the file is the source of truth"
    );
    let (_, versions) = admin(&running, Method::GET, "/admin/config/versions").await;
    assert_eq!(versions["versions"][2]["source"], "rollback");
    assert_eq!(versions["versions"][2]["rolled_back_from"], 1);

    let (status, _) = admin(&running, Method::GET, "/admin/config/versions/99").await;
    assert_eq!(status, 404);
    let (status, _) = admin(&running, Method::POST, "/admin/config/rollback/99").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_that_no_longer_validates_changes_nothing() {
    let a = echo("a").await;
    let extra = free_port();
    let v1 = yaml(&[free_port(), extra], "round_robin", &[(a, "a", 1)]);
    let (running, path) = live(&v1, false).await;
    let listener = running.listeners()[0].address;
    let v2 = yaml(&[listener], "round_robin", &[(a, "a", 1)]);
    std::fs::write(&path, &v2).unwrap();
    let (status, _) = admin(&running, Method::POST, "/admin/reload").await;
    assert_eq!(status, 200);

    // Someone else takes the port version 1 listened on (once the removed
    // listener has closed it).
    let squatter = Mutex::new(None);
    eventually(|| async {
        *squatter.lock().unwrap() = std::net::TcpListener::bind(extra).ok();
        squatter.lock().unwrap().is_some()
    })
    .await;
    let (status, answer) = admin(&running, Method::POST, "/admin/config/rollback/1").await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        v2,
        "file untouched"
    );
    let (_, versions) = admin(&running, Method::GET, "/admin/config/versions").await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    assert_eq!(versions["current"], 2);
}

#[test]
fn sighup_reloads_and_the_cli_lists_diffs_and_rolls_back() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = runtime.block_on(async { (echo("a").await, echo("b").await) });
    let v1 = yaml(&[], "round_robin", &[(a, "a", 1)]);
    let process = Process::start(&v1, &["--no-watch"]);
    let url = format!("http://{}/", process.listener);
    let served = |url: &str| runtime.block_on(async { get(&client(), url, &[]).await.served_by() });
    assert_eq!(served(&url), "a");

    std::fs::write(
        &process.config_path,
        yaml(&[], "round_robin", &[(b, "b", 1)]),
    )
    .unwrap();
    assert_eq!(
        served(&url),
        "a",
        "--no-watch: an edit alone changes nothing"
    );
    process.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&url) != "b" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(25));
    }

    let cli = |args: &[&str]| config_cli(process.admin, None, args);
    // The version is recorded just after the new config starts serving.
    let versions = loop {
        let (ok, versions) = cli(&["versions"]);
        assert!(ok, "{versions}");
        if versions.contains("  *       2") || Instant::now() > deadline {
            break versions;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(
        versions.contains("startup") && versions.contains("signal"),
        "{versions}"
    );
    assert!(
        versions.contains("  *       2"),
        "current version marked:\n{versions}"
    );
    let (ok, diff) = cli(&["diff", "1", "2"]);
    assert!(
        ok && diff.contains(&format!("+      - {{id: b, address: \"{b}\"")),
        "{diff}"
    );
    assert!(!diff.contains('\x1b'), "no colour when not a terminal");
    let (ok, shown) = cli(&["show", "1"]);
    assert!(ok && shown == v1, "{shown}");
    let (ok, rolled) = cli(&["rollback", "1"]);
    assert!(
        ok && rolled.contains("now serving as version 3"),
        "{rolled}"
    );
    assert_eq!(served(&url), "a");
    let (ok, missing) = cli(&["show", "42"]);
    assert!(
        !ok && missing.contains("config version 42 is not in the history"),
        "{missing}"
    );
    // The admin address can also come from the config file.
    let output = command()
        .args(["config", "-c", "/nonexistent.yaml", "versions"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("pass --admin"));
}

#[test]
fn the_cli_sends_the_admin_token_from_the_flag_the_environment_or_the_config_file() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let a = runtime.block_on(echo("a"));
    let text = yaml(&[], "round_robin", &[(a, "a", 1)]).replace(
        "admin:\n  address: 127.0.0.1:0\n",
        "admin:\n  address: 127.0.0.1:0\n  token: s3cret\n  read_requires_token: true\n",
    );
    let process = Process::start(&text, &["--no-watch"]);
    let cli = |env_token: Option<&str>, config: &Path, args: &[&str]| {
        let config = ["-c", config.to_str().unwrap()];
        config_cli(process.admin, env_token, &[&config[..], args].concat())
    };
    let nowhere = Path::new("/nonexistent.yaml");
    let (ok, refused) = cli(None, nowhere, &["versions"]);
    assert!(
        !ok && refused.contains("needs `Authorization: Bearer"),
        "{refused}"
    );
    let (ok, versions) = cli(Some("s3cret"), nowhere, &["versions"]);
    assert!(ok && versions.contains("startup"), "{versions}");
    let (ok, shown) = cli(None, &process.config_path, &["show", "1"]);
    assert!(ok && shown == text, "token from the config file: {shown}");
    let (ok, rolled) = cli(None, &process.config_path, &["rollback", "1"]);
    assert!(ok && rolled.contains("already serving"), "{rolled}");
    let (ok, wrong) = cli(Some("wrong"), &process.config_path, &["diff", "1"]);
    assert!(
        !ok && wrong.contains("the admin token is wrong"),
        "the flag or environment wins over the file: {wrong}"
    );
}

#[test]
fn history_survives_restarts_and_retention_drops_the_oldest() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(echo("a"));
    let text = |weight: u32| yaml(&[], "round_robin", &[(upstream, "a", weight)]);
    let versions = |process: &Process| -> serde_json::Value {
        runtime.block_on(async {
            let (_, body) = call(process.admin, Method::GET, "/admin/config/versions")
                .await
                .unwrap();
            serde_json::from_str(&body).unwrap()
        })
    };
    let reload = |process: &Process| {
        runtime.block_on(async {
            call(process.admin, Method::POST, "/admin/reload")
                .await
                .unwrap()
        });
    };
    let mut process = Process::start(&text(1), &["--no-watch", "--keep-versions", "3"]);
    for weight in 2..=5 {
        std::fs::write(&process.config_path, text(weight)).unwrap();
        reload(&process);
    }
    let before = versions(&process);
    let numbers: Vec<u64> = before["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 4, 5], "retention keeps the newest 3");

    process.signal("TERM");
    process.wait_exit(Duration::from_secs(10)).unwrap();
    let dir = process.dir.clone();
    drop(process);
    let restarted = Process::start_in(&dir, &["--no-watch", "--keep-versions", "3"]);
    let after = versions(&restarted);
    assert_eq!(
        after["versions"], before["versions"],
        "same history, no new version for the same text"
    );
    assert_eq!(after["current"], 5);
}

#[test]
fn a_crash_during_reloads_leaves_the_history_intact() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(echo("a"));
    let text = |weight: u32| yaml(&[], "round_robin", &[(upstream, "a", weight)]);
    let mut process = Process::start(&text(1), &["--no-watch"]);
    let admin_address = process.admin;
    let path = process.config_path.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let mut weight = 2;
            while !stop.load(Ordering::SeqCst) && weight < 1000 {
                std::fs::write(&path, yaml(&[], "round_robin", &[(upstream, "a", weight)]))
                    .unwrap();
                // The proxy may die mid-call; that is the point.
                if let Ok((status, _)) =
                    runtime.block_on(call(admin_address, Method::POST, "/admin/reload"))
                {
                    if status == 200 {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
                weight += 1;
            }
        })
    };
    // Killed while reloads keep coming, once a few have been applied (on a
    // busy machine that takes longer than on a quiet one).
    let started = std::time::Instant::now();
    while answered.load(Ordering::SeqCst) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "fewer than 3 reloads applied in 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    process.signal("KILL");
    process.wait_exit(Duration::from_secs(10)).unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    let dir = process.dir.clone();
    drop(process);
    let file_text = std::fs::read_to_string(dir.join("proxy.yaml")).unwrap();
    let restarted = Process::start_in(&dir, &["--no-watch"]);
    let versions: serde_json::Value = runtime.block_on(async {
        let (_, body) = call(restarted.admin, Method::GET, "/admin/config/versions")
            .await
            .unwrap();
        serde_json::from_str(&body).unwrap()
    });
    assert_eq!(
        versions["unreadable"].as_array().unwrap().len(),
        0,
        "{versions}"
    );
    let list = versions["versions"].as_array().unwrap();
    assert!(
        list.len() >= 3,
        "several reloads happened before the kill: {}",
        list.len()
    );
    let numbers: Vec<u64> = list
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    // It starts with the file's config, and that is the current version.
    let current = list.last().unwrap();
    assert_eq!(versions["current"], current["version"]);
    let (_, current_text) = runtime
        .block_on(call(
            restarted.admin,
            Method::GET,
            &format!("/admin/config/versions/{}", current["version"]),
        ))
        .unwrap();
    assert_eq!(current_text, file_text);
    assert!(no_temporary_files(&dir.join("proxy.yaml.versions")));
}

fn no_temporary_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
}

/// The correctness test of live reload: 32 keep-alive clients send requests
/// for as long as 50 reloads take (bounded at 30 s), alternating two configs
/// that change instances and weights. Every request must succeed, and a
/// request that ran entirely between two reloads must be served by an
/// instance of the config applied by the first of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_reloads_churn() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let configs = [
        (
            yaml(&[], "weighted_round_robin", &[(a, "a", 3), (b, "b", 1)]),
            ["a", "b"],
        ),
        (
            yaml(&[], "least_connections", &[(b, "b", 2), (c, "c", 1)]),
            ["b", "c"],
        ),
    ];
    let (running, path) = live(&configs[0].0, false).await;
    let url = format!("{}/", base(&running));
    let started = Instant::now();
    // (reload requested at, reload finished at, config index), in order.
    let applied: Arc<Mutex<Vec<(Duration, Duration, usize)>>> =
        Arc::new(Mutex::new(vec![(Duration::ZERO, Duration::ZERO, 0)]));
    let done = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for _ in 0..32 {
        let (url, done) = (url.clone(), Arc::clone(&done));
        clients.push(tokio::spawn(async move {
            let client = client();
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                let sent = started.elapsed();
                let got = get(&client, &url, &[]).await;
                seen.push((sent, started.elapsed(), got.status, got.served_by()));
            }
            seen
        }));
    }
    for round in 1..=50 {
        let index = round % 2;
        let requested = started.elapsed();
        std::fs::write(&path, &configs[index].0).unwrap();
        let (status, answer) = admin(&running, Method::POST, "/admin/reload").await;
        assert_eq!(status, 200, "{answer}");
        applied
            .lock()
            .unwrap()
            .push((requested, started.elapsed(), index));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::SeqCst);

    let applied = applied.lock().unwrap().clone();
    let mut total = 0;
    let mut checked = 0;
    for client in clients {
        for (sent, received, status, instance) in client.await.unwrap() {
            total += 1;
            assert_eq!(status, 200, "a request failed during reloads");
            assert!(["a", "b", "c"].contains(&instance.as_str()), "{instance}");
            // A request sent after reload i finished and answered before
            // reload i+1 was requested ran entirely under config i.
            let position = applied.partition_point(|(_, finished, _)| *finished <= sent);
            let Some(&(_, _, index)) = applied.get(position.wrapping_sub(1)) else {
                continue;
            };
            if applied
                .get(position)
                .is_none_or(|(requested, _, _)| received <= *requested)
            {
                checked += 1;
                assert!(
                    configs[index].1.contains(&instance.as_str()),
                    "served by {instance} while config {index} ({:?}) was in force",
                    configs[index].1
                );
            }
        }
    }
    eprintln!("{total} requests during 50 reloads, none failed; {checked} checked against the config in force");
    assert!(total > 500, "the load ran: {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_versions_and_diffs_do_not_show_secrets_to_readers() {
    // Reads need no token here, so a reader must not learn it (nor the
    // sticky-cookie secret) from the config text.
    let upstream = echo("a").await;
    let text = |token: &str| {
        format!(
            "listeners: [{{address: 127.0.0.1:0}}]\nadmin: {{address: 127.0.0.1:0, token: {token}}}\nroutes: [{{service: s}}]\nservices:\n  s:\n    sticky: {{cookie: sy, secret: cookie-key-4711}}\n    instances: [{{address: \"{upstream}\"}}]\n"
        )
    };
    let (running, path) = live(&text("first-token-0815"), false).await;
    std::fs::write(&path, text("second-token-0816")).unwrap();
    let (status, answer) = common::admin::call_with(
        running.admin_address(),
        Method::POST,
        "/admin/reload",
        Some("first-token-0815"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    for path in [
        "/admin/config/versions/1",
        "/admin/config/versions/2",
        "/admin/config/diff?from=1&to=2",
    ] {
        let (status, shown) = call(running.admin_address(), Method::GET, path)
            .await
            .unwrap();
        assert_eq!(status, 200, "{path}: {shown}");
        for secret in ["first-token-0815", "second-token-0816", "cookie-key-4711"] {
            assert!(!shown.contains(secret), "{path} shows {secret}: {shown}");
        }
        if !path.contains("diff") {
            assert!(shown.contains("token: <redacted>"), "{path}: {shown}");
            assert!(shown.contains("cookie: sy"), "the rest stays: {shown}");
        }
    }
    // The holder of the token sees the text as stored (e.g. for a backup).
    let (status, stored) = common::admin::call_with(
        running.admin_address(),
        Method::GET,
        "/admin/config/versions/2",
        Some("second-token-0816"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(stored, text("second-token-0816"));
}
