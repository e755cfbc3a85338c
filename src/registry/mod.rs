//! The registry: every service and instance, from every source, and the
//! state that must survive a snapshot swap (health, per-instance stats and
//! connection pools). It is the only writer of the published [`Snapshot`].
//!
//! Writers (config reloads, health checks; the admin API and Consul later)
//! change state, then the registry builds a whole new snapshot and
//! publishes it with one atomic store. Requests never take the registry
//! lock: they `load` the current snapshot once and keep it.

pub mod health;
pub mod health_history;
mod snapshot;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{
    Config, InitialHealth, InstanceConfig, InstanceEntry, InstanceId, NamedInstance, ServiceConfig,
    ServiceName,
};
use crate::metrics::{InstanceMetrics, Metrics};
use crate::upstream;

pub use health::InstanceHealth;
pub use snapshot::{Instance, ServiceSnapshot, Snapshot};

/// Where an instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// A host-name entry: the source that lists it and its id (the base of
/// its resolved instances' ids).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameKey {
    /// Where the entry comes from.
    pub source: Source,
    /// Its id.
    pub id: InstanceId,
}

/// The last answer of the resolver for one host-name entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NameAnswer {
    /// The name answered for: an entry that now names another host has no
    /// answer until that one is resolved.
    pub host: String,
    /// Its addresses (sorted); empty after NXDOMAIN or an empty answer.
    pub addresses: Vec<std::net::IpAddr>,
    /// While resolving fails: the last error (the addresses are the last
    /// known ones, kept).
    pub error: Option<String>,
}

/// A host-name entry with what the resolver last said of it, for the
/// admin API.
#[derive(Debug, Clone)]
pub struct NameStatus {
    /// Source and id of the entry.
    pub key: NameKey,
    /// The entry.
    pub entry: NamedInstance,
    /// The last answer, if the name was resolved since it was listed.
    pub answer: Option<NameAnswer>,
}

/// An instance registered through the API.
#[derive(Debug, Clone)]
struct Registered {
    instance: InstanceEntry,
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

/// A service's built instances by id. FNV, not SipHash: every rebuild looks up every id
/// of its service. (Ids come from proxy.yaml, Consul and the admin API,
/// which is loopback-only by default and can require a token.)
type InstanceMap = HashMap<InstanceId, Built, BuildHasherDefault<Fnv>>;

/// A built instance and what the last build read of it.
struct Built {
    instance: Arc<Instance>,
    /// The last build that kept it.
    generation: u64,
    /// Whether it takes traffic, and its watch hash, as last read; None
    /// when it must be read at the next build.
    verdict: Option<(bool, u64)>,
}

/// FNV-1a, for short keys looked up often.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

struct RegistryState {
    config: Arc<Config>,
    /// Rate limiters and breakers, kept across builds while unchanged.
    limits: crate::limits::Limits,
    /// Registered through the API, by service and id.
    registered: BTreeMap<ServiceName, BTreeMap<InstanceId, Registered>>,
    /// Discovered in Consul, by service.
    discovered: BTreeMap<ServiceName, Vec<InstanceEntry>>,
    discovery_status: BTreeMap<ServiceName, DiscoveryStatus>,
    /// The resolver's answers for host-name entries (of the file, the API
    /// and Consul), by service.
    answers: BTreeMap<ServiceName, BTreeMap<NameKey, NameAnswer>>,
    /// Built instances by service and id, each with the generation of the
    /// last build that kept it.
    instances: HashMap<ServiceName, InstanceMap>,
    /// The services of the published snapshot, reused by the next build
    /// unless marked dirty.
    built: HashMap<ServiceName, Arc<ServiceSnapshot>>,
    /// Services changed since the last build; `dirty_all` rebuilds them all
    /// (config and health changes).
    dirty: HashSet<ServiceName>,
    dirty_all: bool,
    /// Instances per source, per service and in total, for the metric.
    counts: HashMap<ServiceName, [usize; 3]>,
    totals: [usize; 3],
    /// Changes made (counted) and the last one a published snapshot holds:
    /// a writer whose change is already published need not build.
    changes_made: u64,
    changes_published: u64,
    generation: u64,
    /// Services routing to all instances because too few are healthy.
    panicking: HashMap<ServiceName, bool>,
    /// Per service: the generation its instances or health last changed,
    /// and a fingerprint of them, for watches.
    indexes: HashMap<ServiceName, (u64, u64)>,
    /// Routes' split counters, surviving every rebuild and reload.
    split_counters: crate::traffic::SplitCounters,
}

/// Services and instances from all sources; publishes snapshots.
pub struct Registry {
    state: Mutex<RegistryState>,
    /// Held by the one writer building a snapshot; taken before `state`.
    builder: Mutex<()>,
    published: ArcSwap<Snapshot>,
    started: Instant,
    /// Bumped after every publish, for whoever follows the instance set.
    changes: watch::Sender<u64>,
    rebuild: Notify,
    failures: mpsc::UnboundedSender<FailureStreak>,
    failure_receiver: Mutex<Option<mpsc::UnboundedReceiver<FailureStreak>>>,
    metrics: Arc<Metrics>,
    /// The queue of finished spans (outlives every snapshot).
    tracer: Arc<crate::trace::Tracer>,
}

impl Registry {
    /// A registry serving `config`, with its first snapshot published.
    pub fn new(config: Config) -> Registry {
        let mut state = RegistryState {
            config: Arc::new(config),
            registered: BTreeMap::new(),
            discovered: BTreeMap::new(),
            discovery_status: BTreeMap::new(),
            answers: BTreeMap::new(),
            instances: HashMap::new(),
            built: HashMap::new(),
            dirty: HashSet::new(),
            dirty_all: true,
            counts: HashMap::new(),
            totals: [0; 3],
            changes_made: 0,
            changes_published: 0,
            generation: 0,
            panicking: HashMap::new(),
            limits: crate::limits::Limits::default(),
            indexes: HashMap::new(),
            split_counters: crate::traffic::SplitCounters::default(),
        };
        let (failures, failure_receiver) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::new());
        let snapshot = build(&mut state, &failures, &metrics);
        Registry {
            state: Mutex::new(state),
            builder: Mutex::new(()),
            published: ArcSwap::from_pointee(snapshot),
            started: Instant::now(),
            changes: watch::channel(1).0,
            rebuild: Notify::new(),
            failures,
            failure_receiver: Mutex::new(Some(failure_receiver)),
            tracer: Arc::new(crate::trace::Tracer::new(metrics.trace())),
            metrics,
        }
    }

    /// Where sampled requests put their spans.
    pub fn tracer(&self) -> &Arc<crate::trace::Tracer> {
        &self.tracer
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
        self.lock()
            .instances
            .values()
            .flat_map(|m| m.values().map(|b| Arc::clone(&b.instance.state)))
            .collect()
    }

    /// The shared state of `service`'s instances.
    pub fn instances_of(&self, service: &ServiceName) -> Vec<Arc<InstanceState>> {
        self.lock()
            .instances
            .get(service)
            .map(|m| m.values().map(|b| Arc::clone(&b.instance.state)).collect())
            .unwrap_or_default()
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
        state.dirty_all = true;
        self.commit(state)
    }

    /// Whether the API may register `instance` in `service`: the service
    /// exists (or new ones are allowed) and the id is not proxy.yaml's.
    pub fn check_registration(
        &self,
        service: &ServiceName,
        instance: &InstanceEntry,
    ) -> Result<(), RegistryError> {
        Self::may_register(&self.lock(), service, instance.id())
    }

    fn may_register(
        state: &RegistryState,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<(), RegistryError> {
        let in_file = state.config.services.get(service);
        if in_file.is_none()
            && !state.config.registry.allow_new_services
            && !state.registered.contains_key(service)
        {
            return Err(RegistryError::NewServiceNotAllowed(service.clone()));
        }
        if in_file.is_some_and(|s| s.instances.iter().any(|i| &i.id == id)) {
            return Err(RegistryError::NotRegistered {
                service: service.clone(),
                id: id.clone(),
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
        registrations: BTreeMap<ServiceName, BTreeMap<InstanceId, InstanceEntry>>,
    ) {
        let mut state = self.lock();
        let current: BTreeMap<ServiceName, BTreeMap<InstanceId, InstanceEntry>> = state
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
        let changed: Vec<ServiceName> = current
            .keys()
            .chain(registrations.keys())
            .filter(|service| current.get(*service) != registrations.get(*service))
            .cloned()
            .collect();
        state.dirty.extend(changed);
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
        self.commit(state);
    }

    /// Adds or replaces one registration learnt from the fleet store.
    pub fn put_fleet_registration(&self, service: &ServiceName, instance: InstanceEntry) {
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
        put: Vec<(ServiceName, InstanceEntry)>,
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
                state.dirty.insert(service);
                changed = true;
            }
        }
        for (service, instance) in put {
            let instances = state.registered.entry(service.clone()).or_default();
            if instances
                .get(instance.id())
                .is_some_and(|r| r.instance == instance)
            {
                continue;
            }
            let id = instance.id().clone();
            let registered = Registered {
                instance,
                ttl: None,
                expires: None,
            };
            instances.insert(id, registered);
            state.dirty.insert(service);
            changed = true;
        }
        if changed {
            self.commit(state);
        }
    }

    /// Registers (or updates) an instance through the API. Returns the
    /// instance and whether it is new.
    pub fn register(
        &self,
        service: &ServiceName,
        instance: impl Into<InstanceEntry>,
        ttl: Option<Duration>,
    ) -> Result<bool, RegistryError> {
        let instance = instance.into();
        let mut state = self.lock();
        Self::may_register(&state, service, instance.id())?;
        let expires = ttl.map(|ttl| health::deadline_after(tokio::time::Instant::now(), ttl));
        let id = instance.id().clone();
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
        state.dirty.insert(service.clone());
        self.commit(state);
        Ok(created)
    }

    /// Every API (or fleet) registration as registered, by service.
    pub fn registrations(&self) -> Vec<(ServiceName, InstanceEntry)> {
        self.lock()
            .registered
            .iter()
            .flat_map(|(service, instances)| {
                instances
                    .values()
                    .map(move |r| (service.clone(), r.instance.clone()))
            })
            .collect()
    }

    /// Renews an instance's lease.
    pub fn heartbeat(&self, service: &ServiceName, id: &InstanceId) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let registered = Self::registered_mut(&mut state, service, id)?;
        let Some(ttl) = registered.ttl else {
            return Err(RegistryError::NoLease(id.clone()));
        };
        registered.expires = Some(health::deadline_after(tokio::time::Instant::now(), ttl));
        Ok(())
    }

    /// Removes an API-registered instance. Requests in flight on it finish;
    /// new ones go elsewhere.
    pub fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<(), RegistryError> {
        let mut state = self.lock();
        Self::registered_mut(&mut state, service, id)?;
        Self::remove_registered(&mut state, service, id);
        tracing::info!(service = %service, instance = %id, "instance deregistered through the API");
        state.dirty.insert(service.clone());
        self.commit(state);
        Ok(())
    }

    /// Takes an instance (from any source) out of rotation by hand, or
    /// puts it back. Setting the flag it already has changes nothing and
    /// builds nothing.
    pub fn set_drained(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        drained: bool,
    ) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let instance = state
            .instances
            .get(service)
            .and_then(|m| m.get(id))
            .map(|b| Arc::clone(&b.instance.state));
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
        {
            let mut health = instance.health();
            let before = health.state_word(tokio::time::Instant::now());
            if std::mem::replace(&mut health.drained, drained) == drained {
                return Ok(());
            }
            let after = health.state_word(tokio::time::Instant::now());
            let why = if drained {
                "drained through the API"
            } else {
                "undrained through the API"
            };
            health.history.record(before, after, why);
        }
        tracing::info!(service = %service, instance = %id, drained, "instance drain changed through the API");
        // A verdict changed: read them all again (as for health events).
        state.dirty_all = true;
        self.commit(state);
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
            state.dirty.insert(service.clone());
        }
        if !expired.is_empty() {
            self.commit(state);
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
    pub fn set_discovered(&self, service: &ServiceName, instances: Vec<InstanceEntry>) {
        let mut state = self.lock();
        if state.discovered.get(service) == Some(&instances) {
            return;
        }
        state.discovered.insert(service.clone(), instances);
        state.dirty.insert(service.clone());
        self.commit(state);
    }

    /// Replaces the resolver's answers for the host-name entries of
    /// `service`. Instances whose id and address come back unchanged are
    /// kept as they are (health, ejections, pools). A change of errors
    /// alone is recorded without a rebuild.
    pub fn set_answers(&self, service: &ServiceName, answers: BTreeMap<NameKey, NameAnswer>) {
        let mut state = self.lock();
        let same_addresses = state.answers.get(service).is_some_and(|current| {
            current.len() == answers.len()
                && current.iter().zip(&answers).all(|((ka, a), (kb, b))| {
                    ka == kb && a.host == b.host && a.addresses == b.addresses
                })
        });
        state.answers.insert(service.clone(), answers);
        if same_addresses {
            return;
        }
        state.dirty.insert(service.clone());
        self.commit(state);
    }

    /// The resolver's last answers for the host-name entries of `service`.
    pub fn answers(&self, service: &ServiceName) -> BTreeMap<NameKey, NameAnswer> {
        self.lock()
            .answers
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// The host-name entries of every service, from every source: the
    /// file's, the API's and Consul's (for a service that follows Consul).
    pub fn named_entries(&self) -> HashMap<ServiceName, Vec<(NameKey, NamedInstance)>> {
        let state = self.lock();
        let mut all: HashMap<ServiceName, Vec<(NameKey, NamedInstance)>> = HashMap::new();
        for name in service_names(&state) {
            let entries = named_of(&state, &name);
            if !entries.is_empty() {
                all.insert(
                    name,
                    entries.into_iter().map(|(k, e)| (k, e.clone())).collect(),
                );
            }
        }
        all
    }

    /// The host-name entries of `service` with their last answers.
    pub fn name_statuses(&self, service: &ServiceName) -> Vec<NameStatus> {
        let state = self.lock();
        let answers = state.answers.get(service);
        named_of(&state, service)
            .into_iter()
            .map(|(key, entry)| NameStatus {
                answer: answers
                    .and_then(|a| a.get(&key))
                    .filter(|a| a.host == entry.host)
                    .cloned(),
                key,
                entry: entry.clone(),
            })
            .collect()
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
            .is_some_and(|l| l.iter().any(|i| i.id() == id))
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
        // A name registered again later starts without the old answer.
        if let Some(answers) = state.answers.get_mut(service) {
            answers.remove(&NameKey {
                source: Source::Api,
                id: id.clone(),
            });
        }
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
        state.dirty_all = true;
        self.commit(state);
    }

    /// Publishes the change just made under `state`, and returns once a
    /// published snapshot holds it (so a caller reads its own write).
    /// Writers that arrive while a build runs queue up; the first of them
    /// builds for all, and the rest find their change already published.
    fn commit(&self, mut state: MutexGuard<'_, RegistryState>) -> Arc<Snapshot> {
        state.changes_made += 1;
        let mine = state.changes_made;
        drop(state);
        let _builder = lock(&self.builder);
        let mut state = self.lock();
        if state.changes_published >= mine {
            return self.snapshot();
        }
        let upto = state.changes_made;
        let snapshot = Arc::new(build(&mut state, &self.failures, &self.metrics));
        state.changes_published = upto;
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

/// The services the snapshot will hold, in order: the file's, then those
/// only registered through the API. (Consul data for a service that left
/// the file is dropped.)
fn service_names(state: &RegistryState) -> Vec<ServiceName> {
    let config = &state.config;
    config
        .services
        .keys()
        .chain(
            state
                .registered
                .keys()
                .filter(|name| !config.services.contains_key(*name)),
        )
        .cloned()
        .collect()
}

/// The host-name entries of `service` from every source, in order: the
/// file's, the API's, Consul's (while the service follows Consul).
fn named_of<'a>(state: &'a RegistryState, name: &ServiceName) -> Vec<(NameKey, &'a NamedInstance)> {
    let key = |source, entry: &NamedInstance| NameKey {
        source,
        id: entry.id.clone(),
    };
    let settings = state.config.services.get(name);
    let file = settings
        .into_iter()
        .flat_map(|s| s.named.iter().map(|e| (key(Source::File, e), e)));
    let api = state
        .registered
        .get(name)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|r| match &r.instance {
            InstanceEntry::Named(e) => Some((key(Source::Api, e), e)),
            InstanceEntry::Address(_) => None,
        });
    let consul = state
        .discovered
        .get(name)
        .filter(|_| settings.is_some_and(|s| s.discovery.is_some()))
        .into_iter()
        .flatten()
        .filter_map(|entry| match entry {
            InstanceEntry::Named(e) => Some((key(Source::Consul, e), e)),
            InstanceEntry::Address(_) => None,
        });
    file.chain(api).chain(consul).collect()
}

/// The instances of one source's entries: each address as it is, each
/// host name as its resolved addresses (none until it is resolved).
fn expand<'a>(
    entries: impl Iterator<Item = &'a InstanceEntry>,
    source: Source,
    answers: Option<&'a BTreeMap<NameKey, NameAnswer>>,
) -> impl Iterator<Item = (Cow<'a, InstanceConfig>, Source)> {
    entries.flat_map(
        move |entry| -> Box<dyn Iterator<Item = (Cow<'a, InstanceConfig>, Source)> + 'a> {
            match entry {
                InstanceEntry::Address(instance) => {
                    Box::new(std::iter::once((Cow::Borrowed(instance), source)))
                }
                InstanceEntry::Named(named) => Box::new(
                    resolved_addresses(answers, source, named)
                        .map(move |ip| (Cow::Owned(named.resolved(ip)), source)),
                ),
            }
        },
    )
}

/// The addresses last resolved for `named`, as `source` lists it.
fn resolved_addresses<'a>(
    answers: Option<&'a BTreeMap<NameKey, NameAnswer>>,
    source: Source,
    named: &'a NamedInstance,
) -> impl Iterator<Item = std::net::IpAddr> + 'a {
    answers
        .and_then(|a| {
            a.get(&NameKey {
                source,
                id: named.id.clone(),
            })
        })
        .filter(|answer| answer.host == named.host)
        .into_iter()
        .flat_map(|answer| answer.addresses.iter().copied())
}

/// One service's settings and its instances from every source, in order.
/// The file wins an id clash, then the API. Host names are expanded into
/// their resolved addresses.
fn plan_service<'a>(
    state: &'a RegistryState,
    name: &ServiceName,
) -> (
    Cow<'a, ServiceConfig>,
    Vec<(Cow<'a, InstanceConfig>, Source)>,
) {
    let settings = match state.config.services.get(name) {
        Some(settings) => Cow::Borrowed(settings),
        None => Cow::Owned(ServiceConfig::registered()),
    };
    let (file, named): (&'a [InstanceConfig], &'a [NamedInstance]) =
        match state.config.services.get(name) {
            Some(settings) => (&settings.instances, &settings.named),
            None => (&[], &[]),
        };
    let answers = state.answers.get(name);
    let api = state.registered.get(name);
    let consul = state
        .discovered
        .get(name)
        .filter(|_| settings.discovery.is_some());
    let sources = usize::from(!file.is_empty())
        + usize::from(!named.is_empty())
        + usize::from(api.is_some_and(|m| !m.is_empty()))
        + usize::from(consul.is_some_and(|l| !l.is_empty()));
    // Resolved names count as the file's: they are written there.
    let resolved = named.iter().flat_map(|entry| {
        resolved_addresses(answers, Source::File, entry)
            .map(move |ip| (Cow::Owned(entry.resolved(ip)), Source::File))
    });
    let all = file
        .iter()
        .map(|i| (Cow::Borrowed(i), Source::File))
        .chain(resolved)
        .chain(expand(
            api.into_iter()
                .flat_map(|m| m.values().map(|r| &r.instance)),
            Source::Api,
            answers,
        ))
        .chain(expand(
            consul.into_iter().flatten(),
            Source::Consul,
            answers,
        ));
    // Ids are unique within a source; only a mix needs the clash check.
    let instances = if sources <= 1 {
        all.collect()
    } else {
        let mut seen = HashSet::new();
        all.filter(|(instance, source)| {
            let first = seen.insert(instance.id.clone());
            if !first {
                tracing::warn!(service = %name, instance = %instance.id, source = source.as_str(), "instance id already taken by another source; ignored");
            }
            first
        })
        .collect()
    };
    (settings, instances)
}

/// Builds a snapshot of `state`: services marked dirty are rebuilt, the
/// rest are shared with the previous snapshot. Shared state is created for
/// new instances and dropped for instances that left.
fn build(
    state: &mut RegistryState,
    failures: &mpsc::UnboundedSender<FailureStreak>,
    metrics: &Metrics,
) -> Snapshot {
    let started = Instant::now();
    let startup = state.generation == 0;
    state.generation += 1;
    let generation = state.generation;
    let dirty_all = std::mem::take(&mut state.dirty_all);
    let dirty = std::mem::take(&mut state.dirty);
    let names = service_names(state);
    let mut services = Vec::with_capacity(names.len());
    let mut rebuilt = 0usize;
    for name in &names {
        let reuse = (!dirty_all && !dirty.contains(name))
            .then(|| state.built.get(name).cloned())
            .flatten();
        let service = match reuse {
            Some(service) => service,
            None => {
                rebuilt += 1;
                let service = Arc::new(build_service(
                    state, name, generation, startup, dirty_all, failures, metrics,
                ));
                state.built.insert(name.clone(), Arc::clone(&service));
                service
            }
        };
        services.push(service);
    }
    // Services that left: only a dirty one can.
    if state.built.len() > names.len() {
        let kept: HashSet<&ServiceName> = names.iter().collect();
        let gone: Vec<ServiceName> = state
            .built
            .keys()
            .filter(|name| !kept.contains(name))
            .cloned()
            .collect();
        for name in gone {
            state.built.remove(&name);
            state.panicking.remove(&name);
            state.limits.remove_breaker(name.as_str());
            state.indexes.remove(&name);
            if let Some(counts) = state.counts.remove(&name) {
                for (total, count) in state.totals.iter_mut().zip(counts) {
                    *total = total.saturating_sub(count);
                }
            }
            for id in state.instances.remove(&name).unwrap_or_default().keys() {
                metrics.remove_instance(name.as_str(), id.as_str());
            }
        }
    }
    for (source, total) in [Source::File, Source::Api, Source::Consul]
        .into_iter()
        .zip(state.totals)
    {
        metrics.set_registry_size(source.as_str(), total);
    }
    let config = Arc::clone(&state.config);
    let snapshot = Snapshot::assemble(
        generation,
        &config,
        services,
        &mut state.limits,
        &mut state.split_counters,
        metrics,
    );
    tracing::debug!(
        generation,
        services = names.len(),
        rebuilt,
        build_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "snapshot built"
    );
    snapshot
}

/// Rebuilds one service: instances whose config is unchanged are shared
/// with the previous snapshot, so the cost is a pass over the instances,
/// not a copy of each.
fn build_service(
    state: &mut RegistryState,
    name: &ServiceName,
    generation: u64,
    startup: bool,
    full: bool,
    failures: &mpsc::UnboundedSender<FailureStreak>,
    metrics: &Metrics,
) -> ServiceSnapshot {
    let now = tokio::time::Instant::now();
    let workers = state.config.workers;
    let mut built = state.instances.remove(name).unwrap_or_default();
    // The service as last built: instance lists come out in the same order
    // every time, so most instances are found by walking it alongside.
    let previous = state.built.get(name).cloned();
    let (previous_list, previous_verdicts) = match &previous {
        Some(p) => (&p.all_instances[..], &p.verdicts[..]),
        None => (&[][..], &[][..]),
    };
    let mut cursor = 0usize;
    // Previous instances the walk stepped over: gone, or found by id below.
    let mut skipped: Vec<&Arc<Instance>> = Vec::new();
    // Services only registered through the API have the default breaker.
    let breaker_config = state
        .config
        .services
        .get(name)
        .map_or_else(Default::default, |s| s.circuit_breaker);
    let breaker = state
        .limits
        .breaker(name.as_str(), &breaker_config, metrics);
    let (settings, planned) = plan_service(state, name);
    let service: &ServiceConfig = &settings;
    let upstream_settings = upstream::Settings {
        protocol: service.protocol,
        tls: service.tls.clone(),
        max_connections: service.max_connections_per_instance,
        service: Some(upstream::SharedServiceConnections(Arc::clone(
            breaker.connections(),
        ))),
    };
    let mut counts = [0usize; 3];
    let mut all_instances = Vec::with_capacity(planned.len());
    // Instances whose verdict was read now (their metric may have moved).
    let mut fresh = Vec::new();
    let mut fingerprint = 0u64;
    let mut verdicts = Vec::with_capacity(planned.len());
    for (config, source) in planned {
        let config: &InstanceConfig = &config;
        // The fast way (not for full builds, which read every verdict):
        // the next previous instance, or the one after it (one removed),
        // is this one unchanged.
        if !full {
            let unchanged = |i: usize| {
                previous_list
                    .get(i)
                    .filter(|p| p.id == config.id && p.is_built_from(config))
            };
            let found = match unchanged(cursor) {
                Some(p) => Some((p, cursor)),
                None => unchanged(cursor + 1).map(|p| (p, cursor + 1)),
            };
            if let Some((instance, at)) = found {
                if at > cursor {
                    skipped.extend(previous_list.get(cursor));
                }
                cursor = at + 1;
                if let Some(verdict) = previous_verdicts.get(at).copied() {
                    verdicts.push(verdict);
                    fingerprint = snapshot::mix(fingerprint, verdict.1);
                    counts[source as usize] += 1;
                    all_instances.push(Arc::clone(instance));
                    continue;
                }
            }
        }
        let existing = built
            .get_mut(&config.id)
            .filter(|b| b.instance.address == config.address);
        let entry = match existing {
            Some(entry) => {
                entry.generation = generation;
                if !entry.instance.is_built_from(config) {
                    let state = Arc::clone(&entry.instance.state);
                    entry.instance = Arc::new(Instance::new(name, config, state));
                    entry.verdict = None;
                }
                entry
            }
            None => {
                let key = InstanceKey {
                    service: name.clone(),
                    id: config.id.clone(),
                    address: config.address,
                };
                let active = service.health_check.as_ref().map(|check| {
                    health::ActiveHealth::new(check.initial == InitialHealth::Healthy, startup)
                });
                let health = InstanceHealth {
                    active,
                    ..InstanceHealth::default()
                };
                let shared = InstanceState::new(key, source, health, metrics, workers);
                let built_instance = Built {
                    instance: Arc::new(Instance::new(name, config, shared)),
                    generation,
                    verdict: None,
                };
                // An id that moved address replaces its entry (same labels).
                built
                    .entry(config.id.clone())
                    .insert_entry(built_instance)
                    .into_mut()
            }
        };
        // Health and settings change only through full builds (config,
        // health events, drains); a build for a registration elsewhere in
        // the service reuses the verdict read last time.
        let verdict = match entry.verdict {
            Some(verdict) if !full => verdict,
            _ => {
                let shared = &entry.instance.state;
                let verdict = {
                    let mut health = shared.health();
                    match (&service.health_check, &health.active) {
                        // Checks newly configured: a serving instance stays
                        // in until the checks say otherwise.
                        (Some(_), None) => {
                            health.active = Some(health::ActiveHealth::new(true, false))
                        }
                        (None, Some(_)) => health.active = None,
                        _ => {}
                    }
                    (
                        health.takes_traffic(now),
                        entry.instance.watch_hash(health.state_word(now)),
                    )
                };
                if service.outlier_detection.is_none() {
                    shared.stats.reset_failures();
                }
                if let Err(error) = shared.pool.configure(&upstream_settings) {
                    tracing::error!(service = %name, instance = %config.id, %error, "cannot set up TLS to the instance");
                }
                entry.verdict = Some(verdict);
                fresh.push(all_instances.len());
                verdict
            }
        };
        verdicts.push(verdict);
        fingerprint = snapshot::mix(fingerprint, verdict.1);
        // Same order as `totals`: file, api, consul.
        counts[source as usize] += 1;
        all_instances.push(Arc::clone(&entry.instance));
    }
    // Instances that left. In a full build every instance kept or created
    // carries this generation. Otherwise only the previous instances the walk
    // did not take can have left, unless found by id (then stamped).
    skipped.extend(previous_list.get(cursor..).unwrap_or_default());
    if !full {
        for gone in skipped {
            let stale = built
                .get(&gone.id)
                .is_some_and(|b| b.generation != generation && Arc::ptr_eq(&b.instance, gone));
            if stale {
                built.remove(&gone.id);
                metrics.remove_instance(name.as_str(), gone.id.as_str());
            }
        }
    }
    if full && built.len() != all_instances.len() {
        built.retain(|id, entry| {
            let stays = entry.generation == generation;
            if !stays {
                metrics.remove_instance(name.as_str(), id.as_str());
            }
            stays
        });
    }
    let fingerprint = fingerprint ^ u64::try_from(all_instances.len()).unwrap_or(u64::MAX);
    let snapshot = ServiceSnapshot::build(
        name,
        service,
        all_instances,
        verdicts,
        failures.clone(),
        metrics,
        breaker,
    );
    drop(settings);
    drop(previous);
    state.instances.insert(name.clone(), built);
    let old = state.counts.insert(name.clone(), counts).unwrap_or([0; 3]);
    for ((total, new), old) in state.totals.iter_mut().zip(counts).zip(old) {
        *total = total.saturating_sub(old).saturating_add(new);
    }

    let was = state
        .panicking
        .insert(name.clone(), snapshot.panic)
        .unwrap_or(false);
    if snapshot.panic != was {
        if snapshot.panic {
            tracing::warn!(service = %name, healthy = snapshot.healthy_count, total = snapshot.all_instances.len(), "too few healthy instances: routing to all of them (panic threshold)");
        } else {
            tracing::info!(service = %name, "enough healthy instances again: leaving panic routing");
        }
    }
    // Rotation moves for every instance only with panic routing; otherwise
    // only the instances whose verdict was just read can have moved.
    if full || snapshot.panic != was {
        for (instance, in_rotation) in snapshot.all_instances.iter().zip(&snapshot.in_rotation) {
            instance.state.metrics.set_healthy(*in_rotation);
        }
    } else {
        for i in fresh {
            if let (Some(instance), Some(in_rotation)) =
                (snapshot.all_instances.get(i), snapshot.in_rotation.get(i))
            {
                instance.state.metrics.set_healthy(*in_rotation);
            }
        }
    }
    let index = match state.indexes.get(name) {
        Some(&(index, previous)) if previous == fingerprint => index,
        _ => generation,
    };
    state.indexes.insert(name.clone(), (index, fingerprint));
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let text = "listeners:\n  - address: 127.0.0.1:0\nservices:\n  a: {instances: [{address: \"127.0.0.1:9001\"}]}\n  b: {instances: []}\n";
        Registry::new(crate::config::parse(text).unwrap())
    }

    fn instance(port: u16) -> InstanceConfig {
        InstanceConfig {
            id: InstanceId::from(format!("i{port}").as_str()),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: std::num::NonZeroU32::MIN,
            tags: vec![],
            metadata: BTreeMap::new(),
            version: None,
        }
    }

    #[test]
    fn a_registration_rebuilds_only_its_service() {
        let registry = registry();
        let b = ServiceName::from("b");
        registry.register(&b, instance(1), None).unwrap();
        let before = registry.snapshot();
        registry.register(&b, instance(2), None).unwrap();
        let after = registry.snapshot();
        assert!(
            Arc::ptr_eq(&before.services[0], &after.services[0]),
            "a is shared"
        );
        assert!(!Arc::ptr_eq(&before.services[1], &after.services[1]));
        let ids: Vec<&str> = after.services[1]
            .all_instances
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, ["i1", "i2"]);
        assert!(
            Arc::ptr_eq(
                &before.services[1].all_instances[0],
                &after.services[1].all_instances[0]
            ),
            "an unchanged instance is shared, not copied"
        );
        registry.deregister(&b, &InstanceId::from("i1")).unwrap();
        let last = registry.snapshot();
        let ids: Vec<&str> = last.services[1]
            .all_instances
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, ["i2"]);
        assert_eq!(
            registry.instances_of(&b).len(),
            1,
            "shared state of i1 is gone"
        );
        assert!(Arc::ptr_eq(&before.services[0], &last.services[0]));
        // A config change rebuilds every service but keeps their instances.
        registry.apply_config((*registry.config()).clone());
        let reloaded = registry.snapshot();
        assert!(!Arc::ptr_eq(&last.services[0], &reloaded.services[0]));
        assert!(Arc::ptr_eq(
            &last.services[0].all_instances[0],
            &reloaded.services[0].all_instances[0]
        ));
    }

    #[test]
    fn removals_and_changes_anywhere_in_a_service_are_built_right() {
        let registry = registry();
        let b = ServiceName::from("b");
        for port in 1..=5 {
            registry.register(&b, instance(port), None).unwrap();
        }
        let ids = |registry: &Registry| -> Vec<String> {
            registry.snapshot().services[1]
                .all_instances
                .iter()
                .map(|i| i.id.to_string())
                .collect()
        };
        let before = registry.snapshot();
        registry.deregister(&b, &InstanceId::from("i1")).unwrap();
        registry.deregister(&b, &InstanceId::from("i3")).unwrap();
        assert_eq!(ids(&registry), ["i2", "i4", "i5"]);
        assert_eq!(registry.instances_of(&b).len(), 3);
        // A changed weight is a new instance over the same shared state.
        let mut heavier = instance(4);
        heavier.weight = std::num::NonZeroU32::new(3).unwrap();
        registry.register(&b, heavier, None).unwrap();
        let after = registry.snapshot();
        let find = |s: &Snapshot, id: &str| {
            Arc::clone(
                s.services[1]
                    .all_instances
                    .iter()
                    .find(|i| i.id.as_str() == id)
                    .unwrap(),
            )
        };
        assert_eq!(find(&after, "i4").weight.get(), 3);
        assert!(!Arc::ptr_eq(&find(&before, "i4"), &find(&after, "i4")));
        assert!(Arc::ptr_eq(
            &find(&before, "i4").state,
            &find(&after, "i4").state
        ));
        assert!(Arc::ptr_eq(&find(&before, "i5"), &find(&after, "i5")));
        // Back at the front, and the last one gone.
        registry.register(&b, instance(1), None).unwrap();
        registry.deregister(&b, &InstanceId::from("i5")).unwrap();
        assert_eq!(ids(&registry), ["i1", "i2", "i4"]);
        assert_eq!(registry.instances_of(&b).len(), 3);
        // A full rebuild agrees with the incremental ones.
        registry.apply_config((*registry.config()).clone());
        assert_eq!(ids(&registry), ["i1", "i2", "i4"]);
        assert_eq!(registry.instances_of(&b).len(), 3);
        assert!(Arc::ptr_eq(
            &find(&after, "i2"),
            &find(&registry.snapshot(), "i2")
        ));
    }

    #[test]
    fn a_drain_that_changes_nothing_builds_nothing() {
        let registry = registry();
        let (a, id) = (ServiceName::from("a"), InstanceId::from("127.0.0.1:9001"));
        registry.set_drained(&a, &id, true).unwrap();
        let drained = registry.snapshot();
        assert!(drained.services[0].instances.is_empty());
        registry.set_drained(&a, &id, true).unwrap();
        assert_eq!(registry.snapshot().generation, drained.generation);
        registry.set_drained(&a, &id, false).unwrap();
        assert_eq!(registry.snapshot().services[0].instances.len(), 1);
        assert!(registry
            .set_drained(&a, &InstanceId::from("x"), true)
            .is_err());
    }

    #[test]
    fn every_writer_reads_its_own_write_while_builds_coalesce() {
        let registry = Arc::new(registry());
        let b = ServiceName::from("b");
        let threads: Vec<_> = (0..8u16)
            .map(|t| {
                let (registry, b) = (Arc::clone(&registry), b.clone());
                std::thread::spawn(move || {
                    for i in 0..50u16 {
                        let config = instance(10_000 + t * 100 + i);
                        let id = config.id.clone();
                        registry.register(&b, config, None).unwrap();
                        let snapshot = registry.snapshot();
                        assert!(
                            snapshot.services[1]
                                .all_instances
                                .iter()
                                .any(|x| x.id == id),
                            "{id} is published when register returns"
                        );
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.services[1].all_instances.len(), 400);
        assert!(snapshot.generation <= 401, "at most one build per change");
    }
}
