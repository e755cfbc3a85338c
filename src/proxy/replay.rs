//! Request bodies read whole so that a request can be sent again after it
//! was written (`retry.max_body_bytes`).
//!
//! Only an idempotent request whose body has a known length within the
//! limit, that the service may retry after sending (`reset`,
//! `gateway-error` or `5xx` in `retry.on`), and that does not wait for
//! `100 Continue` (its client sends the body only once an instance asks
//! for it) is read whole before the first try. Every other body streams
//! through as before and is never sent twice.

use bytes::Bytes;
use http::header::EXPECT;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::ProxyError;
use crate::registry::ServiceSnapshot;
use crate::upstream::{ClientBody, ClientBodyState, RequestBody};

/// What is needed to send a request again: its head and its whole body.
#[derive(Debug)]
pub(super) struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// The request once more, as first sent.
    pub(super) fn request(&self) -> Request<RequestBody> {
        let mut request = Request::new(RequestBody::buffered(
            self.body.clone(),
            self.trailers.clone(),
        ));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Whether this request's body is to be read whole first.
pub(super) fn wanted(
    service: &ServiceSnapshot,
    parts: &http::request::Parts,
    body: &ClientBody,
    idempotent: bool,
) -> bool {
    let policy = service.retry;
    let retried_after_sending = policy.reset || policy.gateway_error || policy.server_error;
    idempotent
        && retried_after_sending
        && service.max_attempts.get() > 1
        && !body.is_end_stream()
        && body
            .size_hint()
            .exact()
            .is_some_and(|length| length <= policy.max_body_bytes)
        && !parts.headers.contains_key(EXPECT)
}

/// Reads the whole body (its length is known and within the limit) within
/// the service's request timeout; the client's failures are its own.
pub(super) async fn read(
    service: &ServiceSnapshot,
    parts: &http::request::Parts,
    body: ClientBody,
) -> Result<Replay, ProxyError> {
    let (body, watch) = RequestBody::new(body);
    let collected = tokio::time::timeout(service.request_timeout, body.collect()).await;
    let collected = match collected {
        Ok(Ok(collected)) => collected,
        Ok(Err(_)) => {
            let malformed = watch
                .as_deref()
                .is_some_and(|w| w.state() == ClientBodyState::Malformed);
            return Err(if malformed {
                ProxyError::MalformedRequestBody
            } else {
                ProxyError::ClientClosed
            });
        }
        Err(_elapsed) => {
            return Err(ProxyError::ClientTimeout {
                timeout: service.request_timeout,
            })
        }
    };
    let trailers = collected.trailers().cloned();
    Ok(Replay {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: collected.to_bytes(),
        trailers,
    })
}
