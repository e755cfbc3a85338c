//! The request path's side of the rate limits: a limiter's decision as a
//! result the error edge turns into a 429.

use std::net::IpAddr;

use super::received::Fields;
use super::ProxyError;
use crate::config::RateLimitKey;
use crate::limits::{Decision, RateLimiter};

/// Takes a token from `limit` for this request, or the 429 to answer.
/// Only a limit keyed by a header reads the fields (as a map).
pub(super) fn check(
    limit: &RateLimiter,
    client_ip: IpAddr,
    fields: Fields<'_>,
) -> Result<(), ProxyError> {
    let no_headers = http::HeaderMap::new();
    let headers = match limit.config().key {
        RateLimitKey::Header(_) => fields.map(),
        RateLimitKey::Route | RateLimitKey::ClientIp => &no_headers,
    };
    match limit.check(client_ip, headers) {
        Decision::Allowed => Ok(()),
        Decision::Limited(limited) => Err(ProxyError::RateLimited(Box::new(limited))),
    }
}
