//! `GET /admin/stats`: recent traffic per service in time buckets, from
//! the per-second window ([`crate::stats_window`]), for the dashboard's
//! charts.
//!
//! `?seconds=N` (default and most: the whole window, 900) and `?step=S`
//! (default 10, at least 1) choose the range and bucket size; at most
//! [`MAX_POINTS`] buckets per series keep the answer small.

use serde::Serialize;

use crate::stats_window::{self, WindowStats, SECONDS_KEPT};

use super::AdminState;

/// The most buckets one series may have.
pub(super) const MAX_POINTS: u64 = 900;

#[derive(Serialize)]
pub(super) struct Stats {
    /// The Unix second the first bucket starts at.
    from: u64,
    /// Seconds per bucket.
    step: u64,
    /// Every service together.
    overall: Vec<Point>,
    services: Vec<ServiceSeries>,
}

#[derive(Serialize)]
struct ServiceSeries {
    name: String,
    points: Vec<Point>,
}

#[derive(Serialize)]
struct Point {
    /// The Unix second the bucket starts at.
    t: u64,
    requests: u64,
    errors: u64,
    /// Requests per second over the bucket.
    rate: f64,
    /// Errors per request, 0 to 1.
    error_rate: f64,
    /// Latency percentiles in milliseconds (null without requests).
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// The range a query asks for: (seconds, step).
fn parse(query: &str) -> Result<(u64, u64), String> {
    let (mut seconds, mut step) = (SECONDS_KEPT as u64, 10);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{key}=`{value}` is not a whole number\n"))
        };
        match key {
            "seconds" => seconds = number()?,
            "step" => step = number()?,
            other => {
                return Err(format!(
                    "unknown parameter `{other}`; use seconds and step\n"
                ))
            }
        }
    }
    if !(1..=SECONDS_KEPT as u64).contains(&seconds) {
        return Err(format!(
            "seconds must be between 1 and {SECONDS_KEPT} (the window kept)\n"
        ));
    }
    if step == 0 || step > seconds {
        return Err(format!("step must be between 1 and seconds ({seconds})\n"));
    }
    if seconds.div_ceil(step) > MAX_POINTS {
        return Err(format!(
            "seconds/step gives more than {MAX_POINTS} points; use a larger step\n"
        ));
    }
    Ok((seconds, step))
}

fn points(stats: Vec<WindowStats>, from: u64, step: u64) -> Vec<Point> {
    let millis = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    stats
        .into_iter()
        .zip(0u64..)
        .map(|(s, i)| Point {
            t: from + i * step,
            requests: s.requests,
            errors: s.errors,
            rate: s.requests as f64 / step as f64,
            error_rate: s.error_rate(),
            p50_ms: millis(s.p50),
            p99_ms: millis(s.p99),
        })
        .collect()
}

/// The series, or why the query cannot be answered.
pub(super) fn stats(state: &AdminState, query: &str) -> Result<Stats, String> {
    let (seconds, step) = parse(query)?;
    let count = seconds.div_ceil(step);
    // Buckets end with the present second, whole ones aligned to `step`
    // so a refresh moves points along rather than changing them all.
    let end = (stats_window::unix_now() / step + 1) * step;
    let from = end.saturating_sub(count * step);
    let count = usize::try_from(count).unwrap_or(0);
    let window = state.registry.metrics().window();
    let snapshot = state.registry.snapshot();
    Ok(Stats {
        from,
        step,
        overall: points(window.series(None, from, step, count), from, step),
        services: snapshot
            .services
            .iter()
            .map(|s| ServiceSeries {
                name: s.name.to_string(),
                points: points(
                    window.series(Some(s.name.as_str()), from, step, count),
                    from,
                    step,
                ),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn ranges_are_checked() {
        assert_eq!(parse(""), Ok((900, 10)));
        assert_eq!(parse("seconds=60&step=1"), Ok((60, 1)));
        assert!(parse("seconds=0").is_err());
        assert!(parse("seconds=901").is_err());
        assert!(parse("step=0").is_err());
        assert!(parse("seconds=10&step=20").is_err());
        assert!(parse("seconds=abc").unwrap_err().contains("seconds"));
        assert!(parse("span=3").unwrap_err().contains("span"));
    }
}
