use super::{hash_bytes, Member};

/// Virtual nodes per unit of weight. 100 points per instance keep the
/// spread of clients within a few percent of even.
const VNODES_PER_WEIGHT: u64 = 100;
/// Upper bound on ring points; above it every instance's share is scaled
/// down (keeping each instance's first points, so the ring stays stable).
const MAX_RING_POINTS: u64 = 200_000;

/// Consistent hashing of the client IP on a ring of virtual nodes.
///
/// An instance's points are hashes of its key, not of its position in the
/// list, so the ring does not depend on instance order; removing one
/// instance only reassigns the clients that were on it, each to the next
/// point clockwise, which spreads them over the others.
#[derive(Debug)]
pub struct IpHash {
    /// (point, instance index), sorted by point.
    ring: Vec<(u64, u32)>,
    /// `bucket_start[b]` is the first ring position whose point has `b` as
    /// its top `bits` bits; one extra entry holds the ring length. It turns
    /// the binary search over the whole ring into a search over a bucket of
    /// about one point.
    bucket_start: Vec<u32>,
    shift: u32,
}

impl IpHash {
    /// Builds the ring: O(points × log points), once per snapshot.
    pub fn new(members: &[Member<'_>]) -> Self {
        let wanted: u64 = members
            .iter()
            .map(|m| u64::from(m.weight.max(1)) * VNODES_PER_WEIGHT)
            .sum();
        let mut ring =
            Vec::with_capacity(usize::try_from(wanted.min(MAX_RING_POINTS)).unwrap_or(0));
        for (index, member) in members.iter().enumerate() {
            let mut points = u64::from(member.weight.max(1)) * VNODES_PER_WEIGHT;
            if wanted > MAX_RING_POINTS {
                points = (points * MAX_RING_POINTS / wanted).max(1);
            }
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let mut buf = Vec::with_capacity(member.key.len() + 9);
            for vnode in 0..points {
                buf.clear();
                buf.extend_from_slice(member.key.as_bytes());
                buf.push(b'#');
                buf.extend_from_slice(&vnode.to_le_bytes());
                ring.push((hash_bytes(&buf), index));
            }
        }
        // Ties (astronomically rare) are ordered by index for determinism.
        ring.sort_unstable();
        let bits = ring
            .len()
            .max(2)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, 16);
        let shift = 64 - bits;
        let mut bucket_start = Vec::with_capacity((1 << bits) + 1);
        let mut position = 0;
        for bucket in 0..(1u64 << bits) {
            while position < ring.len() && ring[position].0 >> shift < bucket {
                position += 1;
            }
            bucket_start.push(u32::try_from(position).unwrap_or(u32::MAX));
        }
        bucket_start.push(u32::try_from(ring.len()).unwrap_or(u32::MAX));
        IpHash {
            ring,
            bucket_start,
            shift,
        }
    }

    /// The instance owning `client_hash`, or the next one clockwise that is
    /// not in `excluded`.
    pub fn pick(&self, client_hash: u64, excluded: &[usize]) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let bucket = (client_hash >> self.shift) as usize;
        let low = self.bucket_start[bucket] as usize;
        let high = self.bucket_start[bucket + 1] as usize;
        let start = low + self.ring[low..high].partition_point(|&(point, _)| point < client_hash);
        let len = self.ring.len();
        (0..len)
            .map(|step| self.ring[(start + step) % len].1 as usize)
            .find(|i| !excluded.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{hash_ip, test_support::*};
    use std::net::{IpAddr, Ipv4Addr};

    fn clients() -> Vec<u64> {
        (0..10_000u32)
            .map(|i| hash_ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7))))
            .collect()
    }

    #[test]
    fn removing_one_of_ten_moves_only_its_clients() {
        let keys = keys(10);
        let before = IpHash::new(&members(&keys, &[1; 10]));
        // Remove instance 4; the rest keep their keys but shift position.
        let remaining: Vec<String> = keys
            .iter()
            .filter(|k| !k.ends_with(".4:80"))
            .cloned()
            .collect();
        let after = IpHash::new(&members(&remaining, &[1; 9]));

        let mut moved_from_removed = vec![0usize; 9];
        for client in clients() {
            let old = &keys[before.pick(client, &[]).unwrap()];
            let new = &remaining[after.pick(client, &[]).unwrap()];
            if old.ends_with(".4:80") {
                moved_from_removed[remaining.iter().position(|k| k == new).unwrap()] += 1;
            } else {
                assert_eq!(old, new, "a client of a remaining instance moved");
            }
        }
        let moved: usize = moved_from_removed.iter().sum();
        assert!(
            (600..=1_400).contains(&moved),
            "about 1/10 should move: {moved}"
        );
        let receivers = moved_from_removed.iter().filter(|&&n| n > 0).count();
        assert!(
            receivers >= 6,
            "moved clients should spread: {moved_from_removed:?}"
        );
    }

    #[test]
    fn bucket_lookup_matches_a_full_binary_search() {
        for n in [1, 3, 100] {
            let keys = keys(n);
            let ring = IpHash::new(&members(&keys, &vec![2; n]));
            for client in clients().into_iter().chain([0, u64::MAX]) {
                let full = ring.ring.partition_point(|&(p, _)| p < client) % ring.ring.len();
                assert_eq!(ring.pick(client, &[]), Some(ring.ring[full].1 as usize));
            }
        }
    }

    #[test]
    fn independent_of_instance_order() {
        let keys = keys(5);
        let reversed: Vec<String> = keys.iter().rev().cloned().collect();
        let a = IpHash::new(&members(&keys, &[1; 5]));
        let b = IpHash::new(&members(&reversed, &[1; 5]));
        for client in clients() {
            assert_eq!(
                keys[a.pick(client, &[]).unwrap()],
                reversed[b.pick(client, &[]).unwrap()]
            );
        }
    }

    #[test]
    fn spread_is_even_and_follows_weight() {
        let keys = keys(4);
        let ring = IpHash::new(&members(&keys, &[1, 1, 1, 3]));
        let mut counts = [0usize; 4];
        for client in clients() {
            counts[ring.pick(client, &[]).unwrap()] += 1;
        }
        // Expected 1,667 / 1,667 / 1,667 / 5,000.
        for &c in &counts[..3] {
            assert!((1_100..=2_300).contains(&c), "{counts:?}");
        }
        assert!((4_000..=6_000).contains(&counts[3]), "{counts:?}");
    }
}
