//! The version history of applied configs, kept on disk.
//!
//! Every applied config is one file, `NNNNNNNNNN.json`, holding the YAML
//! verbatim with its version number, time, source, cause and sha256. A file
//! is written to a temporary name, fsynced, renamed into place and the
//! directory fsynced, so a crash at any moment leaves either the whole entry
//! or none. A rollback is a new version, never a deletion; only the
//! retention limits (a count of versions and a total of bytes on disk)
//! remove entries, oldest first.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Versions kept when no limit is given.
pub const DEFAULT_RETENTION: usize = 100;
/// Bytes of history files kept when no limit is given: the oldest versions
/// go first once the total passes it (the newest always stays).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// A config version number: 1, 2, 3 … never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConfigVersion(pub u64);

impl fmt::Display for ConfigVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What made a config version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeSource {
    /// The proxy started with it.
    Startup,
    /// The file changed on disk.
    File,
    /// SIGHUP.
    Signal,
    /// `POST /admin/reload`.
    Api,
    /// `POST /admin/config/rollback/{n}`.
    Rollback,
    /// Pushed to the fleet (`switchyard config push`, `POST /admin/config`).
    Push,
}

impl ChangeSource {
    /// The name used in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Startup => "startup",
            ChangeSource::File => "file",
            ChangeSource::Signal => "signal",
            ChangeSource::Api => "api",
            ChangeSource::Rollback => "rollback",
            ChangeSource::Push => "push",
        }
    }
}

/// Everything about a version but its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The number.
    pub version: ConfigVersion,
    /// When it was applied (RFC 3339, UTC).
    pub created_at: String,
    /// What triggered it.
    pub source: ChangeSource,
    /// Who or what caused it, in words.
    pub cause: String,
    /// sha256 of the YAML, hex.
    pub sha256: String,
    /// For a rollback: the version whose text it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<ConfigVersion>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    info: VersionInfo,
    config: String,
}

/// An entry that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenEntry {
    /// The file.
    pub file: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Why the history could not do something.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A file operation failed.
    #[error("config history in {dir}: {action}: {source}")]
    Io {
        /// The history directory.
        dir: String,
        /// What was being done.
        action: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No such version (never made, dropped by retention, or unreadable).
    #[error("config version {0} is not in the history")]
    NotFound(ConfigVersion),
    /// The entry exists but is corrupt.
    #[error("config version {version} is unreadable: {problem}")]
    Corrupt {
        /// The version.
        version: ConfigVersion,
        /// What is wrong.
        problem: String,
    },
}

/// The history directory and what is in it.
#[derive(Debug)]
pub struct History {
    dir: PathBuf,
    retention: usize,
    max_bytes: u64,
    /// Readable versions, oldest first.
    versions: Vec<VersionInfo>,
    /// The size of each version's file, in the order of `versions`.
    sizes: Vec<u64>,
    broken: Vec<BrokenEntry>,
    /// Highest version number ever seen, readable or not.
    highest: u64,
}

/// sha256 of `text`, as lower-case hex.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl History {
    /// Opens (creating if needed) the history in `dir`. Unreadable entries
    /// are listed in [`History::broken`], not fatal.
    pub fn open(dir: &Path, retention: usize) -> Result<History, HistoryError> {
        let io = |action: &str| {
            let dir = dir.display().to_string();
            let action = action.to_string();
            move |source| HistoryError::Io {
                dir,
                action,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io("create the directory"))?;
        let mut found = Vec::new();
        let mut history = History {
            dir: dir.to_path_buf(),
            retention: retention.max(1),
            max_bytes: DEFAULT_MAX_BYTES,
            versions: Vec::new(),
            sizes: Vec::new(),
            broken: Vec::new(),
            highest: 0,
        };
        for entry in fs::read_dir(dir).map_err(io("list the directory"))? {
            let entry = entry.map_err(io("list the directory"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A write that a crash interrupted; it never became a version.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(number) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            history.highest = history.highest.max(number);
            let size = entry.metadata().map_or(0, |m| m.len());
            match read_entry(&entry.path(), ConfigVersion(number)) {
                Ok(entry) => found.push((entry.info, size)),
                Err(problem) => history.broken.push(BrokenEntry {
                    file: name,
                    problem: problem.to_string(),
                }),
            }
        }
        found.sort_by_key(|(v, _)| v.version);
        (history.versions, history.sizes) = found.into_iter().unzip();
        for broken in &history.broken {
            tracing::warn!(file = %broken.file, problem = %broken.problem, dir = %dir.display(), "unreadable config history entry");
        }
        Ok(history)
    }

    /// Keeps at most `max_bytes` of history files (default
    /// [`DEFAULT_MAX_BYTES`]); applies at the next record.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> History {
        self.max_bytes = max_bytes;
        self
    }

    /// Readable versions, oldest first.
    pub fn versions(&self) -> &[VersionInfo] {
        &self.versions
    }

    /// Entries that could not be read.
    pub fn broken(&self) -> &[BrokenEntry] {
        &self.broken
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&VersionInfo> {
        self.versions.last()
    }

    /// The YAML of `version`.
    pub fn text(&self, version: ConfigVersion) -> Result<String, HistoryError> {
        if !self.versions.iter().any(|v| v.version == version) {
            return Err(HistoryError::NotFound(version));
        }
        read_entry(&self.path(version), version)
            .map(|entry| entry.config)
            .map_err(|problem| HistoryError::Corrupt { version, problem })
    }

    /// Records `text` as a new version, unless it is the same as the newest
    /// one (then returns None). Drops the oldest versions beyond retention.
    pub fn record(
        &mut self,
        text: &str,
        source: ChangeSource,
        cause: &str,
        rolled_back_from: Option<ConfigVersion>,
    ) -> Result<Option<VersionInfo>, HistoryError> {
        let sha256 = sha256_hex(text);
        if self.latest().is_some_and(|latest| latest.sha256 == sha256) {
            return Ok(None);
        }
        self.record_even_if_same(text, source, cause, rolled_back_from)
            .map(Some)
    }

    /// Like [`History::record`], also when the text is the latest's: a
    /// reload that applied changed files behind the same text (new
    /// certificates) is a version of its own.
    pub fn record_even_if_same(
        &mut self,
        text: &str,
        source: ChangeSource,
        cause: &str,
        rolled_back_from: Option<ConfigVersion>,
    ) -> Result<VersionInfo, HistoryError> {
        let sha256 = sha256_hex(text);
        let version = ConfigVersion(self.highest + 1);
        let info = VersionInfo {
            version,
            created_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            source,
            cause: cause.to_string(),
            sha256,
            rolled_back_from,
        };
        let entry = Entry {
            info: info.clone(),
            config: text.to_string(),
        };
        let json =
            serde_json::to_vec_pretty(&entry).map_err(|e| self.io_error("encode", e.into()))?;
        write_atomically(&self.path(version), &json)
            .map_err(|e| self.io_error("write a version", e))?;
        self.highest = version.0;
        self.versions.push(info.clone());
        self.sizes
            .push(u64::try_from(json.len()).unwrap_or(u64::MAX));
        self.enforce_retention();
        Ok(info)
    }

    fn enforce_retention(&mut self) {
        let mut total: u64 = self.sizes.iter().fold(0, |a, b| a.saturating_add(*b));
        while self.versions.len() > self.retention
            || (self.versions.len() > 1 && total > self.max_bytes)
        {
            let oldest = self.versions.remove(0);
            total = total.saturating_sub(self.sizes.remove(0));
            if let Err(error) = fs::remove_file(self.path(oldest.version)) {
                tracing::warn!(version = %oldest.version, %error, "cannot remove an old config version");
            }
        }
    }

    fn path(&self, version: ConfigVersion) -> PathBuf {
        self.dir.join(format!("{:010}.json", version.0))
    }

    fn io_error(&self, action: &str, source: std::io::Error) -> HistoryError {
        HistoryError::Io {
            dir: self.dir.display().to_string(),
            action: action.to_string(),
            source,
        }
    }
}

fn read_entry(path: &Path, expected: ConfigVersion) -> Result<Entry, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let entry: Entry =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a history entry: {e}"))?;
    if entry.info.version != expected {
        return Err(format!(
            "file name says version {expected}, content says {}",
            entry.info.version
        ));
    }
    if sha256_hex(&entry.config) != entry.info.sha256 {
        return Err("the config text does not match its sha256".into());
    }
    Ok(entry)
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a mix: temporary file, fsync, rename, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchyard-history-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_versions_and_skips_unchanged_text() {
        let dir = temp_dir("record");
        let mut history = History::open(&dir, 10).unwrap();
        let v1 = history
            .record("a: 1\n", ChangeSource::Startup, "start", None)
            .unwrap()
            .unwrap();
        assert_eq!(v1.version, ConfigVersion(1));
        assert!(history
            .record("a: 1\n", ChangeSource::File, "same", None)
            .unwrap()
            .is_none());
        let v2 = history
            .record("a: 2\n", ChangeSource::Api, "api", None)
            .unwrap()
            .unwrap();
        assert_eq!(v2.version, ConfigVersion(2));
        assert_eq!(history.text(ConfigVersion(1)).unwrap(), "a: 1\n");
        assert_eq!(v2.sha256, sha256_hex("a: 2\n"));

        // Reopened, it is all still there.
        let reopened = History::open(&dir, 10).unwrap();
        assert_eq!(reopened.versions(), history.versions());
        assert!(reopened.broken().is_empty());
    }

    #[test]
    fn retention_drops_only_the_oldest() {
        let dir = temp_dir("retention");
        let mut history = History::open(&dir, 3).unwrap();
        for i in 0..5 {
            history
                .record(&format!("n: {i}\n"), ChangeSource::File, "edit", None)
                .unwrap();
        }
        let numbers: Vec<u64> = history.versions().iter().map(|v| v.version.0).collect();
        assert_eq!(numbers, [3, 4, 5]);
        assert!(matches!(
            history.text(ConfigVersion(1)),
            Err(HistoryError::NotFound(_))
        ));
        let reopened = History::open(&dir, 3).unwrap();
        assert_eq!(reopened.versions().len(), 3);
        // Numbers are never reused after old ones are dropped.
        let mut reopened = reopened;
        let next = reopened
            .record("n: 9\n", ChangeSource::File, "edit", None)
            .unwrap()
            .unwrap();
        assert_eq!(next.version, ConfigVersion(6));
    }

    #[test]
    fn retention_keeps_a_bounded_total_of_bytes() {
        let dir = temp_dir("bytes");
        let mut history = History::open(&dir, 100).unwrap().with_max_bytes(5_000);
        let big = |i: usize| format!("n: {i}\npad: \"{}\"\n", "x".repeat(2_000));
        for i in 0..5 {
            history
                .record(&big(i), ChangeSource::File, "edit", None)
                .unwrap();
        }
        let numbers: Vec<u64> = history.versions().iter().map(|v| v.version.0).collect();
        assert_eq!(numbers, [4, 5], "two entries of ~2.3 kB fit in 5 kB");
        let on_disk: u64 = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 5_000, "{on_disk} bytes on disk");
        // The newest stays even when it alone is over the limit.
        let mut tiny = History::open(&dir, 100).unwrap().with_max_bytes(10);
        tiny.record(&big(9), ChangeSource::File, "edit", None)
            .unwrap();
        assert_eq!(tiny.versions().len(), 1);
        assert_eq!(tiny.text(ConfigVersion(6)).unwrap(), big(9));
    }

    #[test]
    fn corrupt_entries_are_reported_not_fatal() {
        let dir = temp_dir("corrupt");
        let mut history = History::open(&dir, 10).unwrap();
        history
            .record("a: 1\n", ChangeSource::Startup, "start", None)
            .unwrap();
        history
            .record("a: 2\n", ChangeSource::File, "edit", None)
            .unwrap();
        fs::write(dir.join("0000000002.json"), b"{ truncated").unwrap();
        fs::write(dir.join(".0000000003.json.1.tmp"), b"half").unwrap();
        let mut reopened = History::open(&dir, 10).unwrap();
        assert_eq!(reopened.versions().len(), 1);
        assert_eq!(reopened.broken().len(), 1);
        assert_eq!(reopened.broken()[0].file, "0000000002.json");
        assert!(
            !dir.join(".0000000003.json.1.tmp").exists(),
            "leftover temporary removed"
        );
        // The broken number is not reused.
        let next = reopened
            .record("a: 3\n", ChangeSource::File, "edit", None)
            .unwrap()
            .unwrap();
        assert_eq!(next.version, ConfigVersion(3));
    }
}
