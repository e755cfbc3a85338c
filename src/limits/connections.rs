//! Open connections per client IP on a listener
//! (`listeners[].limits.max_connections_per_ip`), nginx's `limit_conn` on
//! `$binary_remote_addr`. The client IP here is the socket peer: a
//! connection is admitted before any header could name another.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Shards of the table; an accept takes one shard's lock for one update.
const SHARDS: usize = 16;

/// Open connections by client IP, over every worker of a listener. Only IPs
/// with a connection open have an entry, so it is as large as the open
/// connections at most.
#[derive(Debug)]
pub struct ConnectionsPerIp {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl Default for ConnectionsPerIp {
    fn default() -> Self {
        ConnectionsPerIp {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// One open connection of an IP; counted until dropped.
#[derive(Debug)]
pub struct IpSlot {
    table: Arc<ConnectionsPerIp>,
    ip: IpAddr,
}

impl ConnectionsPerIp {
    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let index = match ip {
            IpAddr::V4(v4) => usize::from(v4.octets()[3]),
            IpAddr::V6(v6) => usize::from(v6.octets()[15]),
        } % self.shards.len();
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more connection from `ip`, or `None` when it has
    /// `max` open already.
    pub fn open(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut shard = self.shard(ip);
        let count = shard.entry(ip).or_insert(0);
        if *count as usize >= max {
            return None;
        }
        *count += 1;
        drop(shard);
        Some(IpSlot {
            table: Arc::clone(self),
            ip,
        })
    }

    /// Connections open from `ip`.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.shard(ip).get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut shard = self.table.shard(self.ip);
        if let Some(count) = shard.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ip_has_its_own_count_and_entries_go_when_closed() {
        let table = Arc::new(ConnectionsPerIp::default());
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = table.open(a, 2);
        let second = table.open(a, 2);
        assert!(first.is_some() && second.is_some());
        assert!(table.open(a, 2).is_none());
        assert!(table.open(b, 2).is_some());
        drop(first);
        assert_eq!(table.count(a), 1);
        assert!(table.open(a, 2).is_some());
        drop(second);
        assert_eq!(table.count(a), 0);
        assert!(table.shard(a).is_empty() || !table.shard(a).contains_key(&a));
    }
}
