//! A backend's instances: the whole service, or the subset of its
//! instances in rotation with a version or tags, with its own balancer.

use std::sync::Arc;

use crate::balance::{Balancer, Member};
use crate::config::{Subset, SubsetFallback};
use crate::registry::{Instance, ServiceSnapshot};

/// Where a backend's requests go, decided when the snapshot is built.
#[derive(Debug)]
pub enum Target {
    /// Every instance of the service in rotation (no subset, or an empty
    /// subset with `fallback: any`).
    Service,
    /// The instances of the subset, balanced among themselves with the
    /// service's strategy.
    Subset(SubsetPool),
    /// The subset is empty and `fallback: none`: answer 503.
    Empty,
}

/// The instances of a subset and their balancer.
#[derive(Debug)]
pub struct SubsetPool {
    /// Instances in the subset that take traffic, in the service's order.
    pub instances: Vec<Arc<Instance>>,
    /// Built over `instances`.
    pub balancer: Balancer,
    /// For each of `instances`, its index among the service's instances
    /// in rotation (ascending, as the subset keeps the service's order):
    /// how a sticky cookie, which names an instance of the service, is
    /// read and written for the subset.
    positions: Vec<usize>,
}

impl SubsetPool {
    /// The index in this subset of the service's instance in rotation
    /// `index`, if the subset holds it.
    pub fn from_service(&self, index: usize) -> Option<usize> {
        self.positions.binary_search(&index).ok()
    }

    /// The index among the service's instances in rotation of this
    /// subset's instance `index`.
    pub fn to_service(&self, index: usize) -> Option<usize> {
        self.positions.get(index).copied()
    }
}

/// Whether `instance` belongs to `subset`.
pub fn in_subset(subset: &Subset, instance: &Instance) -> bool {
    subset
        .version
        .as_ref()
        .is_none_or(|v| instance.version.as_ref() == Some(v))
        && subset.tags.iter().all(|tag| instance.tags.contains(tag))
}

/// The target of a backend of `service` with `subset`.
pub fn target(
    service: &ServiceSnapshot,
    subset: Option<&Subset>,
    fallback: SubsetFallback,
) -> Target {
    let Some(subset) = subset else {
        return Target::Service;
    };
    let (positions, instances): (Vec<usize>, Vec<Arc<Instance>>) = service
        .instances
        .iter()
        .enumerate()
        .filter(|(_, instance)| in_subset(subset, instance))
        .map(|(index, instance)| (index, Arc::clone(instance)))
        .unzip();
    if instances.is_empty() {
        return match fallback {
            SubsetFallback::Any => Target::Service,
            SubsetFallback::None => Target::Empty,
        };
    }
    let members: Vec<Member<'_>> = instances
        .iter()
        .map(|instance| Member {
            key: instance.balance_key(),
            weight: instance.weight.get(),
        })
        .collect();
    let balancer = Balancer::build(service.strategy, &members);
    drop(members);
    Target::Subset(SubsetPool {
        instances,
        balancer,
        positions,
    })
}
