//! The etcd side of fleet mode: the key layout, the client with bounded
//! requests, and the reads and writes of config versions, registrations
//! and node status.
//!
//! Keys under the fleet prefix `P`:
//!
//! - `P/config/versions/NNNNNNNNNNNNNNNNNNNN`: one version (JSON: the text,
//!   its sha256, author node, source, cause, time), never rewritten;
//! - `P/config/current`: the number of the current version;
//! - `P/config/guards/NNNNNNNNNNNNNNNNNNNN`: the guard record of a
//!   guarded push of that version (see [`StoredGuard`]);
//! - `P/nodes/NODE`: a node's status, under that node's lease;
//! - `P/registry/SERVICE/ID`: a registration (JSON), under a lease with the
//!   registration's ttl when it has one;
//! - `P/drain/SERVICE/ID`: present while that instance is drained.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use crate::config::history::{sha256_hex, ChangeSource, ConfigVersion, VersionInfo};
use crate::config::{FleetConfig, InstanceEntry, InstanceId, Registration, ServiceName};

/// Why a fleet store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// etcd could not be reached or answered with an error.
    #[error("etcd: {0}")]
    Etcd(String),
    /// etcd did not answer in time.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// Another push won the race.
    #[error("version {0} was pushed meanwhile; re-base on it")]
    Conflict(ConfigVersion),
    /// No such version.
    #[error("config version {0} is not in the fleet history")]
    NotFound(ConfigVersion),
    /// A stored value is not what switchyard writes.
    #[error("{key} in etcd is unreadable: {problem}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// One stored version: its record and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// Number, time, source, cause, sha256.
    #[serde(flatten)]
    pub info: VersionInfo,
    /// The node that wrote it.
    pub author: String,
    /// The YAML, verbatim.
    pub config: String,
}

/// A registration as kept in etcd: what the API was given, so every node
/// validates it the same way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRegistration {
    /// Id (always set: the address when the registrant gave none).
    pub id: String,
    /// `IP:port`, or `host:port` (resolved by each node).
    pub address: String,
    /// Weight.
    pub weight: u32,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The build the instance runs, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The lease time, in words (`30s`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// The node it was registered through.
    pub node: String,
}

impl StoredRegistration {
    /// What is stored for `instance` (an address or a host name, as
    /// registered), registered through `node`.
    pub fn of(instance: &InstanceEntry, ttl: Option<Duration>, node: &str) -> StoredRegistration {
        let (weight, tags, metadata, version) = match instance {
            InstanceEntry::Address(i) => (i.weight, &i.tags, &i.metadata, &i.version),
            InstanceEntry::Named(n) => (n.weight, &n.tags, &n.metadata, &n.version),
        };
        StoredRegistration {
            id: instance.id().to_string(),
            address: instance.address_text(),
            weight: weight.get(),
            tags: tags.clone(),
            metadata: metadata.clone(),
            version: version.clone(),
            ttl: ttl.map(|t| format!("{}ms", t.as_millis())),
            node: node.to_string(),
        }
    }

    /// The instance, validated like an API registration.
    pub fn instance(&self) -> Result<InstanceEntry, String> {
        let registration = Registration {
            id: Some(self.id.clone()),
            address: self.address.clone(),
            weight: Some(i64::from(self.weight)),
            tags: self.tags.clone(),
            metadata: self.metadata.clone(),
            version: self.version.clone(),
            ttl: None,
        };
        registration
            .validate()
            .map(|(instance, _)| instance)
            .map_err(|e| e.to_string())
    }
}

/// The record of a guarded push, kept beside the versions: written by
/// the pushing node when the guard starts (under a lease while it runs, so
/// a node that dies mid-guard leaves no record claiming to watch), and
/// rewritten without a lease once there is a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredGuard {
    /// The version watched.
    pub version: ConfigVersion,
    /// The version restored if a guard trips.
    pub previous: ConfigVersion,
    /// The node that pushed and judges.
    pub node: String,
    /// The guards, as written.
    pub checks: Vec<String>,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// When the window started (RFC 3339).
    pub started_at: String,
    /// `running`, `kept`, `not_enough_traffic`, `rolling_back`,
    /// `rolled_back`, `rollback_failed` or `ended_by_force`.
    pub state: String,
    /// The verdict in words, once there is one.
    #[serde(default)]
    pub verdict: Option<String>,
    /// The version that restored `previous`, after a rollback.
    #[serde(default)]
    pub rollback_version: Option<ConfigVersion>,
    /// The nodes whose figures were judged.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Nodes left out because they stopped publishing their figures.
    #[serde(default)]
    pub left_out: Vec<String>,
}

/// A node's status value as stored, with the revision it was written at.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    /// The etcd revision of the last write.
    pub mod_revision: i64,
    /// The value (JSON).
    pub value: Vec<u8>,
}

/// The current version pointer and its record.
#[derive(Debug, Clone)]
pub struct Current {
    /// The version.
    pub version: StoredVersion,
    /// The etcd revision of the read.
    pub revision: i64,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// A new version is current.
    Pushed(ConfigVersion),
    /// The text is the current version's already.
    Unchanged(ConfigVersion),
}

/// Everything of the fleet in etcd, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct FleetState {
    /// The current version, if any was pushed.
    pub current: Option<StoredVersion>,
    /// Registrations by service and id.
    pub registrations: BTreeMap<ServiceName, BTreeMap<InstanceId, InstanceEntry>>,
    /// Drained instances.
    pub drained: Vec<(ServiceName, InstanceId)>,
    /// The revision of the read.
    pub revision: i64,
    /// Values that did not validate: key and reason.
    pub refused: Vec<(String, String)>,
}

/// The key layout of one fleet.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (no trailing `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// Everything of the fleet.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The current version pointer.
    pub fn current(&self) -> String {
        format!("{}/config/current", self.prefix)
    }

    /// All versions.
    pub fn versions(&self) -> String {
        format!("{}/config/versions/", self.prefix)
    }

    /// One version (zero-padded, so keys sort by number).
    pub fn version(&self, version: ConfigVersion) -> String {
        format!("{}{:020}", self.versions(), version.0)
    }

    /// All guard records.
    pub fn guards(&self) -> String {
        format!("{}/config/guards/", self.prefix)
    }

    /// The guard record of one version.
    pub fn guard(&self, version: ConfigVersion) -> String {
        format!("{}{:020}", self.guards(), version.0)
    }

    /// All node status keys.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// One node's status.
    pub fn node(&self, node: &str) -> String {
        format!("{}{node}", self.nodes())
    }

    /// All registrations.
    pub fn registrations(&self) -> String {
        format!("{}/registry/", self.prefix)
    }

    /// One registration.
    pub fn registration(&self, service: &ServiceName, id: &InstanceId) -> String {
        format!("{}{service}/{id}", self.registrations())
    }

    /// All drain flags.
    pub fn drains(&self) -> String {
        format!("{}/drain/", self.prefix)
    }

    /// One drain flag.
    pub fn drain(&self, service: &ServiceName, id: &InstanceId) -> String {
        format!("{}{service}/{id}", self.drains())
    }

    /// `SERVICE/ID` of a registration or drain key, if `key` is one.
    pub fn instance_of(&self, key: &str, under: &str) -> Option<(ServiceName, InstanceId)> {
        let rest = key.strip_prefix(under)?;
        let (service, id) = rest.split_once('/')?;
        Some((ServiceName::from(service), InstanceId::from(id)))
    }
}

/// A connection to etcd with a limit on every request.
#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
    node: String,
    request_timeout: Duration,
}

/// Connects (lazily: no member needs to answer yet, unless auth is on,
/// which needs a token first).
pub async fn connect(config: &FleetConfig) -> Result<Store, FleetError> {
    let etcd = &config.etcd;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(etcd.dial_timeout)
        // Pings find a dead member on an idle connection. Not more often
        // than etcd allows (its --grpc-keepalive-min-time, 5 s by default,
        // or it closes the connection); a silent watch is also caught by
        // the watch's own progress requests.
        .with_keep_alive(Duration::from_secs(10), etcd.request_timeout)
        .with_keep_alive_while_idle(true);
    if let Some((user, password)) = &etcd.user {
        // etcd's tokens expire (5 min by default): fetch a new one then.
        options = options
            .with_user(user.clone(), password.0.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &etcd.tls {
        let mut tls_options = etcd_client::TlsOptions::new();
        if let Some(ca) = &tls.ca_pem {
            tls_options = tls_options.ca_certificate(etcd_client::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            tls_options = tls_options.identity(etcd_client::Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            tls_options = tls_options.domain_name(name.clone());
        }
        options = options.with_tls(tls_options);
    }
    let connecting = Client::connect(etcd.endpoints.clone(), Some(options));
    let client = bounded(etcd.request_timeout + etcd.dial_timeout, connecting).await?;
    Ok(Store {
        client,
        keys: Keys::new(&config.prefix),
        node: config.node.clone(),
        request_timeout: etcd.request_timeout,
    })
}

async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(FleetError::Etcd(describe(&error))),
        Err(_) => Err(FleetError::Timeout(limit)),
    }
}

/// gRPC's status code UNAVAILABLE.
const GRPC_UNAVAILABLE: i32 = 14;

/// Errors after which the same request may well succeed: no leader for a
/// moment, a member that went away.
fn retryable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => i32::from(status.code()) == GRPC_UNAVAILABLE,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// The gRPC status message says what went wrong; the rest is noise.
fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{} ({:?})", status.message(), status.code())
        }
        other => other.to_string(),
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn text_of(key: &str, value: &[u8]) -> Result<String, FleetError> {
    String::from_utf8(value.to_vec()).map_err(|_| FleetError::Corrupt {
        key: key.to_string(),
        problem: "not UTF-8".into(),
    })
}

/// Reads a stored version and checks it is whole.
pub fn decode_version(key: &str, value: &[u8]) -> Result<StoredVersion, FleetError> {
    let corrupt = |problem: String| FleetError::Corrupt {
        key: key.to_string(),
        problem,
    };
    let stored: StoredVersion =
        serde_json::from_slice(value).map_err(|e| corrupt(format!("not a config version: {e}")))?;
    if sha256_hex(&stored.config) != stored.info.sha256 {
        return Err(corrupt("the config text does not match its sha256".into()));
    }
    Ok(stored)
}

impl Store {
    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The raw client, for watches and leases.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The request limit.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// One request, bounded by the request timeout. A request that etcd
    /// answered "unavailable" (no leader yet, a member going away) is sent
    /// again, within the same bound: every write here is safe to repeat.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, FleetError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, call(self.client.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) if retryable(&error) && left > pause => {
                    tracing::debug!(error = %describe(&error), "etcd request sent again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Ok(Err(error)) => return Err(FleetError::Etcd(describe(&error))),
                Err(_) => return Err(FleetError::Timeout(self.request_timeout)),
            }
        }
    }

    /// etcd's revision now.
    pub async fn revision(&self) -> Result<i64, FleetError> {
        self.current_pointer().await.map(|(_, revision)| revision)
    }

    /// The number in the current pointer and the pointer's revision.
    async fn current_pointer(&self) -> Result<(Option<ConfigVersion>, i64), FleetError> {
        let key = self.keys.current();
        let response = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let Some(kv) = response.kvs().first() else {
            return Ok((None, revision));
        };
        let text = text_of(&key, kv.value())?;
        let number = text.trim().parse().map_err(|_| FleetError::Corrupt {
            key: key.clone(),
            problem: format!("`{text}` is not a version number"),
        })?;
        Ok((Some(ConfigVersion(number)), revision))
    }

    /// The current version, if one was pushed.
    pub async fn current(&self) -> Result<Option<Current>, FleetError> {
        let (number, revision) = self.current_pointer().await?;
        match number {
            None => Ok(None),
            Some(number) => Ok(Some(Current {
                version: self.version(number).await?,
                revision,
            })),
        }
    }

    /// One version.
    pub async fn version(&self, version: ConfigVersion) -> Result<StoredVersion, FleetError> {
        let key = self.keys.version(version);
        let response = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        match response.kvs().first() {
            Some(kv) => decode_version(&key, kv.value()),
            None => Err(FleetError::NotFound(version)),
        }
    }

    /// Every key under `prefix`, with its value.
    async fn read_prefix(&self, prefix: &str) -> Result<etcd_client::GetResponse, FleetError> {
        self.call(|mut c| {
            let prefix = prefix.to_string();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await
    }

    /// Every readable version, oldest first, and the unreadable ones.
    pub async fn versions(&self) -> Result<(Vec<VersionInfo>, Vec<(String, String)>), FleetError> {
        let prefix = self.keys.versions();
        let response = self.read_prefix(&prefix).await?;
        let mut versions = Vec::new();
        let mut broken = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match decode_version(&key, kv.value()) {
                Ok(stored) => versions.push(stored.info),
                Err(error) => broken.push((key, error.to_string())),
            }
        }
        versions.sort_by_key(|v| v.version);
        Ok((versions, broken))
    }

    /// Writes `text` as the next version, if the current version is still
    /// `base` (or, without a base, what this call reads first): of two
    /// racing pushes exactly one wins; the other gets
    /// [`FleetError::Conflict`]. Drops versions beyond `retention`.
    pub async fn push(
        &self,
        text: &str,
        source: ChangeSource,
        cause: &str,
        rolled_back_from: Option<ConfigVersion>,
        base: Option<ConfigVersion>,
        retention: usize,
    ) -> Result<PushOutcome, FleetError> {
        let (current_number, _) = self.current_pointer().await?;
        // A current version that does not decode (written by hand) can
        // still be replaced by a good one.
        let current = match current_number {
            Some(number) => match self.version(number).await {
                Ok(version) => Some(version),
                Err(FleetError::Corrupt { .. } | FleetError::NotFound(_)) => None,
                Err(error) => return Err(error),
            },
            None => None,
        };
        if let Some(base) = base {
            if current_number != Some(base) {
                return Err(FleetError::Conflict(
                    current_number.unwrap_or(ConfigVersion(0)),
                ));
            }
        }
        let sha256 = sha256_hex(text);
        if let Some(current) = &current {
            if current.info.sha256 == sha256 {
                return Ok(PushOutcome::Unchanged(current.info.version));
            }
        }
        let next = ConfigVersion(current_number.map_or(1, |v| v.0.saturating_add(1)));
        let stored = StoredVersion {
            info: VersionInfo {
                version: next,
                created_at: now(),
                source,
                cause: cause.to_string(),
                sha256,
                rolled_back_from,
            },
            author: self.node.clone(),
            config: text.to_string(),
        };
        let value = serde_json::to_vec(&stored).map_err(|e| FleetError::Etcd(e.to_string()))?;
        let pointer = self.keys.current();
        let unchanged = match current_number {
            Some(number) => Compare::value(pointer.clone(), CompareOp::Equal, number.0.to_string()),
            None => Compare::create_revision(pointer.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([
                unchanged,
                // Never overwrite a version (a pointer reset by hand).
                Compare::create_revision(self.keys.version(next), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(self.keys.version(next), value, None),
                TxnOp::put(pointer, next.0.to_string(), None),
            ]);
        let response = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if !response.succeeded() {
            let (now_current, _) = self.current_pointer().await?;
            if now_current == Some(next) {
                // Our own write, if its first answer was lost and the
                // request was sent again.
                if let Ok(written) = self.version(next).await {
                    if written.info.sha256 == stored.info.sha256 && written.author == self.node {
                        return Ok(PushOutcome::Pushed(next));
                    }
                }
            }
            return Err(FleetError::Conflict(now_current.unwrap_or(next)));
        }
        if let Some(oldest_kept) = next.0.checked_sub(retention.max(1) as u64) {
            // Versions 1..=oldest_kept go, and their guard records with
            // them; a failure only leaves extra history.
            let end = ConfigVersion(oldest_kept.saturating_add(1));
            let ranges = [
                (
                    self.keys.version(ConfigVersion(0)),
                    self.keys.version(end),
                    "versions",
                ),
                (
                    self.keys.guard(ConfigVersion(0)),
                    self.keys.guard(end),
                    "guard records",
                ),
            ];
            for (from, to, what) in ranges {
                let dropped = self
                    .call(|mut c| {
                        let (from, to) = (from.clone(), to.clone());
                        async move {
                            c.delete(from, Some(DeleteOptions::new().with_range(to)))
                                .await
                        }
                    })
                    .await;
                if let Err(error) = dropped {
                    tracing::warn!(%error, "cannot drop fleet config {what} beyond retention");
                }
            }
        }
        Ok(PushOutcome::Pushed(next))
    }

    /// Everything of the fleet at one revision.
    pub async fn read_all(&self) -> Result<FleetState, FleetError> {
        let (number, revision) = self.current_pointer().await?;
        let at = GetOptions::new().with_revision(revision);
        let mut state = FleetState {
            revision,
            ..FleetState::default()
        };
        if let Some(number) = number {
            let key = self.keys.version(number);
            let response = self
                .call(|mut c| {
                    let (key, at) = (key.clone(), at.clone());
                    async move { c.get(key, Some(at)).await }
                })
                .await?;
            match response.kvs().first() {
                Some(kv) => match decode_version(&key, kv.value()) {
                    Ok(stored) => state.current = Some(stored),
                    Err(error) => state.refused.push((key, error.to_string())),
                },
                None => state.refused.push((
                    self.keys.current(),
                    format!("points at missing version {number}"),
                )),
            }
        }
        let registrations = self.keys.registrations();
        let response = self
            .call(|mut c| {
                let (key, at) = (registrations.clone(), at.clone());
                async move { c.get(key, Some(at.with_prefix())).await }
            })
            .await?;
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match self.decode_registration(&key, kv.value()) {
                Ok((service, instance)) => {
                    state
                        .registrations
                        .entry(service)
                        .or_default()
                        .insert(instance.id().clone(), instance);
                }
                Err(problem) => state.refused.push((key, problem)),
            }
        }
        let drains = self.keys.drains();
        let response = self
            .call(|mut c| {
                let (key, at) = (drains.clone(), at.clone());
                async move { c.get(key, Some(at.with_prefix().with_keys_only())).await }
            })
            .await?;
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(instance) = self.keys.instance_of(&key, &drains) {
                state.drained.push(instance);
            }
        }
        Ok(state)
    }

    /// A registration value → its service and instance.
    pub fn decode_registration(
        &self,
        key: &str,
        value: &[u8],
    ) -> Result<(ServiceName, InstanceEntry), String> {
        let (service, id) = self
            .keys
            .instance_of(key, &self.keys.registrations())
            .ok_or("not a SERVICE/ID key")?;
        let stored: StoredRegistration =
            serde_json::from_slice(value).map_err(|e| format!("not a registration: {e}"))?;
        let instance = stored.instance()?;
        if *instance.id() != id {
            return Err(format!(
                "the key says id `{id}`, the value says `{}`",
                instance.id()
            ));
        }
        Ok((service, instance))
    }

    /// Writes a registration; under a lease of `ttl` (rounded up to whole
    /// seconds, as etcd counts) when given. Returns whether it is new.
    pub async fn register(
        &self,
        service: &ServiceName,
        instance: &InstanceEntry,
        ttl: Option<Duration>,
    ) -> Result<bool, FleetError> {
        let stored = StoredRegistration::of(instance, ttl, &self.node);
        let value = serde_json::to_vec(&stored).map_err(|e| FleetError::Etcd(e.to_string()))?;
        let mut options = PutOptions::new().with_prev_key();
        if let Some(ttl) = ttl {
            let seconds = i64::try_from(ttl.as_millis().div_ceil(1000))
                .unwrap_or(i64::MAX)
                .max(1);
            options = options.with_lease(self.grant(seconds).await?);
        }
        let key = self.keys.registration(service, instance.id());
        let response = self
            .call(|mut c| {
                let (key, value, options) = (key.clone(), value.clone(), options.clone());
                async move { c.put(key, value, Some(options)).await }
            })
            .await?;
        if let Some(previous) = response.prev_key() {
            let old_lease = previous.lease();
            if old_lease != 0 {
                // The new put carries its own lease; the old one would only
                // linger until it expires.
                let _ = self
                    .call(|mut c| async move { c.lease_revoke(old_lease).await })
                    .await;
            }
        }
        Ok(response.prev_key().is_none())
    }

    /// The lease of a registration: None when there is no such key, 0 for
    /// a registration without a ttl.
    pub async fn registration_lease(
        &self,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<Option<i64>, FleetError> {
        let key = self.keys.registration(service, id);
        let response = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(response.kvs().first().map(|kv| kv.lease()))
    }

    /// A new lease of `seconds`; returns its id.
    pub async fn grant(&self, seconds: i64) -> Result<i64, FleetError> {
        self.call(|mut c| async move { c.lease_grant(seconds, None).await })
            .await
            .map(|granted| granted.id())
    }

    /// Writes `value` at `key` under `lease`.
    pub async fn put_leased(
        &self,
        key: String,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<(), FleetError> {
        self.call(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await
        .map(drop)
    }

    /// Renews a lease once; false if it had expired already.
    pub async fn renew(&self, lease: i64) -> Result<bool, FleetError> {
        let renewed = self
            .call(|mut c| async move {
                let (mut keeper, mut answers) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                answers.message().await
            })
            .await?;
        Ok(renewed.is_some_and(|answer| answer.ttl() > 0))
    }

    /// Deletes a registration; false if there was none.
    pub async fn deregister(
        &self,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<bool, FleetError> {
        let key = self.keys.registration(service, id);
        let drain = self.keys.drain(service, id);
        let response = self
            .call(|mut c| {
                let (key, drain) = (key.clone(), drain.clone());
                async move {
                    let txn = Txn::new().and_then([
                        TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key())),
                        TxnOp::delete(drain, None),
                    ]);
                    c.txn(txn).await
                }
            })
            .await?;
        let Some(etcd_client::TxnOpResponse::Delete(deleted)) =
            response.op_responses().into_iter().next()
        else {
            return Ok(false);
        };
        for previous in deleted.prev_kvs() {
            let lease = previous.lease();
            if lease != 0 {
                let _ = self
                    .call(|mut c| async move { c.lease_revoke(lease).await })
                    .await;
            }
        }
        Ok(deleted.deleted() > 0)
    }

    /// Sets or clears an instance's shared drain flag.
    pub async fn set_drained(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        drained: bool,
    ) -> Result<(), FleetError> {
        let key = self.keys.drain(service, id);
        if drained {
            self.call(|mut c| {
                let key = key.clone();
                async move { c.put(key, "1", None).await }
            })
            .await
            .map(drop)
        } else {
            self.call(|mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await
            .map(drop)
        }
    }

    /// Writes a guard record; under `lease` while the guard runs.
    pub async fn put_guard(
        &self,
        record: &StoredGuard,
        lease: Option<i64>,
    ) -> Result<(), FleetError> {
        let value = serde_json::to_vec(record).map_err(|e| FleetError::Etcd(e.to_string()))?;
        let key = self.keys.guard(record.version);
        let options = lease.map(|lease| PutOptions::new().with_lease(lease));
        self.call(|mut c| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.put(key, value, options).await }
        })
        .await
        .map(drop)
    }

    /// Every readable guard record.
    pub async fn guard_records(&self) -> Result<Vec<StoredGuard>, FleetError> {
        let prefix = self.keys.guards();
        let response = self.read_prefix(&prefix).await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// Ends a lease (its keys go with it).
    pub async fn revoke(&self, lease: i64) -> Result<(), FleetError> {
        self.call(|mut c| async move { c.lease_revoke(lease).await })
            .await
            .map(drop)
    }

    /// Every node's status value with the revision it was written at, by
    /// node name.
    pub async fn node_records(&self) -> Result<BTreeMap<String, NodeRecord>, FleetError> {
        let prefix = self.keys.nodes();
        let response = self.read_prefix(&prefix).await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let node = key.strip_prefix(&prefix)?.to_string();
                Some((
                    node,
                    NodeRecord {
                        mod_revision: kv.mod_revision(),
                        value: kv.value().to_vec(),
                    },
                ))
            })
            .collect())
    }

    /// Every node's status value.
    pub async fn nodes(&self) -> Result<Vec<serde_json::Value>, FleetError> {
        let prefix = self.keys.nodes();
        let response = self.read_prefix(&prefix).await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }
}
