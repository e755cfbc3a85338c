//! Shared helpers for the integration tests: real upstream servers and real
//! proxies on 127.0.0.1 with OS-picked ports, and a real HTTP client.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use switchyard::server::Running;
use tokio::net::TcpListener;

/// Set by `.ci/run`: a test that needs an installed tool fails instead of
/// skipping when the tool is missing, so a failed install cannot pass CI.
pub const REQUIRE_TOOLS: &str = "SWITCHYARD_TEST_REQUIRE_TOOLS";

/// Says loudly that a check is skipped because `tool` is not installed, or
/// fails the test when [`REQUIRE_TOOLS`] is set.
pub fn skip_without(tool: &str, install: &str) {
    if std::env::var_os(REQUIRE_TOOLS).is_some() {
        panic!("{tool} is required ({REQUIRE_TOOLS} is set) but not installed: {install}");
    }
    eprintln!("SKIPPED: {tool} is not installed ({install})");
}

/// An echo upstream (the demo's) named `name` on an OS-picked port.
pub async fn echo(name: &str) -> SocketAddr {
    switchyard::demo::start_echo(name, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start echo upstream")
}

/// An upstream answering every request with `handler`.
pub async fn upstream<H, F>(handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = handler(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// An address nothing listens on (bound, then released).
pub async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A config with one listener and the admin API on OS-picked ports, and
/// the given `routes:` and `services:` YAML (top-level keys).
pub fn config(rest: &str) -> switchyard::config::Config {
    let text =
        format!("listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n{rest}");
    switchyard::config::parse(&text).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{text}"))
}

/// Starts a proxy in this process.
pub async fn proxy(rest: &str) -> Running {
    switchyard::server::start(config(rest))
        .await
        .expect("start proxy")
}

/// The base URL of the proxy's first listener.
pub fn base(running: &Running) -> String {
    format!("http://{}", running.listeners()[0].address)
}

/// A keep-alive HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read whole.
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Got {
    /// The `x-served-by` header of an echo upstream.
    pub fn served_by(&self) -> String {
        self.headers
            .get("x-served-by")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// The value of a header line `  name: value` in an echo body.
    pub fn echoed(&self, name: &str) -> Option<String> {
        let prefix = format!("  {name}: ");
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    /// The echoed path.
    pub fn echoed_path(&self) -> String {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix("path: ").map(str::to_string))
            .unwrap_or_default()
    }
}

/// Sends `request` and reads the whole response (with a 10 s limit on the
/// whole exchange, so a broken proxy fails a test instead of hanging it).
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Got {
    let exchange = async {
        let response = client.request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("a whole response within 10s")
}

/// Sends `request` and reads the whole response like `send`, but a request
/// or body that fails is an `Err` saying which (for answers the proxy may
/// rightly cut off), not a test failure; 10 s at most for the exchange.
pub async fn try_send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(u16, Bytes), String> {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no end within 10s".into()))
}

/// GET `url` with extra headers.
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(client, request.body(Full::default()).unwrap()).await
}

/// How many of `n` GETs to `url` each upstream served, in order.
pub async fn distribution(url: &str, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    let client = client();
    let mut counts = HashMap::new();
    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        let got = get(&client, url, &[]).await;
        assert_eq!(got.status, 200, "{}", got.body);
        *counts.entry(got.served_by()).or_default() += 1;
        order.push(got.served_by());
    }
    (counts, order)
}

/// An HTTP/2 (prior knowledge) client connection to `address`, driven by
/// its own task.
pub async fn h2c<B>(address: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// The admin API's view of service `name` (`GET /admin/services/NAME`).
pub async fn service_view(running: &Running, name: &str) -> serde_json::Value {
    let path = format!("/admin/services/{name}");
    let (_, body) = admin::call(running.admin_address(), http::Method::GET, &path)
        .await
        .expect("admin call");
    serde_json::from_str(&body).expect("a JSON view")
}

/// Polls the view of service `name` until `check` holds (20 s at most) and
/// returns that view.
pub async fn view_until(
    running: &Running,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let view = service_view(running, name).await;
        if check(&view) {
            return view;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never: {what}\n{view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Prometheus exposition of the proxy whose admin API is at `admin`.
pub async fn scrape(admin: SocketAddr) -> String {
    let (status, text) = admin::call(admin, http::Method::GET, "/metrics")
        .await
        .expect("admin call");
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of the series `name{labels}` (exactly as exposed) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// The sum over the series of `family` whose labels contain `label` (every
/// series of the family with `""`).
pub fn sum(text: &str, family: &str, label: &str) -> f64 {
    let start = format!("{family}{{");
    text.lines()
        .filter(|l| l.starts_with(&start) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of one series of the proxy whose admin API is at `admin`, 0
/// when it is not exposed (yet).
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    sample(&scrape(admin).await, series).unwrap_or(0.0)
}

/// Shared handle to stop slow upstreams.
pub type Flag = Arc<tokio::sync::Notify>;
pub mod admin;
pub mod binary;
pub mod consul;
pub mod dns;
pub mod etcd;
pub mod flippable;
pub mod openapi;
pub mod raw;
pub mod traffic;
