//! Instances given by host name: resolved off the request path, every
//! A/AAAA record an instance (Envoy's STRICT_DNS). A transient failure
//! keeps the last answer (HAProxy's `hold`); NXDOMAIN or an empty answer
//! removes the name's instances.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{defaults, DnsConfig, NamedInstance, ServiceName};
use crate::registry::{NameAnswer, NameKey, Registry};

/// Limit on one query to one name server; a silent server is a transient
/// failure after this.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What one resolution of a name gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The addresses (sorted, deduplicated) and the shortest record TTL.
    Found(Vec<IpAddr>, Duration),
    /// NXDOMAIN, or no A/AAAA record: the name has no instances.
    Gone,
    /// Timeout, SERVFAIL, resolver unreachable: nothing is known.
    Failed(String),
}

/// A resolver asking `config.resolvers`, or those of `/etc/resolv.conf`
/// when none are given.
pub fn resolver(config: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = if config.resolvers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system DNS config: {e}"))?
    } else {
        let servers = config
            .resolvers
            .iter()
            .map(|address| {
                let mut server = NameServerConfig::udp_and_tcp(address.ip());
                for connection in &mut server.connections {
                    connection.port = address.port();
                }
                server
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 1;
    // Every refresh asks the server: the answer's TTL decides the next
    // refresh, not a cache in between.
    options.cache_size = 0;
    builder
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}

/// Resolves `host` once.
pub async fn resolve(resolver: &TokioResolver, host: &str) -> Resolution {
    // The overall bound covers retries over several name servers.
    let lookup = tokio::time::timeout(QUERY_TIMEOUT * 4, resolver.lookup_ip(host)).await;
    match lookup {
        Err(_) => Resolution::Failed(format!("no answer within {:?}", QUERY_TIMEOUT * 4)),
        Ok(Err(error)) if error.is_no_records_found() => Resolution::Gone,
        Ok(Err(error)) => Resolution::Failed(error.to_string()),
        Ok(Ok(answer)) => {
            let mut addresses: Vec<IpAddr> = answer.iter().collect();
            addresses.sort_unstable();
            addresses.dedup();
            if addresses.is_empty() {
                return Resolution::Gone;
            }
            let ttl = answer
                .as_lookup()
                .answers()
                .iter()
                .map(|record| Duration::from_secs(u64::from(record.ttl)))
                .min()
                .unwrap_or(defaults::DNS_MIN_REFRESH);
            Resolution::Found(addresses, ttl)
        }
    }
}

/// Starts resolving the host-name entries of every service (the file's,
/// registrations' and Consul's), and keeps following them: resolvers
/// start, stop and restart as reloads, registrations and Consul answers
/// change the names or the `dns` settings.
pub fn spawn(registry: Arc<Registry>) -> JoinHandle<()> {
    tokio::spawn(follow_names(registry))
}

type Settings = (Vec<(NameKey, NamedInstance)>, DnsConfig);

/// The host-name entries and DNS settings of every service that has some.
fn named_services(registry: &Registry) -> HashMap<ServiceName, Settings> {
    let dns = registry.config().dns.clone();
    registry
        .named_entries()
        .into_iter()
        .map(|(name, entries)| (name, (entries, dns.clone())))
        .collect()
}

async fn follow_names(registry: Arc<Registry>) {
    super::follow_services(registry, named_services, watch_service).await;
}

/// One name's last answer and since when resolving it fails.
#[derive(Default)]
struct NameState {
    addresses: Vec<IpAddr>,
    failing_since: Option<Instant>,
    error: Option<String>,
    warned: bool,
}

async fn watch_service(registry: Arc<Registry>, service: ServiceName, settings: Settings) {
    let (named, dns) = settings;
    // A restarted watcher (after a reload or a new registration) starts
    // from what the registry holds, so a failure on its first try removes
    // nothing.
    let current = registry.answers(&service);
    let mut names: Vec<NameState> = named
        .iter()
        .map(|(key, entry)| NameState {
            addresses: current
                .get(key)
                .filter(|answer| answer.host == entry.host)
                .map(|answer| answer.addresses.clone())
                .unwrap_or_default(),
            ..NameState::default()
        })
        .collect();
    let mut resolver = None;
    loop {
        let mut next = dns.refresh;
        if resolver.is_none() {
            match self::resolver(&dns) {
                Ok(r) => resolver = Some(r),
                Err(error) => {
                    tracing::warn!(service = %service, %error, "DNS resolver unavailable; keeping the last answers")
                }
            }
        }
        if let Some(resolver) = &resolver {
            // Names resolved in this round, so a name listed by several
            // entries is asked once.
            let mut asked: HashMap<&str, Resolution> = HashMap::new();
            for ((key, entry), state) in named.iter().zip(names.iter_mut()) {
                let resolution = match asked.get(entry.host.as_str()) {
                    Some(resolution) => resolution.clone(),
                    None => {
                        let resolution = resolve(resolver, &entry.host).await;
                        let result = match &resolution {
                            Resolution::Found(..) => "found",
                            Resolution::Gone => "gone",
                            Resolution::Failed(_) => "failed",
                        };
                        registry.metrics().dns_resolution(service.as_str(), result);
                        asked.insert(entry.host.as_str(), resolution.clone());
                        resolution
                    }
                };
                let source = key.source.as_str();
                match resolution {
                    Resolution::Found(addresses, ttl) => {
                        if state.failing_since.take().is_some() {
                            tracing::info!(service = %service, name = %entry.host, source, "DNS name resolves again");
                        }
                        state.warned = false;
                        state.error = None;
                        if addresses != state.addresses {
                            tracing::info!(service = %service, name = %entry.host, source, ?addresses, "DNS answer changed");
                        }
                        state.addresses = addresses;
                        if dns.respect_ttl {
                            next = next.min(
                                ttl.clamp(defaults::DNS_MIN_REFRESH, defaults::DNS_MAX_REFRESH),
                            );
                        }
                    }
                    Resolution::Gone => {
                        if !state.addresses.is_empty() {
                            tracing::warn!(service = %service, name = %entry.host, source, "DNS name does not exist or has no address; its instances are removed");
                        }
                        state.addresses.clear();
                        state.failing_since = None;
                        state.error = None;
                        state.warned = false;
                    }
                    Resolution::Failed(error) => {
                        let since = *state.failing_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= dns.hold && !state.warned {
                            state.warned = true;
                            tracing::warn!(service = %service, name = %entry.host, source, %error, hold = ?dns.hold, "DNS resolution keeps failing past dns.hold; the last known instances stay");
                        } else {
                            tracing::debug!(service = %service, name = %entry.host, source, %error, "DNS resolution failed; keeping the last answer");
                        }
                        state.error = Some(error);
                    }
                }
            }
        }
        let answers: BTreeMap<NameKey, NameAnswer> = named
            .iter()
            .zip(&names)
            .map(|((key, entry), state)| {
                let answer = NameAnswer {
                    host: entry.host.clone(),
                    addresses: state.addresses.clone(),
                    error: state.error.clone(),
                };
                (key.clone(), answer)
            })
            .collect();
        registry.set_answers(&service, answers);
        tokio::time::sleep(next).await;
    }
}
