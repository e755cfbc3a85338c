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
    /// The request cannot be forwarded as sent.
    #[error("bad request: {reason}")]
    BadRequest {
        /// Why.
        reason: &'static str,
    },
}

fn no_instance_words(configured: usize) -> String {
    match configured {
        0 => "no instances".into(),
        n => format!("no healthy instance ({n} configured, none passing health checks)"),
    }
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoInstance { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed {
                timed_out: true, ..
            }
            | ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ConnectFailed { .. } | ProxyError::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        }
    }
}
