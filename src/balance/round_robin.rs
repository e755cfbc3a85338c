use std::sync::atomic::{AtomicUsize, Ordering};

/// Exact rotation: pick N goes to instance N mod len.
#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
    len: usize,
}

impl RoundRobin {
    /// A rotation over `len` instances.
    pub fn new(len: usize) -> Self {
        RoundRobin {
            next: AtomicUsize::new(0),
            len,
        }
    }

    /// The next instance in turn.
    pub fn pick(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_exactly() {
        let rr = RoundRobin::new(3);
        let picks: Vec<usize> = (0..7).filter_map(|_| rr.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }
}
