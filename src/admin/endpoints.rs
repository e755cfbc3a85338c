//! Every endpoint of the admin API in one list, and the API's contract
//! (`GET /admin/openapi.json`).
//!
//! The router answers only what this list names: a path that matches no
//! entry is a 404 and a method an entry does not name is a 405 (with
//! `Allow`), before any handler runs. So an endpoint cannot exist without
//! being listed here, and the contract test checks that this list and the
//! OpenAPI document name the same paths and methods.

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Response, StatusCode};

use crate::proxy::{text_response, ProxyBody};

/// One path of the admin API (OpenAPI path-template syntax: `{name}`
/// stands for one path segment) and the methods it answers. `HEAD` is
/// answered wherever `GET` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The path template, e.g. `/admin/services/{service}`.
    pub path: &'static str,
    /// The methods, upper case, `HEAD` left out.
    pub methods: &'static [&'static str],
}

/// Every endpoint the admin API serves.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/",
        methods: &["GET"],
    },
    Endpoint {
        path: "/metrics",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/openapi.json",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/status",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/stats",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/health",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/services",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/services/{service}",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/services/{service}/instances",
        methods: &["POST"],
    },
    Endpoint {
        path: "/admin/services/{service}/instances/{id}",
        methods: &["DELETE"],
    },
    Endpoint {
        path: "/admin/services/{service}/instances/{id}/heartbeat",
        methods: &["PUT"],
    },
    Endpoint {
        path: "/admin/services/{service}/instances/{id}/drain",
        methods: &["PUT"],
    },
    Endpoint {
        path: "/admin/services/{service}/instances/{id}/undrain",
        methods: &["PUT"],
    },
    Endpoint {
        path: "/admin/reload",
        methods: &["POST"],
    },
    Endpoint {
        path: "/admin/config",
        methods: &["POST"],
    },
    Endpoint {
        path: "/admin/config/guard",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/config/versions",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/config/versions/{version}",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/config/diff",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/config/rollback/{version}",
        methods: &["POST"],
    },
    Endpoint {
        path: "/admin/fleet",
        methods: &["GET"],
    },
    Endpoint {
        path: "/admin/logs/reopen",
        methods: &["POST"],
    },
];

/// The OpenAPI 3.1 document describing [`ENDPOINTS`].
pub const OPENAPI: &str = include_str!("openapi.json");

/// The endpoint whose template matches the decoded path `segments` (the
/// path after its leading `/`, split at `/`). A literal segment wins over
/// a `{parameter}` one, so `/admin/config/versions` is not taken for a
/// version number.
pub fn find(segments: &[&str]) -> Option<&'static Endpoint> {
    let mut best: Option<(&'static Endpoint, usize)> = None;
    for endpoint in ENDPOINTS {
        let template: Vec<&str> = endpoint
            .path
            .split('/')
            .skip(1)
            .filter(|s| !s.is_empty())
            .collect();
        if template.len() != segments.len() {
            continue;
        }
        let mut literals = 0;
        let matches = template.iter().zip(segments).all(|(t, s)| {
            if t.starts_with('{') && t.ends_with('}') {
                !s.is_empty()
            } else {
                literals += 1;
                t == s
            }
        });
        if matches && best.is_none_or(|(_, most)| literals > most) {
            best = Some((endpoint, literals));
        }
    }
    best.map(|(endpoint, _)| endpoint)
}

/// The refusal for a request the list does not allow: 404 for an unknown
/// path, 405 with `Allow` for a method the path does not answer.
pub(super) fn refusal(
    method: &Method,
    segments: &[&str],
    path: &str,
) -> Option<Response<ProxyBody>> {
    let Some(endpoint) = find(segments) else {
        return Some(text_response(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint at {path}; see GET /admin/openapi.json for the list\n"),
        ));
    };
    if endpoint.methods.contains(&method.as_str()) {
        return None;
    }
    let mut allowed: Vec<&str> = endpoint.methods.to_vec();
    if allowed.contains(&"GET") {
        allowed.push("HEAD");
    }
    let allowed = allowed.join(", ");
    let mut response = text_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}; use {allowed}\n"),
    );
    if let Ok(value) = HeaderValue::from_str(&allowed) {
        response.headers_mut().insert(ALLOW, value);
    }
    Some(response)
}

/// `GET /admin/openapi.json`.
pub(super) fn document() -> Response<ProxyBody> {
    let mut response = text_response(StatusCode::OK, OPENAPI);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::{find, OPENAPI};

    #[test]
    fn literal_segments_win_over_parameters() {
        assert_eq!(
            find(&["admin", "config", "versions"]).map(|e| e.path),
            Some("/admin/config/versions")
        );
        assert_eq!(
            find(&["admin", "config", "versions", "3"]).map(|e| e.path),
            Some("/admin/config/versions/{version}")
        );
        assert_eq!(find(&[]).map(|e| e.path), Some("/"));
        assert_eq!(find(&["admin", "services", "a", "b"]), None);
    }

    #[test]
    fn the_document_is_json() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
    }
}
