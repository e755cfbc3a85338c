//! The access-log event: one per request, written when the response ends.
//! Target `switchyard::access`, so it can be filtered like any module
//! (`RUST_LOG=switchyard::access=off` turns it off at no cost).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method};

/// The tracing target of access-log events.
pub const TARGET: &str = "switchyard::access";

/// What is known about a request by the time its response starts.
#[derive(Debug)]
pub(crate) struct AccessLog {
    pub(crate) method: Method,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) service: Option<String>,
    pub(crate) instance: Option<String>,
    pub(crate) upstream_time: Option<Duration>,
    pub(crate) started: Instant,
    pub(crate) request_id: HeaderValue,
    pub(crate) client_ip: IpAddr,
}

/// Whether access-log events are wanted at all; checked before any field
/// is copied for one.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

impl AccessLog {
    /// Writes the event. `complete` is false when the response was cut off.
    pub(crate) fn emit(&self, bytes: u64, complete: bool) {
        tracing::info!(
            target: TARGET,
            method = %self.method,
            host = %self.host,
            path = %self.path,
            status = self.status,
            service = self.service.as_deref().unwrap_or("-"),
            instance = self.instance.as_deref().unwrap_or("-"),
            upstream_ms = self.upstream_time.map(|d| d.as_secs_f64() * 1e3),
            total_ms = self.started.elapsed().as_secs_f64() * 1e3,
            bytes,
            complete,
            request_id = self.request_id.to_str().unwrap_or("-"),
            client_ip = %self.client_ip,
            "request"
        );
    }
}
