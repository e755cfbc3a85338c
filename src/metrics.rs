//! Prometheus metrics.
//!
//! Families are registered once; the request path only touches handles
//! created ahead of time (per instance when it joins, per service when a
//! snapshot is built), so a request never looks a label set up or
//! allocates for metrics. Label values come from config names and instance
//! ids, never from request data.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Request duration buckets, in seconds: 0.5 ms to 30 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    limit: String,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverflowLabels {
    service: String,
    which: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    service: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    service: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    service: String,
    instance: String,
}

/// Status class of a response.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Class {
    C1xx,
    C2xx,
    C3xx,
    C4xx,
    C5xx,
}

impl EncodeLabelValue for Class {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let name = match self {
            Class::C1xx => "1xx",
            Class::C2xx => "2xx",
            Class::C3xx => "3xx",
            Class::C4xx => "4xx",
            Class::C5xx => "5xx",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

const CLASSES: [Class; 5] = [
    Class::C1xx,
    Class::C2xx,
    Class::C3xx,
    Class::C4xx,
    Class::C5xx,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    instance: String,
    class: Class,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    service: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric switchyard exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    unrouted: Counter,
    duration: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    connect_errors: Family<ServiceLabels, Counter>,
    timeouts: Family<ServiceLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    retry_budget_exhausted: Family<ServiceLabels, Counter>,
    active_requests: Family<ServiceLabels, Gauge>,
    active_retries: Family<ServiceLabels, Gauge>,
    upstream_pending: Family<ServiceLabels, Gauge>,
    in_flight: Family<InstanceLabels, Gauge>,
    healthy: Family<InstanceLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    config_version: Gauge,
    registry_instances: Family<SourceLabels, Gauge>,
    consul_errors: Family<ServiceLabels, Counter>,
    consul_stale: Family<ServiceLabels, Gauge>,
    dns_resolutions: Family<DnsLabels, Counter>,
    connections_accepted: Family<ListenerLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_rejected: Family<ListenerLabels, Counter>,
    connections_shed: Family<ListenerLabels, Counter>,
    connections_timed_out: Family<ListenerLabels, Counter>,
    connections_rejected_per_ip: Family<ListenerLabels, Counter>,
    rate_limited: Family<RateLimitLabels, Counter>,
    breaker_overflow: Family<OverflowLabels, Counter>,
    access_log_dropped: Counter,
    trace: TraceMetrics,
    mirror_requests: Family<MirrorLabels, Counter>,
    mirrors_in_flight: Family<ServiceLabels, Gauge>,
    guard_verdicts: Family<ResultLabels, Counter>,
    /// Fleet mode (etcd); zero when it is off.
    fleet: FleetMetrics,
    /// The last 15 minutes, second by second (see [`crate::stats_window`]).
    window: std::sync::Arc<crate::stats_window::StatsWindow>,
}

/// Handles of the `switchyard_trace_*` metrics (the span exporter).
#[derive(Debug, Clone, Default)]
pub struct TraceMetrics {
    /// Spans exported (the collector took them).
    pub exported: Counter,
    /// Spans dropped: the queue was full, the export failed, or export
    /// was off when their batch was taken.
    pub dropped: Counter,
    /// Export requests that failed (no connection, no answer, not 2xx).
    pub export_failures: Counter,
}

/// Handles of the `switchyard_fleet_*` metrics.
#[derive(Debug, Clone, Default)]
pub struct FleetMetrics {
    /// The fleet config version this node serves.
    pub applied_version: Gauge,
    /// 1 while this node's view of the fleet may be behind (etcd
    /// unreachable, or booted from its snapshot and not caught up yet).
    pub stale: Gauge,
    /// Watches started again (after etcd was lost, a compaction or a
    /// revision that went backwards).
    pub watch_restarts: Counter,
    /// Failed etcd requests and broken watches.
    pub etcd_errors: Counter,
    /// Versions or values from etcd this node refused.
    pub refused: Counter,
    /// Other running processes seen publishing under this node's name.
    pub name_conflicts: Counter,
    /// Seconds since the last event or answer from etcd.
    pub seconds_since_last_event: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        let metrics = Metrics {
            requests: Family::default(),
            unrouted: Counter::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            connect_errors: Family::default(),
            timeouts: Family::default(),
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            active_requests: Family::default(),
            upstream_pending: Family::default(),
            active_retries: Family::default(),
            in_flight: Family::default(),
            healthy: Family::default(),
            transitions: Family::default(),
            ejections: Family::default(),
            reloads: Family::default(),
            config_version: Gauge::default(),
            registry_instances: Family::default(),
            consul_errors: Family::default(),
            consul_stale: Family::default(),
            dns_resolutions: Family::default(),
            connections_accepted: Family::default(),
            connections_open: Family::default(),
            connections_rejected: Family::default(),
            connections_shed: Family::default(),
            connections_timed_out: Family::default(),
            connections_rejected_per_ip: Family::default(),
            rate_limited: Family::default(),
            breaker_overflow: Family::default(),
            fleet: FleetMetrics::default(),
            access_log_dropped: Counter::default(),
            trace: TraceMetrics::default(),
            mirror_requests: Family::default(),
            mirrors_in_flight: Family::default(),
            guard_verdicts: Family::default(),
            window: std::sync::Arc::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            "config_guard_verdicts",
            "Guarded config changes by verdict: kept, not_enough_traffic, rolled_back, ended_by_force",
            m.guard_verdicts.clone(),
        );
        registry.register("requests", "Requests answered, by service, instance (`none` when the proxy answered itself) and status class", m.requests.clone());
        registry.register(
            "unrouted_requests",
            "Requests no route matched (answered 404)",
            m.unrouted.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request to the end of the response, by service",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "upstream_connect_errors",
            "Failed connects to instances",
            m.connect_errors.clone(),
        );
        registry.register(
            "upstream_timeouts",
            "Requests whose response headers did not arrive in time",
            m.timeouts.clone(),
        );
        registry.register(
            "upstream_retries",
            "Requests tried again on another instance",
            m.retries.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests over a rate limit, by limit (`global` or the route) and mode (`enforced`: answered 429; `dry_run`: let through)",
            m.rate_limited.clone(),
        );
        registry.register(
            "circuit_breaker_overflow",
            "Requests refused by a service's circuit breaker (503), by service and which limit (max_requests, queue_timeout, max_retries, max_connections, max_pending; a refused retry returns the failure instead)",
            m.breaker_overflow.clone(),
        );
        registry.register(
            "connections_rejected_per_ip",
            "Connections closed at accept because their client IP had max_connections_per_ip open, by listener",
            m.connections_rejected_per_ip.clone(),
        );
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries not made because the service's retry budget was used up, by service",
            m.retry_budget_exhausted.clone(),
        );
        registry.register(
            "upstream_active_requests",
            "Requests being sent to a service's instances now (the retry budget's base), by service",
            m.active_requests.clone(),
        );
        registry.register(
            "mirror_requests",
            "Copies of requests for a mirror service, by service and result: sent (answered), failed, dropped (max_in_flight reached), skipped_body (body over max_body_bytes or not read to its end)",
            m.mirror_requests.clone(),
        );
        registry.register(
            "mirrors_in_flight",
            "Copies of requests in flight to a mirror service",
            m.mirrors_in_flight.clone(),
        );
        registry.register(
            "upstream_pending",
            "Requests waiting for an upstream connection now (none idle, and a connection limit reached), by service",
            m.upstream_pending.clone(),
        );
        registry.register(
            "upstream_active_retries",
            "Requests being retried now, by service",
            m.active_retries.clone(),
        );
        registry.register(
            "instance_in_flight",
            "Requests in flight per instance",
            m.in_flight.clone(),
        );
        registry.register(
            "instance_healthy",
            "1 when the instance takes traffic, 0 when it is unhealthy, ejected or drained",
            m.healthy.clone(),
        );
        registry.register(
            "health_transitions",
            "Changes of health verdict, by service and new state",
            m.transitions.clone(),
        );
        registry.register(
            "ejections",
            "Instances ejected by outlier detection",
            m.ejections.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads, by result (applied, unchanged, failed)",
            m.reloads.clone(),
        );
        registry.register(
            "config_version",
            "The config version serving now",
            m.config_version.clone(),
        );
        registry.register(
            "registry_instances",
            "Instances in the registry, by source",
            m.registry_instances.clone(),
        );
        registry.register(
            "consul_errors",
            "Failed Consul queries, by service",
            m.consul_errors.clone(),
        );
        registry.register(
            "consul_stale",
            "1 while a service's Consul data is stale (Consul unreachable or answering badly)",
            m.consul_stale.clone(),
        );
        registry.register(
            "dns_resolutions",
            "Resolutions of instance host names, by service and result (found, gone: NXDOMAIN or no address, failed: timeout, SERVFAIL, resolver unreachable)",
            m.dns_resolutions.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted, by listener",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open, by listener",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_rejected",
            "Client connections closed at accept because the listener was at limits.max_connections",
            m.connections_rejected.clone(),
        );
        registry.register(
            "connections_shed",
            "Idle keep-alive connections closed because the process ran out of file descriptors",
            m.connections_shed.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Client connections closed by header_read_timeout before a first request, by send_timeout, or at the deadline after a graceful close",
            m.connections_timed_out.clone(),
        );
        let fleet = &m.fleet;
        registry.register(
            "fleet_applied_version",
            "The fleet config version this node serves",
            fleet.applied_version.clone(),
        );
        registry.register(
            "fleet_stale",
            "1 while this node cannot confirm it has the fleet's latest state",
            fleet.stale.clone(),
        );
        registry.register(
            "fleet_watch_restarts",
            "etcd watches started again (lost connection, compaction, revision went backwards)",
            fleet.watch_restarts.clone(),
        );
        registry.register(
            "fleet_etcd_errors",
            "Failed etcd requests and broken watches",
            fleet.etcd_errors.clone(),
        );
        registry.register(
            "fleet_refused",
            "Fleet versions or etcd values this node refused",
            fleet.refused.clone(),
        );
        registry.register(
            "fleet_name_conflicts",
            "Other running processes seen publishing their status under this node's name",
            fleet.name_conflicts.clone(),
        );
        registry.register(
            "fleet_seconds_since_last_event",
            "Seconds since the last event or answer from etcd",
            fleet.seconds_since_last_event.clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            m.trace.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped: the export queue was full, their batch failed to export, or export was off",
            m.trace.dropped.clone(),
        );
        registry.register(
            "trace_export_failures",
            "Span export requests that failed (no connection, no answer within the limit, or not 2xx)",
            m.trace.export_failures.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the log writer was behind (its queue was full) or the write failed",
            m.access_log_dropped.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The OpenMetrics exposition (what Prometheus asks for).
    pub fn encode_openmetrics(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        text
    }

    /// The classic Prometheus text exposition (0.0.4), for clients that do
    /// not ask for OpenMetrics (curl, `promtool check metrics`).
    pub fn encode(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }

    /// Handles for one instance.
    pub fn instance(&self, service: &str, instance: &str) -> InstanceMetrics {
        let labels = InstanceLabels {
            service: service.to_string(),
            instance: instance.to_string(),
        };
        InstanceMetrics {
            requests: CLASSES.map(|class| {
                self.requests
                    .get_or_create_owned(&request_labels(&labels, class))
            }),
            in_flight: self.in_flight.get_or_create_owned(&labels),
            healthy: self.healthy.get_or_create_owned(&labels),
        }
    }

    /// Drops an instance's series when it leaves the registry, so instance
    /// churn (API, Consul) does not grow the exposition.
    pub fn remove_instance(&self, service: &str, instance: &str) {
        let labels = InstanceLabels {
            service: service.to_string(),
            instance: instance.to_string(),
        };
        for class in CLASSES {
            self.requests.remove(&request_labels(&labels, class));
        }
        self.in_flight.remove(&labels);
        self.healthy.remove(&labels);
    }

    /// Handles for one service.
    pub fn service(&self, service: &str) -> ServiceMetrics {
        let labels = ServiceLabels {
            service: service.to_string(),
        };
        let none = InstanceLabels {
            service: service.to_string(),
            instance: "none".into(),
        };
        ServiceMetrics {
            duration: self.duration.get_or_create_owned(&labels),
            connect_errors: self.connect_errors.get_or_create_owned(&labels),
            timeouts: self.timeouts.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            retry_budget_exhausted: self.retry_budget_exhausted.get_or_create_owned(&labels),
            active_requests: self.active_requests.get_or_create_owned(&labels),
            active_retries: self.active_retries.get_or_create_owned(&labels),
            mirror: MirrorMetrics {
                sent: self
                    .mirror_requests
                    .get_or_create_owned(&mirror(service, "sent")),
                failed: self
                    .mirror_requests
                    .get_or_create_owned(&mirror(service, "failed")),
                dropped: self
                    .mirror_requests
                    .get_or_create_owned(&mirror(service, "dropped")),
                skipped_body: self
                    .mirror_requests
                    .get_or_create_owned(&mirror(service, "skipped_body")),
                in_flight: self.mirrors_in_flight.get_or_create_owned(&labels),
            },
            answered_by_proxy: CLASSES.map(|class| {
                self.requests
                    .get_or_create_owned(&request_labels(&none, class))
            }),
            window: self.window.counters(service),
        }
    }

    /// Counters of the rate limit named `limit`: requests refused, and
    /// requests a dry-run limit would have refused.
    pub fn rate_limit(&self, limit: &str) -> (Counter, Counter) {
        let labels = |mode| RateLimitLabels {
            limit: limit.to_string(),
            mode,
        };
        (
            self.rate_limited.get_or_create_owned(&labels("enforced")),
            self.rate_limited.get_or_create_owned(&labels("dry_run")),
        )
    }

    /// The gauge of requests of `service` waiting for an upstream
    /// connection.
    pub fn upstream_pending(&self, service: &str) -> Gauge {
        self.upstream_pending.get_or_create_owned(&ServiceLabels {
            service: service.to_string(),
        })
    }

    /// The overflow counter of `service`'s circuit breaker for `which`.
    pub fn breaker_overflow(&self, service: &str, which: &'static str) -> Counter {
        self.breaker_overflow.get_or_create_owned(&OverflowLabels {
            service: service.to_string(),
            which,
        })
    }

    /// The counter of dropped access-log lines, for the log writer.
    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// The span exporter's counters.
    pub fn trace(&self) -> TraceMetrics {
        self.trace.clone()
    }

    /// A request matched no route.
    pub fn unrouted(&self) {
        self.unrouted.inc();
    }

    /// An instance's health verdict changed.
    pub fn health_transition(&self, service: &str, to: &str) {
        self.transitions
            .get_or_create(&TransitionLabels {
                service: service.into(),
                to: to.into(),
            })
            .inc();
    }

    /// An instance was ejected.
    pub fn ejection(&self, service: &str) {
        self.ejections
            .get_or_create(&ServiceLabels {
                service: service.into(),
            })
            .inc();
    }

    /// The fleet metrics' handles.
    pub fn fleet(&self) -> &FleetMetrics {
        &self.fleet
    }

    /// A guarded config change ended with `verdict`.
    pub fn guard_verdict(&self, verdict: &str) {
        self.guard_verdicts
            .get_or_create(&ResultLabels {
                result: verdict.into(),
            })
            .inc();
    }

    /// The per-second window of recent traffic.
    pub fn window(&self) -> &std::sync::Arc<crate::stats_window::StatsWindow> {
        &self.window
    }

    /// A reload finished with `result`.
    pub fn reload(&self, result: &str, version: Option<u64>) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        if let Some(version) = version {
            self.set_config_version(version);
        }
    }

    /// The config version serving now.
    pub fn set_config_version(&self, version: u64) {
        self.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// Instances in the registry per source.
    pub fn set_registry_size(&self, source: &str, count: usize) {
        self.registry_instances
            .get_or_create(&SourceLabels {
                source: source.into(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A Consul query for `service` failed.
    pub fn consul_error(&self, service: &str) {
        self.consul_errors
            .get_or_create(&ServiceLabels {
                service: service.into(),
            })
            .inc();
    }

    /// A host name of `service` was resolved; `result` is `found`, `gone`
    /// or `failed`.
    pub fn dns_resolution(&self, service: &str, result: &'static str) {
        self.dns_resolutions
            .get_or_create(&DnsLabels {
                service: service.into(),
                result,
            })
            .inc();
    }

    /// Whether `service`'s Consul data is stale.
    pub fn set_consul_stale(&self, service: &str, stale: bool) {
        self.consul_stale
            .get_or_create(&ServiceLabels {
                service: service.into(),
            })
            .set(i64::from(stale));
    }

    /// Handles for one listener.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: name.into(),
        };
        ListenerMetrics {
            accepted: self.connections_accepted.get_or_create_owned(&labels),
            open: self.connections_open.get_or_create_owned(&labels),
            rejected: self.connections_rejected.get_or_create_owned(&labels),
            shed: self.connections_shed.get_or_create_owned(&labels),
            timed_out: self.connections_timed_out.get_or_create_owned(&labels),
            rejected_per_ip: self
                .connections_rejected_per_ip
                .get_or_create_owned(&labels),
        }
    }
}

/// OpenMetrics → Prometheus text 0.0.4. They differ only in metadata: a
/// counter family is named without `_total` in OpenMetrics and with it in
/// the old format, `# UNIT` lines do not exist there, and there is no
/// `# EOF`. Samples are the same.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

fn request_labels(instance: &InstanceLabels, class: Class) -> RequestLabels {
    RequestLabels {
        service: instance.service.clone(),
        instance: instance.instance.clone(),
        class,
    }
}

fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Per-instance handles.
#[derive(Debug)]
pub struct InstanceMetrics {
    requests: [Counter; 5],
    /// In-flight requests; also what `least_connections` reads.
    pub in_flight: Gauge,
    healthy: Gauge,
}

impl InstanceMetrics {
    /// Counts a response with `status`.
    pub fn response(&self, status: u16) {
        self.requests[class_index(status)].inc();
    }

    /// Whether the instance takes traffic.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }
}

/// Per-service handles.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// Request duration.
    pub duration: Histogram,
    /// Failed connects.
    pub connect_errors: Counter,
    /// Response-header timeouts.
    pub timeouts: Counter,
    /// Retries on another instance.
    pub retries: Counter,
    /// Retries refused by the retry budget.
    pub retry_budget_exhausted: Counter,
    /// Requests in `send_with_retries` now; shared by every snapshot, so
    /// the retry budget survives rebuilds.
    pub active_requests: Gauge,
    /// Requests that have started retrying and not finished.
    pub active_retries: Gauge,
    /// Copies of requests mirrored to this service.
    pub mirror: MirrorMetrics,
    answered_by_proxy: [Counter; 5],
    /// The service's series in the per-second window.
    pub window: std::sync::Arc<crate::stats_window::WindowCounters>,
}

/// Handles of the `switchyard_mirror_*` metrics of one mirror service.
/// `in_flight` is also the in-flight bound's counter: it is shared by
/// every snapshot, so the bound holds across reloads.
#[derive(Debug, Clone)]
pub struct MirrorMetrics {
    /// Copies the service answered (answers are discarded).
    pub sent: Counter,
    /// Copies that failed (connect, timeout, broken answer).
    pub failed: Counter,
    /// Copies not made: `max_in_flight` copies were in flight.
    pub dropped: Counter,
    /// Copies not made: the body was longer than `max_body_bytes` or was
    /// not read to its end.
    pub skipped_body: Counter,
    /// Copies in flight now.
    pub in_flight: Gauge,
}

fn mirror(service: &str, result: &'static str) -> MirrorLabels {
    MirrorLabels {
        service: service.to_string(),
        result,
    }
}

impl ServiceMetrics {
    /// Counts a finished request that started at `started` and answered
    /// `status`: the duration histogram and the per-second window.
    pub fn finished(&self, started: std::time::Instant, status: u16) {
        let elapsed = started.elapsed();
        self.duration.observe(elapsed.as_secs_f64());
        self.window.record(elapsed, status);
    }

    /// Counts a response the proxy wrote itself (no instance answered).
    pub fn answered_by_proxy(&self, status: u16) {
        self.answered_by_proxy[class_index(status)].inc();
    }
}

/// Per-listener handles.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections open.
    pub open: Gauge,
    /// Connections closed at accept for `max_connections`.
    pub rejected: Counter,
    /// Idle connections closed under descriptor pressure.
    pub shed: Counter,
    /// Connections closed by a timeout (header, send, close deadline).
    pub timed_out: Counter,
    /// Connections closed at accept for `max_connections_per_ip`.
    pub rejected_per_ip: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_feed_the_exposition_and_leave_with_their_instance() {
        let metrics = Metrics::new();
        let instance = metrics.instance("api", "a");
        instance.response(200);
        instance.response(503);
        instance.in_flight.inc();
        metrics.service("api").duration.observe(0.003);
        let text = metrics.encode();
        assert!(
            text.contains("# TYPE switchyard_requests_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(metrics.encode_openmetrics().ends_with("# EOF\n"));
        assert!(
            text.contains(
                "switchyard_requests_total{service=\"api\",instance=\"a\",class=\"2xx\"} 1"
            ),
            "{text}"
        );
        assert!(text
            .contains("switchyard_requests_total{service=\"api\",instance=\"a\",class=\"5xx\"} 1"));
        assert!(text.contains("switchyard_instance_in_flight{service=\"api\",instance=\"a\"} 1"));
        assert!(text.contains("switchyard_request_duration_seconds_count{service=\"api\"} 1"));
        metrics.remove_instance("api", "a");
        assert!(!metrics.encode().contains("instance=\"a\""));
    }
}
