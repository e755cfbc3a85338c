use super::{Load, Member};

/// Up to this many instances a pick compares them all (exact); above it, it
/// compares two random ones ("power of two choices"), which keeps a pick
/// O(1) and is known to come very close to the exact choice.
const EXACT_SCAN_LIMIT: usize = 8;

/// Fewest in-flight requests relative to weight.
///
/// Ties are broken at random, so with equal load the instances share the
/// traffic instead of the first one winning every time.
#[derive(Debug)]
pub struct LeastConnections {
    weights: Vec<u64>,
}

impl LeastConnections {
    /// Records the weights.
    pub fn new(members: &[Member<'_>]) -> Self {
        LeastConnections {
            weights: members.iter().map(|m| u64::from(m.weight.max(1))).collect(),
        }
    }

    /// The least-loaded instance not in `excluded`.
    pub fn pick<L: Load>(&self, loads: &[L], excluded: &[usize]) -> Option<usize> {
        let len = self.weights.len().min(loads.len());
        if len == 0 {
            return None;
        }
        let eligible = |i: &usize| !excluded.contains(i);
        if len > EXACT_SCAN_LIMIT {
            let a = fastrand::usize(..len);
            let b = (a + 1 + fastrand::usize(..len - 1)) % len;
            match (eligible(&a), eligible(&b)) {
                (true, true) => return Some(if self.lighter(loads, b, a) { b } else { a }),
                (true, false) => return Some(a),
                (false, true) => return Some(b),
                // Both already tried: fall back to the exact scan below.
                (false, false) => {}
            }
        }
        // Exact scan; among equally loaded instances each is kept with
        // probability 1/k (reservoir sampling), so ties are spread evenly.
        let mut best: Option<usize> = None;
        let mut ties = 0u32;
        for i in (0..len).filter(eligible) {
            match best {
                Some(b) if self.lighter(loads, b, i) => {}
                Some(b) if !self.lighter(loads, i, b) => {
                    ties += 1;
                    if fastrand::u32(..ties) == 0 {
                        best = Some(i);
                    }
                }
                _ => {
                    best = Some(i);
                    ties = 1;
                }
            }
        }
        best
    }

    /// Whether instance `a` carries strictly less load per unit of weight
    /// than `b`: in_flight(a)/w(a) < in_flight(b)/w(b), without division.
    fn lighter<L: Load>(&self, loads: &[L], a: usize, b: usize) -> bool {
        let load_a = u128::from(loads[a].in_flight()) * u128::from(self.weights[b]);
        let load_b = u128::from(loads[b].in_flight()) * u128::from(self.weights[a]);
        load_a < load_b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::*;

    #[test]
    fn avoids_the_busy_instance() {
        let keys = keys(3);
        let lc = LeastConnections::new(&members(&keys, &[1, 1, 1]));
        let loads = [Fixed(0), Fixed(5), Fixed(0)];
        let mut counts = [0; 3];
        fastrand::seed(3);
        for _ in 0..1_000 {
            counts[lc.pick(&loads, &[]).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0, "the busy instance is skipped");
        assert!(
            (400..=600).contains(&counts[0]),
            "ties are shared: {counts:?}"
        );
    }

    #[test]
    fn load_is_relative_to_weight() {
        let keys = keys(2);
        let lc = LeastConnections::new(&members(&keys, &[4, 1]));
        // 3 requests on weight 4 is lighter than 1 on weight 1.
        assert_eq!(lc.pick(&[Fixed(3), Fixed(1)], &[]), Some(0));
        assert_eq!(lc.pick(&[Fixed(5), Fixed(1)], &[]), Some(1));
    }

    #[test]
    fn two_choices_never_pick_the_heaviest_of_many() {
        let keys = keys(50);
        let lc = LeastConnections::new(&members(&keys, &[1; 50]));
        let mut loads = idle(50);
        loads[17] = Fixed(100);
        for _ in 0..5_000 {
            assert_ne!(lc.pick(&loads, &[]), Some(17));
        }
    }
}
