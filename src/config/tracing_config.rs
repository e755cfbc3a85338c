//! `tracing:`: how new traces are sampled and where spans are exported
//! (OTLP over HTTP with JSON bodies).

use super::raw::RawTracing;

/// The default `service.name` of exported spans.
const DEFAULT_SERVICE_NAME: &str = "switchyard";

/// The path spans are posted to when the endpoint gives none (the OTLP/HTTP
/// default for traces).
const DEFAULT_OTLP_PATH: &str = "/v1/traces";

/// Trace context settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Where spans go; `None`: no export (trace context is still accepted
    /// and propagated).
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// The share of new traces (those without a valid incoming
    /// `traceparent`) marked sampled, 0 to 1, decided from the trace id.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            service_name: DEFAULT_SERVICE_NAME.into(),
        }
    }
}

/// An `http://` URL of an OTLP/HTTP traces receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// The URL as written.
    pub url: String,
    /// Host name or address (without brackets), to connect to.
    pub host: String,
    /// Port (80 when the URL gives none).
    pub port: u16,
    /// `Host` of the requests: the authority as written.
    pub authority: String,
    /// The path (and query) posted to.
    pub path: String,
}

/// Checks `tracing:`; every problem as (field path, message).
pub(super) fn validate(raw: &RawTracing) -> Result<TracingConfig, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut config = TracingConfig::default();
    if let Some(url) = &raw.otlp_endpoint {
        match parse_endpoint(url) {
            Ok(endpoint) => config.otlp_endpoint = Some(endpoint),
            Err(message) => errors.push(("tracing.otlp_endpoint".into(), message)),
        }
    }
    if let Some(ratio) = raw.sample_ratio {
        if ratio.is_finite() && (0.0..=1.0).contains(&ratio) {
            config.sample_ratio = ratio;
        } else {
            errors.push((
                "tracing.sample_ratio".into(),
                format!("must be a number from 0 to 1 (got {ratio})"),
            ));
        }
    }
    if let Some(name) = &raw.service_name {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            errors.push((
                "tracing.service_name".into(),
                "must be a non-empty name without control characters".into(),
            ));
        } else {
            config.service_name = name.clone();
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// `http://host[:port][/path]`.
fn parse_endpoint(url: &str) -> Result<OtlpEndpoint, String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(format!(
            "`{url}`: https is not supported; the exporter speaks plain http:// (point it at a collector or agent on this host or a trusted network)"
        ));
    }
    let Some(rest) = lower.starts_with("http://").then(|| &url[7..]) else {
        return Err(format!(
            "`{url}` is not an http:// URL (e.g. http://127.0.0.1:4318/v1/traces)"
        ));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    if authority.contains('@') {
        return Err(format!("`{url}`: user information is not supported"));
    }
    if path.contains('#') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "`{url}`: the path may not hold spaces, control characters or a fragment"
        ));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| format!("`{url}`: `{authority}` is not host, host:port or [IPv6]:port"))?;
    let path = match path {
        "" | "/" => DEFAULT_OTLP_PATH.to_string(),
        p if p.starts_with('?') => format!("{DEFAULT_OTLP_PATH}{p}"),
        p => p.to_string(),
    };
    Ok(OtlpEndpoint {
        url: url.to_string(),
        host,
        port,
        authority: authority.to_string(),
        path,
    })
}

fn split_host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let name_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    if !name_ok {
        return None;
    }
    let port = match port {
        None => 80,
        Some(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse::<u16>().ok().filter(|&p| p != 0)?
        }
        Some(_) => return None,
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn raw(endpoint: Option<&str>, ratio: Option<f64>, name: Option<&str>) -> RawTracing {
        RawTracing {
            otlp_endpoint: endpoint.map(str::to_string),
            sample_ratio: ratio,
            service_name: name.map(str::to_string),
        }
    }

    #[test]
    fn endpoints_are_http_urls() {
        let config = validate(&raw(
            Some("http://127.0.0.1:4318/v1/traces"),
            Some(0.1),
            None,
        ))
        .unwrap();
        let endpoint = config.otlp_endpoint.unwrap();
        assert_eq!(
            (
                endpoint.host.as_str(),
                endpoint.port,
                endpoint.path.as_str()
            ),
            ("127.0.0.1", 4318, "/v1/traces")
        );
        assert_eq!(endpoint.authority, "127.0.0.1:4318");
        assert_eq!(config.sample_ratio, 0.1);
        assert_eq!(config.service_name, "switchyard");
        let endpoint = parse_endpoint("http://collector.local").unwrap();
        assert_eq!((endpoint.port, endpoint.path.as_str()), (80, "/v1/traces"));
        let endpoint = parse_endpoint("HTTP://[::1]:4318/").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("::1", 4318));
        assert_eq!(endpoint.path, "/v1/traces");
        for bad in [
            "https://collector:4318/v1/traces",
            "collector:4318",
            "http://",
            "http://:4318/x",
            "http://user@host/x",
            "http://host:0/x",
            "http://host:99999/x",
            "http://host:x/",
            "http://ho st/x",
            "http://host/a b",
            "http://host/a#b",
            "http://[::1/x",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        let https = parse_endpoint("https://c/").unwrap_err();
        assert!(https.contains("https is not supported"), "{https}");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let problems = validate(&raw(Some("ftp://x"), Some(1.5), Some(" "))).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            fields,
            [
                "tracing.otlp_endpoint",
                "tracing.sample_ratio",
                "tracing.service_name"
            ]
        );
        assert!(validate(&raw(None, Some(f64::NAN), None)).is_err());
        assert!(validate(&raw(None, Some(-0.1), None)).is_err());
        assert_eq!(
            validate(&raw(None, Some(0.0), None)).unwrap().sample_ratio,
            0.0
        );
    }
}
