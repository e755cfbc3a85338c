//! The registry: every service and instance, from every source, and the
//! state that must survive a snapshot swap (health, per-instance stats and
//! connection pools). It is the only writer of the published [`Snapshot`].
//!
//! Writers (config reloads, health checks; the admin API and Consul later)
//! change state, then the registry builds a whole new snapshot and
//! publishes it with one atomic store. Requests never take the registry
//! lock: they `load` the current snapshot once and keep it.

pub mod health;
mod snapshot;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{Config, InitialHealth, InstanceId, ServiceName};
use crate::upstream;

pub use health::InstanceHealth;
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

/// Identifies an instance's surviving state. The address is part of it: an
/// id that moves to another address is a new endpoint with a new pool and a
/// fresh verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    /// The service.
    pub service: ServiceName,
    /// The instance id.
    pub id: InstanceId,
    /// Its address.
    pub address: SocketAddr,
}

/// Live counters of one instance, shared by every snapshot that has it.
#[derive(Debug, Default)]
pub struct InstanceStats {
    in_flight: AtomicU64,
    requests_total: AtomicU64,
    /// Failed requests in a row, for outlier detection.
    consecutive_failures: AtomicU32,
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

    /// A request succeeded: the failure streak ends.
    pub fn record_success(&self) {
        // Read first: the common case writes nothing to the shared line.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed; returns the streak length including this one.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends the failure streak (after an ejection, or when outlier
    /// detection is off).
    pub fn reset_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
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
    /// Which instance.
    pub key: InstanceKey,
    /// Live counters.
    pub stats: Arc<InstanceStats>,
    /// Idle keep-alive connections.
    pub pool: Arc<upstream::Pool>,
    /// Where the instance came from.
    pub source: Source,
    /// When it joined the registry.
    pub registered_at: std::time::SystemTime,
    /// Health verdicts. Locked only by health updates and snapshot builds,
    /// never on the request path.
    pub health: Mutex<InstanceHealth>,
}

impl InstanceState {
    fn new(key: InstanceKey, source: Source, health: InstanceHealth) -> Arc<InstanceState> {
        Arc::new(InstanceState {
            pool: Arc::new(upstream::Pool::new(key.address, upstream::DEFAULT_MAX_IDLE)),
            key,
            stats: Arc::default(),
            source,
            registered_at: std::time::SystemTime::now(),
            health: Mutex::new(health),
        })
    }

    /// The health state, locked.
    pub fn health(&self) -> MutexGuard<'_, InstanceHealth> {
        lock(&self.health)
    }
}

/// A failure streak on real traffic that reached the service's threshold;
/// the health supervisor decides whether to eject.
#[derive(Debug)]
pub struct FailureStreak {
    /// The instance.
    pub instance: Arc<InstanceState>,
    /// The last failure, in words.
    pub reason: String,
}

struct RegistryState {
    config: Arc<Config>,
    instances: HashMap<InstanceKey, Arc<InstanceState>>,
    generation: u64,
    /// Services routing to all instances because too few are healthy.
    panicking: HashMap<ServiceName, bool>,
}

/// Services and instances from all sources; publishes snapshots.
pub struct Registry {
    state: Mutex<RegistryState>,
    published: ArcSwap<Snapshot>,
    started: Instant,
    /// Bumped after every publish, for whoever follows the instance set.
    changes: watch::Sender<u64>,
    rebuild: Notify,
    failures: mpsc::UnboundedSender<FailureStreak>,
    failure_receiver: Mutex<Option<mpsc::UnboundedReceiver<FailureStreak>>>,
}

impl Registry {
    /// A registry serving `config`, with its first snapshot published.
    pub fn new(config: Config) -> Registry {
        let mut state = RegistryState {
            config: Arc::new(config),
            instances: HashMap::new(),
            generation: 0,
            panicking: HashMap::new(),
        };
        let (failures, failure_receiver) = mpsc::unbounded_channel();
        let snapshot = build(&mut state, &failures);
        Registry {
            state: Mutex::new(state),
            published: ArcSwap::from_pointee(snapshot),
            started: Instant::now(),
            changes: watch::channel(1).0,
            rebuild: Notify::new(),
            failures,
            failure_receiver: Mutex::new(Some(failure_receiver)),
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

    /// Follows publishes (the value is the snapshot generation).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every instance's shared state.
    pub fn instances(&self) -> Vec<Arc<InstanceState>> {
        self.lock().instances.values().cloned().collect()
    }

    /// The receiving end of failure streaks reported by the proxy; there is
    /// one, taken by the health supervisor.
    pub fn take_failure_streaks(&self) -> Option<mpsc::UnboundedReceiver<FailureStreak>> {
        lock(&self.failure_receiver).take()
    }

    /// Replaces the file config (already validated) and publishes a new
    /// snapshot. Instances that stay keep their stats, connections and
    /// health verdicts.
    pub fn apply_config(&self, config: Config) -> Arc<Snapshot> {
        let mut state = self.lock();
        state.config = Arc::new(config);
        self.publish(&mut state)
    }

    /// Asks for a rebuild (after health changes). Requests made while one
    /// is pending are served by the same rebuild.
    pub fn request_rebuild(&self) {
        self.rebuild.notify_one();
    }

    /// Waits for a rebuild request, then rebuilds. The health supervisor
    /// runs this in a loop.
    pub async fn rebuild_when_asked(&self) {
        self.rebuild.notified().await;
        let mut state = self.lock();
        self.publish(&mut state);
    }

    fn publish(&self, state: &mut RegistryState) -> Arc<Snapshot> {
        let snapshot = Arc::new(build(state, &self.failures));
        self.published.store(Arc::clone(&snapshot));
        self.changes.send_replace(snapshot.generation);
        snapshot
    }

    fn lock(&self) -> MutexGuard<'_, RegistryState> {
        lock(&self.state)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave these maps half-written in
    // a way that matters more than stopping would; keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds a snapshot of `state`, creating shared state for new instances
/// and dropping it for instances that left.
fn build(state: &mut RegistryState, failures: &mpsc::UnboundedSender<FailureStreak>) -> Snapshot {
    let started = Instant::now();
    let startup = state.generation == 0;
    state.generation += 1;
    let mut kept = HashMap::with_capacity(state.instances.len());
    let config = Arc::clone(&state.config);
    let snapshot = Snapshot::build(
        state.generation,
        &config,
        failures.clone(),
        |service_name, service, instance| {
            let key = InstanceKey {
                service: service_name.clone(),
                id: instance.id.clone(),
                address: instance.address,
            };
            let shared = match state.instances.get(&key) {
                Some(existing) => {
                    let mut health = existing.health();
                    match (&service.health_check, &health.active) {
                        // Checks newly configured: a serving instance stays in
                        // until the checks say otherwise.
                        (Some(_), None) => {
                            health.active = Some(health::ActiveHealth::new(true, false))
                        }
                        (None, Some(_)) => health.active = None,
                        _ => {}
                    }
                    drop(health);
                    Arc::clone(existing)
                }
                None => {
                    let active = service.health_check.as_ref().map(|check| {
                        health::ActiveHealth::new(check.initial == InitialHealth::Healthy, startup)
                    });
                    InstanceState::new(
                        key.clone(),
                        Source::File,
                        InstanceHealth {
                            active,
                            ..InstanceHealth::default()
                        },
                    )
                }
            };
            if service.outlier_detection.is_none() {
                shared.stats.reset_failures();
            }
            kept.insert(key, Arc::clone(&shared));
            shared
        },
    );
    state.instances = kept;
    for service in &snapshot.services {
        let was = state
            .panicking
            .insert(service.name.clone(), service.panic)
            .unwrap_or(false);
        if service.panic != was {
            if service.panic {
                tracing::warn!(service = %service.name, healthy = service.healthy_count, total = service.all_instances.len(), "too few healthy instances: routing to all of them (panic threshold)");
            } else {
                tracing::info!(service = %service.name, "enough healthy instances again: leaving panic routing");
            }
        }
    }
    tracing::debug!(
        generation = state.generation,
        instances = state.instances.len(),
        build_micros = started.elapsed().as_micros() as u64,
        "snapshot built"
    );
    snapshot
}
