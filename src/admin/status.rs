//! `GET /admin/status`, and the instance view shared with the registry API.
//!
//! A large registry is read in pages: `?service=NAME` shows one service,
//! `?offset=N&limit=M` a slice of each service's instances (at most
//! [`DEFAULT_LIMIT`] unless asked), `?instances=summary` only counts them by
//! health state. Every service carries `instances_total`, and
//! `next_offset` when more instances follow.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::config::ServiceName;

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
    #[serde(skip_serializing_if = "Option::is_none")]
    path_regex: Option<String>,
    strip_prefix: bool,
    /// The first backend's service (the only one without a split).
    service: String,
    backends: Vec<BackendStatus>,
}

#[derive(Serialize)]
struct BackendStatus {
    service: String,
    weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    subset: Option<String>,
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
    /// Instances of the service, whether listed or not.
    instances_total: usize,
    /// Where the next page starts, when this one did not reach the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<usize>,
    /// Instances per health state (`?instances=summary` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    states: Option<BTreeMap<&'static str, usize>>,
    /// Entries naming instances by host name, with what they resolved to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dns_names: Vec<DnsNameView>,
    pub(super) instances: Vec<InstanceView>,
}

/// A host-name entry (of the file, a registration or Consul) and the
/// instances its addresses became.
#[derive(Serialize)]
pub(super) struct DnsNameView {
    /// The entry's id: the base of its instances' ids.
    id: String,
    /// `host:port`.
    name: String,
    source: &'static str,
    /// Whether the resolver answered since the entry was listed.
    resolved: bool,
    addresses: Vec<String>,
    /// The ids of the instances the addresses became.
    instances: Vec<String>,
    /// While resolving fails: the last error (the last known addresses
    /// stay).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

impl DnsNameView {
    /// Whether this is the view of the API registration `id`.
    pub(super) fn is_registration(&self, id: &crate::config::InstanceId) -> bool {
        self.source == crate::registry::Source::Api.as_str() && self.id == id.as_str()
    }

    /// Whether the resolver answered for it.
    pub(super) fn is_resolved(&self) -> bool {
        self.resolved
    }
}

/// The host-name entries of `service` as the admin API shows them.
pub(super) fn dns_names(registry: &Registry, service: &ServiceName) -> Vec<DnsNameView> {
    registry
        .name_statuses(service)
        .into_iter()
        .map(|status| {
            let addresses = status
                .answer
                .as_ref()
                .map(|a| a.addresses.clone())
                .unwrap_or_default();
            DnsNameView {
                id: status.entry.id.to_string(),
                name: status.entry.host_port(),
                source: status.key.source.as_str(),
                resolved: status.answer.is_some(),
                instances: addresses
                    .iter()
                    .map(|ip| status.entry.resolved(*ip).id.to_string())
                    .collect(),
                addresses: addresses.iter().map(ToString::to_string).collect(),
                last_error: status.answer.and_then(|a| a.error),
            }
        })
        .collect()
}

/// Instances listed per service by `GET /admin/status` unless `limit` says
/// otherwise: enough for any small registry to be shown whole.
pub(super) const DEFAULT_LIMIT: usize = 1000;
/// The most instances one page may list.
pub(super) const MAX_LIMIT: usize = 10_000;

/// Which part of the registry a status call shows.
pub(super) struct Page {
    service: Option<ServiceName>,
    offset: usize,
    limit: usize,
    summary: bool,
}

impl Page {
    /// Every instance (the registry API's listings).
    pub(super) fn all() -> Page {
        Page {
            service: None,
            offset: 0,
            limit: usize::MAX,
            summary: false,
        }
    }

    /// Parses `service`, `offset`, `limit` and `instances` from a query.
    pub(super) fn parse(query: &str) -> Result<Page, String> {
        let mut page = Page {
            limit: DEFAULT_LIMIT,
            ..Page::all()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{key}=`{value}` is not a whole number\n"))
            };
            match key {
                "service" => page.service = Some(ServiceName::from(value)),
                "offset" => page.offset = number()?,
                "limit" => {
                    page.limit = number()?;
                    if !(1..=MAX_LIMIT).contains(&page.limit) {
                        return Err(format!("limit must be between 1 and {MAX_LIMIT}\n"));
                    }
                }
                "instances" => match value {
                    "summary" => page.summary = true,
                    "full" => page.summary = false,
                    _ => return Err(format!("instances=`{value}`: use summary or full\n")),
                },
                other => {
                    return Err(format!(
                        "unknown parameter `{other}`; use service, offset, limit and instances\n"
                    ))
                }
            }
        }
        Ok(page)
    }
}

/// One instance, as the admin API shows it.
#[derive(Serialize)]
pub(super) struct InstanceView {
    id: String,
    address: String,
    weight: u32,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
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
    /// The last changes of health state, newest first.
    health_history: Vec<HealthChangeView>,
}

#[derive(Serialize)]
struct HealthChangeView {
    at: String,
    from: &'static str,
    to: &'static str,
    reason: String,
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

/// The view of `service`, with every instance.
pub(super) fn service_view(
    registry: &Registry,
    service: &ServiceSnapshot,
    discovery: Option<DiscoveryStatus>,
) -> ServiceView {
    service_page(registry, service, discovery, &Page::all())
}

/// The view of `service`, with the instances `page` asks for.
fn service_page(
    registry: &Registry,
    service: &ServiceSnapshot,
    discovery: Option<DiscoveryStatus>,
    page: &Page,
) -> ServiceView {
    let now = tokio::time::Instant::now();
    let total = service.all_instances.len();
    let (offset, limit) = if page.summary {
        (total, 0)
    } else {
        (page.offset.min(total), page.limit)
    };
    let end = offset.saturating_add(limit).min(total);
    let states = page.summary.then(|| {
        let mut states = BTreeMap::new();
        for instance in &service.all_instances {
            let word = instance.state.health().state_word(now);
            *states.entry(word).or_insert(0) += 1;
        }
        states
    });
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
        instances_total: total,
        next_offset: (!page.summary && end < total).then_some(end),
        states,
        dns_names: dns_names(registry, &service.name),
        instances: service.all_instances[offset..end]
            .iter()
            .zip(&service.in_rotation[offset..end])
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
        version: instance.version.clone(),
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
        health_history: health
            .history
            .changes()
            .rev()
            .map(|change| HealthChangeView {
                at: humantime::format_rfc3339_millis(change.at).to_string(),
                from: change.from,
                to: change.to,
                reason: change.reason.clone(),
            })
            .collect(),
    }
}

/// The status, or why the query cannot be answered.
pub(super) fn status(state: &AdminState, page: &Page) -> Result<Status, String> {
    let snapshot = state.registry.snapshot();
    if let Some(name) = &page.service {
        if !snapshot.services.iter().any(|s| &s.name == name) {
            return Err(format!("no service named `{name}`\n"));
        }
    }
    let config = state.registry.config();
    let discovery = state.registry.discovery_status();
    Ok(Status {
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
                path_regex: r.path_regex.as_ref().map(|p| p.as_str().to_string()),
                strip_prefix: r.strip_prefix,
                service: r
                    .policy
                    .backends
                    .first()
                    .map_or_else(String::new, |b| b.service.to_string()),
                backends: r
                    .policy
                    .backends
                    .iter()
                    .map(|b| BackendStatus {
                        service: b.service.to_string(),
                        weight: b.weight,
                        subset: b.subset.as_ref().map(|s| s.to_string()),
                    })
                    .collect(),
            })
            .collect(),
        services: snapshot
            .services
            .iter()
            .filter(|s| page.service.as_ref().is_none_or(|name| &s.name == name))
            .map(|s| service_page(&state.registry, s, discovery.get(&s.name).cloned(), page))
            .collect(),
    })
}
