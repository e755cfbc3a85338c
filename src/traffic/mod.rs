//! Traffic policy of routes, compiled into the snapshot when it is built:
//! extra match conditions ([`matcher`]), the split over weighted backends
//! ([`split`]), subsets of a service's instances by version or tags
//! ([`subset`]), header edits ([`rewrite`]), sticky sessions ([`sticky`])
//! and request mirrors ([`mirror`]).
//!
//! A request only reads what is built here, and the split counters that
//! live outside the snapshot ([`split::SplitCounters`]), so a reload
//! changing weights resets nothing.

pub mod matcher;
pub mod mirror;
pub mod rewrite;
pub mod split;
pub mod sticky;
pub mod subset;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::COOKIE;
use http::{HeaderMap, HeaderName};

use crate::balance::{hash_bytes, hash_ip};
use crate::config::{HeaderRewrite, RouteConfig, ServiceName, SplitKey};
use crate::registry::ServiceSnapshot;
use sticky::StickyTable;

pub use split::{Split, SplitCounters};
pub use subset::Target;

/// The response field naming the service and instance that answered,
/// when a route has `backend_header: true`.
pub static X_SWITCHYARD_BACKEND: HeaderName = HeaderName::from_static("x-switchyard-backend");

/// One route's compiled policy.
#[derive(Debug)]
pub struct CompiledRoute {
    /// The backends, in config order.
    pub backends: Vec<CompiledBackend>,
    /// The split over `backends`.
    pub split: Split,
    /// What keys a consistent split.
    pub split_by: Option<SplitKey>,
    /// Edits to the request sent upstream.
    pub request_headers: HeaderRewrite,
    /// Edits to the response.
    pub response_headers: HeaderRewrite,
    /// Add `X-Switchyard-Backend` to responses.
    pub backend_header: bool,
}

/// One backend of a compiled route.
#[derive(Debug)]
pub struct CompiledBackend {
    /// Index of the service in the snapshot.
    pub service: usize,
    /// The service's name.
    pub name: ServiceName,
    /// Its instances.
    pub target: Target,
    /// The subset, in words, for errors (`version 2.1`); empty without one.
    pub subset: Box<str>,
}

impl CompiledBackend {
    /// The index among this backend's instances of the service's instance
    /// in rotation `index` (what a sticky cookie names), if the backend
    /// sends to it: any of them without a subset, only the subset's with
    /// one.
    pub fn sticky_candidate(&self, index: usize) -> Option<usize> {
        match &self.target {
            Target::Service => Some(index),
            Target::Subset(pool) => pool.from_service(index),
            Target::Empty => None,
        }
    }

    /// The index among the service's instances in rotation of this
    /// backend's instance `candidate` (what a sticky cookie is written
    /// for).
    pub fn sticky_instance(&self, candidate: usize) -> Option<usize> {
        match &self.target {
            Target::Service => Some(candidate),
            Target::Subset(pool) => pool.to_service(candidate),
            Target::Empty => None,
        }
    }
}

/// A backend a sticky cookie holds a request to.
#[derive(Debug, Clone, Copy)]
pub struct StickyBackend<'a> {
    /// Index into the route's backends.
    pub backend: usize,
    /// The service's sticky table.
    pub table: &'a StickyTable,
    /// The named instance, as an index among the backend's instances.
    pub candidate: usize,
}

impl CompiledRoute {
    /// The first backend whose service has sticky sessions and whose
    /// instances (the service's in rotation, or its subset's) hold the
    /// instance the request's cookie names. A cookie's value is keyed by
    /// service, so it names at most one instance; backends of the same
    /// service share one lookup.
    /// `headers` gives the request's fields; called only for a service
    /// with sticky sessions (a map may have to be made for it).
    pub fn sticky_backend<'a, 'h>(
        &self,
        services: &'a [Arc<ServiceSnapshot>],
        headers: impl Fn() -> &'h HeaderMap,
    ) -> Option<StickyBackend<'a>> {
        // (service, what its table found), for the previous backend.
        let mut last: Option<(usize, Option<usize>)> = None;
        self.backends
            .iter()
            .enumerate()
            .find_map(|(backend, compiled)| {
                let table = services.get(compiled.service)?.sticky.as_ref()?;
                let named = match last {
                    Some((service, named)) if service == compiled.service => named,
                    _ => table.find(headers()),
                };
                last = Some((compiled.service, named));
                Some(StickyBackend {
                    backend,
                    table,
                    candidate: compiled.sticky_candidate(named?)?,
                })
            })
    }

    /// The hash of the request's split key, if the route has a
    /// `split_by` and the request carries the key (`client_ip` is the
    /// client as found through `trusted_proxies`).
    pub fn split_key(&self, headers: &HeaderMap, client_ip: IpAddr) -> Option<u64> {
        match self.split_by.as_ref()? {
            // Hashed once more so that the split and an `ip_hash` ring
            // behind it do not see the same number.
            SplitKey::ClientIp => Some(hash_bytes(&hash_ip(client_ip).to_le_bytes())),
            SplitKey::Header(name) => headers.get(name).map(|v| hash_bytes(v.as_bytes())),
            SplitKey::Cookie(name) => cookie(headers, name).map(hash_bytes),
        }
    }

    /// The split decision for a request whose key hashes to `key_hash`
    /// (`None`: no key; the smooth split): an index into `backends`.
    pub fn choose(&self, key_hash: Option<u64>) -> usize {
        self.split.choose(key_hash)
    }
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|field| {
        field.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=")
        })
    })
}

/// The identity of a route for its split counter: what it matches, not
/// where it sits in the file, so a reload that adds a route above it keeps
/// its count.
fn route_key(route: &RouteConfig) -> String {
    format!(
        "{} {} {:?} {:?}",
        route.host,
        route.path_prefix,
        route.path_regex.as_ref().map(|p| p.as_str()),
        route.conditions
    )
}

/// Compiles every route of a snapshot being built (`generation`) over its
/// `services`, taking split counters from `counters`.
pub fn compile(
    routes: &[RouteConfig],
    services: &[Arc<ServiceSnapshot>],
    counters: &mut SplitCounters,
    generation: u64,
) -> Vec<CompiledRoute> {
    let compiled = routes
        .iter()
        .map(|route| {
            let policy = &route.policy;
            // Validation refused unknown services; a backend whose service
            // is missing anyway is left out, not a panic.
            let (backends, weights): (Vec<CompiledBackend>, Vec<u32>) = policy
                .backends
                .iter()
                .filter_map(|backend| {
                    let index = services.iter().position(|s| s.name == backend.service)?;
                    let service = &services[index];
                    Some((
                        CompiledBackend {
                            service: index,
                            name: service.name.clone(),
                            target: subset::target(
                                service,
                                backend.subset.as_ref(),
                                backend.fallback,
                            ),
                            subset: backend
                                .subset
                                .as_ref()
                                .map_or_else(String::new, |s| s.to_string())
                                .into(),
                        },
                        backend.weight,
                    ))
                })
                .unzip();
            CompiledRoute {
                backends,
                split: counters.split(&route_key(route), &weights, generation),
                split_by: policy.split_by.clone(),
                request_headers: policy.request_headers.clone(),
                response_headers: policy.response_headers.clone(),
                backend_header: policy.backend_header,
            }
        })
        .collect();
    counters.forget_before(generation);
    compiled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, "a=1; user=alice".parse().unwrap());
        headers.append(COOKIE, "username=x".parse().unwrap());
        assert_eq!(cookie(&headers, "user"), Some(&b"alice"[..]));
        assert_eq!(cookie(&headers, "a"), Some(&b"1"[..]));
        assert_eq!(cookie(&headers, "b"), None);
    }
}
