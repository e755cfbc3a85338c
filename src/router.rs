//! Request → route: host first (exact, then the longest `*.suffix`, then
//! any host), then the path (patterns first, then the longest prefix), then
//! the route with more method, header and query conditions. Built once
//! per snapshot; a lookup allocates nothing unless the host has upper case
//! (or a query condition meets a percent-encoded parameter).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{HostMatch, MatchConditions, Pattern, RouteConfig};
use crate::limits::RateLimiter;
use crate::traffic::matcher::{self, RequestFacts};

/// A matched route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index of the route in the config, and of its traffic policy in the
    /// snapshot.
    pub policy: usize,
    /// The path prefix that matched.
    pub path_prefix: Box<str>,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// The `Upgrade` protocols this route lets through (lower case).
    pub upgrades: Box<[Box<str>]>,
    /// Where copies of its requests go, if anywhere.
    pub mirror: Option<crate::traffic::mirror::MirrorRoute>,
    /// A pattern the whole path must match, instead of the prefix.
    pub path_regex: Option<Pattern>,
    /// Method, header and query conditions.
    pub conditions: MatchConditions,
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
    /// Whether any route has a header condition (a lookup then reads the
    /// request's fields).
    reads_headers: bool,
}

impl Router {
    /// Whether a lookup may read the request's header fields: without
    /// header conditions it reads only the host, path, query and method.
    pub fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    /// Builds the table, each host's routes in the order they are tried
    /// (see [`matcher::precedence`]).
    pub fn new(routes: &[RouteConfig]) -> Router {
        Router::with_rate_limits(routes, |_| None, |_| None)
    }

    /// Builds the table with the rate limiter of each route (by its index
    /// in `routes`) and the snapshot index of each mirror service.
    pub fn with_rate_limits(
        routes: &[RouteConfig],
        service_index: impl Fn(&crate::config::ServiceName) -> Option<usize>,
        rate_limit: impl Fn(usize) -> Option<Arc<RateLimiter>>,
    ) -> Router {
        let mut router = Router::default();
        let mut keyed: Vec<(usize, &RouteConfig)> = routes.iter().enumerate().collect();
        // A stable sort: ties keep config order.
        keyed.sort_by_key(|(_, config)| matcher::precedence(config));
        for (index, config) in keyed {
            router.reads_headers |= !config.conditions.headers.is_empty();
            let route = Route {
                policy: index,
                path_prefix: config.path_prefix.as_str().into(),
                strip_prefix: config.strip_prefix,
                upgrades: config.upgrades.iter().map(|u| u.as_str().into()).collect(),
                mirror: config.mirror.as_ref().and_then(|mirror| {
                    let service = service_index(&mirror.service)?;
                    Some(crate::traffic::mirror::MirrorRoute::new(mirror, service))
                }),
                path_regex: config.path_regex.clone(),
                conditions: config.conditions.clone(),
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
        router
            .suffix
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        router
    }

    /// The most specific route for `host` (without port) and `request`.
    pub fn find(&self, host: &str, request: &RequestFacts<'_>) -> Option<&Route> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        // A host without a matching path falls through to less specific
        // hosts, like nginx falling back to its default server.
        if let Some(route) = self
            .exact
            .get(host)
            .and_then(|list| match_path(list, request))
        {
            return Some(route);
        }
        for (suffix, list) in &self.suffix {
            if host.len() > suffix.len() && host.ends_with(&**suffix) {
                if let Some(route) = match_path(list, request) {
                    return Some(route);
                }
            }
        }
        match_path(&self.any, request)
    }
}

/// The first route in `list` (in precedence order) whose path and
/// conditions match. Prefixes match at a segment boundary: `/api` matches
/// `/api` and `/api/x`, not `/apix`.
fn match_path<'a>(list: &'a [Route], request: &RequestFacts<'_>) -> Option<&'a Route> {
    let path = request.path;
    list.iter().find(|route| {
        let path_matches = match &route.path_regex {
            Some(pattern) => pattern.is_match(path),
            None => {
                let prefix = &*route.path_prefix;
                path.starts_with(prefix)
                    && (prefix.ends_with('/')
                        || path.len() == prefix.len()
                        || path.as_bytes().get(prefix.len()) == Some(&b'/'))
            }
        };
        path_matches && matcher::matches(&route.conditions, request)
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
    use crate::config::{RoutePolicy, ServiceName};

    fn route(host: HostMatch, prefix: &str, service: &str) -> RouteConfig {
        RouteConfig {
            host,
            path_prefix: prefix.into(),
            strip_prefix: true,
            upgrades: vec!["websocket".into()],
            path_regex: None,
            conditions: MatchConditions::default(),
            rate_limit: None,
            policy: RoutePolicy::to_service(ServiceName::from(service)),
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
        Router::new(&routes)
    }

    fn find<'r>(router: &'r Router, host: &str, path: &str) -> Option<&'r Route> {
        let headers = http::HeaderMap::new();
        router.find(
            host,
            &RequestFacts::bare(&http::Method::GET, path, &headers),
        )
    }

    fn service(router: &Router, host: &str, path: &str) -> Option<usize> {
        find(router, host, path).map(|r| r.policy)
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
        let r = Router::new(&routes);
        assert!(find(&r, "b.test", "/x").is_none());
        assert!(find(&r, "a.test", "/y").is_none());
    }

    #[test]
    fn strips_prefixes() {
        let strip = |prefix: &str, path: &'static str| {
            Route {
                policy: 0,
                path_prefix: prefix.into(),
                strip_prefix: true,
                upgrades: Box::default(),
                mirror: None,
                path_regex: None,
                conditions: MatchConditions::default(),
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
        let route = find(&r, "other.org", "/").unwrap();
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
