//! proxy.yaml: the schema, its validation into types that cannot hold a bad
//! value, and loading from disk.
//!
//! Parsing is two steps, as in sozu: serde fills the loose [`raw`] structs
//! (`deny_unknown_fields`, so a typo is an error, with line and column), then
//! [`validate`] checks every field and every cross-field rule, collecting all
//! problems with their field paths so `switchyard check` can print them at once.

#[cfg(test)]
mod fleet_tests;
pub mod guard;
pub mod history;
mod mirror;
mod raw;
#[cfg(test)]
mod redact_tests;
mod sticky;
mod tracing_config;
mod traffic;
mod validate;
mod values;

pub use mirror::{MirrorConfig, DEFAULT_MIRROR_BODY_BYTES, MAX_MIRROR_BODY_BYTES};
pub use sticky::{SameSite, StickyConfig};
pub use tracing_config::{OtlpEndpoint, TracingConfig};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use crate::balance::Strategy;
pub use traffic::{
    BackendConfig, HeaderCondition, HeaderRewrite, HeaderTest, MatchConditions, Pattern,
    QueryCondition, QueryTest, RoutePolicy, SplitKey, Subset, SubsetFallback, MAX_BACKENDS,
    MAX_BACKEND_WEIGHT,
};
pub use values::{parse_duration, Cidr};

/// Whether `version` can be an instance version (letters, digits, `-_.:`,
/// 1-128 characters); the reason when not.
pub fn check_version(version: &str) -> Result<(), String> {
    values::check_name(version)
}

/// `host` as an instance host name (lowercase, without a trailing dot),
/// or the reason it cannot be one.
pub fn host_name(host: &str) -> Result<String, String> {
    validate::check_host_name(host)
}

/// Admin listener address when the config names none: loopback only, so
/// the admin API is never exposed by accident.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";
/// Longest accepted duration in proxy.yaml (any timeout, interval or
/// ejection time). Far beyond any sensible setting, and small enough that
/// deadlines computed from it never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted lease (`ttl`) of an API registration.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest accepted config text. Real configs are kilobytes; parsing costs
/// many times the text in memory, and every version is kept in the history.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;
/// Most YAML nodes (scalars, lists, maps) a config may have: serde-saphyr's
/// default budget, which stops documents built to exhaust the parser.
pub const MAX_YAML_NODES: usize = 250_000;
/// Largest accepted instance weight. Weighted round-robin precomputes one
/// schedule slot per unit of weight, so this bounds that schedule.
pub const MAX_WEIGHT: u32 = 1000;

/// A validated proxy configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Traffic listeners.
    pub listeners: Vec<ListenerConfig>,
    /// The admin API listener.
    pub admin: AdminConfig,
    /// Peers whose `X-Forwarded-For` is believed when finding the client IP.
    pub trusted_proxies: Vec<Cidr>,
    /// How long a shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Traffic worker threads (one per core by default). Read at start-up;
    /// a reload does not change it.
    pub workers: usize,
    /// The registry API's settings.
    pub registry: RegistryConfig,
    /// Consul, if used.
    pub consul: Option<ConsulConfig>,
    /// How instance addresses given by host name are resolved.
    pub dns: DnsConfig,
    /// Fleet mode (config, history and registry shared through etcd), if
    /// on. Node-local: never part of a pushed version.
    pub fleet: Option<FleetConfig>,
    /// Forward request headers whose names contain `_` (dropped by
    /// default, like nginx's `underscores_in_headers off`).
    pub underscores_in_headers: bool,
    /// The access log: on or off, where, in which format. A reload applies
    /// every part of it.
    pub access_log: AccessLogConfig,
    /// Trace context sampling and span export (`tracing:`).
    pub tracing: TracingConfig,
    /// What the bodies of the proxy's own error answers (502, 504, …) say.
    pub error_detail: ErrorDetail,
    /// The limit every request passes before routing (`rate_limit`).
    pub rate_limit: Option<RateLimitConfig>,
    /// The guard of changes made by editing the file (file watch, SIGHUP),
    /// if any.
    pub guard: Option<guard::GuardSpec>,
    /// Routes in the order written; the router picks the most specific.
    pub routes: Vec<RouteConfig>,
    /// Upstream services by name.
    pub services: BTreeMap<ServiceName, ServiceConfig>,
}

/// The access log's settings (`access_log:` in proxy.yaml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Whether a line is written per request (default on).
    pub enabled: bool,
    /// Where lines go (default stderr).
    pub destination: LogDestination,
    /// How a line looks (default JSON).
    pub format: AccessLogFormat,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            destination: LogDestination::Stderr,
            format: AccessLogFormat::Json,
        }
    }
}

/// Where access-log lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDestination {
    /// The process's stderr, beside the text log.
    Stderr,
    /// A file, appended to; reopened on SIGUSR1 and `POST /admin/logs/reopen`.
    File(std::path::PathBuf),
}

/// The line format of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line, with the fields the log always had.
    Json,
    /// nginx's `combined` format, then the request id and the upstream time.
    Combined,
}

/// A traffic listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// A name for logs and status (`listeners[N]` when not given).
    pub name: String,
    /// Where to accept connections.
    pub address: SocketAddr,
    /// TLS termination, if this listener speaks HTTPS.
    pub tls: Option<TlsConfig>,
    /// Limits that protect the proxy from clients.
    pub limits: ListenerLimits,
    /// Answer every request with a redirect to HTTPS on this port instead
    /// of proxying it.
    pub redirect_https: Option<u16>,
}

/// hyper's own limit on HTTP/1.1 request fields. Kept as the default: any
/// other value makes hyper allocate its field table per request.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// Per-listener limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Largest request head (request line and headers); more gets 431.
    pub max_header_bytes: usize,
    /// Time allowed from accept (TLS handshake included) to the first
    /// complete request head, on HTTP/1.1 and HTTP/2 alike (slow clients
    /// are cut off). For HTTP/1.1 it also bounds each later head, from its
    /// first byte.
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving for this long is closed (checked
    /// once per period, so it closes within two periods of falling idle).
    pub idle_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Most header fields in an HTTP/1.1 request head; more gets 431.
    pub max_headers: usize,
    /// A connection with a response ready for the client that the client
    /// does not take for this long is closed (a slow or stalled reader).
    /// With `idle_timeout`, the smaller of the two is the most a connection
    /// gets to finish after it is asked to close for being idle.
    pub send_timeout: Duration,
    /// Open connections allowed on the listener (all workers together);
    /// beyond it, new connections are accepted and closed at once. `None`:
    /// no limit but the process's descriptor limit.
    pub max_connections: Option<usize>,
    /// Open connections allowed from one client IP (the socket peer) on
    /// the listener, all workers together; `None`: no limit.
    pub max_connections_per_ip: Option<usize>,
    /// Which server speaks HTTP/1.1 to the listener's clients
    /// (`listeners[].http1`); new connections get a changed value.
    pub http1: Http1Server,
}

/// The server for a listener's HTTP/1.1 clients; HTTP/2 is always hyper's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Server {
    /// hyper's server.
    Hyper,
    /// switchyard's own HTTP/1.1 server (`http1`), the default.
    #[default]
    Owned,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_concurrent_streams: 200,
            max_headers: DEFAULT_MAX_HEADERS,
            send_timeout: Duration::from_secs(60),
            max_connections: None,
            max_connections_per_ip: None,
            http1: Http1Server::Owned,
        }
    }
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificates chosen by SNI; the first one is the default.
    pub certificates: Vec<CertificateConfig>,
}

/// One certificate chain and its key, as read from PEM files when the
/// config was loaded (so a reload sees changed files, and a bad file is
/// refused before anything changes).
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// The chain file.
    pub cert_path: String,
    /// The key file.
    pub key_path: String,
    /// Host names (exact or `*.suffix`) this certificate serves.
    pub server_names: Vec<String>,
    /// The chain, DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The private key file's content (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for CertificateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateConfig")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("server_names", &self.server_names)
            .finish_non_exhaustive()
    }
}

/// The admin API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin API listens (loopback by default).
    pub address: SocketAddr,
    /// The bearer token mutating calls need, if any.
    pub token: Option<Secret>,
    /// Reads need the token too.
    pub read_requires_token: bool,
}

/// A secret read from the config, a file or the environment; never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The registry API's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registrations may create services proxy.yaml does not define.
    pub allow_new_services: bool,
}

/// How to reach Consul.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// The agent's HTTP address.
    pub address: SocketAddr,
    /// ACL token, sent as `X-Consul-Token`.
    pub token: Option<Secret>,
    /// How long one blocking query may wait.
    pub wait: Duration,
    /// Let any server answer (`?stale`), spreading the load.
    pub stale: bool,
    /// Register switchyard itself in Consul.
    pub register: Option<ConsulRegistration>,
}

/// Fleet mode: how this node reaches etcd and who it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// How to reach etcd.
    pub etcd: EtcdConfig,
    /// The key prefix everything of this fleet lives under (no trailing
    /// `/`; default `/switchyard/<cluster>`).
    pub prefix: String,
    /// This node's name, unique in the fleet (default: the host name).
    pub node: String,
}

/// An etcd client's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Member URLs (`http://host:port`, or `https://` with `tls`).
    pub endpoints: Vec<String>,
    /// User and password, when etcd has auth on.
    pub user: Option<(String, Secret)>,
    /// TLS to etcd, read when the config was loaded.
    pub tls: Option<EtcdTls>,
    /// Limit on connecting to a member.
    pub dial_timeout: Duration,
    /// Limit on one etcd request.
    pub request_timeout: Duration,
}

/// TLS towards etcd: PEM contents.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA bundle that signs the members' certificates (system roots when
    /// none).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key, for etcd's client-cert auth.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify in the members' certificates.
    pub server_name: Option<String>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// switchyard's own entry in Consul.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulRegistration {
    /// Service name.
    pub name: String,
    /// Service id (default: name-address-port).
    pub id: Option<String>,
    /// Address to advertise (default: the first listener's IP).
    pub address: Option<std::net::IpAddr>,
    /// Tags.
    pub tags: Vec<String>,
}

/// Where a service's instances are discovered, besides the file and the
/// registry API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulDiscovery {
    /// The Consul service name.
    pub service: String,
    /// Only instances with this tag.
    pub tag: Option<String>,
    /// Another datacenter.
    pub datacenter: Option<String>,
    /// Only instances whose every check passes.
    pub passing_only: bool,
}

/// Which request hosts a route matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (lower case, no port).
    Exact(String),
    /// Hosts ending in this suffix, which starts with a dot: `*.example.com`
    /// is stored as `.example.com` and matches `a.example.com` but not
    /// `example.com`.
    Suffix(String),
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Exact(host) => f.write_str(host),
            HostMatch::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// One route: requests matching host, path and conditions go to its
/// backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Host to match.
    pub host: HostMatch,
    /// Path prefix to match, starting with `/`; matched at segment
    /// boundaries (`/api` matches `/api` and `/api/x`, not `/apix`).
    pub path_prefix: String,
    /// Remove the prefix from the path before forwarding.
    pub strip_prefix: bool,
    /// `Upgrade` protocols let through (lower-case tokens; never `h2c`).
    /// A request asking for others is forwarded without the upgrade.
    pub upgrades: Vec<String>,
    /// Instead of the prefix: a pattern the whole path must match.
    pub path_regex: Option<Pattern>,
    /// Method, header and query conditions.
    pub conditions: MatchConditions,
    /// The route's own rate limit, passed after the global one.
    pub rate_limit: Option<RateLimitConfig>,
    /// Where matching requests go and what is edited on the way.
    pub policy: RoutePolicy,
    /// Copies of matching requests go to this service too, if set.
    pub mirror: Option<MirrorConfig>,
}

/// A token-bucket rate limit (`rate_limit`): `rate` tokens per `period`,
/// at most `burst` saved, one bucket per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Tokens added per `period`.
    pub rate: NonZeroU32,
    /// The period of `rate`, whole seconds.
    pub period: Duration,
    /// Most tokens a bucket holds (requests that may come at once).
    pub burst: NonZeroU32,
    /// What a bucket belongs to.
    pub key: RateLimitKey,
    /// Most keys remembered at once.
    pub max_keys: usize,
    /// Only count what would be refused; let everything through.
    pub dry_run: bool,
}

/// What a rate limit's buckets are keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client IP (after `trusted_proxies`).
    ClientIp,
    /// The value of a request header; requests without it are not limited.
    Header(http::HeaderName),
    /// One bucket for everything the limit applies to.
    Route,
}

/// A service's circuit breaker (`circuit_breaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakerConfig {
    /// Requests in progress to the service at once, over all workers.
    pub max_requests: NonZeroU32,
    /// Retries in progress to the service at once, on top of the retry
    /// budget; `None`: the budget alone decides (as in Envoy, where a
    /// retry budget replaces `max_retries`).
    pub max_retries: Option<u32>,
    /// Requests over `max_requests` wait here, if set.
    pub queue: Option<QueueConfig>,
    /// Upstream connections open to the service at once, over all its
    /// instances and workers (on top of `max_connections_per_instance`).
    pub max_connections: NonZeroU32,
    /// Requests waiting at once for an upstream connection (none idle, and
    /// a connection limit reached); more get 503 at once.
    pub max_pending: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            max_requests: defaults::BREAKER_MAX_REQUESTS,
            max_retries: None,
            queue: None,
            max_connections: defaults::BREAKER_MAX_CONNECTIONS,
            max_pending: defaults::BREAKER_MAX_PENDING,
        }
    }
}

/// The bounded wait of a request over `max_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most requests waiting at once; more get 503 at once.
    pub size: u32,
    /// Longest wait before a 503.
    pub timeout: Duration,
}

/// An upstream service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// How an instance is picked per request.
    pub strategy: Strategy,
    /// Limit on establishing a TCP connection to an instance.
    pub connect_timeout: Duration,
    /// Limit from sending a request until the response headers arrive.
    pub request_timeout: Duration,
    /// Total tries per request (first try included) when connecting fails;
    /// each retry goes to a different instance.
    pub max_attempts: NonZeroU32,
    /// When a failed try is sent again, and how many retries may run.
    pub retry: RetryPolicy,
    /// Active health checking, if any.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive health checking (ejection on failures seen in traffic).
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// Below this percentage of healthy instances, route to all instances
    /// (fail open); 0 turns it off.
    pub panic_threshold: u8,
    /// Instances also come from Consul.
    pub discovery: Option<ConsulDiscovery>,
    /// Most upstream connections open at once to each instance (per
    /// proxy, over all workers); `None` is no limit.
    pub max_connections_per_instance: Option<NonZeroU32>,
    /// Request and retry ceilings of the service.
    pub circuit_breaker: CircuitBreakerConfig,
    /// HTTP version spoken to the instances.
    pub protocol: UpstreamProtocol,
    /// TLS to the instances, if on.
    pub tls: Option<UpstreamTls>,
    /// Sticky sessions by cookie, if on.
    pub sticky: Option<StickyConfig>,
    /// The instances listed in the file.
    pub instances: Vec<InstanceConfig>,
    /// Instances listed in the file by host name: each resolved address
    /// becomes an instance (see [`DnsConfig`]).
    pub named: Vec<NamedInstance>,
}

/// An instance given as `host:port`; the resolver turns every A/AAAA
/// record of `host` into an instance with these settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedInstance {
    /// The base of the resolved instances' ids (`host:port` when not
    /// given); each id is `<base>:<ip>`.
    pub id: InstanceId,
    /// The host name, without a trailing dot.
    pub host: String,
    /// The port the instances listen on.
    pub port: u16,
    /// Relative share of traffic of each resolved instance.
    pub weight: NonZeroU32,
    /// Free-form tags, inherited by each resolved instance.
    pub tags: Vec<String>,
    /// Free-form key/value metadata, inherited by each resolved instance.
    pub metadata: BTreeMap<String, String>,
    /// The build, inherited by each resolved instance.
    pub version: Option<String>,
}

impl NamedInstance {
    /// The instance for one resolved address: the id is derived from the
    /// name, the port and the address, so a refresh that returns the same
    /// address yields the same instance (and keeps its health and pools).
    pub fn resolved(&self, ip: std::net::IpAddr) -> InstanceConfig {
        let mut metadata = self.metadata.clone();
        metadata.insert("dns_name".into(), self.host.clone());
        InstanceConfig {
            id: InstanceId::from(format!("{}:{ip}", self.id).as_str()),
            address: SocketAddr::new(ip, self.port),
            weight: self.weight,
            tags: self.tags.clone(),
            metadata,
            version: self.version.clone(),
        }
    }
}

/// An instance as a registration or a Consul entry gives it: by address,
/// or by host name (each resolved address then becomes an instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEntry {
    /// `IP:port`: the instance itself.
    Address(InstanceConfig),
    /// `host:port`: resolved in the background like the file's names.
    Named(NamedInstance),
}

impl From<InstanceConfig> for InstanceEntry {
    fn from(instance: InstanceConfig) -> InstanceEntry {
        InstanceEntry::Address(instance)
    }
}

impl InstanceEntry {
    /// The id the entry is registered (and deregistered) under; for a
    /// name, the base of its resolved instances' ids.
    pub fn id(&self) -> &InstanceId {
        match self {
            InstanceEntry::Address(instance) => &instance.id,
            InstanceEntry::Named(named) => &named.id,
        }
    }

    /// The address as given: `IP:port` or `host:port`.
    pub fn address_text(&self) -> String {
        match self {
            InstanceEntry::Address(instance) => instance.address.to_string(),
            InstanceEntry::Named(named) => named.host_port(),
        }
    }
}

impl NamedInstance {
    /// `host:port`.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Resolution of instances given by host name (Envoy's STRICT_DNS: every
/// record is an instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask; empty means those of `/etc/resolv.conf`.
    pub resolvers: Vec<SocketAddr>,
    /// Time between resolutions of a name.
    pub refresh: Duration,
    /// Re-resolve when the answer's TTL runs out instead (bounded by
    /// [`defaults::DNS_MIN_REFRESH`] and [`defaults::DNS_MAX_REFRESH`]).
    pub respect_ttl: bool,
    /// How long a name's last answer is trusted while resolution fails
    /// transiently; after that a warning, and the instances still stay.
    pub hold: Duration,
}

impl Default for DnsConfig {
    fn default() -> DnsConfig {
        DnsConfig {
            resolvers: Vec::new(),
            refresh: defaults::DNS_REFRESH,
            respect_ttl: false,
            hold: defaults::DNS_HOLD,
        }
    }
}

/// What makes a try count as failed and be sent again (`retry.on`), and
/// the budget that keeps retries from multiplying load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// No connection could be made (nothing was sent).
    pub connect_failure: bool,
    /// The connection reset or closed before any byte of the response
    /// (idempotent requests only).
    pub reset: bool,
    /// The upstream answered 502, 503 or 504 (idempotent requests only).
    pub gateway_error: bool,
    /// The upstream answered any 5xx (idempotent requests only).
    pub server_error: bool,
    /// Retries in progress may be at most this share of the service's
    /// active requests (but [`defaults::RETRY_BUDGET_MIN_CONCURRENCY`] are
    /// always allowed).
    pub budget_percent: u8,
    /// Request bodies of known length up to this many bytes are read whole
    /// before the first try, so that an idempotent request with a body can
    /// be sent again after it was written; 0 turns that off.
    pub max_body_bytes: u64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            connect_failure: true,
            reset: true,
            gateway_error: false,
            server_error: false,
            budget_percent: defaults::RETRY_BUDGET_PERCENT,
            max_body_bytes: defaults::RETRY_MAX_BODY_BYTES,
        }
    }
}

/// The HTTP version spoken to a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, a pool of keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 (prior knowledge in cleartext, ALPN `h2` over TLS), one
    /// multiplexed connection per worker and instance.
    Http2,
}

/// TLS towards a service's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Trusted CA certificates (DER) from `ca_file`; the Mozilla roots when
    /// none is given.
    pub ca_certificates: Option<Vec<Vec<u8>>>,
    /// The name to send in SNI and to verify (default: the instance IP).
    pub server_name: Option<String>,
    /// Verify the instance's certificate (on unless turned off by hand).
    pub verify: bool,
}

/// Active health checking of a service's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// What a probe does.
    pub kind: CheckKind,
    /// A passing probe slower than this counts as a failure.
    pub max_latency: Option<Duration>,
    /// Time between probes of one instance.
    pub interval: Duration,
    /// Limit on one probe.
    pub timeout: Duration,
    /// Each wait is `interval` plus a random amount up to this, so
    /// instances are not probed in lock-step.
    pub jitter: Duration,
    /// Consecutive passes for an unhealthy instance to become healthy.
    pub healthy_threshold: NonZeroU32,
    /// Consecutive failures for a healthy instance to become unhealthy.
    pub unhealthy_threshold: NonZeroU32,
    /// The state of an instance that joins a running proxy.
    pub initial: InitialHealth,
}

/// The probe of an active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// An HTTP request.
    Http(HttpCheckConfig),
    /// A TCP connect.
    Tcp,
    /// A check registered by an embedding program under this name.
    Custom(String),
}

/// An HTTP health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheckConfig {
    /// Request method.
    pub method: http::Method,
    /// Request path (and query).
    pub path: String,
    /// `Host` header (default: the instance address).
    pub host: Option<String>,
    /// Statuses that pass.
    pub expected_status: Vec<std::ops::RangeInclusive<u16>>,
    /// The body must contain this, if set.
    pub body_contains: Option<String>,
}

/// Where a new instance starts when active checks are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialHealth {
    /// Takes traffic at once; checks can take it out.
    Healthy,
    /// Takes traffic only after passing `healthy_threshold` checks.
    Unhealthy,
}

/// Passive health checking: eject instances that fail real requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetectionConfig {
    /// Consecutive failed requests that eject an instance.
    pub consecutive_failures: NonZeroU32,
    /// Count 5xx responses as failures (connect errors, resets and
    /// timeouts always count).
    pub include_5xx: bool,
    /// The first ejection lasts this long; the Nth lasts N times as long.
    pub base_ejection_time: Duration,
    /// Cap on one ejection.
    pub max_ejection_time: Duration,
    /// Never eject more than this percentage of a service at once.
    pub max_ejection_percent: u8,
}

/// Defaults for a service's settings.
pub mod defaults {
    use std::time::Duration;

    /// Default connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default time allowed until response headers.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default tries per request.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// Default shutdown drain time.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default time between health probes.
    pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
    /// Default limit on one health probe.
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default passes to become healthy.
    pub const HEALTHY_THRESHOLD: u32 = 2;
    /// Default failures to become unhealthy.
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    /// Default failed requests before an ejection.
    pub const CONSECUTIVE_FAILURES: u32 = 5;
    /// Default first ejection time.
    pub const BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
    /// Default cap on one ejection.
    pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
    /// Default share of a service that may be ejected at once.
    pub const MAX_EJECTION_PERCENT: u8 = 50;
    /// Default share of active requests that may be retries (Envoy's).
    pub const RETRY_BUDGET_PERCENT: u8 = 20;
    /// Default `retry.max_body_bytes`: 64 KiB.
    pub const RETRY_MAX_BODY_BYTES: u64 = 64 * 1024;
    /// Envoy's default `max_requests` of a cluster's circuit breaker.
    pub const BREAKER_MAX_REQUESTS: std::num::NonZeroU32 = match std::num::NonZeroU32::new(1024) {
        Some(n) => n,
        None => std::num::NonZeroU32::MIN,
    };
    /// Envoy's default `max_connections` of a cluster's circuit breaker.
    pub const BREAKER_MAX_CONNECTIONS: std::num::NonZeroU32 = match std::num::NonZeroU32::new(1024)
    {
        Some(n) => n,
        None => std::num::NonZeroU32::MIN,
    };
    /// Envoy's default `max_pending_requests`.
    pub const BREAKER_MAX_PENDING: u32 = 1024;
    /// Default wait of a queued request (HAProxy's `timeout queue`
    /// defaults to the connect timeout; a fixed value is clearer).
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default `rate_limit.max_keys`.
    pub const RATE_LIMIT_MAX_KEYS: usize = 100_000;
    /// Retries always allowed at once, however few requests are active.
    pub const RETRY_BUDGET_MIN_CONCURRENCY: u64 = 3;
    /// First retry backoff (full jitter up to this, doubling per retry).
    pub const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
    /// Longest retry backoff.
    pub const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
    /// Default time between resolutions of an instance host name.
    pub const DNS_REFRESH: Duration = Duration::from_secs(5);
    /// Default time a name's last answer is trusted while resolution fails.
    pub const DNS_HOLD: Duration = Duration::from_secs(30);
    /// Shortest refresh when following record TTLs (TTL 0 would spin).
    pub const DNS_MIN_REFRESH: Duration = Duration::from_secs(1);
    /// Longest refresh when following record TTLs.
    pub const DNS_MAX_REFRESH: Duration = Duration::from_secs(300);
    /// Default wait of a Consul blocking query.
    pub const CONSUL_WAIT: Duration = Duration::from_secs(30);
    /// Default limit on connecting to an etcd member.
    pub const ETCD_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default limit on one etcd request.
    pub const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default fleet cluster name (the prefix is `/switchyard/<cluster>`).
    pub const FLEET_CLUSTER: &str = "default";
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// Stable id within the service (the address when not given).
    pub id: InstanceId,
    /// Where the instance listens.
    pub address: SocketAddr,
    /// Relative share of traffic, 1..=[`MAX_WEIGHT`].
    pub weight: NonZeroU32,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Free-form key/value metadata.
    pub metadata: BTreeMap<String, String>,
    /// The build the instance runs, if known (routes' `subset.version`).
    pub version: Option<String>,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                Self(Arc::from(name))
            }
        }
    };
}

name_type!(
    /// The name of an upstream service.
    ServiceName
);
name_type!(
    /// The id of an instance, unique within its service.
    InstanceId
);

/// One problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path such as `services.api.instances[2].weight`; empty for the
    /// document as a whole.
    pub path: String,
    /// What is wrong, in plain words.
    pub message: String,
    /// Line and column (1-based) for syntax and type errors.
    pub location: Option<(u64, u64)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.location {
            write!(f, "line {line}, column {column}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// How much the proxy's own error answers tell the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorDetail {
    /// What happened and the request id; upstream addresses and OS errors
    /// stay in the log (the default: they are internal).
    #[default]
    Minimal,
    /// Everything the log says, for development.
    Full,
}

/// `text` on one line: its lines (such as a list of config errors) joined
/// with `; `, so one log event stays one line in the text log format.
pub fn one_line(text: &str) -> String {
    let mut joined = String::with_capacity(text.len());
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if !joined.is_empty() {
            // `…is not a valid config:` introduces the list.
            joined.push_str(if joined.ends_with(':') { " " } else { "; " });
        }
        joined.push_str(line);
    }
    joined
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error("{path} is not a valid config:\n{errors}")]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        errors: ConfigErrors,
    },
}

/// An instance registration, as sent to the admin API.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Id within the service (default: the address).
    #[serde(default)]
    pub id: Option<String>,
    /// `IP:port`, or `host:port` (resolved by DNS).
    pub address: String,
    /// 1..=1000, default 1.
    #[serde(default)]
    pub weight: Option<i64>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The build this instance runs (`2.1`), for routes' subsets.
    #[serde(default)]
    pub version: Option<String>,
    /// Lease: the instance must send a heartbeat within this time or it is
    /// removed (e.g. `30s`).
    #[serde(default)]
    pub ttl: Option<String>,
}

impl Registration {
    /// Checks every field; the instance (or host name) and its lease time.
    pub fn validate(&self) -> Result<(InstanceEntry, Option<Duration>), ConfigErrors> {
        validate::validate_registration(self)
    }
}

impl ServiceConfig {
    /// Settings for a service created through the registry API.
    pub fn registered() -> ServiceConfig {
        ServiceConfig {
            strategy: Strategy::RoundRobin,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            request_timeout: defaults::REQUEST_TIMEOUT,
            max_attempts: NonZeroU32::new(defaults::MAX_ATTEMPTS).unwrap_or(NonZeroU32::MIN),
            retry: RetryPolicy::default(),
            health_check: None,
            outlier_detection: None,
            panic_threshold: 0,
            discovery: None,
            max_connections_per_instance: None,
            circuit_breaker: CircuitBreakerConfig::default(),
            protocol: UpstreamProtocol::Http1,
            tls: None,
            sticky: None,
            instances: Vec::new(),
            named: Vec::new(),
        }
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<(Config, String), LoadError> {
    let invalid = |errors| LoadError::Invalid {
        path: path.display().to_string(),
        errors,
    };
    let bytes = read_limited(std::fs::File::open(path)).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let text = text_of(bytes).map_err(invalid)?;
    let config = parse(&text).map_err(invalid)?;
    Ok((config, text))
}

/// Reads at most one byte more than [`MAX_CONFIG_BYTES`] from `file`, so an
/// oversized file is refused without being read whole.
fn read_limited(file: std::io::Result<std::fs::File>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_CONFIG_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    file?.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Config file bytes as text: refused when too large or not UTF-8.
fn text_of(bytes: Vec<u8>) -> Result<String, ConfigErrors> {
    check_size(bytes.len())?;
    String::from_utf8(bytes).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("the config is not UTF-8 text: {e}"),
            location: None,
        }])
    })
}

fn check_size(len: usize) -> Result<(), ConfigErrors> {
    if len <= MAX_CONFIG_BYTES {
        return Ok(());
    }
    Err(ConfigErrors(vec![ConfigError {
        path: String::new(),
        message: format!(
            "the config is larger than {} MiB ({MAX_CONFIG_BYTES} bytes), the most accepted",
            MAX_CONFIG_BYTES >> 20
        ),
        location: None,
    }]))
}

/// Parses and validates config text (at most [`MAX_CONFIG_BYTES`]).
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    check_size(text.len())?;
    let raw = parse_raw(text).map_err(|e| ConfigErrors(vec![e]))?;
    validate::validate(raw)
}

/// What stands in for a secret in config text shown by the admin API.
pub const REDACTED: &str = "<redacted>";

/// `text` with every secret written in it (`admin.token`,
/// `fleet.etcd.password`, `services.*.sticky.secret`) replaced by
/// [`REDACTED`], for showing a stored version to readers of the admin API,
/// who may not hold the token themselves. The values are found by parsing
/// the text, then replaced where they stand, so the rest of the text (and a
/// diff of two versions) is unchanged. Text that does not parse is shown
/// with whatever follows `token:`, `password:` or `secret:` on a line
/// blanked instead.
pub fn redact_secrets(text: &str) -> String {
    let Ok(raw) = parse_raw(text) else {
        return text
            .lines()
            .map(|line| {
                let key = ["token:", "password:", "secret:"]
                    .iter()
                    .filter_map(|k| line.find(k).map(|at| at + k.len()))
                    .min();
                match key {
                    Some(end) => format!("{} {REDACTED}\n", &line[..end]),
                    None => format!("{line}\n"),
                }
            })
            .collect();
    };
    let mut secrets: Vec<String> = Vec::new();
    secrets.extend(raw.admin.and_then(|a| a.token));
    secrets.extend(raw.fleet.and_then(|f| f.etcd.password));
    for service in raw.services.into_values() {
        secrets.extend(service.sticky.and_then(|s| s.secret));
    }
    // Longest first, so a secret inside another goes with it.
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut shown = text.to_string();
    for secret in secrets {
        shown = shown.replace(&secret, REDACTED);
    }
    shown
}

/// Reads a config file without blocking the runtime, as [`load`] reads it.
pub async fn read_text(path: &Path) -> Result<String, LoadError> {
    let owned = path.to_path_buf();
    let bytes = tokio::task::spawn_blocking(move || read_limited(std::fs::File::open(owned)))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
    text_of(bytes).map_err(|errors| LoadError::Invalid {
        path: path.display().to_string(),
        errors,
    })
}

/// A YAML budget breach in plain words (the parser's own is a debug dump).
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach;
    match breach {
        BudgetBreach::Nodes { .. } => format!(
            "the config has more than {MAX_YAML_NODES} YAML nodes (values, lists and maps), the most accepted"
        ),
        BudgetBreach::Depth { .. } => "the config nests lists and maps too deeply".into(),
        BudgetBreach::Aliases { .. }
        | BudgetBreach::Anchors { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::MergeKeys { .. } => {
            "the config uses too many YAML anchors, aliases or merge keys".into()
        }
        other => format!("the config is too large for the YAML parser ({other:?})"),
    }
}

/// The top-level sections that belong to one node, not to the fleet: each
/// node keeps them in its own proxy.yaml, and a pushed version may not
/// hold them.
pub const NODE_LOCAL_SECTIONS: [&str; 3] = ["fleet", "admin", "workers"];

/// Parses and validates the text of a fleet version: a whole config
/// without the node-local sections.
pub fn parse_shared(text: &str) -> Result<Config, ConfigErrors> {
    check_size(text.len())?;
    let raw = parse_raw(text).map_err(|e| ConfigErrors(vec![e]))?;
    let present = [
        raw.fleet.is_some(),
        raw.admin.is_some(),
        raw.workers.is_some(),
    ];
    let errors: Vec<ConfigError> = NODE_LOCAL_SECTIONS
        .iter()
        .zip(present)
        .filter(|(_, present)| *present)
        .map(|(name, _)| ConfigError {
            path: (*name).to_string(),
            message: "is node-local: keep it in each node's own proxy.yaml, not in a version pushed to the fleet".into(),
            location: None,
        })
        .collect();
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    validate::validate(raw)
}

impl Config {
    /// This shared config with the node-local settings of `local` (the
    /// node's own proxy.yaml): what a fleet node serves.
    pub fn with_node_local(mut self, local: &Config) -> Config {
        self.admin = local.admin.clone();
        self.workers = local.workers;
        self.fleet = local.fleet.clone();
        self
    }
}

fn parse_raw(text: &str) -> Result<raw::RawConfig, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError {
            path: String::new(),
            message: "the config is empty; at least one listener is required".into(),
            location: None,
        });
    }
    // serde_path_to_error tracks where in the document the error happened;
    // serde-saphyr knows the line and column. Keep both.
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let inner = e.without_snippet();
        let location = inner.location().map(|l| (l.line(), l.column()));
        let mut message = match inner {
            serde_saphyr::Error::Budget { breach, .. } => budget_message(breach),
            other => other.to_string(),
        };
        // The location is shown in front; drop serde-saphyr's own suffix.
        if let Some((line, column)) = location {
            let suffix = format!(" at line {line}, column {column}");
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message.truncate(stripped.len());
            }
        }
        ConfigError {
            path: if path == "." { String::new() } else { path },
            message,
            location,
        }
    })
}
