//! The immutable view a request reads: routes, services, balancers and the
//! instances that may take traffic.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::balance::{Balancer, Load, Member, Strategy};
use crate::config::{
    Cidr, Config, InstanceConfig, InstanceId, OutlierDetectionConfig, ServiceConfig, ServiceName,
};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::router::Router;
use crate::traffic::sticky::StickyTable;

use super::{FailureStreak, InstanceState};

/// Everything a request needs, built whole and published at once.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every published snapshot.
    pub generation: u64,
    /// The route table.
    pub router: Router,
    /// Each route's compiled traffic policy, indexed by
    /// [`crate::router::Route::policy`].
    pub traffic: Vec<crate::traffic::CompiledRoute>,
    /// Services, indexed by [`crate::router::Route::service`]. Shared
    /// with the snapshots before and after: a change rebuilds only the
    /// services it touches.
    pub services: Vec<Arc<ServiceSnapshot>>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Forward request headers whose names contain `_`.
    pub underscores_in_headers: bool,
    /// Error answers carry the whole detail (`error_detail: full`).
    pub full_error_detail: bool,
    /// The rate limit every request passes first, if any.
    pub rate_limit: Option<Arc<crate::limits::RateLimiter>>,
    /// Trace sampling and span export (`tracing:`).
    pub tracing: crate::trace::Settings,
}

/// One service as requests see it.
#[derive(Debug)]
pub struct ServiceSnapshot {
    /// Its name.
    pub name: ServiceName,
    /// Its strategy.
    pub strategy: Strategy,
    /// The built balancer over `instances`.
    pub balancer: Balancer,
    /// Instances that take traffic, in balancer order.
    pub instances: Vec<Arc<Instance>>,
    /// Every instance, healthy or not.
    pub all_instances: Vec<Arc<Instance>>,
    /// For each of `all_instances`: whether it is in `instances`.
    pub in_rotation: Vec<bool>,
    /// How many instances are healthy.
    pub healthy_count: usize,
    /// Too few are healthy, so `instances` holds all of them (fail open).
    pub panic: bool,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// Limit until response headers.
    pub request_timeout: Duration,
    /// Tries per request.
    pub max_attempts: NonZeroU32,
    /// When and how much to retry.
    pub retry: crate::config::RetryPolicy,
    /// Passive health checking, if on.
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// HTTP version spoken to the instances.
    pub protocol: crate::config::UpstreamProtocol,
    /// Whether the instances are reached over TLS.
    pub tls: bool,
    /// Metric handles.
    pub metrics: ServiceMetrics,
    /// Sticky-cookie lookup over `instances`, if the service has one.
    pub sticky: Option<StickyTable>,
    /// Request and retry ceilings (shared with other snapshots).
    pub breaker: Arc<crate::limits::Breaker>,
    failures: mpsc::UnboundedSender<FailureStreak>,
    /// For each of `all_instances`: whether it took traffic and its watch
    /// hash when last read, reused by the next build of the service.
    pub(super) verdicts: Vec<(bool, u64)>,
}

impl ServiceSnapshot {
    /// Records the outcome of one request to `instance` for outlier
    /// detection. `failure` is `None` for a success.
    pub fn record_outcome(&self, instance: &Instance, failure: Option<&dyn std::fmt::Display>) {
        let Some(outlier) = &self.outlier_detection else {
            return;
        };
        let stats = &instance.state.stats;
        match failure {
            None => stats.record_success(),
            Some(reason) => {
                // Report once, when the streak reaches the threshold.
                if stats.record_failure() == outlier.consecutive_failures.get() {
                    let _ = self.failures.send(FailureStreak {
                        instance: Arc::clone(&instance.state),
                        reason: format!(
                            "{} consecutive failed requests: {reason}",
                            outlier.consecutive_failures
                        ),
                    });
                }
            }
        }
    }
}

/// One instance as requests see it.
#[derive(Debug)]
pub struct Instance {
    /// Id within the service.
    pub id: InstanceId,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its weight.
    pub weight: NonZeroU32,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// The build it runs, if known.
    pub version: Option<String>,
    /// State shared with other snapshots.
    pub state: Arc<InstanceState>,
    /// `service/id`, where `ip_hash` places the instance on its ring.
    balance_key: String,
    /// Hash of the fields above that a watcher sees.
    config_hash: u64,
}

impl Instance {
    /// Where `ip_hash` places the instance on its ring (`service/id`).
    pub fn balance_key(&self) -> &str {
        &self.balance_key
    }

    /// The instance `config` of `service` with its surviving `state`.
    pub(super) fn new(
        service: &ServiceName,
        config: &InstanceConfig,
        state: Arc<InstanceState>,
    ) -> Instance {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        config.id.hash(&mut hasher);
        config.address.hash(&mut hasher);
        config.weight.hash(&mut hasher);
        config.tags.hash(&mut hasher);
        config.metadata.hash(&mut hasher);
        config.version.hash(&mut hasher);
        Instance {
            id: config.id.clone(),
            address: config.address,
            weight: config.weight,
            tags: config.tags.clone(),
            metadata: config.metadata.clone(),
            version: config.version.clone(),
            state,
            balance_key: format!("{service}/{}", config.id),
            config_hash: hasher.finish(),
        }
    }

    /// Whether this instance was built from exactly `config`, so the next
    /// snapshot can share it.
    pub(super) fn is_built_from(&self, config: &InstanceConfig) -> bool {
        self.id == config.id
            && self.address == config.address
            && self.weight == config.weight
            && self.tags == config.tags
            && self.metadata == config.metadata
            && self.version == config.version
    }

    /// A hash of what a watcher sees of this instance: its fields and its
    /// state word.
    pub(super) fn watch_hash(&self, state: &str) -> u64 {
        // The state words start with distinct letters.
        let code = u64::from(state.as_bytes().first().copied().unwrap_or(0));
        mix(0, self.config_hash ^ code)
    }
}

/// Folds `value` into `fingerprint`. A multiply-rotate mix, not SipHash:
/// this runs for every instance of a service at every rebuild.
pub(super) fn mix(fingerprint: u64, value: u64) -> u64 {
    (fingerprint.rotate_left(23) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Load for Arc<Instance> {
    fn in_flight(&self) -> u64 {
        self.state.stats.in_flight()
    }
}

impl ServiceSnapshot {
    /// Builds one service over `all_instances`; `verdicts[i].0` says
    /// whether instance `i` takes traffic now.
    pub(super) fn build(
        name: &ServiceName,
        service: &ServiceConfig,
        all_instances: Vec<Arc<Instance>>,
        verdicts: Vec<(bool, u64)>,
        failures: mpsc::UnboundedSender<FailureStreak>,
        metrics: &Metrics,
        breaker: Arc<crate::limits::Breaker>,
    ) -> ServiceSnapshot {
        let healthy_count = verdicts.iter().filter(|(healthy, _)| *healthy).count();
        let panic = service.panic_threshold > 0
            && !all_instances.is_empty()
            && healthy_count.saturating_mul(100)
                < usize::from(service.panic_threshold).saturating_mul(all_instances.len());
        let in_rotation: Vec<bool> = if panic {
            vec![true; all_instances.len()]
        } else {
            verdicts.iter().map(|(healthy, _)| *healthy).collect()
        };
        let instances: Vec<Arc<Instance>> = all_instances
            .iter()
            .zip(&in_rotation)
            .filter(|(_, in_rotation)| **in_rotation)
            .map(|(instance, _)| Arc::clone(instance))
            .collect();
        let members: Vec<Member<'_>> = instances
            .iter()
            .map(|instance| Member {
                key: &instance.balance_key,
                weight: instance.weight.get(),
            })
            .collect();
        let balancer = Balancer::build(service.strategy, &members);
        drop(members);
        let sticky = service
            .sticky
            .as_ref()
            .map(|sticky| StickyTable::build(sticky, name, instances.iter().map(|i| &i.id)));
        ServiceSnapshot {
            name: name.clone(),
            strategy: service.strategy,
            balancer,
            instances,
            all_instances,
            in_rotation,
            healthy_count,
            panic,
            connect_timeout: service.connect_timeout,
            request_timeout: service.request_timeout,
            max_attempts: service.max_attempts,
            retry: service.retry,
            outlier_detection: service.outlier_detection.clone(),
            protocol: service.protocol,
            tls: service.tls.is_some(),
            metrics: metrics.service(name.as_str()),
            sticky,
            breaker,
            failures,
            verdicts,
        }
    }
}

impl Snapshot {
    /// Puts built services together with the route table of `config`.
    pub(super) fn assemble(
        generation: u64,
        config: &Config,
        services: Vec<Arc<ServiceSnapshot>>,
        limits: &mut crate::limits::Limits,
        split_counters: &mut crate::traffic::SplitCounters,
        metrics: &Metrics,
    ) -> Snapshot {
        let names: Vec<String> = config.routes.iter().map(route_limit_name).collect();
        let route_limits: Vec<_> = config
            .routes
            .iter()
            .zip(&names)
            .map(|(route, name)| {
                route
                    .rate_limit
                    .as_ref()
                    .map(|limit| limits.rate_limiter(name, limit, metrics))
            })
            .collect();
        let rate_limit = config
            .rate_limit
            .as_ref()
            .map(|limit| limits.rate_limiter(GLOBAL_LIMIT, limit, metrics));
        let mut kept: Vec<&str> = names.iter().map(String::as_str).collect();
        kept.push(GLOBAL_LIMIT);
        limits.retain_rate_limiters(&kept);
        let router = Router::with_rate_limits(
            &config.routes,
            |name| services.iter().position(|s| &s.name == name),
            |index| route_limits.get(index).cloned().flatten(),
        );
        let traffic =
            crate::traffic::compile(&config.routes, &services, split_counters, generation);
        Snapshot {
            generation,
            router,
            traffic,
            services,
            trusted_proxies: config.trusted_proxies.clone(),
            underscores_in_headers: config.underscores_in_headers,
            full_error_detail: config.error_detail == crate::config::ErrorDetail::Full,
            rate_limit,
            tracing: crate::trace::Settings::of(&config.tracing),
        }
    }
}

/// The name of the global rate limit (metrics, `RateLimit-Policy`).
const GLOBAL_LIMIT: &str = "global";

/// A route's limit is named by what it matches (`api.example.com/api`,
/// `*/` for any host), which validation keeps unique; routes moving in
/// the list keep their buckets.
fn route_limit_name(route: &crate::config::RouteConfig) -> String {
    let path = match &route.path_regex {
        Some(pattern) => format!("~{}", pattern.as_str()),
        None => route.path_prefix.clone(),
    };
    // Routes that share host and path differ in their conditions.
    if route.conditions.count() == 0 {
        format!("{}{path}", route.host)
    } else {
        format!("{}{path} if {}", route.host, route.conditions)
    }
}
