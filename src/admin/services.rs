//! The registry API: list, register, renew, deregister, drain, and watch
//! services with Consul-style blocking queries.
//!
//! - `GET /admin/services`, `GET /admin/services/{name}` (`?healthy=true`
//!   keeps instances in rotation; `?index=N&wait=30s` blocks until the
//!   service changes past index N). The index is in `X-Switchyard-Index`.
//! - `POST /admin/services/{name}/instances` registers (JSON body).
//! - `PUT …/instances/{id}/heartbeat` renews a lease.
//! - `DELETE …/instances/{id}` deregisters.
//! - `PUT …/instances/{id}/drain` and `/undrain`.

use std::time::Duration;

use crate::upstream::ClientBody;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};

use super::status::service_view;
use super::{
    bad_request, errors_response, json_response, method_not_allowed, read_body, AdminState,
};
use std::sync::Arc;

use crate::config::{parse_duration, InstanceEntry, InstanceId, Registration, ServiceName};
use crate::fleet::{Fleet, FleetError};
use crate::proxy::ProxyBody;
use crate::registry::RegistryError;

/// The header carrying a service's index.
pub const INDEX_HEADER: &str = "x-switchyard-index";
/// The longest a watch may block.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// How long a watch blocks without `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// `segments` starts after `/admin/services`.
pub(super) async fn handle(
    state: &AdminState,
    request: Request<ClientBody>,
    segments: &[&str],
) -> Response<ProxyBody> {
    let method = request.method().clone();
    let query = Query::parse(request.uri().query().unwrap_or(""));
    let query = match query {
        Ok(query) => query,
        Err(message) => return bad_request(message),
    };
    let registry = &state.registry;
    let path = format!("/admin/services/{}", segments.join("/"));
    match (&method, segments) {
        (&Method::GET, []) => {
            let snapshot = registry.snapshot();
            let discovery = registry.discovery_status();
            let services: Vec<_> = snapshot
                .services
                .iter()
                .map(|s| {
                    filtered(
                        service_view(registry, s, discovery.get(&s.name).cloned()),
                        query.healthy,
                    )
                })
                .collect();
            // A typed body: `json!` would panic on a value JSON cannot hold.
            json_response(StatusCode::OK, &ServicesView { services })
        }
        (&Method::GET, [name]) => {
            let name = ServiceName::from(*name);
            if let Some(index) = query.index {
                wait_for_change(state, &name, index, query.wait).await;
            }
            let snapshot = registry.snapshot();
            let Some(service) = snapshot.services.iter().find(|s| s.name == name) else {
                return registry_error(&RegistryError::UnknownService(name));
            };
            let discovery = registry.discovery_status().get(&name).cloned();
            let mut response = json_response(
                StatusCode::OK,
                &filtered(service_view(registry, service, discovery), query.healthy),
            );
            let index = registry.service_index(&name).unwrap_or(0);
            if let Ok(value) = HeaderValue::try_from(index.to_string()) {
                response.headers_mut().insert(INDEX_HEADER, value);
            }
            response
        }
        (&Method::POST, [name, "instances"]) => {
            let name = ServiceName::from(*name);
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let registration: Registration = match serde_json::from_slice(&body) {
                Ok(registration) => registration,
                Err(error) => {
                    return errors_response(
                        StatusCode::BAD_REQUEST,
                        vec![format!("the body is not a valid registration: {error}")],
                    )
                }
            };
            let (instance, ttl) = match registration.validate() {
                Ok(valid) => valid,
                Err(errors) => {
                    return errors_response(
                        StatusCode::BAD_REQUEST,
                        errors.0.iter().map(ToString::to_string).collect(),
                    )
                }
            };
            let id = instance.id().clone();
            let named = matches!(instance, InstanceEntry::Named(_));
            let registered = match fleet_of(state) {
                Some(fleet) => match registry.check_registration(&name, &instance) {
                    Ok(()) => fleet
                        .register(&name, instance, ttl)
                        .await
                        .map_err(|e| fleet_error(&e)),
                    Err(error) => Err(registry_error(&error)),
                },
                None => registry
                    .register(&name, instance, ttl)
                    .map_err(|e| registry_error(&e)),
            };
            match registered {
                Ok(created) => {
                    let status = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    let mut answer = serde_json::json!({ "service": name.as_str(), "id": id.as_str(), "created": created });
                    if named {
                        let view = first_answer(registry, &name, &id).await;
                        if let (Some(view), Some(fields)) = (view, answer.as_object_mut()) {
                            fields.insert("dns_name".into(), view);
                        }
                    }
                    json_response(status, &answer)
                }
                Err(response) => response,
            }
        }
        (&Method::PUT, [name, "instances", id, action @ ("heartbeat" | "drain" | "undrain")]) => {
            let (name, id) = (ServiceName::from(*name), InstanceId::from(*id));
            if let Some(fleet) = fleet_of(state) {
                return fleet_instance_call(state, fleet, &name, &id, action).await;
            }
            let result = match *action {
                "heartbeat" => registry.heartbeat(&name, &id),
                "drain" => registry.set_drained(&name, &id, true),
                _ => registry.set_drained(&name, &id, false),
            };
            match result {
                Ok(()) => json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "service": name.as_str(), "id": id.as_str(), "result": action }),
                ),
                Err(error) => registry_error(&error),
            }
        }
        (&Method::DELETE, [name, "instances", id]) => {
            let (name, id) = (ServiceName::from(*name), InstanceId::from(*id));
            let result = match fleet_of(state) {
                Some(fleet) => match fleet.deregister(&name, &id).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(RegistryError::UnknownInstance {
                        service: name.clone(),
                        id: id.clone(),
                    }),
                    Err(error) => return fleet_error(&error),
                },
                None => registry.deregister(&name, &id),
            };
            match result {
                Ok(()) => json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "service": name.as_str(), "id": id.as_str(), "result": "deregistered" }),
                ),
                Err(error) => registry_error(&error),
            }
        }
        _ => method_not_allowed(&method, &path),
    }
}

/// How long a registration by host name waits for the resolver's first
/// answer before it is answered without it (the instances appear when it
/// comes).
const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(3);

/// The view of the host-name registration `id` once the resolver has
/// answered for it (or [`FIRST_ANSWER_WAIT`] ran out).
async fn first_answer(
    registry: &crate::registry::Registry,
    service: &ServiceName,
    id: &InstanceId,
) -> Option<serde_json::Value> {
    let mut changes = registry.subscribe();
    let deadline = tokio::time::Instant::now() + FIRST_ANSWER_WAIT;
    loop {
        let view = super::status::dns_names(registry, service)
            .into_iter()
            .find(|view| view.is_registration(id));
        let resolved = view.as_ref().is_some_and(|v| v.is_resolved());
        let waited = resolved
            || !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            );
        if waited {
            return view.and_then(|v| serde_json::to_value(v).ok());
        }
    }
}

#[derive(serde::Serialize)]
struct ServicesView {
    services: Vec<super::status::ServiceView>,
}

fn fleet_of(state: &AdminState) -> Option<&Arc<Fleet>> {
    state.reloader.as_ref().and_then(|r| r.fleet())
}

/// Heartbeat, drain and undrain of a fleet node: the lease and the drain
/// flag live in etcd, shared by every node.
async fn fleet_instance_call(
    state: &AdminState,
    fleet: &Fleet,
    name: &ServiceName,
    id: &InstanceId,
    action: &str,
) -> Response<ProxyBody> {
    let result = match action {
        "heartbeat" => match fleet.heartbeat(name, id).await {
            Ok(Some(true)) => Ok(()),
            Ok(Some(false)) => Err(RegistryError::NoLease(id.clone())),
            Ok(None) => Err(RegistryError::UnknownInstance {
                service: name.clone(),
                id: id.clone(),
            }),
            Err(error) => return fleet_error(&error),
        },
        _ => {
            let drained = action == "drain";
            // Known here first (from any source), then shared.
            match state.registry.set_drained(name, id, drained) {
                Ok(()) => match fleet.set_drained(name, id, drained).await {
                    Ok(()) => Ok(()),
                    Err(error) => return fleet_error(&error),
                },
                Err(error) => Err(error),
            }
        }
    };
    match result {
        Ok(()) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "service": name.as_str(), "id": id.as_str(), "result": action }),
        ),
        Err(error) => registry_error(&error),
    }
}

/// etcd could not take the change: nothing changed anywhere.
fn fleet_error(error: &FleetError) -> Response<ProxyBody> {
    errors_response(
        StatusCode::SERVICE_UNAVAILABLE,
        vec![format!("the fleet registry is unavailable: {error}")],
    )
}

/// Blocks until the service's index passes `index`, or `wait` runs out.
async fn wait_for_change(
    state: &AdminState,
    name: &ServiceName,
    index: u64,
    wait: Option<Duration>,
) {
    let deadline = tokio::time::Instant::now() + wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    let mut changes = state.registry.subscribe();
    loop {
        // An unknown service answers at once (with 404).
        match state.registry.service_index(name) {
            Some(current) if current <= index => {}
            _ => return,
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn filtered(
    mut view: super::status::ServiceView,
    healthy_only: bool,
) -> super::status::ServiceView {
    if healthy_only {
        view.instances.retain(|i| i.in_rotation);
    }
    view
}

fn registry_error(error: &RegistryError) -> Response<ProxyBody> {
    let status = match error {
        RegistryError::UnknownService(_) | RegistryError::UnknownInstance { .. } => {
            StatusCode::NOT_FOUND
        }
        RegistryError::NewServiceNotAllowed(_) => StatusCode::FORBIDDEN,
        RegistryError::NotRegistered { .. } | RegistryError::NoLease(_) => StatusCode::CONFLICT,
    };
    errors_response(status, vec![error.to_string()])
}

struct Query {
    healthy: bool,
    index: Option<u64>,
    wait: Option<Duration>,
}

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut parsed = Query {
            healthy: false,
            index: None,
            wait: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            match key {
                "healthy" => {
                    parsed.healthy = value
                        .parse()
                        .map_err(|_| format!("healthy=`{value}`: use true or false\n"))?
                }
                "index" => {
                    parsed.index = Some(
                        value
                            .parse()
                            .map_err(|_| format!("index=`{value}` is not a number\n"))?,
                    )
                }
                "wait" => {
                    parsed.wait = Some(parse_duration(value).map_err(|e| format!("wait: {e}\n"))?)
                }
                // Consul clients send these; every answer here is
                // consistent and fresh, so they change nothing.
                "stale" | "consistent" => {}
                other => {
                    return Err(format!(
                        "unknown parameter `{other}`; use healthy, index and wait (stale and consistent are accepted and ignored)\n"
                    ))
                }
            }
        }
        Ok(parsed)
    }
}
