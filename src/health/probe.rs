//! The built-in probes. Each makes its own connection (never one from the
//! request path's pools) and closes it afterwards.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{CheckFailure, CheckFuture, CheckTarget, HealthCheck, ProbeFuture};
use crate::config::HttpCheckConfig;

/// How much of a response body a probe reads when looking for a substring.
const MAX_BODY: usize = 64 * 1024;

/// Passes when a TCP connection can be opened.
#[derive(Debug, Default)]
pub struct TcpCheck;

impl HealthCheck for TcpCheck {
    fn check<'a>(&'a self, target: &'a CheckTarget) -> CheckFuture<'a> {
        Box::pin(async move { self.probe(target).await.map_err(reason) })
    }

    fn probe<'a>(&'a self, target: &'a CheckTarget) -> ProbeFuture<'a> {
        Box::pin(async move { connect(target.address).await.map(drop) })
    }
}

/// Passes when an HTTP request gets an expected status (and body).
#[derive(Debug)]
pub struct HttpCheck {
    config: HttpCheckConfig,
}

impl HttpCheck {
    /// A probe sending the request `config` describes.
    pub fn new(config: HttpCheckConfig) -> HttpCheck {
        HttpCheck { config }
    }
}

impl HealthCheck for HttpCheck {
    fn check<'a>(&'a self, target: &'a CheckTarget) -> CheckFuture<'a> {
        Box::pin(async move { self.probe(target).await.map_err(reason) })
    }

    fn probe<'a>(&'a self, target: &'a CheckTarget) -> ProbeFuture<'a> {
        Box::pin(async move {
            let stream = connect(target.address).await?;
            self.exchange(target, stream)
                .await
                .map_err(CheckFailure::Instance)
        })
    }
}

impl HttpCheck {
    /// The request and the checks of its answer, on a connected `stream`.
    async fn exchange(&self, target: &CheckTarget, stream: TcpStream) -> Result<(), String> {
        let config = &self.config;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let connection = AbortOnDrop(tokio::spawn(connection));
        let host = config
            .host
            .clone()
            .unwrap_or_else(|| target.address.to_string());
        let request = Request::builder()
            .method(config.method.clone())
            .uri(config.path.as_str())
            .header(HOST, host)
            .header(
                USER_AGENT,
                concat!("switchyard-health-check/", env!("CARGO_PKG_VERSION")),
            )
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the probe request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        if !config
            .expected_status
            .iter()
            .any(|range| range.contains(&status))
        {
            return Err(format!(
                "status {status}, expected {}",
                describe(&config.expected_status)
            ));
        }
        if let Some(needle) = &config.body_contains {
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the body failed: {e}"))?
                .to_bytes();
            if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                return Err(format!("body does not contain `{needle}`"));
            }
        }
        drop(connection);
        Ok(())
    }
}

/// Connects; running out of descriptors (or local ports) is our failure,
/// not the instance's.
async fn connect(address: SocketAddr) -> Result<TcpStream, CheckFailure> {
    let stream = TcpStream::connect(address).await.map_err(|e| {
        let reason = format!("connect failed: {e}");
        if crate::local_origin::is_local_resource_error(&e) {
            CheckFailure::Local(reason)
        } else {
            CheckFailure::Instance(reason)
        }
    })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn reason(failure: CheckFailure) -> String {
    match failure {
        CheckFailure::Instance(reason) | CheckFailure::Local(reason) => reason,
    }
}

fn describe(ranges: &[std::ops::RangeInclusive<u16>]) -> String {
    ranges
        .iter()
        .map(|r| {
            if r.start() == r.end() {
                r.start().to_string()
            } else {
                format!("{}-{}", r.start(), r.end())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stops the connection task when the probe ends, whichever way.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
