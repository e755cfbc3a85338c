//! Every way a request can fail, and the one place each becomes an HTTP
//! response.

use std::time::Duration;

use http::StatusCode;

use crate::config::ServiceName;

/// Why the proxy answered instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the host and path.
    #[error("no route for host `{host}` and path `{path}`")]
    NoRoute {
        /// Request host.
        host: String,
        /// Request path.
        path: String,
    },
    /// The service has no instance that may take traffic.
    #[error("service `{service}` has {}", no_instance_words(*configured))]
    NoInstance {
        /// The routed service.
        service: ServiceName,
        /// How many instances it has, healthy or not.
        configured: usize,
    },
    /// No instance could be connected to within the attempts allowed.
    #[error("could not connect to service `{service}` after {attempts} attempt(s): {detail}")]
    ConnectFailed {
        /// The routed service.
        service: ServiceName,
        /// Attempts made.
        attempts: u32,
        /// The last connect error.
        detail: String,
        /// Whether the last failure was a connect timeout.
        timed_out: bool,
    },
    /// Every instance tried had all the connections the service allows
    /// busy (`max_connections_per_instance`) for the connect timeout.
    #[error(
        "service `{service}` is at its connection limit after {attempts} attempt(s): {detail}"
    )]
    InstancesBusy {
        /// The routed service.
        service: ServiceName,
        /// Attempts made.
        attempts: u32,
        /// The last wait that ran out.
        detail: String,
    },
    /// The instance did not send response headers in time.
    #[error("service `{service}` did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// The routed service.
        service: ServiceName,
        /// The limit.
        timeout: Duration,
    },
    /// The connection failed after the request was sent.
    #[error("service `{service}` closed the connection without a valid response: {detail}")]
    UpstreamFailed {
        /// The routed service.
        service: ServiceName,
        /// What hyper saw.
        detail: String,
    },
    /// The client broke the framing of its request body (bad chunk line,
    /// bad length) while it was being forwarded.
    #[error("bad request: the request body is malformed")]
    MalformedRequestBody,
    /// The client went away before it had sent its whole body. Logged as
    /// 499, as nginx does; the client is not there to read it.
    #[error("the client closed the connection before sending its whole request body")]
    ClientClosed,
    /// The client was still sending its body when the request timeout ran
    /// out: its slowness, not the instance's.
    #[error("the request body did not arrive within {timeout:?}")]
    ClientTimeout {
        /// The limit.
        timeout: Duration,
    },
    /// A rate limit refused the request.
    #[error("too many requests (rate limit `{}`); try again in {} s", .0.policy, .0.retry_after)]
    RateLimited(Box<crate::limits::Limited>),
    /// The service's circuit breaker refused the request.
    #[error("service `{service}` is at its limit of requests in progress ({})", which.as_str())]
    Overflow {
        /// The routed service.
        service: ServiceName,
        /// Which limit.
        which: crate::limits::Overflow,
    },
    /// The request cannot be forwarded as sent.
    #[error("bad request: {reason}")]
    BadRequest {
        /// Why.
        reason: &'static str,
    },
}

/// nginx's "client closed request": not a standard status, but what
/// operators expect in logs and metrics for a client that left.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

fn no_instance_words(configured: usize) -> String {
    match configured {
        0 => "no instances".into(),
        n => format!("no healthy instance ({n} configured, none passing health checks)"),
    }
}

impl ProxyError {
    /// What the client is told by default: what happened, without the
    /// upstream addresses and OS errors of the detail (those are logged).
    pub fn public_message(&self) -> String {
        match self {
            ProxyError::ConnectFailed {
                service,
                attempts,
                timed_out: true,
                ..
            } => format!(
                "service `{service}` did not accept a connection in time ({attempts} attempt(s))"
            ),
            ProxyError::ConnectFailed {
                service, attempts, ..
            } => format!("could not connect to service `{service}` ({attempts} attempt(s))"),
            ProxyError::InstancesBusy {
                service, attempts, ..
            } => format!("service `{service}` is at its connection limit ({attempts} attempt(s))"),
            ProxyError::UpstreamFailed { service, .. } => {
                format!("service `{service}` closed the connection without a valid response")
            }
            other => other.to_string(),
        }
    }

    /// Header fields the answer carries beside the status: `Retry-After`
    /// and the RateLimit fields for a 429, `x-switchyard-overflow` for a
    /// breaker's 503.
    pub fn add_headers(&self, headers: &mut http::HeaderMap) {
        match self {
            ProxyError::RateLimited(limited) => {
                headers.insert(http::header::RETRY_AFTER, limited.retry_after.into());
                for (name, value) in [
                    ("ratelimit-policy", limited.policy_header()),
                    ("ratelimit", limited.limit_header()),
                ] {
                    // The policy name is printable ASCII by construction.
                    if let Ok(value) = http::HeaderValue::try_from(value) {
                        headers.insert(name, value);
                    }
                }
            }
            ProxyError::Overflow { which, .. } => {
                headers.insert(
                    "x-switchyard-overflow",
                    http::HeaderValue::from_static(which.as_str()),
                );
            }
            _ => {}
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoInstance { .. }
            | ProxyError::InstancesBusy { .. }
            | ProxyError::Overflow { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::ConnectFailed {
                timed_out: true, ..
            }
            | ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ConnectFailed { .. } | ProxyError::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::BadRequest { .. } | ProxyError::MalformedRequestBody => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientClosed => CLIENT_CLOSED_REQUEST,
        }
    }
}
