//! 10,000 registrations and then 10,000 deregistrations through the real
//! admin API (one keep-alive connection, one call at a time, each waiting
//! for its 201/200), then the cost of `GET /admin/status` at that size.
//! Prints wall time and the process's CPU time (proxy and client share the
//! process). Run in release mode:
//!
//! ```sh
//! cargo bench --bench registrations
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a bench is a failed bench
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

const COUNT: u16 = 10_000;
const FIRST_PORT: u16 = 20_000;

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15, in clock ticks (100 per second
    // on Linux).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Option<String>,
) -> (u16, Bytes) {
    sender.ready().await.unwrap();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

fn report(what: &str, count: u16, wall: Duration, cpu: Duration) {
    println!(
        "{what:<28} {count:>6} calls  {:>8.2} s wall  {:>8.2} s CPU  {:>8.0} calls/s",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        f64::from(count) / wall.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let text = "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nroutes:\n  - service: svc\nservices:\n  svc: {instances: []}\n";
    let running = switchyard::server::start(switchyard::config::parse(text).unwrap())
        .await
        .unwrap();
    let stream = tokio::net::TcpStream::connect(running.admin_address())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);

    let (wall, cpu) = (Instant::now(), cpu_time());
    let mut slice = Instant::now();
    for i in 0..COUNT {
        let body = format!("{{\"address\": \"127.0.0.1:{}\"}}", FIRST_PORT + i);
        let (status, answer) = call(
            &mut sender,
            Method::POST,
            "/admin/services/svc/instances",
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
        if (i + 1) % 1000 == 0 {
            let rate = 1000.0 / slice.elapsed().as_secs_f64();
            println!(
                "  registered {:>6}: {rate:>8.0}/s over the last 1,000",
                i + 1
            );
            slice = Instant::now();
        }
    }
    report("register", COUNT, wall.elapsed(), cpu_time() - cpu);

    for (what, path) in [
        ("GET /admin/status", "/admin/status"),
        (
            "GET /admin/status?service=svc&limit=100",
            "/admin/status?service=svc&limit=100",
        ),
        (
            "GET /admin/status?instances=summary",
            "/admin/status?instances=summary",
        ),
    ] {
        let started = Instant::now();
        let (status, body) = call(&mut sender, Method::GET, path, None).await;
        println!(
            "{what:<44} {status} {:>8.1} ms  {:>10} bytes",
            started.elapsed().as_secs_f64() * 1e3,
            body.len()
        );
    }

    let (wall, cpu) = (Instant::now(), cpu_time());
    for i in 0..COUNT {
        let path = format!("/admin/services/svc/instances/127.0.0.1:{}", FIRST_PORT + i);
        let (status, answer) = call(&mut sender, Method::DELETE, &path, None).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    }
    report("deregister", COUNT, wall.elapsed(), cpu_time() - cpu);
    let snapshot = running.registry().snapshot();
    assert!(snapshot.services[0].all_instances.is_empty());
}
