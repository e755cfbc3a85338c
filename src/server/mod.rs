//! Listeners and the process lifecycle: bind before anything changes (so a
//! bad address fails as a whole), serve HTTP/1.1 and HTTP/2 (h2c) on each
//! traffic listener and the admin API on its own, add and remove traffic
//! listeners live, and drain on shutdown.

mod http1;
mod watchdog;
mod workers;

pub use workers::current_worker;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::config::history::History;
use crate::config::{Config, Http1Server, ListenerConfig, ListenerLimits, TlsConfig};
use crate::discovery;
use crate::fleet::{self, Fleet};
use crate::health::{self, CustomChecks};
use crate::metrics::ListenerMetrics;
use crate::proxy::{Proxy, ProxyBody};
use crate::registry::Registry;
use crate::reload::{self, Reloader};
use crate::tls;
use crate::upstream::ClientBody;
use watchdog::{Pressure, Progress, Tracked};

/// Longest a shutdown waits for the access log's last lines to be written.
const ACCESS_LOG_FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// How often registry leases are checked for expiry.
const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An address could not be bound.
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::LoadError),
    /// A listener's certificates could not be loaded.
    #[error("listener {listener}: {message}")]
    Tls {
        /// The listener.
        listener: String,
        /// What went wrong.
        message: String,
    },
    /// The traffic worker threads could not start.
    #[error("cannot start the traffic workers: {0}")]
    Workers(std::io::Error),
    /// The config refers to something this program does not have.
    #[error("the config cannot be served:\n{0}")]
    Invalid(crate::config::ConfigErrors),
    /// The access log cannot be opened or started.
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::LogError),
}

/// A bound listener.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// Its name from the config.
    pub name: String,
    /// The address actually bound (the real port when the config said 0).
    pub address: SocketAddr,
}

/// The future a worker runs for its share of one listener.
type ServeFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The traffic listeners, which reloads can add and remove. Each is served
/// by every traffic worker, each worker on its own socket.
pub struct Listeners {
    registry: Arc<Registry>,
    workers: Arc<workers::Workers>,
    active: Mutex<Vec<ActiveListener>>,
    /// Listeners removed by a reload, still draining their connections.
    draining: Mutex<Vec<oneshot::Receiver<()>>>,
    /// Shared by every listener: descriptors are the process's.
    pressure: Arc<Pressure>,
    /// The access log every listener's requests write to.
    access_log: Arc<AccessLog>,
}

struct ActiveListener {
    /// The address as configured (port 0 stays 0); with whether it speaks
    /// TLS, this identifies the listener across reloads.
    configured: SocketAddr,
    /// The certificates, for TLS listeners; replaced in place by reloads.
    tls: Option<(TlsConfig, Arc<tls::Resolver>)>,
    bound: BoundListener,
    /// The limits new connections get; a reload replaces them in place.
    limits: watch::Sender<ListenerLimits>,
    stop: watch::Sender<bool>,
    /// One per worker, fired when its share has drained.
    done: Vec<oneshot::Receiver<()>>,
}

/// Listeners bound and certificates loaded for a config, not yet serving.
pub struct Prepared {
    new: Vec<(
        ListenerConfig,
        Vec<std::net::TcpListener>,
        Option<tls::CertStore>,
    )>,
    /// New certificates for TLS listeners that stay.
    certificates: Vec<(SocketAddr, TlsConfig, tls::CertStore)>,
    /// The access log's settings, with a new file already open.
    access_log: crate::access_log::Prepared,
}

impl ActiveListener {
    fn is(&self, config: &ListenerConfig) -> bool {
        self.configured == config.address && self.tls.is_some() == config.tls.is_some()
    }
}

fn cert_store(listener: &ListenerConfig, tls: &TlsConfig) -> Result<tls::CertStore, StartError> {
    tls::CertStore::new(tls).map_err(|message| StartError::Tls {
        listener: listener.name.clone(),
        message,
    })
}

impl Listeners {
    fn new(
        registry: Arc<Registry>,
        workers: Arc<workers::Workers>,
        access_log: Arc<AccessLog>,
    ) -> Listeners {
        Listeners {
            registry,
            workers,
            active: Mutex::new(Vec::new()),
            draining: Mutex::new(Vec::new()),
            pressure: Pressure::new(),
            access_log,
        }
    }

    /// The access log (for reopening it).
    pub fn access_log(&self) -> &Arc<AccessLog> {
        &self.access_log
    }

    /// The listeners serving now.
    pub fn bound(&self) -> Vec<BoundListener> {
        self.lock_active().iter().map(|l| l.bound.clone()).collect()
    }

    /// Binds every listener of `config` that is not already serving.
    /// Nothing changes for clients until [`Listeners::commit`]; dropping
    /// the result releases the addresses.
    pub async fn prepare(&self, config: &Config) -> Result<Prepared, StartError> {
        let mut new = Vec::new();
        let mut certificates = Vec::new();
        for listener in &config.listeners {
            let current_tls = self
                .lock_active()
                .iter()
                .find(|l| l.is(listener))
                .map(|l| l.tls.as_ref().map(|(tls, _)| tls.clone()));
            match (current_tls, &listener.tls) {
                // Serving already: only changed certificates need loading.
                (Some(Some(current)), Some(wanted)) if &current != wanted => {
                    certificates.push((
                        listener.address,
                        wanted.clone(),
                        cert_store(listener, wanted)?,
                    ));
                }
                (Some(_), _) => {}
                (None, tls) => {
                    let store = tls
                        .as_ref()
                        .map(|tls| cert_store(listener, tls))
                        .transpose()?;
                    let sockets = workers::bind_reuseport(listener.address, self.workers.count())
                        .map_err(|source| StartError::Bind {
                        what: listener.name.clone(),
                        address: listener.address,
                        source,
                    })?;
                    new.push((listener.clone(), sockets, store));
                }
            }
        }
        let access_log = self.access_log.prepare(&config.access_log)?;
        Ok(Prepared {
            new,
            certificates,
            access_log,
        })
    }

    /// Starts serving the prepared listeners, stops (and drains) those
    /// that `config` no longer has, and applies the access-log settings.
    pub fn commit(&self, prepared: Prepared, config: &Config) {
        self.access_log.commit(prepared.access_log);
        let mut active = self.lock_active();
        let (kept, removed): (Vec<_>, Vec<_>) = std::mem::take(&mut *active)
            .into_iter()
            .partition(|l| config.listeners.iter().any(|c| l.is(c)));
        *active = kept;
        for (address, tls, store) in prepared.certificates {
            if let Some(listener) = active
                .iter_mut()
                .find(|l| l.configured == address && l.tls.is_some())
            {
                if let Some((current, resolver)) = listener.tls.as_mut() {
                    resolver.replace(store);
                    *current = tls;
                    tracing::info!(listener = %listener.bound.name, "certificates replaced; new connections get them");
                }
            }
        }
        for listener in active.iter() {
            if let Some(wanted) = config.listeners.iter().find(|c| listener.is(c)) {
                let changed = listener.limits.send_if_modified(|limits| {
                    let changed = *limits != wanted.limits;
                    *limits = wanted.limits;
                    changed
                });
                if changed {
                    tracing::info!(listener = %listener.bound.name, "limits changed; new connections get them");
                }
            }
        }
        for listener in removed {
            tracing::info!(listener = %listener.bound.name, address = %listener.bound.address, "listener removed; draining its connections");
            let _ = listener.stop.send(true);
            self.draining
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(listener.done);
        }
        for (config, sockets, store) in prepared.new {
            active.push(self.spawn(config, sockets, store));
        }
    }

    /// Hands one socket of the listener to each worker.
    fn spawn(
        &self,
        config: ListenerConfig,
        sockets: Vec<std::net::TcpListener>,
        store: Option<tls::CertStore>,
    ) -> ActiveListener {
        let address = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(config.address);
        let resolver = store.map(tls::Resolver::new);
        let acceptor =
            resolver
                .as_ref()
                .and_then(|resolver| match tls::server_config(Arc::clone(resolver)) {
                    Ok(server_config) => Some(tokio_rustls::TlsAcceptor::from(server_config)),
                    Err(error) => {
                        tracing::error!(listener = %config.name, %error, "cannot set up TLS");
                        None
                    }
                });
        let scheme = if resolver.is_some() { "https" } else { "http" };
        let (limits, limits_receiver) = watch::channel(config.limits);
        let open = Arc::new(AtomicUsize::new(0));
        let per_ip = Arc::new(crate::limits::ConnectionsPerIp::default());
        let redirect_https = config.redirect_https;
        tracing::info!(listener = %config.name, %address, scheme, workers = sockets.len(), "listening");
        let proxy = Arc::new(Proxy::new(
            Arc::clone(&self.registry),
            scheme,
            Arc::clone(&self.access_log),
        ));
        let (stop, stopped) = watch::channel(false);
        let connections = self.registry.metrics().listener(&config.name);
        let mut done = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            let (finished, finished_receiver) = oneshot::channel();
            done.push(finished_receiver);
            let (proxy, registry) = (Arc::clone(&proxy), Arc::clone(&self.registry));
            let (stopped, connections) = (stopped.clone(), connections.clone());
            let acceptor = acceptor.clone();
            let guard = Guard {
                limits: limits_receiver.clone(),
                open: Arc::clone(&open),
                per_ip: Arc::clone(&per_ip),
                pressure: Arc::clone(&self.pressure),
                keeps_heads: true,
            };
            let task = move |listener: TcpListener| -> ServeFuture {
                Box::pin(serve(
                    listener,
                    stopped,
                    Some(connections),
                    acceptor,
                    guard,
                    move || registry.config().drain_timeout,
                    move |request, peer| {
                        let proxy = Arc::clone(&proxy);
                        async move {
                            match redirect_https {
                                Some(port) => crate::proxy::redirect_to_https(&request, port),
                                None => proxy.handle(request, peer).await,
                            }
                        }
                    },
                ))
            };
            self.workers.hand(
                index,
                workers::Serve {
                    listener: socket,
                    task: Box::new(task),
                    done: finished,
                },
            );
        }
        ActiveListener {
            configured: config.address,
            tls: config.tls.clone().zip(resolver),
            bound: BoundListener {
                name: config.name,
                address,
            },
            limits,
            stop,
            done,
        }
    }

    async fn shutdown(&self) {
        let mut done: Vec<oneshot::Receiver<()>> = Vec::new();
        for listener in std::mem::take(&mut *self.lock_active()) {
            let _ = listener.stop.send(true);
            done.extend(listener.done);
        }
        done.append(&mut self.draining.lock().unwrap_or_else(PoisonError::into_inner));
        for finished in done {
            let _ = finished.await;
        }
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, Vec<ActiveListener>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Settings for running from a config file with live reload and history.
#[derive(Clone)]
pub struct LiveOptions {
    /// The config file.
    pub config_path: PathBuf,
    /// Where the version history is kept (default: `<config>.versions`
    /// next to the file).
    pub state_dir: Option<PathBuf>,
    /// Versions kept.
    pub keep_versions: usize,
    /// Watch the file and reload when it changes.
    pub watch: bool,
    /// Custom health checks, by the name configs use for them.
    pub health_checks: CustomChecks,
}

impl std::fmt::Debug for LiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveOptions")
            .field("config_path", &self.config_path)
            .field("state_dir", &self.state_dir)
            .field("keep_versions", &self.keep_versions)
            .field("watch", &self.watch)
            .field(
                "health_checks",
                &self.health_checks.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LiveOptions {
    /// Defaults for `config_path`: history next to it, 100 versions, watched.
    pub fn new(config_path: impl Into<PathBuf>) -> LiveOptions {
        LiveOptions {
            config_path: config_path.into(),
            state_dir: None,
            keep_versions: crate::config::history::DEFAULT_RETENTION,
            watch: true,
            health_checks: CustomChecks::new(),
        }
    }

    /// The history directory.
    pub fn history_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            let mut name = self
                .config_path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "proxy.yaml".into());
            name.push(".versions");
            self.config_path.with_file_name(name)
        })
    }
}

/// A running proxy.
pub struct Running {
    registry: Arc<Registry>,
    listeners: Arc<Listeners>,
    reloader: Option<Arc<Reloader>>,
    admin_address: SocketAddr,
    admin_stop: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// switchyard's own Consul entry, once registered.
    consul_self: Arc<tokio::sync::Mutex<Option<(crate::config::ConsulConfig, String)>>>,
}

impl Running {
    /// The registry, for sources that change it.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The traffic listeners as bound now.
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.listeners.bound()
    }

    /// The admin API address as bound.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// The live-config pipeline, when started from a file.
    pub fn reloader(&self) -> Option<&Arc<Reloader>> {
        self.reloader.as_ref()
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain
    /// timeout) and returns when every listener is done.
    pub async fn shutdown(self) {
        for task in &self.background {
            task.abort();
        }
        if let Some((consul, id)) = self.consul_self.lock().await.take() {
            match discovery::consul::deregister_self(&consul, &id).await {
                Ok(()) => tracing::info!(id = %id, "deregistered from Consul"),
                Err(error) => tracing::warn!(id = %id, %error, "cannot deregister from Consul"),
            }
        }
        let _ = self.admin_stop.send(true);
        let drain_timeout = self.registry.config().drain_timeout;
        let everything = async {
            self.listeners.shutdown().await;
            let _ = self.admin_task.await;
        };
        // Each listener stops itself at the drain timeout; this is a
        // backstop should one not.
        let backstop = drain_timeout.saturating_add(Duration::from_secs(2));
        let _ = tokio::time::timeout(backstop, everything).await;
        let access_log = Arc::clone(self.listeners.access_log());
        let _ = tokio::task::spawn_blocking(move || access_log.flush(ACCESS_LOG_FLUSH_LIMIT)).await;
    }

    /// The access log (SIGUSR1 reopens it).
    pub fn access_log(&self) -> &Arc<AccessLog> {
        self.listeners.access_log()
    }
}

/// Serves `config` without a file behind it (no reload, no history).
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with_checks(config, CustomChecks::new()).await
}

/// Like [`start`], with custom health checks.
pub async fn start_with_checks(
    config: Config,
    health_checks: CustomChecks,
) -> Result<Running, StartError> {
    launch(config, Arc::new(health_checks), None).await
}

/// Loads the config file and serves it, with reload on file change,
/// SIGHUP (see [`Reloader::reload`]) and the admin API, and keeps the
/// version history.
///
/// With a `fleet:` section the file is only this node's bootstrap: the
/// config comes from etcd (or, when etcd cannot be reached, from the
/// node's last snapshot of the fleet state), and the history is the
/// fleet's.
pub async fn start_live(options: LiveOptions) -> Result<Running, StartError> {
    let (config, text) = crate::config::load(&options.config_path)?;
    let checks = Arc::new(options.health_checks.clone());
    if let Some(fleet) = config.fleet.clone() {
        let boot = fleet_boot(&options, &fleet).await;
        let serving = boot
            .version
            .as_ref()
            .and_then(|v| {
                let parsed = crate::config::parse_shared(&v.config)
                    .map(|shared| shared.with_node_local(&config));
                match parsed {
                    Ok(shared) => Some((shared, v.config.clone())),
                    Err(errors) => {
                        tracing::error!(version = %v.info.version, "the fleet version cannot be served here; starting from the local file: {}", crate::config::one_line(&errors.to_string()));
                        None
                    }
                }
            });
        let (serve, serve_text, version) = match serving {
            Some((shared, shared_text)) => (shared, shared_text, boot.version),
            None => (config.clone(), text, None),
        };
        let live = Live::Fleet {
            options,
            fleet: Box::new(fleet),
            local: Box::new(config),
            text: serve_text,
            version,
            stale: boot.stale,
            registrations: boot.registrations,
        };
        return launch(serve, checks, Some(live)).await;
    }
    let history = match History::open(&options.history_dir(), options.keep_versions) {
        Ok(history) => Some(history),
        Err(error) => {
            tracing::error!(%error, "config history unavailable; serving without it");
            None
        }
    };
    launch(config, checks, Some(Live::File(options, text, history))).await
}

/// Registrations by service and id, as a fleet snapshot holds them.
type Registrations = std::collections::BTreeMap<
    crate::config::ServiceName,
    std::collections::BTreeMap<crate::config::InstanceId, crate::config::InstanceEntry>,
>;

/// What a fleet node starts from.
struct FleetBoot {
    version: Option<crate::fleet::StoredVersion>,
    stale: bool,
    registrations: Option<Registrations>,
}

/// The fleet's current version from etcd or, when etcd does not answer,
/// the node's last snapshot (stale until etcd answers).
async fn fleet_boot(options: &LiveOptions, fleet: &crate::config::FleetConfig) -> FleetBoot {
    let current = match fleet::store::connect(fleet).await {
        Ok(store) => store.current().await,
        Err(error) => Err(error),
    };
    match current {
        Ok(current) => {
            if current.is_none() {
                tracing::info!(prefix = %fleet.prefix, "the fleet has no config version yet; serving the local file until one is pushed");
            }
            FleetBoot {
                version: current.map(|c| c.version),
                stale: false,
                registrations: None,
            }
        }
        Err(error) => {
            let dir = options.history_dir();
            match fleet::Snapshot::load(&dir) {
                Some(snapshot) => {
                    tracing::warn!(%error, version = ?snapshot.version.as_ref().map(|v| v.info.version.0), "etcd unreachable at start; serving the last fleet snapshot (stale until etcd answers)");
                    FleetBoot {
                        registrations: Some(snapshot.instances()),
                        version: snapshot.version,
                        stale: true,
                    }
                }
                None => {
                    tracing::warn!(%error, "etcd unreachable at start and no fleet snapshot yet; serving the local file (stale until etcd answers)");
                    FleetBoot {
                        version: None,
                        stale: true,
                        registrations: None,
                    }
                }
            }
        }
    }
}

/// How a live proxy keeps its config: from its file, or from the fleet.
enum Live {
    File(LiveOptions, String, Option<History>),
    Fleet {
        options: LiveOptions,
        /// The `fleet:` section of `local`.
        fleet: Box<crate::config::FleetConfig>,
        local: Box<Config>,
        text: String,
        version: Option<crate::fleet::StoredVersion>,
        stale: bool,
        registrations: Option<Registrations>,
    },
}

async fn launch(
    config: Config,
    health_checks: Arc<CustomChecks>,
    live: Option<Live>,
) -> Result<Running, StartError> {
    health::unknown_custom_checks(&config, &health_checks).map_err(StartError::Invalid)?;
    let registry = Arc::new(Registry::new(config.clone()));
    let workers = workers::Workers::start(config.workers).map_err(StartError::Workers)?;
    // One buffer slot per worker, and one for the threads of the control plane.
    let access_log = AccessLog::start(
        &config.access_log,
        workers.count() + 1,
        registry.metrics().access_log_dropped(),
    )?;
    let listeners = Arc::new(Listeners::new(Arc::clone(&registry), workers, access_log));
    let prepared = listeners.prepare(&config).await?;
    let admin_listener = bind("admin", config.admin.address).await?;
    let admin_address = admin_listener.local_addr().unwrap_or(config.admin.address);
    listeners.commit(prepared, &config);

    let mut background = health::spawn(Arc::clone(&registry), Arc::clone(&health_checks));
    let leases = Arc::clone(&registry);
    background.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(LEASE_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            leases.expire_leases();
        }
    }));
    background.extend(discovery::spawn(Arc::clone(&registry)));
    background.push(tokio::spawn(
        Arc::clone(registry.metrics().window()).run_sampler(),
    ));
    let spans = Arc::clone(&registry);
    background.push(tokio::spawn(
        Arc::clone(registry.tracer()).run(move || spans.snapshot().tracing.export.clone()),
    ));
    let consul_self = Arc::new(tokio::sync::Mutex::new(None));
    if let (Some(consul), Some(listener)) = (&config.consul, listeners.bound().first()) {
        if let Some(registration) = &consul.register {
            background.push(tokio::spawn(register_in_consul(
                consul.clone(),
                registration.clone(),
                listener.address,
                admin_address,
                Arc::clone(&consul_self),
            )));
        }
    }
    let reloader = match live {
        Some(Live::Fleet {
            options,
            fleet: fleet_config,
            local,
            text,
            version,
            stale,
            registrations,
        }) => {
            let fleet = Fleet::new(
                *fleet_config,
                Arc::clone(&registry),
                options.history_dir(),
                options.keep_versions,
            );
            fleet.set_admin_address(admin_address);
            if let Some(registrations) = registrations {
                registry.replace_fleet_registrations(registrations);
            }
            fleet.started_with(version.clone(), stale);
            let reloader = Arc::new(Reloader::new_fleet(
                options.config_path.clone(),
                Arc::clone(&registry),
                Arc::clone(&listeners),
                Arc::clone(&fleet),
                *local,
                version.as_ref(),
                &text,
                health_checks,
            ));
            background.extend(fleet.spawn());
            let mut versions = fleet.versions();
            let applier = Arc::clone(&reloader);
            background.push(tokio::spawn(async move {
                // Each new current version goes through the reload
                // pipeline; the outcome is logged and published.
                while versions.changed().await.is_ok() {
                    let version = versions.borrow_and_update().clone();
                    if let Some(version) = version {
                        let _ = applier.apply_fleet(&version).await;
                    }
                }
            }));
            Some(reloader)
        }
        Some(Live::File(options, text, history)) => {
            let reloader = Arc::new(Reloader::new(
                options.config_path.clone(),
                Arc::clone(&registry),
                Arc::clone(&listeners),
                history,
                &text,
                health_checks,
            ));
            if options.watch {
                match reload::watch_file(Arc::clone(&reloader)) {
                    Ok(task) => background.push(task),
                    Err(error) => {
                        tracing::error!(%error, "cannot watch the config file; reload with SIGHUP or the API")
                    }
                }
            }
            Some(reloader)
        }
        None => None,
    };

    tracing::info!(address = %admin_address, "admin API listening");
    let admin_state = Arc::new(AdminState::new(
        Arc::clone(&registry),
        Arc::clone(&listeners),
        reloader.clone(),
        admin_address,
    ));
    let (admin_stop, admin_stopped) = watch::channel(false);
    let drain_registry = Arc::clone(&registry);
    let admin_guard = Guard {
        limits: watch::channel(ListenerLimits::default()).1,
        open: Arc::new(AtomicUsize::new(0)),
        per_ip: Arc::default(),
        pressure: Arc::clone(&listeners.pressure),
        keeps_heads: false,
    };
    let admin_task = tokio::spawn(serve(
        admin_listener,
        admin_stopped,
        None,
        None,
        admin_guard,
        move || drain_registry.config().drain_timeout,
        move |request, peer| {
            let state = Arc::clone(&admin_state);
            async move { admin::handle(&state, request, peer).await }
        },
    ));
    Ok(Running {
        registry,
        listeners,
        reloader,
        admin_address,
        admin_stop,
        admin_task,
        background,
        consul_self,
    })
}

/// Registers switchyard in Consul, retrying until it works; remembers the
/// id for deregistration at shutdown.
async fn register_in_consul(
    consul: crate::config::ConsulConfig,
    registration: crate::config::ConsulRegistration,
    listener: SocketAddr,
    admin: SocketAddr,
    registered: Arc<tokio::sync::Mutex<Option<(crate::config::ConsulConfig, String)>>>,
) {
    let ip = registration.address.unwrap_or(listener.ip());
    if ip.is_unspecified() {
        tracing::error!(%listener, "cannot register in Consul: the listener address is unspecified; set consul.register.address");
        return;
    }
    let advertised = SocketAddr::new(ip, listener.port());
    let mut delay = Duration::from_millis(500);
    loop {
        match discovery::consul::register_self(&consul, &registration, advertised, admin).await {
            Ok(id) => {
                tracing::info!(id = %id, address = %advertised, "registered in Consul");
                *registered.lock().await = Some((consul, id));
                return;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot register in Consul yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn bind(what: &str, address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_string(),
            address,
            source,
        })
}

/// Longest a client may take for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept, so a lack of descriptors is not a spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most one `accept failed` line per listener and worker this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Under descriptor pressure, a connection that has not sent a request yet
/// is shed only once it is this old: one just accepted is probably about to.
const SHED_MIN_AGE: Duration = Duration::from_secs(1);

/// What a listener's accept loop admits connections by: its limits (live,
/// replaced by reloads), its open-connection count over all workers, and
/// the process-wide descriptor pressure.
struct Guard {
    limits: watch::Receiver<ListenerLimits>,
    open: Arc<AtomicUsize>,
    /// Open connections by client IP, over all workers.
    per_ip: Arc<crate::limits::ConnectionsPerIp>,
    pressure: Arc<Pressure>,
    /// Whether the owned HTTP/1.1 server may hand a request without a body
    /// over as its head as received with an empty map: the proxy reads the
    /// head, the admin API reads maps.
    keeps_heads: bool,
}

/// The hyper server settings for `limits`.
fn connection_builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer holds the request head; bodies stream past it.
        // A head that does not fit gets 431.
        .max_buf_size(limits.max_header_bytes);
    if limits.max_headers != crate::config::DEFAULT_MAX_HEADERS {
        // Only when changed: any explicit value puts hyper's field table
        // on the heap for every request.
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Accepts connections until told to stop, then drains them: each open
/// connection finishes its in-flight request and closes (idle keep-alive
/// connections close at once), up to the drain timeout, when the rest are
/// closed.
async fn serve<H, F>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    connections: Option<ListenerMetrics>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut guard: Guard,
    drain_timeout: impl Fn() -> Duration,
    handler: H,
) where
    H: Fn(Request<ClientBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let mut limits = *guard.limits.borrow_and_update();
    let mut builder = Arc::new(connection_builder(&limits));
    // Every connection task holds a clone; when all are gone, recv() ends.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    // Raised at the drain timeout: connections still open close at once.
    let (close_now, closing) = watch::channel(false);
    let mut accept_errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors: idle keep-alive connections give
                // theirs back; back off instead of spinning, and keep
                // serving the connections we have.
                if crate::local_origin::is_local_resource_error(&error) {
                    guard.pressure.shed_idle();
                }
                accept_errors.failed(&error);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if guard.limits.has_changed().unwrap_or(false) {
            limits = *guard.limits.borrow_and_update();
            builder = Arc::new(connection_builder(&limits));
        }
        // Counted before the check, so two workers cannot both take the
        // last place.
        let open_before = guard.open.fetch_add(1, Ordering::Relaxed);
        if limits.max_connections.is_some_and(|max| open_before >= max) {
            guard.open.fetch_sub(1, Ordering::Relaxed);
            if let Some(metrics) = &connections {
                metrics.rejected.inc();
            }
            tracing::debug!(%peer, max_connections = ?limits.max_connections, "connection refused: the listener is full");
            // Dropped: closed at once, before a byte is read.
            continue;
        }
        let ip_slot = match limits.max_connections_per_ip {
            None => None,
            Some(max) => match guard.per_ip.open(peer.ip(), max) {
                Some(slot) => Some(slot),
                None => {
                    guard.open.fetch_sub(1, Ordering::Relaxed);
                    if let Some(metrics) = &connections {
                        metrics.rejected_per_ip.inc();
                    }
                    tracing::debug!(%peer, max_connections_per_ip = max, "connection refused: the client IP has its limit open");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if let Some(metrics) = &connections {
            metrics.accepted.inc();
            metrics.open.inc();
        }
        let (stream, activity) = Activity::new(stream);
        let connection = Connection {
            stop: stop.clone(),
            closing: closing.clone(),
            shed: guard.pressure.subscribe(),
            _open: open.clone(),
            open_count: Arc::clone(&guard.open),
            metrics: connections.clone(),
            activity,
            progress: Arc::new(Progress::default()),
            limits,
            keeps_heads: guard.keeps_heads,
            accepted: tokio::time::Instant::now(),
            _ip_slot: ip_slot,
        };
        let (builder, handler, tls) = (Arc::clone(&builder), handler.clone(), tls.clone());
        let handshake_timeout = TLS_HANDSHAKE_TIMEOUT.min(limits.header_read_timeout);
        tokio::spawn(async move {
            match tls {
                None => serve_connection(&builder, stream, false, peer, connection, handler).await,
                // Boxed: inline, the handshake's state would take room in
                // every connection's task, cleartext ones too.
                Some(acceptor) => {
                    Box::pin(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => {
                                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                                serve_connection(&builder, stream, h2, peer, connection, handler)
                                    .await
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    })
                    .await
                }
            }
        });
    }
    drop(listener);
    drop(open);
    let drain_timeout = drain_timeout();
    if tokio::time::timeout(drain_timeout, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain_timeout,
            "drain timeout reached; closing remaining connections"
        );
        let _ = close_now.send(true);
        // They close at their next poll; this only waits for that.
        let _ = tokio::time::timeout(Duration::from_secs(1), all_closed.recv()).await;
    }
}

/// Failed accepts, logged at most once per [`ACCEPT_ERROR_LOG_INTERVAL`]
/// with how many there were: out of descriptors, every accept fails.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn failed(&mut self, error: &std::io::Error) {
        self.unlogged = self.unlogged.saturating_add(1);
        if self
            .last_logged
            .is_some_and(|at| at.elapsed() < ACCEPT_ERROR_LOG_INTERVAL)
        {
            return;
        }
        let local = crate::local_origin::is_local_resource_error(error);
        tracing::error!(
            %error,
            failures = self.unlogged,
            shedding_idle_connections = local,
            "accept failed"
        );
        self.last_logged = Some(tokio::time::Instant::now());
        self.unlogged = 0;
    }
}

/// Counts reads and writes on a connection, for the idle timeout. A
/// counter, not a timestamp: no clock read per I/O operation.
struct LastActivity {
    operations: AtomicU64,
}

impl LastActivity {
    fn touch(&self) {
        self.operations.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns once a whole `timeout` passed with no read or write (so a
    /// connection closes between one and two timeouts after it fell idle).
    async fn idle_for(&self, timeout: Duration) {
        let mut seen = self.operations.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(timeout).await;
            let now = self.operations.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

/// A connection's IO, noting when bytes move.
struct Activity<I> {
    io: I,
    last: Arc<LastActivity>,
}

impl<I> Activity<I> {
    fn new(io: I) -> (Activity<I>, Arc<LastActivity>) {
        let last = Arc::new(LastActivity {
            operations: AtomicU64::new(0),
        });
        (
            Activity {
                io,
                last: Arc::clone(&last),
            },
            last,
        )
    }

    fn touch(&self) {
        self.last.touch();
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Activity<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Activity<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What a connection task keeps: the stop signals, its share of the open
/// counts (the drain waits on one, `max_connections` on the other), its
/// listener's metrics, and what its limits watch.
struct Connection {
    stop: watch::Receiver<bool>,
    /// Becomes true when the drain time is over: close at once.
    closing: watch::Receiver<bool>,
    /// Changes when descriptors ran out: close if idle.
    shed: watch::Receiver<u64>,
    /// Held, never used: the drain waits until every clone is dropped.
    _open: tokio::sync::mpsc::Sender<()>,
    open_count: Arc<AtomicUsize>,
    metrics: Option<ListenerMetrics>,
    /// Reads and writes seen, for the idle timeout.
    activity: Arc<LastActivity>,
    /// Requests and response bodies, for the other timeouts and shedding.
    progress: Arc<Progress>,
    limits: ListenerLimits,
    /// See [`Guard::keeps_heads`].
    keeps_heads: bool,
    accepted: tokio::time::Instant,
    /// Its place under `max_connections_per_ip`, if limited.
    _ip_slot: Option<crate::limits::connections::IpSlot>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open_count.fetch_sub(1, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.open.dec();
        }
    }
}

impl Connection {
    fn timed_out(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.timed_out.inc();
        }
    }
}

/// Why a connection is being closed gracefully.
enum Closing {
    Stop,
    Idle,
    Shed,
}

/// Serves one client connection (plain or after its TLS handshake) with
/// the listener's HTTP/1.1 server: hyper's, or the owned one (which hands
/// HTTP/2 clients, by ALPN or by their preface, to hyper).
async fn serve_connection<I, H, F>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    alpn_h2: bool,
    peer: SocketAddr,
    connection: Connection,
    handler: H,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<ClientBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    // Each server's connection state is boxed: the task holds only the one
    // it uses.
    if connection.limits.http1 == Http1Server::Hyper || alpn_h2 {
        return Box::pin(serve_hyper(builder, io, peer, connection, handler)).await;
    }
    Box::pin(serve_owned(builder, io, peer, connection, handler)).await;
}

/// Serves one client connection with the owned HTTP/1.1 server, handing it
/// to hyper if it turns out to speak HTTP/2.
async fn serve_owned<I, H, F>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    peer: SocketAddr,
    connection: Connection,
    handler: H,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<ClientBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let limits = connection.limits;
    let settings = http1::Settings {
        head: crate::http1::request::HeadLimits {
            max_head_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
        },
        header_read_timeout: limits.header_read_timeout,
        detect_h2: true,
        keep_heads: connection.keeps_heads,
    };
    let progress = Arc::clone(&connection.progress);
    let (close, closing) = watch::channel(false);
    let ended = {
        let served = std::pin::pin!(async {
            let ended = http1::serve(io, peer, &handler, &progress, settings, closing).await?;
            Ok::<_, std::io::Error>(ended)
        });
        drive(
            served,
            move || {
                let _ = close.send(true);
            },
            true,
            peer,
            connection,
        )
        .await
    };
    if let (Some(http1::Ended::Http2(io)), Some(connection)) = ended {
        Box::pin(serve_hyper(builder, io, peer, connection, handler)).await;
    }
}

/// Serves one client connection with hyper's server.
async fn serve_hyper<I, H, F>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    peer: SocketAddr,
    connection: Connection,
    handler: H,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<ClientBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let progress = Arc::clone(&connection.progress);
    let service = service_fn(move |request: Request<Incoming>| {
        let in_flight = progress.start();
        // Boxed: the request future is large, and hyper keeps room for it in
        // every connection's state, idle or not; boxing trades one small
        // allocation per request for much less memory per idle connection.
        let response = Box::pin(handler(request.map(ClientBody::Hyper), peer));
        async move { Ok::<_, Infallible>(response.await.map(|body| Tracked::new(body, in_flight))) }
    });
    // With upgrades, so WebSocket and other HTTP/1.1 upgrades can be
    // tunnelled (see `proxy`).
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut served = std::pin::pin!(served);
    let (shutdown, mut shutdown_requested) = watch::channel(false);
    // hyper's connection is asked to shut down through its own method,
    // which needs the pinned connection: `drive` only raises a flag.
    let run = std::pin::pin!(async {
        loop {
            tokio::select! {
                result = served.as_mut() => return result,
                changed = shutdown_requested.changed() => {
                    if changed.is_err() {
                        return served.as_mut().await;
                    }
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    });
    drive(
        run,
        move || {
            let _ = shutdown.send(true);
        },
        false,
        peer,
        connection,
    )
    .await;
}

/// Runs a connection's server future `served` until it ends, or until
/// shutdown, idleness or descriptor pressure ask it (through
/// `graceful_shutdown`) to close gracefully, with a deadline, or a timeout
/// closes it at once; with `drop_when_idle`, a connection asked to close
/// with no request in flight is closed at once. Gives back what the server
/// ended with, and the connection when it ended on its own without being
/// asked to close (so another server may go on with it).
async fn drive<S, T, E>(
    // Pinned by the caller: moved in by value, it would take room twice in
    // every connection's task (argument and pinned local).
    mut served: std::pin::Pin<&mut S>,
    graceful_shutdown: impl FnOnce(),
    drop_when_idle: bool,
    peer: SocketAddr,
    mut connection: Connection,
) -> (Option<T>, Option<Connection>)
where
    S: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let limits = connection.limits;
    // Made once, not per turn of the loop: shedding rounds come often under
    // pressure and must not restart these timers.
    let (activity, progress) = (
        Arc::clone(&connection.activity),
        Arc::clone(&connection.progress),
    );
    let idle = activity.idle_for(limits.idle_timeout);
    let stalled = progress.stalled_for(limits.send_timeout);
    // From accept to the first request head, on either protocol; hyper's
    // own HTTP/1.1 timer only starts at the first byte.
    let accepted = connection.accepted;
    let first_head = async {
        tokio::time::sleep_until(accepted + limits.header_read_timeout).await;
        if progress.any_request() {
            std::future::pending::<()>().await;
        }
    };
    let (mut idle, mut stalled, mut first_head) = (
        std::pin::pin!(idle),
        std::pin::pin!(stalled),
        std::pin::pin!(first_head),
    );
    let mut shedding = true;
    let closing = loop {
        tokio::select! {
            result = served.as_mut() => {
                return match result {
                    Ok(ended) => (Some(ended), Some(connection)),
                    Err(error) => {
                        tracing::debug!(%peer, %error, "client connection ended with an error");
                        (None, None)
                    }
                };
            }
            // (The guard wait_for returns is dropped before the await.)
            () = async { drop(connection.stop.wait_for(|stopping| *stopping).await) } => break Closing::Stop,
            () = idle.as_mut() => {
                tracing::debug!(%peer, idle_timeout = ?limits.idle_timeout, "closing an idle connection");
                break Closing::Idle;
            }
            () = first_head.as_mut() => {
                tracing::debug!(%peer, header_read_timeout = ?limits.header_read_timeout, "no request head in time; closing");
                connection.timed_out();
                return (None, None);
            }
            () = stalled.as_mut() => {
                tracing::debug!(%peer, send_timeout = ?limits.send_timeout, "the client does not take its response; closing");
                connection.timed_out();
                return (None, None);
            }
            changed = connection.shed.changed(), if shedding => {
                if changed.is_err() {
                    // The pressure signal is gone (shutdown): never again.
                    shedding = false;
                    continue;
                }
                let settled = progress.any_request() || connection.accepted.elapsed() >= SHED_MIN_AGE;
                if progress.is_idle() && settled {
                    if let Some(metrics) = &connection.metrics {
                        metrics.shed.inc();
                    }
                    tracing::debug!(%peer, "out of descriptors; closing an idle connection");
                    break Closing::Shed;
                }
            }
        }
    };
    graceful_shutdown();
    if drop_when_idle && progress.is_idle() {
        return (None, None);
    }
    // Graceful, but not forever: a client that does not read keeps a
    // response (and its upstream connection) open otherwise.
    let deadline = match closing {
        Closing::Stop => None,
        Closing::Idle | Closing::Shed => Some(limits.send_timeout.min(limits.idle_timeout)),
    };
    let closing_now = &mut connection.closing;
    let finished = async {
        match deadline {
            Some(deadline) => tokio::time::timeout(deadline, served.as_mut()).await.ok(),
            None => Some(served.as_mut().await),
        }
    };
    let result = tokio::select! {
        result = finished => result,
        // The drain timeout is over: close at once.
        () = async { drop(closing_now.wait_for(|now| *now).await) } => None,
    };
    match result {
        Some(Err(error)) => tracing::debug!(%peer, %error, "client connection ended with an error"),
        Some(Ok(_)) => {}
        None => {
            tracing::debug!(%peer, "the connection did not finish in time after being asked to close; closing it");
            connection.timed_out();
        }
    }
    (None, None)
}
