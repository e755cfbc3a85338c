//! The admin API, on its own listener (loopback by default).
//!
//! - `GET /admin/status`: version, uptime, listeners, routes, services and
//!   instances, and the live-config state (current version, last reload).
//! - `POST /admin/reload`: re-read the config file and apply it.
//! - `GET /admin/config/versions`, `GET /admin/config/versions/{n}`,
//!   `GET /admin/config/diff?from=A&to=B`, `POST /admin/config/rollback/{n}`:
//!   the config history.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use crate::config::history::{ChangeSource, ConfigVersion};
use crate::proxy::{text_response, ProxyBody};
use crate::registry::Registry;
use crate::reload::{ReloadError, ReloadStatus, Reloader};
use crate::server::Listeners;

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

#[derive(Serialize)]
struct Status {
    version: &'static str,
    uptime_seconds: u64,
    snapshot_generation: u64,
    admin_address: String,
    listeners: Vec<ListenerStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<ReloadStatus>,
    routes: Vec<RouteStatus>,
    services: Vec<ServiceStatus>,
}

#[derive(Serialize)]
struct ListenerStatus {
    name: String,
    address: String,
}

#[derive(Serialize)]
struct RouteStatus {
    host: String,
    path_prefix: String,
    strip_prefix: bool,
    service: String,
}

#[derive(Serialize)]
struct ServiceStatus {
    name: String,
    strategy: &'static str,
    healthy_instances: usize,
    in_rotation: usize,
    panic_routing: bool,
    connect_timeout_ms: u128,
    request_timeout_ms: u128,
    max_attempts: u32,
    instances: Vec<InstanceStatus>,
}

#[derive(Serialize)]
struct InstanceStatus {
    id: String,
    address: String,
    weight: u32,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    source: &'static str,
    health: &'static str,
    reason: String,
    in_rotation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_check_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_latency_ms: Option<f64>,
    ejections: u32,
    in_flight: u64,
    requests_total: u64,
    idle_connections: usize,
    registered_at: String,
}

/// Answers one admin request from `peer`.
pub async fn handle(
    state: &AdminState,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let path = request.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = request.method();
    match (method, segments.as_slice()) {
        (&Method::GET, ["admin", "status"]) => json_response(StatusCode::OK, &status(state)),
        (&Method::POST, ["admin", "reload"]) => {
            let Some(reloader) = live(state) else {
                return not_live();
            };
            let cause = format!("POST /admin/reload from {peer}");
            reload_response(reloader.reload(ChangeSource::Api, &cause).await)
        }
        (&Method::GET, ["admin", "config", "versions"]) => {
            let Some(reloader) = live(state) else {
                return not_live();
            };
            match reloader.versions() {
                Some((versions, broken)) => json_response(
                    StatusCode::OK,
                    &serde_json::json!({
                        "current": reloader.status().current_version,
                        "versions": versions,
                        "unreadable": broken,
                    }),
                ),
                None => error_response(&ReloadError::NoHistory),
            }
        }
        (&Method::GET, ["admin", "config", "versions", number]) => {
            let Some(reloader) = live(state) else {
                return not_live();
            };
            match parse_version(number) {
                Ok(version) => match reloader.version_text(version) {
                    Ok(text) => {
                        let mut response = text_response(StatusCode::OK, text);
                        response.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static("application/yaml; charset=utf-8"),
                        );
                        response
                    }
                    Err(error) => error_response(&error),
                },
                Err(message) => bad_request(message),
            }
        }
        (&Method::GET, ["admin", "config", "diff"]) => {
            let Some(reloader) = live(state) else {
                return not_live();
            };
            diff(reloader, request.uri().query().unwrap_or(""))
        }
        (&Method::POST, ["admin", "config", "rollback", number]) => {
            let Some(reloader) = live(state) else {
                return not_live();
            };
            match parse_version(number) {
                Ok(version) => {
                    let cause = format!("rollback to version {version} requested from {peer}");
                    reload_response(reloader.rollback(version, &cause).await)
                }
                Err(message) => bad_request(message),
            }
        }
        (_, ["admin", "status" | "config", ..]) | (_, ["admin", "reload"]) => text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}\n"),
        ),
        _ => text_response(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint at {path}; try GET /admin/status\n"),
        ),
    }
}

fn live(state: &AdminState) -> Option<&Arc<Reloader>> {
    state.reloader.as_ref()
}

fn not_live() -> Response<ProxyBody> {
    text_response(
        StatusCode::NOT_FOUND,
        "this proxy was started without a config file; there is nothing to reload\n",
    )
}

fn parse_version(text: &str) -> Result<ConfigVersion, String> {
    text.parse()
        .map(ConfigVersion)
        .map_err(|_| format!("`{text}` is not a version number\n"))
}

fn bad_request(message: String) -> Response<ProxyBody> {
    text_response(StatusCode::BAD_REQUEST, message)
}

fn diff(reloader: &Reloader, query: &str) -> Response<ProxyBody> {
    let mut from = None;
    let mut to = reloader.status().current_version;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let version = match parse_version(value) {
            Ok(version) => version,
            Err(message) => return bad_request(message),
        };
        match key {
            "from" => from = Some(version),
            "to" => to = Some(version),
            _ => {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter `{key}`; use from=A and optionally to=B\n"),
                )
            }
        }
    }
    let (Some(from), Some(to)) = (from, to) else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "give the versions to compare: ?from=A&to=B (to defaults to the current version)\n",
        );
    };
    let texts = reloader
        .version_text(from)
        .and_then(|a| Ok((a, reloader.version_text(to)?)));
    match texts {
        Ok((a, b)) => {
            let diff = similar::TextDiff::from_lines(&a, &b);
            let text = diff
                .unified_diff()
                .context_radius(3)
                .header(&format!("version {from}"), &format!("version {to}"))
                .to_string();
            let mut response = text_response(StatusCode::OK, text);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/x-diff; charset=utf-8"),
            );
            response
        }
        Err(error) => error_response(&error),
    }
}

fn reload_response(
    result: Result<crate::reload::ReloadOutcome, ReloadError>,
) -> Response<ProxyBody> {
    match result {
        Ok(outcome) => json_response(StatusCode::OK, &outcome),
        Err(error) => error_response(&error),
    }
}

fn error_response(error: &ReloadError) -> Response<ProxyBody> {
    let status = match error {
        ReloadError::History(crate::config::history::HistoryError::NotFound(_)) => {
            StatusCode::NOT_FOUND
        }
        ReloadError::Bind(_) => StatusCode::CONFLICT,
        error if error.is_client_error() => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let errors: Vec<String> = match error {
        ReloadError::Invalid(errors) => errors.0.iter().map(ToString::to_string).collect(),
        other => vec![other.to_string()],
    };
    json_response(
        status,
        &serde_json::json!({ "result": "failed", "errors": errors }),
    )
}

fn status(state: &AdminState) -> Status {
    let snapshot = state.registry.snapshot();
    let now = tokio::time::Instant::now();
    let config = state.registry.config();
    let services = snapshot
        .services
        .iter()
        .map(|service| ServiceStatus {
            name: service.name.to_string(),
            strategy: service.strategy.as_str(),
            healthy_instances: service.healthy_count,
            in_rotation: service.instances.len(),
            panic_routing: service.panic,
            connect_timeout_ms: service.connect_timeout.as_millis(),
            request_timeout_ms: service.request_timeout.as_millis(),
            max_attempts: service.max_attempts.get(),
            instances: service
                .all_instances
                .iter()
                .map(|instance| {
                    let health = instance.state.health();
                    let (state, reason) = health.describe(now);
                    let active = health.active.as_ref();
                    InstanceStatus {
                        id: instance.id.to_string(),
                        address: instance.address.to_string(),
                        weight: instance.weight.get(),
                        tags: instance.tags.clone(),
                        metadata: instance.metadata.clone(),
                        source: instance.state.source.as_str(),
                        health: state,
                        reason,
                        in_rotation: service.instances.iter().any(|i| Arc::ptr_eq(i, instance)),
                        last_check_at: active
                            .and_then(|a| a.last_check)
                            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                        last_error: active.and_then(|a| a.last_error.clone()),
                        last_latency_ms: active
                            .and_then(|a| a.last_latency)
                            .map(|d| d.as_secs_f64() * 1e3),
                        ejections: health.ejection.count,
                        in_flight: instance.state.stats.in_flight(),
                        requests_total: instance.state.stats.requests_total(),
                        idle_connections: instance.state.pool.idle_count(),
                        registered_at: humantime::format_rfc3339_seconds(
                            instance.state.registered_at,
                        )
                        .to_string(),
                    }
                })
                .collect(),
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.registry.started().elapsed().as_secs(),
        snapshot_generation: snapshot.generation,
        admin_address: state.admin_address.to_string(),
        listeners: state
            .listeners
            .bound()
            .into_iter()
            .map(|l| ListenerStatus {
                name: l.name,
                address: l.address.to_string(),
            })
            .collect(),
        config: state.reloader.as_ref().map(|r| r.status()),
        routes: config
            .routes
            .iter()
            .map(|r| RouteStatus {
                host: r.host.to_string(),
                path_prefix: r.path_prefix.clone(),
                strip_prefix: r.strip_prefix,
                service: r.service.to_string(),
            })
            .collect(),
        services,
    }
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
