//! Validation of a route's traffic fields: `path_regex`, `methods`,
//! `headers`, `query`, `backends` (or `service`), `split_by`,
//! `request_headers`, `response_headers` and `backend_header`.

use http::{HeaderName, HeaderValue, Method};

use super::super::raw::{RawBackend, RawConfig, RawHeaderRewrite, RawRoute};
use super::super::*;
use super::Errors;

/// Fields a rewrite may not touch: they frame the message or the
/// connection, and the proxy manages them itself.
const PROTECTED_HEADERS: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
];

/// The traffic fields of `route`, or None if any is invalid (recorded).
pub(super) fn validate(
    path: &str,
    route: &RawRoute,
    raw: &RawConfig,
    errors: &mut Errors,
) -> Option<(Option<Pattern>, MatchConditions, RoutePolicy)> {
    let before = errors.0.len();
    let path_regex = match &route.path_regex {
        None => None,
        Some(source) => {
            if route.path_prefix.is_some() {
                errors.push(
                    format!("{path}.path_regex"),
                    "give `path_prefix` or `path_regex`, not both",
                );
            }
            if route.strip_prefix {
                errors.push(
                    format!("{path}.strip_prefix"),
                    "needs a `path_prefix` to strip; a `path_regex` route forwards the path as is",
                );
            }
            errors.check(format!("{path}.path_regex"), Pattern::new(source))
        }
    };
    let conditions = MatchConditions {
        methods: methods(path, route, errors),
        headers: route
            .headers
            .iter()
            .filter_map(|(name, test)| {
                let field = format!("{path}.headers.{name}");
                let name = errors.check(field.clone(), header_name(name))?;
                let given = [
                    test.exact.as_ref().map(|v| HeaderTest::Exact(v.clone())),
                    test.prefix.as_ref().map(|v| HeaderTest::Prefix(v.clone())),
                    match &test.regex {
                        Some(source) => Some(HeaderTest::Regex(
                            errors.check(format!("{field}.regex"), Pattern::new(source))?,
                        )),
                        None => None,
                    },
                    test.present.map(|present| {
                        if present {
                            HeaderTest::Present
                        } else {
                            HeaderTest::Absent
                        }
                    }),
                ];
                let test =
                    errors.check(field, exactly_one(given, "exact, prefix, regex or present"))?;
                Some(HeaderCondition { name, test })
            })
            .collect(),
        query: route
            .query
            .iter()
            .filter_map(|(name, test)| {
                let field = format!("{path}.query.{name}");
                if name.is_empty() {
                    errors.push(field, "a parameter name must not be empty");
                    return None;
                }
                if test.present == Some(false) {
                    errors.push(
                        format!("{field}.present"),
                        "only `present: true` is supported (a parameter cannot be required absent)",
                    );
                    return None;
                }
                let given = [
                    test.exact.as_ref().map(|v| QueryTest::Exact(v.clone())),
                    test.present.map(|_| QueryTest::Present),
                ];
                let test = errors.check(field, exactly_one(given, "exact or present"))?;
                Some(QueryCondition {
                    name: name.clone(),
                    test,
                })
            })
            .collect(),
    };
    let backends = backends(path, route, raw, errors);
    let split_by = route
        .split_by
        .as_deref()
        .and_then(|text| errors.check(format!("{path}.split_by"), split_key(text)));
    let request_headers = rewrite(
        &format!("{path}.request_headers"),
        route.request_headers.as_ref(),
        errors,
    );
    let response_headers = rewrite(
        &format!("{path}.response_headers"),
        route.response_headers.as_ref(),
        errors,
    );
    if errors.0.len() > before {
        return None;
    }
    Some((
        path_regex,
        conditions,
        RoutePolicy {
            backends: backends?,
            split_by,
            request_headers,
            response_headers,
            backend_header: route.backend_header.unwrap_or(false),
        },
    ))
}

fn methods(path: &str, route: &RawRoute, errors: &mut Errors) -> Vec<Method> {
    let Some(list) = &route.methods else {
        return Vec::new();
    };
    if list.is_empty() {
        errors.push(
            format!("{path}.methods"),
            "an empty list matches no request; leave `methods` out to match every method",
        );
    }
    let mut methods: Vec<Method> = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let upper = text.trim().to_ascii_uppercase();
        let parsed = (!upper.is_empty() && upper.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| Method::from_bytes(upper.as_bytes()).ok())
            .flatten()
            .ok_or_else(|| format!("`{text}` is not a method name such as GET or POST"));
        if let Some(method) = errors.check(format!("{path}.methods[{i}]"), parsed) {
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
    }
    methods
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!("`{name}` is not a header name (letters, digits and `-`, no spaces or `:`)")
    })
}

fn exactly_one<T, const N: usize>(given: [Option<T>; N], names: &str) -> Result<T, String> {
    let count = given.iter().filter(|g| g.is_some()).count();
    if count != 1 {
        return Err(format!(
            "give exactly one of {names} (got {})",
            if count == 0 {
                "none".to_string()
            } else {
                count.to_string()
            }
        ));
    }
    given
        .into_iter()
        .flatten()
        .next()
        .ok_or_else(|| format!("give one of {names}"))
}

fn backends(
    path: &str,
    route: &RawRoute,
    raw: &RawConfig,
    errors: &mut Errors,
) -> Option<Vec<BackendConfig>> {
    let list = match (&route.service, &route.backends) {
        (Some(_), Some(_)) => {
            errors.push(path.to_string(), "give `service` or `backends`, not both");
            return None;
        }
        (None, None) => {
            errors.push(
                format!("{path}.service"),
                "missing: give `service` (one service) or `backends` (a weighted split)",
            );
            return None;
        }
        (Some(service), None) => {
            known_service(&format!("{path}.service"), service, raw, errors)?;
            return Some(RoutePolicy::to_service(ServiceName::from(service.as_str())).backends);
        }
        (None, Some(list)) => list,
    };
    let field = format!("{path}.backends");
    if list.is_empty() {
        errors.push(field, "needs at least one backend");
        return None;
    }
    if list.len() > MAX_BACKENDS {
        errors.push(
            field,
            format!(
                "{} backends; at most {MAX_BACKENDS} are allowed",
                list.len()
            ),
        );
        return None;
    }
    let before = errors.0.len();
    let mut backends: Vec<BackendConfig> = Vec::new();
    for (i, backend) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if let Some(backend) = validate_backend(&field, backend, raw, errors) {
            if let Some(first) = backends
                .iter()
                .position(|b| b.service == backend.service && b.subset == backend.subset)
            {
                errors.push(
                    field,
                    format!("names the same service and subset as backends[{first}]; give it one entry with the sum of the weights"),
                );
            } else {
                backends.push(backend);
            }
        }
    }
    if errors.0.len() > before {
        return None;
    }
    if backends.iter().all(|b| b.weight == 0) {
        errors.push(
            field,
            "every weight is 0, so no request could go anywhere; give at least one backend a weight",
        );
        return None;
    }
    Some(backends)
}

fn known_service(field: &str, service: &str, raw: &RawConfig, errors: &mut Errors) -> Option<()> {
    if raw.services.contains_key(service) {
        return Some(());
    }
    let known: Vec<&str> = raw.services.keys().map(String::as_str).collect();
    errors.push(
        field.to_string(),
        format!(
            "no service named `{service}` (services defined: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    );
    None
}

fn validate_backend(
    field: &str,
    backend: &RawBackend,
    raw: &RawConfig,
    errors: &mut Errors,
) -> Option<BackendConfig> {
    let known = known_service(&format!("{field}.service"), &backend.service, raw, errors);
    let weight = match backend.weight {
        None => Some(1),
        Some(w) => errors.check(
            format!("{field}.weight"),
            u32::try_from(w)
                .ok()
                .filter(|w| *w <= MAX_BACKEND_WEIGHT)
                .ok_or_else(|| format!("must be between 0 and {MAX_BACKEND_WEIGHT} (got {w})")),
        ),
    };
    let subset = match &backend.subset {
        None => Some(None),
        Some(subset) => {
            let version = match &subset.version {
                None => Some(None),
                Some(v) => errors
                    .check(
                        format!("{field}.subset.version"),
                        check_version(v).map_err(|e| format!("version {e}")),
                    )
                    .map(|()| Some(v.clone())),
            };
            let tags_ok = subset.tags.iter().enumerate().all(|(i, tag)| {
                let ok = !tag.trim().is_empty();
                if !ok {
                    errors.push(
                        format!("{field}.subset.tags[{i}]"),
                        "a tag must not be empty",
                    );
                }
                ok
            });
            if subset.version.is_none() && subset.tags.is_empty() {
                errors.push(
                    format!("{field}.subset"),
                    "names no instances: give a `version`, `tags` or both",
                );
                None
            } else if tags_ok {
                version.map(|version| {
                    Some(Subset {
                        version,
                        tags: subset.tags.clone(),
                    })
                })
            } else {
                None
            }
        }
    };
    let fallback = match backend.fallback.as_deref() {
        None | Some("any") => Some(SubsetFallback::Any),
        Some("none") => Some(SubsetFallback::None),
        Some(other) => {
            errors.push(
                format!("{field}.fallback"),
                format!("`{other}` is not a choice; use `any` (any instance of the service) or `none` (answer 503)"),
            );
            None
        }
    };
    if backend.fallback.is_some() && backend.subset.is_none() {
        errors.push(
            format!("{field}.fallback"),
            "applies to a `subset`, and this backend has none",
        );
        return None;
    }
    known?;
    Some(BackendConfig {
        service: ServiceName::from(backend.service.as_str()),
        weight: weight?,
        subset: subset?,
        fallback: fallback?,
    })
}

fn split_key(text: &str) -> Result<SplitKey, String> {
    let mut words = text.split_whitespace();
    let usage = "use `header NAME`, `cookie NAME` or `client_ip`";
    let key = match (words.next(), words.next(), words.next()) {
        (Some("client_ip"), None, None) => SplitKey::ClientIp,
        (Some("header"), Some(name), None) => SplitKey::Header(header_name(name)?),
        (Some("cookie"), Some(name), None) => {
            let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if !name.chars().all(is_tchar) {
                return Err(format!("`{name}` is not a cookie name"));
            }
            SplitKey::Cookie(name.to_string())
        }
        _ => return Err(format!("`{text}` is not a split key; {usage}")),
    };
    Ok(key)
}

fn rewrite(field: &str, raw: Option<&RawHeaderRewrite>, errors: &mut Errors) -> HeaderRewrite {
    let Some(raw) = raw else {
        return HeaderRewrite::default();
    };
    let checked_name = |path: String, name: &str, errors: &mut Errors| {
        let name = errors.check(path.clone(), header_name(name))?;
        if PROTECTED_HEADERS.contains(&name.as_str()) {
            errors.push(
                path,
                format!("`{name}` is managed by the proxy and cannot be rewritten"),
            );
            return None;
        }
        Some(name)
    };
    let pairs = |kind: &str, map: &BTreeMap<String, String>, errors: &mut Errors| {
        let mut pairs = Vec::new();
        for (name, value) in map {
            let path = format!("{field}.{kind}.{name}");
            let Some(name) = checked_name(path.clone(), name, errors) else {
                continue;
            };
            let value = HeaderValue::from_str(value).map_err(|_| {
                format!(
                    "`{value}` is not a header value (visible ASCII and spaces, no line breaks)"
                )
            });
            if let Some(value) = errors.check(path, value) {
                pairs.push((name, value));
            }
        }
        pairs
    };
    let set = pairs("set", &raw.set, errors);
    let add = pairs("add", &raw.add, errors);
    let remove = raw
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, name)| checked_name(format!("{field}.remove[{i}]"), name, errors))
        .collect();
    HeaderRewrite { remove, set, add }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, HeaderTest, SplitKey, SubsetFallback};

    const HEAD: &str = "listeners: [{address: 127.0.0.1:80}]\nservices: {a: {}, b: {}}\nroutes:\n";

    fn errors(routes: &str) -> Vec<String> {
        match parse(&format!("{HEAD}{routes}")) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_full_route_is_accepted() {
        let text = format!(
            "{HEAD}  - path_regex: \"/x/[0-9]+\"\n    methods: [get]\n    headers: {{x-a: {{regex: \"b.*\"}}, x-c: {{present: false}}}}\n    query: {{q: {{exact: \"1\"}}}}\n    split_by: cookie user\n    backends:\n      - {{service: a, weight: 0}}\n      - {{service: b, weight: 3, subset: {{version: \"2.1\", tags: [canary]}}, fallback: none}}\n    request_headers: {{set: {{x-canary: \"1\"}}, remove: [x-secret]}}\n    backend_header: true\n"
        );
        let config = parse(&text).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.conditions.count(), 4);
        assert_eq!(route.conditions.methods, [http::Method::GET]);
        assert!(matches!(
            route.conditions.headers[1].test,
            HeaderTest::Absent
        ));
        assert_eq!(route.policy.split_by, Some(SplitKey::Cookie("user".into())));
        assert_eq!(route.policy.backends[1].fallback, SubsetFallback::None);
        assert!(route.policy.backend_header);
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let found = errors(concat!(
            "  - path_prefix: /a\n    path_regex: \"(\"\n    strip_prefix: true\n    methods: [\"GE T\"]\n",
            "    headers: {\"bad name\": {exact: x}, x-two: {exact: a, prefix: b}, x-none: {}}\n",
            "    query: {q: {present: false}}\n    split_by: header\n",
            "    backends:\n      - {service: nope}\n      - {service: a, weight: 1001}\n",
            "      - {service: b, subset: {}}\n      - {service: b, fallback: none}\n",
            "      - {service: a, subset: {version: \"a b\"}, fallback: sometimes}\n",
            "    request_headers: {set: {content-length: \"1\"}, add: {x-a: \"bad\\nvalue\"}}\n",
            "    response_headers: {remove: [\"\"]}\n",
        ));
        let expected = [
            "routes[0].path_regex: give `path_prefix` or `path_regex`, not both",
            "routes[0].strip_prefix: needs a `path_prefix`",
            "routes[0].path_regex: `(` is not a valid regular expression",
            "routes[0].methods[0]: `GE T` is not a method name",
            "routes[0].headers.bad name: `bad name` is not a header name",
            "routes[0].headers.x-none: give exactly one of exact, prefix, regex or present (got none)",
            "routes[0].headers.x-two: give exactly one of exact, prefix, regex or present (got 2)",
            "routes[0].query.q.present: only `present: true` is supported",
            "routes[0].backends[0].service: no service named `nope` (services defined: a, b)",
            "routes[0].backends[1].weight: must be between 0 and 1000 (got 1001)",
            "routes[0].backends[2].subset: names no instances",
            "routes[0].backends[3].fallback: applies to a `subset`",
            "routes[0].backends[4].subset.version: version `a b` contains ` `",
            "routes[0].backends[4].fallback: `sometimes` is not a choice",
            "routes[0].split_by: `header` is not a split key",
            "routes[0].request_headers.set.content-length: `content-length` is managed by the proxy",
            "routes[0].request_headers.add.x-a: `bad\nvalue` is not a header value",
            "routes[0].response_headers.remove[0]: `` is not a header name",
        ];
        for wanted in expected {
            assert!(
                found.iter().any(|e| e.starts_with(wanted)),
                "missing `{wanted}` in:\n{}",
                found.join("\n")
            );
        }
        assert_eq!(found.len(), expected.len(), "{}", found.join("\n"));
    }

    #[test]
    fn service_and_backends_are_exclusive_and_weights_cannot_all_be_zero() {
        assert!(errors("  - {service: a, backends: [{service: b}]}\n")[0]
            .starts_with("routes[0]: give `service` or `backends`, not both"));
        assert!(errors("  - {path_prefix: /}\n")[0].starts_with("routes[0].service: missing"));
        assert!(
            errors("  - {backends: []}\n")[0].starts_with("routes[0].backends: needs at least one")
        );
        assert!(
            errors("  - {backends: [{service: a, weight: 0}, {service: b, weight: 0}]}\n")[0]
                .starts_with("routes[0].backends: every weight is 0")
        );
        assert!(
            errors("  - {backends: [{service: a}, {service: a, weight: 2}]}\n")[0].starts_with(
                "routes[0].backends[1]: names the same service and subset as backends[0]"
            )
        );
        assert!(errors("  - {methods: [], service: a}\n")[0]
            .starts_with("routes[0].methods: an empty list"));
    }

    #[test]
    fn routes_differing_only_in_conditions_are_not_duplicates() {
        assert!(
            errors("  - {service: a}\n  - {service: b, headers: {x-a: {present: true}}}\n")
                .is_empty()
        );
        assert!(errors("  - {service: a, headers: {x-a: {present: true}}}\n  - {service: b, headers: {x-a: {present: true}}}\n")[0]
            .starts_with("routes[1]: another route already matches host `*` and path prefix `/` with the same conditions"));
    }
}
