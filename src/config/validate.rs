//! Raw config → validated [`Config`], collecting every problem.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;

use super::raw::{RawConfig, RawInstance, RawRoute, RawService};
use super::values::{check_name, parse_duration};
use super::*;

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
            listeners.push(ListenerConfig {
                name: listener.name.clone().unwrap_or(path),
                address,
            });
        }
    }

    let admin_text = raw
        .admin
        .as_ref()
        .map_or(DEFAULT_ADMIN_ADDRESS, |a| a.address.as_str());
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

    let drain_timeout = match &raw.drain_timeout {
        Some(text) => errors
            .check("drain_timeout", parse_duration(text))
            .unwrap_or(defaults::DRAIN_TIMEOUT),
        None => defaults::DRAIN_TIMEOUT,
    };

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

    let mut routes = Vec::new();
    let mut seen_routes = HashSet::new();
    for (i, route) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if let Some(route) = validate_route(&path, route, &raw, &mut errors) {
            if !seen_routes.insert((route.host.clone(), route.path_prefix.clone())) {
                errors.push(
                    path,
                    format!(
                        "another route already matches host `{}` and path prefix `{}`",
                        route.host, route.path_prefix
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
        },
        trusted_proxies,
        drain_timeout,
        routes,
        services,
    })
}

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
    if !raw.services.contains_key(&route.service) {
        let known: Vec<&str> = raw.services.keys().map(String::as_str).collect();
        errors.push(
            format!("{path}.service"),
            format!(
                "no service named `{}` (services defined: {})",
                route.service,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
        return None;
    }
    Some(RouteConfig {
        host: host?,
        path_prefix,
        strip_prefix: route.strip_prefix,
        service: ServiceName::from(route.service.as_str()),
    })
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
    let mut timeout = |field: &str, value: &Option<String>, default| match value {
        None => default,
        Some(text) => {
            let parsed = parse_duration(text).and_then(|d| {
                if d.is_zero() {
                    Err("must be more than zero".into())
                } else {
                    Ok(d)
                }
            });
            errors
                .check(format!("{path}.{field}"), parsed)
                .unwrap_or(default)
        }
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
    let max_attempts = match &raw.retry {
        None => NonZeroU32::new(defaults::MAX_ATTEMPTS),
        Some(retry) => errors.check(
            format!("{path}.retry.max_attempts"),
            u32::try_from(retry.max_attempts)
                .ok()
                .filter(|n| (1..=10).contains(n))
                .and_then(NonZeroU32::new)
                .ok_or_else(|| format!("must be between 1 and 10 (got {})", retry.max_attempts)),
        ),
    };

    let mut instances = Vec::new();
    let mut ids = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, instance) in raw.instances.iter().enumerate() {
        let path = format!("{path}.instances[{i}]");
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
        instances,
    })
}

fn validate_instance(path: &str, raw: &RawInstance, errors: &mut Errors) -> Option<InstanceConfig> {
    let address = errors.check(format!("{path}.address"), parse_socket_addr(&raw.address));
    let weight = errors.check(
        format!("{path}.weight"),
        match raw.weight {
            None => Ok(NonZeroU32::MIN),
            Some(w) => u32::try_from(w)
                .ok()
                .filter(|w| *w <= MAX_WEIGHT)
                .and_then(NonZeroU32::new)
                .ok_or_else(|| format!("must be between 1 and {MAX_WEIGHT} (got {w})")),
        },
    );
    let id = match &raw.id {
        Some(id) => errors.check(
            format!("{path}.id"),
            check_name(id).map(|()| InstanceId::from(id.as_str())),
        ),
        None => address.map(|a| InstanceId::from(a.to_string().as_str())),
    };
    Some(InstanceConfig {
        id: id?,
        address: address?,
        weight: weight?,
        tags: raw.tags.clone(),
        metadata: raw.metadata.clone(),
    })
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an IP address with a port, e.g. `127.0.0.1:8080` or `[::1]:8080`")
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, HostMatch, Strategy};

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

    fn messages(text: &str) -> Vec<String> {
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
    fn empty_config_is_refused() {
        assert!(messages("")[0].contains("empty"));
        assert!(messages("routes: []")[0].starts_with("listeners: at least one listener"));
    }
}
