//! Fleet mode: several nodes share one config, one history and one
//! registry through etcd.
//!
//! Like `discovery`, this is a source: it reads etcd and writes the
//! registry, and hands new config versions to the reload pipeline through
//! a channel ([`Fleet::versions`]); nothing on the request path knows it
//! exists. It is also a store: the fleet's config history and its
//! registrations live in etcd (see [`store`] for the keys).
//!
//! The loop: read everything at one revision, apply it, then watch from the
//! next revision. A lost connection keeps the last state serving, marks the
//! node stale and reconnects with jittered backoff (one log line per
//! outage); a watch cancelled by compaction, or a revision lower than one
//! already seen (etcd restored or wiped), starts over with a full read, so
//! no event is silently missed. Every applied version and registry change
//! is also written to a snapshot file, from which a node boots when etcd
//! cannot be reached.

pub mod store;
pub mod traffic;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{EventType, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::history::{self, ChangeSource, ConfigVersion};
use crate::config::{FleetConfig, InstanceConfig, InstanceId, ServiceName};
use crate::registry::Registry;
pub use store::{FleetError, PushOutcome, Store, StoredGuard, StoredVersion};
use store::{FleetState, StoredRegistration};

/// How often the node asks etcd for watch progress; a watch silent for
/// three of these is taken as lost.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// The node status key's lease: a node that stops leaves the list this
/// long after.
const NODE_LEASE_TTL: i64 = 10;
/// The node status value is rewritten at least this often.
const STATUS_REFRESH: Duration = Duration::from_secs(30);
/// While a guard runs anywhere in the fleet, the status value (with the
/// recent traffic the guard judges) is rewritten this often.
const GUARD_REFRESH: Duration = Duration::from_secs(1);
/// A running guard's record seen by the watch keeps the status refresh
/// fast for this long (the judging node rewrites it every few seconds).
const GUARD_NOTICE: Duration = Duration::from_secs(10);
/// Reconnect backoff bounds (each wait is randomised between half and all
/// of the current step, so nodes do not reconnect in lock-step).
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Most watch events applied in one registry publish.
const MAX_BATCH: usize = 10_000;
/// The snapshot file in the state directory.
const SNAPSHOT_FILE: &str = "fleet-snapshot.json";

/// A version this node could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The version.
    pub version: ConfigVersion,
    /// Why, in words.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
}

/// One node's view, as published in its status key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// The fleet version it serves.
    pub applied_version: Option<ConfigVersion>,
    /// The last version it refused, if that is newer than the applied one.
    pub refused: Option<Refusal>,
    /// When etcd last answered (RFC 3339).
    pub last_contact: Option<String>,
    /// The etcd revision it has seen.
    pub revision: i64,
    /// It cannot confirm it has the fleet's latest state.
    pub stale: bool,
    /// Full re-reads after the watch history was compacted away or the
    /// etcd revision went backwards.
    #[serde(default)]
    pub resyncs: u64,
    /// Its admin API address.
    pub admin_address: Option<String>,
    /// When this record was written (RFC 3339).
    pub updated_at: String,
    /// A token random per process: two running processes with the same
    /// node name write different tokens under one key, which is how each
    /// notices the other.
    #[serde(default)]
    pub process: String,
    /// Set when another running process publishes under this node's name
    /// (node names must be unique in a fleet): what is known about it.
    #[serde(default)]
    pub name_conflict: Option<String>,
    /// Its traffic over the last [`TRAFFIC_SECONDS`], all services first,
    /// then each service (from the stats window).
    #[serde(default)]
    pub traffic: Vec<TrafficFigures>,
    /// Its traffic second by second over the last
    /// [`traffic::RECENT_SECONDS`], with latency histograms: what a fleet
    /// guard merges.
    #[serde(default)]
    pub recent: Option<traffic::RecentTraffic>,
}

/// The window of traffic a node publishes with its status.
pub const TRAFFIC_SECONDS: u64 = 60;

/// One scope's traffic over the published window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficFigures {
    /// `all`, or a service name.
    pub scope: String,
    /// Requests finished.
    pub requests: u64,
    /// Of those, 5xx answers.
    pub errors: u64,
    /// Median latency in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: Option<f64>,
}

impl TrafficFigures {
    fn of(scope: &str, stats: crate::stats_window::WindowStats) -> TrafficFigures {
        let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        TrafficFigures {
            scope: scope.to_string(),
            requests: stats.requests,
            errors: stats.errors,
            p50_ms: ms(stats.p50),
            p99_ms: ms(stats.p99),
        }
    }
}

/// What the node writes to disk after each applied version, to boot from
/// when etcd is down.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The version serving.
    pub version: Option<StoredVersion>,
    /// Registrations by service.
    pub registrations: BTreeMap<String, Vec<StoredRegistration>>,
    /// The etcd revision the snapshot reflects.
    pub revision: i64,
}

impl Snapshot {
    /// Reads the snapshot in `dir`; None when there is none or it is
    /// unreadable (logged).
    pub fn load(dir: &Path) -> Option<Snapshot> {
        let path = dir.join(SNAPSHOT_FILE);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<Snapshot>(&bytes) {
            Ok(snapshot) => {
                if let Some(version) = &snapshot.version {
                    if history::sha256_hex(&version.config) != version.info.sha256 {
                        tracing::error!(file = %path.display(), "fleet snapshot does not match its sha256; ignoring it");
                        return None;
                    }
                }
                Some(snapshot)
            }
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "fleet snapshot unreadable; ignoring it");
                None
            }
        }
    }

    /// The registrations, validated.
    pub fn instances(&self) -> BTreeMap<ServiceName, BTreeMap<InstanceId, InstanceConfig>> {
        let mut all: BTreeMap<ServiceName, BTreeMap<InstanceId, InstanceConfig>> = BTreeMap::new();
        for (service, list) in &self.registrations {
            for stored in list {
                if let Ok(instance) = stored.instance() {
                    all.entry(ServiceName::from(service.as_str()))
                        .or_default()
                        .insert(instance.id.clone(), instance);
                }
            }
        }
        all
    }
}

struct Live {
    status: NodeStatus,
    last_event: Instant,
    /// The sha256 of the last version handed to the pipeline.
    delivered: Option<String>,
    drained: HashSet<(ServiceName, InstanceId)>,
    /// The version serving, for the snapshot.
    serving: Option<StoredVersion>,
    /// Until when the status is refreshed every second (a guard runs).
    closely_until: Option<Instant>,
    /// A guard another node runs: its node, version, and when its record
    /// was last rewritten.
    guard_elsewhere: Option<(String, ConfigVersion, Instant)>,
}

/// This node's membership of a fleet.
pub struct Fleet {
    config: FleetConfig,
    registry: Arc<Registry>,
    state_dir: PathBuf,
    retention: usize,
    store: tokio::sync::Mutex<Option<Store>>,
    live: Mutex<Live>,
    versions: watch::Sender<Option<Arc<StoredVersion>>>,
    status_changed: Notify,
    snapshot_wanted: Notify,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Fleet {
    /// A fleet member for `config`; the snapshot and other node state go
    /// in `state_dir`. Nothing talks to etcd until [`Fleet::spawn`] or a
    /// call that needs it.
    pub fn new(
        config: FleetConfig,
        registry: Arc<Registry>,
        state_dir: PathBuf,
        retention: usize,
    ) -> Arc<Fleet> {
        let status = NodeStatus {
            node: config.node.clone(),
            stale: true,
            updated_at: now(),
            process: format!("{:016x}", fastrand::u64(..)),
            ..NodeStatus::default()
        };
        registry.metrics().fleet().stale.set(1);
        Arc::new(Fleet {
            config,
            registry,
            state_dir,
            retention,
            store: tokio::sync::Mutex::new(None),
            live: Mutex::new(Live {
                status,
                last_event: Instant::now(),
                delivered: None,
                drained: HashSet::new(),
                serving: None,
                closely_until: None,
                guard_elsewhere: None,
            }),
            versions: watch::channel(None).0,
            status_changed: Notify::new(),
            snapshot_wanted: Notify::new(),
        })
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// New current versions, for the reload pipeline.
    pub fn versions(&self) -> watch::Receiver<Option<Arc<StoredVersion>>> {
        self.versions.subscribe()
    }

    /// This node's status as it knows it.
    pub fn status(&self) -> NodeStatus {
        let mut status = self.lock().status.clone();
        status.updated_at = now();
        let window = self.registry.metrics().window();
        let to = crate::stats_window::unix_now() + 1;
        let from = to.saturating_sub(TRAFFIC_SECONDS);
        status.traffic = std::iter::once(TrafficFigures::of("all", window.window(None, from, to)))
            .chain(
                window
                    .services()
                    .iter()
                    .map(|s| TrafficFigures::of(s, window.window(Some(s), from, to))),
            )
            .collect();
        status.recent = Some(traffic::recent(window, to - 1));
        status
    }

    /// Refreshes the status (and its recent traffic) every second for the
    /// next `period` (None: back to the normal pace at once).
    pub fn watch_closely(&self, period: Option<Duration>) {
        let until = period.map(|p| Instant::now() + p);
        let faster = {
            let mut live = self.lock();
            let was = live.closely_until.is_some_and(|u| u > Instant::now());
            live.closely_until = until;
            !was && until.is_some()
        };
        if faster {
            self.status_changed.notify_one();
        }
    }

    /// The node and version of a guard running on another node, as its
    /// record says (a record not rewritten for a while belongs to a node
    /// that stopped: no longer counted).
    pub fn guard_elsewhere(&self) -> Option<(String, ConfigVersion)> {
        let live = self.lock();
        let (node, version, seen) = live.guard_elsewhere.as_ref()?;
        (seen.elapsed() < GUARD_NOTICE).then(|| (node.clone(), *version))
    }

    fn closely(&self) -> bool {
        self.lock()
            .closely_until
            .is_some_and(|until| until > Instant::now())
    }

    /// The connection, made on first use.
    pub async fn store(&self) -> Result<Store, FleetError> {
        let mut store = self.store.lock().await;
        if let Some(store) = store.as_ref() {
            return Ok(store.clone());
        }
        let connected = store::connect(&self.config).await?;
        *store = Some(connected.clone());
        Ok(connected)
    }

    /// Counts a failed etcd call (for callers of [`Fleet::store`]).
    pub fn etcd_error(&self) {
        self.registry.metrics().fleet().etcd_errors.inc();
    }

    /// Notes what this node serves when it starts (from etcd, from its
    /// snapshot, or from its own file when the fleet has no version yet).
    pub fn started_with(&self, version: Option<StoredVersion>, stale: bool) {
        let mut live = self.lock();
        live.delivered = version.as_ref().map(|v| v.info.sha256.clone());
        live.status.applied_version = version.as_ref().map(|v| v.info.version);
        live.status.stale = stale;
        if let Some(version) = &version {
            self.registry
                .metrics()
                .fleet()
                .applied_version
                .set(i64::try_from(version.info.version.0).unwrap_or(i64::MAX));
        }
        self.registry.metrics().fleet().stale.set(i64::from(stale));
        live.serving = version;
    }

    /// Sets the admin address shown in the status.
    pub fn set_admin_address(&self, address: std::net::SocketAddr) {
        self.lock().status.admin_address = Some(address.to_string());
    }

    /// The pipeline applied `version`.
    pub fn applied(&self, version: &StoredVersion) {
        {
            let mut live = self.lock();
            live.status.applied_version = Some(version.info.version);
            if live
                .status
                .refused
                .as_ref()
                .is_some_and(|r| r.version <= version.info.version)
            {
                live.status.refused = None;
            }
            live.serving = Some(version.clone());
        }
        self.registry
            .metrics()
            .fleet()
            .applied_version
            .set(i64::try_from(version.info.version.0).unwrap_or(i64::MAX));
        self.status_changed.notify_one();
        self.snapshot_wanted.notify_one();
    }

    /// The pipeline could not apply `version`: the node keeps serving what
    /// it has and says so in its status (like an xDS NACK).
    pub fn refused(&self, version: ConfigVersion, reason: String) {
        tracing::error!(%version, node = %self.config.node, "fleet config version refused on this node; the running config stays: {}", crate::config::one_line(&reason));
        self.registry.metrics().fleet().refused.inc();
        self.lock().status.refused = Some(Refusal {
            version,
            reason,
            at: now(),
        });
        self.status_changed.notify_one();
    }

    /// Pushes `text` (validated by the caller) as the next version.
    pub async fn push(
        &self,
        text: &str,
        source: ChangeSource,
        cause: &str,
        rolled_back_from: Option<ConfigVersion>,
        base: Option<ConfigVersion>,
    ) -> Result<PushOutcome, FleetError> {
        let store = self.store().await?;
        let result = store
            .push(text, source, cause, rolled_back_from, base, self.retention)
            .await;
        self.count(&result);
        result
    }

    fn count<T>(&self, result: &Result<T, FleetError>) {
        if matches!(result, Err(FleetError::Etcd(_) | FleetError::Timeout(_))) {
            self.etcd_error();
        }
    }

    /// Writes a registration to etcd (and to this node's registry at once;
    /// the watch brings it to every other node).
    pub async fn register(
        &self,
        service: &ServiceName,
        instance: InstanceConfig,
        ttl: Option<Duration>,
    ) -> Result<bool, FleetError> {
        let store = self.store().await?;
        let result = store.register(service, &instance, ttl).await;
        self.count(&result);
        let created = result?;
        self.registry.put_fleet_registration(service, instance);
        self.apply_drains();
        Ok(created)
    }

    /// Renews a registration's lease. `Ok(None)`: no such registration;
    /// `Ok(Some(false))`: it has no lease.
    pub async fn heartbeat(
        &self,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<Option<bool>, FleetError> {
        let store = self.store().await?;
        let lease = store.registration_lease(service, id).await;
        self.count(&lease);
        match lease? {
            None => Ok(None),
            Some(0) => Ok(Some(false)),
            Some(lease) => {
                let renewed = store.renew(lease).await;
                self.count(&renewed);
                Ok(renewed?.then_some(true))
            }
        }
    }

    /// Deletes a registration everywhere; false if there was none.
    pub async fn deregister(
        &self,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<bool, FleetError> {
        let store = self.store().await?;
        let result = store.deregister(service, id).await;
        self.count(&result);
        let deleted = result?;
        self.registry.remove_fleet_registration(service, id);
        Ok(deleted)
    }

    /// Sets the shared drain flag of an instance.
    pub async fn set_drained(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        drained: bool,
    ) -> Result<(), FleetError> {
        let store = self.store().await?;
        let result = store.set_drained(service, id, drained).await;
        self.count(&result);
        result?;
        self.mark_drained(service, id, drained);
        Ok(())
    }

    /// Every node's published status (this node's own live view replaces
    /// its published one), sorted by name. When etcd cannot be read, only
    /// this node is listed, with the error.
    pub async fn nodes(&self) -> (Vec<serde_json::Value>, Option<String>) {
        let own = serde_json::to_value(self.status()).unwrap_or_default();
        let read = match self.store().await {
            Ok(store) => store.nodes().await,
            Err(error) => Err(error),
        };
        self.count(&read);
        match read {
            Ok(mut nodes) => {
                nodes.retain(|n| n["node"].as_str() != Some(self.node()));
                nodes.push(own);
                nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
                (nodes, None)
            }
            Err(error) => (vec![own], Some(error.to_string())),
        }
    }

    /// Starts the watch, the status publisher and the snapshot writer.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let clock = Arc::clone(self);
        vec![
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let silent = clock.lock().last_event.elapsed().as_secs();
                    let gauge = &clock.registry.metrics().fleet().seconds_since_last_event;
                    gauge.set(i64::try_from(silent).unwrap_or(i64::MAX));
                }
            }),
            tokio::spawn(Arc::clone(self).follow()),
            tokio::spawn(Arc::clone(self).publish_status()),
            tokio::spawn(Arc::clone(self).write_snapshots()),
        ]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn contact(&self, revision: i64) {
        let mut live = self.lock();
        live.last_event = Instant::now();
        live.status.last_contact = Some(now());
        live.status.revision = live.status.revision.max(revision);
        self.registry
            .metrics()
            .fleet()
            .seconds_since_last_event
            .set(0);
    }

    fn set_stale(&self, stale: bool) {
        let changed = {
            let mut live = self.lock();
            let changed = live.status.stale != stale;
            live.status.stale = stale;
            changed
        };
        self.registry.metrics().fleet().stale.set(i64::from(stale));
        if changed {
            self.status_changed.notify_one();
        }
    }

    fn mark_drained(&self, service: &ServiceName, id: &InstanceId, drained: bool) {
        let key = (service.clone(), id.clone());
        let mut live = self.lock();
        if drained {
            live.drained.insert(key);
        } else {
            live.drained.remove(&key);
        }
        drop(live);
        // The instance may not be known here (yet): the flag is kept and
        // applied when it appears.
        let _ = self.registry.set_drained(service, id, drained);
    }

    /// Sets the shared drain flags on the instances this node knows (a
    /// flag an instance has already changes nothing).
    fn apply_drains(&self) {
        let drained: Vec<(ServiceName, InstanceId)> = self.lock().drained.iter().cloned().collect();
        for (service, id) in drained {
            let _ = self.registry.set_drained(&service, &id, true);
        }
    }

    /// Applies a full read: registrations replaced, drain flags set, the
    /// current version handed to the pipeline if it is new to this node.
    fn apply_state(&self, state: FleetState) {
        for (key, problem) in &state.refused {
            tracing::warn!(key = %key, "value in etcd refused: {problem}");
            self.registry.metrics().fleet().refused.inc();
        }
        // The read's revision is the one seen now, even if lower than before
        // (a revision that went backwards was logged by the resync that led
        // here).
        let old = {
            let mut live = self.lock();
            live.status.revision = state.revision;
            std::mem::replace(&mut live.drained, state.drained.iter().cloned().collect())
        };
        for (service, id) in old {
            if !state.drained.contains(&(service.clone(), id.clone())) {
                let _ = self.registry.set_drained(&service, &id, false);
            }
        }
        self.registry
            .replace_fleet_registrations(state.registrations);
        self.apply_drains();
        self.snapshot_wanted.notify_one();
        if let Some(current) = state.current {
            self.deliver(current);
        }
    }

    fn deliver(&self, version: StoredVersion) {
        let mut live = self.lock();
        if live.delivered.as_deref() == Some(version.info.sha256.as_str()) {
            return;
        }
        live.delivered = Some(version.info.sha256.clone());
        drop(live);
        self.versions.send_replace(Some(Arc::new(version)));
    }

    /// Reads, applies and watches, forever.
    async fn follow(self: Arc<Self>) {
        let mut step = BACKOFF_MIN;
        let mut outage: Option<Instant> = None;
        // After a lost connection the watch resumes where it was; a full
        // read is only needed when that history is gone.
        let mut resume: Option<i64> = None;
        loop {
            let ended = self
                .read_and_watch(&mut resume, &mut outage, &mut step)
                .await;
            match ended {
                WatchEnd::Resync(reason) => {
                    resume = None;
                    self.registry.metrics().fleet().watch_restarts.inc();
                    self.lock().status.resyncs += 1;
                    tracing::warn!("fleet watch restarts with a full read: {reason}");
                }
                WatchEnd::Lost(error) => {
                    self.etcd_error();
                    self.set_stale(true);
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        tracing::warn!(%error, "etcd unreachable; serving the last known fleet state, reconnecting in the background");
                    } else {
                        tracing::debug!(%error, "etcd still unreachable");
                    }
                    let wait = step.mul_f64(0.5 + fastrand::f64() * 0.5);
                    step = (step * 2).min(BACKOFF_MAX);
                    tokio::time::sleep(wait).await;
                    self.registry.metrics().fleet().watch_restarts.inc();
                }
            }
        }
    }

    async fn read_and_watch(
        &self,
        resume: &mut Option<i64>,
        outage: &mut Option<Instant>,
        step: &mut Duration,
    ) -> WatchEnd {
        let store = match self.store().await {
            Ok(store) => store,
            Err(error) => return WatchEnd::Lost(error.to_string()),
        };
        let revision = match *resume {
            Some(seen) => {
                // Resuming: etcd must not have gone back in time meanwhile
                // (restored from a backup, or wiped), or the watch would
                // wait for revisions that already happened differently.
                let now = match store.revision().await {
                    Ok(now) => now,
                    Err(error) => return WatchEnd::Lost(error.to_string()),
                };
                if now < seen {
                    return WatchEnd::Resync(format!(
                        "etcd revision went backwards ({now} after {seen}; restored or wiped)"
                    ));
                }
                seen
            }
            None => {
                let state = match store.read_all().await {
                    Ok(state) => state,
                    Err(error) => return WatchEnd::Lost(error.to_string()),
                };
                let revision = state.revision;
                self.apply_state(state);
                revision
            }
        };
        *resume = Some(revision);
        self.contact(revision);
        self.set_stale(false);
        self.status_changed.notify_one();
        if let Some(since) = outage.take() {
            tracing::info!(down_for = ?since.elapsed(), revision, "etcd reachable again; caught up with the fleet");
        }
        *step = BACKOFF_MIN;

        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision.saturating_add(1));
        let mut client = store.client();
        let keys = store.keys().clone();
        let watching = tokio::time::timeout(
            store.request_timeout(),
            client.watch(keys.all(), Some(options)),
        )
        .await;
        let mut stream = match watching {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return WatchEnd::Lost(error.to_string()),
            Err(_) => return WatchEnd::Lost("watch not started in time".into()),
        };
        let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = progress.tick() => {
                    let silent = self.lock().last_event.elapsed();
                    if silent > PROGRESS_INTERVAL * 3 {
                        return WatchEnd::Lost(format!("no answer from etcd for {silent:?}"));
                    }
                    if let Err(error) = stream.request_progress().await {
                        return WatchEnd::Lost(error.to_string());
                    }
                    continue;
                }
            };
            let mut response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return WatchEnd::Lost("etcd closed the watch".into()),
                Err(error) => return WatchEnd::Lost(error.to_string()),
            };
            // A burst (thousands of registrations) arrives as many
            // responses: take every one already here and apply them with
            // one registry publish.
            let mut events: Vec<etcd_client::Event> = Vec::new();
            loop {
                if let Some(end) = self.check(&response) {
                    return end;
                }
                events.extend(response.events().iter().cloned());
                if events.len() >= MAX_BATCH {
                    break;
                }
                match tokio::time::timeout(Duration::ZERO, stream.message()).await {
                    Ok(Ok(Some(more))) => response = more,
                    Ok(Ok(None)) => return WatchEnd::Lost("etcd closed the watch".into()),
                    Ok(Err(error)) => return WatchEnd::Lost(error.to_string()),
                    Err(_) => break,
                }
            }
            if !events.is_empty() {
                if let Some(end) = self.handle_events(&store, &events).await {
                    return end;
                }
                // Events are applied: a resumed watch starts after them.
                let last = events
                    .iter()
                    .filter_map(|e| e.kv())
                    .map(|kv| kv.mod_revision())
                    .max();
                if let Some(last) = last {
                    *resume = Some(last);
                }
                // No status rewrite here: the status key is under the
                // watched prefix, so that would feed itself.
            }
        }
    }

    /// A watch response that ends the watch: cancelled (compaction or
    /// otherwise) or from a revision before one already seen. Notes the
    /// contact otherwise.
    fn check(&self, response: &etcd_client::WatchResponse) -> Option<WatchEnd> {
        if response.canceled() {
            let seen = self.lock().status.revision;
            if response.compact_revision() > 0 {
                return Some(WatchEnd::Resync(format!(
                    "history compacted past revision {seen} (to {})",
                    response.compact_revision()
                )));
            }
            return Some(WatchEnd::Lost(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason()
            )));
        }
        let revision = response.header().map_or(0, |h| h.revision());
        let seen = self.lock().status.revision;
        if revision > 0 && revision < seen {
            return Some(WatchEnd::Resync(format!(
                "etcd revision went backwards ({revision} after {seen})"
            )));
        }
        self.contact(revision);
        None
    }

    async fn handle_events(
        &self,
        store: &Store,
        events: &[etcd_client::Event],
    ) -> Option<WatchEnd> {
        let keys = store.keys();
        let (registrations, drains, current) =
            (keys.registrations(), keys.drains(), keys.current());
        let own_status = keys.node(self.node());
        let mut current_changed = false;
        let mut registry_changed = false;
        let (mut put, mut removed) = (Vec::new(), Vec::new());
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let is_put = matches!(event.event_type(), EventType::Put);
            if key == current {
                current_changed |= is_put;
            } else if let Some((service, id)) = keys.instance_of(&key, &registrations) {
                registry_changed = true;
                if !is_put {
                    removed.push((service, id));
                    continue;
                }
                match store.decode_registration(&key, kv.value()) {
                    Ok(registration) => put.push(registration),
                    Err(problem) => {
                        tracing::warn!(key = %key, "registration in etcd refused: {problem}");
                        self.registry.metrics().fleet().refused.inc();
                    }
                }
            } else if let Some((service, id)) = keys.instance_of(&key, &drains) {
                self.mark_drained(&service, &id, is_put);
            } else if is_put && key == own_status {
                self.check_name_conflict(kv.value());
            } else if key.starts_with(&keys.guards()) {
                // A guard running on some node judges every node's recent
                // traffic: publish it every second while it runs.
                let running = is_put
                    .then(|| serde_json::from_slice::<StoredGuard>(kv.value()).ok())
                    .flatten()
                    .filter(|g| g.state == "running");
                self.watch_closely(running.is_some().then_some(GUARD_NOTICE));
                let mut live = self.lock();
                match running {
                    Some(guard) if guard.node != self.config.node => {
                        live.guard_elsewhere = Some((guard.node, guard.version, Instant::now()));
                    }
                    _ => {
                        let version = key
                            .strip_prefix(&keys.guards())
                            .and_then(|n| n.parse::<u64>().ok());
                        if live
                            .guard_elsewhere
                            .as_ref()
                            .is_some_and(|(_, v, _)| Some(v.0) == version)
                        {
                            live.guard_elsewhere = None;
                        }
                    }
                }
            }
        }
        self.registry.update_fleet_registrations(put, removed);
        if registry_changed {
            self.apply_drains();
            self.snapshot_wanted.notify_one();
        }
        if current_changed {
            match store.current().await {
                Ok(Some(current)) => self.deliver(current.version),
                Ok(None) => {}
                Err(FleetError::Corrupt { key, problem }) => {
                    tracing::warn!(key = %key, "config version in etcd refused: {problem}");
                    self.registry.metrics().fleet().refused.inc();
                }
                Err(FleetError::NotFound(version)) => {
                    tracing::warn!(%version, "the current pointer names a version that is not in etcd; ignored");
                    self.registry.metrics().fleet().refused.inc();
                }
                Err(error) => return Some(WatchEnd::Lost(error.to_string())),
            }
        }
        None
    }

    /// A write to this node's status key seen by the watch. Only this
    /// process writes it, and the watch starts after this process's first
    /// read, so a value with another process token comes from another
    /// running process with the same node name. Said once per such process,
    /// as an error, in the log and in the published status.
    fn check_name_conflict(&self, value: &[u8]) {
        let Ok(theirs) = serde_json::from_slice::<NodeStatus>(value) else {
            return;
        };
        let mut live = self.lock();
        if theirs.process == live.status.process {
            return;
        }
        let other = match &theirs.admin_address {
            Some(address) => format!("a process with admin address {address}"),
            None => "a process with no admin address".to_string(),
        };
        let conflict = format!(
            "{other} also runs as node `{}` (process {}); node names must be unique in a fleet",
            self.config.node, theirs.process
        );
        if live.status.name_conflict.as_deref() == Some(conflict.as_str()) {
            return;
        }
        tracing::error!(node = %self.config.node, "two running nodes share one name: {conflict}");
        self.registry.metrics().fleet().name_conflicts.inc();
        live.status.name_conflict = Some(conflict);
        drop(live);
        self.status_changed.notify_one();
    }

    /// Keeps this node's status key up to date, under a lease renewed
    /// every third of its ttl; rewritten whenever the status changes.
    async fn publish_status(self: Arc<Self>) {
        let mut lease: Option<i64> = None;
        let renew_every = Duration::from_secs(u64::try_from(NODE_LEASE_TTL / 3).unwrap_or(3));
        // The value is rewritten when the status changes, and now and then
        // so that its last contact stays fresh; in between only the lease
        // is renewed (every node watches these keys).
        let mut written_at: Option<Instant> = None;
        let mut changed = true;
        loop {
            if self.lock().status.stale && lease.is_some() {
                // A new lease once etcd is back: the old one has likely expired.
                lease = None;
            }
            let rewrite = changed
                || lease.is_none()
                || written_at.is_none_or(|at| at.elapsed() >= STATUS_REFRESH);
            match self.write_status(&mut lease, rewrite).await {
                Ok(()) => {
                    if rewrite {
                        written_at = Some(Instant::now());
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot publish the node status");
                    lease = None;
                }
            }
            let wait = if self.closely() {
                GUARD_REFRESH
            } else {
                renew_every
            };
            changed = tokio::time::timeout(wait, self.status_changed.notified())
                .await
                .is_ok()
                || self.closely();
        }
    }

    /// Renews (or grants) the status lease; with `rewrite`, writes the
    /// status value too.
    async fn write_status(&self, lease: &mut Option<i64>, rewrite: bool) -> Result<(), FleetError> {
        let store = self.store().await?;
        let (id, fresh) = match *lease {
            Some(id) if store.renew(id).await? => (id, false),
            _ => (store.grant(NODE_LEASE_TTL).await?, true),
        };
        *lease = Some(id);
        if !rewrite && !fresh {
            return Ok(());
        }
        let value =
            serde_json::to_vec(&self.status()).map_err(|e| FleetError::Etcd(e.to_string()))?;
        store
            .put_leased(store.keys().node(self.node()), value, id)
            .await
    }

    /// Writes the snapshot after changes, at most once a second.
    async fn write_snapshots(self: Arc<Self>) {
        loop {
            self.snapshot_wanted.notified().await;
            let snapshot = self.snapshot();
            let path = self.state_dir.join(SNAPSHOT_FILE);
            let written = tokio::task::spawn_blocking(move || {
                let bytes = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                history::write_atomically(&path, &bytes)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(error) = written {
                tracing::error!(%error, dir = %self.state_dir.display(), "cannot write the fleet snapshot");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut registrations: BTreeMap<String, Vec<StoredRegistration>> = BTreeMap::new();
        for service in &self.registry.snapshot().services {
            for instance in &service.all_instances {
                if instance.state.source != crate::registry::Source::Api {
                    continue;
                }
                registrations
                    .entry(service.name.to_string())
                    .or_default()
                    .push(StoredRegistration {
                        id: instance.id.to_string(),
                        address: instance.address.to_string(),
                        weight: instance.weight.get(),
                        tags: instance.tags.clone(),
                        metadata: instance.metadata.clone(),
                        version: instance.version.clone(),
                        ttl: None,
                        node: String::new(),
                    });
            }
        }
        let live = self.lock();
        Snapshot {
            version: live.serving.clone(),
            registrations,
            revision: live.status.revision,
        }
    }
}

enum WatchEnd {
    /// Start over with a full read at once.
    Resync(String),
    /// etcd is gone: back off, then start over.
    Lost(String),
}
