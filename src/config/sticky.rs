//! `sticky:` of a service: the cookie that keeps a client on one instance.

use std::time::Duration;

use super::raw::RawSticky;
use super::values::parse_bounded_duration;
use super::Secret;

/// Longest `max_age` accepted: browsers cap cookie lifetimes at about
/// 400 days (RFC 6265bis §5.5), so more would be a setting that lies.
const MAX_AGE_LIMIT: Duration = Duration::from_secs(400 * 24 * 3600);

/// Sticky sessions of a service: the proxy names the instance that served
/// a client in a cookie and sends the client back to it while it is in
/// rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// The cookie's name (an RFC 6265 token).
    pub cookie: String,
    /// `Max-Age` of the cookie; `None` is a session cookie.
    pub max_age: Option<Duration>,
    /// Send the cookie with `Secure`.
    pub secure: bool,
    /// Send the cookie with `HttpOnly` (on by default).
    pub http_only: bool,
    /// The `SameSite` attribute, if any.
    pub same_site: Option<SameSite>,
    /// The key of the cookie values; without one, each process draws its
    /// own at start (values then survive reloads, not restarts, and
    /// differ between nodes).
    pub secret: Option<Secret>,
}

/// The `SameSite` cookie attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=None` (needs `Secure`).
    None,
}

impl SameSite {
    /// The attribute value as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// Checks `sticky:` at `path` (`services.NAME.sticky`); every problem as
/// (field path, message). `secret` is the key already read by the caller
/// from `secret`, `secret_file` or `secret_env`.
pub(super) fn validate(
    path: &str,
    raw: &RawSticky,
    secret: Option<Secret>,
) -> Result<StickyConfig, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let cookie = raw.cookie.trim().to_string();
    if !is_cookie_name(&cookie) {
        errors.push((
            format!("{path}.cookie"),
            format!(
                "`{}` is not a cookie name; use letters, digits and `-_.` (no spaces, `=` or `;`)",
                raw.cookie
            ),
        ));
    }
    let max_age = match &raw.max_age {
        None => None,
        Some(text) => match parse_bounded_duration(text, false, MAX_AGE_LIMIT) {
            Ok(age) if age < Duration::from_secs(1) => {
                errors.push((
                    format!("{path}.max_age"),
                    format!("`{text}` is under a second; cookies count in whole seconds"),
                ));
                None
            }
            Ok(age) => Some(age),
            Err(message) => {
                errors.push((format!("{path}.max_age"), message));
                None
            }
        },
    };
    let secure = raw.secure.unwrap_or(false);
    let same_site = match raw
        .same_site
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => None,
        Some("strict") => Some(SameSite::Strict),
        Some("lax") => Some(SameSite::Lax),
        Some("none") => Some(SameSite::None),
        Some(_) => {
            errors.push((
                format!("{path}.same_site"),
                format!(
                    "`{}` must be strict, lax or none",
                    raw.same_site.as_deref().unwrap_or_default()
                ),
            ));
            None
        }
    };
    if same_site == Some(SameSite::None) && !secure {
        errors.push((
            format!("{path}.same_site"),
            "`none` needs `secure: true` (browsers drop SameSite=None cookies without Secure)"
                .into(),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(StickyConfig {
        cookie,
        max_age,
        secure,
        http_only: raw.http_only.unwrap_or(true),
        same_site,
        secret,
    })
}

/// An RFC 6265 cookie name, restricted to the characters that survive
/// every client unquoted.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, SameSite};
    use std::time::Duration;

    fn with(sticky: &str) -> String {
        format!("listeners: [{{address: 127.0.0.1:80}}]\nroutes: [{{service: a}}]\nservices:\n  a:\n    sticky: {sticky}\n")
    }

    fn problems(sticky: &str) -> Vec<String> {
        parse(&with(sticky))
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn sticky_settings_are_read_with_defaults() {
        let config = parse(&with("{cookie: sy}")).unwrap();
        let sticky = config
            .services
            .values()
            .next()
            .unwrap()
            .sticky
            .clone()
            .unwrap();
        assert_eq!(sticky.cookie, "sy");
        assert_eq!(sticky.max_age, None);
        assert!(!sticky.secure && sticky.http_only);
        assert_eq!(sticky.same_site, None);
        assert!(sticky.secret.is_none());
        let config = parse(&with(
            "{cookie: cart, max_age: 24h, secure: true, http_only: false, same_site: Lax, secret: s3}",
        ))
        .unwrap();
        let sticky = config
            .services
            .values()
            .next()
            .unwrap()
            .sticky
            .clone()
            .unwrap();
        assert_eq!(sticky.max_age, Some(Duration::from_secs(86_400)));
        assert!(sticky.secure && !sticky.http_only);
        assert_eq!(sticky.same_site, Some(SameSite::Lax));
        assert_eq!(sticky.secret.unwrap().0, "s3");
    }

    #[test]
    fn every_bad_sticky_field_is_named() {
        let errors = problems(
            "{cookie: \"a b\", max_age: 500ms, same_site: sometimes, secret: x, secret_env: Y}",
        );
        let joined = errors.join("\n");
        assert!(
            joined.contains("services.a.sticky: give the secret one way only"),
            "{joined}"
        );
        assert!(
            joined.contains("services.a.sticky.cookie: `a b` is not a cookie name"),
            "{joined}"
        );
        assert!(
            joined.contains("services.a.sticky.max_age: `500ms` is under a second"),
            "{joined}"
        );
        assert!(
            joined.contains("services.a.sticky.same_site: `sometimes` must be strict, lax or none"),
            "{joined}"
        );
        let errors = problems("{cookie: s, same_site: none}");
        assert!(
            errors[0].starts_with("services.a.sticky.same_site: `none` needs `secure: true`"),
            "{errors:?}"
        );
        let errors = problems("{cookie: s, max_age: 1000d}");
        assert!(
            errors[0].starts_with("services.a.sticky.max_age:"),
            "{errors:?}"
        );
        let errors = problems("{cookie: s, expires: 1h}");
        assert!(errors[0].contains("unknown field `expires`"), "{errors:?}");
    }
}
