//! `GET /admin/status`, and the instance view shared with the registry API.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::AdminState;
use crate::registry::{DiscoveryStatus, Instance, Registry, ServiceSnapshot};
use crate::reload::ReloadStatus;

#[derive(Serialize)]
pub(super) struct Status {
    version: &'static str,
    uptime_seconds: u64,
    snapshot_generation: u64,
    admin_address: String,
    listeners: Vec<ListenerStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<ReloadStatus>,
    routes: Vec<RouteStatus>,
    services: Vec<ServiceView>,
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

/// A service with its instances, as the admin API shows it.
#[derive(Serialize)]
pub(super) struct ServiceView {
    name: String,
    strategy: &'static str,
    /// Changes when the instance set or health changes (for watches).
    index: u64,
    healthy_instances: usize,
    in_rotation: usize,
    panic_routing: bool,
    connect_timeout_ms: u64,
    request_timeout_ms: u64,
    max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery: Option<DiscoveryStatus>,
    pub(super) instances: Vec<InstanceView>,
}

/// One instance, as the admin API shows it.
#[derive(Serialize)]
pub(super) struct InstanceView {
    id: String,
    address: String,
    weight: u32,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    source: &'static str,
    health: &'static str,
    reason: String,
    pub(super) in_rotation: bool,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<LeaseView>,
}

#[derive(Serialize)]
struct LeaseView {
    ttl_ms: u64,
    remaining_ms: u64,
}

/// Milliseconds as a JSON-safe number (JSON numbers hold 64 bits, not 128).
fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The view of `service`.
pub(super) fn service_view(
    registry: &Registry,
    service: &ServiceSnapshot,
    discovery: Option<DiscoveryStatus>,
) -> ServiceView {
    let now = tokio::time::Instant::now();
    ServiceView {
        name: service.name.to_string(),
        strategy: service.strategy.as_str(),
        index: registry.service_index(&service.name).unwrap_or(0),
        healthy_instances: service.healthy_count,
        in_rotation: service.instances.len(),
        panic_routing: service.panic,
        connect_timeout_ms: millis(service.connect_timeout),
        request_timeout_ms: millis(service.request_timeout),
        max_attempts: service.max_attempts.get(),
        discovery,
        instances: service
            .all_instances
            .iter()
            .zip(&service.in_rotation)
            .map(|(instance, in_rotation)| {
                instance_view(registry, service, instance, *in_rotation, now)
            })
            .collect(),
    }
}

fn instance_view(
    registry: &Registry,
    service: &ServiceSnapshot,
    instance: &Arc<Instance>,
    in_rotation: bool,
    now: tokio::time::Instant,
) -> InstanceView {
    // Before the health lock: the registry lock is always taken first
    // (snapshot builds hold it while reading health), never after.
    let lease = registry.lease(&service.name, &instance.id);
    let health = instance.state.health();
    let (state, reason) = health.describe(now);
    let active = health.active.as_ref();
    InstanceView {
        id: instance.id.to_string(),
        address: instance.address.to_string(),
        weight: instance.weight.get(),
        tags: instance.tags.clone(),
        metadata: instance.metadata.clone(),
        source: instance.state.source.as_str(),
        health: state,
        reason,
        in_rotation,
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
        registered_at: humantime::format_rfc3339_seconds(instance.state.registered_at).to_string(),
        lease: lease.map(|(ttl, left)| LeaseView {
            ttl_ms: millis(ttl),
            remaining_ms: millis(left),
        }),
    }
}

pub(super) fn status(state: &AdminState) -> Status {
    let snapshot = state.registry.snapshot();
    let config = state.registry.config();
    let discovery = state.registry.discovery_status();
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
        services: snapshot
            .services
            .iter()
            .map(|s| service_view(&state.registry, s, discovery.get(&s.name).cloned()))
            .collect(),
    }
}
