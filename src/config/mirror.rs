//! `mirror:` of a route: a copy of matching requests for another service.

use super::raw::{RawConfig, RawMirror};
use super::ServiceName;

/// Largest `max_body_bytes`: a mirrored body is held in memory until it
/// is complete, once per mirror in flight.
pub const MAX_MIRROR_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// Default `max_body_bytes`.
pub const DEFAULT_MIRROR_BODY_BYTES: u64 = 64 * 1024;
/// Default `max_in_flight`.
const DEFAULT_MIRROR_IN_FLIGHT: u32 = 100;
/// Largest `max_in_flight`.
const MAX_MIRROR_IN_FLIGHT: i64 = 100_000;

/// Where a route sends copies of its requests. Answers to copies are
/// read and dropped; a copy never delays or fails the request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// The service that gets the copies.
    pub service: ServiceName,
    /// Share of matching requests copied, 1 to 100.
    pub percent: u8,
    /// Requests with a longer body (or one still streaming past this) are
    /// not copied.
    pub max_body_bytes: u64,
    /// Copies in flight to `service` at most (over all routes mirroring to
    /// it); more are dropped and counted.
    pub max_in_flight: u32,
}

/// Checks `mirror:` at `path` (`routes[N].mirror`) of a route serving
/// `primary`; every problem as (field path, message).
pub(super) fn validate(
    path: &str,
    raw: &RawMirror,
    primary: &str,
    config: &RawConfig,
) -> Result<MirrorConfig, Vec<(String, String)>> {
    let mut errors = Vec::new();
    match config.services.get(&raw.service) {
        None => errors.push((
            format!("{path}.service"),
            format!("no service named `{}` to mirror to", raw.service),
        )),
        Some(_) if raw.service == primary => errors.push((
            format!("{path}.service"),
            format!(
                "`{}` already serves this route; mirror to another service",
                raw.service
            ),
        )),
        Some(target) => {
            let http2 = target.protocol.as_deref() == Some("http2");
            if target.tls.is_some() || http2 {
                errors.push((
                    format!("{path}.service"),
                    format!(
                        "`{}` is reached over {}; mirror targets speak plain HTTP/1.1",
                        raw.service,
                        if http2 { "HTTP/2" } else { "TLS" }
                    ),
                ));
            }
        }
    }
    let percent = match raw.percent {
        None => 100,
        Some(p) => match u8::try_from(p).ok().filter(|p| (1..=100).contains(p)) {
            Some(p) => p,
            None => {
                errors.push((
                    format!("{path}.percent"),
                    format!("must be from 1 to 100 (got {p}); remove the mirror to stop it"),
                ));
                100
            }
        },
    };
    let max_body_bytes = match raw.max_body_bytes {
        None => DEFAULT_MIRROR_BODY_BYTES,
        Some(n) => match u64::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_MIRROR_BODY_BYTES)
        {
            Some(n) => n,
            None => {
                errors.push((
                    format!("{path}.max_body_bytes"),
                    format!("must be from 0 to {MAX_MIRROR_BODY_BYTES} (got {n})"),
                ));
                0
            }
        },
    };
    let max_in_flight = match raw.max_in_flight {
        None => DEFAULT_MIRROR_IN_FLIGHT,
        Some(n) if (1..=MAX_MIRROR_IN_FLIGHT).contains(&n) => {
            u32::try_from(n).unwrap_or(DEFAULT_MIRROR_IN_FLIGHT)
        }
        Some(n) => {
            errors.push((
                format!("{path}.max_in_flight"),
                format!("must be from 1 to {MAX_MIRROR_IN_FLIGHT} (got {n})"),
            ));
            DEFAULT_MIRROR_IN_FLIGHT
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(MirrorConfig {
        service: ServiceName::from(raw.service.as_str()),
        percent,
        max_body_bytes,
        max_in_flight,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn with(mirror: &str, shadow: &str) -> String {
        format!("listeners: [{{address: 127.0.0.1:80}}]\nroutes: [{{service: web, mirror: {mirror}}}]\nservices:\n  web: {{}}\n  shadow: {shadow}\n")
    }

    fn problems(mirror: &str, shadow: &str) -> Vec<String> {
        parse(&with(mirror, shadow))
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn mirror_settings_are_read_with_defaults() {
        let config = parse(&with("{service: shadow}", "{}")).unwrap();
        let mirror = config.routes[0].mirror.clone().unwrap();
        assert_eq!(mirror.service.as_str(), "shadow");
        assert_eq!(
            (mirror.percent, mirror.max_body_bytes, mirror.max_in_flight),
            (100, 64 * 1024, 100)
        );
        let config = parse(&with(
            "{service: shadow, percent: 5, max_body_bytes: 0, max_in_flight: 3}",
            "{}",
        ))
        .unwrap();
        let mirror = config.routes[0].mirror.clone().unwrap();
        assert_eq!(
            (mirror.percent, mirror.max_body_bytes, mirror.max_in_flight),
            (5, 0, 3)
        );
    }

    #[test]
    fn every_bad_mirror_field_is_named() {
        let errors = problems(
            "{service: shadow, percent: 0, max_body_bytes: -1, max_in_flight: 0}",
            "{}",
        );
        let joined = errors.join("\n");
        assert!(
            joined.contains("routes[0].mirror.percent: must be from 1 to 100 (got 0)"),
            "{joined}"
        );
        assert!(
            joined.contains("routes[0].mirror.max_body_bytes: must be from 0 to"),
            "{joined}"
        );
        assert!(
            joined.contains("routes[0].mirror.max_in_flight: must be from 1 to"),
            "{joined}"
        );
        let errors = problems("{service: nope}", "{}");
        assert!(
            errors[0].starts_with("routes[0].mirror.service: no service named `nope`"),
            "{errors:?}"
        );
        let errors = problems("{service: web}", "{}");
        assert!(
            errors[0].starts_with("routes[0].mirror.service: `web` already serves this route"),
            "{errors:?}"
        );
        let errors = problems("{service: shadow}", "{protocol: http2}");
        assert!(
            errors[0].contains("is reached over HTTP/2; mirror targets speak plain HTTP/1.1"),
            "{errors:?}"
        );
        let errors = problems("{service: shadow, copies: 2}", "{}");
        assert!(errors[0].contains("unknown field `copies`"), "{errors:?}");
    }
}
