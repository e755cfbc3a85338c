//! Faults under load, with real processes: the proxy binary out of file
//! descriptors keeps its instances healthy and sheds idle connections, and
//! an upstream process frozen with SIGSTOP costs at most the configured
//! timeouts until health checks take it out, then nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::call;
use common::binary::Process;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use tokio::net::TcpStream;

/// Generous: every "it eventually happens" wait is bounded by this.
const PATIENCE: Duration = Duration::from_secs(30);

/// The `services[0]` entry of the admin status.
async fn service_status(admin: SocketAddr) -> Option<serde_json::Value> {
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        call(admin, Method::GET, "/admin/status"),
    )
    .await
    .ok()?
    .ok()?;
    let json: serde_json::Value = serde_json::from_str(&status.1).ok()?;
    Some(json["services"][0].clone())
}

async fn healthy_instances(admin: SocketAddr) -> Option<u64> {
    service_status(admin).await?["healthy_instances"].as_u64()
}

/// The health of instance `id` as the admin status shows it.
async fn health_of(admin: SocketAddr, id: &str) -> Option<String> {
    let service = service_status(admin).await?;
    service["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .and_then(|i| i["health"].as_str().map(str::to_string))
}

/// Waits (bounded) until `want` instances are healthy.
async fn until_healthy(admin: SocketAddr, want: u64) {
    let deadline = Instant::now() + PATIENCE;
    while healthy_instances(admin).await != Some(want) {
        assert!(Instant::now() < deadline, "not {want} healthy instances");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// JSON log events of the proxy with this message.
fn events(process: &Process, message: &str) -> Vec<serde_json::Value> {
    process
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_instances_stay_healthy_and_idle_connections_make_room() {
    let (a, b) = (echo("a").await, echo("b").await);
    let config = format!(
        "workers: 1\nlisteners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nroutes: [{{service: s}}]\nservices:\n  s:\n    health_check: {{path: /, interval: 1s, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2}}\n    instances: [{{id: a, address: \"{a}\"}}, {{id: b, address: \"{b}\"}}]\n"
    );
    let process = Process::start(&config, &["--no-watch"]);
    until_healthy(process.admin, 2).await;
    let limited = Command::new("prlimit")
        .arg(format!("--pid={}", process.child.id()))
        .arg("--nofile=128:128")
        .status()
        .unwrap();
    assert!(limited.success(), "prlimit failed");
    let limited_at = Instant::now();

    // Far more idle connections than descriptors: the kernel queues the
    // rest, so the proxy keeps hitting its limit.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(process.listener).await.unwrap());
    }
    let deadline = Instant::now() + PATIENCE;
    while events(&process, "accept failed").is_empty() {
        assert!(Instant::now() < deadline, "the proxy never ran out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Idle connections are closed to make room: a request gets through.
    let client = client();
    let url = format!("http://{}/", process.listener);
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no request got through");
        let request = client.request(Request::get(url.as_str()).body(Full::default()).unwrap());
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(10), request).await {
            assert_eq!(response.status(), 200);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Probes that could not run did not count against the instances.
    let unhealthy: Vec<_> = events(&process, "instance health changed")
        .into_iter()
        .filter(|event| event["to"] == "unhealthy")
        .collect();
    assert!(unhealthy.is_empty(), "{unhealthy:?}");
    until_healthy(process.admin, 2).await;
    // One line per listener and worker (two here) per 10 s, not one per
    // failed accept (20 a second).
    let logged = events(&process, "accept failed").len() as u64;
    let allowed = 2 * (limited_at.elapsed().as_secs() / 10 + 1);
    assert!(logged <= allowed, "accept failed logged {logged} times");
    drop(idle);
}

/// A python3 HTTP/1.1 keep-alive upstream in its own process, named `name`;
/// answers GET and POST with its name and the body length. With a second
/// argument it waits that many seconds before answering and closes every
/// connection after its answer (so each request is on a fresh connection).
struct PythonUpstream {
    child: Child,
    address: SocketAddr,
}

const PYTHON_UPSTREAM: &str = r#"
import http.server, socketserver, sys, time
name = sys.argv[1]
delay = float(sys.argv[2]) if len(sys.argv) > 2 else None
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        out = ("%s %d\n" % (name, len(body))).encode()
        if delay is not None:
            time.sleep(delay)
            self.close_connection = True
        self.send_response(200)
        if delay is not None:
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("x-served-by", name)
        self.end_headers()
        self.wfile.write(out)
    do_GET = answer
    do_POST = answer
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 1024
server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl PythonUpstream {
    fn start_with(name: &str, args: &[&str]) -> PythonUpstream {
        let mut child = Command::new("python3")
            .args(["-c", PYTHON_UPSTREAM, name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the upstream printed its port");
        PythonUpstream {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn signal(&self, signal: &str) {
        common::binary::send_signal(&self.child, signal);
    }
}

/// Python upstreams `a`, `b` and `c` (started with `args`), and the
/// `instances:` list that names them.
fn three_python_upstreams(args: &[&str]) -> (Vec<PythonUpstream>, String) {
    let upstreams: Vec<PythonUpstream> = ["a", "b", "c"]
        .iter()
        .map(|name| PythonUpstream::start_with(name, args))
        .collect();
    let instances: Vec<String> = upstreams
        .iter()
        .zip(["a", "b", "c"])
        .map(|(u, id)| format!("{{id: {id}, address: \"{}\"}}", u.address))
        .collect();
    (upstreams, format!("[{}]", instances.join(", ")))
}

impl Drop for PythonUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request's fate.
struct Outcome {
    started: Instant,
    took: Duration,
    get: bool,
    /// The response's status; 0 for none.
    status: u16,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.status == 200
    }
}

/// 32 keep-alive clients sending GETs and 1 KiB POSTs in turn to `url`,
/// each request with a 10 s limit, until stopped (60 s at most).
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop_at = Instant::now() + Duration::from_secs(60);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut clients = Vec::new();
        for n in 0..32u64 {
            let (url, outcomes, stopped) =
                (url.to_string(), Arc::clone(&outcomes), stopped.clone());
            clients.push(tokio::spawn(async move {
                let client = client();
                let mut i = 0u64;
                while !*stopped.borrow() && Instant::now() < stop_at {
                    i += 1;
                    let get = (n + i).is_multiple_of(2);
                    let request = if get {
                        Request::get(url.as_str()).body(Full::default())
                    } else {
                        Request::post(url.as_str()).body(Full::new(Bytes::from(vec![b'p'; 1024])))
                    }
                    .unwrap();
                    let started = Instant::now();
                    let answer =
                        tokio::time::timeout(Duration::from_secs(10), client.request(request))
                            .await;
                    let status = match answer {
                        Ok(Ok(response)) => {
                            let status = response.status().as_u16();
                            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                            status
                        }
                        _ => 0,
                    };
                    outcomes.lock().unwrap().push(Outcome {
                        started,
                        took: started.elapsed(),
                        get,
                        status,
                    });
                }
            }));
        }
        Load {
            stop,
            clients,
            outcomes,
        }
    }

    /// Stops the clients and returns what their requests met.
    async fn stop(self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        for client in self.clients {
            tokio::time::timeout(PATIENCE, client)
                .await
                .unwrap()
                .unwrap();
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_upstream_costs_at_most_the_timeouts_until_health_checks_take_it_out() {
    let (upstreams, instances) = three_python_upstreams(&[]);
    let proxy = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    connect_timeout: 500ms\n    request_timeout: 1s\n    health_check: {{path: /, interval: 1s, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2}}\n    instances: {instances}\n"
    ))
    .await;
    until_healthy(proxy.admin_address(), 3).await;

    let load = Load::start(&format!("{}/", base(&proxy)));
    // Load flows through all three, then one freezes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    upstreams[0].signal("STOP");
    let deadline = Instant::now() + PATIENCE;
    while health_of(proxy.admin_address(), "a").await.as_deref() != Some("unhealthy") {
        assert!(
            Instant::now() < deadline,
            "the frozen instance stayed healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Seen down (a snapshot rebuild is a moment behind the verdict).
    let down = Instant::now() + Duration::from_millis(500);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;
    upstreams[0].signal("CONT");

    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.started > down).collect();
    assert!(after.len() > 32, "only {} requests after", after.len());
    let failed_after = after.iter().filter(|o| !o.ok()).count();
    assert_eq!(failed_after, 0, "{failed_after} of {} failed", after.len());
    // Before that, a request that met the frozen one waited at most
    // connect_timeout per try and request_timeout (0.5 s × 3 + 1 s here),
    // plus slack for a loaded machine.
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    assert!(
        slowest < Duration::from_secs(5),
        "a request took {slowest:?}"
    );
    // (And the freeze was felt: some request met the frozen instance.)
    assert!(
        outcomes
            .iter()
            .any(|o| !o.ok() || o.took >= Duration::from_millis(900)),
        "no request ever reached the frozen instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_under_load_loses_no_get_and_replays_no_post() {
    // Slow answers on fresh connections: when one dies, about a third of
    // the 32 clients have a request written to it and unanswered.
    let (upstreams, instances) = three_python_upstreams(&["0.02"]);
    // When one of three dies, about a third of the requests in flight need
    // a retry at once: more than the default budget (20% of active
    // requests) allows, so the budget is raised for this test; the budget
    // itself is tested in tests/retries.rs.
    let proxy = proxy(&format!(
        "routes: [{{service: s}}]\nservices:\n  s:\n    connect_timeout: 500ms\n    request_timeout: 5s\n    retry: {{budget_percent: 50}}\n    health_check: {{path: /, interval: 1s, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2}}\n    instances: {instances}\n"
    ))
    .await;
    until_healthy(proxy.admin_address(), 3).await;

    let load = Load::start(&format!("{}/", base(&proxy)));
    // Load flows through all three, then one dies mid-request.
    tokio::time::sleep(Duration::from_secs(1)).await;
    upstreams[0].signal("KILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;

    let count = |get: bool, ok: bool| {
        outcomes
            .iter()
            .filter(|o| o.get == get && o.ok() == ok)
            .count()
    };
    let (gets_ok, gets_failed) = (count(true, true), count(true, false));
    let (posts_ok, posts_failed) = (count(false, true), count(false, false));
    println!("GET: {gets_ok} ok, {gets_failed} failed; POST: {posts_ok} ok, {posts_failed} failed");
    assert!(gets_ok > 100 && posts_ok > 100, "too little load");
    assert_eq!(gets_failed, 0, "failed GETs");
    // A POST already written to the dying instance is answered 502, never
    // sent again (it may have been processed).
    let post_statuses: Vec<u16> = outcomes
        .iter()
        .filter(|o| !o.get && !o.ok())
        .map(|o| o.status)
        .collect();
    assert!(post_statuses.iter().all(|s| *s == 502), "{post_statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_hide_internal_addresses_and_the_log_keeps_them() {
    let dead = dead_address().await;
    let routes = format!(
        "routes:\n  - service: s\nservices:\n  s: {{retry: {{max_attempts: 1}}, instances: [{{address: \"{dead}\"}}]}}\n"
    );
    let config =
        format!("listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n{routes}");
    let process = tokio::task::spawn_blocking(move || Process::start(&config, &[]))
        .await
        .unwrap();
    let got = get(&client(), &format!("http://{}/", process.listener), &[]).await;
    assert_eq!(got.status, 502, "{}", got.body);
    let id = got.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(
        got.body.contains("could not connect to service `s`"),
        "says what happened: {}",
        got.body
    );
    assert!(
        got.body.contains(&format!("request id {id}")),
        "{}",
        got.body
    );
    for internal in [
        dead.to_string(),
        dead.port().to_string(),
        "os error".into(),
        "refused".into(),
    ] {
        assert!(
            !got.body.contains(&internal),
            "`{internal}` leaked: {}",
            got.body
        );
    }
    // The detail is in the WARN line with the same request id.
    let deadline = Instant::now() + Duration::from_secs(20);
    let logged = loop {
        let found = process
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["message"] == "request failed" && e["request_id"] == id.as_str());
        if let Some(event) = found {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no `request failed` log line for {id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(logged["level"], "WARN", "{logged}");
    assert!(
        logged["detail"]
            .as_str()
            .unwrap()
            .contains(&dead.to_string()),
        "{logged}"
    );

    // `error_detail: full` (development) puts the detail in the body too.
    let full = proxy(&format!("error_detail: full\n{routes}")).await;
    let got = get(&client(), &format!("{}/", base(&full)), &[]).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert!(got.body.contains(&dead.to_string()), "{}", got.body);
    assert!(got.body.contains("request id "), "{}", got.body);
    let errors =
        switchyard::config::parse("listeners: [{address: 127.0.0.1:80}]\nerror_detail: all\n")
            .unwrap_err()
            .to_string();
    assert!(
        errors.contains("error_detail: `all` is not a choice"),
        "{errors}"
    );
}
