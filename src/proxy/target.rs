//! What a request is for, checked before it is routed: the one host that
//! both routes it and is sent upstream as `Host`, and a path without dot
//! segments. Anything ambiguous is refused with 400 rather than guessed,
//! so the proxy and the instance can never read the target differently.

use http::header::HeaderValue;
use http::{Uri, Version};

use super::ProxyError;

/// Longest host name accepted (RFC 1035 allows 253 characters, plus a
/// trailing dot).
const MAX_HOST: usize = 254;

/// The host of a request, validated: the authority of the request target
/// when it has one (absolute form in HTTP/1.1, `:authority` in HTTP/2),
/// otherwise the `Host` header. `None` only for an HTTP/1.0 request
/// without either, which routes to the routes for any host.
///
/// RFC 9112 §3.2 requires a 400 for an HTTP/1.1 request without `Host`, with
/// more than one, or with an invalid one; §3.2.2 makes the target's
/// authority replace `Host` in absolute form; RFC 9113 §8.3.1 makes a `Host`
/// that differs from `:authority` malformed; RFC 9110 §4.2.4 forbids user
/// information in the target.
///
/// `header` is the request's first `Host` field, `more` whether it has
/// others; `uri` and `version` are the request's.
pub(super) fn host_of(
    header: Option<&HeaderValue>,
    more: bool,
    uri: &Uri,
    version: Version,
) -> Result<Option<HeaderValue>, ProxyError> {
    if more {
        return Err(bad("more than one Host header"));
    }
    if let Some(header) = header {
        check_authority(header.as_bytes()).map_err(|()| bad("invalid Host header"))?;
    }
    let Some(authority) = uri.authority() else {
        return match header {
            Some(header) => Ok(Some(header.clone())),
            None if version <= Version::HTTP_10 => Ok(None),
            None => Err(bad("no Host header")),
        };
    };
    let text = authority.as_str();
    if text.contains('@') {
        return Err(bad("user information in the request target"));
    }
    check_authority(text.as_bytes()).map_err(|()| bad("invalid host in the request target"))?;
    if version == Version::HTTP_2 {
        if let Some(header) = header {
            if !header.as_bytes().eq_ignore_ascii_case(text.as_bytes()) {
                return Err(bad("the Host header differs from :authority"));
            }
        }
    }
    HeaderValue::from_str(text)
        .map(Some)
        .map_err(|_| bad("invalid host in the request target"))
}

/// The part of a validated host that routes match: without port, without
/// the brackets of an IPv6 literal and without a trailing dot
/// (`Example.test.:80` → `Example.test`; the router ignores case).
pub(super) fn route_name(host: &HeaderValue) -> &str {
    let text = host.to_str().unwrap_or_default();
    let name = match text.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => text.split(':').next().unwrap_or(text),
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// Checks `uri-host [":" port]` (RFC 9110 §7.2). Host names are letters,
/// digits, `-`, `_` and `.`, with no empty label except one trailing dot;
/// IPv6 literals are bracketed; the port, if any, is 0-65535.
fn check_authority(text: &[u8]) -> Result<(), ()> {
    let (host, port) = if text.first() == Some(&b'[') {
        let end = text.iter().position(|b| *b == b']').ok_or(())?;
        let literal = std::str::from_utf8(&text[1..end]).map_err(|_| ())?;
        literal.parse::<std::net::Ipv6Addr>().map_err(|_| ())?;
        match &text[end + 1..] {
            [] => (None, None),
            [b':', port @ ..] => (None, Some(port)),
            _ => return Err(()),
        }
    } else {
        match text.iter().position(|b| *b == b':') {
            Some(colon) => (Some(&text[..colon]), Some(&text[colon + 1..])),
            None => (Some(text), None),
        }
    };
    if let Some(host) = host {
        check_name(host)?;
    }
    match port {
        // An empty port is allowed by the grammar and means the default.
        None | Some([]) => Ok(()),
        Some(port) if port.len() <= 5 && port.iter().all(u8::is_ascii_digit) => {
            let value = port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            if value <= u32::from(u16::MAX) {
                Ok(())
            } else {
                Err(())
            }
        }
        Some(_) => Err(()),
    }
}

fn check_name(name: &[u8]) -> Result<(), ()> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() >= MAX_HOST {
        return Err(());
    }
    let valid = name.split(|b| *b == b'.').all(|label| {
        !label.is_empty()
            && label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    });
    if valid {
        Ok(())
    } else {
        Err(())
    }
}

/// Refuses a path with a `.` or `..` segment, including percent-encoded
/// dots (`%2e`), segments split by an encoded slash or a backslash (`%2f`,
/// `%5c`, `\`) and path parameters (`..;x`): back ends resolve these
/// differently, and a path that leaves a route's prefix there but not here
/// would escape the route. Browsers resolve dot segments before sending, so
/// ordinary paths never have them; they pass byte for byte.
pub(super) fn check_path(path: &str) -> Result<(), ProxyError> {
    let bytes = path.as_bytes();
    // Dots seen in the current segment, or None once it holds anything else.
    let mut dots: Option<u8> = Some(0);
    let mut in_parameters = false;
    let mut i = 0;
    loop {
        let (byte, width) = match bytes.get(i) {
            None => (b'/', 1),
            Some(b'%') => match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(b'2'), Some(b'e' | b'E')) => (b'.', 3),
                (Some(b'2'), Some(b'f' | b'F')) => (b'/', 3),
                (Some(b'5'), Some(b'c' | b'C')) => (b'\\', 3),
                _ => (b'%', 1),
            },
            Some(&byte) => (byte, 1),
        };
        match byte {
            b'/' | b'\\' => {
                if matches!(dots, Some(1 | 2)) {
                    return Err(bad("the path has a `.` or `..` segment"));
                }
                dots = Some(0);
                in_parameters = false;
            }
            _ if in_parameters => {}
            b';' => in_parameters = true,
            b'.' => dots = dots.map(|n| n.saturating_add(1)),
            _ => dots = None,
        }
        if i >= bytes.len() {
            return Ok(());
        }
        i += width;
    }
}

fn bad(reason: &'static str) -> ProxyError {
    ProxyError::BadRequest { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;
    use http::Request;

    fn host(version: Version, uri: &str, hosts: &[&str]) -> Result<Option<String>, String> {
        let mut request = Request::builder().version(version).uri(uri);
        for host in hosts {
            request = request.header(HOST, *host);
        }
        let request = request.body(()).unwrap();
        let mut fields = request.headers().get_all(HOST).iter();
        let first = fields.next();
        host_of(
            first,
            fields.next().is_some(),
            request.uri(),
            request.version(),
        )
        .map(|h| h.map(|h| h.to_str().unwrap().to_string()))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn one_host_decides() {
        let h11 = Version::HTTP_11;
        assert_eq!(host(h11, "/", &["a.test"]), Ok(Some("a.test".into())));
        assert_eq!(
            host(h11, "http://a.test:81/x", &["other.test"]),
            Ok(Some("a.test:81".into())),
            "absolute form: the target's authority replaces Host"
        );
        let h2 = Version::HTTP_2;
        assert_eq!(host(h2, "http://a.test/", &[]), Ok(Some("a.test".into())));
        assert_eq!(
            host(h2, "http://a.test/", &["A.test"]),
            Ok(Some("a.test".into()))
        );
        assert!(host(h2, "http://a.test/", &["b.test"])
            .unwrap_err()
            .contains("differs from :authority"));
        assert_eq!(host(h2, "/", &["a.test"]), Ok(Some("a.test".into())));
        assert_eq!(host(Version::HTTP_10, "/", &[]), Ok(None));
    }

    #[test]
    fn bad_hosts_are_refused() {
        let h11 = Version::HTTP_11;
        assert!(host(h11, "/", &[]).unwrap_err().contains("no Host header"));
        assert!(host(h11, "/", &["a.test", "a.test"])
            .unwrap_err()
            .contains("more than one Host"));
        for bad in [
            "a.test x",
            "evil@a.test",
            "a.test:99999",
            "a.test:8o",
            "",
            ".a.test",
            "a..test",
            "a.test/x",
            "[::1",
            "[nope]:80",
            "[::1]x",
            "a.test:80:80",
        ] {
            assert!(host(h11, "/", &[bad]).is_err(), "{bad:?}");
        }
        assert!(host(h11, "http://evil@a.test/", &[])
            .unwrap_err()
            .contains("user information"));
        for good in [
            "a.test.",
            "a-b_c.test:8080",
            "10.0.0.1:80",
            "[::1]:443",
            "a.test:",
        ] {
            assert!(host(h11, "/", &[good]).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn route_names_lose_port_brackets_and_trailing_dot() {
        let name = |h: &'static str| route_name(&HeaderValue::from_static(h)).to_string();
        assert_eq!(name("a.test"), "a.test");
        assert_eq!(name("A.test.:8080"), "A.test");
        assert_eq!(name("[::1]:80"), "::1");
    }

    #[test]
    fn dot_segments_are_refused() {
        for bad in [
            "/api/../secret",
            "/api/..",
            "/./x",
            "/api/%2e%2e/secret",
            "/api/.%2E/secret",
            "/api/..%2fsecret",
            "/api/..%5Csecret",
            "/api/..\\secret",
            "/api/..;x/secret",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/",
            "/api/x",
            "/api/.well-known/x",
            "/a/...",
            "/a/..b",
            "/a.b/c.",
            "/a/%2e%2ex",
            "/a;..",
            "/a//b",
            "/100%",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }
}
