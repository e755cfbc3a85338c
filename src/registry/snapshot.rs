//! The immutable view a request reads: routes, services, balancers and the
//! instances that may take traffic.

use std::collections::BTreeMap;
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

use super::{FailureStreak, InstanceState, Source};

/// A service to build: its settings and its instances from every source.
pub(super) struct ServicePlan<'a> {
    pub(super) name: ServiceName,
    pub(super) settings: std::borrow::Cow<'a, ServiceConfig>,
    pub(super) instances: Vec<(InstanceConfig, Source)>,
}

/// Everything a request needs, built whole and published at once.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every published snapshot.
    pub generation: u64,
    /// The route table.
    pub router: Router,
    /// Services, indexed by [`crate::router::Route::service`].
    pub services: Vec<ServiceSnapshot>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Forward request headers whose names contain `_`.
    pub underscores_in_headers: bool,
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
    /// Passive health checking, if on.
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// HTTP version spoken to the instances.
    pub protocol: crate::config::UpstreamProtocol,
    /// Whether the instances are reached over TLS.
    pub tls: bool,
    /// Metric handles.
    pub metrics: ServiceMetrics,
    failures: mpsc::UnboundedSender<FailureStreak>,
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
    /// State shared with other snapshots.
    pub state: Arc<InstanceState>,
}

impl Load for Arc<Instance> {
    fn in_flight(&self) -> u64 {
        self.state.stats.in_flight()
    }
}

impl Snapshot {
    /// Builds a snapshot from `config`; `state_for` supplies the surviving
    /// state of each instance.
    pub(super) fn build(
        generation: u64,
        config: &Config,
        plans: &[ServicePlan<'_>],
        failures: mpsc::UnboundedSender<FailureStreak>,
        metrics: &Metrics,
        mut state_for: impl FnMut(
            &ServiceName,
            &ServiceConfig,
            &InstanceConfig,
            Source,
        ) -> Arc<InstanceState>,
    ) -> Snapshot {
        let now = tokio::time::Instant::now();
        let services: Vec<ServiceSnapshot> = plans
            .iter()
            .map(|plan| {
                let (name, service) = (&plan.name, &*plan.settings);
                let all_instances: Vec<Arc<Instance>> = plan
                    .instances
                    .iter()
                    .map(|(instance, source)| {
                        Arc::new(Instance {
                            id: instance.id.clone(),
                            address: instance.address,
                            weight: instance.weight,
                            tags: instance.tags.clone(),
                            metadata: instance.metadata.clone(),
                            state: state_for(name, service, instance, *source),
                        })
                    })
                    .collect();
                let healthy: Vec<bool> = all_instances
                    .iter()
                    .map(|i| i.state.health().takes_traffic(now))
                    .collect();
                let healthy_count = healthy.iter().filter(|h| **h).count();
                let panic = service.panic_threshold > 0
                    && !all_instances.is_empty()
                    && healthy_count * 100
                        < usize::from(service.panic_threshold) * all_instances.len();
                let in_rotation = if panic {
                    vec![true; all_instances.len()]
                } else {
                    healthy
                };
                let instances: Vec<Arc<Instance>> = all_instances
                    .iter()
                    .zip(&in_rotation)
                    .filter(|(_, in_rotation)| **in_rotation)
                    .map(|(instance, _)| Arc::clone(instance))
                    .collect();
                let keys: Vec<String> = instances
                    .iter()
                    .map(|i| format!("{name}/{}", i.id))
                    .collect();
                let members: Vec<Member<'_>> = instances
                    .iter()
                    .zip(&keys)
                    .map(|(instance, key)| Member {
                        key,
                        weight: instance.weight.get(),
                    })
                    .collect();
                ServiceSnapshot {
                    name: name.clone(),
                    strategy: service.strategy,
                    balancer: Balancer::build(service.strategy, &members),
                    instances,
                    all_instances,
                    in_rotation,
                    healthy_count,
                    panic,
                    connect_timeout: service.connect_timeout,
                    request_timeout: service.request_timeout,
                    max_attempts: service.max_attempts,
                    outlier_detection: service.outlier_detection.clone(),
                    protocol: service.protocol,
                    tls: service.tls.is_some(),
                    metrics: metrics.service(name.as_str()),
                    failures: failures.clone(),
                }
            })
            .collect();
        let router = Router::new(&config.routes, |name| {
            services.iter().position(|s| &s.name == name)
        });
        Snapshot {
            generation,
            router,
            services,
            trusted_proxies: config.trusted_proxies.clone(),
            underscores_in_headers: config.underscores_in_headers,
        }
    }
}
