use super::Member;

/// Uniform random choice, in proportion to weight when weights differ.
#[derive(Debug)]
pub struct Random {
    /// Running sums of the weights; empty when all weights are equal, so the
    /// common case is a single random index.
    cumulative: Vec<u64>,
    len: usize,
}

impl Random {
    /// Builds the weight table.
    pub fn new(members: &[Member<'_>]) -> Self {
        let equal = members.windows(2).all(|w| w[0].weight == w[1].weight);
        let cumulative = if equal {
            Vec::new()
        } else {
            members
                .iter()
                .scan(0u64, |sum, m| {
                    *sum += u64::from(m.weight.max(1));
                    Some(*sum)
                })
                .collect()
        };
        Random {
            cumulative,
            len: members.len(),
        }
    }

    /// A random instance: O(1) for equal weights, O(log n) otherwise.
    pub fn pick(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let Some(&total) = self.cumulative.last() else {
            return Some(fastrand::usize(..self.len));
        };
        let ticket = fastrand::u64(..total);
        Some(self.cumulative.partition_point(|&sum| sum <= ticket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::*;

    fn counts(weights: &[u32], picks: usize) -> Vec<usize> {
        let keys = keys(weights.len());
        let random = Random::new(&members(&keys, weights));
        let mut counts = vec![0; weights.len()];
        for _ in 0..picks {
            counts[random.pick().unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn uniform_when_weights_are_equal() {
        fastrand::seed(7);
        for count in counts(&[1, 1, 1, 1], 40_000) {
            // 10,000 expected; 5 standard deviations is about ±430.
            assert!((9_500..=10_500).contains(&count), "{count}");
        }
    }

    #[test]
    fn respects_weights() {
        fastrand::seed(11);
        let c = counts(&[1, 3], 40_000);
        assert!((9_500..=10_500).contains(&c[0]), "{c:?}");
        assert!((29_500..=30_500).contains(&c[1]), "{c:?}");
    }
}
