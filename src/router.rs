//! Request → route: host first (exact, then the longest `*.suffix`, then
//! any host), then the longest matching path prefix. Built once per
//! snapshot; a lookup allocates nothing unless the host has upper case.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{HostMatch, RouteConfig};
use crate::limits::RateLimiter;

/// A matched route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index of the service in the snapshot.
    pub service: usize,
    /// The path prefix that matched.
    pub path_prefix: Box<str>,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// The `Upgrade` protocols this route lets through (lower case).
    pub upgrades: Box<[Box<str>]>,
    /// Where copies of its requests go, if anywhere.
    pub mirror: Option<crate::traffic::mirror::MirrorRoute>,
    /// The route's rate limit, if it has one.
    pub rate_limit: Option<Arc<RateLimiter>>,
}

impl Route {
    /// The path to send upstream for `path` (which this route matched).
    pub fn upstream_path<'a>(&self, path: &'a str) -> &'a str {
        if !self.strip_prefix {
            return path;
        }
        let prefix = self.path_prefix.trim_end_matches('/');
        match path.get(prefix.len()..) {
            Some("") | None => "/",
            Some(rest) if rest.starts_with('/') => rest,
            // Unreachable: prefixes match at segment boundaries.
            Some(_) => path,
        }
    }

    /// Whether this route lets a request upgrade to `protocol`, an entry of
    /// an `Upgrade` field (`websocket`, `name/version`): its name, ignoring
    /// case and version, must be one of the route's `upgrades`.
    pub fn allows_upgrade(&self, protocol: &str) -> bool {
        let name = protocol.split('/').next().unwrap_or(protocol).trim();
        self.upgrades
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

/// The route table of one snapshot.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, Vec<Route>>,
    /// Sorted by suffix length, longest first.
    suffix: Vec<(Box<str>, Vec<Route>)>,
    any: Vec<Route>,
}

impl Router {
    /// Builds the table. `service_index` maps a route's service to its index
    /// in the snapshot; routes to unknown services are skipped (validation
    /// has already refused them).
    pub fn new(
        routes: &[RouteConfig],
        service_index: impl Fn(&crate::config::ServiceName) -> Option<usize>,
    ) -> Router {
        Router::with_rate_limits(routes, service_index, |_| None)
    }

    /// Builds the table with the rate limiter of each route (by its index
    /// in `routes`).
    pub fn with_rate_limits(
        routes: &[RouteConfig],
        service_index: impl Fn(&crate::config::ServiceName) -> Option<usize>,
        rate_limit: impl Fn(usize) -> Option<Arc<RateLimiter>>,
    ) -> Router {
        let mut router = Router::default();
        for (index, config) in routes.iter().enumerate() {
            let Some(service) = service_index(&config.service) else {
                continue;
            };
            let route = Route {
                service,
                path_prefix: config.path_prefix.as_str().into(),
                strip_prefix: config.strip_prefix,
                upgrades: config.upgrades.iter().map(|u| u.as_str().into()).collect(),
                mirror: config.mirror.as_ref().and_then(|mirror| {
                    let service = service_index(&mirror.service)?;
                    Some(crate::traffic::mirror::MirrorRoute::new(mirror, service))
                }),
                rate_limit: rate_limit(index),
            };
            let list = match &config.host {
                HostMatch::Any => &mut router.any,
                HostMatch::Exact(host) => router.exact.entry(host.as_str().into()).or_default(),
                HostMatch::Suffix(suffix) => {
                    match router.suffix.iter().position(|(s, _)| **s == **suffix) {
                        Some(i) => &mut router.suffix[i].1,
                        None => {
                            router.suffix.push((suffix.as_str().into(), Vec::new()));
                            let last = router.suffix.len() - 1;
                            &mut router.suffix[last].1
                        }
                    }
                }
            };
            list.push(route);
        }
        let by_prefix_length = |list: &mut Vec<Route>| {
            list.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        };
        router.exact.values_mut().for_each(by_prefix_length);
        router
            .suffix
            .iter_mut()
            .for_each(|(_, l)| by_prefix_length(l));
        by_prefix_length(&mut router.any);
        router
            .suffix
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        router
    }

    /// The most specific route for `host` (without port) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        // A host without a matching path falls through to less specific
        // hosts, like nginx falling back to its default server.
        if let Some(route) = self.exact.get(host).and_then(|list| match_path(list, path)) {
            return Some(route);
        }
        for (suffix, list) in &self.suffix {
            if host.len() > suffix.len() && host.ends_with(&**suffix) {
                if let Some(route) = match_path(list, path) {
                    return Some(route);
                }
            }
        }
        match_path(&self.any, path)
    }
}

/// The first (longest) prefix in `list` that matches `path` at a segment
/// boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
fn match_path<'a>(list: &'a [Route], path: &str) -> Option<&'a Route> {
    list.iter().find(|route| {
        let prefix = &*route.path_prefix;
        path.starts_with(prefix)
            && (prefix.ends_with('/')
                || path.len() == prefix.len()
                || path.as_bytes().get(prefix.len()) == Some(&b'/'))
    })
}

/// The host of a request (from the URI authority or the `Host` header),
/// without port.
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceName;

    fn route(host: HostMatch, prefix: &str, service: &str) -> RouteConfig {
        RouteConfig {
            host,
            path_prefix: prefix.into(),
            strip_prefix: true,
            upgrades: vec!["websocket".into()],
            rate_limit: None,
            service: ServiceName::from(service),
            mirror: None,
        }
    }

    fn router() -> Router {
        let routes = vec![
            route(HostMatch::Any, "/", "0"),
            route(HostMatch::Any, "/api", "1"),
            route(HostMatch::Suffix(".example.com".into()), "/", "2"),
            route(HostMatch::Suffix(".eu.example.com".into()), "/", "3"),
            route(HostMatch::Exact("shop.example.com".into()), "/cart/", "4"),
        ];
        Router::new(&routes, |name| name.as_str().parse().ok())
    }

    fn service(router: &Router, host: &str, path: &str) -> Option<usize> {
        router.find(host, path).map(|r| r.service)
    }

    #[test]
    fn most_specific_host_then_longest_prefix() {
        let r = router();
        assert_eq!(service(&r, "other.org", "/"), Some(0));
        assert_eq!(service(&r, "other.org", "/api/users"), Some(1));
        assert_eq!(service(&r, "other.org", "/apix"), Some(0));
        assert_eq!(service(&r, "a.example.com", "/api"), Some(2));
        assert_eq!(service(&r, "a.eu.example.com", "/"), Some(3));
        assert_eq!(
            service(&r, "example.com", "/"),
            Some(0),
            "*.x does not match x"
        );
        assert_eq!(service(&r, "shop.example.com", "/cart/1"), Some(4));
        assert_eq!(service(&r, "SHOP.Example.com", "/cart/1"), Some(4));
        // The exact host has no route for /about: fall through to *.example.com.
        assert_eq!(service(&r, "shop.example.com", "/about"), Some(2));
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let routes = vec![route(HostMatch::Exact("a.test".into()), "/x", "0")];
        let r = Router::new(&routes, |_| Some(0));
        assert!(r.find("b.test", "/x").is_none());
        assert!(r.find("a.test", "/y").is_none());
    }

    #[test]
    fn strips_prefixes() {
        let strip = |prefix: &str, path: &'static str| {
            Route {
                service: 0,
                path_prefix: prefix.into(),
                strip_prefix: true,
                upgrades: Box::default(),
                mirror: None,
                rate_limit: None,
            }
            .upstream_path(path)
        };
        assert_eq!(strip("/api", "/api/users"), "/users");
        assert_eq!(strip("/api", "/api"), "/");
        assert_eq!(strip("/api/", "/api/users"), "/users");
        assert_eq!(strip("/", "/users"), "/users");
    }

    #[test]
    fn upgrades_match_by_protocol_name() {
        let r = router();
        let route = r.find("other.org", "/").unwrap();
        assert!(route.allows_upgrade("websocket"));
        assert!(route.allows_upgrade(" WebSocket/13"));
        assert!(!route.allows_upgrade("h2c"));
        assert!(!route.allows_upgrade("websockets"));
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
    }
}
