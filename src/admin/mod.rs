//! The admin API, on its own listener (loopback by default).
//!
//! - `GET /admin/status`: the whole proxy, in pages for a large registry
//!   (see [`status`]).
//! - `/admin/services…`: the registry API (see [`services`]).
//! - `/admin/reload`, `/admin/config/…`: live config and its history (see
//!   [`config_api`]); `POST /admin/config` pushes a version to the fleet.
//! - `GET /admin/stats`: recent traffic per service in time buckets (see
//!   [`stats`]), for the dashboard's charts.
//! - `GET /admin/fleet`: every fleet node's status (see [`fleet`]).
//! - `POST /admin/logs/reopen`: reopens the access-log file (for log
//!   rotation; SIGUSR1 does the same).
//! - `GET /admin/openapi.json`: the API's contract (see [`endpoints`], which
//!   lists every endpoint the router answers).
//!
//! When a token is configured, every mutating call (and, if asked, every
//! read) needs `Authorization: Bearer <token>`.

mod config_api;
mod dashboard;
pub mod endpoints;
mod fleet;
mod services;
mod stats;
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

/// Answers one admin request from `peer`. `HEAD` is answered like `GET`
/// (same status and headers, `Content-Length` included) without the body.
pub async fn handle(
    state: &AdminState,
    mut request: Request<ClientBody>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    if let Some(refusal) = authorize(state, &request, peer) {
        return refusal;
    }
    if request.method() != Method::HEAD {
        return route(state, request, peer).await;
    }
    *request.method_mut() = Method::GET;
    let response = route(state, request, peer).await;
    let (mut parts, body) = response.into_parts();
    if let Some(length) = http_body::Body::size_hint(&body).exact() {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Response::from_parts(parts, ProxyBody::message(Bytes::new()))
}

async fn route(
    state: &AdminState,
    request: Request<ClientBody>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let path = request.uri().path().trim_end_matches('/').to_string();
    // Each segment is decoded once: every URL encoder writes the `:` of an
    // instance id (its address) as `%3A`.
    let decoded = match decode_segments(&path) {
        Ok(decoded) => decoded,
        Err(message) => return bad_request(message),
    };
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let method = request.method().clone();
    if let Some(refusal) = endpoints::refusal(&method, &segments, request.uri().path()) {
        return refusal;
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, ["admin", "status"]) => {
            let page = status::Page::parse(request.uri().query().unwrap_or(""));
            match page.and_then(|page| status::status(state, &page)) {
                Ok(status) => json_response(StatusCode::OK, &status),
                Err(message) if message.starts_with("no service") => {
                    text_response(StatusCode::NOT_FOUND, message)
                }
                Err(message) => bad_request(message),
            }
        }
        (&Method::GET, ["admin", "stats"]) => {
            match stats::stats(state, request.uri().query().unwrap_or("")) {
                // Compact: the dashboard polls it, 90 points per series.
                Ok(stats) => compact_json_response(&stats),
                Err(message) => bad_request(message),
            }
        }
        (&Method::GET, ["admin", "openapi.json"]) => endpoints::document(),
        (&Method::GET, ["admin", "health"]) => text_response(StatusCode::OK, "ok\n"),
        (&Method::GET, ["metrics"]) => metrics(state, &request),
        (&Method::GET, []) => dashboard::page(),
        (_, ["admin", "services", ..]) => services::handle(state, request, &segments[2..]).await,
        (&Method::POST, ["admin", "config"]) => {
            let query = request.uri().query().map(str::to_string);
            // A pushed config may be as large as a config file.
            match read_body_up_to(request, crate::config::MAX_CONFIG_BYTES).await {
                Ok(body) => config_api::push(state, &body, query.as_deref(), peer).await,
                Err(response) => response,
            }
        }
        (&Method::GET, ["admin", "fleet"]) => fleet::status(state).await,
        (_, ["admin", "fleet"]) => method_not_allowed(&method, &path),
        (_, ["admin", "reload"] | ["admin", "config", ..]) => {
            let shows_secrets = holds_token(state, &request);
            config_api::handle(
                state,
                &method,
                &segments[1..],
                request.uri().query(),
                peer,
                shows_secrets,
            )
            .await
        }
        (&Method::POST, ["admin", "logs", "reopen"]) => reopen_logs(state, peer).await,
        (_, ["admin", "status" | "health"] | ["admin", "logs", "reopen"]) => {
            method_not_allowed(&method, &path)
        }
        _ => text_response(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint at {path}; try GET /admin/status\n"),
        ),
    }
}

/// `POST /admin/logs/reopen`: the access-log file is opened again at its
/// path, so lines go to a fresh file after logrotate moved the old one.
async fn reopen_logs(state: &AdminState, peer: SocketAddr) -> Response<ProxyBody> {
    let access_log = Arc::clone(state.listeners.access_log());
    let reopened = tokio::task::spawn_blocking(move || access_log.reopen()).await;
    match reopened {
        Ok(Ok(path)) => {
            let path = path.map(|p| p.display().to_string());
            tracing::info!(%peer, path = path.as_deref().unwrap_or("stderr"), "access log reopened");
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "result": "reopened", "access_log": path.as_deref().unwrap_or("stderr") }),
            )
        }
        Ok(Err(error)) => {
            tracing::error!(%peer, %error, "cannot reopen the access log; still writing to the old file");
            errors_response(StatusCode::INTERNAL_SERVER_ERROR, vec![error.to_string()])
        }
        Err(error) => errors_response(StatusCode::INTERNAL_SERVER_ERROR, vec![error.to_string()]),
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

/// Whether the request carries the configured admin token (such a caller
/// may see the secrets written in stored config texts).
fn holds_token(state: &AdminState, request: &Request<ClientBody>) -> bool {
    let config = state.registry.config();
    let Some(token) = config.admin.token.as_ref() else {
        return false;
    };
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .is_some_and(|given| same_secret(given.trim(), &token.0))
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
        .and_then(bearer_token);
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

/// The token of an `Authorization: Bearer <token>` value. The scheme name
/// is case-insensitive (RFC 9110 §11.1), so `bearer` works too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
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
    read_body_up_to(request, MAX_BODY).await
}

/// The body, refused when longer than `limit` bytes.
async fn read_body_up_to(
    request: Request<ClientBody>,
    limit: usize,
) -> Result<Bytes, Response<ProxyBody>> {
    Limited::new(request.into_body(), limit)
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

/// The segments of `path` after its leading `/`, each percent-decoded
/// once. An encoded `/` (`%2F`) is refused rather than taken as data: no
/// service name or instance id may contain one, and a proxy in front of
/// the admin API may decode it differently.
fn decode_segments(path: &str) -> Result<Vec<String>, String> {
    path.split('/')
        .skip(1)
        .map(|segment| {
            let decoded = percent_decode(segment)
                .ok_or_else(|| format!("the path segment `{segment}` is not valid percent-encoded UTF-8\n"))?;
            if decoded.contains('/') {
                return Err(format!(
                    "the path segment `{segment}` contains an encoded `/`; names and ids cannot contain one\n"
                ));
            }
            Ok(decoded)
        })
        .collect()
}

/// `%XX` escapes decoded (RFC 3986 §2.1); `None` for a broken escape or
/// bytes that are not UTF-8. `+` stays `+`: that rule is for query strings.
fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_string());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
    json_answer(status, serde_json::to_vec_pretty(value))
}

/// A 200 JSON answer without the pretty-printing (for large, polled
/// answers).
fn compact_json_response(value: &impl Serialize) -> Response<ProxyBody> {
    json_answer(StatusCode::OK, serde_json::to_vec(value))
}

fn json_answer(
    status: StatusCode,
    encoded: Result<Vec<u8>, serde_json::Error>,
) -> Response<ProxyBody> {
    match encoded {
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
    use super::{bearer_token, decode_segments, percent_decode, same_secret};

    #[test]
    fn path_segments_are_decoded_once() {
        assert_eq!(
            percent_decode("127.0.0.1%3A8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(percent_decode("a%253Ab").as_deref(), Some("a%3Ab"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%3"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
        assert!(decode_segments("/admin/services/a%2Fb").is_err());
        assert_eq!(
            decode_segments("/admin/services/app").unwrap(),
            vec!["admin", "services", "app"]
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc"), Some(" abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cre", "s3cret"));
        assert!(!same_secret("s3cret!", "s3cret"));
        assert!(!same_secret("", "s3cret"));
    }
}
