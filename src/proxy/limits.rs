//! The request path's side of the rate limits: a limiter's decision as a
//! result the error edge turns into a 429.

use std::net::IpAddr;

use http::HeaderMap;

use super::ProxyError;
use crate::limits::{Decision, RateLimiter};

/// Takes a token from `limit` for this request, or the 429 to answer.
pub(super) fn check(
    limit: &RateLimiter,
    client_ip: IpAddr,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    match limit.check(client_ip, headers) {
        Decision::Allowed => Ok(()),
        Decision::Limited(limited) => Err(ProxyError::RateLimited(Box::new(limited))),
    }
}
