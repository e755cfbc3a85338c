//! The health state of one instance, as pure state machines: active-check
//! thresholds and passive ejection. The `health` module feeds them probe
//! results and traffic failures; the registry reads them when it builds a
//! snapshot. They live in the instance's shared state, so a reload never
//! resets a verdict.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// `now + after`, or a year from now should that overflow (a stand-in for
/// "never": validation keeps real values far below it).
pub fn deadline_after(now: Instant, after: Duration) -> Instant {
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}

/// Active-check state: consecutive passes and failures against the
/// thresholds, so one bad probe never removes an instance and one good probe
/// never brings a failing one back.
#[derive(Debug, Clone)]
pub struct ActiveHealth {
    /// The verdict.
    pub healthy: bool,
    /// Passes in a row.
    pub consecutive_passes: u32,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Set at proxy start-up: the first pass is enough, so the proxy serves
    /// within one probe instead of a whole threshold.
    pub first_check_pending: bool,
    /// Why the verdict is what it is.
    pub reason: String,
    /// When the last probe finished.
    pub last_check: Option<SystemTime>,
    /// The last probe's error, if it failed.
    pub last_error: Option<String>,
    /// How long the last probe took.
    pub last_latency: Option<Duration>,
}

/// A change of verdict, to be logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: &'static str,
    /// The state after.
    pub to: &'static str,
    /// Why, e.g. `3 consecutive failures: connect refused`.
    pub reason: String,
}

impl ActiveHealth {
    /// A new state. `startup` marks instances present when the proxy
    /// starts.
    pub fn new(healthy: bool, startup: bool) -> ActiveHealth {
        ActiveHealth {
            healthy,
            consecutive_passes: 0,
            consecutive_failures: 0,
            first_check_pending: startup && !healthy,
            reason: if healthy {
                "starts healthy (initial: healthy)".into()
            } else {
                "not checked yet".into()
            },
            last_check: None,
            last_error: None,
            last_latency: None,
        }
    }

    /// Records one probe result and returns the transition it caused.
    pub fn record(
        &mut self,
        result: Result<(), String>,
        latency: Duration,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
        now: SystemTime,
    ) -> Option<Transition> {
        self.last_check = Some(now);
        self.last_latency = Some(latency);
        let first = std::mem::take(&mut self.first_check_pending);
        match result {
            Ok(()) => {
                self.last_error = None;
                self.consecutive_failures = 0;
                self.consecutive_passes = self.consecutive_passes.saturating_add(1);
                let needed = if first { 1 } else { healthy_threshold };
                if !self.healthy && self.consecutive_passes >= needed {
                    self.healthy = true;
                    self.reason = if first {
                        "passed its first check at start-up".into()
                    } else {
                        format!("{} consecutive passes", self.consecutive_passes)
                    };
                    return Some(Transition {
                        from: "unhealthy",
                        to: "healthy",
                        reason: self.reason.clone(),
                    });
                }
            }
            Err(error) => {
                self.consecutive_passes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.healthy && self.consecutive_failures >= unhealthy_threshold {
                    self.healthy = false;
                    self.reason = format!(
                        "{} consecutive failures: {error}",
                        self.consecutive_failures
                    );
                    self.last_error = Some(error);
                    return Some(Transition {
                        from: "healthy",
                        to: "unhealthy",
                        reason: self.reason.clone(),
                    });
                }
                if !self.healthy {
                    self.reason = format!(
                        "{} consecutive failures: {error}",
                        self.consecutive_failures
                    );
                }
                self.last_error = Some(error);
            }
        }
        None
    }
}

/// Passive-check state: ejections for failures seen in real traffic.
#[derive(Debug, Clone, Default)]
pub struct Ejection {
    /// Ejected until then.
    pub until: Option<Instant>,
    /// Ejections so far; the next lasts one more base time. Reset after an
    /// instance stays clear for a whole `max_ejection_time`.
    pub count: u32,
    /// When the last ejection started.
    pub last_at: Option<Instant>,
    /// Why the last ejection happened.
    pub reason: String,
}

impl Ejection {
    /// Whether the instance is out at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Ends an ejection early (a passing active check proves the instance
    /// works, as Envoy's `successful_active_health_check_uneject_host`).
    /// Returns whether it was ejected. The count stays, so a relapse is
    /// ejected for longer.
    pub fn lift(&mut self, now: Instant) -> bool {
        let ejected = self.is_ejected(now);
        self.until = None;
        ejected
    }

    /// Ejects the instance from `now`; returns how long for:
    /// `base × ejections`, capped at `max`.
    pub fn eject(
        &mut self,
        now: Instant,
        base: Duration,
        max: Duration,
        reason: String,
    ) -> Duration {
        if self
            .last_at
            .is_some_and(|last| now.duration_since(last) > max.saturating_add(base))
        {
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        let duration = base.saturating_mul(self.count).min(max);
        self.until = Some(deadline_after(now, duration));
        self.last_at = Some(now);
        self.reason = reason;
        duration
    }
}

/// Everything the registry knows about an instance's health.
#[derive(Debug, Clone, Default)]
pub struct InstanceHealth {
    /// Active-check state, when the service has active checks.
    pub active: Option<ActiveHealth>,
    /// Passive ejection state.
    pub ejection: Ejection,
    /// Taken out of rotation by hand (registry API).
    pub drained: bool,
    /// The last changes of state, for the admin API.
    pub history: super::health_history::HealthHistory,
}

impl InstanceHealth {
    /// Whether the instance may take new requests at `now`.
    pub fn takes_traffic(&self, now: Instant) -> bool {
        !self.drained
            && self.active.as_ref().is_none_or(|a| a.healthy)
            && !self.ejection.is_ejected(now)
    }

    /// The one word of [`InstanceHealth::describe`], without building the
    /// reason.
    pub fn state_word(&self, now: Instant) -> &'static str {
        if self.drained {
            "drained"
        } else if self.active.as_ref().is_some_and(|a| !a.healthy) {
            "unhealthy"
        } else if self.ejection.is_ejected(now) {
            "ejected"
        } else {
            "healthy"
        }
    }

    /// A one-word state and the reason for it.
    pub fn describe(&self, now: Instant) -> (&'static str, String) {
        if self.drained {
            return ("drained", "taken out of rotation by hand".into());
        }
        if let Some(active) = self.active.as_ref().filter(|a| !a.healthy) {
            return ("unhealthy", active.reason.clone());
        }
        if self.ejection.is_ejected(now) {
            let left = self
                .ejection
                .until
                .map(|until| until.duration_since(now))
                .unwrap_or_default();
            return (
                "ejected",
                format!("{} ({:.1}s left)", self.ejection.reason, left.as_secs_f64()),
            );
        }
        match &self.active {
            Some(active) => ("healthy", active.reason.clone()),
            None => ("healthy", "no active checks".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(health: &mut ActiveHealth) -> Option<Transition> {
        health.record(
            Err("connect refused".into()),
            Duration::from_millis(1),
            2,
            3,
            SystemTime::now(),
        )
    }

    fn pass(health: &mut ActiveHealth) -> Option<Transition> {
        health.record(Ok(()), Duration::from_millis(1), 2, 3, SystemTime::now())
    }

    #[test]
    fn thresholds_stop_flapping() {
        let mut health = ActiveHealth::new(true, false);
        assert_eq!(fail(&mut health), None);
        assert_eq!(fail(&mut health), None);
        assert_eq!(pass(&mut health), None, "a pass resets the failure count");
        assert_eq!(fail(&mut health), None);
        assert_eq!(fail(&mut health), None);
        let down = fail(&mut health).unwrap();
        assert_eq!(down.reason, "3 consecutive failures: connect refused");
        assert!(!health.healthy);
        assert_eq!(pass(&mut health), None, "one pass is not enough");
        assert_eq!(fail(&mut health), None);
        assert_eq!(pass(&mut health), None);
        let up = pass(&mut health).unwrap();
        assert_eq!(
            (up.from, up.to, up.reason.as_str()),
            ("unhealthy", "healthy", "2 consecutive passes")
        );
    }

    #[test]
    fn first_check_at_start_up_needs_one_pass() {
        let mut health = ActiveHealth::new(false, true);
        assert_eq!(
            pass(&mut health).unwrap().reason,
            "passed its first check at start-up"
        );
        // Joining later needs the full threshold.
        let mut late = ActiveHealth::new(false, false);
        assert_eq!(pass(&mut late), None);
        assert!(pass(&mut late).is_some());
        // A failed first check at start-up falls back to the threshold.
        let mut slow = ActiveHealth::new(false, true);
        assert_eq!(fail(&mut slow), None);
        assert_eq!(pass(&mut slow), None);
        assert!(pass(&mut slow).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_grow_are_capped_and_expire() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(25);
        let mut ejection = Ejection::default();
        let now = Instant::now();
        assert_eq!(ejection.eject(now, base, max, "5 failures".into()), base);
        assert!(ejection.is_ejected(now + Duration::from_secs(9)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!ejection.is_ejected(Instant::now()));
        assert_eq!(
            ejection.eject(Instant::now(), base, max, "again".into()),
            Duration::from_secs(20)
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            ejection.eject(Instant::now(), base, max, "again".into()),
            max,
            "capped"
        );
        // A passing active check lifts an ejection early.
        assert!(ejection.is_ejected(Instant::now()));
        assert!(ejection.lift(Instant::now()));
        assert!(!ejection.is_ejected(Instant::now()));
        assert!(!ejection.lift(Instant::now()), "nothing left to lift");
        assert_eq!(ejection.count, 3, "the count stays");
        // A long quiet spell resets the multiplier.
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(
            ejection.eject(Instant::now(), base, max, "later".into()),
            base
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_ejections_do_not_overflow() {
        let mut ejection = Ejection::default();
        let now = Instant::now();
        let forever = Duration::MAX;
        assert_eq!(ejection.eject(now, forever, forever, "a".into()), forever);
        assert!(ejection.is_ejected(now + Duration::from_secs(300 * 86_400)));
        let later = now + Duration::from_secs(1);
        assert_eq!(ejection.eject(later, forever, forever, "b".into()), forever);
        assert_eq!(ejection.count, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_needs_every_verdict() {
        let now = Instant::now();
        let mut health = InstanceHealth::default();
        assert!(health.takes_traffic(now));
        health.active = Some(ActiveHealth::new(false, false));
        assert!(!health.takes_traffic(now));
        assert_eq!(health.describe(now).0, "unhealthy");
        health.active = Some(ActiveHealth::new(true, false));
        health.ejection.eject(
            now,
            Duration::from_secs(5),
            Duration::from_secs(5),
            "resets".into(),
        );
        assert!(!health.takes_traffic(now));
        assert_eq!(health.describe(now).0, "ejected");
        assert!(health.takes_traffic(now + Duration::from_secs(5)));
        health.drained = true;
        assert_eq!(health.describe(now + Duration::from_secs(5)).0, "drained");
    }
}
