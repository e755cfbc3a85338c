//! Load-balancing strategies: pure data structures built once per snapshot,
//! then only read by picks. No I/O, no locks, no allocation per pick.
//!
//! A balancer is built from the service's instances in snapshot order and
//! answers with an index into that list. Expensive work (rings, schedules,
//! cumulative weights) happens in [`Balancer::build`]; every pick is O(1) or
//! O(log n).

mod ip_hash;
mod least_connections;
mod random;
mod round_robin;
mod weighted_round_robin;

use std::fmt;
use std::str::FromStr;

pub use ip_hash::IpHash;
pub use least_connections::LeastConnections;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::{smooth_schedule, WeightedRoundRobin};

/// A load-balancing strategy, as named in proxy.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Each instance in turn.
    RoundRobin,
    /// Uniformly at random, in proportion to weight.
    Random,
    /// Smooth weighted round-robin (interleaved, exact per cycle).
    WeightedRoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastConnections,
    /// Consistent hashing on the client IP.
    IpHash,
}

impl Strategy {
    /// Every strategy, in documentation order.
    pub const ALL: [Strategy; 5] = [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::WeightedRoundRobin,
        Strategy::LeastConnections,
        Strategy::IpHash,
    ];

    /// The name used in proxy.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::IpHash => "ip_hash",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Strategy::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown strategy `{name}`; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// What a balancer is told about one instance when it is built.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// A stable identity (e.g. `service/instance-id`). `ip_hash` places the
    /// instance on its ring by this key, so the ring does not depend on the
    /// order instances are listed in.
    pub key: &'a str,
    /// Relative weight, at least 1.
    pub weight: u32,
}

/// Live load of an instance, read by `least_connections` at pick time.
pub trait Load {
    /// Requests currently in flight on this instance.
    fn in_flight(&self) -> u64;
}

/// A built balancer for one service's current instances.
#[derive(Debug)]
pub enum Balancer {
    /// See [`RoundRobin`].
    RoundRobin(RoundRobin),
    /// See [`Random`].
    Random(Random),
    /// See [`WeightedRoundRobin`].
    WeightedRoundRobin(WeightedRoundRobin),
    /// See [`LeastConnections`].
    LeastConnections(LeastConnections),
    /// See [`IpHash`].
    IpHash(IpHash),
}

impl Balancer {
    /// Builds the balancer for `members` (the snapshot's instance order).
    pub fn build(strategy: Strategy, members: &[Member<'_>]) -> Balancer {
        match strategy {
            Strategy::RoundRobin => Balancer::RoundRobin(RoundRobin::new(members.len())),
            Strategy::Random => Balancer::Random(Random::new(members)),
            Strategy::WeightedRoundRobin => {
                Balancer::WeightedRoundRobin(WeightedRoundRobin::new(members))
            }
            Strategy::LeastConnections => {
                Balancer::LeastConnections(LeastConnections::new(members))
            }
            Strategy::IpHash => Balancer::IpHash(IpHash::new(members)),
        }
    }

    /// Picks an instance index, or None when there are no instances.
    ///
    /// `client_hash` is [`hash_bytes`] of the client IP (only `ip_hash` uses
    /// it); `loads` are the instances in the order given to `build`.
    pub fn pick<L: Load>(&self, client_hash: u64, loads: &[L]) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(),
            Balancer::Random(b) => b.pick(),
            Balancer::WeightedRoundRobin(b) => b.pick(),
            Balancer::LeastConnections(b) => b.pick(loads, &[]),
            Balancer::IpHash(b) => b.pick(client_hash, &[]),
        }
    }

    /// Like [`Balancer::pick`], but never returns an index in `excluded`
    /// (the instances a retry already tried). None when all are excluded.
    pub fn pick_excluding<L: Load>(
        &self,
        client_hash: u64,
        loads: &[L],
        excluded: &[usize],
    ) -> Option<usize> {
        if excluded.is_empty() {
            return self.pick(client_hash, loads);
        }
        match self {
            Balancer::LeastConnections(b) => b.pick(loads, excluded),
            // On the ring, the next instance clockwise is where this
            // client's traffic goes when its own instance is gone.
            Balancer::IpHash(b) => b.pick(client_hash, excluded),
            _ => {
                let len = loads.len();
                let first = self.pick(client_hash, loads)?;
                (0..len)
                    .map(|step| (first + step) % len)
                    .find(|i| !excluded.contains(i))
            }
        }
    }
}

/// A stable 64-bit hash (FNV-1a, then a murmur3 finaliser to spread the
/// bits). Stable across runs and builds, unlike `std`'s SipHash with
/// random keys, so clients keep their instance across restarts.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(hash)
}

/// The murmur3 64-bit finaliser.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Hash of a client IP for `ip_hash`.
pub fn hash_ip(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_bytes(&v4.octets()),
            None => hash_bytes(&v6.octets()),
        },
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::{Load, Member};

    /// A fixed in-flight count.
    pub(crate) struct Fixed(pub(crate) u64);

    impl Load for Fixed {
        fn in_flight(&self) -> u64 {
            self.0
        }
    }

    pub(crate) fn idle(n: usize) -> Vec<Fixed> {
        (0..n).map(|_| Fixed(0)).collect()
    }

    pub(crate) fn members<'a>(keys: &'a [String], weights: &[u32]) -> Vec<Member<'a>> {
        keys.iter()
            .zip(weights)
            .map(|(key, &weight)| Member { key, weight })
            .collect()
    }

    pub(crate) fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("svc/10.0.0.{i}:80")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn strategy_names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
        }
        let err = "fastest".parse::<Strategy>().unwrap_err();
        assert!(err.contains("round_robin, random"), "{err}");
    }

    #[test]
    fn exclusion_never_returns_an_excluded_instance() {
        let keys = keys(4);
        let members = members(&keys, &[1, 2, 3, 4]);
        let loads = idle(4);
        for strategy in Strategy::ALL {
            let b = Balancer::build(strategy, &members);
            for client in 0..200u64 {
                let picked = b.pick_excluding(mix64(client), &loads, &[0, 2]).unwrap();
                assert!(picked == 1 || picked == 3, "{strategy}: {picked}");
            }
            assert_eq!(
                b.pick_excluding(1, &loads, &[0, 1, 2, 3]),
                None,
                "{strategy}"
            );
        }
    }

    #[test]
    fn empty_service_picks_nothing() {
        for strategy in Strategy::ALL {
            let b = Balancer::build(strategy, &[]);
            assert_eq!(b.pick(7, &idle(0)), None, "{strategy}");
        }
    }
}
