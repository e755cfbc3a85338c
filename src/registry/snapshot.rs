//! The immutable view a request reads: routes, services, balancers and the
//! instances that may take traffic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::{Balancer, Load, Member, Strategy};
use crate::config::{Cidr, Config, InstanceConfig, InstanceId, ServiceName};
use crate::router::Router;

use super::InstanceState;

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
    /// Instances that may take traffic, in balancer order.
    pub instances: Vec<Arc<Instance>>,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// Limit until response headers.
    pub request_timeout: Duration,
    /// Tries per request.
    pub max_attempts: NonZeroU32,
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
        mut state_for: impl FnMut(&ServiceName, &InstanceConfig) -> Arc<InstanceState>,
    ) -> Snapshot {
        let services: Vec<ServiceSnapshot> = config
            .services
            .iter()
            .map(|(name, service)| {
                let instances: Vec<Arc<Instance>> = service
                    .instances
                    .iter()
                    .map(|instance| {
                        Arc::new(Instance {
                            id: instance.id.clone(),
                            address: instance.address,
                            weight: instance.weight,
                            tags: instance.tags.clone(),
                            metadata: instance.metadata.clone(),
                            state: state_for(name, instance),
                        })
                    })
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
                    connect_timeout: service.connect_timeout,
                    request_timeout: service.request_timeout,
                    max_attempts: service.max_attempts,
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
        }
    }
}
