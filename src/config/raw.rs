//! The proxy.yaml schema exactly as written by a user.
//!
//! Everything here is deliberately loose (strings, signed integers) so that
//! `validate` can check every field and report *all* problems at once with
//! their field paths, instead of stopping at the first type error.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) listeners: Vec<RawListener>,
    #[serde(default)]
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
    #[serde(default)]
    pub(crate) drain_timeout: Option<String>,
    #[serde(default)]
    pub(crate) workers: Option<i64>,
    #[serde(default)]
    pub(crate) registry: Option<RawRegistry>,
    #[serde(default)]
    pub(crate) consul: Option<RawConsul>,
    #[serde(default)]
    pub(crate) dns: Option<RawDns>,
    #[serde(default)]
    pub(crate) fleet: Option<RawFleet>,
    #[serde(default)]
    pub(crate) underscores_in_headers: bool,
    #[serde(default)]
    pub(crate) access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub(crate) tracing: Option<RawTracing>,
    #[serde(default)]
    pub(crate) rate_limit: Option<RawRateLimit>,
    pub(crate) error_detail: Option<String>,
    #[serde(default)]
    pub(crate) guard: Option<RawGuard>,
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(crate) services: BTreeMap<String, RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuard {
    #[serde(default)]
    pub(crate) checks: Vec<String>,
    #[serde(default, rename = "for")]
    pub(crate) window: Option<String>,
    #[serde(default)]
    pub(crate) min_requests: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    #[serde(default)]
    pub(crate) enabled: Option<bool>,
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) format: Option<String>,
}

/// `tracing:`: trace context sampling and the OTLP/HTTP span export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTracing {
    #[serde(default)]
    pub(crate) otlp_endpoint: Option<String>,
    #[serde(default)]
    pub(crate) sample_ratio: Option<f64>,
    #[serde(default)]
    pub(crate) service_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    #[serde(default)]
    pub(crate) resolvers: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) refresh: Option<String>,
    #[serde(default)]
    pub(crate) respect_ttl: Option<bool>,
    #[serde(default)]
    pub(crate) hold: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) tls: Option<RawTls>,
    #[serde(default)]
    pub(crate) limits: Option<RawLimits>,
    #[serde(default)]
    pub(crate) redirect_https: Option<i64>,
    #[serde(default)]
    pub(crate) http1: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    #[serde(default)]
    pub(crate) max_header_bytes: Option<i64>,
    #[serde(default)]
    pub(crate) header_read_timeout: Option<String>,
    #[serde(default)]
    pub(crate) idle_timeout: Option<String>,
    #[serde(default)]
    pub(crate) max_concurrent_streams: Option<i64>,
    #[serde(default)]
    pub(crate) max_headers: Option<i64>,
    pub(crate) send_timeout: Option<String>,
    #[serde(default)]
    pub(crate) max_connections: Option<i64>,
    #[serde(default)]
    pub(crate) max_connections_per_ip: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) certificates: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub(crate) cert: String,
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) server_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    #[serde(default)]
    pub(crate) address: Option<String>,
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) token_file: Option<String>,
    #[serde(default)]
    pub(crate) token_env: Option<String>,
    #[serde(default)]
    pub(crate) read_requires_token: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegistry {
    #[serde(default)]
    pub(crate) allow_new_services: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsul {
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) token_file: Option<String>,
    #[serde(default)]
    pub(crate) token_env: Option<String>,
    #[serde(default)]
    pub(crate) wait: Option<String>,
    #[serde(default)]
    pub(crate) stale: Option<bool>,
    #[serde(default)]
    pub(crate) register: Option<RawConsulRegister>,
}

/// `fleet:`: several nodes sharing config, history and registry in etcd.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub(crate) etcd: RawEtcd,
    #[serde(default)]
    pub(crate) cluster: Option<String>,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    #[serde(default)]
    pub(crate) node: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEtcd {
    #[serde(default)]
    pub(crate) endpoints: Vec<String>,
    #[serde(default)]
    pub(crate) username: Option<String>,
    #[serde(default)]
    pub(crate) password: Option<String>,
    #[serde(default)]
    pub(crate) password_file: Option<String>,
    #[serde(default)]
    pub(crate) password_env: Option<String>,
    #[serde(default)]
    pub(crate) tls: Option<RawEtcdTls>,
    #[serde(default)]
    pub(crate) dial_timeout: Option<String>,
    #[serde(default)]
    pub(crate) request_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEtcdTls {
    #[serde(default)]
    pub(crate) ca_file: Option<String>,
    #[serde(default)]
    pub(crate) cert: Option<String>,
    #[serde(default)]
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsulRegister {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) address: Option<String>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscovery {
    pub(crate) consul: RawConsulService,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsulService {
    #[serde(default)]
    pub(crate) service: Option<String>,
    #[serde(default)]
    pub(crate) tag: Option<String>,
    #[serde(default)]
    pub(crate) datacenter: Option<String>,
    #[serde(default)]
    pub(crate) passing_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    #[serde(default)]
    pub(crate) host: Option<String>,
    #[serde(default)]
    pub(crate) path_prefix: Option<String>,
    #[serde(default)]
    pub(crate) path_regex: Option<String>,
    #[serde(default)]
    pub(crate) strip_prefix: bool,
    #[serde(default)]
    pub(crate) upgrades: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub(crate) methods: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, RawHeaderMatch>,
    #[serde(default)]
    pub(crate) query: BTreeMap<String, RawQueryMatch>,
    #[serde(default)]
    pub(crate) service: Option<String>,
    #[serde(default)]
    pub(crate) backends: Option<Vec<RawBackend>>,
    #[serde(default)]
    pub(crate) split_by: Option<String>,
    #[serde(default)]
    pub(crate) request_headers: Option<RawHeaderRewrite>,
    #[serde(default)]
    pub(crate) response_headers: Option<RawHeaderRewrite>,
    #[serde(default)]
    pub(crate) backend_header: Option<bool>,
    #[serde(default)]
    pub(crate) mirror: Option<RawMirror>,
}

/// One header condition of a route: exactly one of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderMatch {
    #[serde(default)]
    pub(crate) exact: Option<String>,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    #[serde(default)]
    pub(crate) regex: Option<String>,
    #[serde(default)]
    pub(crate) present: Option<bool>,
}

/// One query-parameter condition of a route: exactly one of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueryMatch {
    #[serde(default)]
    pub(crate) exact: Option<String>,
    #[serde(default)]
    pub(crate) present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub(crate) service: String,
    #[serde(default)]
    pub(crate) weight: Option<i64>,
    #[serde(default)]
    pub(crate) subset: Option<RawSubset>,
    #[serde(default)]
    pub(crate) fallback: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSubset {
    #[serde(default)]
    pub(crate) version: Option<String>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderRewrite {
    #[serde(default)]
    pub(crate) set: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) add: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) remove: Vec<String>,
}

/// `mirror:` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMirror {
    pub(crate) service: String,
    #[serde(default)]
    pub(crate) percent: Option<i64>,
    #[serde(default)]
    pub(crate) max_body_bytes: Option<i64>,
    #[serde(default)]
    pub(crate) max_in_flight: Option<i64>,
}

/// `sticky:` of a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSticky {
    pub(crate) cookie: String,
    #[serde(default)]
    pub(crate) max_age: Option<String>,
    #[serde(default)]
    pub(crate) secure: Option<bool>,
    #[serde(default)]
    pub(crate) http_only: Option<bool>,
    #[serde(default)]
    pub(crate) same_site: Option<String>,
    #[serde(default)]
    pub(crate) secret: Option<String>,
    #[serde(default)]
    pub(crate) secret_file: Option<String>,
    #[serde(default)]
    pub(crate) secret_env: Option<String>,
}

/// `rate_limit:` globally or on a route: a token bucket per key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(crate) rate: i64,
    #[serde(default)]
    pub(crate) period: Option<String>,
    #[serde(default)]
    pub(crate) burst: Option<i64>,
    #[serde(default)]
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) header: Option<String>,
    #[serde(default)]
    pub(crate) max_keys: Option<i64>,
    #[serde(default)]
    pub(crate) dry_run: bool,
}

/// `services.NAME.circuit_breaker:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCircuitBreaker {
    #[serde(default)]
    pub(crate) max_requests: Option<i64>,
    #[serde(default)]
    pub(crate) max_retries: Option<i64>,
    #[serde(default)]
    pub(crate) queue: Option<RawQueue>,
    #[serde(default)]
    pub(crate) max_connections: Option<i64>,
    #[serde(default)]
    pub(crate) max_pending: Option<i64>,
}

/// `circuit_breaker.queue:`: requests over `max_requests` wait here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    #[serde(default)]
    pub(crate) strategy: Option<String>,
    #[serde(default)]
    pub(crate) connect_timeout: Option<String>,
    #[serde(default)]
    pub(crate) request_timeout: Option<String>,
    #[serde(default)]
    pub(crate) retry: Option<RawRetry>,
    #[serde(default)]
    pub(crate) health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub(crate) outlier_detection: Option<RawOutlierDetection>,
    #[serde(default)]
    pub(crate) panic_threshold: Option<i64>,
    #[serde(default)]
    pub(crate) discovery: Option<RawDiscovery>,
    #[serde(default)]
    pub(crate) protocol: Option<String>,
    #[serde(default)]
    pub(crate) tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub(crate) max_connections_per_instance: Option<i64>,
    #[serde(default)]
    pub(crate) sticky: Option<RawSticky>,
    pub(crate) circuit_breaker: Option<RawCircuitBreaker>,
    #[serde(default)]
    pub(crate) instances: Vec<RawInstance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    #[serde(default, rename = "type")]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) method: Option<String>,
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) host: Option<String>,
    #[serde(default)]
    pub(crate) expected_status: Option<Vec<RawStatus>>,
    #[serde(default)]
    pub(crate) body_contains: Option<String>,
    #[serde(default)]
    pub(crate) max_latency: Option<String>,
    #[serde(default)]
    pub(crate) interval: Option<String>,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
    #[serde(default)]
    pub(crate) jitter: Option<String>,
    #[serde(default)]
    pub(crate) healthy_threshold: Option<i64>,
    #[serde(default)]
    pub(crate) unhealthy_threshold: Option<i64>,
    #[serde(default)]
    pub(crate) initial: Option<String>,
}

/// A status code (`200`) or a range (`"200-399"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawStatus {
    Code(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlierDetection {
    #[serde(default)]
    pub(crate) consecutive_failures: Option<i64>,
    #[serde(default)]
    pub(crate) include_5xx: bool,
    #[serde(default)]
    pub(crate) base_ejection_time: Option<String>,
    #[serde(default)]
    pub(crate) max_ejection_time: Option<String>,
    #[serde(default)]
    pub(crate) max_ejection_percent: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    #[serde(default)]
    pub(crate) ca_file: Option<String>,
    #[serde(default)]
    pub(crate) server_name: Option<String>,
    #[serde(default)]
    pub(crate) verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    #[serde(default)]
    pub(crate) max_attempts: Option<i64>,
    #[serde(default)]
    pub(crate) on: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) budget_percent: Option<i64>,
    #[serde(default)]
    pub(crate) max_body_bytes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInstance {
    #[serde(default)]
    pub(crate) id: Option<String>,
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) weight: Option<i64>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) version: Option<String>,
}
