//! Where config versions are kept: one interface, two stores. A single
//! node keeps them in its local directory; a fleet node in etcd, shared
//! with every other node. `reload` and the admin API only use this.

use std::sync::{Arc, Mutex, PoisonError};

use super::ReloadError;
use crate::config::history::{BrokenEntry, ChangeSource, ConfigVersion, History, VersionInfo};
use crate::fleet::{Fleet, FleetError};

/// The config history of a running proxy.
pub enum HistoryStore {
    /// The local directory (None: it could not be opened; the proxy runs
    /// without history).
    Local(Mutex<Option<History>>),
    /// etcd, shared by the fleet.
    Fleet(Arc<Fleet>),
}

impl HistoryStore {
    /// Every readable version, oldest first, and the unreadable entries.
    pub async fn versions(&self) -> Result<(Vec<VersionInfo>, Vec<BrokenEntry>), ReloadError> {
        match self {
            HistoryStore::Local(history) => lock(history)
                .as_ref()
                .map(|h| (h.versions().to_vec(), h.broken().to_vec()))
                .ok_or(ReloadError::NoHistory),
            HistoryStore::Fleet(fleet) => {
                let store = fleet.store().await?;
                let (versions, broken) =
                    store.versions().await.inspect_err(|_| fleet.etcd_error())?;
                let broken = broken
                    .into_iter()
                    .map(|(file, problem)| BrokenEntry { file, problem })
                    .collect();
                Ok((versions, broken))
            }
        }
    }

    /// The YAML of a version.
    pub async fn text(&self, version: ConfigVersion) -> Result<String, ReloadError> {
        match self {
            HistoryStore::Local(history) => match lock(history).as_ref() {
                Some(history) => Ok(history.text(version)?),
                None => Err(ReloadError::NoHistory),
            },
            HistoryStore::Fleet(fleet) => {
                let store = fleet.store().await?;
                let stored = store.version(version).await.inspect_err(|e| {
                    if !matches!(e, FleetError::NotFound(_)) {
                        fleet.etcd_error()
                    }
                })?;
                Ok(stored.config)
            }
        }
    }

    /// Records an applied config in the local directory. Fleet versions
    /// are recorded when pushed, so there is nothing to do for them.
    /// Returns the version, None when it could not be recorded.
    /// With `same_text_too`, a text equal to the latest is recorded again
    /// (files behind it changed).
    pub(super) fn record_local(
        &self,
        text: &str,
        source: ChangeSource,
        cause: &str,
        rollback_of: Option<ConfigVersion>,
        same_text_too: bool,
    ) -> Option<ConfigVersion> {
        let HistoryStore::Local(history) = self else {
            return None;
        };
        let mut history = lock(history);
        let history = history.as_mut()?;
        let recorded = if same_text_too {
            history
                .record_even_if_same(text, source, cause, rollback_of)
                .map(Some)
        } else {
            history.record(text, source, cause, rollback_of)
        };
        match recorded {
            Ok(Some(info)) => Some(info.version),
            Ok(None) => history.latest().map(|v| v.version),
            Err(error) => {
                tracing::error!(%error, "config applied but its version could not be recorded");
                None
            }
        }
    }

    /// Whether versions can be recorded at all.
    pub(super) fn available(&self) -> bool {
        match self {
            HistoryStore::Local(history) => lock(history).is_some(),
            HistoryStore::Fleet(_) => true,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
