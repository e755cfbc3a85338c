//! Copies of requests for a route's mirror service. A copy is sent by its
//! own task on its own connection, after the request's body has been read
//! (a body is only copied while it streams to the primary instance), and
//! its answer is read and dropped: a copy never delays or fails the
//! request it copies. Copies are bounded by `max_in_flight`; those not
//! made are counted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{Request, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::registry::{ServiceSnapshot, Snapshot};
use crate::traffic::mirror::{MirrorRoute, MirrorSlot};
use crate::upstream::{BodyCopy, ClientBody};

/// Starts a copy of the request whose head is `parts` (as it goes to the
/// primary instance) if `mirror` samples it and has room; returns the body
/// to send to the primary (the same, or the same with a copy being taken).
pub(super) fn start(
    snapshot: &Snapshot,
    mirror: &MirrorRoute,
    parts: &Parts,
    body: ClientBody,
    client_hash: u64,
) -> ClientBody {
    if !mirror.samples(fastrand::u8(0..100)) {
        return body;
    }
    let Some(target) = snapshot.services.get(mirror.service) else {
        return body;
    };
    let metrics = &target.metrics.mirror;
    let empty = body.is_end_stream();
    if !empty && body.size_hint().lower() > mirror.max_body_bytes {
        metrics.skipped_body.inc();
        return body;
    }
    let Some(slot) = MirrorSlot::take(&metrics.in_flight, mirror.max_in_flight) else {
        metrics.dropped.inc();
        return body;
    };
    let head = copy_head(parts);
    let (body, copied) = if empty {
        (body, None)
    } else {
        let (body, copied) = BodyCopy::wrap(body, mirror.max_body_bytes);
        (body, Some(copied))
    };
    tokio::spawn(send(Arc::clone(target), head, copied, slot, client_hash));
    body
}

/// The head of the copy: the method, target and fields the primary
/// instance gets, framed again for the copied body.
fn copy_head(parts: &Parts) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.version_mut() = Version::HTTP_11;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    *head.uri_mut() = Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/"));
    let mut headers = parts.headers.clone();
    for name in [CONTENT_LENGTH, TRANSFER_ENCODING, EXPECT] {
        headers.remove(name);
    }
    if !headers.contains_key(HOST) {
        // An HTTP/2 primary carries the host as :authority.
        if let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
        {
            headers.insert(HOST, host);
        }
    }
    *head.headers_mut() = headers;
    head
}

async fn send(
    target: Arc<ServiceSnapshot>,
    head: Request<()>,
    copied: Option<oneshot::Receiver<Bytes>>,
    slot: MirrorSlot,
    client_hash: u64,
) {
    let metrics = &target.metrics.mirror;
    let body = match copied {
        None => Bytes::new(),
        Some(copied) => match tokio::time::timeout(target.request_timeout, copied).await {
            Ok(Ok(body)) => body,
            // Longer than max_body_bytes, failed, or never read to its end.
            _ => {
                metrics.skipped_body.inc();
                return;
            }
        },
    };
    let Some(index) = target.balancer.pick(client_hash, &target.instances) else {
        metrics.failed.inc();
        return;
    };
    let address = target.instances[index].address;
    let limit = target
        .connect_timeout
        .saturating_add(target.request_timeout);
    let request = head.map(|()| Full::new(body));
    match tokio::time::timeout(limit, exchange(address, target.connect_timeout, request)).await {
        Ok(Ok(())) => {
            metrics.sent.inc();
        }
        Ok(Err(error)) => {
            tracing::debug!(service = %target.name, %address, %error, "mirror copy failed");
            metrics.failed.inc();
        }
        Err(_) => {
            tracing::debug!(service = %target.name, %address, "mirror copy timed out");
            metrics.failed.inc();
        }
    }
    drop(slot);
}

/// One exchange on a new connection; the answer is read and dropped.
async fn exchange(
    address: std::net::SocketAddr,
    connect_timeout: Duration,
    request: Request<Full<Bytes>>,
) -> Result<(), String> {
    let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    // The connection is driven here, not by a task of its own, so giving
    // up on the copy closes it.
    tokio::select! {
        answered = answer => answered,
        closed = connection => Err(match closed {
            Ok(()) => "closed before the answer".to_string(),
            Err(e) => e.to_string(),
        }),
    }
}
