//! Live config: the reload pipeline, its triggers and its record.
//!
//! read → parse → validate everything → compute what changed → bind new
//! listeners → one atomic swap of the snapshot → record the version. Any
//! failure before the swap changes nothing: the running config keeps
//! serving, and the error is logged, counted and shown in the admin status.
//! Reloads run one at a time.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;
use tokio::task::JoinHandle;

pub mod guard;
mod store;

pub use store::HistoryStore;

use crate::config::guard::GuardSpec;
use crate::config::history::{
    self, ChangeSource, ConfigVersion, History, HistoryError, VersionInfo,
};
use crate::config::{self, Config, ConfigErrors};
use crate::fleet::{Fleet, FleetError, PushOutcome, StoredVersion};
use crate::health::{self, CustomChecks};
use crate::registry::Registry;
use crate::server::{Listeners, StartError};

/// Writes closer together than this are one change (editors write a file
/// in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Why a reload or rollback did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config is not valid.
    #[error("the config is not valid:\n{0}")]
    Invalid(ConfigErrors),
    /// A new listener address could not be bound.
    #[error(transparent)]
    Bind(#[from] StartError),
    /// The admin address changed.
    #[error("admin.address cannot change while running (it is {running}, the config says {wanted}); restart to move the admin API")]
    AdminMoved {
        /// The running admin address.
        running: std::net::SocketAddr,
        /// The new one.
        wanted: std::net::SocketAddr,
    },
    /// A rollback target could not be read.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Rollback needs the history, which is unavailable.
    #[error("the config history is unavailable")]
    NoHistory,
    /// The config file could not be rewritten for a rollback.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The fleet store (etcd) refused or failed.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// A file reload was asked of a fleet node.
    #[error("this node is in fleet mode: its config comes from etcd; push a change with `switchyard config push FILE` (or POST /admin/config)")]
    FleetMode,
    /// A guarded change is being watched; another change would muddle
    /// its figures.
    #[error("version {version} is being watched by a config guard for {remaining}s more; wait for its verdict (`switchyard config apply` prints it, GET /admin/config/guard shows it), or pass --force (force=true) to end the guard early, keeping version {version}, and apply this change")]
    GuardRunning {
        /// The version being watched.
        version: ConfigVersion,
        /// Seconds left of its window.
        remaining: u64,
    },
    /// Another fleet node's guard is watching a version it pushed.
    #[error("node {node} is watching version {version} with a config guard (GET /admin/config/guard on that node shows it); wait for its verdict, or pass --force (force=true) to push anyway, which ends that guard, keeping version {version}")]
    GuardElsewhere {
        /// The judging node.
        node: String,
        /// The version it watches.
        version: ConfigVersion,
    },
    /// A guard cannot be used as asked.
    #[error("{0}")]
    BadGuard(String),
    /// A push was asked of a node that is not in a fleet.
    #[error("this proxy is not in fleet mode (no `fleet:` section); edit its config file and reload instead")]
    NotFleet,
}

impl ReloadError {
    /// Whether the request itself was at fault (bad config, unknown
    /// version) rather than the machine (I/O, ports).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            ReloadError::Invalid(_)
                | ReloadError::AdminMoved { .. }
                | ReloadError::History(HistoryError::NotFound(_))
                | ReloadError::Fleet(FleetError::Conflict(_) | FleetError::NotFound(_))
                | ReloadError::FleetMode
                | ReloadError::NotFleet
                | ReloadError::GuardRunning { .. }
                | ReloadError::GuardElsewhere { .. }
                | ReloadError::BadGuard(_)
        )
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum ReloadOutcome {
    /// A new version was written to the fleet; every node applies it
    /// through its watch.
    Pushed {
        /// The new version.
        version: ConfigVersion,
        /// The guard now watching it over the fleet, for a guarded push.
        #[serde(skip_serializing_if = "Option::is_none")]
        guard: Option<guard::GuardReport>,
    },
    /// A new config is serving.
    Applied {
        /// Its version, when the history could record it.
        version: Option<ConfigVersion>,
        /// What changed, in words.
        changes: Vec<String>,
        /// The guard now watching it, for a guarded change.
        #[serde(skip_serializing_if = "Option::is_none")]
        guard: Option<guard::GuardReport>,
    },
    /// The text is what is already serving; nothing was done.
    Unchanged,
}

/// The last reload, for the admin status.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// When it finished (RFC 3339).
    pub at: String,
    /// What triggered it.
    pub source: ChangeSource,
    /// `applied`, `unchanged` or `failed`.
    pub result: &'static str,
    /// The error, for a failure (or a history write that failed after an
    /// applied change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reload counters and the last reload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// The config version serving now, if recorded.
    pub current_version: Option<ConfigVersion>,
    /// Reloads that applied a change.
    pub applied: u64,
    /// Reloads that found nothing to change.
    pub unchanged: u64,
    /// Reloads refused.
    pub failed: u64,
    /// The most recent reload.
    pub last: Option<ReloadRecord>,
    /// Unreadable history entries.
    pub broken_history_entries: usize,
    /// The guard running now, else the last one to finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<guard::GuardReport>,
}

/// The live-config pipeline of a running proxy.
pub struct Reloader {
    path: PathBuf,
    registry: Arc<Registry>,
    listeners: Arc<Listeners>,
    history: HistoryStore,
    /// In fleet mode: the fleet, and this node's own file (its node-local
    /// sections overlay every version).
    fleet: Option<(Arc<Fleet>, Arc<Config>)>,
    /// sha256 of the text serving now.
    applied_sha: Mutex<String>,
    status: Mutex<ReloadStatus>,
    /// Serialises reloads: one pipeline run at a time.
    pipeline: tokio::sync::Mutex<()>,
    health_checks: Arc<CustomChecks>,
    /// The running guard and the last verdicts.
    guards: guard::Guards,
    /// Told after every applied change (the file watch then watches the
    /// directories of files the new config names).
    applied: tokio::sync::Notify,
}

impl Reloader {
    /// The pipeline for the config at `path`, which is serving `text`
    /// already; records `text` as the start-up version.
    pub(crate) fn new(
        path: PathBuf,
        registry: Arc<Registry>,
        listeners: Arc<Listeners>,
        mut history: Option<History>,
        text: &str,
        health_checks: Arc<CustomChecks>,
    ) -> Reloader {
        let mut status = ReloadStatus::default();
        if let Some(history) = history.as_mut() {
            status.broken_history_entries = history.broken().len();
            let cause = format!(
                "switchyard {} started (pid {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            );
            match history.record(text, ChangeSource::Startup, &cause, None) {
                Ok(Some(info)) => {
                    tracing::info!(version = %info.version, "config version recorded");
                    status.current_version = Some(info.version);
                }
                // Same text as the newest version: it is still that version.
                Ok(None) => status.current_version = history.latest().map(|v| v.version),
                Err(error) => tracing::error!(%error, "cannot record the start-up config version"),
            }
        }
        if let Some(version) = status.current_version {
            registry.metrics().set_config_version(version.0);
        }
        Reloader {
            path,
            registry,
            listeners,
            history: HistoryStore::Local(Mutex::new(history)),
            fleet: None,
            applied_sha: Mutex::new(history::sha256_hex(text)),
            status: Mutex::new(status),
            pipeline: tokio::sync::Mutex::new(()),
            health_checks,
            guards: guard::Guards::default(),
            applied: tokio::sync::Notify::new(),
        }
    }

    /// The pipeline of a fleet node serving `text` already (a fleet
    /// version, its snapshot, or its own file while the fleet has none);
    /// `local` is the node's own file, whose node-local sections overlay
    /// every version.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_fleet(
        path: PathBuf,
        registry: Arc<Registry>,
        listeners: Arc<Listeners>,
        fleet: Arc<Fleet>,
        local: Config,
        serving: Option<&StoredVersion>,
        text: &str,
        health_checks: Arc<CustomChecks>,
    ) -> Reloader {
        let status = ReloadStatus {
            current_version: serving.map(|v| v.info.version),
            ..ReloadStatus::default()
        };
        if let Some(version) = status.current_version {
            registry.metrics().set_config_version(version.0);
        }
        Reloader {
            path,
            registry,
            listeners,
            history: HistoryStore::Fleet(Arc::clone(&fleet)),
            fleet: Some((fleet, Arc::new(local))),
            applied_sha: Mutex::new(history::sha256_hex(text)),
            status: Mutex::new(status),
            pipeline: tokio::sync::Mutex::new(()),
            health_checks,
            guards: guard::Guards::default(),
            applied: tokio::sync::Notify::new(),
        }
    }

    /// The fleet, in fleet mode.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref().map(|(fleet, _)| fleet)
    }

    /// The config history.
    pub fn history(&self) -> &HistoryStore {
        &self.history
    }

    /// Validates `text` as a fleet version, the way every node will.
    fn parse_shared(&self, text: &str) -> Result<Config, ReloadError> {
        let Some((_, local)) = &self.fleet else {
            return Err(ReloadError::NotFleet);
        };
        let config = config::parse_shared(text)
            .map_err(ReloadError::Invalid)?
            .with_node_local(local);
        health::unknown_custom_checks(&config, &self.health_checks)
            .map_err(ReloadError::Invalid)?;
        Ok(config)
    }

    /// Validates `text` here and writes it to the fleet as the next
    /// version (if the current one is still `base`, when given).
    pub async fn push(
        &self,
        text: &str,
        cause: &str,
        base: Option<ConfigVersion>,
    ) -> Result<ReloadOutcome, ReloadError> {
        self.parse_shared(text)?;
        let Some((fleet, _)) = &self.fleet else {
            return Err(ReloadError::NotFleet);
        };
        if let Some(running) = self.guards.watching() {
            return Err(guard::refusal(&running));
        }
        match fleet
            .push(text, ChangeSource::Push, cause, None, base)
            .await?
        {
            PushOutcome::Pushed(version) => {
                tracing::info!(%version, cause, "config version pushed to the fleet");
                Ok(ReloadOutcome::Pushed {
                    version,
                    guard: None,
                })
            }
            PushOutcome::Unchanged(_) => Ok(ReloadOutcome::Unchanged),
        }
    }

    /// Applies a fleet version that the watch delivered, through the same
    /// pipeline as a file reload; the fleet learns the outcome.
    pub async fn apply_fleet(&self, version: &StoredVersion) -> Result<ReloadOutcome, ReloadError> {
        let _one_at_a_time = self.pipeline.lock().await;
        let cause = format!(
            "fleet version {} ({} from node {})",
            version.info.version,
            version.info.source.as_str(),
            version.author
        );
        let result: Result<Option<Vec<String>>, ReloadError> = async {
            let config = self.parse_shared(&version.config)?;
            self.swap(&version.config, config, false).await
        }
        .await;
        let result = match result {
            Ok(changes) => {
                if let Some((fleet, _)) = &self.fleet {
                    fleet.applied(version);
                }
                lock(&self.status).current_version = Some(version.info.version);
                self.registry
                    .metrics()
                    .set_config_version(version.info.version.0);
                Ok(match changes {
                    Some(changes) => ReloadOutcome::Applied {
                        version: Some(version.info.version),
                        changes,
                        guard: None,
                    },
                    None => ReloadOutcome::Unchanged,
                })
            }
            Err(error) => {
                if let Some((fleet, _)) = &self.fleet {
                    fleet.refused(version.info.version, error.to_string());
                }
                Err(error)
            }
        };
        self.finish(ChangeSource::Push, &cause, result)
    }

    /// The config file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Counters and the last reload.
    pub fn status(&self) -> ReloadStatus {
        let mut status = lock(&self.status).clone();
        status.guard = self.guards.current();
        status
    }

    /// The running guard, else the last one to finish.
    pub fn guard(&self) -> Option<guard::GuardReport> {
        self.guards.current()
    }

    /// Every remembered guard report (the last 100), oldest first.
    pub fn guard_reports(&self) -> Vec<guard::GuardReport> {
        self.guards.reports()
    }

    /// Every readable version, oldest first, and the unreadable entries.
    pub async fn versions(
        &self,
    ) -> Result<(Vec<VersionInfo>, Vec<history::BrokenEntry>), ReloadError> {
        self.history.versions().await
    }

    /// The text of a version.
    pub async fn version_text(&self, version: ConfigVersion) -> Result<String, ReloadError> {
        self.history.text(version).await
    }

    /// Reads the file and applies it if it changed. A change made by
    /// editing the file (file watch, SIGHUP) is guarded by the `guard:`
    /// of the config serving when it comes, if it has one.
    pub async fn reload(
        self: &Arc<Self>,
        source: ChangeSource,
        cause: &str,
    ) -> Result<ReloadOutcome, ReloadError> {
        let guard = match source {
            ChangeSource::File | ChangeSource::Signal => self.registry.config().guard.clone(),
            _ => None,
        };
        self.reload_guarded(source, cause, guard, false).await
    }

    /// Reads the file and applies it if it changed, watched by `guard`
    /// when given. `force` ends a running guard early (keeping its
    /// change) instead of refusing.
    pub async fn reload_guarded(
        self: &Arc<Self>,
        source: ChangeSource,
        cause: &str,
        guard: Option<GuardSpec>,
        force: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        if self.fleet.is_some() {
            let result = Err(ReloadError::FleetMode);
            return self.finish(source, cause, result);
        }
        let _one_at_a_time = self.pipeline.lock().await;
        let result = async {
            let text = config::read_text(&self.path)
                .await
                .map_err(|error| match error {
                    config::LoadError::Read { path, source } => ReloadError::Read { path, source },
                    config::LoadError::Invalid { errors, .. } => ReloadError::Invalid(errors),
                })?;
            self.apply_watched(text, source, cause, guard, force, false)
                .await
        }
        .await;
        self.finish(source, cause, result)
    }

    /// Writes `text` to the config file and applies it (single node), or
    /// pushes it to the fleet; watched by `guard` when given. `force`
    /// ends a running guard early instead of refusing.
    pub async fn apply_text(
        self: &Arc<Self>,
        text: &str,
        cause: &str,
        guard: Option<GuardSpec>,
        force: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        if self.fleet.is_some() {
            return self.push_guarded(text, cause, None, guard, force).await;
        }
        let _one_at_a_time = self.pipeline.lock().await;
        let result = self
            .apply_watched(
                text.to_string(),
                ChangeSource::Api,
                cause,
                guard,
                force,
                true,
            )
            .await;
        self.finish(ChangeSource::Api, cause, result)
    }

    /// Applies `text` (writing it to the file first with `write_file`)
    /// and starts `guard` over it. Runs under the pipeline lock.
    async fn apply_watched(
        self: &Arc<Self>,
        text: String,
        source: ChangeSource,
        cause: &str,
        guard: Option<GuardSpec>,
        force: bool,
        write_file: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        let Some(spec) = guard else {
            return self
                .apply(text, source, cause, None, force, write_file)
                .await;
        };
        let config = config::parse(&text).map_err(ReloadError::Invalid)?;
        guard_services_exist(&spec, &config)?;
        let previous = lock(&self.status).current_version;
        let Some(previous) = previous.filter(|_| self.history.available()) else {
            return Err(ReloadError::BadGuard(
                "a guarded change needs the config history (to restore the previous version), which is unavailable".into(),
            ));
        };
        let outcome = self
            .apply(text, source, cause, None, force, write_file)
            .await?;
        let ReloadOutcome::Applied {
            version: Some(version),
            changes,
            ..
        } = outcome
        else {
            return Ok(outcome);
        };
        let report = guard::report(&spec, version, previous);
        let stop = self.guards.start(report.clone());
        tracing::info!(%version, restores = %previous, guards = %report.checks.join(", "), window = ?spec.window, "config change applied under guard");
        tokio::spawn(guard::watch(Arc::clone(self), spec, version, stop));
        Ok(ReloadOutcome::Applied {
            version: Some(version),
            changes,
            guard: Some(report),
        })
    }

    /// Makes version `version` current again: validates it, writes it to
    /// the config file (which stays the source of truth), applies it and
    /// records it as a new version. Changes nothing if any step fails.
    pub async fn rollback(
        &self,
        version: ConfigVersion,
        cause: &str,
    ) -> Result<ReloadOutcome, ReloadError> {
        self.rollback_forced(version, cause, false).await
    }

    /// Restores `version` for a guard that tripped (its guard has ended).
    async fn rollback_for_guard(
        &self,
        version: ConfigVersion,
        cause: &str,
    ) -> Result<ReloadOutcome, ReloadError> {
        self.rollback_forced(version, cause, true).await
    }

    /// Like [`Reloader::rollback`]; `force` ends a running guard early
    /// instead of refusing.
    pub async fn rollback_forced(
        &self,
        version: ConfigVersion,
        cause: &str,
        force: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        if let Some((fleet, _)) = &self.fleet {
            if let Some(running) = self.guards.watching() {
                if !force {
                    return Err(guard::refusal(&running));
                }
                if self.guards.end_by_force(cause).is_some() {
                    self.registry.metrics().guard_verdict("ended_by_force");
                }
            }
            if let Some((node, version)) = fleet.guard_elsewhere().filter(|_| !force) {
                return Err(ReloadError::GuardElsewhere { node, version });
            }
            // A rollback is a push of the old text as a new version.
            let text = self.version_text(version).await?;
            self.parse_shared(&text)?;
            return match fleet
                .push(&text, ChangeSource::Rollback, cause, Some(version), None)
                .await?
            {
                PushOutcome::Pushed(new) => {
                    tracing::info!(version = %new, restores = %version, "rollback pushed to the fleet");
                    Ok(ReloadOutcome::Pushed {
                        version: new,
                        guard: None,
                    })
                }
                PushOutcome::Unchanged(_) => Ok(ReloadOutcome::Unchanged),
            };
        }
        let _one_at_a_time = self.pipeline.lock().await;
        let result = async {
            let text = self.version_text(version).await?;
            self.apply(
                text,
                ChangeSource::Rollback,
                cause,
                Some(version),
                force,
                true,
            )
            .await
        }
        .await;
        self.finish(ChangeSource::Rollback, cause, result)
    }

    /// Applies `text`; with `write_file` the config file is rewritten
    /// first (a rollback or an applied text: the file stays the source of
    /// truth). A change while a guard runs is refused, unless `force`
    /// (then the guard ends, keeping its change).
    async fn apply(
        &self,
        text: String,
        source: ChangeSource,
        cause: &str,
        rollback_of: Option<ConfigVersion>,
        force: bool,
        write_file: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        let config = config::parse(&text).map_err(ReloadError::Invalid)?;
        for warning in crate::traffic::matcher::route_warnings(&config.routes) {
            tracing::warn!(%warning, "config has a route that can never match");
        }
        let same_text = *lock(&self.applied_sha) == history::sha256_hex(&text);
        if !same_text {
            if let Some(running) = self.guards.watching() {
                if !force {
                    return Err(ReloadError::GuardRunning {
                        version: running.version,
                        remaining: running
                            .window_seconds
                            .saturating_sub(running.elapsed_seconds),
                    });
                }
                if self.guards.end_by_force(cause).is_some() {
                    self.registry.metrics().guard_verdict("ended_by_force");
                }
            }
        }
        let old = self.registry.config();
        let Some(changes) = self.swap(&text, config.clone(), write_file).await? else {
            return Ok(ReloadOutcome::Unchanged);
        };
        // Same text, new result: files it names changed (certificates);
        // that is a version too, its cause saying which.
        let cause = if same_text {
            let certificates = changed_certificates(&old, &config);
            if certificates.is_empty() {
                format!("{cause}; files named by the config changed")
            } else {
                format!("{cause}; certificates changed: {}", certificates.join(", "))
            }
        } else {
            cause.to_string()
        };
        let version = self
            .history
            .record_local(&text, source, &cause, rollback_of, same_text);
        Ok(ReloadOutcome::Applied {
            version,
            changes,
            guard: None,
        })
    }

    /// Checks a parsed config against what is running, binds its new
    /// listeners and publishes it in one swap; None when it is what is
    /// serving already. With `write_file`, the config file is rewritten
    /// before the swap (if that fails, nothing has changed).
    async fn swap(
        &self,
        text: &str,
        config: Config,
        write_file: bool,
    ) -> Result<Option<Vec<String>>, ReloadError> {
        let sha = history::sha256_hex(text);
        // Same text and same result (certificate files are part of the
        // config, so new certificates behind the same text do apply).
        if *lock(&self.applied_sha) == sha && *self.registry.config() == config {
            return Ok(None);
        }
        health::unknown_custom_checks(&config, &self.health_checks)
            .map_err(ReloadError::Invalid)?;
        let old = self.registry.config();
        if config.admin.address != old.admin.address {
            return Err(ReloadError::AdminMoved {
                running: old.admin.address,
                wanted: config.admin.address,
            });
        }
        let changes = describe_changes(&old, &config);
        let prepared = self.listeners.prepare(&config).await?;
        if write_file {
            let path = self.path.clone();
            let bytes = text.as_bytes().to_vec();
            tokio::task::spawn_blocking(move || history::write_atomically(&path, &bytes))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|source| ReloadError::Write {
                    path: self.path.display().to_string(),
                    source,
                })?;
        }
        self.registry.apply_config(config.clone());
        self.listeners.commit(prepared, &config);
        *lock(&self.applied_sha) = sha;
        Ok(Some(changes))
    }

    fn finish(
        &self,
        source: ChangeSource,
        cause: &str,
        result: Result<ReloadOutcome, ReloadError>,
    ) -> Result<ReloadOutcome, ReloadError> {
        let mut status = lock(&self.status);
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let (outcome, error) = match &result {
            Ok(ReloadOutcome::Applied {
                version, changes, ..
            }) => {
                status.applied += 1;
                self.applied.notify_one();
                if version.is_some() {
                    status.current_version = *version;
                }
                tracing::info!(
                    source = source.as_str(),
                    cause,
                    version = version.map(|v| v.0),
                    changes = %changes.join("; "),
                    "config reloaded"
                );
                let error = version
                    .is_none()
                    .then(|| "applied, but the version could not be recorded".to_string());
                ("applied", error.filter(|_| self.history.available()))
            }
            Ok(ReloadOutcome::Pushed { version, .. }) => {
                tracing::info!(source = source.as_str(), cause, %version, "config version pushed");
                ("pushed", None)
            }
            Ok(ReloadOutcome::Unchanged) => {
                status.unchanged += 1;
                tracing::debug!(
                    source = source.as_str(),
                    cause,
                    "config unchanged; nothing to reload"
                );
                ("unchanged", None)
            }
            Err(error) => {
                status.failed += 1;
                tracing::error!(
                    source = source.as_str(),
                    cause,
                    "config reload refused, the running config stays: {}",
                    config::one_line(&error.to_string())
                );
                ("failed", Some(error.to_string()))
            }
        };
        self.registry
            .metrics()
            .reload(outcome, status.current_version.map(|v| v.0));
        status.last = Some(ReloadRecord {
            at,
            source,
            result: outcome,
            error,
        });
        result
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The certificates of `new` that `old` did not serve, each as its chain
/// file, the SHA-256 fingerprint of its leaf (as `openssl x509
/// -fingerprint -sha256` prints it) and its key file.
fn changed_certificates(old: &Config, new: &Config) -> Vec<String> {
    let serving = |c: &Config| -> Vec<config::CertificateConfig> {
        c.listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|tls| tls.certificates.iter().cloned())
            .collect()
    };
    let before = serving(old);
    let mut changed: Vec<String> = serving(new)
        .into_iter()
        .filter(|c| !before.contains(c))
        .map(|c| {
            let leaf = c.chain.first().map(<sha2::Sha256 as sha2::Digest>::digest);
            let fingerprint = leaf.map_or_else(String::new, |digest| {
                digest
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<Vec<_>>()
                    .join(":")
            });
            format!(
                "{} (sha256 {fingerprint}) with key {}",
                c.cert_path, c.key_path
            )
        })
        .collect();
    changed.dedup();
    changed
}

/// What differs between two configs, in words, for the reload log line.
pub fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    for listener in &new.listeners {
        if !old.listeners.iter().any(|l| l.address == listener.address) {
            changes.push(format!("listener {} added", listener.address));
        }
    }
    for listener in &old.listeners {
        if !new.listeners.iter().any(|l| l.address == listener.address) {
            changes.push(format!("listener {} removed", listener.address));
        }
    }
    for listener in &new.listeners {
        if let Some(before) = old.listeners.iter().find(|l| l.address == listener.address) {
            let what = limit_changes(&before.limits, &listener.limits);
            if !what.is_empty() {
                changes.push(format!(
                    "listener {} limits changed ({}; new connections get them)",
                    listener.address,
                    what.join(", ")
                ));
            }
        }
    }
    for (name, service) in &new.services {
        match old.services.get(name) {
            None => changes.push(format!("service {name} added")),
            Some(before) if before != service => {
                let mut what = Vec::new();
                if before.strategy != service.strategy {
                    what.push(format!(
                        "strategy {} → {}",
                        before.strategy, service.strategy
                    ));
                }
                let ids = |s: &config::ServiceConfig| -> Vec<String> {
                    s.instances.iter().map(|i| i.id.to_string()).collect()
                };
                let (old_ids, new_ids) = (ids(before), ids(service));
                let added: Vec<&String> = new_ids.iter().filter(|i| !old_ids.contains(i)).collect();
                let removed: Vec<&String> =
                    old_ids.iter().filter(|i| !new_ids.contains(i)).collect();
                if !added.is_empty() {
                    what.push(format!("instances added: {}", join(&added)));
                }
                if !removed.is_empty() {
                    what.push(format!("instances removed: {}", join(&removed)));
                }
                if what.is_empty() {
                    what.push("settings or instance details".into());
                }
                changes.push(format!("service {name} changed ({})", what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for name in old.services.keys() {
        if !new.services.contains_key(name) {
            changes.push(format!("service {name} removed"));
        }
    }
    if old.routes != new.routes {
        changes.push(format!(
            "routes changed ({} → {})",
            old.routes.len(),
            new.routes.len()
        ));
    }
    if old.trusted_proxies != new.trusted_proxies {
        changes.push("trusted_proxies changed".into());
    }
    if old.drain_timeout != new.drain_timeout {
        changes.push("drain_timeout changed".into());
    }
    if old.underscores_in_headers != new.underscores_in_headers {
        changes.push("underscores_in_headers changed".into());
    }
    if old.access_log != new.access_log {
        changes.push("access_log changed".into());
    }
    if old.tracing != new.tracing {
        changes.push("tracing changed".into());
    }
    if old.error_detail != new.error_detail {
        changes.push("error_detail changed".into());
    }
    if old.guard != new.guard {
        changes.push("guard changed".into());
    }
    let tls = |c: &Config| -> Vec<Option<config::TlsConfig>> {
        c.listeners.iter().map(|l| l.tls.clone()).collect()
    };
    if old.listeners.len() == new.listeners.len() && tls(old) != tls(new) {
        changes.push("TLS certificates changed".into());
    }
    if old.workers != new.workers {
        changes.push("workers changed (takes effect at the next restart)".into());
    }
    changes
}

/// Each limit that differs, as `name old → new`.
fn limit_changes(old: &config::ListenerLimits, new: &config::ListenerLimits) -> Vec<String> {
    /// A limit's name and how to show its value.
    type Field = (&'static str, fn(&config::ListenerLimits) -> String);
    fn duration(d: Duration) -> String {
        humantime::format_duration(d).to_string()
    }
    let fields: [Field; 8] = [
        ("max_header_bytes", |l| l.max_header_bytes.to_string()),
        ("max_headers", |l| l.max_headers.to_string()),
        ("header_read_timeout", |l| duration(l.header_read_timeout)),
        ("idle_timeout", |l| duration(l.idle_timeout)),
        ("max_concurrent_streams", |l| {
            l.max_concurrent_streams.to_string()
        }),
        ("send_timeout", |l| duration(l.send_timeout)),
        ("http1", |l| match l.http1 {
            config::Http1Server::Hyper => "hyper".into(),
            config::Http1Server::Owned => "owned".into(),
        }),
        ("max_connections", |l| {
            l.max_connections
                .map_or_else(|| "unlimited".into(), |n| n.to_string())
        }),
    ];
    fields
        .iter()
        .filter_map(|(name, show)| {
            let (old, new) = (show(old), show(new));
            (old != new).then(|| format!("{name} {old} → {new}"))
        })
        .collect()
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Watches the directories of the config file and of every certificate
/// and key file it names (so saves by rename, as editors and certificate
/// managers do them, are seen) and reloads after each burst of changes to
/// one of those files. Files first named by a reload are watched from then
/// on.
pub(crate) fn watch_file(reloader: Arc<Reloader>) -> notify::Result<JoinHandle<()>> {
    let files = Arc::new(Mutex::new(HashSet::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let seen = Arc::clone(&files);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reads (including our own) must not trigger a reload.
        let relevant = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) | EventKind::Other | EventKind::Any => false,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        };
        if relevant && event.paths.iter().any(|p| lock(&seen).contains(p)) {
            let _ = tx.send(());
        }
    })?;
    let mut dirs = HashSet::new();
    watch_more(&mut watcher, &mut dirs, &files, &reloader)?;
    tracing::info!(file = %reloader.path().display(), "watching the config file and its certificates for changes");
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        break;
                    }
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                    if reloader.path().exists() {
                        let cause = format!(
                            "{} or a certificate changed on disk",
                            reloader.path().display()
                        );
                        let _ = reloader.reload(ChangeSource::File, &cause).await;
                    }
                    // Else mid-rename, or deleted: the next event will tell.
                }
                // Any applied change (file, SIGHUP, API) may name new files.
                () = reloader.applied.notified() => {}
            }
            match watch_more(&mut watcher, &mut dirs, &files, &reloader) {
                // A file in a directory watched only now may have changed
                // before the watch began: look once.
                Ok(true) => {
                    let cause = "a certificate directory first named by the new config";
                    let _ = reloader.reload(ChangeSource::File, cause).await;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(%error, "cannot watch a new certificate directory; reload with SIGHUP or the API")
                }
            }
        }
    }))
}

/// Starts watching the directories of files the running config names that
/// are not watched yet, and makes their names the ones that count; true
/// when a directory was added.
fn watch_more(
    watcher: &mut impl Watcher,
    dirs: &mut HashSet<PathBuf>,
    files: &Mutex<HashSet<PathBuf>>,
    reloader: &Reloader,
) -> notify::Result<bool> {
    let config = reloader.registry.config();
    let certificates = config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|tls| &tls.certificates)
        .flat_map(|c| {
            [
                std::path::Path::new(&c.cert_path),
                std::path::Path::new(&c.key_path),
            ]
        });
    let mut wanted = HashSet::new();
    let mut added = false;
    for file in std::iter::once(reloader.path()).chain(certificates) {
        let Some(name) = file.file_name() else {
            continue;
        };
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Event paths are the watched directory joined with the name.
        wanted.insert(dir.join(name));
        if !dirs.contains(&dir) {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            dirs.insert(dir);
            added = true;
        }
    }
    *lock(files) = wanted;
    Ok(added)
}

/// A guard may only name services the config it judges has.
pub(crate) fn guard_services_exist(
    spec: &GuardSpec,
    config: &config::Config,
) -> Result<(), ReloadError> {
    let unknown: Vec<String> = spec
        .checks
        .iter()
        .filter_map(|c| c.service.as_ref())
        .filter(|s| !config.services.contains_key(*s))
        .map(|s| format!("guard names service `{s}`, which the new config does not have"))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ReloadError::BadGuard(unknown.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_may_name_only_services_the_config_has() {
        let config = config::parse(
            "listeners: [{address: 127.0.0.1:1000}]\nroutes: [{service: a}]\nservices:\n  a: {instances: [{id: x, address: 127.0.0.1:1}]}\n",
        )
        .unwrap();
        let spec = |lines: &[&str]| GuardSpec {
            checks: lines
                .iter()
                .map(|l| config::guard::parse_check(l).unwrap())
                .collect(),
            window: Duration::from_secs(10),
            min_requests: 100,
        };
        assert!(
            guard_services_exist(&spec(&["a: error_rate < 1%", "p99 < 300ms"]), &config).is_ok()
        );
        let refused =
            guard_services_exist(&spec(&["a: error_rate < 1%", "web: p99 < 300ms"]), &config);
        match refused {
            Err(ReloadError::BadGuard(why)) => {
                assert_eq!(
                    why,
                    "guard names service `web`, which the new config does not have"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn describes_what_changed() {
        let old = config::parse(
            "listeners: [{address: 127.0.0.1:1000}]\nroutes: [{service: a}]\nservices:\n  a: {instances: [{id: x, address: 127.0.0.1:1}, {id: y, address: 127.0.0.1:2}]}\n  b: {}\n",
        )
        .unwrap();
        let new = config::parse(
            "listeners: [{address: 127.0.0.1:1001}]\nroutes: [{service: a}]\nservices:\n  a: {strategy: random, instances: [{id: y, address: 127.0.0.1:2}, {id: z, address: 127.0.0.1:3}]}\n  c: {}\n",
        )
        .unwrap();
        assert_eq!(
            describe_changes(&old, &new),
            [
                "listener 127.0.0.1:1001 added",
                "listener 127.0.0.1:1000 removed",
                "service a changed (strategy round_robin → random, instances added: z, instances removed: x)",
                "service c added",
                "service b removed",
            ]
        );
        assert!(describe_changes(&new, &new).is_empty());
        let limited = config::parse(
            "listeners: [{address: 127.0.0.1:1001, limits: {header_read_timeout: 2s, max_connections: 10}}]\nroutes: [{service: a}]\nservices:\n  a: {strategy: random, instances: [{id: y, address: 127.0.0.1:2}, {id: z, address: 127.0.0.1:3}]}\n  c: {}\n",
        )
        .unwrap();
        assert_eq!(
            describe_changes(&new, &limited),
            vec!["listener 127.0.0.1:1001 limits changed (header_read_timeout 30s → 2s, max_connections unlimited → 10; new connections get them)"]
        );
    }
}
