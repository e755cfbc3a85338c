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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{
    Config, InitialHealth, InstanceConfig, InstanceId, ServiceConfig, ServiceName,
};
use crate::metrics::{InstanceMetrics, Metrics};
use crate::upstream;

pub use health::InstanceHealth;
use snapshot::ServicePlan;
pub use snapshot::{Instance, ServiceSnapshot, Snapshot};

/// Where an instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Listed in proxy.yaml.
    File,
    /// Registered through the admin API.
    Api,
    /// Discovered in Consul.
    Consul,
}

impl Source {
    /// The name shown in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Api => "api",
            Source::Consul => "consul",
        }
    }
}

/// Why a registry API call was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such service.
    #[error("no service named `{0}`")]
    UnknownService(ServiceName),
    /// Creating services through the API is off.
    #[error(
        "service `{0}` is not defined in proxy.yaml, and registry.allow_new_services is false"
    )]
    NewServiceNotAllowed(ServiceName),
    /// No such instance.
    #[error("service `{service}` has no instance `{id}`")]
    UnknownInstance {
        /// The service.
        service: ServiceName,
        /// The id.
        id: InstanceId,
    },
    /// The instance belongs to another source.
    #[error("instance `{id}` of service `{service}` comes from {source_name}; change it there")]
    NotRegistered {
        /// The service.
        service: ServiceName,
        /// The id.
        id: InstanceId,
        /// Where it comes from.
        source_name: &'static str,
    },
    /// Heartbeat for an instance without a lease.
    #[error("instance `{0}` was registered without a ttl; it has no lease to renew")]
    NoLease(InstanceId),
}

/// An instance registered through the API.
#[derive(Debug, Clone)]
struct Registered {
    instance: InstanceConfig,
    ttl: Option<Duration>,
    expires: Option<tokio::time::Instant>,
}

/// A lease or discovery status, for the admin API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DiscoveryStatus {
    /// The last answer could not be used, or Consul cannot be reached: the
    /// instances shown are the last known ones.
    pub stale: bool,
    /// The last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The Consul index of the data.
    pub index: u64,
    /// When the data last changed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
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
#[derive(Debug)]
pub struct InstanceStats {
    /// The exported gauge is the counter itself: one atomic per change.
    in_flight: prometheus_client::metrics::gauge::Gauge,
    requests_total: AtomicU64,
    /// Failed requests in a row, for outlier detection.
    consecutive_failures: AtomicU32,
}

impl InstanceStats {
    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.in_flight.get()).unwrap_or(0)
    }

    /// Requests sent since the instance joined.
    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.inc();
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
        self.0.in_flight.dec();
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
    /// Health verdicts. Locked only by health updates, snapshot builds and
    /// the admin API, never on the request path. Lock order: the registry
    /// lock first, then this one; never take the registry lock while
    /// holding it.
    pub health: Mutex<InstanceHealth>,
    /// Metric handles.
    pub metrics: InstanceMetrics,
}

impl InstanceState {
    fn new(
        key: InstanceKey,
        source: Source,
        health: InstanceHealth,
        metrics: &Metrics,
        slots: usize,
    ) -> Arc<InstanceState> {
        let metrics = metrics.instance(key.service.as_str(), key.id.as_str());
        Arc::new(InstanceState {
            pool: Arc::new(upstream::Pool::new(
                key.address,
                slots,
                upstream::DEFAULT_MAX_IDLE,
            )),
            key,
            stats: Arc::new(InstanceStats {
                in_flight: metrics.in_flight.clone(),
                requests_total: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
            }),
            metrics,
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
    /// Registered through the API, by service and id.
    registered: BTreeMap<ServiceName, BTreeMap<InstanceId, Registered>>,
    /// Discovered in Consul, by service.
    discovered: BTreeMap<ServiceName, Vec<InstanceConfig>>,
    discovery_status: BTreeMap<ServiceName, DiscoveryStatus>,
    instances: HashMap<InstanceKey, Arc<InstanceState>>,
    generation: u64,
    /// Services routing to all instances because too few are healthy.
    panicking: HashMap<ServiceName, bool>,
    /// Per service: the generation its instances or health last changed,
    /// and a fingerprint of them, for watches.
    indexes: HashMap<ServiceName, (u64, u64)>,
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
    metrics: Arc<Metrics>,
}

impl Registry {
    /// A registry serving `config`, with its first snapshot published.
    pub fn new(config: Config) -> Registry {
        let mut state = RegistryState {
            config: Arc::new(config),
            registered: BTreeMap::new(),
            discovered: BTreeMap::new(),
            discovery_status: BTreeMap::new(),
            instances: HashMap::new(),
            generation: 0,
            panicking: HashMap::new(),
            indexes: HashMap::new(),
        };
        let (failures, failure_receiver) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::new());
        let snapshot = build(&mut state, &failures, &metrics);
        Registry {
            state: Mutex::new(state),
            published: ArcSwap::from_pointee(snapshot),
            started: Instant::now(),
            changes: watch::channel(1).0,
            rebuild: Notify::new(),
            failures,
            failure_receiver: Mutex::new(Some(failure_receiver)),
            metrics,
        }
    }

    /// The metrics of this proxy.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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

    /// Whether the API may register `instance` in `service`: the service
    /// exists (or new ones are allowed) and the id is not proxy.yaml's.
    pub fn check_registration(
        &self,
        service: &ServiceName,
        instance: &InstanceConfig,
    ) -> Result<(), RegistryError> {
        let state = self.lock();
        let in_file = state.config.services.get(service);
        if in_file.is_none()
            && !state.config.registry.allow_new_services
            && !state.registered.contains_key(service)
        {
            return Err(RegistryError::NewServiceNotAllowed(service.clone()));
        }
        if in_file.is_some_and(|s| s.instances.iter().any(|i| i.id == instance.id)) {
            return Err(RegistryError::NotRegistered {
                service: service.clone(),
                id: instance.id.clone(),
                source_name: "proxy.yaml",
            });
        }
        Ok(())
    }

    /// Replaces every API registration with `registrations`, as the fleet
    /// store holds them (their leases live in etcd, not here). Publishes
    /// only when something changed.
    pub fn replace_fleet_registrations(
        &self,
        registrations: BTreeMap<ServiceName, BTreeMap<InstanceId, InstanceConfig>>,
    ) {
        let mut state = self.lock();
        let current: BTreeMap<ServiceName, BTreeMap<InstanceId, InstanceConfig>> = state
            .registered
            .iter()
            .map(|(service, instances)| {
                let instances = instances
                    .iter()
                    .map(|(id, r)| (id.clone(), r.instance.clone()))
                    .collect();
                (service.clone(), instances)
            })
            .collect();
        if current == registrations {
            return;
        }
        state.registered = registrations
            .into_iter()
            .filter(|(_, instances)| !instances.is_empty())
            .map(|(service, instances)| {
                let instances = instances
                    .into_iter()
                    .map(|(id, instance)| {
                        let registered = Registered {
                            instance,
                            ttl: None,
                            expires: None,
                        };
                        (id, registered)
                    })
                    .collect();
                (service, instances)
            })
            .collect();
        self.publish(&mut state);
    }

    /// Adds or replaces one registration learnt from the fleet store.
    pub fn put_fleet_registration(&self, service: &ServiceName, instance: InstanceConfig) {
        self.update_fleet_registrations(vec![(service.clone(), instance)], Vec::new());
    }

    /// Removes one registration the fleet store no longer has.
    pub fn remove_fleet_registration(&self, service: &ServiceName, id: &InstanceId) {
        self.update_fleet_registrations(Vec::new(), vec![(service.clone(), id.clone())]);
    }

    /// Applies a batch of registration changes from the fleet store with
    /// one publish (a watch can deliver thousands at once).
    pub fn update_fleet_registrations(
        &self,
        put: Vec<(ServiceName, InstanceConfig)>,
        removed: Vec<(ServiceName, InstanceId)>,
    ) {
        let mut state = self.lock();
        let mut changed = false;
        for (service, id) in removed {
            if state
                .registered
                .get(&service)
                .is_some_and(|m| m.contains_key(&id))
            {
                Self::remove_registered(&mut state, &service, &id);
                changed = true;
            }
        }
        for (service, instance) in put {
            let instances = state.registered.entry(service).or_default();
            if instances
                .get(&instance.id)
                .is_some_and(|r| r.instance == instance)
            {
                continue;
            }
            let registered = Registered {
                instance: instance.clone(),
                ttl: None,
                expires: None,
            };
            instances.insert(instance.id.clone(), registered);
            changed = true;
        }
        if changed {
            self.publish(&mut state);
        }
    }

    /// Registers (or updates) an instance through the API. Returns the
    /// instance and whether it is new.
    pub fn register(
        &self,
        service: &ServiceName,
        instance: InstanceConfig,
        ttl: Option<Duration>,
    ) -> Result<bool, RegistryError> {
        let mut state = self.lock();
        let in_file = state.config.services.get(service);
        if in_file.is_none()
            && !state.config.registry.allow_new_services
            && !state.registered.contains_key(service)
        {
            return Err(RegistryError::NewServiceNotAllowed(service.clone()));
        }
        if in_file.is_some_and(|s| s.instances.iter().any(|i| i.id == instance.id)) {
            return Err(RegistryError::NotRegistered {
                service: service.clone(),
                id: instance.id,
                source_name: "proxy.yaml",
            });
        }
        let expires = ttl.map(|ttl| tokio::time::Instant::now() + ttl);
        let id = instance.id.clone();
        let created = state
            .registered
            .entry(service.clone())
            .or_default()
            .insert(
                id.clone(),
                Registered {
                    instance,
                    ttl,
                    expires,
                },
            )
            .is_none();
        tracing::info!(service = %service, instance = %id, created, ttl = ?ttl, "instance registered through the API");
        self.publish(&mut state);
        Ok(created)
    }

    /// Renews an instance's lease.
    pub fn heartbeat(&self, service: &ServiceName, id: &InstanceId) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let registered = Self::registered_mut(&mut state, service, id)?;
        let Some(ttl) = registered.ttl else {
            return Err(RegistryError::NoLease(id.clone()));
        };
        registered.expires = Some(tokio::time::Instant::now() + ttl);
        Ok(())
    }

    /// Removes an API-registered instance. Requests in flight on it finish;
    /// new ones go elsewhere.
    pub fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<(), RegistryError> {
        let mut state = self.lock();
        Self::registered_mut(&mut state, service, id)?;
        Self::remove_registered(&mut state, service, id);
        tracing::info!(service = %service, instance = %id, "instance deregistered through the API");
        self.publish(&mut state);
        Ok(())
    }

    /// Takes an instance (from any source) out of rotation by hand, or
    /// puts it back.
    pub fn set_drained(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        drained: bool,
    ) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let instance = state
            .instances
            .values()
            .find(|i| &i.key.service == service && &i.key.id == id)
            .cloned();
        let Some(instance) = instance else {
            return Err(
                if self.snapshot().services.iter().any(|s| &s.name == service) {
                    RegistryError::UnknownInstance {
                        service: service.clone(),
                        id: id.clone(),
                    }
                } else {
                    RegistryError::UnknownService(service.clone())
                },
            );
        };
        instance.health().drained = drained;
        tracing::info!(service = %service, instance = %id, drained, "instance drain changed through the API");
        self.publish(&mut state);
        Ok(())
    }

    /// Removes registrations whose lease ran out; returns how many.
    pub fn expire_leases(&self) -> usize {
        let now = tokio::time::Instant::now();
        let mut state = self.lock();
        let expired: Vec<(ServiceName, InstanceId)> = state
            .registered
            .iter()
            .flat_map(|(service, instances)| {
                instances
                    .iter()
                    .filter(|(_, r)| r.expires.is_some_and(|at| at <= now))
                    .map(move |(id, _)| (service.clone(), id.clone()))
            })
            .collect();
        for (service, id) in &expired {
            tracing::warn!(service = %service, instance = %id, "lease expired without a heartbeat; instance removed");
            Self::remove_registered(&mut state, service, id);
        }
        if !expired.is_empty() {
            self.publish(&mut state);
        }
        expired.len()
    }

    /// The lease of an API-registered instance: its ttl and time left.
    pub fn lease(&self, service: &ServiceName, id: &InstanceId) -> Option<(Duration, Duration)> {
        let state = self.lock();
        let registered = state.registered.get(service)?.get(id)?;
        let ttl = registered.ttl?;
        let left = registered
            .expires
            .map(|at| at.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or_default();
        Some((ttl, left))
    }

    /// Replaces the instances discovered in Consul for `service`.
    pub fn set_discovered(&self, service: &ServiceName, instances: Vec<InstanceConfig>) {
        let mut state = self.lock();
        if state.discovered.get(service) == Some(&instances) {
            return;
        }
        state.discovered.insert(service.clone(), instances);
        self.publish(&mut state);
    }

    /// Records the discovery status of `service`.
    pub fn set_discovery_status(&self, service: &ServiceName, status: DiscoveryStatus) {
        self.lock().discovery_status.insert(service.clone(), status);
    }

    /// The discovery status of every discovered service.
    pub fn discovery_status(&self) -> BTreeMap<ServiceName, DiscoveryStatus> {
        self.lock().discovery_status.clone()
    }

    /// The index of `service`: the snapshot generation in which its
    /// instance set or health last changed. None for an unknown service.
    pub fn service_index(&self, service: &ServiceName) -> Option<u64> {
        self.lock().indexes.get(service).map(|(index, _)| *index)
    }

    fn registered_mut<'a>(
        state: &'a mut RegistryState,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<&'a mut Registered, RegistryError> {
        let source = if state
            .config
            .services
            .get(service)
            .is_some_and(|s| s.instances.iter().any(|i| &i.id == id))
        {
            Some("proxy.yaml")
        } else if state
            .discovered
            .get(service)
            .is_some_and(|l| l.iter().any(|i| &i.id == id))
        {
            Some("Consul")
        } else {
            None
        };
        let known_service = state.config.services.contains_key(service)
            || state.registered.contains_key(service)
            || state.discovered.contains_key(service);
        match state
            .registered
            .get_mut(service)
            .and_then(|m| m.get_mut(id))
        {
            Some(registered) => Ok(registered),
            None => Err(match source {
                Some(source_name) => RegistryError::NotRegistered {
                    service: service.clone(),
                    id: id.clone(),
                    source_name,
                },
                None if known_service => RegistryError::UnknownInstance {
                    service: service.clone(),
                    id: id.clone(),
                },
                None => RegistryError::UnknownService(service.clone()),
            }),
        }
    }

    fn remove_registered(state: &mut RegistryState, service: &ServiceName, id: &InstanceId) {
        if let Some(instances) = state.registered.get_mut(service) {
            instances.remove(id);
            // A service the file does not define goes with its last instance.
            if instances.is_empty() && !state.config.services.contains_key(service) {
                state.registered.remove(service);
            }
        }
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
        let snapshot = Arc::new(build(state, &self.failures, &self.metrics));
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

/// What the snapshot will hold: every service with its settings and its
/// instances from every source. The file wins an id clash, then the API.
fn plan(state: &RegistryState) -> Vec<ServicePlan<'_>> {
    let config = &state.config;
    let mut names: Vec<&ServiceName> = config.services.keys().collect();
    for name in state.registered.keys().chain(state.discovered.keys()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let settings = match config.services.get(name) {
                Some(settings) => Cow::Borrowed(settings),
                // Consul data for a service that left the file is dropped.
                None if state.registered.contains_key(name) => Cow::Owned(ServiceConfig::registered()),
                None => return None,
            };
            let mut seen = HashSet::new();
            let mut instances = Vec::new();
            let file = settings.instances.iter().map(|i| (i, Source::File));
            let api = state
                .registered
                .get(name)
                .into_iter()
                .flat_map(|m| m.values().map(|r| (&r.instance, Source::Api)));
            let consul = state
                .discovered
                .get(name)
                .filter(|_| settings.discovery.is_some())
                .into_iter()
                .flat_map(|l| l.iter().map(|i| (i, Source::Consul)));
            for (instance, source) in file.chain(api).chain(consul) {
                if seen.insert(instance.id.clone()) {
                    instances.push((instance.clone(), source));
                } else {
                    tracing::warn!(service = %name, instance = %instance.id, source = source.as_str(), "instance id already taken by another source; ignored");
                }
            }
            Some(ServicePlan {
                name: name.clone(),
                settings,
                instances,
            })
        })
        .collect()
}

/// Builds a snapshot of `state`, creating shared state for new instances
/// and dropping it for instances that left.
fn build(
    state: &mut RegistryState,
    failures: &mpsc::UnboundedSender<FailureStreak>,
    metrics: &Metrics,
) -> Snapshot {
    let started = Instant::now();
    let startup = state.generation == 0;
    state.generation += 1;
    let generation = state.generation;
    let mut kept = HashMap::with_capacity(state.instances.len());
    let config = Arc::clone(&state.config);
    let plans = plan(state);
    let snapshot = Snapshot::build(
        generation,
        &config,
        &plans,
        failures.clone(),
        metrics,
        |service_name, service, instance, source| {
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
                        source,
                        InstanceHealth {
                            active,
                            ..InstanceHealth::default()
                        },
                        metrics,
                        config.workers,
                    )
                }
            };
            if service.outlier_detection.is_none() {
                shared.stats.reset_failures();
            }
            let settings = upstream::Settings {
                protocol: service.protocol,
                tls: service.tls.clone(),
            };
            if let Err(error) = shared.pool.configure(&settings) {
                tracing::error!(service = %service_name, instance = %instance.id, %error, "cannot set up TLS to the instance");
            }
            kept.insert(key, Arc::clone(&shared));
            shared
        },
    );
    drop(plans);
    for gone in state
        .instances
        .keys()
        .filter(|key| !kept.contains_key(*key))
    {
        // Another entry may carry the same labels (an id that moved address).
        if !kept
            .keys()
            .any(|k| k.service == gone.service && k.id == gone.id)
        {
            metrics.remove_instance(gone.service.as_str(), gone.id.as_str());
        }
    }
    state.instances = kept;
    for source in [Source::File, Source::Api, Source::Consul] {
        let count = state
            .instances
            .values()
            .filter(|i| i.source == source)
            .count();
        metrics.set_registry_size(source.as_str(), count);
    }
    let now = tokio::time::Instant::now();
    let mut indexes = HashMap::with_capacity(snapshot.services.len());
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
        for (instance, in_rotation) in service.all_instances.iter().zip(&service.in_rotation) {
            instance.state.metrics.set_healthy(*in_rotation);
        }
        let fingerprint = fingerprint(service, now);
        let index = match state.indexes.get(&service.name) {
            Some(&(index, previous)) if previous == fingerprint => index,
            _ => generation,
        };
        indexes.insert(service.name.clone(), (index, fingerprint));
    }
    state.indexes = indexes;
    tracing::debug!(
        generation,
        instances = state.instances.len(),
        build_micros = started.elapsed().as_micros() as u64,
        "snapshot built"
    );
    snapshot
}

/// What a watcher of a service sees: its instances, their weights and
/// their health.
fn fingerprint(service: &ServiceSnapshot, now: tokio::time::Instant) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for instance in &service.all_instances {
        instance.id.hash(&mut hasher);
        instance.address.hash(&mut hasher);
        instance.weight.hash(&mut hasher);
        instance.tags.hash(&mut hasher);
        instance.metadata.hash(&mut hasher);
        instance.state.health().describe(now).0.hash(&mut hasher);
    }
    service.instances.len().hash(&mut hasher);
    hasher.finish()
}
