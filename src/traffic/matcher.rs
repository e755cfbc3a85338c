//! A route's extra conditions (method, headers, query) evaluated against a
//! request, and the check for routes that can never match.

use std::borrow::Cow;

use http::{HeaderMap, Method};

use crate::config::{
    HeaderCondition, HeaderTest, HostMatch, MatchConditions, QueryTest, RouteConfig,
};

/// What matching reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path (without query).
    pub path: &'a str,
    /// The query, without `?`.
    pub query: Option<&'a str>,
    /// The header fields.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestFacts<'a> {
    /// The facts of a request with no headers and no query (tests, benches).
    pub fn bare(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestFacts<'a> {
        RequestFacts {
            method,
            path,
            query: None,
            headers,
        }
    }
}

/// Whether `request` meets every condition.
pub fn matches(conditions: &MatchConditions, request: &RequestFacts<'_>) -> bool {
    (conditions.methods.is_empty() || conditions.methods.contains(request.method))
        && conditions
            .headers
            .iter()
            .all(|c| header_matches(c, request.headers))
        && conditions.query.iter().all(|c| {
            query_values(request.query, &c.name).any(|value| match &c.test {
                QueryTest::Present => true,
                QueryTest::Exact(wanted) => value.as_deref() == Some(wanted.as_str()),
            })
        })
}

fn header_matches(condition: &HeaderCondition, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(&condition.name).iter();
    match &condition.test {
        HeaderTest::Present => values.next().is_some(),
        HeaderTest::Absent => values.next().is_none(),
        test => values.any(|value| {
            let Ok(value) = value.to_str() else {
                return false;
            };
            match test {
                HeaderTest::Exact(wanted) => value == wanted,
                HeaderTest::Prefix(prefix) => value.starts_with(prefix.as_str()),
                HeaderTest::Regex(pattern) => pattern.is_match(value),
                HeaderTest::Present | HeaderTest::Absent => false,
            }
        }),
    }
}

/// The values of parameter `name` in `query` (percent-decoded, `+` as a
/// space); `None` for a parameter without `=`.
fn query_values<'q>(
    query: Option<&'q str>,
    name: &'q str,
) -> impl Iterator<Item = Option<Cow<'q, str>>> + 'q {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(move |pair| {
            let (key, value) = match pair.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (pair, None),
            };
            (decode(key) == name).then(|| value.map(decode))
        })
}

/// Percent-decodes `text`; allocates only when there is something to
/// decode. Bad escapes stay as written; bytes that are not UTF-8 become
/// U+FFFD.
fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Whether every request that meets `narrow` also meets `wide`'s condition
/// on the same field.
fn header_implies(narrow: &HeaderCondition, wide: &HeaderCondition) -> bool {
    if narrow.name != wide.name {
        return false;
    }
    match (&narrow.test, &wide.test) {
        (n, w) if n == w => true,
        (HeaderTest::Absent, _) | (_, HeaderTest::Absent) => false,
        (_, HeaderTest::Present) => true,
        (HeaderTest::Exact(value), HeaderTest::Prefix(prefix)) => value.starts_with(prefix),
        (HeaderTest::Prefix(longer), HeaderTest::Prefix(prefix)) => longer.starts_with(prefix),
        (HeaderTest::Exact(value), HeaderTest::Regex(pattern)) => pattern.is_match(value),
        _ => false,
    }
}

/// Whether `wide`'s conditions hold for every request that meets
/// `narrow`'s (conservative: `false` when that cannot be shown).
fn conditions_cover(wide: &MatchConditions, narrow: &MatchConditions) -> bool {
    let methods = wide.methods.is_empty()
        || (!narrow.methods.is_empty() && narrow.methods.iter().all(|m| wide.methods.contains(m)));
    let headers = wide
        .headers
        .iter()
        .all(|w| narrow.headers.iter().any(|n| header_implies(n, w)));
    let query = wide.query.iter().all(|w| {
        narrow
            .query
            .iter()
            .any(|n| n.name == w.name && (n.test == w.test || matches!(w.test, QueryTest::Present)))
    });
    methods && headers && query
}

/// Whether `wide`'s path matches every path `narrow`'s does.
fn path_covers(wide: &RouteConfig, narrow: &RouteConfig) -> bool {
    match (&wide.path_regex, &narrow.path_regex) {
        (Some(w), Some(n)) => w == n,
        // A pattern covering a prefix cannot be decided in general; only
        // the catch-all patterns are recognised.
        (Some(w), None) => {
            matches!(w.as_str(), ".*" | "/.*" | ".+" | "/.+") && {
                // `/.+` does not match `/` itself.
                !(w.as_str().ends_with('+') && narrow.path_prefix == "/")
            }
        }
        (None, Some(_)) => false,
        (None, None) => {
            let prefix = wide.path_prefix.as_str();
            let path = narrow.path_prefix.as_str();
            path.starts_with(prefix)
                && (prefix.ends_with('/')
                    || path.len() == prefix.len()
                    || path.as_bytes().get(prefix.len()) == Some(&b'/'))
        }
    }
}

/// The order routes of one host are tried in: path patterns first (in
/// config order), then longer path prefixes before shorter, then more
/// conditions before fewer; ties keep config order.
pub fn precedence(
    route: &RouteConfig,
) -> (bool, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>) {
    (
        route.path_regex.is_none(),
        std::cmp::Reverse(if route.path_regex.is_some() {
            0
        } else {
            route.path_prefix.len()
        }),
        std::cmp::Reverse(route.conditions.count()),
    )
}

/// Routes that can never match because one tried before them always wins:
/// (index of the shadowed route, index of the one that wins).
pub fn shadowed_routes(routes: &[RouteConfig]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (later, narrow) in routes.iter().enumerate() {
        let winner = routes.iter().enumerate().find(|(earlier, wide)| {
            *earlier != later
                && wide.host == narrow.host
                && tried_before(*earlier, wide, later, narrow)
                && path_covers(wide, narrow)
                && conditions_cover(&wide.conditions, &narrow.conditions)
        });
        if let Some((earlier, _)) = winner {
            found.push((later, earlier));
        }
    }
    found
}

fn tried_before(a_index: usize, a: &RouteConfig, b_index: usize, b: &RouteConfig) -> bool {
    (precedence(a), a_index) < (precedence(b), b_index)
}

/// The warnings `check` prints for `routes`, one line each.
pub fn route_warnings(routes: &[RouteConfig]) -> Vec<String> {
    shadowed_routes(routes)
        .into_iter()
        .map(|(shadowed, winner)| {
            let host = match &routes[shadowed].host {
                HostMatch::Any => "any host".to_string(),
                host => format!("host `{host}`"),
            };
            format!(
                "routes[{shadowed}]: warning: never matches: routes[{winner}] ({host}) is tried first and matches every request this route would"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn routes(list: &str) -> Vec<RouteConfig> {
        let text = format!(
            "listeners: [{{address: 127.0.0.1:80}}]\nservices: {{a: {{}}}}\nroutes:\n{list}"
        );
        parse(&text).unwrap().routes
    }

    #[test]
    fn shadowing_needs_a_wider_path_and_weaker_conditions_tried_first() {
        let shadowed = |list: &str| shadowed_routes(&routes(list));
        // A shorter prefix is tried after a longer one: no shadow.
        assert!(shadowed(
            "  - {path_prefix: /, service: a}\n  - {path_prefix: /api, service: a}\n"
        )
        .is_empty());
        // Same prefix and count: the earlier, weaker condition always wins.
        assert_eq!(
            shadowed("  - {headers: {x: {prefix: ab}}, service: a}\n  - {headers: {x: {exact: abc}}, service: a}\n"),
            [(1, 0)]
        );
        assert!(shadowed("  - {headers: {x: {prefix: ab}}, service: a}\n  - {headers: {x: {exact: b}}, service: a}\n").is_empty());
        // Methods: a wider list wins over a narrower one.
        assert_eq!(
            shadowed("  - {methods: [GET, POST], service: a}\n  - {methods: [GET], service: a}\n"),
            [(1, 0)]
        );
        assert!(
            shadowed("  - {methods: [GET], service: a}\n  - {methods: [POST], service: a}\n")
                .is_empty()
        );
        // A catch-all pattern is tried before every prefix.
        assert_eq!(
            shadowed("  - {path_prefix: /x, service: a}\n  - {path_regex: \"/.*\", service: a}\n"),
            [(0, 1)]
        );
        // Other hosts are never shadowed by a host-specific route.
        assert!(
            shadowed("  - {host: a.test, service: a}\n  - {path_prefix: /b, service: a}\n")
                .is_empty()
        );
    }

    #[test]
    fn query_values_are_decoded() {
        let values: Vec<Option<String>> = query_values(Some("a=1&b&a=x%2By+z&&a=%zz"), "a")
            .map(|v| v.map(|v| v.into_owned()))
            .collect();
        assert_eq!(
            values,
            [Some("1".into()), Some("x+y z".into()), Some("%zz".into())]
        );
        assert_eq!(query_values(Some("b"), "b").collect::<Vec<_>>(), [None]);
    }
}
