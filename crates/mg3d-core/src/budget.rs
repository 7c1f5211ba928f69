//! A memory budget in bytes shared by the items a stage works on at once.
//!
//! Counting items in flight bounds memory only when items are alike; one 2,000-slice series next
//! to three 30-slice ones is not. Each item asks for its estimated bytes before it allocates and
//! gives them back when done; an item that alone is larger than the whole budget is refused (the
//! caller makes it a reject), so no input can take the machine's memory.

use std::sync::{Condvar, Mutex};

/// Bytes shared by in-flight items.
#[derive(Debug)]
pub struct ByteBudget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Bytes held until dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a ByteBudget,
    bytes: u64,
}

impl ByteBudget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> Self {
        ByteBudget {
            total,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// The whole budget.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Waits until `bytes` fit beside what others hold, then holds them. `None` when `bytes` is
    /// more than the whole budget (it could never fit).
    pub fn reserve(&self, bytes: u64) -> Option<Reservation<'_>> {
        if bytes > self.total {
            return None;
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + bytes > self.total {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += bytes;
        Some(Reservation {
            budget: self,
            bytes,
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn holders_never_exceed_the_budget_and_oversize_is_refused() {
        let b = ByteBudget::new(100);
        assert!(b.reserve(101).is_none());
        let peak = AtomicU64::new(0);
        let now = AtomicU64::new(0);
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let (b, peak, now) = (&b, &peak, &now);
                s.spawn(move || {
                    for _ in 0..50 {
                        let want = 20 + 10 * (i % 4);
                        let _r = b.reserve(want).unwrap();
                        let n = now.fetch_add(want, Ordering::SeqCst) + want;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        now.fetch_sub(want, Ordering::SeqCst);
                    }
                });
            }
        });
        assert!(peak.load(Ordering::SeqCst) <= 100);
        assert_eq!(*b.used.lock().unwrap(), 0);
    }
}
