//! The registry: every service and instance, from every source, and the
//! state that must survive a snapshot swap (per-instance stats and
//! connection pools). It is the only writer of the published [`Snapshot`].
//!
//! Writers (config reloads today; the admin API, health checks and Consul
//! later) take the registry lock, change the state, build a whole new
//! snapshot and publish it with one atomic store. Requests never take that
//! lock: they `load` the current snapshot once and keep it.

mod snapshot;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::{Config, InstanceId, ServiceName};
use crate::upstream;

pub use snapshot::{Instance, ServiceSnapshot, Snapshot};

/// Where an instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Listed in proxy.yaml.
    File,
}

impl Source {
    /// The name shown in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
        }
    }
}

/// Live counters of one instance, shared by every snapshot that has it.
#[derive(Debug, Default)]
pub struct InstanceStats {
    in_flight: AtomicU64,
    requests_total: AtomicU64,
}

impl InstanceStats {
    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent since the instance joined.
    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(self))
    }
}

/// Holds one in-flight count; the proxy keeps it until the response body
/// has been sent or dropped.
#[derive(Debug)]
pub struct InFlightGuard(Arc<InstanceStats>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// State of an instance that outlives snapshots.
#[derive(Debug)]
pub struct InstanceState {
    /// Live counters.
    pub stats: Arc<InstanceStats>,
    /// Idle keep-alive connections.
    pub pool: Arc<upstream::Pool>,
    /// Where the instance came from.
    pub source: Source,
    /// When it joined the registry.
    pub registered_at: std::time::SystemTime,
}

impl InstanceState {
    fn new(address: SocketAddr, source: Source) -> Arc<InstanceState> {
        Arc::new(InstanceState {
            stats: Arc::default(),
            pool: Arc::new(upstream::Pool::new(address, upstream::DEFAULT_MAX_IDLE)),
            source,
            registered_at: std::time::SystemTime::now(),
        })
    }
}

/// Key of an instance's surviving state. The address is part of it: an id
/// that moves to another address is a new endpoint with a new pool.
type StateKey = (ServiceName, InstanceId, SocketAddr);

struct RegistryState {
    config: Arc<Config>,
    instances: HashMap<StateKey, Arc<InstanceState>>,
    generation: u64,
}

/// Services and instances from all sources; publishes snapshots.
pub struct Registry {
    state: Mutex<RegistryState>,
    published: ArcSwap<Snapshot>,
    started: Instant,
}

impl Registry {
    /// A registry serving `config`, with its first snapshot published.
    pub fn new(config: Config) -> Registry {
        let mut state = RegistryState {
            config: Arc::new(config),
            instances: HashMap::new(),
            generation: 0,
        };
        let snapshot = build(&mut state);
        Registry {
            state: Mutex::new(state),
            published: ArcSwap::from_pointee(snapshot),
            started: Instant::now(),
        }
    }

    /// The current snapshot. Requests call this once and keep the `Arc`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.load_full()
    }

    /// The config the current snapshot was built from.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.lock().config)
    }

    /// When the registry was created.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Replaces the file config (already validated) and publishes a new
    /// snapshot. Instances that stay keep their stats and connections.
    pub fn apply_config(&self, config: Config) -> Arc<Snapshot> {
        let mut state = self.lock();
        state.config = Arc::new(config);
        let snapshot = Arc::new(build(&mut state));
        self.published.store(Arc::clone(&snapshot));
        snapshot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        // A panic while holding the lock cannot leave the map half-written
        // in a way that matters more than stopping would; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Builds a snapshot of `state`, creating shared state for new instances
/// and dropping it for instances that left.
fn build(state: &mut RegistryState) -> Snapshot {
    let started = Instant::now();
    state.generation += 1;
    let mut kept = HashMap::with_capacity(state.instances.len());
    let config = Arc::clone(&state.config);
    let snapshot = Snapshot::build(state.generation, &config, |service, instance| {
        let key = (service.clone(), instance.id.clone(), instance.address);
        let shared = state
            .instances
            .get(&key)
            .cloned()
            .unwrap_or_else(|| InstanceState::new(instance.address, Source::File));
        kept.insert(key, Arc::clone(&shared));
        shared
    });
    state.instances = kept;
    tracing::debug!(
        generation = state.generation,
        instances = state.instances.len(),
        build_micros = started.elapsed().as_micros() as u64,
        "snapshot built"
    );
    snapshot
}
