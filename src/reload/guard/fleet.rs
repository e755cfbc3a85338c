//! Guarded pushes in fleet mode: the node that pushes judges the change
//! over the whole fleet's traffic, and a tripped guard's rollback is a
//! fleet push.
//!
//! The pushing node writes the new version as any push does, then a guard
//! record beside it (`config/guards/N`, under a lease while it runs). Every
//! node that sees a running record publishes its recent traffic (per
//! second, with latency histograms) every second instead of every 30 s.
//! Once a second the judge reads every node's status, keeps each node's
//! seconds (a later read replaces the seconds it covers), and merges the
//! nodes still publishing: the window is the seconds since the push, the
//! baseline the seconds before it (as long as the window, at most
//! [`BASELINE_MAX`]). There is no verdict before every node has published
//! since the push or is left out: a node whose status stops changing (or
//! does not change within [`SILENT_AFTER`] of the push) is left out of
//! window and baseline alike and named in the verdict.
//!
//! If the pushing node dies mid-guard, nobody takes over: the change
//! stays, and the record goes with the node's lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ScopeFigures;
use super::{held, judge_in, lock, report, FleetScope, GuardReport, GuardState, Guards, Judgement};
use crate::config::guard::GuardSpec;
use crate::config::history::{ChangeSource, ConfigVersion};
use crate::fleet::traffic::{self, FleetTraffic, RecentTraffic, ALL};
use crate::fleet::{Fleet, PushOutcome, StoredGuard};
use crate::reload::{guard_services_exist, ReloadError, ReloadOutcome, Reloader};
use crate::stats_window;

/// Longest baseline in fleet mode. Nodes publish their last 90 s; a node's
/// status from before the push may be up to 30 s old, and its first
/// status after the push must still hold the whole baseline.
const BASELINE_MAX: u64 = 60;
/// A node whose status was not rewritten for this long (it is rewritten
/// every second while a guard runs) is left out.
const SILENT_AFTER: Duration = Duration::from_secs(5);
/// After the window: time for the nodes' last seconds to be published.
const SETTLE: Duration = Duration::from_secs(2);
/// The lease of a running guard's record.
const RECORD_LEASE_TTL: i64 = 10;
/// Every this many seconds the running record is rewritten (the other
/// nodes keep publishing every second while they see it) and its lease
/// renewed.
const RECORD_REFRESH: u64 = 3;

/// A guard's verdict as `config versions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GuardSummary {
    /// The version guarded.
    #[serde(skip)]
    pub version: ConfigVersion,
    /// Where it stands.
    pub state: GuardState,
    /// The verdict in words, once there is one.
    pub verdict: Option<String>,
    /// The guards, as written.
    pub checks: Vec<String>,
    /// The version that restored the previous one, after a rollback.
    pub rollback_version: Option<ConfigVersion>,
}

impl From<&GuardReport> for GuardSummary {
    fn from(report: &GuardReport) -> Self {
        GuardSummary {
            version: report.version,
            state: report.state,
            verdict: report.verdict.clone(),
            checks: report.checks.clone(),
            rollback_version: report.rollback_version,
        }
    }
}

impl Reloader {
    /// In fleet mode: validates `text` and pushes it (if `base`, when given,
    /// is still current), watched by `guard` over the whole fleet when
    /// given. A change while this node's guard runs is refused unless
    /// `force` (which ends that guard, keeping its change).
    pub async fn push_guarded(
        self: &Arc<Self>,
        text: &str,
        cause: &str,
        base: Option<ConfigVersion>,
        guard: Option<GuardSpec>,
        force: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        let config = self.parse_shared(text)?;
        if let Some(running) = self.guards.watching() {
            if !force {
                return Err(refusal(&running));
            }
            if self.guards.end_by_force(cause).is_some() {
                self.registry.metrics().guard_verdict("ended_by_force");
            }
        }
        if let Some(fleet) = self.fleet() {
            if let Some((node, version)) = fleet.guard_elsewhere().filter(|_| !force) {
                return Err(ReloadError::GuardElsewhere { node, version });
            }
        }
        let Some(spec) = guard else {
            return self.push(text, cause, base).await;
        };
        guard_services_exist(&spec, &config)?;
        let Some(fleet) = self.fleet().cloned() else {
            return Err(ReloadError::NotFleet);
        };
        let store = fleet.store().await.inspect_err(|_| fleet.etcd_error())?;
        let current = store.current().await.inspect_err(|_| fleet.etcd_error())?;
        let previous = match (base, current) {
            (Some(base), _) => base,
            (None, Some(current)) => current.version.info.version,
            (None, None) => {
                return Err(ReloadError::BadGuard(
                    "the fleet has no version yet for a guard to restore; push the first version without a guard".into(),
                ))
            }
        };
        let version = match fleet
            .push(text, ChangeSource::Push, cause, None, Some(previous))
            .await?
        {
            PushOutcome::Pushed(version) => version,
            PushOutcome::Unchanged(_) => return Ok(ReloadOutcome::Unchanged),
        };
        let start = stats_window::unix_now();
        let mut report = report(&spec, version, previous);
        report.fleet = Some(FleetScope {
            nodes: vec![fleet.node().to_string()],
            left_out: Vec::new(),
        });
        let stop = self.guards.start(report.clone());
        tracing::info!(%version, restores = %previous, guards = %report.checks.join(", "), window = ?spec.window, "config version pushed to the fleet under guard");
        let services = config.services.keys().map(ToString::to_string).collect();
        let watch = FleetWatch {
            reloader: Arc::clone(self),
            fleet,
            spec,
            version,
            start,
            services,
            lease: None,
        };
        tokio::spawn(watch.run(stop));
        Ok(ReloadOutcome::Pushed {
            version,
            guard: Some(report),
        })
    }

    /// The guard verdicts to show beside the versions: this process's
    /// reports, and in fleet mode the records every judging node left in
    /// etcd.
    pub async fn guard_summaries(&self) -> Vec<GuardSummary> {
        let mut summaries: Vec<GuardSummary> = self
            .guards
            .reports()
            .iter()
            .map(GuardSummary::from)
            .collect();
        let Some(fleet) = self.fleet() else {
            return summaries;
        };
        let records = match fleet.store().await {
            Ok(store) => store.guard_records().await,
            Err(error) => Err(error),
        };
        match records {
            Ok(records) => {
                for record in records {
                    // This process's own report is the fresher one.
                    if summaries.iter().any(|s| s.version == record.version) {
                        continue;
                    }
                    let Ok(state) = serde_json::from_value::<GuardState>(
                        serde_json::Value::String(record.state.clone()),
                    ) else {
                        continue;
                    };
                    summaries.push(GuardSummary {
                        version: record.version,
                        state,
                        verdict: record.verdict,
                        checks: record.checks,
                        rollback_version: record.rollback_version,
                    });
                }
            }
            Err(error) => {
                fleet.etcd_error();
                tracing::debug!(%error, "cannot read the fleet's guard records");
            }
        }
        summaries
    }
}

/// The refusal of a change while `running` watches.
pub(crate) fn refusal(running: &GuardReport) -> ReloadError {
    ReloadError::GuardRunning {
        version: running.version,
        remaining: running
            .window_seconds
            .saturating_sub(running.elapsed_seconds),
    }
}

impl Guards {
    fn set_fleet(&self, version: ConfigVersion, scope: FleetScope) {
        if let Some(running) = lock(&self.running).as_mut() {
            if running.report.version == version {
                running.report.fleet = Some(scope);
            }
        }
    }

    fn finished(&self, version: ConfigVersion) -> Option<GuardReport> {
        lock(&self.finished)
            .iter()
            .rev()
            .find(|r| r.version == version)
            .cloned()
    }
}

/// What the judge knows of a node's status key.
struct Seen {
    revision: i64,
    /// When its revision last changed (or it was first seen).
    changed: Instant,
    /// It published since the push.
    since_push: bool,
}

/// The part of a node's status the judge reads.
#[derive(Deserialize)]
struct Published {
    #[serde(default)]
    recent: Option<RecentTraffic>,
}

/// One guarded push being watched.
struct FleetWatch {
    reloader: Arc<Reloader>,
    fleet: Arc<Fleet>,
    spec: GuardSpec,
    version: ConfigVersion,
    /// The Unix second of the push: the window starts with it.
    start: u64,
    services: Vec<String>,
    /// The running record's lease.
    lease: Option<i64>,
}

fn nodes_note(scope: &FleetScope) -> String {
    let count = scope.nodes.len();
    let mut note = format!("{count} node{}", if count == 1 { "" } else { "s" });
    if !scope.left_out.is_empty() {
        note.push_str(&format!(
            "; left out, not publishing their figures: {}",
            scope.left_out.join(", ")
        ));
    }
    note
}

impl FleetWatch {
    async fn run(mut self, stop: Arc<tokio::sync::Notify>) {
        let length = self.spec.window.as_secs().max(1);
        let baseline = length.min(BASELINE_MAX);
        let began = Instant::now();
        let own = self.fleet.node().to_string();
        self.fleet
            .watch_closely(Some(self.spec.window + SETTLE + SILENT_AFTER));
        self.lease = self.grant().await;
        self.write_running().await;
        let window = Arc::clone(self.reloader.registry.metrics().window());
        let mut traffic = FleetTraffic::default();
        let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        let (judged, scope) = loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.notified() => {
                    // Ended by a forced change on this node.
                    self.write_final().await;
                    return;
                }
            }
            ticks += 1;
            let serving = self.reloader.status().current_version;
            if let Some(newer) = serving.filter(|v| *v > self.version) {
                let verdict =
                    format!("kept: version {newer} was pushed meanwhile, which ends this guard");
                if self
                    .reloader
                    .guards
                    .finish(self.version, GuardState::EndedByForce, verdict)
                {
                    self.reloader
                        .registry
                        .metrics()
                        .guard_verdict("ended_by_force");
                }
                self.write_final().await;
                return;
            }
            self.read_nodes(&own, &mut traffic, &mut seen, ticks == 1)
                .await;
            let now = stats_window::unix_now();
            traffic.absorb(&own, &traffic::recent(&window, now));
            let scope = classify(&own, &seen, began.elapsed());
            // Nodes that have not published since the push yet (and are
            // not late enough to be left out): no verdict without them.
            let pending = (seen.len() + 1).saturating_sub(scope.nodes.len() + scope.left_out.len());
            let included: Vec<&str> = scope.nodes.iter().map(String::as_str).collect();
            let to = (self.start + length).min(now + 1);
            let figures: Vec<ScopeFigures> = std::iter::once(ALL.to_string())
                .chain(self.services.iter().cloned())
                .map(|name| ScopeFigures {
                    window: traffic.stats(included.iter().copied(), &name, self.start, to),
                    baseline: traffic.stats(
                        included.iter().copied(),
                        &name,
                        self.start.saturating_sub(baseline),
                        self.start,
                    ),
                    scope: name,
                })
                .collect();
            let elapsed = began.elapsed();
            let verdict = judge_in(
                &self.spec.checks,
                &figures,
                self.spec.min_requests,
                "fleet ",
            );
            self.reloader
                .guards
                .update(self.version, elapsed.as_secs().min(length), figures);
            self.reloader.guards.set_fleet(self.version, scope.clone());
            match verdict {
                _ if pending > 0 => {}
                Judgement::Tripped(cause) => {
                    let cause = format!("{cause} ({})", nodes_note(&scope));
                    self.trip(cause).await;
                    return;
                }
                Judgement::Holding { judged } if elapsed >= self.spec.window + SETTLE => {
                    break (judged, scope)
                }
                Judgement::Holding { .. } => {}
            }
            if ticks.is_multiple_of(RECORD_REFRESH) {
                self.renew().await;
                self.write_running().await;
            }
        };
        let (state, verdict) = held(&self.spec, &judged, length);
        let verdict = format!("{verdict} ({})", nodes_note(&scope));
        if self
            .reloader
            .guards
            .finish(self.version, state, verdict.clone())
        {
            tracing::info!(version = %self.version, verdict = %verdict, "fleet config guard ended; the change is kept");
            self.reloader
                .registry
                .metrics()
                .guard_verdict(state.as_str());
        }
        self.write_final().await;
    }

    /// Reads every node's status; takes in the recent traffic of those
    /// that published something new.
    async fn read_nodes(
        &self,
        own: &str,
        traffic: &mut FleetTraffic,
        seen: &mut BTreeMap<String, Seen>,
        first: bool,
    ) {
        let records = match self.fleet.store().await {
            Ok(store) => store.node_records().await,
            Err(error) => Err(error),
        };
        let records = match records {
            Ok(records) => records,
            Err(error) => {
                self.fleet.etcd_error();
                tracing::debug!(%error, "the fleet guard cannot read the nodes' figures");
                return;
            }
        };
        for (node, record) in records {
            if node == own {
                continue;
            }
            match seen.get_mut(&node) {
                Some(known) if known.revision == record.mod_revision => continue,
                Some(known) => {
                    known.revision = record.mod_revision;
                    known.changed = Instant::now();
                    known.since_push = true;
                }
                None => {
                    seen.insert(
                        node.clone(),
                        Seen {
                            revision: record.mod_revision,
                            changed: Instant::now(),
                            // A node first seen later joined after the push.
                            since_push: !first,
                        },
                    );
                }
            }
            match serde_json::from_slice::<Published>(&record.value) {
                Ok(Published {
                    recent: Some(recent),
                }) => traffic.absorb(&node, &recent),
                Ok(Published { recent: None }) => {}
                Err(error) => {
                    tracing::debug!(%node, %error, "a node's status is unreadable; its figures are not counted")
                }
            }
        }
    }

    async fn trip(&mut self, cause: String) {
        let Some(previous) = self.reloader.guards.trip(self.version, cause.clone()) else {
            return;
        };
        tracing::warn!(version = %self.version, restores = %previous, "{cause}; pushing the previous config version to the fleet");
        self.reloader
            .registry
            .metrics()
            .guard_verdict("rolled_back");
        self.write_record(GuardState::RollingBack).await;
        let result = self.restore(previous, &cause).await;
        if let Err(error) = &result {
            tracing::error!(version = %self.version, %error, "the fleet guard could not restore the previous config version");
        }
        self.reloader.guards.rolled_back(self.version, result);
        self.write_final().await;
    }

    /// Pushes `previous`'s text as a new version, if the guarded version
    /// is still current (a newer push is not overwritten).
    async fn restore(
        &self,
        previous: ConfigVersion,
        cause: &str,
    ) -> Result<Option<ConfigVersion>, String> {
        let text = self
            .reloader
            .version_text(previous)
            .await
            .map_err(|e| e.to_string())?;
        self.reloader
            .parse_shared(&text)
            .map_err(|e| e.to_string())?;
        match self
            .fleet
            .push(
                &text,
                ChangeSource::Rollback,
                cause,
                Some(previous),
                Some(self.version),
            )
            .await
        {
            Ok(PushOutcome::Pushed(new)) => {
                tracing::info!(version = %new, restores = %previous, "rollback pushed to the fleet");
                Ok(Some(new))
            }
            Ok(PushOutcome::Unchanged(_)) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn grant(&self) -> Option<i64> {
        let granted = match self.fleet.store().await {
            Ok(store) => store.grant(RECORD_LEASE_TTL).await,
            Err(error) => Err(error),
        };
        match granted {
            Ok(lease) => Some(lease),
            Err(error) => {
                self.fleet.etcd_error();
                tracing::warn!(%error, "cannot write the fleet guard's record; the guard runs on");
                None
            }
        }
    }

    async fn renew(&mut self) {
        let renewed = match (self.lease, self.fleet.store().await) {
            (Some(lease), Ok(store)) => store.renew(lease).await.unwrap_or(false),
            _ => false,
        };
        if !renewed {
            self.lease = self.grant().await;
        }
    }

    fn stored(&self, report: &GuardReport) -> StoredGuard {
        let scope = report.fleet.clone().unwrap_or_default();
        StoredGuard {
            version: report.version,
            previous: report.previous,
            node: self.fleet.node().to_string(),
            checks: report.checks.clone(),
            window_seconds: report.window_seconds,
            started_at: report.started_at.clone(),
            state: report.state.as_str().to_string(),
            verdict: report.verdict.clone(),
            rollback_version: report.rollback_version,
            nodes: scope.nodes,
            left_out: scope.left_out,
        }
    }

    async fn write_running(&self) {
        self.write_record(GuardState::Running).await;
    }

    /// Writes the running guard's record (in `state`), under the lease.
    async fn write_record(&self, state: GuardState) {
        let Some(lease) = self.lease else { return };
        let Some(mut report) = self.reloader.guards.running() else {
            return;
        };
        if report.version != self.version {
            return;
        }
        report.state = state;
        let record = self.stored(&report);
        let written = match self.fleet.store().await {
            Ok(store) => store.put_guard(&record, Some(lease)).await,
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            self.fleet.etcd_error();
            tracing::debug!(%error, "cannot write the fleet guard's record");
        }
    }

    /// Writes the finished guard's record for good (no lease) and ends the
    /// lease; tried a few times, as it is what every node shows.
    async fn write_final(&self) {
        self.fleet.watch_closely(None);
        let Some(report) = self.reloader.guards.finished(self.version) else {
            return;
        };
        let record = self.stored(&report);
        for attempt in 1..=3 {
            let written = match self.fleet.store().await {
                Ok(store) => store.put_guard(&record, None).await,
                Err(error) => Err(error),
            };
            match written {
                Ok(()) => break,
                Err(error) if attempt == 3 => {
                    self.fleet.etcd_error();
                    tracing::warn!(version = %self.version, %error, "cannot record the fleet guard's verdict in etcd; only this node knows it");
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        if let (Some(lease), Ok(store)) = (self.lease, self.fleet.store().await) {
            let _ = store.revoke(lease).await;
        }
    }
}

/// Which nodes' figures count: this node always; another once it has
/// published since the push, as long as it keeps publishing. A node that
/// stopped (or never published since the push, [`SILENT_AFTER`] into the
/// window) is left out; until then it is pending, and the judge waits
/// for it.
fn classify(own: &str, seen: &BTreeMap<String, Seen>, elapsed: Duration) -> FleetScope {
    let mut scope = FleetScope {
        nodes: vec![own.to_string()],
        left_out: Vec::new(),
    };
    for (node, known) in seen {
        let silent = known.changed.elapsed() >= SILENT_AFTER;
        if known.since_push && !silent {
            scope.nodes.push(node.clone());
        } else if known.since_push || elapsed >= SILENT_AFTER {
            scope.left_out.push(node.clone());
        }
    }
    scope.nodes.sort();
    scope
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_nodes_are_left_out_and_named() {
        let now = Instant::now();
        let ago = |s: u64| now.checked_sub(Duration::from_secs(s)).unwrap_or(now);
        let mut seen = BTreeMap::new();
        let node = |changed, since_push| Seen {
            revision: 1,
            changed,
            since_push,
        };
        seen.insert("b".to_string(), node(ago(1), true));
        seen.insert("c".to_string(), node(ago(30), true));
        seen.insert("d".to_string(), node(ago(0), false));
        let early = classify("a", &seen, Duration::from_secs(1));
        assert_eq!(early.nodes, ["a", "b"]);
        // d has not published since the push yet: pending, not named.
        assert_eq!(early.left_out, ["c"]);
        let late = classify("a", &seen, Duration::from_secs(6));
        assert_eq!(late.left_out, ["c", "d"]);
        assert_eq!(
            nodes_note(&late),
            "2 nodes; left out, not publishing their figures: c, d"
        );
        assert_eq!(
            nodes_note(&FleetScope {
                nodes: vec!["a".into()],
                left_out: vec![]
            }),
            "1 node"
        );
    }
}
