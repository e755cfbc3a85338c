//! The admin API, on its own listener (loopback by default).
//!
//! - `GET /admin/status`: the whole proxy (see [`status`]).
//! - `/admin/services…`: the registry API (see [`services`]).
//! - `/admin/reload`, `/admin/config/…`: live config and its history (see
//!   [`config_api`]).
//!
//! When a token is configured, every mutating call (and, if asked, every
//! read) needs `Authorization: Bearer <token>`.

mod config_api;
mod dashboard;
mod services;
mod status;

pub use services::INDEX_HEADER;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::upstream::ClientBody;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::proxy::{text_response, ProxyBody};
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::server::Listeners;

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// What the admin API reads and drives.
pub struct AdminState {
    registry: Arc<Registry>,
    listeners: Arc<Listeners>,
    reloader: Option<Arc<Reloader>>,
    admin_address: SocketAddr,
}

impl AdminState {
    /// State for the admin API of one running proxy.
    pub fn new(
        registry: Arc<Registry>,
        listeners: Arc<Listeners>,
        reloader: Option<Arc<Reloader>>,
        admin_address: SocketAddr,
    ) -> AdminState {
        AdminState {
            registry,
            listeners,
            reloader,
            admin_address,
        }
    }
}

/// Answers one admin request from `peer`.
pub async fn handle(
    state: &AdminState,
    request: Request<ClientBody>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    if let Some(refusal) = authorize(state, &request, peer) {
        return refusal;
    }
    let path = request.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["admin", "status"]) => {
            json_response(StatusCode::OK, &status::status(state))
        }
        (&Method::GET, ["admin", "health"]) => text_response(StatusCode::OK, "ok\n"),
        (&Method::GET, ["metrics"]) => metrics(state, &request),
        (&Method::GET, []) => dashboard::page(),
        (_, ["admin", "services", ..]) => services::handle(state, request, &segments[2..]).await,
        (_, ["admin", "reload"] | ["admin", "config", ..]) => {
            config_api::handle(state, &method, &segments[1..], request.uri().query(), peer).await
        }
        (_, ["admin", "status" | "health"]) => method_not_allowed(&method, &path),
        _ => text_response(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint at {path}; try GET /admin/status\n"),
        ),
    }
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus
/// does), the classic text format otherwise.
fn metrics(state: &AdminState, request: &Request<ClientBody>) -> Response<ProxyBody> {
    let openmetrics = request
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let metrics = state.registry.metrics();
    let (text, content_type) = if openmetrics {
        (
            metrics.encode_openmetrics(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (metrics.encode(), "text/plain; version=0.0.4; charset=utf-8")
    };
    let mut response = text_response(StatusCode::OK, text);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Checks the bearer token; returns the refusal, if any.
fn authorize(
    state: &AdminState,
    request: &Request<ClientBody>,
    peer: SocketAddr,
) -> Option<Response<ProxyBody>> {
    let config = state.registry.config();
    let token = config.admin.token.as_ref()?;
    let reading = matches!(*request.method(), Method::GET | Method::HEAD);
    if reading && !config.admin.read_requires_token {
        return None;
    }
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let (status, why) = match given {
        None => (
            StatusCode::UNAUTHORIZED,
            "this call needs `Authorization: Bearer <admin token>`",
        ),
        Some(given) if !same_secret(given.trim(), &token.0) => {
            (StatusCode::FORBIDDEN, "the admin token is wrong")
        }
        Some(_) => return None,
    };
    tracing::warn!(%peer, method = %request.method(), path = request.uri().path(), status = status.as_u16(), "admin call refused: {why}");
    let mut response = text_response(status, format!("{why}\n"));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"switchyard admin\""),
        );
    }
    Some(response)
}

/// Compares two secrets in constant time: their digests are compared
/// byte by byte without stopping early, so neither content nor length
/// leaks through timing.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

async fn read_body(request: Request<ClientBody>) -> Result<Bytes, Response<ProxyBody>> {
    Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| {
            text_response(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}\n"),
            )
        })
}

fn method_not_allowed(method: &Method, path: &str) -> Response<ProxyBody> {
    text_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}\n"),
    )
}

fn bad_request(message: String) -> Response<ProxyBody> {
    text_response(StatusCode::BAD_REQUEST, message)
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut response = Response::new(ProxyBody::message(body));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {error}\n"),
        ),
    }
}

/// A JSON error answer: `{"errors": [...]}`.
fn errors_response(status: StatusCode, errors: Vec<String>) -> Response<ProxyBody> {
    json_response(
        status,
        &serde_json::json!({ "result": "failed", "errors": errors }),
    )
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cre", "s3cret"));
        assert!(!same_secret("s3cret!", "s3cret"));
        assert!(!same_secret("", "s3cret"));
    }
}
