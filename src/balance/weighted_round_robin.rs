use std::sync::atomic::{AtomicUsize, Ordering};

use super::Member;

/// Smooth weighted round-robin (the algorithm nginx uses), precomputed.
///
/// Each pick of the classic algorithm adds every weight to a running score,
/// takes the highest score and subtracts the total weight from it. That needs
/// a lock and O(n) per pick, so instead the whole cycle (sum of weights,
/// after dividing by their greatest common divisor) is computed once when the
/// snapshot is built, and a pick is one atomic increment and an index.
/// Every cycle gives each instance exactly `weight` picks, interleaved:
/// weights 5,1,1 give `a a b a c a a`.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    /// Computes the cycle: O(cycle length × instances), once per snapshot.
    pub fn new(members: &[Member<'_>]) -> Self {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        WeightedRoundRobin {
            schedule: smooth_schedule(&weights),
            next: AtomicUsize::new(0),
        }
    }

    /// The next instance of the cycle.
    pub fn pick(&self) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        Some(self.schedule[slot] as usize)
    }
}

/// One cycle of smooth weighted round-robin over `weights` (each at least
/// 1; 0 counts as 1): the index of the pick at each step. The cycle is the
/// sum of the weights divided by their greatest common divisor, and gives
/// each index exactly its share, interleaved.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().map(|w| (*w).max(1)).fold(0, gcd).max(1);
    let weights: Vec<i64> = weights
        .iter()
        .map(|w| i64::from((*w).max(1) / divisor))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, weight) in weights.iter().enumerate() {
            current[i] += weight;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        // Counts are far below u32::MAX (bounded by config size).
        schedule.push(u32::try_from(best).unwrap_or(u32::MAX));
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::*;

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let keys = keys(weights.len());
        let wrr = WeightedRoundRobin::new(&members(&keys, weights));
        (0..n).map(|_| wrr.pick().unwrap()).collect()
    }

    fn longest_run(picks: &[usize]) -> usize {
        picks
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn five_one_one_is_interleaved_and_exact() {
        let p = picks(&[5, 1, 1], 700);
        assert_eq!(&p[..7], &[0, 0, 1, 0, 2, 0, 0]);
        for cycle in p.chunks(7) {
            let count = |i| cycle.iter().filter(|&&x| x == i).count();
            assert_eq!((count(0), count(1), count(2)), (5, 1, 1));
        }
        assert!(longest_run(&p) < 5, "run of {}", longest_run(&p));
    }

    #[test]
    fn exact_shares_for_uneven_weights() {
        let weights = [3, 7, 2, 10];
        let p = picks(&weights, 22 * 50);
        for (i, w) in weights.iter().enumerate() {
            assert_eq!(p.iter().filter(|&&x| x == i).count(), *w as usize * 50);
        }
    }

    #[test]
    fn common_divisor_shortens_the_cycle() {
        let keys = keys(2);
        let wrr = WeightedRoundRobin::new(&members(&keys, &[100, 200]));
        assert_eq!(wrr.schedule, [1, 0, 1]);
    }
}
