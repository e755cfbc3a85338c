//! The last few health changes of one instance (time, from, to, why), for
//! the admin status and the dashboard. Kept beside the instance's health
//! verdict, outside the snapshot, so a reload does not forget it; bounded
//! so a flapping instance costs a fixed amount of memory.

use std::collections::VecDeque;
use std::time::SystemTime;

/// How many changes an instance keeps.
pub const CHANGES_KEPT: usize = 10;

/// One change of an instance's health state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// When it changed.
    pub at: SystemTime,
    /// The state before (`healthy`, `unhealthy`, `ejected`, `drained`).
    pub from: &'static str,
    /// The state after.
    pub to: &'static str,
    /// Why.
    pub reason: String,
}

/// The newest [`CHANGES_KEPT`] changes, oldest first.
#[derive(Debug, Clone, Default)]
pub struct HealthHistory {
    changes: VecDeque<HealthChange>,
}

impl HealthHistory {
    /// Records a change from `from` to `to`; a non-change is not recorded.
    pub fn record(&mut self, from: &'static str, to: &'static str, reason: impl Into<String>) {
        if from == to {
            return;
        }
        if self.changes.len() == CHANGES_KEPT {
            self.changes.pop_front();
        }
        self.changes.push_back(HealthChange {
            at: SystemTime::now(),
            from,
            to,
            reason: reason.into(),
        });
    }

    /// The changes kept, oldest first.
    pub fn changes(&self) -> impl DoubleEndedIterator<Item = &HealthChange> {
        self.changes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_changes_only() {
        let mut history = HealthHistory::default();
        history.record("healthy", "healthy", "no change");
        assert_eq!(history.changes().count(), 0);
        for i in 0..CHANGES_KEPT + 3 {
            let (from, to) = if i % 2 == 0 {
                ("healthy", "unhealthy")
            } else {
                ("unhealthy", "healthy")
            };
            history.record(from, to, format!("change {i}"));
        }
        let reasons: Vec<&str> = history.changes().map(|c| c.reason.as_str()).collect();
        assert_eq!(reasons.len(), CHANGES_KEPT);
        assert_eq!(reasons[0], "change 3");
        assert_eq!(
            reasons[CHANGES_KEPT - 1],
            format!("change {}", CHANGES_KEPT + 2)
        );
    }
}
