//! Guards of a config change: what must stay true of the traffic after a
//! new version is applied, or the previous version is restored.
//!
//! A guard is one line, `[SERVICE:] METRIC < BOUND`:
//!
//! - `METRIC` is `error_rate` (5xx answers, connect failures and timeouts
//!   included, per request), `p50` or `p99` (whole-request latency);
//! - `BOUND` is absolute (`1%` for a rate, `300ms` for a latency) or
//!   relative to the baseline, the same figure over the window before the
//!   change: `baseline + 0.5%`, `baseline + 50ms`, `1.5 × baseline`
//!   (also written `1.5x baseline`, `1.5*baseline` or just `1.5x`);
//! - `SERVICE:` limits it to one service; without it the guard applies to
//!   every service and to all of them together.
//!
//! This module only parses; the proxy judges (see `reload::guard`).

use std::fmt;
use std::time::Duration;

use super::values::{format_duration, parse_duration};
use super::ServiceName;

/// How long a guard watches when no window is given.
pub const DEFAULT_GUARD_WINDOW: Duration = Duration::from_secs(60);
/// Fewest requests in the window for a verdict.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;
/// Longest guard window: the stats window keeps 15 minutes, and the
/// baseline is a window of the same length before the change.
pub const MAX_GUARD_WINDOW: Duration = Duration::from_secs(7 * 60);

/// What a guard measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMetric {
    /// Errors per request.
    ErrorRate,
    /// Median latency.
    P50,
    /// 99th percentile latency.
    P99,
}

impl GuardMetric {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMetric::ErrorRate => "error_rate",
            GuardMetric::P50 => "p50",
            GuardMetric::P99 => "p99",
        }
    }
}

/// The limit a guard's metric must stay below.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GuardBound {
    /// An error rate, as a fraction (0.01 for `1%`).
    Rate(f64),
    /// A latency.
    Latency(Duration),
    /// The baseline's error rate plus this fraction.
    BaselinePlusRate(f64),
    /// The baseline's latency plus this much.
    BaselinePlusLatency(Duration),
    /// The baseline's figure times this factor.
    BaselineTimes(f64),
}

impl GuardBound {
    /// Whether it needs a baseline.
    pub fn is_relative(self) -> bool {
        !matches!(self, GuardBound::Rate(_) | GuardBound::Latency(_))
    }
}

/// One guard.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardCheck {
    /// The one service it applies to; None for every service and all of
    /// them together.
    pub service: Option<ServiceName>,
    /// What it measures.
    pub metric: GuardMetric,
    /// The limit.
    pub bound: GuardBound,
}

/// Formats a fraction as a percentage with at most two decimals:
/// `0.125` → `12.5%`.
pub fn percent(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

impl fmt::Display for GuardCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(service) = &self.service {
            write!(f, "{service}: ")?;
        }
        write!(f, "{} < ", self.metric.as_str())?;
        match self.bound {
            GuardBound::Rate(r) => f.write_str(&percent(r)),
            GuardBound::Latency(d) => f.write_str(&format_duration(d)),
            GuardBound::BaselinePlusRate(r) => write!(f, "baseline + {}", percent(r)),
            GuardBound::BaselinePlusLatency(d) => {
                write!(f, "baseline + {}", format_duration(d))
            }
            GuardBound::BaselineTimes(x) => write!(f, "{x} × baseline"),
        }
    }
}

/// A guard window and its guards: what `guard:` in proxy.yaml, `--guard`
/// and the admin API's `guard=` give.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardSpec {
    /// The guards (at least one).
    pub checks: Vec<GuardCheck>,
    /// How long after the change they are watched.
    pub window: Duration,
    /// Fewest requests in the window for a verdict.
    pub min_requests: u64,
}

/// Parses one guard line, with an error that quotes it.
pub fn parse_check(text: &str) -> Result<GuardCheck, String> {
    let fail = |why: &str| format!("guard `{}`: {why}", text.trim());
    let Some((head, bound)) = text.split_once('<') else {
        return Err(fail(
            "write `METRIC < LIMIT`, e.g. `error_rate < 1%` or `p99 < 300ms` (only `<` is understood)",
        ));
    };
    // Service names may hold `:` themselves; metric names never do.
    let (service, metric) = match head.rsplit_once(':') {
        Some((service, metric)) => {
            let service = service.trim();
            super::values::check_name(service)
                .map_err(|why| fail(&format!("service name: {why}")))?;
            (Some(ServiceName::from(service)), metric)
        }
        None => (None, head),
    };
    let metric = match metric.trim() {
        "error_rate" => GuardMetric::ErrorRate,
        "p50" => GuardMetric::P50,
        "p99" => GuardMetric::P99,
        other => {
            return Err(fail(&format!(
                "unknown metric `{other}`; use error_rate, p50 or p99"
            )))
        }
    };
    let bound = bound.trim_start_matches('=');
    let bound = parse_bound(metric, bound).map_err(|why| fail(&why))?;
    Ok(GuardCheck {
        service,
        metric,
        bound,
    })
}

fn parse_bound(metric: GuardMetric, text: &str) -> Result<GuardBound, String> {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    if compact.is_empty() {
        return Err("the limit is missing".into());
    }
    if let Some(added) = compact.strip_prefix("baseline+") {
        return match absolute(metric, added)? {
            GuardBound::Rate(r) => Ok(GuardBound::BaselinePlusRate(r)),
            GuardBound::Latency(d) => Ok(GuardBound::BaselinePlusLatency(d)),
            other => Ok(other),
        };
    }
    let factor = compact
        .strip_suffix("baseline")
        .or_else(|| compact.strip_prefix("baseline"))
        .map(|f| f.trim_matches(|c| matches!(c, '×' | 'x' | '*')))
        .or_else(|| {
            compact
                .strip_suffix('x')
                .or_else(|| compact.strip_suffix('×'))
        });
    if let Some(factor) = factor {
        let value: f64 = factor.parse().map_err(|_| {
            format!("`{factor}` is not a factor; write e.g. `1.5 × baseline` or `1.5x`")
        })?;
        if !value.is_finite() || value <= 0.0 || value > 1000.0 {
            return Err(format!(
                "the factor must be more than 0 and at most 1000 (got {factor})"
            ));
        }
        return Ok(GuardBound::BaselineTimes(value));
    }
    absolute(metric, &compact)
}

fn absolute(metric: GuardMetric, text: &str) -> Result<GuardBound, String> {
    match metric {
        GuardMetric::ErrorRate => {
            let Some(number) = text.strip_suffix('%') else {
                return Err(format!(
                    "`{text}` is not a percentage; an error rate limit is written like `1%` or `0.5%`"
                ));
            };
            let value: f64 = number
                .parse()
                .map_err(|_| format!("`{text}` is not a percentage"))?;
            if !value.is_finite() || !(0.0..=100.0).contains(&value) {
                return Err(format!("`{text}` must be between 0% and 100%"));
            }
            Ok(GuardBound::Rate(value / 100.0))
        }
        GuardMetric::P50 | GuardMetric::P99 => {
            let duration = parse_duration(text).map_err(|why| {
                format!("{why} (a latency limit is written like `300ms` or `1.5s`)")
            })?;
            if duration.is_zero() {
                return Err("a latency limit must be more than zero".into());
            }
            Ok(GuardBound::Latency(duration))
        }
    }
}

/// Checks a guard window.
pub fn check_window(window: Duration) -> Result<(), String> {
    if window < Duration::from_secs(1) {
        return Err(format!(
            "the guard window must be at least 1s (got {})",
            format_duration(window)
        ));
    }
    if window > MAX_GUARD_WINDOW {
        return Err(format!(
            "the guard window can be at most {} (the baseline before the change needs as long again within the 15 minutes kept)",
            format_duration(MAX_GUARD_WINDOW)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_absolute_and_relative_guards() {
        let check = parse_check("error_rate < 1%").unwrap();
        assert_eq!(check.service, None);
        assert_eq!(check.bound, GuardBound::Rate(0.01));
        let check = parse_check("web: p99 < 300ms").unwrap();
        assert_eq!(check.service.as_ref().map(|s| s.as_str()), Some("web"));
        assert_eq!(check.metric, GuardMetric::P99);
        assert_eq!(check.bound, GuardBound::Latency(Duration::from_millis(300)));
        assert_eq!(
            parse_check("error_rate < baseline + 0.5%").unwrap().bound,
            GuardBound::BaselinePlusRate(0.005)
        );
        assert_eq!(
            parse_check("p50 < baseline + 20ms").unwrap().bound,
            GuardBound::BaselinePlusLatency(Duration::from_millis(20))
        );
        for text in [
            "p99 < 1.5 × baseline",
            "p99 < 1.5x baseline",
            "p99 < 1.5x",
            "p99<1.5*baseline",
            "p99 < baseline × 1.5",
        ] {
            assert_eq!(
                parse_check(text).unwrap().bound,
                GuardBound::BaselineTimes(1.5),
                "{text}"
            );
        }
        assert_eq!(
            parse_check("api: error_rate < 2.5%").unwrap().to_string(),
            "api: error_rate < 2.5%"
        );
    }

    #[test]
    fn bad_guards_are_named_and_explained() {
        for (text, why) in [
            ("error_rate > 1%", "only `<`"),
            ("errors < 1%", "unknown metric `errors`"),
            ("error_rate < 1", "not a percentage"),
            ("error_rate < 120%", "between 0% and 100%"),
            ("p99 < fast", "not a duration"),
            ("p99 < 0ms", "more than zero"),
            ("p99 < -1x", "more than 0"),
            ("p99 < fastx", "not a factor"),
            ("p99 < 0x", "more than 0"),
            ("we b: p99 < 1s", "service name"),
            ("p99 <", "missing"),
        ] {
            let error = parse_check(text).unwrap_err();
            assert!(error.contains(&format!("`{}`", text.trim())), "{error}");
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn percentages_are_short() {
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(0.01), "1%");
        assert_eq!(percent(0.0), "0%");
    }
}
