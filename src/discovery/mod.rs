//! Sources of instances other than the file's addresses: Consul, and the
//! file's host names resolved by DNS. Each source only ever
//! writes the registry; a source that fails keeps the last instances it
//! delivered (marked stale) until it recovers.

pub mod consul;
pub mod dns;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, ConsulConfig, ConsulDiscovery, InstanceId, ServiceName};
use crate::registry::{DiscoveryStatus, Registry};

/// First retry delay after a Consul error; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Queries allowed back to back before the rate limit applies.
const QUERY_BURST: u32 = 2;
/// One more query allowed per this much time. Consul suggests limiting the
/// loop when data churns; a second keeps a flapping service from turning
/// the blocking loop into a busy one while still following real changes
/// quickly.
const QUERY_REFILL: Duration = Duration::from_secs(1);

/// Starts following Consul for every service with `discovery`, and
/// resolving every instance host name, and keeps following the config:
/// watchers start, stop and restart as reloads add, remove or change
/// discovery settings.
pub fn spawn(registry: Arc<Registry>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(follow_config(Arc::clone(&registry))),
        dns::spawn(registry),
    ]
}

/// The Consul settings of every service with `discovery`.
fn consul_services(config: &Config) -> HashMap<ServiceName, (ConsulDiscovery, ConsulConfig)> {
    let Some(consul) = &config.consul else {
        return HashMap::new();
    };
    config
        .services
        .iter()
        .filter_map(|(name, service)| {
            service
                .discovery
                .clone()
                .map(|discovery| (name.clone(), (discovery, consul.clone())))
        })
        .collect()
}

async fn follow_config(registry: Arc<Registry>) {
    let wanted = |registry: &Registry| consul_services(&registry.config());
    follow_services(registry, wanted, |registry, service, settings| {
        let (discovery, consul) = settings;
        watch_service(registry, service, discovery, consul)
    })
    .await;
}

/// Keeps one task per service for the settings `wanted` reads from the
/// registry (its config, or its entries): after every publish it starts tasks for services that gained
/// settings, and stops (and restarts) those whose settings went (or
/// changed). Consul and DNS sources both follow the config this way.
async fn follow_services<S, W, F, Fut>(registry: Arc<Registry>, wanted: W, start: F)
where
    S: PartialEq + Clone,
    W: Fn(&Registry) -> HashMap<ServiceName, S>,
    F: Fn(Arc<Registry>, ServiceName, S) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut changes = registry.subscribe();
    let mut watchers: HashMap<ServiceName, (S, JoinHandle<()>)> = HashMap::new();
    loop {
        let wanted = wanted(&registry);
        watchers.retain(|name, (settings, task)| {
            let keep = wanted.get(name) == Some(settings);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, settings) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = watchers.entry(name) {
                let task = tokio::spawn(start(
                    Arc::clone(&registry),
                    slot.key().clone(),
                    settings.clone(),
                ));
                slot.insert((settings, task));
            }
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
    for (_, (_, task)) in watchers {
        task.abort();
    }
}

/// Follows one service with blocking queries, by the rules of Consul's
/// docs: start with a plain read, then block on the last index; if the
/// index goes backwards, start over; never block on an index below 1.
async fn watch_service(
    registry: Arc<Registry>,
    service: ServiceName,
    discovery: ConsulDiscovery,
    consul: ConsulConfig,
) {
    let mut index: u64 = 0;
    let mut backoff = MIN_BACKOFF;
    let mut bucket = TokenBucket::new(QUERY_BURST, QUERY_REFILL);
    let mut status = DiscoveryStatus::default();
    let mut members: Option<std::collections::BTreeSet<InstanceId>> = None;
    tracing::info!(service = %service, consul_service = %discovery.service, consul = %consul.address, "following Consul");
    loop {
        bucket.take().await;
        match consul::health_service(&consul, &discovery, index).await {
            Ok(answer) => {
                backoff = MIN_BACKOFF;
                for problem in &answer.refused {
                    tracing::warn!(service = %service, "Consul entry refused: {problem}");
                }
                if answer.index < index {
                    tracing::info!(service = %service, previous = index, now = answer.index, "Consul index went backwards; starting over");
                }
                let changed =
                    answer.index != status.index || status.stale || status.last_update.is_none();
                if status.stale {
                    tracing::info!(service = %service, "Consul reachable again; instances are current");
                }
                if changed {
                    status.last_update =
                        Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
                }
                status.stale = false;
                status.last_error = None;
                status.index = answer.index;
                registry.metrics().set_consul_stale(service.as_str(), false);
                // Status first, so whoever sees the new instances also sees
                // that they are current.
                registry.set_discovery_status(&service, status.clone());
                if changed {
                    tracing::debug!(service = %service, index = answer.index, instances = answer.instances.len(), "Consul instances");
                    log_membership(&service, &mut members, &answer.instances);
                    registry.set_discovered(&service, answer.instances);
                }
                index = if answer.index < index {
                    0
                } else {
                    answer.index.max(1)
                };
            }
            Err(error) => {
                if !status.stale {
                    tracing::warn!(service = %service, %error, "Consul query failed; keeping the last known instances (stale)");
                } else {
                    tracing::debug!(service = %service, %error, "Consul query failed again");
                }
                status.stale = true;
                status.last_error = Some(error);
                registry.metrics().consul_error(service.as_str());
                registry.metrics().set_consul_stale(service.as_str(), true);
                registry.set_discovery_status(&service, status.clone());
                // Full jitter: anywhere up to the current backoff.
                let delay = Duration::from_millis(fastrand::u64(..=backoff.as_millis() as u64))
                    .max(MIN_BACKOFF / 2);
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Logs, once per change, which instances Consul added to or removed from
/// `service` since the last answer (the first answer adds them all).
fn log_membership(
    service: &ServiceName,
    members: &mut Option<std::collections::BTreeSet<InstanceId>>,
    instances: &[crate::config::InstanceEntry],
) {
    let now: std::collections::BTreeSet<InstanceId> =
        instances.iter().map(|i| i.id().clone()).collect();
    let before = members.take().unwrap_or_default();
    let added: Vec<&str> = now.difference(&before).map(InstanceId::as_str).collect();
    let removed: Vec<&str> = before.difference(&now).map(InstanceId::as_str).collect();
    if !added.is_empty() || !removed.is_empty() {
        tracing::info!(
            service = %service,
            added = added.len(),
            removed = removed.len(),
            instances = now.len(),
            added_ids = %added.join(", "),
            removed_ids = %removed.join(", "),
            "Consul membership changed"
        );
    }
    *members = Some(now);
}

/// Allows `burst` queries at once, then one per `refill`.
struct TokenBucket {
    tokens: f64,
    burst: f64,
    refill: Duration,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: u32, refill: Duration) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            refill,
            last: Instant::now(),
        }
    }

    async fn take(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() / self.refill.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = self.refill.mul_f64(1.0 - self.tokens);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_one_per_refill() {
        let mut bucket = TokenBucket::new(2, Duration::from_secs(1));
        let start = Instant::now();
        bucket.take().await;
        bucket.take().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.take().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        bucket.take().await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
