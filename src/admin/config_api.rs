//! Live config over the admin API: reload, apply, versions, diff,
//! rollback, and the config guard.
//!
//! Guard parameters (of `POST /admin/config` and `POST /admin/reload`):
//! `guard=EXPR` (repeatable, URL-encoded), `for=DURATION` (default 60s),
//! `min_requests=N` (default 100); `force=true` ends a running guard
//! early instead of being refused (also on rollback).

use std::net::SocketAddr;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};

use super::{
    bad_request, errors_response, json_response, method_not_allowed, percent_decode, AdminState,
};
use crate::config::guard::{self, GuardSpec};
use crate::config::history::{ChangeSource, ConfigVersion, HistoryError};
use crate::config::redact_secrets;
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
    shows_secrets: bool,
) -> Response<ProxyBody> {
    let Some(reloader) = state.reloader.as_ref() else {
        return text_response(
            StatusCode::NOT_FOUND,
            "this proxy was started without a config file; there is nothing to reload\n",
        );
    };
    // Stored texts hold secrets (the admin token among them); a reader
    // without the token sees them redacted.
    let shown = |text: String| match shows_secrets {
        true => text,
        false => redact_secrets(&text),
    };
    match (method, segments) {
        (&Method::POST, ["reload"]) => {
            let cause = format!("POST /admin/reload from {peer}");
            let params = match GuardParams::parse(query, &[]) {
                Ok(params) => params,
                Err(errors) => return errors_response(StatusCode::BAD_REQUEST, errors),
            };
            reload_response(
                reloader
                    .reload_guarded(ChangeSource::Api, &cause, params.guard, params.force)
                    .await,
            )
        }
        (&Method::GET, ["config", "guard"]) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "running": reloader.guard().filter(|g| g.state == crate::reload::guard::GuardState::Running),
                "current": reloader.guard(),
            }),
        ),
        (&Method::GET, ["config", "versions"]) => match reloader.versions().await {
            Ok((versions, broken)) => {
                let reports = reloader.guard_summaries().await;
                let versions: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|info| {
                        let mut value = serde_json::to_value(info).unwrap_or_default();
                        // The newest report of this version, if it was guarded.
                        if let Some(report) =
                            reports.iter().rev().find(|r| r.version == info.version)
                        {
                            value["guard"] = serde_json::json!({
                                "state": report.state,
                                "verdict": report.verdict,
                                "checks": report.checks,
                                "rollback_version": report.rollback_version,
                            });
                        }
                        value
                    })
                    .collect();
                json_response(
                    StatusCode::OK,
                    &serde_json::json!({
                        "current": reloader.status().current_version,
                        "versions": versions,
                        "unreadable": broken,
                    }),
                )
            }
            Err(error) => error_response(&error),
        },
        (&Method::GET, ["config", "versions", number]) => match parse_version(number) {
            Ok(version) => match reloader.version_text(version).await {
                Ok(text) => with_type(
                    text_response(StatusCode::OK, shown(text)),
                    "application/yaml; charset=utf-8",
                ),
                Err(error) => error_response(&error),
            },
            Err(message) => bad_request(message),
        },
        (&Method::GET, ["config", "diff"]) => diff(reloader, query.unwrap_or(""), shown).await,
        (&Method::POST, ["config", "rollback", number]) => match parse_version(number) {
            Ok(version) => {
                let force = match GuardParams::parse(query, &[]) {
                    Ok(GuardParams { guard: None, force }) => force,
                    Ok(_) => {
                        return bad_request("a rollback takes no guard; only force=true\n".into())
                    }
                    Err(errors) => return errors_response(StatusCode::BAD_REQUEST, errors),
                };
                let cause = format!("rollback to version {version} requested from {peer}");
                reload_response(reloader.rollback_forced(version, &cause, force).await)
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

async fn diff(
    reloader: &Reloader,
    query: &str,
    shown: impl Fn(String) -> String,
) -> Response<ProxyBody> {
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
            // Redacted, a changed secret shows as an unchanged line.
            let (a, b) = (shown(a), shown(b));
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

/// `POST /admin/config`: in fleet mode, validate the YAML body here and
/// push it to the fleet as the next version (`?base=N`: only if N is still
/// current), judged over the whole fleet's traffic when `guard=`
/// parameters are given; on a single node, write it to the config file
/// and apply it, under a guard when `guard=` parameters are given.
pub(super) async fn push(
    state: &AdminState,
    body: &[u8],
    query: Option<&str>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let Some(reloader) = state.reloader.as_ref() else {
        return error_response(&ReloadError::NotFleet);
    };
    let params = match GuardParams::parse(query, &["base"]) {
        Ok(params) => params,
        Err(errors) => return errors_response(StatusCode::BAD_REQUEST, errors),
    };
    let mut base = None;
    for (key, value) in query_pairs(query).into_iter().flatten() {
        if key == "base" {
            match parse_version(&value) {
                Ok(version) => base = Some(version),
                Err(message) => return bad_request(message),
            }
        }
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return bad_request("the body is not UTF-8 text\n".into());
    };
    let cause = format!("POST /admin/config from {peer}");
    if reloader.fleet().is_some() {
        return reload_response(
            reloader
                .push_guarded(text, &cause, base, params.guard, params.force)
                .await,
        );
    }
    if base.is_some() {
        return bad_request("base=N is for fleet pushes only\n".into());
    }
    reload_response(
        reloader
            .apply_text(text, &cause, params.guard, params.force)
            .await,
    )
}

/// The `key=value` pairs of a query string, decoded (`+` is a space).
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                percent_decode(&text.replace('+', " "))
                    .ok_or_else(|| format!("`{text}` is not a valid URL-encoded value"))
            };
            Ok((decode(key)?, decode(value)?))
        })
        .collect()
}

/// Guard parameters of a change.
struct GuardParams {
    guard: Option<GuardSpec>,
    force: bool,
}

impl GuardParams {
    /// Reads `guard`, `for`, `min_requests` and `force`; `others` are
    /// further keys the caller reads itself. Every problem is reported.
    fn parse(query: Option<&str>, others: &[&str]) -> Result<GuardParams, Vec<String>> {
        let pairs = query_pairs(query).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut checks = Vec::new();
        let mut window = None;
        let mut min_requests = None;
        let mut force = false;
        for (key, value) in pairs {
            match key.as_str() {
                "guard" => match guard::parse_check(&value) {
                    Ok(check) => checks.push(check),
                    Err(error) => errors.push(error),
                },
                "for" => match crate::config::parse_duration(&value)
                    .and_then(|d| guard::check_window(d).map(|()| d))
                {
                    Ok(d) => window = Some(d),
                    Err(error) => errors.push(format!("for: {error}")),
                },
                "min_requests" => match value.parse::<u64>() {
                    Ok(n) if n >= 1 => min_requests = Some(n),
                    _ => errors.push(format!(
                        "min_requests: `{value}` is not a whole number of at least 1"
                    )),
                },
                "force" => match value.as_str() {
                    "" | "true" | "1" => force = true,
                    "false" | "0" => force = false,
                    _ => errors.push(format!("force: `{value}` is not true or false")),
                },
                key if others.contains(&key) => {}
                _ => errors.push(format!(
                    "unknown parameter `{key}`; use guard=EXPR, for=DURATION, min_requests=N, force=true"
                )),
            }
        }
        if checks.is_empty() && (window.is_some() || min_requests.is_some()) && errors.is_empty() {
            errors.push("for= and min_requests= need at least one guard=EXPR".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let guard = (!checks.is_empty()).then(|| GuardSpec {
            checks,
            window: window.unwrap_or(guard::DEFAULT_GUARD_WINDOW),
            min_requests: min_requests.unwrap_or(guard::DEFAULT_MIN_REQUESTS),
        });
        Ok(GuardParams { guard, force })
    }
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
        ReloadError::Bind(_)
        | ReloadError::GuardRunning { .. }
        | ReloadError::GuardElsewhere { .. } => StatusCode::CONFLICT,
        error if error.is_client_error() => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let errors = match error {
        ReloadError::Invalid(errors) => errors.0.iter().map(ToString::to_string).collect(),
        other => vec![other.to_string()],
    };
    errors_response(status, errors)
}
