//! Health checking: active probes (HTTP, TCP, latency, custom) and passive
//! outlier detection. Results are written into each instance's health
//! state in the registry; every change of verdict is logged once and asks
//! the registry for a snapshot rebuild (bursts coalesce into one).

mod probe;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use probe::{HttpCheck, TcpCheck};

use crate::config::{
    CheckKind, Config, ConfigError, ConfigErrors, HealthCheckConfig, InstanceId, ServiceName,
};
use crate::registry::{FailureStreak, InstanceKey, InstanceState, Registry};

/// What a check's future resolves to: `Ok` for a pass, or why it failed.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// An active health check of one instance. The built-in ones are
/// [`HttpCheck`] and [`TcpCheck`]; a program embedding switchyard can
/// register its own under a name and refer to it with
/// `health_check: {type: custom, name: …}`. The checker applies the
/// timeout, `max_latency` and the thresholds, exactly as for the built-ins.
pub trait HealthCheck: Send + Sync {
    /// Checks `target` once.
    fn check<'a>(&'a self, target: &'a CheckTarget) -> CheckFuture<'a>;

    /// Checks `target` once, telling a failure of the instance from one of
    /// our own (see [`CheckFailure::Local`]). The default counts every
    /// error of [`HealthCheck::check`] against the instance.
    fn probe<'a>(&'a self, target: &'a CheckTarget) -> ProbeFuture<'a> {
        Box::pin(async move { self.check(target).await.map_err(CheckFailure::Instance) })
    }
}

/// What [`HealthCheck::probe`] resolves to.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), CheckFailure>> + Send + 'a>>;

/// Why a probe did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    /// The instance failed the check: counts towards `unhealthy_threshold`.
    Instance(String),
    /// The probe could not run for a reason of this process (out of file
    /// descriptors, socket buffers or local ports): says nothing about the
    /// instance, so its verdict is left as it is.
    Local(String),
}

/// At most one log line per instance this often for probes that could not
/// run for a local reason.
const LOCAL_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Custom checks by the name configs use for them.
pub type CustomChecks = HashMap<String, Arc<dyn HealthCheck>>;

/// The instance a check looks at.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    /// Its service.
    pub service: ServiceName,
    /// Its id.
    pub instance: InstanceId,
    /// Its address.
    pub address: SocketAddr,
}

/// Config errors for custom checks that are not registered.
pub fn unknown_custom_checks(config: &Config, custom: &CustomChecks) -> Result<(), ConfigErrors> {
    let errors: Vec<ConfigError> = config
        .services
        .iter()
        .filter_map(
            |(name, service)| match service.health_check.as_ref().map(|c| &c.kind) {
                Some(CheckKind::Custom(check)) if !custom.contains_key(check) => {
                    Some(ConfigError {
                        path: format!("services.{name}.health_check.name"),
                        message: format!("no custom check named `{check}` is registered"),
                        location: None,
                    })
                }
                _ => None,
            },
        )
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Starts health checking for `registry`: probes follow the instance set,
/// failure streaks from the proxy become ejections, and health changes
/// rebuild the snapshot. Returns the tasks (abort them to stop).
pub fn spawn(registry: Arc<Registry>, custom: Arc<CustomChecks>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let rebuilds = Arc::clone(&registry);
    tasks.push(tokio::spawn(async move {
        loop {
            rebuilds.rebuild_when_asked().await;
        }
    }));
    if let Some(streaks) = registry.take_failure_streaks() {
        tasks.push(tokio::spawn(eject_on_streaks(
            Arc::clone(&registry),
            streaks,
        )));
    }
    tasks.push(tokio::spawn(follow_instances(registry, custom)));
    tasks
}

/// Keeps one probe task per checked instance: starts probes for new
/// instances, stops them for removed ones, restarts them when the check
/// settings change. Verdicts live in the instance state, so a restarted
/// probe continues from the verdict it had.
async fn follow_instances(registry: Arc<Registry>, custom: Arc<CustomChecks>) {
    let mut changes = registry.subscribe();
    let mut probes: HashMap<InstanceKey, (HealthCheckConfig, JoinHandle<()>)> = HashMap::new();
    loop {
        let config = registry.config();
        // Only checked services: instances registered elsewhere cost nothing here.
        let mut wanted = HashMap::new();
        for (name, service) in &config.services {
            let Some(check) = &service.health_check else {
                continue;
            };
            for instance in registry.instances_of(name) {
                wanted.insert(instance.key.clone(), (check.clone(), instance));
            }
        }
        probes.retain(|key, (check, task)| {
            let keep = wanted.get(key).is_some_and(|(wanted, _)| wanted == check);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, (check, instance)) in wanted {
            if probes.contains_key(&key) {
                continue;
            }
            let checker = checker_for(&check.kind, &custom);
            let task = tokio::spawn(probe_loop(
                Arc::clone(&registry),
                instance,
                check.clone(),
                checker,
            ));
            probes.insert(key, (check, task));
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
    for (_, (_, task)) in probes {
        task.abort();
    }
}

fn checker_for(kind: &CheckKind, custom: &CustomChecks) -> Arc<dyn HealthCheck> {
    match kind {
        CheckKind::Http(http) => Arc::new(HttpCheck::new(http.clone())),
        CheckKind::Tcp => Arc::new(TcpCheck),
        CheckKind::Custom(name) => match custom.get(name) {
            Some(check) => Arc::clone(check),
            // Validation refuses unknown names; fail loudly if one slips by.
            None => Arc::new(MissingCheck(name.clone())),
        },
    }
}

struct MissingCheck(String);

impl HealthCheck for MissingCheck {
    fn check<'a>(&'a self, _: &'a CheckTarget) -> CheckFuture<'a> {
        Box::pin(async move { Err(format!("no custom check named `{}` is registered", self.0)) })
    }
}

/// Probes one instance every `interval` (plus jitter), starting at once.
async fn probe_loop(
    registry: Arc<Registry>,
    instance: Arc<InstanceState>,
    check: HealthCheckConfig,
    checker: Arc<dyn HealthCheck>,
) {
    let target = CheckTarget {
        service: instance.key.service.clone(),
        instance: instance.key.id.clone(),
        address: instance.key.address,
    };
    let mut last_local_log: Option<Instant> = None;
    let mut local_failures: u64 = 0;
    loop {
        let started = Instant::now();
        let result = match tokio::time::timeout(check.timeout, checker.probe(&target)).await {
            Ok(Err(CheckFailure::Local(reason))) => {
                local_failures = local_failures.saturating_add(1);
                // Rate-limited: under descriptor pressure every probe of
                // every instance fails like this.
                if last_local_log
                    .is_none_or(|at: Instant| at.elapsed() >= LOCAL_FAILURE_LOG_INTERVAL)
                {
                    tracing::warn!(
                        service = %target.service,
                        instance = %target.instance,
                        %reason,
                        failures = local_failures,
                        "health probe could not run (a local error, not the instance's); verdict unchanged"
                    );
                    last_local_log = Some(Instant::now());
                    local_failures = 0;
                }
                let jitter =
                    fastrand::u64(..=u64::try_from(check.jitter.as_millis()).unwrap_or(u64::MAX));
                tokio::time::sleep(check.interval + Duration::from_millis(jitter)).await;
                continue;
            }
            Ok(Err(CheckFailure::Instance(reason))) => Err(reason),
            Ok(Ok(())) => Ok(()),
            Err(_) => Err(format!("timed out after {}", millis(check.timeout))),
        };
        let latency = started.elapsed();
        let result = match (result, check.max_latency) {
            (Ok(()), Some(max)) if latency > max => Err(format!(
                "too slow: {} > max_latency {}",
                millis(latency),
                millis(max)
            )),
            (result, _) => result,
        };
        let passed = result.is_ok();
        let (transition, lifted, held) = {
            let mut health = instance.health();
            let mut held = None;
            let transition = health.active.as_mut().and_then(|active| {
                let transition = active.record(
                    result,
                    latency,
                    check.healthy_threshold.get(),
                    check.unhealthy_threshold.get(),
                    SystemTime::now(),
                );
                if transition.is_none() {
                    held = held_by_threshold(
                        active,
                        check.healthy_threshold.get(),
                        check.unhealthy_threshold.get(),
                    );
                }
                transition
            });
            // A pass ends an outlier ejection (Envoy does the same by
            // default): the instance answers its checks, so try it again.
            let lifted = passed && health.ejection.lift(Instant::now());
            if let Some(t) = &transition {
                health.history.record(t.from, t.to, t.reason.clone());
            }
            if lifted {
                let now_state = health.state_word(Instant::now());
                health
                    .history
                    .record("ejected", now_state, "passed an active health check");
            }
            (
                transition,
                lifted.then(|| health.state_word(Instant::now())),
                held,
            )
        };
        if let Some((verdict, streak, threshold, reason)) = held {
            // Once per streak: the threshold held a flap back, visibly.
            tracing::info!(
                service = %target.service,
                instance = %target.instance,
                address = %target.address,
                stays = verdict,
                streak,
                threshold,
                reason,
                "health check result held back by the threshold; verdict unchanged"
            );
        }
        if let Some(now_state) = lifted {
            log_change(
                &instance.key,
                "ejected",
                now_state,
                &"passed an active health check",
            );
            registry
                .metrics()
                .health_transition(target.service.as_str(), now_state);
            registry.request_rebuild();
        }
        if let Some(transition) = transition {
            log_change(
                &instance.key,
                transition.from,
                transition.to,
                &transition.reason,
            );
            registry
                .metrics()
                .health_transition(target.service.as_str(), transition.to);
            registry.request_rebuild();
        }
        let jitter = fastrand::u64(..=u64::try_from(check.jitter.as_millis()).unwrap_or(u64::MAX));
        tokio::time::sleep(check.interval.saturating_add(Duration::from_millis(jitter))).await;
    }
}

/// Logs a change of verdict, once: coming up (to `healthy`) is routine and
/// logged at INFO; any other change needs an operator's eye, at WARN.
fn log_change(key: &InstanceKey, from: &str, to: &str, reason: &dyn std::fmt::Display) {
    // tracing fixes a call site's level at compile time: one site per level.
    macro_rules! changed {
        ($level:ident) => {
            tracing::$level!(
                service = %key.service,
                instance = %key.id,
                address = %key.address,
                from,
                to,
                reason = %reason,
                "instance health changed"
            )
        };
    }
    if to == "healthy" {
        changed!(info);
    } else {
        changed!(warn);
    }
}

/// When the result just recorded starts a streak that goes against the
/// verdict but is not yet long enough to change it: (the verdict that
/// stays, the streak, the threshold, what happened).
fn held_by_threshold(
    active: &crate::registry::health::ActiveHealth,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
) -> Option<(&'static str, u32, u32, String)> {
    if active.healthy && active.consecutive_failures == 1 && unhealthy_threshold > 1 {
        let error = active.last_error.clone().unwrap_or_default();
        return Some((
            "healthy",
            1,
            unhealthy_threshold,
            format!("failed: {error}"),
        ));
    }
    if !active.healthy && active.consecutive_passes == 1 && healthy_threshold > 1 {
        return Some(("unhealthy", 1, healthy_threshold, "passed".into()));
    }
    None
}

/// Turns failure streaks seen by the proxy into ejections, within the
/// service's `max_ejection_percent`, and brings instances back when their
/// time is up.
async fn eject_on_streaks(
    registry: Arc<Registry>,
    mut streaks: tokio::sync::mpsc::UnboundedReceiver<FailureStreak>,
) {
    while let Some(FailureStreak { instance, reason }) = streaks.recv().await {
        let snapshot = registry.snapshot();
        let Some(service) = snapshot
            .services
            .iter()
            .find(|s| s.name == instance.key.service)
        else {
            continue;
        };
        let Some(outlier) = &service.outlier_detection else {
            continue;
        };
        let now = Instant::now();
        let total = service.all_instances.len();
        let ejected = service
            .all_instances
            .iter()
            .filter(|i| i.state.health().ejection.is_ejected(now))
            .count();
        // The streak starts over either way.
        instance.stats.reset_failures();
        if instance.health().ejection.is_ejected(now) {
            continue;
        }
        if (ejected + 1) * 100 > total * usize::from(outlier.max_ejection_percent) {
            tracing::warn!(
                service = %instance.key.service,
                instance = %instance.key.id,
                %reason,
                ejected,
                total,
                max_ejection_percent = outlier.max_ejection_percent,
                "not ejecting: the service is at its max_ejection_percent"
            );
            continue;
        }
        let (duration, until) = {
            let mut health = instance.health();
            let duration = health.ejection.eject(
                now,
                outlier.base_ejection_time,
                outlier.max_ejection_time,
                reason.clone(),
            );
            health.history.record("healthy", "ejected", reason.clone());
            (duration, health.ejection.until)
        };
        tracing::warn!(
            service = %instance.key.service,
            instance = %instance.key.id,
            address = %instance.key.address,
            from = "healthy",
            to = "ejected",
            %reason,
            ejection_seconds = duration.as_secs_f64(),
            "instance health changed"
        );
        registry.metrics().ejection(instance.key.service.as_str());
        registry
            .metrics()
            .health_transition(instance.key.service.as_str(), "ejected");
        registry.request_rebuild();
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let (now_state, _) = {
                let mut health = instance.health();
                if health.ejection.until != until {
                    // Lifted early by a passing check, or ejected anew (whose
                    // own timer reports its end).
                    return;
                }
                let now_state = health.state_word(Instant::now());
                health
                    .history
                    .record("ejected", now_state, "ejection time is over");
                health.describe(Instant::now())
            };
            log_change(
                &instance.key,
                "ejected",
                now_state,
                &"ejection time is over",
            );
            registry
                .metrics()
                .health_transition(instance.key.service.as_str(), now_state);
            registry.request_rebuild();
        });
    }
}

fn millis(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}
