//! The split decision of a route: which backend a request goes to.
//!
//! Two ways, both precomputed when the snapshot is built:
//! - **smooth**: a precomputed cycle of smooth weighted round-robin over
//!   the backends, read with one shared counter. Exact per cycle (95/5
//!   gives 19 of one, 1 of the other, in every 20 requests, interleaved).
//!   The counter lives outside the snapshot ([`SplitCounters`]), so a
//!   reload that changes the weights continues the count instead of
//!   restarting it.
//! - **consistent** (`split_by`): the key's stable hash is a point in
//!   `[0, 1)`, and each backend owns a contiguous range of it, as wide as
//!   its share, in config order. The same key lands on the same backend
//!   while the weights stay; moving one boundary (95/5 → 90/10) moves only
//!   the keys between the old and the new boundary, all to the backend
//!   that grew.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::balance::smooth_schedule;

/// A built split over a route's backends.
#[derive(Debug)]
pub struct Split {
    /// Backend index per slot of the smooth cycle (backends with weight 0
    /// have none).
    schedule: Arc<[u32]>,
    /// Shared with later snapshots of the same route.
    counter: Arc<AtomicU64>,
    /// Running sums of the weights, per backend.
    cumulative: Box<[u64]>,
    total: u64,
}

impl Split {
    /// The split for `weights` (at least one above 0), counting with
    /// `counter` over `schedule` (see [`SplitCounters::get`]).
    fn new(weights: &[u32], schedule: Arc<[u32]>, counter: Arc<AtomicU64>) -> Split {
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += u64::from(*w);
                sum
            })
            .collect();
        Split {
            schedule,
            counter,
            cumulative,
            total: sum,
        }
    }

    /// The next backend of the smooth cycle.
    pub fn smooth(&self) -> usize {
        let len = self.schedule.len() as u64;
        if len == 0 {
            return 0;
        }
        let slot = self.counter.fetch_add(1, Ordering::Relaxed) % len;
        // `slot < len`, which came from a usize.
        self.schedule[slot as usize] as usize
    }

    /// The backend owning `key_hash` (a uniform 64-bit hash of the key).
    pub fn consistent(&self, key_hash: u64) -> usize {
        // The point is key_hash / 2^64 scaled to the total weight: exact
        // in 128 bits, and the same fraction for the same shares.
        let point = ((u128::from(key_hash) * u128::from(self.total)) >> 64) as u64;
        self.cumulative
            .partition_point(|&end| end <= point)
            .min(self.cumulative.len().saturating_sub(1))
    }

    /// The split decision: consistent when the request has a key, smooth
    /// otherwise. An index into the route's backends.
    pub fn choose(&self, key_hash: Option<u64>) -> usize {
        if self.cumulative.len() <= 1 {
            return 0;
        }
        match key_hash {
            Some(hash) => self.consistent(hash),
            None => self.smooth(),
        }
    }
}

/// The smooth splits' counters and cycles, by route, kept across snapshots
/// so that a reload changing the weights resets nothing. Only touched when
/// a snapshot is built.
#[derive(Debug, Default)]
pub struct SplitCounters {
    entries: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    counter: Arc<AtomicU64>,
    weights: Vec<u32>,
    schedule: Arc<[u32]>,
    /// The build that last used it.
    seen: u64,
}

impl SplitCounters {
    /// The split of route `key` with `weights`, at build `generation`: the
    /// route's counter (new for a new route), and its cycle, recomputed
    /// only when the weights changed.
    pub fn split(&mut self, key: &str, weights: &[u32], generation: u64) -> Split {
        let entry = self
            .entries
            .entry(key.to_string())
            .or_insert_with(|| Entry {
                counter: Arc::new(AtomicU64::new(0)),
                weights: Vec::new(),
                schedule: Arc::from(Vec::new()),
                seen: generation,
            });
        if entry.weights != weights || entry.schedule.is_empty() {
            entry.weights = weights.to_vec();
            entry.schedule = schedule(weights);
        }
        entry.seen = generation;
        Split::new(
            weights,
            Arc::clone(&entry.schedule),
            Arc::clone(&entry.counter),
        )
    }

    /// Forgets routes no build since `generation` has used.
    pub fn forget_before(&mut self, generation: u64) {
        self.entries.retain(|_, entry| entry.seen >= generation);
    }
}

/// The smooth cycle over the backends with weight above 0, as indexes into
/// all backends.
fn schedule(weights: &[u32]) -> Arc<[u32]> {
    let live: Vec<u32> = (0..weights.len())
        .filter(|i| weights[*i] > 0)
        .filter_map(|i| u32::try_from(i).ok())
        .collect();
    let live_weights: Vec<u32> = live.iter().map(|i| weights[*i as usize]).collect();
    smooth_schedule(&live_weights)
        .into_iter()
        .map(|slot| live[slot as usize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u32]) -> Split {
        SplitCounters::default().split("r", weights, 1)
    }

    #[test]
    fn smooth_is_exact_per_cycle_and_interleaved() {
        let s = split(&[95, 5]);
        let picks: Vec<usize> = (0..2000).map(|_| s.choose(None)).collect();
        assert_eq!(picks.iter().filter(|p| **p == 1).count(), 100);
        let ones: Vec<usize> = (0..2000).filter(|i| picks[*i] == 1).collect();
        assert!(ones.windows(2).all(|w| w[1] - w[0] == 20), "{ones:?}");
    }

    #[test]
    fn zero_weights_take_nothing() {
        let s = split(&[0, 3, 0]);
        assert!((0..30).all(|_| s.choose(None) == 1));
        assert!((0..1000u64).all(|k| s.choose(Some(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))) == 1));
    }

    #[test]
    fn a_weight_change_keeps_the_count() {
        let mut counters = SplitCounters::default();
        let before = counters.split("r", &[1, 1], 1);
        before.choose(None);
        let after = counters.split("r", &[1, 3], 2);
        assert!(Arc::ptr_eq(&before.counter, &after.counter));
        assert_eq!(after.counter.load(Ordering::Relaxed), 1);
        counters.forget_before(3);
        assert!(counters.entries.is_empty());
    }

    #[test]
    fn growing_a_share_moves_keys_only_towards_it() {
        let (old, new) = (split(&[95, 5]), split(&[90, 10]));
        let mut moved = 0;
        for key in 0..10_000u32 {
            let hash = crate::balance::hash_bytes(&key.to_le_bytes());
            let (a, b) = (old.consistent(hash), new.consistent(hash));
            if a != b {
                assert_eq!((a, b), (0, 1));
                moved += 1;
            }
        }
        assert!((400..600).contains(&moved), "{moved}");
    }
}
