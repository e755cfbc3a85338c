//! Live config over the admin API: reload, versions, diff, rollback.

use std::net::SocketAddr;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};

use super::{bad_request, errors_response, json_response, method_not_allowed, AdminState};
use crate::config::history::{ChangeSource, ConfigVersion, HistoryError};
use crate::fleet::FleetError;
use crate::proxy::{text_response, ProxyBody};
use crate::reload::{ReloadError, ReloadOutcome, Reloader};

/// `segments` starts after `/admin`.
pub(super) async fn handle(
    state: &AdminState,
    method: &Method,
    segments: &[&str],
    query: Option<&str>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let Some(reloader) = state.reloader.as_ref() else {
        return text_response(
            StatusCode::NOT_FOUND,
            "this proxy was started without a config file; there is nothing to reload\n",
        );
    };
    match (method, segments) {
        (&Method::POST, ["reload"]) => {
            let cause = format!("POST /admin/reload from {peer}");
            reload_response(reloader.reload(ChangeSource::Api, &cause).await)
        }
        (&Method::GET, ["config", "versions"]) => match reloader.versions().await {
            Ok((versions, broken)) => json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "current": reloader.status().current_version,
                    "versions": versions,
                    "unreadable": broken,
                }),
            ),
            Err(error) => error_response(&error),
        },
        (&Method::GET, ["config", "versions", number]) => match parse_version(number) {
            Ok(version) => match reloader.version_text(version).await {
                Ok(text) => with_type(
                    text_response(StatusCode::OK, text),
                    "application/yaml; charset=utf-8",
                ),
                Err(error) => error_response(&error),
            },
            Err(message) => bad_request(message),
        },
        (&Method::GET, ["config", "diff"]) => diff(reloader, query.unwrap_or("")).await,
        (&Method::POST, ["config", "rollback", number]) => match parse_version(number) {
            Ok(version) => {
                let cause = format!("rollback to version {version} requested from {peer}");
                reload_response(reloader.rollback(version, &cause).await)
            }
            Err(message) => bad_request(message),
        },
        _ => method_not_allowed(method, &format!("/admin/{}", segments.join("/"))),
    }
}

fn parse_version(text: &str) -> Result<ConfigVersion, String> {
    text.parse()
        .map(ConfigVersion)
        .map_err(|_| format!("`{text}` is not a version number\n"))
}

fn with_type(mut response: Response<ProxyBody>, content_type: &'static str) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn diff(reloader: &Reloader, query: &str) -> Response<ProxyBody> {
    let mut from = None;
    let mut to = reloader.status().current_version;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let version = match parse_version(value) {
            Ok(version) => version,
            Err(message) => return bad_request(message),
        };
        match key {
            "from" => from = Some(version),
            "to" => to = Some(version),
            _ => {
                return bad_request(format!(
                    "unknown parameter `{key}`; use from=A and optionally to=B\n"
                ))
            }
        }
    }
    let (Some(from), Some(to)) = (from, to) else {
        return bad_request(
            "give the versions to compare: ?from=A&to=B (to defaults to the current version)\n"
                .into(),
        );
    };
    let texts = match reloader.version_text(from).await {
        Ok(a) => reloader.version_text(to).await.map(|b| (a, b)),
        Err(error) => Err(error),
    };
    match texts {
        Ok((a, b)) => {
            let text = similar::TextDiff::from_lines(&a, &b)
                .unified_diff()
                .context_radius(3)
                .header(&format!("version {from}"), &format!("version {to}"))
                .to_string();
            with_type(
                text_response(StatusCode::OK, text),
                "text/x-diff; charset=utf-8",
            )
        }
        Err(error) => error_response(&error),
    }
}

fn reload_response(result: Result<ReloadOutcome, ReloadError>) -> Response<ProxyBody> {
    match result {
        Ok(outcome) => json_response(StatusCode::OK, &outcome),
        Err(error) => error_response(&error),
    }
}

/// `POST /admin/config`: validate the YAML body here and push it to the
/// fleet as the next version (`?base=N`: only if N is still current).
pub(super) async fn push(
    state: &AdminState,
    body: &[u8],
    query: Option<&str>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let Some(reloader) = state.reloader.as_ref() else {
        return error_response(&ReloadError::NotFleet);
    };
    let mut base = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("base", value)) => match parse_version(value) {
                Ok(version) => base = Some(version),
                Err(message) => return bad_request(message),
            },
            _ => return bad_request(format!("unknown parameter `{pair}`; use base=N\n")),
        }
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return bad_request("the body is not UTF-8 text\n".into());
    };
    let cause = format!("POST /admin/config from {peer}");
    reload_response(reloader.push(text, &cause, base).await)
}

fn error_response(error: &ReloadError) -> Response<ProxyBody> {
    let status = match error {
        ReloadError::History(HistoryError::NotFound(_)) => StatusCode::NOT_FOUND,
        ReloadError::Fleet(FleetError::NotFound(_)) => StatusCode::NOT_FOUND,
        ReloadError::Fleet(FleetError::Conflict(_)) | ReloadError::FleetMode => {
            StatusCode::CONFLICT
        }
        ReloadError::Fleet(FleetError::Etcd(_) | FleetError::Timeout(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ReloadError::Bind(_) => StatusCode::CONFLICT,
        error if error.is_client_error() => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let errors = match error {
        ReloadError::Invalid(errors) => errors.0.iter().map(ToString::to_string).collect(),
        other => vec![other.to_string()],
    };
    errors_response(status, errors)
}
