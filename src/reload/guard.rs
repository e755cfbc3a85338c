//! Guarded changes: after a new version is applied, its traffic is
//! watched for the guard window and compared with the window of the same
//! length before the change; if a guard trips, the previous version is
//! restored (a new version with source `rollback`).
//!
//! The judge is pure ([`judge`]): figures in, verdict out. The watcher
//! ([`watch`]) reads the per-second stats window once a second; nothing
//! here touches the request path, and with no guard running nothing runs.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::guard::{percent, GuardBound, GuardCheck, GuardMetric, GuardSpec};
use crate::config::history::ConfigVersion;
use crate::stats_window::{self, StatsWindow, WindowStats};

use super::Reloader;

mod fleet;

pub(crate) use fleet::refusal;
pub use fleet::GuardSummary;

/// Finished guards remembered for `config versions` and the status.
const REPORTS_KEPT: usize = 100;

/// Where a guard stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardState {
    /// Still watching.
    Running,
    /// The window passed and no guard tripped.
    Kept,
    /// Too little traffic in the window for a verdict; the change stays.
    NotEnoughTraffic,
    /// A guard tripped; the previous version is being restored.
    RollingBack,
    /// A guard tripped and the previous version was restored.
    RolledBack,
    /// A guard tripped, but restoring the previous version failed.
    RollbackFailed,
    /// A forced change ended the window early; the change was kept.
    EndedByForce,
}

impl GuardState {
    /// The name used in logs, metrics and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardState::Running => "running",
            GuardState::Kept => "kept",
            GuardState::NotEnoughTraffic => "not_enough_traffic",
            GuardState::RollingBack => "rolling_back",
            GuardState::RolledBack => "rolled_back",
            GuardState::RollbackFailed => "rollback_failed",
            GuardState::EndedByForce => "ended_by_force",
        }
    }
}

/// The figures of one scope (a service, or `all`) since the change, and
/// the baseline before it.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeFigures {
    /// A service name, or `all`.
    pub scope: String,
    /// Since the change.
    pub window: WindowStats,
    /// The window of the same length before the change.
    pub baseline: WindowStats,
}

/// One guarded change, running or finished.
#[derive(Debug, Clone, Serialize)]
pub struct GuardReport {
    /// The version being watched.
    pub version: ConfigVersion,
    /// The version restored if a guard trips.
    pub previous: ConfigVersion,
    /// The guards, as written.
    pub checks: Vec<String>,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// Fewest requests for a verdict.
    pub min_requests: u64,
    /// When the window started (RFC 3339).
    pub started_at: String,
    /// Seconds of the window passed.
    pub elapsed_seconds: u64,
    /// Where it stands.
    pub state: GuardState,
    /// The verdict in words, once there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The version that restored `previous`, after a rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_version: Option<ConfigVersion>,
    /// The latest figures, overall first.
    pub figures: Vec<ScopeFigures>,
    /// For a guarded fleet push: whose figures are judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetScope>,
}

/// The nodes a fleet guard judges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetScope {
    /// The nodes whose published figures are merged.
    pub nodes: Vec<String>,
    /// Nodes left out: they stopped publishing their figures (or never
    /// did after the push).
    pub left_out: Vec<String>,
}

/// A guard in progress.
struct Running {
    report: GuardReport,
    stop: Arc<tokio::sync::Notify>,
}

/// The guards of a proxy: at most one running, and the reports of the
/// last ones.
#[derive(Default)]
pub(crate) struct Guards {
    running: Mutex<Option<Running>>,
    finished: Mutex<std::collections::VecDeque<GuardReport>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Guards {
    /// The running guard's report, if one runs.
    pub(crate) fn running(&self) -> Option<GuardReport> {
        lock(&self.running).as_ref().map(|r| r.report.clone())
    }

    /// The running guard, else the last finished one.
    pub(crate) fn current(&self) -> Option<GuardReport> {
        self.running()
            .or_else(|| lock(&self.finished).back().cloned())
    }

    /// Every report, running included, oldest first.
    pub(crate) fn reports(&self) -> Vec<GuardReport> {
        let mut reports: Vec<GuardReport> = lock(&self.finished).iter().cloned().collect();
        reports.extend(self.running());
        reports
    }

    pub(crate) fn start(&self, report: GuardReport) -> Arc<tokio::sync::Notify> {
        let stop = Arc::new(tokio::sync::Notify::new());
        *lock(&self.running) = Some(Running {
            report,
            stop: Arc::clone(&stop),
        });
        stop
    }

    fn update(&self, version: ConfigVersion, elapsed: u64, figures: Vec<ScopeFigures>) {
        if let Some(running) = lock(&self.running).as_mut() {
            if running.report.version == version {
                running.report.elapsed_seconds = elapsed;
                running.report.figures = figures;
            }
        }
    }

    /// The guard a new change would disturb: one still watching, or one
    /// that tripped and is restoring the previous version.
    pub(crate) fn watching(&self) -> Option<GuardReport> {
        self.running()
    }

    /// Ends the running guard of `version` (if it still runs) with
    /// `state`, and records it; whether it was still running.
    fn finish(&self, version: ConfigVersion, state: GuardState, verdict: String) -> bool {
        let mut running = lock(&self.running);
        if running
            .as_ref()
            .is_none_or(|r| r.report.version != version || r.report.state != GuardState::Running)
        {
            return false;
        }
        let Some(taken) = running.take() else {
            return false;
        };
        let mut report = taken.report;
        report.state = state;
        report.verdict = Some(verdict);
        // Recorded before the running slot is released, so a reader always
        // finds the report in one place or the other.
        self.record(report);
        true
    }

    /// Marks the running guard of `version` as tripped: it stays in place
    /// (new changes are no longer refused) while the rollback runs.
    fn trip(&self, version: ConfigVersion, verdict: String) -> Option<ConfigVersion> {
        let mut running = lock(&self.running);
        let report = &mut running.as_mut()?.report;
        if report.version != version || report.state != GuardState::Running {
            return None;
        }
        report.state = GuardState::RollingBack;
        report.verdict = Some(verdict);
        Some(report.previous)
    }

    fn record(&self, report: GuardReport) {
        let mut finished = lock(&self.finished);
        if finished.len() == REPORTS_KEPT {
            finished.pop_front();
        }
        finished.push_back(report);
    }

    /// Ends the running guard, if any, as kept because a forced change
    /// came; returns its version.
    pub(crate) fn end_by_force(&self, by: &str) -> Option<ConfigVersion> {
        let mut running = lock(&self.running);
        if running
            .as_ref()
            .is_none_or(|r| r.report.state != GuardState::Running)
        {
            return None;
        }
        let taken = running.take()?;
        taken.stop.notify_one();
        let mut report = taken.report;
        report.state = GuardState::EndedByForce;
        report.verdict = Some(format!(
            "kept: the window was ended early by a forced change ({by})"
        ));
        let version = report.version;
        tracing::info!(%version, "config guard ended early by a forced change; the change is kept");
        self.record(report);
        Some(version)
    }

    /// The tripped guard of `version` restored the previous version (or
    /// failed to): it ends.
    fn rolled_back(&self, version: ConfigVersion, result: Result<Option<ConfigVersion>, String>) {
        let mut running = lock(&self.running);
        if running.as_ref().map(|r| r.report.version) != Some(version) {
            return;
        }
        let Some(taken) = running.take() else {
            return;
        };
        let mut report = taken.report;
        match result {
            Ok(version) => {
                report.state = GuardState::RolledBack;
                report.rollback_version = version;
            }
            Err(error) => {
                report.state = GuardState::RollbackFailed;
                if let Some(verdict) = report.verdict.as_mut() {
                    verdict.push_str(&format!("; restoring the previous version failed: {error}"));
                }
            }
        }
        self.record(report);
    }
}

/// A new guard's report, before the first figures.
pub(crate) fn report(
    spec: &GuardSpec,
    version: ConfigVersion,
    previous: ConfigVersion,
) -> GuardReport {
    GuardReport {
        version,
        previous,
        checks: spec.checks.iter().map(ToString::to_string).collect(),
        window_seconds: spec.window.as_secs(),
        min_requests: spec.min_requests,
        started_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        elapsed_seconds: 0,
        state: GuardState::Running,
        verdict: None,
        rollback_version: None,
        figures: Vec::new(),
        fleet: None,
    }
}

/// What the judge concluded from the figures so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// A guard does not hold: the cause, in words.
    Tripped(String),
    /// Every guard judged holds; `judged` tells which could be judged
    /// (enough requests, and a baseline for relative guards).
    Holding {
        /// For each check, whether it could be judged.
        judged: Vec<bool>,
    },
}

fn metric_value(metric: GuardMetric, stats: &WindowStats) -> Option<f64> {
    match metric {
        GuardMetric::ErrorRate => Some(stats.error_rate()),
        GuardMetric::P50 => stats.p50.map(|d| d.as_secs_f64()),
        GuardMetric::P99 => stats.p99.map(|d| d.as_secs_f64()),
    }
}

fn show(metric: GuardMetric, value: f64) -> String {
    match metric {
        GuardMetric::ErrorRate => percent(value),
        GuardMetric::P50 | GuardMetric::P99 => {
            let millis = value * 1000.0;
            if millis >= 10.0 {
                format!("{millis:.0}ms")
            } else {
                format!("{millis:.1}ms")
            }
        }
    }
}

/// `1832` → `1,832`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Judges `checks` over `figures` (overall first, then one per service).
/// A scope is judged only with at least `min_requests` requests in the
/// window (and, for a relative guard, in the baseline).
pub fn judge(checks: &[GuardCheck], figures: &[ScopeFigures], min_requests: u64) -> Judgement {
    judge_in(checks, figures, min_requests, "")
}

/// [`judge`], the scope named with `prefix` in a cause (`fleet `).
fn judge_in(
    checks: &[GuardCheck],
    figures: &[ScopeFigures],
    min_requests: u64,
    prefix: &str,
) -> Judgement {
    let mut judged = vec![false; checks.len()];
    for (i, check) in checks.iter().enumerate() {
        let scopes = figures.iter().filter(|f| match &check.service {
            Some(service) => f.scope == service.as_str(),
            None => true,
        });
        for scope in scopes {
            if scope.window.requests < min_requests {
                continue;
            }
            let Some(value) = metric_value(check.metric, &scope.window) else {
                continue;
            };
            let baseline = (scope.baseline.requests >= min_requests)
                .then(|| metric_value(check.metric, &scope.baseline))
                .flatten();
            let (limit, how) = match (check.bound, baseline) {
                (GuardBound::Rate(r), _) => (r, None),
                (GuardBound::Latency(d), _) => (d.as_secs_f64(), None),
                (GuardBound::BaselinePlusRate(r), Some(b)) => (
                    b + r,
                    Some(format!(
                        "baseline {} + {}",
                        show(check.metric, b),
                        percent(r)
                    )),
                ),
                (GuardBound::BaselinePlusLatency(d), Some(b)) => (
                    b + d.as_secs_f64(),
                    Some(format!(
                        "baseline {} + {}",
                        show(check.metric, b),
                        show(check.metric, d.as_secs_f64())
                    )),
                ),
                (GuardBound::BaselineTimes(x), Some(b)) => (
                    b * x,
                    Some(format!("{x} × baseline {}", show(check.metric, b))),
                ),
                // No baseline to compare with: this scope cannot be judged.
                (_, None) => continue,
            };
            judged[i] = true;
            if value >= limit {
                let scope_name = if scope.scope == "all" {
                    "all services".to_string()
                } else {
                    format!("service {}", scope.scope)
                };
                let limit_text = match how {
                    Some(how) => format!("{} ({how})", show(check.metric, limit)),
                    None => show(check.metric, limit),
                };
                return Judgement::Tripped(format!(
                    "guard tripped: {prefix}{scope_name} {} {} {} {limit_text} over {} requests",
                    check.metric.as_str(),
                    show(check.metric, value),
                    if value > limit { ">" } else { "≥" },
                    thousands(scope.window.requests)
                ));
            }
        }
    }
    Judgement::Holding { judged }
}

/// The figures since `start` and of the baseline before it, overall and
/// per service in `services`.
fn figures(
    window: &StatsWindow,
    services: &[String],
    start: u64,
    length: u64,
    now: u64,
) -> Vec<ScopeFigures> {
    let scope = |name: Option<&str>| ScopeFigures {
        scope: name.unwrap_or("all").to_string(),
        window: window.window(name, start, now + 1),
        baseline: window.window(name, start.saturating_sub(length), start),
    };
    std::iter::once(scope(None))
        .chain(services.iter().map(|s| scope(Some(s))))
        .collect()
}

/// Watches a guarded change of `reloader` to `version` until the window
/// passes, a guard trips (then restores `previous`), or a forced change
/// ends it.
pub(crate) async fn watch(
    reloader: Arc<Reloader>,
    spec: GuardSpec,
    version: ConfigVersion,
    stop: Arc<tokio::sync::Notify>,
) {
    let window = Arc::clone(reloader.registry.metrics().window());
    // The window starts with the change; the baseline is the same length
    // just before it.
    let start = stats_window::unix_now();
    let length = spec.window.as_secs().max(1);
    let began = Instant::now();
    let services: Vec<String> = reloader
        .registry
        .config()
        .services
        .keys()
        .map(ToString::to_string)
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let judged = loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.notified() => return,
        }
        let now = stats_window::unix_now();
        let figures = figures(&window, &services, start, length, now);
        let elapsed = began.elapsed();
        let verdict = judge(&spec.checks, &figures, spec.min_requests);
        reloader
            .guards
            .update(version, elapsed.as_secs().min(length), figures);
        match verdict {
            Judgement::Tripped(cause) => {
                trip(&reloader, version, cause).await;
                return;
            }
            Judgement::Holding { judged } if elapsed >= spec.window => break judged,
            Judgement::Holding { .. } => {}
        }
    };
    let (state, verdict) = held(&spec, &judged, length);
    if reloader.guards.finish(version, state, verdict.clone()) {
        tracing::info!(%version, verdict = %verdict, "config guard ended; the change is kept");
        reloader.registry.metrics().guard_verdict(state.as_str());
    }
}

/// The verdict of a window that passed without a guard tripping; `judged`
/// tells which checks could be judged.
fn held(spec: &GuardSpec, judged: &[bool], length: u64) -> (GuardState, String) {
    if judged.iter().any(|j| *j) {
        let unjudged: Vec<String> = spec
            .checks
            .iter()
            .zip(judged)
            .filter(|(_, j)| !**j)
            .map(|(c, _)| c.to_string())
            .collect();
        let note = if unjudged.is_empty() {
            String::new()
        } else {
            format!("; not enough traffic to judge: {}", unjudged.join(", "))
        };
        (
            GuardState::Kept,
            format!("kept: every guard held for {}s{note}", length),
        )
    } else {
        (
            GuardState::NotEnoughTraffic,
            format!(
                "kept: not enough traffic (fewer than {} requests in {}s, or no baseline to compare with)",
                spec.min_requests, length
            ),
        )
    }
}

async fn trip(reloader: &Arc<Reloader>, version: ConfigVersion, cause: String) {
    let Some(previous) = reloader.guards.trip(version, cause.clone()) else {
        return;
    };
    tracing::warn!(%version, restores = %previous, "{cause}; restoring the previous config version");
    reloader.registry.metrics().guard_verdict("rolled_back");
    let result = reloader
        .rollback_for_guard(previous, &cause)
        .await
        .map(|outcome| match outcome {
            super::ReloadOutcome::Applied { version, .. } => version,
            _ => None,
        })
        .map_err(|e| e.to_string());
    if let Err(error) = &result {
        tracing::error!(%version, %error, "the guard could not restore the previous config version");
    }
    reloader.guards.rolled_back(version, result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::guard::parse_check;

    fn stats(requests: u64, errors: u64, p99_ms: u64) -> WindowStats {
        WindowStats {
            requests,
            errors,
            p50: Some(Duration::from_millis(p99_ms / 2)),
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    fn scope(name: &str, window: WindowStats, baseline: WindowStats) -> ScopeFigures {
        ScopeFigures {
            scope: name.into(),
            window,
            baseline,
        }
    }

    #[test]
    fn trips_on_a_service_and_says_so() {
        let checks = [parse_check("error_rate < 1%").unwrap()];
        let figures = [
            scope("all", stats(3000, 229, 20), stats(3000, 0, 20)),
            scope("web", stats(1832, 229, 20), stats(1800, 0, 20)),
        ];
        assert_eq!(
            judge(&checks, &figures[1..], 100),
            Judgement::Tripped(
                "guard tripped: service web error_rate 12.5% > 1% over 1,832 requests".into()
            )
        );
        let Judgement::Tripped(cause) = judge(&checks, &figures, 100) else {
            panic!("should trip")
        };
        assert!(
            cause.starts_with("guard tripped: all services error_rate"),
            "{cause}"
        );
    }

    #[test]
    fn too_few_requests_or_no_baseline_is_no_verdict() {
        let absolute = [parse_check("error_rate < 1%").unwrap()];
        let few = [scope("all", stats(99, 99, 20), stats(1000, 0, 20))];
        assert_eq!(
            judge(&absolute, &few, 100),
            Judgement::Holding {
                judged: vec![false]
            }
        );
        let relative = [parse_check("p99 < 1.5x").unwrap()];
        let no_baseline = [scope("all", stats(500, 0, 900), stats(10, 0, 20))];
        assert_eq!(
            judge(&relative, &no_baseline, 100),
            Judgement::Holding {
                judged: vec![false]
            }
        );
    }

    #[test]
    fn relative_guards_compare_with_the_baseline() {
        let checks = [
            parse_check("p99 < 1.5 × baseline").unwrap(),
            parse_check("error_rate < baseline + 0.5%").unwrap(),
        ];
        let fine = [scope("all", stats(1000, 10, 140), stats(1000, 8, 100))];
        assert_eq!(
            judge(&checks, &fine, 100),
            Judgement::Holding {
                judged: vec![true, true]
            }
        );
        let slow = [scope("all", stats(1000, 0, 160), stats(1000, 0, 100))];
        assert_eq!(
            judge(&checks, &slow, 100),
            Judgement::Tripped(
                "guard tripped: all services p99 160ms > 150ms (1.5 × baseline 100ms) over 1,000 requests"
                    .into()
            )
        );
        let erring = [scope("all", stats(1000, 20, 100), stats(1000, 10, 100))];
        let Judgement::Tripped(cause) = judge(&checks, &erring, 100) else {
            panic!("should trip")
        };
        assert!(
            cause.contains("error_rate 2% > 1.5% (baseline 1% + 0.5%)"),
            "{cause}"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1832), "1,832");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
