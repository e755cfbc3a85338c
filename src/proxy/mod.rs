//! The request path: route, pick, forward, retry, answer.
//!
//! A request loads the current snapshot once and uses only it, so a reload
//! in the middle of a request changes nothing for that request. Failures
//! become responses in one place ([`error_response`]).

mod body;
mod error;
pub mod headers;
mod limits;
mod mirror;
mod received;
mod replay;
mod target;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, REFERER, TRANSFER_ENCODING, USER_AGENT};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;

pub use crate::access_log::TARGET as ACCESS_LOG_TARGET;
use body::{ClientUpgrade, Completion};
pub use body::{ProxyBody, UpstreamBody};
pub use error::ProxyError;

use crate::access_log::{AccessLog, Record};
use crate::balance::{hash_ip, Balancer};
use crate::config::SplitKey;
use crate::config::{defaults, UpstreamProtocol};
use crate::http1::head::RawHead;
use crate::registry::{Instance, Registry, ServiceSnapshot, Snapshot};
use crate::traffic::matcher::RequestFacts;
use crate::traffic::{rewrite, Target, X_SWITCHYARD_BACKEND};
use crate::upstream::{
    framing, ClientBody, ClientBodyState, ClientBodyWatch, ConnectError, Pool, RequestBody,
    ResponseBody, Sender,
};

/// A reused keep-alive connection can turn out closed just as a request is
/// handed to it; the request was not sent, so it goes on a fresh
/// connection. This bounds how often that can happen per attempt.
const STALE_CONNECTION_RETRIES: u32 = 3;

/// The proxy service shared by every connection of a listener.
pub struct Proxy {
    registry: Arc<Registry>,
    scheme: &'static str,
    access_log: Arc<AccessLog>,
}

/// What the request path learnt, for metrics and the access log.
#[derive(Default)]
struct Outcome {
    /// Index of the routed service in the snapshot.
    service: Option<usize>,
    /// Index of the matched route's traffic policy in the snapshot.
    route: Option<usize>,
    instance: Option<Arc<Instance>>,
    /// Measured only for the access log (no clock reads without it).
    upstream_time: Option<Duration>,
    wants_upstream_time: bool,
    /// The client side of an upgrade the route allowed.
    client_upgrade: Option<ClientUpgrade>,
    /// Index (in rotation) of the instance that answered.
    answered_by: Option<usize>,
    /// A sticky cookie to set on the response.
    set_cookie: Option<HeaderValue>,
    /// The request's trace context and spans.
    trace: crate::trace::Hop,
}

impl Proxy {
    /// A proxy reading snapshots from `registry`, for a listener speaking
    /// `scheme` (`http` or `https`, for `X-Forwarded-Proto`), writing to
    /// `access_log`.
    pub fn new(registry: Arc<Registry>, scheme: &'static str, access_log: Arc<AccessLog>) -> Proxy {
        Proxy {
            registry,
            scheme,
            access_log,
        }
    }

    /// Handles one request from `peer`. Never fails: errors are responses.
    pub async fn handle(
        &self,
        mut request: Request<ClientBody>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let snapshot = self.registry.snapshot();
        // The owned server's head as received: the request then comes with
        // an empty map, and the fields are read from the head.
        let raw = match request.body_mut() {
            ClientBody::Owned(owned) => owned.take_head(),
            ClientBody::Hyper(_) | ClientBody::Buffered(..) | ClientBody::Copied(_) => None,
        };
        let request_id = match &raw {
            Some(head) => head
                .get_shared(headers::X_REQUEST_ID.as_str())
                .filter(|id| !id.is_empty())
                .and_then(|id| HeaderValue::from_maybe_shared(id).ok())
                .unwrap_or_else(headers::new_request_id),
            None => headers::ensure_request_id(request.headers_mut()),
        };
        let unbuilt = std::sync::OnceLock::new();
        let fields = received::Fields::new(request.headers(), raw.as_ref(), &unbuilt);
        let client_ip = if headers::is_trusted(peer.ip(), &snapshot.trusted_proxies) {
            let values = fields.values(&headers::X_FORWARDED_FOR);
            headers::client_ip_of(peer.ip(), &values, &snapshot.trusted_proxies)
        } else {
            peer.ip()
        };
        let host = request_host(&request, fields);
        let trace = match &raw {
            Some(head) => crate::trace::TraceContext::of_raw(head, snapshot.tracing.sample_bound),
            None => crate::trace::TraceContext::of_headers(
                request.headers(),
                snapshot.tracing.sample_bound,
            ),
        };
        let log = self.access_log.enabled().then(|| {
            let agent = self.access_log.wants_agent();
            let header = |name| agent.then(|| fields.get(name)).flatten();
            Box::new(Record {
                log: Arc::clone(&self.access_log),
                method: request.method().clone(),
                host: match &host {
                    Ok(host) => host.clone(),
                    // A refused host is logged as sent.
                    Err(_) => fields.get(&HOST),
                },
                uri: request.uri().clone(),
                version: request.version(),
                status: 0,
                service: None,
                instance: None,
                upstream_time: None,
                started,
                request_id: request_id.clone(),
                trace_id: trace.trace_id,
                span_id: trace.span_id,
                client_ip,
                referer: header(&REFERER),
                user_agent: header(&USER_AGENT),
            })
        });
        drop(unbuilt);
        let mut trace = crate::trace::hop(trace, &snapshot.tracing, self.registry.tracer());
        if trace.recording() {
            let routing_host = host.as_ref().ok().and_then(Option::as_ref);
            let uri = request.uri();
            trace.start_server(request.method(), uri, routing_host, client_ip, self.scheme);
        }
        let mut pending = Pending {
            snapshot: &snapshot,
            started,
            outcome: Outcome {
                wants_upstream_time: log.is_some(),
                trace,
                ..Outcome::default()
            },
            log,
            answered: false,
        };
        let result = self
            .forward(
                &snapshot,
                Received {
                    request,
                    raw,
                    id: &request_id,
                },
                host,
                peer,
                client_ip,
                &mut pending.outcome,
            )
            .await;
        let (log, mut outcome) = pending.answered();
        let mut server_span = outcome.trace.take_server();
        let upgrade = outcome.client_upgrade.take();
        let service = outcome.service.map(|index| &snapshot.services[index]);
        let log = log.map(|mut log| {
            log.service = service.map(|s| s.name.clone());
            log.instance = outcome.instance.as_ref().map(|i| i.id.clone());
            log.upstream_time = outcome.upstream_time;
            log
        });
        let mut response = match result {
            Ok((mut response, mut completion)) => {
                let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
                let (mut parts, mut body) = response.into_parts();
                let protocol = parts.headers.get(http::header::UPGRADE).cloned();
                headers::remove_hop_by_hop(&mut parts.headers);
                if let Some(raw) = body.raw_head_mut() {
                    headers::remove_hop_by_hop_raw(raw);
                }
                if let Some(policy) = outcome.route.and_then(|i| snapshot.traffic.get(i)) {
                    let named = policy
                        .backend_header
                        .then(|| service.zip(outcome.instance.as_ref()))
                        .flatten()
                        .and_then(|(s, i)| {
                            HeaderValue::from_str(&format!("{}/{}", s.name, i.id)).ok()
                        });
                    // The lean client's heads are edited as received (the
                    // header map is then empty).
                    match body.raw_head_mut() {
                        Some(raw) => {
                            rewrite::apply_raw(&policy.response_headers, raw);
                            if let Some(value) = named {
                                raw.remove(X_SWITCHYARD_BACKEND.as_str());
                                raw.append(
                                    X_SWITCHYARD_BACKEND.as_str().as_bytes(),
                                    value.as_bytes(),
                                );
                            }
                        }
                        None => {
                            rewrite::apply(&policy.response_headers, &mut parts.headers);
                            if let Some(value) = named {
                                parts.headers.insert(X_SWITCHYARD_BACKEND.clone(), value);
                            }
                        }
                    }
                }
                if let Some(cookie) = outcome.set_cookie.take() {
                    // Servers write these fields after a head kept as
                    // received, too.
                    parts.headers.append(http::header::SET_COOKIE, cookie);
                }
                if let Some(mut log) = log {
                    log.status = parts.status.as_u16();
                    completion.log = Some(log);
                }
                if let Some(mut span) = server_span.take() {
                    span.set_status(parts.status.as_u16());
                    completion.trace = Some(span);
                }
                completion.duration = service.map(|s| body::Timing {
                    histogram: s.metrics.duration.clone(),
                    window: Arc::clone(&s.metrics.window),
                    started,
                    status: parts.status.as_u16(),
                });
                if switching {
                    // The upstream connection becomes the tunnel's: never pooled.
                    completion.connection = None;
                }
                let mut body = body;
                let first = match upstream_upgrade {
                    Some(_) => Ok(None),
                    None => body::peek(&mut body).await,
                };
                match (upstream_upgrade, upgrade) {
                    // Failed before a byte of it could be sent: the head
                    // can still be replaced by a 502.
                    (None, _) if first.is_err() => {
                        let detail = first.err().map_or_else(String::new, |e| e.to_string());
                        tracing::warn!(%detail, "response body failed before its first byte");
                        if let Some(log) = completion.log.as_mut() {
                            log.status = StatusCode::BAD_GATEWAY.as_u16();
                        }
                        if let Some(timing) = completion.duration.as_mut() {
                            timing.status = StatusCode::BAD_GATEWAY.as_u16();
                        }
                        if let Some(span) = completion.trace.as_mut() {
                            span.set_status(StatusCode::BAD_GATEWAY.as_u16());
                        }
                        if let Some(service) = service {
                            service
                                .metrics
                                .answered_by_proxy(StatusCode::BAD_GATEWAY.as_u16());
                        }
                        completion.finish(false);
                        let error = ProxyError::UpstreamFailed {
                            service: service.map_or_else(|| "-".into(), |s| s.name.clone()),
                            detail: format!("its response body failed at once: {detail}"),
                        };
                        log_request_error(&error, service.map(|s| s.name.as_str()), &request_id);
                        request_error_response(&error, snapshot.full_error_detail, &request_id)
                    }
                    (None, _) => Response::from_parts(
                        parts,
                        ProxyBody::Upstream(UpstreamBody::new(
                            body,
                            first.ok().flatten(),
                            completion,
                            service.map_or(Duration::MAX, |s| s.request_timeout),
                        )),
                    ),
                    (Some(upstream_upgrade), Some(client_upgrade)) => {
                        if let Some(protocol) = protocol {
                            headers::set_upgrade(&mut parts.headers, protocol);
                        }
                        tokio::spawn(body::tunnel(client_upgrade, upstream_upgrade, completion));
                        Response::from_parts(parts, ProxyBody::message(bytes::Bytes::new()))
                    }
                    // A 101 nobody asked for: refuse it rather than pass on
                    // a protocol switch the client cannot follow.
                    (Some(_), None) => {
                        completion.finish(false);
                        let error = ProxyError::UpstreamFailed {
                            service: service.map_or_else(|| "-".into(), |s| s.name.clone()),
                            detail: "it switched protocols without being asked to".into(),
                        };
                        log_request_error(&error, service.map(|s| s.name.as_str()), &request_id);
                        request_error_response(&error, snapshot.full_error_detail, &request_id)
                    }
                }
            }
            Err(error) => {
                log_request_error(&error, service.map(|s| s.name.as_str()), &request_id);
                let mut response =
                    request_error_response(&error, snapshot.full_error_detail, &request_id);
                error.add_headers(response.headers_mut());
                let status = response.status().as_u16();
                match service {
                    Some(service) => {
                        service.metrics.answered_by_proxy(status);
                        service.metrics.finished(started, status);
                    }
                    None => self.registry.metrics().unrouted(),
                }
                if let Some(mut log) = log {
                    log.status = status;
                    log.emit(0, true);
                }
                if let Some(mut span) = server_span.take() {
                    span.set_status(status);
                    span.finish(true);
                }
                response
            }
        };
        match response.body_mut().raw_head_mut() {
            Some(raw) => headers::set_request_id_raw(raw, &request_id),
            None => {
                response
                    .headers_mut()
                    .insert(headers::X_REQUEST_ID.clone(), request_id);
            }
        }
        response
    }

    async fn forward(
        &self,
        snapshot: &Snapshot,
        received: Received<'_>,
        host: Result<Option<HeaderValue>, ProxyError>,
        peer: SocketAddr,
        client_ip: std::net::IpAddr,
        outcome: &mut Outcome,
    ) -> Result<(Response<ResponseBody>, Completion), ProxyError> {
        let Received {
            mut request,
            raw,
            id: request_id,
        } = received;
        // The one host that routes the request is the one sent upstream
        // (as Host or :authority, and in X-Forwarded-Host).
        let host_value = host?;
        target::check_path(request.uri().path())?;
        // A map of a head kept as received, made only if a feature below
        // reads one.
        let built = std::sync::OnceLock::new();
        let fields = received::Fields::new(request.headers(), raw.as_ref(), &built);
        if let Some(limit) = &snapshot.rate_limit {
            limits::check(limit, client_ip, fields)?;
        }
        let host = host_value.as_ref().map_or("", target::route_name);
        let no_headers = http::HeaderMap::new();
        let facts = RequestFacts {
            method: request.method(),
            path: request.uri().path(),
            query: request.uri().query(),
            headers: if snapshot.router.reads_headers() {
                fields.map()
            } else {
                &no_headers
            },
        };
        let no_route = || ProxyError::NoRoute {
            host: host.to_string(),
            path: request.uri().path().to_string(),
        };
        let Some(route) = snapshot.router.find(host, &facts) else {
            return Err(no_route());
        };
        let Some(policy) = snapshot.traffic.get(route.policy) else {
            return Err(no_route());
        };
        // The split decision, then the backend's instances. A sticky cookie
        // naming an instance (in rotation) of one backend's service, and in
        // its subset if it names one, keeps the client on that backend and
        // instance; otherwise the split decides and the backend balances.
        let (chosen, sticky) = match policy.sticky_backend(&snapshot.services, || fields.map()) {
            Some(held) => (held.backend, Some((held.table, Some(held.candidate)))),
            None => {
                let split_headers = match policy.split_by {
                    Some(SplitKey::Header(_) | SplitKey::Cookie(_)) => fields.map(),
                    Some(SplitKey::ClientIp) | None => &no_headers,
                };
                let i = policy.choose(policy.split_key(split_headers, client_ip));
                let table = policy
                    .backends
                    .get(i)
                    .and_then(|b| snapshot.services[b.service].sticky.as_ref());
                (i, table.map(|table| (table, None)))
            }
        };
        let Some(backend) = policy.backends.get(chosen) else {
            return Err(no_route());
        };
        let service = &snapshot.services[backend.service];
        outcome.service = Some(backend.service);
        outcome.route = Some(route.policy);
        if outcome.trace.recording() {
            let pattern = match &route.path_regex {
                Some(regex) => format!("~{}", regex.as_str()),
                None => route.path_prefix.to_string(),
            };
            outcome.trace.routed(route.policy, &pattern, &service.name);
        }
        let candidates = match &backend.target {
            Target::Service => Candidates {
                service,
                balancer: &service.balancer,
                instances: &service.instances,
            },
            Target::Subset(pool) => Candidates {
                service,
                balancer: &pool.balancer,
                instances: &pool.instances,
            },
            Target::Empty => {
                return Err(ProxyError::EmptySubset {
                    service: service.name.clone(),
                    subset: backend.subset.to_string(),
                })
            }
        };
        if let Some(limit) = &route.rate_limit {
            limits::check(limit, client_ip, fields)?;
        }
        // As the client sent it (before the head's edits below).
        let idempotency_key = fields.contains("idempotency-key");
        // HTTP/1.1 upgrades the route allows become a tunnel once the
        // upstream agrees (101); others are dropped with the hop-by-hop
        // fields and the request goes on as an ordinary one. (The owned
        // server keeps the head only of a request that asks for none.)
        let upgrade = (request.version() == Version::HTTP_11 && raw.is_none())
            .then(|| headers::requested_upgrade(request.headers(), |p| route.allows_upgrade(p)))
            .flatten();
        if upgrade.is_some() {
            outcome.client_upgrade = Some(ClientUpgrade::of(&mut request));
        }

        let (mut parts, body) = request.into_parts();
        // The owned server writes a response head on as received, and
        // gives the request's head as received.
        let raw_response = matches!(body, ClientBody::Owned(_));
        let mut raw_request = raw;
        let path = route.upstream_path(parts.uri.path());
        if path.len() != parts.uri.path().len() || parts.uri.scheme().is_some() {
            parts.uri = origin_form(path, parts.uri.query())?;
        }
        parts.version = Version::HTTP_11;
        // Requests without a body (most of them) can take the lean client.
        let upgrading = upgrade.is_some();
        let lean = !upgrading && body.is_end_stream();
        // A mirrored request is copied from the edited map: one made of
        // the head as received, with the request id as on any map.
        if !lean || service.protocol != UpstreamProtocol::Http1 || route.mirror.is_some() {
            let made = built.into_inner();
            if let Some(head) = raw_request.take() {
                parts.headers = made.unwrap_or_else(|| head.to_header_map());
                if parts
                    .headers
                    .get(&headers::X_REQUEST_ID)
                    .is_none_or(HeaderValue::is_empty)
                {
                    parts
                        .headers
                        .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
                }
            }
        } else {
            // Not kept across the awaits below.
            drop(built);
        }
        let peer_trusted = headers::is_trusted(peer.ip(), &snapshot.trusted_proxies);
        // The first attempt's traceparent (the next ones overwrite it).
        let traceparent = outcome.trace.next_attempt();
        let mut trace_slot = None;
        if let Some(head) = raw_request.as_mut() {
            // The same edits as on the map below, on the head as received:
            // the lean client copies it with them, and hyper's client gets
            // a map of it (see `send_with_retries`). The id first: a field
            // the client's `Connection` names goes, as from the map.
            if head
                .get(headers::X_REQUEST_ID.as_str())
                .is_none_or(<[u8]>::is_empty)
            {
                head.set(headers::X_REQUEST_ID.as_str(), request_id.as_bytes());
            }
            headers::remove_hop_by_hop_raw(head);
            if !snapshot.underscores_in_headers {
                headers::remove_underscored_raw(head);
            }
            headers::add_forwarded_raw(
                head,
                peer.ip(),
                peer_trusted,
                self.scheme,
                host_value.as_ref(),
            );
            if let Some(host) = &host_value {
                head.set(HOST.as_str(), host.as_bytes());
            }
            let context = &outcome.trace.context;
            trace_slot = Some(crate::trace::propagate_raw(head, context, &traceparent));
            rewrite::apply_raw(&policy.request_headers, head);
        } else {
            headers::remove_hop_by_hop(&mut parts.headers);
            if !snapshot.underscores_in_headers {
                headers::remove_underscored(&mut parts.headers);
            }
            if service.protocol == UpstreamProtocol::Http1
                && !body.is_end_stream()
                && !parts.headers.contains_key(CONTENT_LENGTH)
            {
                // A body of unknown length (chunked, or HTTP/2 DATA without
                // content-length) is re-chunked. Said explicitly because
                // hyper's client would otherwise send a GET, HEAD or
                // CONNECT body as none.
                parts
                    .headers
                    .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            }
            if let Some(protocol) = upgrade {
                headers::set_upgrade(&mut parts.headers, protocol);
            }
            headers::add_forwarded(
                &mut parts.headers,
                peer.ip(),
                peer_trusted,
                self.scheme,
                host_value.as_ref(),
            );
            crate::trace::propagate(&mut parts.headers, &outcome.trace.context, &traceparent);
            rewrite::apply(&policy.request_headers, &mut parts.headers);
            if service.protocol == UpstreamProtocol::Http2 {
                // HTTP/2 carries the target as :scheme and :authority.
                let scheme = if service.tls { "https" } else { "http" };
                let authority = host_value
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost")
                    .to_string();
                let target = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                parts.uri =
                    Uri::try_from(format!("{scheme}://{authority}{target}")).map_err(|_| {
                        ProxyError::BadRequest {
                            reason: "the request's host cannot be forwarded over HTTP/2",
                        }
                    })?;
                parts.version = Version::HTTP_2;
                // HTTP/2 forbids connection-specific fields; :authority has the host.
                parts.headers.remove(HOST);
            } else if let Some(host) = host_value {
                parts.headers.insert(HOST, host);
            }
        }
        let client_hash = hash_ip(client_ip);
        let body = match route.mirror.as_ref().filter(|_| !upgrading) {
            Some(route_mirror) => mirror::start(snapshot, route_mirror, &parts, body, client_hash),
            None => body,
        };
        let idempotent = idempotent_method(&parts.method) || idempotency_key;
        let (request, client_body, replay) =
            if !upgrading && replay::wanted(service, &parts, &body, idempotent) {
                let replay = replay::read(service, &parts, body).await?;
                (replay.request(), None, Some(replay))
            } else {
                let (body, client_body) = RequestBody::new(body);
                (Request::from_parts(parts, body), client_body, None)
            };

        let sent = send_with_retries(
            candidates,
            request,
            client_hash,
            idempotent,
            sticky.and_then(|(_, named)| named),
            lean.then_some(Lean {
                raw_response,
                request_head: raw_request,
                trace_slot,
            }),
            client_body.as_deref(),
            replay.as_ref(),
            outcome,
        )
        .await;
        if let (Some((table, named)), Some(answered_by)) = (sticky, outcome.answered_by) {
            // No cookie, or one naming an instance that did not answer
            // (gone, out of rotation, or failed over): name this one.
            if named != Some(answered_by) {
                outcome.set_cookie = backend
                    .sticky_instance(answered_by)
                    .and_then(|index| table.set_cookie(index))
                    .cloned();
            }
        }
        sent
    }
}

/// A request as it reaches [`Proxy::forward`]: its head as received when
/// the owned server kept it (its map is then empty), and its id.
struct Received<'a> {
    request: Request<ClientBody>,
    raw: Option<RawHead>,
    id: &'a HeaderValue,
}

/// A request waiting for its answer. If it is dropped before that (the
/// client reset its HTTP/2 stream or closed its connection, and the server
/// stopped the request), it is counted and logged as 499, as nginx does,
/// and its instance takes no blame.
struct Pending<'a> {
    snapshot: &'a Snapshot,
    started: Instant,
    outcome: Outcome,
    log: Option<Box<Record>>,
    answered: bool,
}

impl Pending<'_> {
    /// The request got an answer (or an error response) to send.
    fn answered(&mut self) -> (Option<Box<Record>>, Outcome) {
        self.answered = true;
        (self.log.take(), std::mem::take(&mut self.outcome))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let status = ProxyError::ClientClosed.status().as_u16();
        let service = self
            .outcome
            .service
            .map(|index| &self.snapshot.services[index]);
        if let Some(service) = service {
            service.metrics.answered_by_proxy(status);
            service.metrics.finished(self.started, status);
        }
        if let Some(mut log) = self.log.take() {
            log.status = status;
            log.service = service.map(|s| s.name.clone());
            log.instance = self.outcome.instance.as_ref().map(|i| i.id.clone());
            log.emit(0, false);
        }
        if let Some(mut span) = self.outcome.trace.take_server() {
            span.set_status(status);
            span.finish(false);
        }
    }
}

/// A request the lean HTTP/1.1 client may send.
#[derive(Debug)]
struct Lean {
    /// Its response head may stay as received (see `upstream::h1`).
    raw_response: bool,
    /// The request's head as received, edited for the upstream: what the
    /// lean client writes instead of the request's map (which then still
    /// holds the fields as the client sent them).
    request_head: Option<RawHead>,
    /// Where `request_head` has its `traceparent` value.
    trace_slot: Option<crate::http1::head::AddedValue>,
}

/// Tries instances until one answers, at most `max_attempts` times, each
/// on an instance not tried before, as `retry.on` allows. A request that
/// was written is sent again only if it is idempotent, its connection
/// closed before any response head (or the answer is a status `retry.on`
/// names), and the retry budget allows; otherwise only when that
/// connection had been closed by the upstream before it went out (see
/// [`Sent`]). The first try goes to `sticky` (an index in rotation named
/// by the client's sticky cookie) when given.
#[allow(clippy::too_many_arguments)]
async fn send_with_retries(
    candidates: Candidates<'_>,
    mut request: Request<RequestBody>,
    client_hash: u64,
    idempotent: bool,
    sticky: Option<usize>,
    mut lean: Option<Lean>,
    client_body: Option<&ClientBodyWatch>,
    replay: Option<&replay::Replay>,
    outcome: &mut Outcome,
) -> Result<(Response<ResponseBody>, Completion), ProxyError> {
    let service = candidates.service;
    let attempts = service.max_attempts.get();
    let policy = service.retry;
    let mut slot = Some(
        service
            .breaker
            .admit()
            .await
            .map_err(|which| ProxyError::Overflow {
                service: service.name.clone(),
                which,
            })?,
    );
    let _active = GaugeGuard::new(&service.metrics.active_requests);
    let mut retrying: Option<RetryHeld<'_>> = None;
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error: Option<ConnectError> = None;
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        let picked = match sticky.filter(|_| tried.is_empty()) {
            Some(index) => Some(index),
            None => candidates
                .balancer
                .pick_excluding(client_hash, candidates.instances, &tried),
        };
        let Some(index) = picked else {
            break;
        };
        let Some(instance) = candidates.instances.get(index) else {
            break;
        };
        outcome.instance = Some(Arc::clone(instance));
        if attempt > 1 {
            service.metrics.retries.inc();
        }
        let in_flight = instance.state.stats.start_request();
        let pool = &instance.state.pool;
        let started = outcome.wants_upstream_time.then(Instant::now);
        let takes_lean = lean.is_some() && pool.takes_lean();
        if !takes_lean {
            // hyper's client sends the map: it gets the edited head.
            if let Some(head) = lean.as_mut().and_then(|lean| lean.request_head.take()) {
                *request.headers_mut() = head.to_header_map();
            }
        }
        if attempt > 1 {
            // A new span per attempt, so retries can be told apart.
            let value = outcome.trace.next_attempt();
            match lean
                .as_mut()
                .and_then(|l| Some((l.request_head.as_mut()?, l.trace_slot?)))
            {
                Some((head, slot)) => {
                    head.overwrite_added(slot, &value);
                }
                None => crate::trace::set_traceparent(request.headers_mut(), &value),
            }
        }
        let attempt_started = outcome.trace.recording().then(Instant::now);
        let sent = if let Some(lean) = lean.as_ref().filter(|_| takes_lean) {
            send_lean(service, pool, request, lean).await
        } else {
            send_hyper(service, pool, request).await
        };
        if let Some(attempt_started) = attempt_started {
            let (status, error) = attempt_result(&sent);
            let tried = (&instance.id, instance.address);
            outcome
                .trace
                .attempt_done(attempt_started, attempt, tried, status, error);
        }
        // Checked first: a client that broke or stalled its own upload must
        // not count against the instance (outlier detection, metrics).
        if let Some(error) = client_fault(&sent, client_body, service.request_timeout) {
            tracing::debug!(service = %service.name, instance = %instance.id, %error, "client failed its request");
            return Err(error);
        }
        match sent {
            Sent::Answered {
                response,
                connection,
                request: again,
            } => {
                outcome.upstream_time = started.map(|started| started.elapsed());
                let status = response.status();
                let retry_status = status.is_server_error()
                    && (policy.server_error
                        || (policy.gateway_error && matches!(status.as_u16(), 502..=504)));
                let again = match retry_status && idempotent {
                    true => again.or_else(|| replay.map(replay::Replay::request)),
                    false => None,
                };
                if let Some(again) = again {
                    if attempt < attempts && retry_allowed(service, &mut retrying) {
                        tracing::debug!(service = %service.name, instance = %instance.id, attempt, %status, "retrying on another instance");
                        instance.state.metrics.response(status.as_u16());
                        service.record_outcome(instance, Some(&status as &dyn std::fmt::Display));
                        drop(response);
                        tried.push(index);
                        last_error = None;
                        request = again;
                        continue;
                    }
                }
                let server_error = status.is_server_error()
                    && service
                        .outlier_detection
                        .as_ref()
                        .is_some_and(|o| o.include_5xx);
                instance.state.metrics.response(status.as_u16());
                service.record_outcome(
                    instance,
                    server_error.then_some(&status as &dyn std::fmt::Display),
                );
                outcome.answered_by = Some(index);
                let completion = Completion {
                    _in_flight: in_flight,
                    _slot: slot.take(),
                    connection: connection.map(|sender| (sender, Arc::clone(pool))),
                    log: None,
                    duration: None,
                    trace: None,
                    bytes: 0,
                };
                return Ok((response, completion));
            }
            Sent::ConnectFailed(ConnectError::Overflow { which, .. }, _) => {
                // A service-wide limit: another instance would not do better.
                return Err(ProxyError::Overflow {
                    service: service.name.clone(),
                    which: which.into(),
                });
            }
            Sent::ConnectFailed(error @ ConnectError::Saturated { .. }, unsent) => {
                // The proxy's own limit, not a fault of the instance.
                tracing::debug!(service = %service.name, instance = %instance.id, attempt, %error, "no free connection");
                tried.push(index);
                last_error = Some(error);
                request = unsent;
            }
            Sent::ConnectFailed(error, unsent) if !policy.connect_failure => {
                if !error.is_local() {
                    service.record_outcome(instance, Some(&error));
                }
                service.metrics.connect_errors.inc();
                tried.push(index);
                last_error = Some(error);
                drop(unsent);
                break;
            }
            Sent::ConnectFailed(error, unsent) => {
                tracing::warn!(
                    service = %service.name,
                    instance = %instance.id,
                    attempt,
                    %error,
                    "connect failed"
                );
                // Out of descriptors here says nothing about the instance.
                if !error.is_local() {
                    service.record_outcome(instance, Some(&error));
                }
                service.metrics.connect_errors.inc();
                tried.push(index);
                last_error = Some(error);
                request = unsent;
            }
            Sent::Unsent(unsent, error) => {
                tracing::warn!(service = %service.name, instance = %instance.id, %error, "request not sent");
                tried.push(index);
                last_error = None;
                request = unsent;
            }
            Sent::TimedOut => {
                service.record_outcome(instance, Some(&"timed out waiting for the response"));
                service.metrics.timeouts.inc();
                return Err(ProxyError::UpstreamTimeout {
                    service: service.name.clone(),
                    timeout: service.request_timeout,
                });
            }
            Sent::Failed(error, again, before_response) => {
                service.record_outcome(instance, Some(&error));
                // A body read whole can go again whichever client sent it.
                let again = match policy.reset && idempotent {
                    true if before_response => {
                        again.or_else(|| replay.map(replay::Replay::request))
                    }
                    true => again,
                    false => None,
                };
                if let Some(again) = again {
                    if attempt < attempts && retry_allowed(service, &mut retrying) {
                        tracing::warn!(service = %service.name, instance = %instance.id, attempt, %error, "connection closed before the response; retrying on another instance");
                        tried.push(index);
                        last_error = None;
                        request = again;
                        continue;
                    }
                }
                tracing::warn!(
                    service = %service.name,
                    instance = %instance.id,
                    %error,
                    "upstream failed after the request was sent"
                );
                return Err(ProxyError::UpstreamFailed {
                    service: service.name.clone(),
                    detail: error,
                });
            }
        }
    }
    if tried.is_empty() {
        return Err(ProxyError::NoInstance {
            service: service.name.clone(),
            configured: service.all_instances.len(),
        });
    }
    if let Some(error @ ConnectError::Saturated { .. }) = &last_error {
        return Err(ProxyError::InstancesBusy {
            service: service.name.clone(),
            attempts: tried.len() as u32,
            detail: error.to_string(),
        });
    }
    Err(ProxyError::ConnectFailed {
        service: service.name.clone(),
        attempts: tried.len() as u32,
        timed_out: matches!(last_error, Some(ConnectError::Timeout { .. })),
        detail: last_error.map_or_else(
            || "connection closed before the request was sent".into(),
            |e| e.to_string(),
        ),
    })
}

/// The service a request goes to, the instances it may use (the
/// service's, or a subset's) and the balancer built over them.
#[derive(Clone, Copy)]
struct Candidates<'a> {
    service: &'a ServiceSnapshot,
    balancer: &'a Balancer,
    instances: &'a [Arc<Instance>],
}

/// Whether sending a request with `method` twice has the effect of
/// sending it once (RFC 9110 §9.2.2); a request is also taken as
/// idempotent when the client says so with `Idempotency-Key`.
fn idempotent_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The wait before retry number `retry` (1, 2, ...): full jitter up to
/// 25 ms doubling per retry, at most 250 ms, so retries of requests that
/// failed together do not arrive together.
fn backoff(retry: u32) -> Duration {
    let ceiling = defaults::RETRY_BACKOFF_BASE
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(defaults::RETRY_BACKOFF_MAX);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(..=millis))
}

/// Whether a request that reached an instance may be retried: the retry
/// budget allows retries in progress up to `budget_percent` of the
/// service's active requests, and always a few. The first retry of a
/// request takes a slot it holds until it is done; a refusal is counted.
/// (Re-sending after a connect failure, which cost the instances nothing,
/// is bounded by `max_attempts` only.)
fn retry_allowed<'a>(service: &'a ServiceSnapshot, slot: &mut Option<RetryHeld<'a>>) -> bool {
    if slot.is_some() {
        return true;
    }
    let metrics = &service.metrics;
    let active = u64::try_from(metrics.active_requests.get()).unwrap_or(0);
    let retrying = u64::try_from(metrics.active_retries.get()).unwrap_or(0);
    let allowed = (active.saturating_mul(u64::from(service.retry.budget_percent)) / 100)
        .max(defaults::RETRY_BUDGET_MIN_CONCURRENCY);
    if retrying >= allowed {
        metrics.retry_budget_exhausted.inc();
        return false;
    }
    // `circuit_breaker.max_retries`, when set, on top of the budget.
    let Some(breaker_slot) = service.breaker.retry() else {
        return false;
    };
    *slot = Some((GaugeGuard::new(&metrics.active_retries), breaker_slot));
    true
}

/// What a retrying request holds until it is done: its place in the retry
/// budget's gauge and under the breaker's `max_retries`.
type RetryHeld<'a> = (GaugeGuard<'a>, Option<crate::limits::breaker::RetrySlot>);

/// Counts one in a gauge while alive.
struct GaugeGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> GaugeGuard<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> GaugeGuard<'a> {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether a failed exchange was the client's doing, judged by how reading
/// its body went: it broke the body's framing or went away (the upstream
/// client then reports only that the body failed), or the request timeout
/// ran out while the proxy was waiting for the client's bytes.
fn client_fault(
    sent: &Sent,
    client_body: Option<&ClientBodyWatch>,
    timeout: Duration,
) -> Option<ProxyError> {
    let state = client_body?.state();
    match (sent, state) {
        (Sent::Failed(..) | Sent::TimedOut, ClientBodyState::Malformed) => {
            Some(ProxyError::MalformedRequestBody)
        }
        (Sent::Failed(..) | Sent::TimedOut, ClientBodyState::Gone) => {
            Some(ProxyError::ClientClosed)
        }
        (Sent::TimedOut, ClientBodyState::WaitingForClient) => {
            Some(ProxyError::ClientTimeout { timeout })
        }
        _ => None,
    }
}

/// How sending a request to one instance went.
// Returned once per attempt and matched at once: boxing the answer to even
// out the sizes would cost every request an allocation.
#[allow(clippy::large_enum_variant)]
enum Sent {
    /// A response head arrived; `connection` (hyper's) goes
    /// back to the pool when the body has been read.
    Answered {
        response: Response<ResponseBody>,
        connection: Option<Sender>,
        /// The request, when it can be sent again (the lean client only
        /// borrows it).
        request: Option<Request<RequestBody>>,
    },
    /// No connection could be made; the request is given back.
    ConnectFailed(ConnectError, Request<RequestBody>),
    /// Connections were made but the request never went out on one.
    Unsent(Request<RequestBody>, String),
    /// No response head within the request timeout.
    TimedOut,
    /// The request went out and the exchange failed; the request is given
    /// back when the connection closed or reset before any response head
    /// (it may be sent again if it is idempotent). The flag says whether
    /// the failure was such a close or reset (not an invalid answer).
    Failed(String, Option<Request<RequestBody>>, bool),
}

/// What a client span records of an attempt: the status of the answer
/// (0: none) and, when there was none, what went wrong.
fn attempt_result(sent: &Sent) -> (u16, Option<&'static str>) {
    match sent {
        Sent::Answered { response, .. } => (response.status().as_u16(), None),
        Sent::ConnectFailed(ConnectError::Timeout { .. }, _) => (0, Some("connect_timeout")),
        Sent::ConnectFailed(ConnectError::Saturated { .. }, _) => (0, Some("no_free_connection")),
        Sent::ConnectFailed(..) => (0, Some("connect_failed")),
        Sent::Unsent(..) => (0, Some("not_sent")),
        Sent::TimedOut => (0, Some("timeout")),
        Sent::Failed(_, _, true) => (0, Some("connection_closed")),
        Sent::Failed(_, _, false) => (0, Some("invalid_response")),
    }
}

/// Sends through hyper's client. A reused keep-alive connection that turns
/// out closed as the request is handed to it did not send it, so the
/// request goes on a fresh connection, a bounded number of times.
async fn send_hyper(
    service: &ServiceSnapshot,
    pool: &Pool,
    mut request: Request<RequestBody>,
) -> Sent {
    let mut stale = 0;
    loop {
        let mut connection = match pool.checkout(service.connect_timeout).await {
            Ok(connection) => connection,
            Err(error) => return Sent::ConnectFailed(error, request),
        };
        let response = tokio::time::timeout(
            service.request_timeout,
            connection.sender.try_send_request(request),
        )
        .await;
        match response {
            Ok(Ok(mut response)) => {
                // The lean client checks the same in its own parser.
                let status = response.status();
                if let Err(invalid) = framing::check_response_head(status, response.headers_mut()) {
                    return Sent::Failed(format!("invalid response: {invalid}"), None, false);
                }
                return Sent::Answered {
                    response: response.map(ResponseBody::Hyper),
                    connection: Some(connection.sender),
                    request: None,
                };
            }
            Err(_elapsed) => return Sent::TimedOut,
            Ok(Err(mut error)) => match error.take_message() {
                // Not sent: the pooled connection had been closed.
                Some(unsent) if connection.reused && stale < STALE_CONNECTION_RETRIES => {
                    stale += 1;
                    request = unsent;
                }
                Some(unsent) => return Sent::Unsent(unsent, error.error().to_string()),
                None => {
                    let error = error.into_error();
                    let closed = closed_before_response(&error);
                    return Sent::Failed(error.to_string(), None, closed);
                }
            },
        }
    }
}

/// Sends a request without a body through the lean HTTP/1.1 client, with
/// the same rule for connections closed under us.
async fn send_lean(
    service: &ServiceSnapshot,
    pool: &Arc<Pool>,
    request: Request<RequestBody>,
    lean: &Lean,
) -> Sent {
    let mut stale = 0;
    loop {
        let (conn, reused) = match pool.checkout_h1(service.connect_timeout).await {
            Ok(checked_out) => checked_out,
            Err(error) => return Sent::ConnectFailed(error, request),
        };
        let response = tokio::time::timeout(
            service.request_timeout,
            conn.send(
                &request,
                lean.request_head.as_ref(),
                reused,
                Arc::clone(pool),
                lean.raw_response,
            ),
        )
        .await;
        match response {
            Ok(Ok(response)) => {
                return Sent::Answered {
                    response: response.map(ResponseBody::Lean),
                    connection: None,
                    request: Some(request),
                }
            }
            Err(_elapsed) => return Sent::TimedOut,
            Ok(Err(failed)) if failed.unsent && stale < STALE_CONNECTION_RETRIES => stale += 1,
            Ok(Err(failed)) if failed.unsent => {
                return Sent::Unsent(request, failed.error.to_string())
            }
            Ok(Err(failed)) => {
                let again = failed.before_response.then_some(request);
                return Sent::Failed(failed.error.to_string(), again, failed.before_response);
            }
        }
    }
}

/// Whether hyper's client failed because the connection closed or reset
/// before the response head arrived (not for an answer it could not parse).
fn closed_before_response(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = cause.source();
    }
    false
}

/// The validated host of `request`, whose fields are `fields` (see
/// [`target::host_of`]).
fn request_host<B>(
    request: &Request<B>,
    fields: received::Fields<'_>,
) -> Result<Option<HeaderValue>, ProxyError> {
    target::host_of(
        fields.get(&HOST).as_ref(),
        fields.count(&HOST) > 1,
        request.uri(),
        request.version(),
    )
}

fn origin_form(path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let path_and_query = match query {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| ProxyError::BadRequest {
        reason: "the request target is not a valid path",
    })?;
    Ok(Uri::from(path_and_query))
}

/// The response for a failed request: the status and a plain-words body.
pub fn error_response(error: &ProxyError) -> Response<ProxyBody> {
    text_response(error.status(), format!("switchyard: {error}\n"))
}

/// The response for a failed proxied request: what happened (the whole
/// detail with `full`) and the request id that links it to the log line.
fn request_error_response(
    error: &ProxyError,
    full: bool,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let what = if full {
        error.to_string()
    } else {
        error.public_message()
    };
    let id = String::from_utf8_lossy(request_id.as_bytes());
    text_response(
        error.status(),
        format!("switchyard: {what} (request id {id})\n"),
    )
}

/// Logs a failed request with its whole detail and request id; failures on
/// the upstream side at WARN, the client's own at DEBUG.
fn log_request_error(error: &ProxyError, service: Option<&str>, request_id: &HeaderValue) {
    let status = error.status().as_u16();
    let request_id = String::from_utf8_lossy(request_id.as_bytes());
    if error.status().is_server_error() {
        tracing::warn!(%request_id, status, service, detail = %error, "request failed");
    } else {
        tracing::debug!(%request_id, status, service, detail = %error, "request refused");
    }
}

/// The answer of a listener that only sends clients to HTTPS: 308 (method
/// and body are kept) to the same host and path on `port`.
pub fn redirect_to_https(request: &Request<ClientBody>, port: u16) -> Response<ProxyBody> {
    let raw = match request.body() {
        ClientBody::Owned(owned) => owned.head(),
        ClientBody::Hyper(_) | ClientBody::Buffered(..) | ClientBody::Copied(_) => None,
    };
    let unbuilt = std::sync::OnceLock::new();
    let host = match request_host(
        request,
        received::Fields::new(request.headers(), raw, &unbuilt),
    ) {
        Ok(Some(host)) => host,
        Ok(None) => {
            return error_response(&ProxyError::BadRequest {
                reason: "the request names no host to redirect to",
            })
        }
        Err(error) => return error_response(&error),
    };
    let host = target::route_name(&host);
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{target}");
    let mut response = text_response(
        StatusCode::PERMANENT_REDIRECT,
        format!("moved to {location}\n"),
    );
    match HeaderValue::try_from(location) {
        Ok(location) => {
            response
                .headers_mut()
                .insert(http::header::LOCATION, location);
            response
        }
        Err(_) => error_response(&ProxyError::BadRequest {
            reason: "the request target cannot be redirected",
        }),
    }
}

/// A plain-text response with `status`.
pub fn text_response(status: StatusCode, text: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::message(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
