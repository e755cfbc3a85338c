//! Raw config → validated [`Config`], collecting every problem.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use super::raw::{
    RawConfig, RawHealthCheck, RawInstance, RawOutlierDetection, RawRoute, RawService, RawStatus,
};
use super::values::{check_name, parse_bounded_duration};
use super::*;

mod route_rules;

/// Collects errors with their field paths while validation goes on.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
            location: None,
        });
    }

    /// Runs a field parser; on failure records the error and returns None.
    fn check<T>(&mut self, path: impl Into<String>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.push(path, message);
                None
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::default();

    let mut listeners = Vec::new();
    if raw.listeners.is_empty() {
        errors.push("listeners", "at least one listener is required");
    }
    let mut bound: HashSet<SocketAddr> = HashSet::new();
    for (i, listener) in raw.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        if let Some(address) = errors.check(
            format!("{path}.address"),
            parse_socket_addr(&listener.address),
        ) {
            // Port 0 asks the OS for a free port, so it never clashes.
            if address.port() != 0 && !bound.insert(address) {
                errors.push(
                    format!("{path}.address"),
                    format!("{address} is already used by another listener"),
                );
            }
            let tls = listener
                .tls
                .as_ref()
                .map(|tls| validate_tls(&format!("{path}.tls"), tls, &mut errors));
            let limits = validate_limits(
                &format!("{path}.limits"),
                listener.limits.as_ref(),
                &mut errors,
            );
            let redirect_https = listener.redirect_https.and_then(|port| {
                errors.check(
                    format!("{path}.redirect_https"),
                    u16::try_from(port)
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("must be a port, 1-65535 (got {port})")),
                )
            });
            if redirect_https.is_some() && listener.tls.is_some() {
                errors.push(
                    format!("{path}.redirect_https"),
                    "a TLS listener cannot redirect to HTTPS",
                );
            }
            let mut limits = limits;
            if let Some(server) = &listener.http1 {
                let chosen = match server.as_str() {
                    "hyper" => Ok(Http1Server::Hyper),
                    "owned" => Ok(Http1Server::Owned),
                    other => Err(format!("must be `hyper` or `owned` (got {other:?})")),
                };
                if let Some(chosen) = errors.check(format!("{path}.http1"), chosen) {
                    limits.http1 = chosen;
                }
            }
            listeners.push(ListenerConfig {
                name: listener.name.clone().unwrap_or(path),
                address,
                tls: tls.flatten(),
                limits,
                redirect_https,
            });
        }
    }

    let admin_text = raw
        .admin
        .as_ref()
        .and_then(|a| a.address.as_deref())
        .unwrap_or(DEFAULT_ADMIN_ADDRESS);
    let admin_address = errors.check("admin.address", parse_socket_addr(admin_text));
    if let Some(address) = admin_address {
        if address.port() != 0 && bound.contains(&address) {
            errors.push(
                "admin.address",
                format!("{address} is also a traffic listener; the admin API needs its own port"),
            );
        }
    }

    let mut trusted_proxies = Vec::new();
    for (i, text) in raw.trusted_proxies.iter().enumerate() {
        if let Some(cidr) = errors.check(format!("trusted_proxies[{i}]"), text.parse()) {
            trusted_proxies.push(cidr);
        }
    }

    let drain_timeout = duration_field(
        &mut errors,
        "drain_timeout".into(),
        &raw.drain_timeout,
        defaults::DRAIN_TIMEOUT,
        true,
    );

    let access_log = validate_access_log(raw.access_log.as_ref(), &mut errors);
    let tracing = raw
        .tracing
        .as_ref()
        .map_or_else(TracingConfig::default, |t| {
            super::tracing_config::validate(t).unwrap_or_else(|problems| {
                problems.into_iter().for_each(|(p, m)| errors.push(p, m));
                TracingConfig::default()
            })
        });
    let error_detail = match raw.error_detail.as_deref() {
        None | Some("minimal") => ErrorDetail::Minimal,
        Some("full") => ErrorDetail::Full,
        Some(other) => {
            errors.push(
                "error_detail",
                format!("`{other}` is not a choice; use `minimal` (the default) or `full`"),
            );
            ErrorDetail::Minimal
        }
    };

    let guard = raw
        .guard
        .as_ref()
        .and_then(|g| validate_guard(g, &raw.services, &mut errors));

    let admin_token = match &raw.admin {
        Some(admin) => secret_value(
            &mut errors,
            "admin",
            "token",
            admin.token.as_deref(),
            admin.token_file.as_deref(),
            admin.token_env.as_deref(),
        ),
        None => None,
    };
    let read_requires_token = raw.admin.as_ref().is_some_and(|a| a.read_requires_token);
    if read_requires_token && admin_token.is_none() {
        errors.push(
            "admin.read_requires_token",
            "needs a token (admin.token, token_file or token_env)",
        );
    }
    let consul = raw
        .consul
        .as_ref()
        .and_then(|c| validate_consul(c, &mut errors));

    let fleet = raw
        .fleet
        .as_ref()
        .and_then(|f| validate_fleet(f, &mut errors));

    let workers = match raw.workers {
        None => std::thread::available_parallelism().map_or(1, usize::from),
        Some(n) => errors
            .check(
                "workers",
                usize::try_from(n)
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| format!("must be between 1 and 1024 (got {n})")),
            )
            .unwrap_or(1),
    };

    let dns = validate_dns(raw.dns.as_ref(), &mut errors);
    let rate_limit = raw
        .rate_limit
        .as_ref()
        .and_then(|r| validate_rate_limit("rate_limit", r, &mut errors));

    let mut services = BTreeMap::new();
    for (name, service) in &raw.services {
        let path = format!("services.{name}");
        let named = errors.check(
            path.clone(),
            check_name(name).map_err(|e| format!("service name {e}")),
        );
        if let (Some(()), Some(service)) = (named, validate_service(&path, service, &mut errors)) {
            services.insert(ServiceName::from(name.as_str()), service);
        }
    }

    if consul.is_none() {
        for (name, service) in &raw.services {
            if service.discovery.is_some() {
                errors.push(
                    format!("services.{name}.discovery"),
                    "needs a top-level `consul:` block saying how to reach Consul",
                );
            }
        }
    }

    let mut routes: Vec<RouteConfig> = Vec::new();
    for (i, route) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if let Some(route) = validate_route(&path, route, &raw, &mut errors) {
            let same = routes.iter().any(|r| {
                r.host == route.host
                    && r.path_prefix == route.path_prefix
                    && r.path_regex == route.path_regex
                    && r.conditions == route.conditions
            });
            if same {
                let what = match &route.path_regex {
                    Some(regex) => format!("path regex `{}`", regex.as_str()),
                    None => format!("path prefix `{}`", route.path_prefix),
                };
                let conditions = if route.conditions.count() > 0 {
                    " with the same conditions"
                } else {
                    ""
                };
                errors.push(
                    path,
                    format!(
                        "another route already matches host `{}` and {what}{conditions}",
                        route.host
                    ),
                );
            } else {
                routes.push(route);
            }
        }
    }

    if !errors.0.is_empty() {
        return Err(ConfigErrors(errors.0));
    }
    let Some(admin_address) = admin_address else {
        // Unreachable in practice: a bad admin address was recorded above.
        return Err(ConfigErrors(vec![]));
    };
    Ok(Config {
        listeners,
        admin: AdminConfig {
            address: admin_address,
            token: admin_token,
            read_requires_token,
        },
        trusted_proxies,
        drain_timeout,
        workers,
        registry: RegistryConfig {
            allow_new_services: raw.registry.as_ref().is_some_and(|r| r.allow_new_services),
        },
        consul,
        dns,
        fleet,
        underscores_in_headers: raw.underscores_in_headers,
        access_log,
        tracing,
        error_detail,
        rate_limit,
        guard,
        routes,
        services,
    })
}

/// `guard:`, the default guard of file-watch reloads.
fn validate_guard(
    raw: &super::raw::RawGuard,
    services: &BTreeMap<String, RawService>,
    errors: &mut Errors,
) -> Option<guard::GuardSpec> {
    let before = errors.0.len();
    if raw.checks.is_empty() {
        errors.push(
            "guard.checks",
            "at least one guard is needed, e.g. `error_rate < 1%`",
        );
    }
    let mut checks = Vec::new();
    for (i, text) in raw.checks.iter().enumerate() {
        let path = format!("guard.checks[{i}]");
        let Some(check) = errors.check(path.clone(), guard::parse_check(text)) else {
            continue;
        };
        if let Some(service) = &check.service {
            if !services.contains_key(service.as_str()) {
                errors.push(
                    path,
                    format!("guard `{text}`: no service named `{service}`"),
                );
                continue;
            }
        }
        checks.push(check);
    }
    let window = match &raw.window {
        None => guard::DEFAULT_GUARD_WINDOW,
        Some(text) => errors
            .check(
                "guard.for",
                super::values::parse_duration(text)
                    .and_then(|d| guard::check_window(d).map(|()| d)),
            )
            .unwrap_or(guard::DEFAULT_GUARD_WINDOW),
    };
    let min_requests = match raw.min_requests {
        None => guard::DEFAULT_MIN_REQUESTS,
        Some(n) if n >= 1 => n.unsigned_abs(),
        Some(n) => {
            errors.push(
                "guard.min_requests",
                format!("must be at least 1 (got {n})"),
            );
            guard::DEFAULT_MIN_REQUESTS
        }
    };
    (errors.0.len() == before).then_some(guard::GuardSpec {
        checks,
        window,
        min_requests,
    })
}

fn validate_access_log(
    raw: Option<&super::raw::RawAccessLog>,
    errors: &mut Errors,
) -> AccessLogConfig {
    let mut config = AccessLogConfig::default();
    let Some(raw) = raw else {
        return config;
    };
    if let Some(enabled) = raw.enabled {
        config.enabled = enabled;
    }
    match raw.path.as_deref() {
        None | Some("stderr") => {}
        Some("") => errors.push(
            "access_log.path",
            "must be a file path or `stderr`, not empty",
        ),
        Some(path) if path.ends_with('/') => errors.push(
            "access_log.path",
            format!("`{path}` names a directory; give a file path"),
        ),
        Some(path) => config.destination = LogDestination::File(path.into()),
    }
    match raw.format.as_deref() {
        None | Some("json") => {}
        Some("combined") => config.format = AccessLogFormat::Combined,
        Some(other) => errors.push(
            "access_log.format",
            format!("unknown format `{other}`; expected `json` or `combined`"),
        ),
    }
    config
}

/// A body buffered for retries is held in memory for the whole request:
/// 16 MiB per request is already more than a proxy should hold.
const MAX_RETRY_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// Beyond this a per-instance connection cap bounds nothing a host can open
/// (file descriptors run out first).
const MAX_CONNECTIONS_PER_INSTANCE: u32 = 1_000_000;

fn validate_route(
    path: &str,
    route: &RawRoute,
    raw: &RawConfig,
    errors: &mut Errors,
) -> Option<RouteConfig> {
    let host = match route.host.as_deref().map(str::trim) {
        None | Some("") | Some("*") => Some(HostMatch::Any),
        Some(host) => errors.check(format!("{path}.host"), parse_host(host)),
    };
    let path_prefix = route.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !path_prefix.starts_with('/') {
        errors.push(
            format!("{path}.path_prefix"),
            format!("`{path_prefix}` must start with `/`"),
        );
    }
    if path_prefix.contains(['?', '#']) {
        errors.push(
            format!("{path}.path_prefix"),
            format!("`{path_prefix}` must be a path without `?` or `#`"),
        );
    }
    let upgrades = match &route.upgrades {
        None => vec!["websocket".to_string()],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, token)| {
                errors.check(format!("{path}.upgrades[{i}]"), upgrade_token(token))
            })
            .collect(),
    };
    let rate_limit = route
        .rate_limit
        .as_ref()
        .and_then(|r| validate_rate_limit(&format!("{path}.rate_limit"), r, errors));
    let (path_regex, conditions, policy) = route_rules::validate(path, route, raw, errors)?;
    let mirror = match &route.mirror {
        None => None,
        Some(mirror) => {
            let serving: Vec<&str> = policy.backends.iter().map(|b| b.service.as_str()).collect();
            match super::mirror::validate(&format!("{path}.mirror"), mirror, &serving, raw) {
                Ok(mirror) => Some(mirror),
                Err(problems) => {
                    problems.into_iter().for_each(|(p, m)| errors.push(p, m));
                    return None;
                }
            }
        }
    };
    Some(RouteConfig {
        host: host?,
        path_prefix,
        strip_prefix: route.strip_prefix,
        upgrades,
        path_regex,
        conditions,
        rate_limit,
        policy,
        mirror,
    })
}

/// An `Upgrade` protocol name a route lets through: a token (RFC 9110
/// §5.6.2), stored in lower case. `h2c` is refused: RFC 9113 §3.1
/// deprecates it, and a tunnelled h2c connection would carry requests past
/// routing and header rules.
fn upgrade_token(token: &str) -> Result<String, String> {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if token.is_empty() || !token.chars().all(is_tchar) {
        return Err(format!(
            "`{token}` is not a protocol name; write a token such as `websocket` (no spaces, `/` or `,`)"
        ));
    }
    let token = token.to_ascii_lowercase();
    if token == "h2c" {
        return Err(
            "h2c upgrades are not supported (RFC 9113 deprecates them); clients use HTTP/2 directly"
                .into(),
        );
    }
    Ok(token)
}

fn parse_host(host: &str) -> Result<HostMatch, String> {
    let lower = host.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(format!(
            "`{host}` is not a host name; write `api.example.com` or `*.example.com` (no port, no scheme)"
        ));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn validate_service(path: &str, raw: &RawService, errors: &mut Errors) -> Option<ServiceConfig> {
    let before = errors.0.len();
    let strategy = match &raw.strategy {
        None => Strategy::RoundRobin,
        Some(name) => errors
            .check(format!("{path}.strategy"), name.parse())
            .unwrap_or(Strategy::RoundRobin),
    };
    let mut timeout = |field: &str, value: &Option<String>, default| {
        duration_field(errors, format!("{path}.{field}"), value, default, false)
    };
    let connect_timeout = timeout(
        "connect_timeout",
        &raw.connect_timeout,
        defaults::CONNECT_TIMEOUT,
    );
    let request_timeout = timeout(
        "request_timeout",
        &raw.request_timeout,
        defaults::REQUEST_TIMEOUT,
    );
    let max_attempts = match raw.retry.as_ref().and_then(|r| r.max_attempts) {
        None => NonZeroU32::new(defaults::MAX_ATTEMPTS),
        Some(n) => errors.check(
            format!("{path}.retry.max_attempts"),
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=10).contains(n))
                .and_then(NonZeroU32::new)
                .ok_or_else(|| format!("must be between 1 and 10 (got {n})")),
        ),
    };
    let mut retry = RetryPolicy::default();
    if let Some(raw_retry) = &raw.retry {
        if let Some(on) = &raw_retry.on {
            retry.connect_failure = false;
            retry.reset = false;
            for (i, trigger) in on.iter().enumerate() {
                match trigger.trim() {
                    "connect-failure" => retry.connect_failure = true,
                    "reset" => retry.reset = true,
                    "gateway-error" => retry.gateway_error = true,
                    "5xx" => retry.server_error = true,
                    other => errors.push(
                        format!("{path}.retry.on[{i}]"),
                        format!("`{other}` is not a retry trigger; use connect-failure, reset, gateway-error or 5xx"),
                    ),
                }
            }
        }
        if let Some(p) = raw_retry.budget_percent {
            if let Some(p) = errors.check(format!("{path}.retry.budget_percent"), percent(p)) {
                retry.budget_percent = p;
            }
        }
        if let Some(n) = raw_retry.max_body_bytes {
            if let Some(n) = errors.check(
                format!("{path}.retry.max_body_bytes"),
                u64::try_from(n)
                    .ok()
                    .filter(|n| *n <= MAX_RETRY_BODY_BYTES)
                    .ok_or_else(|| {
                        format!("must be between 0 and {MAX_RETRY_BODY_BYTES} (got {n}); 0 buffers no body")
                    }),
            ) {
                retry.max_body_bytes = n;
            }
        }
    }

    let health_check = raw
        .health_check
        .as_ref()
        .and_then(|check| validate_health_check(&format!("{path}.health_check"), check, errors));
    let outlier_detection = raw
        .outlier_detection
        .as_ref()
        .and_then(|o| validate_outlier(&format!("{path}.outlier_detection"), o, errors));
    let discovery = raw.discovery.as_ref().map(|d| ConsulDiscovery {
        service: d
            .consul
            .service
            .clone()
            .unwrap_or_else(|| path.strip_prefix("services.").unwrap_or(path).to_string()),
        tag: d.consul.tag.clone(),
        datacenter: d.consul.datacenter.clone(),
        passing_only: d.consul.passing_only.unwrap_or(true),
    });
    let protocol = match raw.protocol.as_deref() {
        None | Some("http1") => Some(UpstreamProtocol::Http1),
        Some("http2") => Some(UpstreamProtocol::Http2),
        Some(other) => {
            errors.push(
                format!("{path}.protocol"),
                format!("`{other}` must be http1 or http2"),
            );
            None
        }
    };
    let tls = raw
        .tls
        .as_ref()
        .map(|tls| validate_upstream_tls(&format!("{path}.tls"), tls, errors));
    let panic_threshold = match raw.panic_threshold {
        None => Some(0),
        Some(p) => errors.check(format!("{path}.panic_threshold"), percent(p)),
    };
    let max_connections_per_instance = match raw.max_connections_per_instance {
        None => Some(None),
        Some(n) => errors
            .check(
                format!("{path}.max_connections_per_instance"),
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= MAX_CONNECTIONS_PER_INSTANCE)
                    .and_then(NonZeroU32::new)
                    .ok_or_else(|| {
                        format!(
                            "must be between 1 and {MAX_CONNECTIONS_PER_INSTANCE} (got {n}); leave it out for no limit"
                        )
                    }),
            )
            .map(Some),
    };

    let sticky = raw.sticky.as_ref().map(|sticky| {
        let path = format!("{path}.sticky");
        let secret = secret_value(
            errors,
            &path,
            "secret",
            sticky.secret.as_deref(),
            sticky.secret_file.as_deref(),
            sticky.secret_env.as_deref(),
        );
        super::sticky::validate(&path, sticky, secret).map_err(|problems| {
            problems.into_iter().for_each(|(p, m)| errors.push(p, m));
        })
    });
    let circuit_breaker = raw
        .circuit_breaker
        .as_ref()
        .map_or_else(CircuitBreakerConfig::default, |b| {
            validate_circuit_breaker(&format!("{path}.circuit_breaker"), b, errors)
        });

    let mut instances = Vec::new();
    let mut ids = HashSet::new();
    let mut addresses = HashSet::new();
    let mut named = Vec::new();
    let mut names = HashSet::new();
    for (i, instance) in raw.instances.iter().enumerate() {
        let path = format!("{path}.instances[{i}]");
        if let Some(host_port) = named_address(&instance.address) {
            if let Some(instance) = validate_named(&path, instance, host_port, errors) {
                if !names.insert((instance.host.clone(), instance.port)) {
                    errors.push(
                        format!("{path}.address"),
                        format!(
                            "{}:{} is listed twice in this service",
                            instance.host, instance.port
                        ),
                    );
                } else if !ids.insert(instance.id.clone()) {
                    errors.push(
                        format!("{path}.id"),
                        format!("id `{}` is used twice in this service", instance.id),
                    );
                }
                named.push(instance);
            }
            continue;
        }
        if let Some(instance) = validate_instance(&path, instance, errors) {
            if !addresses.insert(instance.address) {
                errors.push(
                    format!("{path}.address"),
                    format!("{} is listed twice in this service", instance.address),
                );
            } else if !ids.insert(instance.id.clone()) {
                errors.push(
                    format!("{path}.id"),
                    format!("id `{}` is used twice in this service", instance.id),
                );
            }
            instances.push(instance);
        }
    }
    if errors.0.len() > before {
        return None;
    }
    Some(ServiceConfig {
        strategy,
        connect_timeout,
        request_timeout,
        max_attempts: max_attempts?,
        retry,
        health_check,
        outlier_detection,
        panic_threshold: panic_threshold?,
        discovery,
        max_connections_per_instance: max_connections_per_instance?,
        circuit_breaker,
        protocol: protocol?,
        tls: tls.flatten(),
        sticky: sticky.and_then(Result::ok),
        instances,
        named,
    })
}

fn validate_limits(
    path: &str,
    raw: Option<&super::raw::RawLimits>,
    errors: &mut Errors,
) -> ListenerLimits {
    let defaults = ListenerLimits::default();
    let Some(raw) = raw else {
        return defaults;
    };
    let max_header_bytes = match raw.max_header_bytes {
        None => defaults.max_header_bytes,
        Some(n) => errors
            .check(
                format!("{path}.max_header_bytes"),
                usize::try_from(n)
                    .ok()
                    .filter(|n| (8192..=1 << 24).contains(n))
                    .ok_or_else(|| format!("must be between 8192 and 16777216 (got {n})")),
            )
            .unwrap_or(defaults.max_header_bytes),
    };
    let max_concurrent_streams = match raw.max_concurrent_streams {
        None => defaults.max_concurrent_streams,
        Some(n) => errors
            .check(
                format!("{path}.max_concurrent_streams"),
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| format!("must be between 1 and 10000 (got {n})")),
            )
            .unwrap_or(defaults.max_concurrent_streams),
    };
    let max_headers = match raw.max_headers {
        None => defaults.max_headers,
        Some(n) => errors
            .check(
                format!("{path}.max_headers"),
                usize::try_from(n)
                    .ok()
                    .filter(|n| (16..=10_000).contains(n))
                    .ok_or_else(|| format!("must be between 16 and 10000 (got {n})")),
            )
            .unwrap_or(defaults.max_headers),
    };
    let max_connections = raw.max_connections.and_then(|n| {
        errors.check(
            format!("{path}.max_connections"),
            usize::try_from(n)
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
                .ok_or_else(|| format!("must be between 1 and 10000000 (got {n})")),
        )
    });
    let max_connections_per_ip = raw.max_connections_per_ip.and_then(|n| {
        errors.check(
            format!("{path}.max_connections_per_ip"),
            usize::try_from(n)
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
                .ok_or_else(|| format!("must be between 1 and 10000000 (got {n})")),
        )
    });
    ListenerLimits {
        max_header_bytes,
        max_connections_per_ip,
        header_read_timeout: duration_field(
            errors,
            format!("{path}.header_read_timeout"),
            &raw.header_read_timeout,
            defaults.header_read_timeout,
            false,
        ),
        idle_timeout: duration_field(
            errors,
            format!("{path}.idle_timeout"),
            &raw.idle_timeout,
            defaults.idle_timeout,
            false,
        ),
        max_concurrent_streams,
        max_headers,
        send_timeout: duration_field(
            errors,
            format!("{path}.send_timeout"),
            &raw.send_timeout,
            defaults.send_timeout,
            false,
        ),
        max_connections,
        http1: defaults.http1,
    }
}

/// Beyond these a rate limit means nothing a clock can measure (a token
/// every nanosecond) or more memory than a proxy should hold for it.
const MAX_RATE: u32 = 1_000_000_000;
const MAX_RATE_LIMIT_KEYS: i64 = 100_000_000;

fn validate_rate_limit(
    path: &str,
    raw: &super::raw::RawRateLimit,
    errors: &mut Errors,
) -> Option<RateLimitConfig> {
    let before = errors.0.len();
    let rate = errors.check(
        format!("{path}.rate"),
        u32::try_from(raw.rate)
            .ok()
            .filter(|r| *r <= MAX_RATE)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| format!("must be between 1 and {MAX_RATE} (got {})", raw.rate)),
    );
    let period = match &raw.period {
        None => Some(Duration::from_secs(1)),
        Some(text) => errors.check(
            format!("{path}.period"),
            parse_bounded_duration(text, false, MAX_DURATION).and_then(|d| {
                if d.subsec_nanos() == 0 && d.as_secs() >= 1 {
                    Ok(d)
                } else {
                    Err(format!(
                        "must be whole seconds, at least 1s (got {text}); write the rate per second or per minute"
                    ))
                }
            }),
        ),
    };
    let burst = match raw.burst {
        // nginx's `limit_req` without `burst` lets one request through at
        // a time; a bucket of `rate` tokens is the friendlier default.
        None => rate,
        Some(b) => errors.check(
            format!("{path}.burst"),
            u32::try_from(b)
                .ok()
                .filter(|b| *b <= MAX_RATE)
                .and_then(NonZeroU32::new)
                .ok_or_else(|| format!("must be between 1 and {MAX_RATE} (got {b})")),
        ),
    };
    let key = match (raw.key.as_deref(), &raw.header) {
        (None | Some("client_ip"), None) => Some(RateLimitKey::ClientIp),
        (Some("route"), None) => Some(RateLimitKey::Route),
        (Some("header"), Some(name)) => errors
            .check(
                format!("{path}.header"),
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a header field name")),
            )
            .map(RateLimitKey::Header),
        (Some("header"), None) => {
            errors.push(
                format!("{path}.header"),
                "is required with `key: header` (the field whose value is the key)",
            );
            None
        }
        (_, Some(_)) => {
            errors.push(
                format!("{path}.header"),
                "is only allowed with `key: header`",
            );
            None
        }
        (Some(other), None) => {
            errors.push(
                format!("{path}.key"),
                format!("`{other}` is not a key; use client_ip (the default), header or route"),
            );
            None
        }
    };
    let max_keys = match raw.max_keys {
        None => Some(defaults::RATE_LIMIT_MAX_KEYS),
        Some(n) => errors.check(
            format!("{path}.max_keys"),
            usize::try_from(n)
                .ok()
                .filter(|_| (1..=MAX_RATE_LIMIT_KEYS).contains(&n))
                .ok_or_else(|| format!("must be between 1 and {MAX_RATE_LIMIT_KEYS} (got {n})")),
        ),
    };
    if let (Some(rate), Some(period), Some(burst)) = (rate, period, burst) {
        // A bucket is a time in nanoseconds: a full burst must fit in it
        // with room to spare (2^62 ns is about 146 years).
        let interval = period.as_nanos() / u128::from(rate.get());
        if interval.saturating_mul(u128::from(burst.get())) > 1 << 62 {
            errors.push(
                format!("{path}.burst"),
                format!("{burst} tokens of {period:?} / {rate} each take more than 146 years to refill; lower burst or raise rate"),
            );
        }
    }
    if errors.0.len() > before {
        return None;
    }
    Some(RateLimitConfig {
        rate: rate?,
        period: period?,
        burst: burst?,
        key: key?,
        max_keys: max_keys?,
        dry_run: raw.dry_run,
    })
}

fn validate_circuit_breaker(
    path: &str,
    raw: &super::raw::RawCircuitBreaker,
    errors: &mut Errors,
) -> CircuitBreakerConfig {
    let mut breaker = CircuitBreakerConfig::default();
    if let Some(n) = raw.max_requests {
        if let Some(n) = errors.check(
            format!("{path}.max_requests"),
            u32::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_CONNECTIONS_PER_INSTANCE)
                .and_then(NonZeroU32::new)
                .ok_or_else(|| {
                    format!("must be between 1 and {MAX_CONNECTIONS_PER_INSTANCE} (got {n})")
                }),
        ) {
            breaker.max_requests = n;
        }
    }
    if let Some(n) = raw.max_retries {
        breaker.max_retries = errors.check(
            format!("{path}.max_retries"),
            u32::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_CONNECTIONS_PER_INSTANCE)
                .ok_or_else(|| {
                    format!("must be between 0 and {MAX_CONNECTIONS_PER_INSTANCE} (got {n})")
                }),
        );
    }
    if let Some(queue) = &raw.queue {
        let size = errors.check(
            format!("{path}.queue.size"),
            u32::try_from(queue.size)
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS_PER_INSTANCE).contains(n))
                .ok_or_else(|| {
                    format!(
                        "must be between 1 and {MAX_CONNECTIONS_PER_INSTANCE} (got {})",
                        queue.size
                    )
                }),
        );
        let timeout = duration_field(
            errors,
            format!("{path}.queue.timeout"),
            &queue.timeout,
            defaults::QUEUE_TIMEOUT,
            false,
        );
        breaker.queue = size.map(|size| QueueConfig { size, timeout });
    }
    if let Some(n) = raw.max_connections {
        if let Some(n) = errors.check(
            format!("{path}.max_connections"),
            u32::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_CONNECTIONS_PER_INSTANCE)
                .and_then(NonZeroU32::new)
                .ok_or_else(|| {
                    format!("must be between 1 and {MAX_CONNECTIONS_PER_INSTANCE} (got {n})")
                }),
        ) {
            breaker.max_connections = n;
        }
    }
    if let Some(n) = raw.max_pending {
        if let Some(n) = errors.check(
            format!("{path}.max_pending"),
            u32::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_CONNECTIONS_PER_INSTANCE)
                .ok_or_else(|| {
                    format!("must be between 0 and {MAX_CONNECTIONS_PER_INSTANCE} (got {n})")
                }),
        ) {
            breaker.max_pending = n;
        }
    }
    breaker
}

fn validate_upstream_tls(
    path: &str,
    raw: &super::raw::RawUpstreamTls,
    errors: &mut Errors,
) -> Option<UpstreamTls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let before = errors.0.len();
    let ca_certificates = raw.ca_file.as_ref().and_then(|file| {
        let pem = errors.check(
            format!("{path}.ca_file"),
            std::fs::read(file).map_err(|e| format!("cannot read `{file}`: {e}")),
        )?;
        let certificates: Result<Vec<CertificateDer<'static>>, _> =
            CertificateDer::pem_slice_iter(&pem).collect();
        errors.check(
            format!("{path}.ca_file"),
            match certificates {
                Ok(list) if !list.is_empty() => Ok(list.into_iter().map(|c| c.to_vec()).collect()),
                Ok(_) => Err(format!("`{file}` holds no certificate")),
                Err(e) => Err(format!("`{file}` is not a PEM certificate bundle: {e}")),
            },
        )
    });
    if let Some(name) = &raw.server_name {
        if ServerName::try_from(name.as_str()).is_err() {
            errors.push(
                format!("{path}.server_name"),
                format!("`{name}` is not a host name or IP address"),
            );
        }
    }
    (errors.0.len() == before).then(|| UpstreamTls {
        ca_certificates,
        server_name: raw.server_name.clone(),
        verify: raw.verify.unwrap_or(true),
    })
}

/// Reads and checks every certificate of a TLS listener: the PEM files
/// parse, the key is a kind rustls can sign with, and it matches the leaf.
fn validate_tls(path: &str, raw: &super::raw::RawTls, errors: &mut Errors) -> Option<TlsConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;

    if raw.certificates.is_empty() {
        errors.push(
            format!("{path}.certificates"),
            "at least one certificate is required",
        );
        return None;
    }
    let provider = rustls::crypto::ring::default_provider();
    let mut certificates = Vec::new();
    for (i, certificate) in raw.certificates.iter().enumerate() {
        let path = format!("{path}.certificates[{i}]");
        let chain = errors
            .check(
                format!("{path}.cert"),
                std::fs::read(&certificate.cert)
                    .map_err(|e| format!("cannot read `{}`: {e}", certificate.cert)),
            )
            .and_then(|pem| {
                errors.check(
                    format!("{path}.cert"),
                    certificate_chain(&certificate.cert, &pem, SystemTime::now()),
                )
            });
        let key_pem = errors.check(
            format!("{path}.key"),
            std::fs::read(&certificate.key)
                .map_err(|e| format!("cannot read `{}`: {e}", certificate.key)),
        );
        let key = key_pem.as_ref().and_then(|pem| {
            errors.check(
                format!("{path}.key"),
                PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
                    rustls::pki_types::pem::Error::NoItemsFound => format!(
                        "`{}` holds no private key (a PEM `PRIVATE KEY` block: PKCS#8, PKCS#1 or SEC1)",
                        certificate.key
                    ),
                    e => format!("`{}` is not a valid PEM private key: {e}", certificate.key),
                }),
            )
        });
        for (j, name) in certificate.server_names.iter().enumerate() {
            if let Err(message) = parse_host(name) {
                errors.push(format!("{path}.server_names[{j}]"), message);
            }
        }
        let (Some(chain), Some(key), Some(key_pem)) = (chain, key, key_pem) else {
            continue;
        };
        if let Err(error) = rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider) {
            let message = match error {
                rustls::Error::InconsistentKeys(_) => format!(
                    "`{}` does not match the certificate in `{}` (it is the key of another certificate)",
                    certificate.key, certificate.cert
                ),
                error => format!(
                    "`{}` is a kind of key that cannot sign TLS handshakes here: {error}",
                    certificate.key
                ),
            };
            errors.push(format!("{path}.key"), message);
            continue;
        }
        certificates.push(CertificateConfig {
            cert_path: certificate.cert.clone(),
            key_path: certificate.key.clone(),
            server_names: certificate
                .server_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
            chain: chain.into_iter().map(|c| c.to_vec()).collect(),
            key_pem,
        });
    }
    (certificates.len() == raw.certificates.len()).then_some(TlsConfig { certificates })
}

/// The chain in the PEM file `file`, refused in plain words when it is not
/// PEM, holds no certificate, holds one that is not a valid X.509
/// certificate, or when the leaf has expired by `now`.
fn certificate_chain(
    file: &str,
    pem: &[u8],
    now: SystemTime,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{file}` is not a valid PEM file: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "`{file}` holds no certificate (no `-----BEGIN CERTIFICATE-----` block)"
        ));
    }
    for (n, der) in chain.iter().enumerate() {
        let which = if n == 0 {
            "the first certificate".to_string()
        } else {
            format!("certificate {} of the chain", n + 1)
        };
        let parsed = match x509_parser::parse_x509_certificate(der) {
            Ok((_, parsed)) => parsed,
            Err(_) => {
                return Err(format!(
                    "`{file}`: {which} is not a valid X.509 certificate (its content is corrupt)"
                ))
            }
        };
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        // Only the leaf: clients refuse an expired leaf whatever the rest.
        if n == 0 && parsed.validity().not_after.timestamp() < now {
            return Err(format!(
                "`{file}`: the certificate expired on {}",
                parsed.validity().not_after
            ));
        }
    }
    Ok(chain)
}

/// A secret given inline, in a file, or in an environment variable (at
/// most one way).
/// A secret named `name` (`token`, `password`) given inline, as
/// `<name>_file` or as `<name>_env`, at most one way.
fn secret_value(
    errors: &mut Errors,
    path: &str,
    name: &str,
    inline: Option<&str>,
    file: Option<&str>,
    env: Option<&str>,
) -> Option<Secret> {
    let given = [inline.is_some(), file.is_some(), env.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        errors.push(
            path,
            format!("give the {name} one way only: {name}, {name}_file or {name}_env"),
        );
        return None;
    }
    let (field, value) = if let Some(value) = inline {
        (name.to_string(), Some(value.to_string()))
    } else if let Some(file) = file {
        let field = format!("{name}_file");
        let value = errors.check(
            format!("{path}.{field}"),
            std::fs::read_to_string(file).map_err(|e| format!("cannot read `{file}`: {e}")),
        );
        (field, value)
    } else if let Some(var) = env {
        let field = format!("{name}_env");
        let value = errors.check(
            format!("{path}.{field}"),
            std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set")),
        );
        (field, value)
    } else {
        return None;
    };
    let value = value?.trim().to_string();
    if value.is_empty() {
        errors.push(format!("{path}.{field}"), format!("the {name} is empty"));
        return None;
    }
    Some(Secret(value))
}

fn validate_consul(raw: &super::raw::RawConsul, errors: &mut Errors) -> Option<ConsulConfig> {
    let address = errors.check("consul.address", parse_socket_addr(&raw.address));
    let token = secret_value(
        errors,
        "consul",
        "token",
        None,
        raw.token_file.as_deref(),
        raw.token_env.as_deref(),
    );
    let wait = duration_field(
        errors,
        "consul.wait".into(),
        &raw.wait,
        defaults::CONSUL_WAIT,
        false,
    );
    if wait > Duration::from_secs(600) {
        errors.push("consul.wait", "Consul caps blocking queries at 10m");
    }
    let register = raw.register.as_ref().map(|r| ConsulRegistration {
        name: r.name.clone().unwrap_or_else(|| "switchyard".into()),
        id: r.id.clone(),
        address: r.address.as_ref().and_then(|a| {
            errors.check(
                "consul.register.address",
                a.parse().map_err(|_| format!("`{a}` is not an IP address")),
            )
        }),
        tags: r.tags.clone(),
    });
    Some(ConsulConfig {
        address: address?,
        token,
        wait,
        stale: raw.stale.unwrap_or(true),
        register,
    })
}

fn validate_fleet(raw: &super::raw::RawFleet, errors: &mut Errors) -> Option<FleetConfig> {
    let before = errors.0.len();
    let etcd = &raw.etcd;
    if etcd.endpoints.is_empty() {
        errors.push(
            "fleet.etcd.endpoints",
            "at least one etcd member is required",
        );
    }
    let mut endpoints = Vec::new();
    for (i, endpoint) in etcd.endpoints.iter().enumerate() {
        if let Some(url) = errors.check(
            format!("fleet.etcd.endpoints[{i}]"),
            etcd_endpoint(endpoint, etcd.tls.is_some()),
        ) {
            endpoints.push(url);
        }
    }
    let password = secret_value(
        errors,
        "fleet.etcd",
        "password",
        etcd.password.as_deref(),
        etcd.password_file.as_deref(),
        etcd.password_env.as_deref(),
    );
    let user = match (&etcd.username, password) {
        (Some(name), Some(password)) if !name.trim().is_empty() => {
            Some((name.trim().to_string(), password))
        }
        (Some(_), Some(_)) => {
            errors.push("fleet.etcd.username", "is empty");
            None
        }
        (Some(_), None) => {
            errors.push(
                "fleet.etcd.username",
                "needs a password (password, password_file or password_env)",
            );
            None
        }
        (None, Some(_)) => {
            errors.push("fleet.etcd.password", "needs a username");
            None
        }
        (None, None) => None,
    };
    let tls = etcd.tls.as_ref().map(|tls| {
        let read = |errors: &mut Errors, field: &str, file: &Option<String>| {
            file.as_ref().and_then(|file| {
                errors.check(
                    format!("fleet.etcd.tls.{field}"),
                    std::fs::read(file).map_err(|e| format!("cannot read `{file}`: {e}")),
                )
            })
        };
        let ca_pem = read(errors, "ca_file", &tls.ca_file);
        let cert = read(errors, "cert", &tls.cert);
        let key = read(errors, "key", &tls.key);
        let identity = match (cert, key, &tls.cert, &tls.key) {
            (Some(cert), Some(key), _, _) => Some((cert, key)),
            (_, _, Some(_), None) => {
                errors.push("fleet.etcd.tls.cert", "needs `key` beside it");
                None
            }
            (_, _, None, Some(_)) => {
                errors.push("fleet.etcd.tls.key", "needs `cert` beside it");
                None
            }
            _ => None,
        };
        EtcdTls {
            ca_pem,
            identity,
            server_name: tls.server_name.clone(),
        }
    });
    let dial_timeout = duration_field(
        errors,
        "fleet.etcd.dial_timeout".into(),
        &etcd.dial_timeout,
        defaults::ETCD_DIAL_TIMEOUT,
        false,
    );
    let request_timeout = duration_field(
        errors,
        "fleet.etcd.request_timeout".into(),
        &etcd.request_timeout,
        defaults::ETCD_REQUEST_TIMEOUT,
        false,
    );
    let cluster = raw.cluster.as_deref().unwrap_or(defaults::FLEET_CLUSTER);
    if let Err(e) = check_name(cluster) {
        errors.push("fleet.cluster", format!("cluster name {e}"));
    }
    let prefix = match &raw.prefix {
        Some(prefix) => {
            let trimmed = prefix.trim_end_matches('/');
            if !trimmed.starts_with('/') || trimmed.len() < 2 {
                errors.push(
                    "fleet.prefix",
                    format!("`{prefix}` must start with `/` and name something, e.g. `/switchyard/prod`"),
                );
            }
            trimmed.to_string()
        }
        None => format!("/switchyard/{cluster}"),
    };
    let node = match &raw.node {
        Some(node) => node.clone(),
        None => host_name().unwrap_or_default(),
    };
    if let Err(e) = check_name(&node) {
        let why = if raw.node.is_none() {
            format!("the host name `{node}` cannot be a node name ({e}); set fleet.node")
        } else {
            format!("node name {e}")
        };
        errors.push("fleet.node", why);
    }
    (errors.0.len() == before).then_some(FleetConfig {
        etcd: EtcdConfig {
            endpoints,
            user,
            tls,
            dial_timeout,
            request_timeout,
        },
        prefix,
        node,
    })
}

/// `host:port` or `http(s)://host:port` → a URL the etcd client takes.
fn etcd_endpoint(text: &str, tls: bool) -> Result<String, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some((other, _)) => return Err(format!("unknown scheme `{other}`; use http or https")),
        None => (if tls { "https" } else { "http" }, text),
    };
    if scheme == "https" && !tls {
        return Err("an https endpoint needs `fleet.etcd.tls`".into());
    }
    let rest = rest.trim_end_matches('/');
    let port = rest
        .rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty()).then_some(port))
        .ok_or_else(|| format!("`{text}` needs a host and a port, e.g. `127.0.0.1:2379`"))?;
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(format!("{scheme}://{rest}")),
        _ => Err(format!("`{port}` in `{text}` is not a port")),
    }
}

/// The machine's host name.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

fn percent(value: i64) -> Result<u8, String> {
    u8::try_from(value)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| format!("must be a percentage from 0 to 100 (got {value})"))
}

fn threshold(value: Option<i64>, default: u32) -> Result<NonZeroU32, String> {
    let value = value.unwrap_or(i64::from(default));
    u32::try_from(value)
        .ok()
        .filter(|n| *n <= 100)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| format!("must be between 1 and 100 (got {value})"))
}

/// A duration field: absent gives `default`; zero is refused unless
/// allowed; more than [`MAX_DURATION`] is refused, so no timer or deadline
/// computed from it can overflow. Every duration in proxy.yaml goes through
/// here.
fn duration_field(
    errors: &mut Errors,
    path: String,
    value: &Option<String>,
    default: Duration,
    allow_zero: bool,
) -> Duration {
    match value {
        None => default,
        Some(text) => errors
            .check(path, parse_bounded_duration(text, allow_zero, MAX_DURATION))
            .unwrap_or(default),
    }
}

fn validate_health_check(
    path: &str,
    raw: &RawHealthCheck,
    errors: &mut Errors,
) -> Option<HealthCheckConfig> {
    let before = errors.0.len();
    let kind = raw.kind.as_deref().unwrap_or("http");
    let http_only = [
        ("method", raw.method.is_some()),
        ("path", raw.path.is_some()),
        ("host", raw.host.is_some()),
        ("expected_status", raw.expected_status.is_some()),
        ("body_contains", raw.body_contains.is_some()),
    ];
    let kind = match kind {
        "http" => {
            let method = match &raw.method {
                None => Some(http::Method::GET),
                Some(m) => errors.check(
                    format!("{path}.method"),
                    http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("`{m}` is not an HTTP method")),
                ),
            };
            let probe_path = raw.path.clone().unwrap_or_else(|| "/".into());
            if !probe_path.starts_with('/') {
                errors.push(
                    format!("{path}.path"),
                    format!("`{probe_path}` must start with `/`"),
                );
            }
            let expected_status = match &raw.expected_status {
                None => vec![200..=399],
                Some(list) if list.is_empty() => {
                    errors.push(
                        format!("{path}.expected_status"),
                        "must list at least one status or range",
                    );
                    vec![]
                }
                Some(list) => list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, status)| {
                        errors.check(format!("{path}.expected_status[{i}]"), status_range(status))
                    })
                    .collect(),
            };
            method.map(|method| {
                CheckKind::Http(HttpCheckConfig {
                    method,
                    path: probe_path,
                    host: raw.host.clone(),
                    expected_status,
                    body_contains: raw.body_contains.clone(),
                })
            })
        }
        "tcp" | "custom" => {
            for (field, set) in http_only {
                if set {
                    errors.push(
                        format!("{path}.{field}"),
                        format!("only applies to `type: http`, not `{kind}`"),
                    );
                }
            }
            if kind == "tcp" {
                Some(CheckKind::Tcp)
            } else {
                match &raw.name {
                    Some(name) => Some(CheckKind::Custom(name.clone())),
                    None => {
                        errors.push(
                            format!("{path}.name"),
                            "a custom check needs the name it was registered under",
                        );
                        None
                    }
                }
            }
        }
        other => {
            errors.push(
                format!("{path}.type"),
                format!("unknown check type `{other}`; expected http, tcp or custom"),
            );
            None
        }
    };
    if raw.name.is_some() && !matches!(kind, Some(CheckKind::Custom(_)) | None) {
        errors.push(format!("{path}.name"), "only applies to `type: custom`");
    }
    let interval = duration_field(
        errors,
        format!("{path}.interval"),
        &raw.interval,
        defaults::CHECK_INTERVAL,
        false,
    );
    let timeout = duration_field(
        errors,
        format!("{path}.timeout"),
        &raw.timeout,
        defaults::CHECK_TIMEOUT.min(interval),
        false,
    );
    if timeout > interval {
        errors.push(
            format!("{path}.timeout"),
            format!("{timeout:?} is longer than the interval ({interval:?}); probes would overlap"),
        );
    }
    let jitter = duration_field(
        errors,
        format!("{path}.jitter"),
        &raw.jitter,
        interval / 10,
        true,
    );
    let max_latency = raw.max_latency.as_ref().map(|_| {
        duration_field(
            errors,
            format!("{path}.max_latency"),
            &raw.max_latency,
            timeout,
            false,
        )
    });
    let healthy_threshold = errors.check(
        format!("{path}.healthy_threshold"),
        threshold(raw.healthy_threshold, defaults::HEALTHY_THRESHOLD),
    );
    let unhealthy_threshold = errors.check(
        format!("{path}.unhealthy_threshold"),
        threshold(raw.unhealthy_threshold, defaults::UNHEALTHY_THRESHOLD),
    );
    let initial = match raw.initial.as_deref() {
        None | Some("unhealthy") => Some(InitialHealth::Unhealthy),
        Some("healthy") => Some(InitialHealth::Healthy),
        Some(other) => {
            errors.push(
                format!("{path}.initial"),
                format!("`{other}` must be `healthy` or `unhealthy`"),
            );
            None
        }
    };
    if errors.0.len() > before {
        return None;
    }
    Some(HealthCheckConfig {
        kind: kind?,
        max_latency,
        interval,
        timeout,
        jitter,
        healthy_threshold: healthy_threshold?,
        unhealthy_threshold: unhealthy_threshold?,
        initial: initial?,
    })
}

fn status_range(raw: &RawStatus) -> Result<std::ops::RangeInclusive<u16>, String> {
    let code = |text: &str| -> Result<u16, String> {
        text.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("`{text}` is not an HTTP status (100-599)"))
    };
    match raw {
        RawStatus::Code(c) => code(&c.to_string()).map(|c| c..=c),
        RawStatus::Text(text) => match text.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (code(low)?, code(high)?);
                if low > high {
                    return Err(format!("`{text}` is an empty range"));
                }
                Ok(low..=high)
            }
            None => code(text).map(|c| c..=c),
        },
    }
}

fn validate_outlier(
    path: &str,
    raw: &RawOutlierDetection,
    errors: &mut Errors,
) -> Option<OutlierDetectionConfig> {
    let consecutive_failures = errors.check(
        format!("{path}.consecutive_failures"),
        threshold(raw.consecutive_failures, defaults::CONSECUTIVE_FAILURES),
    );
    let base = duration_field(
        errors,
        format!("{path}.base_ejection_time"),
        &raw.base_ejection_time,
        defaults::BASE_EJECTION_TIME,
        false,
    );
    let max = duration_field(
        errors,
        format!("{path}.max_ejection_time"),
        &raw.max_ejection_time,
        defaults::MAX_EJECTION_TIME.max(base),
        false,
    );
    if max < base {
        errors.push(
            format!("{path}.max_ejection_time"),
            format!("{max:?} is shorter than base_ejection_time ({base:?})"),
        );
    }
    let max_ejection_percent = match raw.max_ejection_percent {
        None => Some(defaults::MAX_EJECTION_PERCENT),
        Some(p) => errors.check(format!("{path}.max_ejection_percent"), percent(p)),
    };
    Some(OutlierDetectionConfig {
        consecutive_failures: consecutive_failures?,
        include_5xx: raw.include_5xx,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: max_ejection_percent?,
    })
}

/// `host:port` when `text` is meant as a host name: it is not an IP
/// address with a port, and the part before the last `:` is neither an IP
/// address nor made of digits and dots only (a mistyped IPv4 address gets
/// the IP address error, not a DNS lookup).
fn named_address(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    if text.parse::<SocketAddr>().is_ok() {
        return None;
    }
    let (host, port) = text.rsplit_once(':')?;
    let looks_numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if host.is_empty()
        || looks_numeric
        || host.contains([':', '[', ']'])
        || host.parse::<std::net::IpAddr>().is_ok()
    {
        return None;
    }
    Some((host, port))
}

/// A host name as DNS allows it: labels of 1-63 letters, digits and `-`
/// (not at either end), at most 253 characters; one trailing dot allowed.
pub(super) fn check_host_name(host: &str) -> Result<String, String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{host}` is not a host name (1-253 characters)"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(format!(
                "`{host}` is not a host name: label `{label}` must be 1-63 letters, digits or `-`"
            ));
        }
    }
    Ok(name.to_ascii_lowercase())
}

fn validate_named(
    path: &str,
    raw: &RawInstance,
    (host, port): (&str, &str),
    errors: &mut Errors,
) -> Option<NamedInstance> {
    let address_path = format!("{path}.address");
    let host = errors.check(address_path.clone(), check_host_name(host));
    let port = errors.check(
        address_path,
        port.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{port}` is not a port (1-65535)")),
    );
    let weight = errors.check(format!("{path}.weight"), weight(raw.weight));
    let (host, port) = (host?, port?);
    let id = match &raw.id {
        Some(id) => errors.check(
            format!("{path}.id"),
            check_name(id).map(|()| InstanceId::from(id.as_str())),
        )?,
        None => InstanceId::from(format!("{host}:{port}").as_str()),
    };
    let version = instance_version(path, raw, errors);
    Some(NamedInstance {
        id,
        host,
        port,
        weight: weight?,
        tags: raw.tags.clone(),
        metadata: raw.metadata.clone(),
        version: version?,
    })
}

fn weight(raw: Option<i64>) -> Result<NonZeroU32, String> {
    match raw {
        None => Ok(NonZeroU32::MIN),
        Some(w) => u32::try_from(w)
            .ok()
            .filter(|w| *w <= MAX_WEIGHT)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| format!("must be between 1 and {MAX_WEIGHT} (got {w})")),
    }
}

fn validate_dns(raw: Option<&super::raw::RawDns>, errors: &mut Errors) -> DnsConfig {
    let Some(raw) = raw else {
        return DnsConfig::default();
    };
    let mut resolvers = Vec::new();
    for (i, text) in raw.resolvers.iter().flatten().enumerate() {
        // A bare IP means the standard port.
        let parsed = text
            .trim()
            .parse::<std::net::IpAddr>()
            .map(|ip| SocketAddr::new(ip, 53))
            .or_else(|_| parse_socket_addr(text));
        if let Some(address) = errors.check(format!("dns.resolvers[{i}]"), parsed) {
            resolvers.push(address);
        }
    }
    DnsConfig {
        resolvers,
        refresh: duration_field(
            errors,
            "dns.refresh".into(),
            &raw.refresh,
            defaults::DNS_REFRESH,
            false,
        ),
        respect_ttl: raw.respect_ttl.unwrap_or(false),
        hold: duration_field(
            errors,
            "dns.hold".into(),
            &raw.hold,
            defaults::DNS_HOLD,
            true,
        ),
    }
}

fn validate_instance(path: &str, raw: &RawInstance, errors: &mut Errors) -> Option<InstanceConfig> {
    // Port 0 means "any port" to a listener; nothing can connect to it.
    let address = parse_socket_addr(&raw.address).and_then(|address| {
        if address.port() == 0 {
            Err(format!(
                "`{}` has port 0; give the port the instance listens on",
                raw.address.trim()
            ))
        } else {
            Ok(address)
        }
    });
    let address = errors.check(format!("{path}.address"), address);
    let weight = errors.check(format!("{path}.weight"), weight(raw.weight));
    let id = match &raw.id {
        Some(id) => errors.check(
            format!("{path}.id"),
            check_name(id).map(|()| InstanceId::from(id.as_str())),
        ),
        None => address.map(|a| InstanceId::from(a.to_string().as_str())),
    };
    let version = instance_version(path, raw, errors);
    Some(InstanceConfig {
        id: id?,
        address: address?,
        weight: weight?,
        tags: raw.tags.clone(),
        metadata: raw.metadata.clone(),
        version: version?,
    })
}

/// An instance's `version`: a name (letters, digits, `-_.:`), like ids.
/// `Some(None)` when not given, `None` when invalid (recorded).
fn instance_version(path: &str, raw: &RawInstance, errors: &mut Errors) -> Option<Option<String>> {
    match &raw.version {
        None => Some(None),
        Some(version) => errors
            .check(
                format!("{path}.version"),
                check_name(version).map_err(|e| format!("version {e}")),
            )
            .map(|()| Some(version.clone())),
    }
}

/// Validates an instance registration from the admin API. Field paths are
/// the JSON field names.
pub(super) fn validate_registration(
    registration: &super::Registration,
) -> Result<(super::InstanceEntry, Option<Duration>), ConfigErrors> {
    let mut errors = Errors::default();
    let raw = RawInstance {
        id: registration.id.clone(),
        address: registration.address.clone(),
        weight: registration.weight,
        tags: registration.tags.clone(),
        metadata: registration.metadata.clone(),
        version: registration.version.clone(),
    };
    let instance = match named_address(&raw.address) {
        Some(host_port) => {
            validate_named("", &raw, host_port, &mut errors).map(super::InstanceEntry::Named)
        }
        None => validate_instance("", &raw, &mut errors).map(super::InstanceEntry::Address),
    };
    let ttl = registration
        .ttl
        .as_ref()
        .and_then(|text| errors.check("ttl", parse_bounded_duration(text, false, MAX_TTL)));
    // Paths were built for a list entry (`.address`); drop the dot.
    for error in &mut errors.0 {
        if let Some(field) = error.path.strip_prefix('.') {
            error.path = field.to_string();
        }
    }
    match instance {
        Some(instance) if errors.0.is_empty() => Ok((instance, ttl)),
        _ => Err(ConfigErrors(errors.0)),
    }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an IP address with a port, e.g. `127.0.0.1:8080` or `[::1]:8080`")
    })
}

#[cfg(test)]
pub(super) mod tests {
    use crate::config::{parse, HostMatch, Strategy};
    use std::time::Duration;

    const GOOD: &str = r#"
listeners:
  - address: 127.0.0.1:8080
routes:
  - host: "*.example.com"
    path_prefix: /api
    strip_prefix: true
    service: api
  - service: api
services:
  api:
    strategy: weighted_round_robin
    connect_timeout: 500ms
    instances:
      - address: 127.0.0.1:9001
        weight: 5
        tags: [blue]
        metadata: {zone: a}
      - address: 127.0.0.1:9002
"#;

    /// The messages of every error `text` gets.
    pub(in crate::config) fn messages(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn accepts_a_good_config() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.admin.address.to_string(), "127.0.0.1:9901");
        assert_eq!(
            config.routes[0].host,
            HostMatch::Suffix(".example.com".into())
        );
        let api = config.services.values().next().unwrap();
        assert_eq!(api.strategy, Strategy::WeightedRoundRobin);
        assert_eq!(api.instances[0].weight.get(), 5);
        assert_eq!(api.instances[1].weight.get(), 1);
        assert_eq!(api.instances[1].id.as_str(), "127.0.0.1:9002");
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = GOOD
            .replace("weight: 5", "weight: 0")
            .replace("127.0.0.1:9002", "localhost")
            .replace("weighted_round_robin", "fastest")
            .replace("- service: api", "- service: nope");
        let errors = messages(&text);
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].starts_with("services.api.strategy: unknown strategy `fastest`"));
        assert!(errors[1]
            .starts_with("services.api.instances[0].weight: must be between 1 and 1000 (got 0)"));
        assert!(errors[2]
            .starts_with("services.api.instances[1].address: `localhost` is not an IP address"));
        assert!(errors[3].starts_with("routes[1].service: no service named `nope`"));
    }

    #[test]
    fn breaker_connection_limits_have_envoys_defaults_and_checked_bounds() {
        let api = parse(GOOD)
            .unwrap()
            .services
            .values()
            .next()
            .unwrap()
            .clone();
        assert_eq!(api.circuit_breaker.max_connections.get(), 1024);
        assert_eq!(api.circuit_breaker.max_pending, 1024);
        let text = GOOD.replace(
            "strategy: weighted_round_robin",
            "strategy: weighted_round_robin\n    circuit_breaker: {max_connections: 0, max_pending: -1}",
        );
        let errors = messages(&text);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with(
            "services.api.circuit_breaker.max_connections: must be between 1 and 1000000 (got 0)"
        ));
        assert!(errors[1].starts_with(
            "services.api.circuit_breaker.max_pending: must be between 0 and 1000000 (got -1)"
        ));
        let text = GOOD.replace(
            "strategy: weighted_round_robin",
            "strategy: weighted_round_robin\n    circuit_breaker: {max_connections: 2, max_pending: 0}",
        );
        let api = parse(&text)
            .unwrap()
            .services
            .values()
            .next()
            .unwrap()
            .clone();
        assert_eq!(api.circuit_breaker.max_connections.get(), 2);
        assert_eq!(api.circuit_breaker.max_pending, 0);
    }

    #[test]
    fn unknown_field_names_path_line_and_column() {
        let errors = messages(&GOOD.replace("weight: 5", "wieght: 5"));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("line 15, column 9: "),
            "{}",
            errors[0]
        );
        assert_eq!(errors[0].matches("line").count(), 1, "{}", errors[0]);
        assert!(
            errors[0].contains("services.api.instances[0]"),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("wieght"), "{}", errors[0]);
    }

    #[test]
    fn connection_limit_is_optional_and_positive() {
        let api = |text: &str| {
            parse(text)
                .unwrap()
                .services
                .values()
                .next()
                .unwrap()
                .clone()
        };
        assert_eq!(api(GOOD).max_connections_per_instance, None);
        let limited = GOOD.replace(
            "strategy: weighted_round_robin",
            "strategy: weighted_round_robin\n    max_connections_per_instance: 64",
        );
        assert_eq!(
            api(&limited)
                .max_connections_per_instance
                .map(std::num::NonZeroU32::get),
            Some(64)
        );
        for bad in ["0", "-1", "2000000"] {
            let errors = messages(&limited.replace(": 64", &format!(": {bad}")));
            assert_eq!(errors.len(), 1, "{errors:#?}");
            assert!(
                errors[0].starts_with(&format!(
                    "services.api.max_connections_per_instance: must be between 1 and 1000000 (got {bad})"
                )),
                "{}",
                errors[0]
            );
        }
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let errors = messages("listeners:\n  - address: [127.0.0.1:80\n");
        assert!(errors[0].starts_with("line "), "{}", errors[0]);
    }

    #[test]
    fn duplicate_listeners_and_routes_are_refused() {
        let text = GOOD
            .replace(
                "  - address: 127.0.0.1:8080",
                "  - address: 127.0.0.1:8080\n  - address: 127.0.0.1:8080",
            )
            .replace("  - service: api\n", "  - service: api\n  - service: api\n");
        let errors = messages(&text);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with("listeners[1].address: 127.0.0.1:8080 is already used"));
        assert!(errors[1].starts_with("routes[2]: another route already matches host `*`"));
    }

    #[test]
    fn health_settings_are_validated() {
        let with = |health: &str| {
            GOOD.replace(
                "    connect_timeout: 500ms\n",
                &format!("    connect_timeout: 500ms\n{health}"),
            )
        };
        let config = parse(&with(
            "    health_check: {path: /healthz, expected_status: [200, \"300-302\"], interval: 2s, max_latency: 100ms}\n    outlier_detection: {consecutive_failures: 2}\n    panic_threshold: 30\n",
        ))
        .unwrap();
        let api = config.services.values().next().unwrap();
        let check = api.health_check.as_ref().unwrap();
        assert_eq!(check.interval, Duration::from_secs(2));
        assert_eq!(check.jitter, Duration::from_millis(200));
        assert_eq!(check.timeout, Duration::from_secs(2));
        assert_eq!(check.healthy_threshold.get(), 2);
        match &check.kind {
            crate::config::CheckKind::Http(http) => {
                assert_eq!(http.expected_status, vec![200..=200, 300..=302]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            api.outlier_detection
                .as_ref()
                .unwrap()
                .consecutive_failures
                .get(),
            2
        );
        assert_eq!(api.panic_threshold, 30);

        let errors = messages(&with(
            "    health_check: {type: tcp, path: /x, interval: 1s, timeout: 2s, unhealthy_threshold: 0, expected_status: [\"500-200\"]}\n    panic_threshold: 101\n",
        ));
        let expected = [
            "services.api.health_check.path: only applies to `type: http`, not `tcp`",
            "services.api.health_check.expected_status: only applies to `type: http`, not `tcp`",
            "services.api.health_check.timeout: 2s is longer than the interval (1s); probes would overlap",
            "services.api.health_check.unhealthy_threshold: must be between 1 and 100 (got 0)",
            "services.api.panic_threshold: must be a percentage from 0 to 100 (got 101)",
        ];
        assert_eq!(errors, expected);
        let errors = messages(&with("    health_check: {type: grpc}\n"));
        assert_eq!(errors, ["services.api.health_check.type: unknown check type `grpc`; expected http, tcp or custom"]);
        let errors = messages(&with(
            "    health_check: {expected_status: [\"500-200\", 99]}\n",
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn oversized_configs_are_refused_in_plain_words() {
        let mut text = GOOD.to_string();
        text.push_str(&"# padding\n".repeat(crate::config::MAX_CONFIG_BYTES / 10));
        assert_eq!(
            messages(&text),
            ["the config is larger than 4 MiB (4194304 bytes), the most accepted"]
        );
        let mut text = String::from("listeners:\n  - address: 127.0.0.1:80\ntrusted_proxies:\n");
        text.push_str(&"  - 10.0.0.1\n".repeat(crate::config::MAX_YAML_NODES));
        let errors = messages(&text);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].ends_with("trusted_proxies: the config has more than 250000 YAML nodes (values, lists and maps), the most accepted"),
            "{errors:?}"
        );
    }

    #[test]
    fn empty_config_is_refused() {
        assert!(messages("")[0].contains("empty"));
        assert!(messages("routes: []")[0].starts_with("listeners: at least one listener"));
    }

    #[test]
    fn route_upgrades_are_tokens_and_never_h2c() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.routes[0].upgrades, ["websocket"], "the default");
        let text = "listeners: [{address: 127.0.0.1:80}]\nroutes:\n  - {service: a, upgrades: [WebSocket, my-proto]}\n  - {path_prefix: /b, service: a, upgrades: []}\nservices: {a: {}}\n";
        let config = parse(text).unwrap();
        assert_eq!(config.routes[0].upgrades, ["websocket", "my-proto"]);
        assert!(config.routes[1].upgrades.is_empty());
        let errors = messages(
            "listeners: [{address: 127.0.0.1:80}]\nroutes: [{service: a, upgrades: [H2C, \"web socket\", \"\"]}]\nservices: {a: {}}\n",
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("routes[0].upgrades[0]: h2c upgrades are not supported"));
        assert!(errors[1].starts_with("routes[0].upgrades[1]: `web socket` is not a protocol name"));
        assert!(errors[2].starts_with("routes[0].upgrades[2]: `` is not a protocol name"));
    }

    #[test]
    fn admin_token_errors_name_the_field() {
        let admin =
            |fields: &str| format!("listeners: [{{address: 127.0.0.1:80}}]\nadmin: {{{fields}}}\n");
        assert_eq!(
            messages(&admin("token: \"  \"")),
            ["admin.token: the token is empty"]
        );
        assert_eq!(
            messages(&admin("token: a, token_env: B")),
            ["admin: give the token one way only: token, token_file or token_env"]
        );
        let config = parse(&admin("token: \" s3cret \"")).unwrap();
        assert_eq!(config.admin.token.map(|t| t.0).as_deref(), Some("s3cret"));
    }

    #[test]
    fn max_headers_is_checked() {
        let limits = |value: &str| {
            format!("listeners: [{{address: 127.0.0.1:80, limits: {{max_headers: {value}}}}}]\nservices: {{}}\n")
        };
        assert_eq!(
            parse(&limits("200")).unwrap().listeners[0]
                .limits
                .max_headers,
            200
        );
        let errors = messages(&limits("0"));
        assert!(
            errors[0].starts_with(
                "listeners[0].limits.max_headers: must be between 16 and 10000 (got 0)"
            ),
            "{errors:?}"
        );
        let config =
            parse("listeners: [{address: 127.0.0.1:80}]\nunderscores_in_headers: true\n").unwrap();
        assert!(config.underscores_in_headers);
    }
}
