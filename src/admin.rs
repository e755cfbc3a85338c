//! The admin API, on its own listener (loopback by default).
//!
//! `GET /admin/status`: version, uptime, listeners, routes, and every
//! service with its strategy and instances (weights, tags, metadata,
//! in-flight and total requests).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use crate::proxy::{text_response, ProxyBody};
use crate::registry::Registry;
use crate::server::BoundListener;

/// What the admin API reads.
pub struct AdminState {
    registry: Arc<Registry>,
    listeners: Vec<BoundListener>,
    admin_address: SocketAddr,
}

impl AdminState {
    /// State for the admin API of one running proxy.
    pub fn new(
        registry: Arc<Registry>,
        listeners: Vec<BoundListener>,
        admin_address: SocketAddr,
    ) -> AdminState {
        AdminState {
            registry,
            listeners,
            admin_address,
        }
    }
}

#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    uptime_seconds: u64,
    snapshot_generation: u64,
    admin_address: String,
    listeners: Vec<ListenerStatus<'a>>,
    routes: Vec<RouteStatus>,
    services: Vec<ServiceStatus>,
}

#[derive(Serialize)]
struct ListenerStatus<'a> {
    name: &'a str,
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
    in_flight: u64,
    requests_total: u64,
    idle_connections: usize,
}

/// Answers one admin request.
pub async fn handle(state: &AdminState, request: Request<Incoming>) -> Response<ProxyBody> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/admin/status") => json_response(&status(state)),
        (_, "/admin/status") => text_response(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        (_, path) => text_response(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint at {path}; try GET /admin/status\n"),
        ),
    }
}

fn status(state: &AdminState) -> Status<'_> {
    let snapshot = state.registry.snapshot();
    let config = state.registry.config();
    let services = snapshot
        .services
        .iter()
        .map(|service| ServiceStatus {
            name: service.name.to_string(),
            strategy: service.strategy.as_str(),
            connect_timeout_ms: service.connect_timeout.as_millis(),
            request_timeout_ms: service.request_timeout.as_millis(),
            max_attempts: service.max_attempts.get(),
            instances: service
                .instances
                .iter()
                .map(|instance| InstanceStatus {
                    id: instance.id.to_string(),
                    address: instance.address.to_string(),
                    weight: instance.weight.get(),
                    tags: instance.tags.clone(),
                    metadata: instance.metadata.clone(),
                    source: instance.state.source.as_str(),
                    in_flight: instance.state.stats.in_flight(),
                    requests_total: instance.state.stats.requests_total(),
                    idle_connections: instance.state.pool.idle_count(),
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
            .iter()
            .map(|l| ListenerStatus {
                name: &l.name,
                address: l.address.to_string(),
            })
            .collect(),
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

fn json_response(value: &impl Serialize) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut response = Response::new(ProxyBody::message(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode status: {error}\n"),
        ),
    }
}
