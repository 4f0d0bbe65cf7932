//! The replay guard: signatures accepted within the skew window, in bounded memory.
//!
//! A signature is remembered until its `ts + skew` (after that the skew check refuses it
//! anyway). Entries are kept in insertion order, which is roughly expiry order: expired ones are
//! pruned from the front on every call, and beyond the capacity the oldest go first, so memory
//! stays at `capacity` entries whatever the request rate (a replay older than the evicted entries
//! then passes: size the capacity above requests/s × 2 × skew).

use std::collections::{HashMap, VecDeque};

/// Default number of remembered signatures (as in the Python and Node packages).
pub const DEFAULT_REPLAY_CACHE_SIZE: usize = 100_000;

/// Signatures this process accepted, with the time each stops mattering.
#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    expiry: HashMap<Box<str>, u64>,
    order: VecDeque<(Box<str>, u64)>,
}

impl ReplayGuard {
    /// An empty guard remembering at most `capacity` signatures (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            expiry: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// How many signatures are remembered.
    pub fn len(&self) -> usize {
        self.expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expiry.is_empty()
    }

    /// `false` when `sig` was accepted before and has not expired at `now`; otherwise remembers
    /// it until `expires_at` and returns `true`.
    pub fn check_and_remember(&mut self, sig: &str, expires_at: u64, now: u64) -> bool {
        while let Some((_, exp)) = self.order.front() {
            if *exp >= now {
                break;
            }
            self.pop_front();
        }
        if let Some(exp) = self.expiry.get(sig)
            && *exp >= now
        {
            return false;
        }
        let sig: Box<str> = sig.into();
        self.expiry.insert(sig.clone(), expires_at);
        self.order.push_back((sig, expires_at));
        // The queue bounds both: the map never holds an entry the queue does not.
        while self.order.len() > self.capacity {
            self.pop_front();
        }
        true
    }

    fn pop_front(&mut self) {
        if let Some((sig, exp)) = self.order.pop_front()
            // The map may hold a newer entry for the same text: leave that one.
            && self.expiry.get(&sig) == Some(&exp)
        {
            self.expiry.remove(&sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_accepted_once_within_its_window() {
        let mut g = ReplayGuard::new(10);
        assert!(g.check_and_remember("a", 400, 100));
        assert!(!g.check_and_remember("a", 400, 399));
        assert!(!g.check_and_remember("a", 400, 400));
        // Past its expiry the skew check refuses it; the guard has forgotten it.
        assert!(g.check_and_remember("a", 700, 401));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn memory_is_bounded_and_expired_entries_go() {
        let mut g = ReplayGuard::new(3);
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            assert!(g.check_and_remember(s, 1_000 + i as u64, 10));
        }
        assert_eq!(g.len(), 3);
        // "a" was evicted (the oldest), the others are still refused.
        assert!(g.check_and_remember("a", 1_000, 10));
        assert!(!g.check_and_remember("c", 1_002, 10));
        // Everything expired: pruned on the next call.
        assert!(g.check_and_remember("e", 5_000, 2_000));
        assert_eq!(g.len(), 1);
        assert_eq!(g.order.len(), 1);
    }
}
