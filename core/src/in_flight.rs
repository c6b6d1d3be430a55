//! A bound on the memory that statements in flight hold (`limits.maxInFlightStatementBytes`).
//!
//! Each large statement is translated, parsed and copied (the SQLite parse, the oplog entry, the
//! replication stream) while it runs, so a few clients sending statements of several megabytes
//! at once could take a process to gigabytes. A process therefore keeps one [`InFlight`] budget:
//! a statement over [`COUNTED_FROM_BYTES`] takes its length from the budget for as long as it
//! runs ([`InFlightGuard`]), and a statement that does not fit is refused at once with a message
//! naming the knob, never queued. Small statements are not counted: they are bounded by
//! `limits.maxConnections` times this threshold, and another client's `SELECT 1` must never
//! wait behind the large ones.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Statements of this many bytes or fewer are not counted.
pub const COUNTED_FROM_BYTES: usize = 64 * 1024;

/// One process's budget of bytes held by large statements in flight.
#[derive(Debug)]
pub struct InFlight {
    used: AtomicUsize,
    max: AtomicUsize,
}

/// Bytes taken from an [`InFlight`] budget; given back when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    budget: Option<Arc<InFlight>>,
    bytes: usize,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

impl InFlight {
    /// A budget of `max` bytes (0: no bound).
    pub fn new(max: usize) -> Arc<InFlight> {
        Arc::new(InFlight {
            used: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    /// Changes the bound (a live reload); statements already in flight keep their bytes.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }

    /// Bytes held right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` for a statement of that length, or explains why it cannot run now.
    pub fn hold(self: &Arc<Self>, bytes: usize) -> Result<InFlightGuard, String> {
        let max = self.max.load(Ordering::Acquire);
        if bytes <= COUNTED_FROM_BYTES || max == 0 {
            return Ok(InFlightGuard {
                budget: None,
                bytes: 0,
            });
        }
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= max)
            });
        match taken {
            Ok(_) => Ok(InFlightGuard {
                budget: Some(self.clone()),
                bytes,
            }),
            Err(used) => Err(format!(
                "this statement ({}) does not fit: statements in flight already hold {} of the \
                 {} allowed (limits.maxInFlightStatementBytes); retry when they are done, or \
                 raise the limit",
                mib(bytes),
                mib(used),
                mib(max)
            )),
        }
    }
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_statements_share_the_budget_and_small_ones_never_count() {
        let budget = InFlight::new(10 * 1024 * 1024);
        let a = budget.hold(6 * 1024 * 1024).expect("fits");
        let refused = budget.hold(6 * 1024 * 1024).expect_err("over the bound");
        assert!(
            refused.contains("limits.maxInFlightStatementBytes"),
            "{refused}"
        );
        assert!(refused.contains("6.0 MiB"), "{refused}");
        let small = budget
            .hold(COUNTED_FROM_BYTES)
            .expect("small ones always run");
        assert_eq!(budget.used(), 6 * 1024 * 1024);
        drop(a);
        drop(small);
        assert_eq!(budget.used(), 0, "given back");
        let b = budget.hold(6 * 1024 * 1024).expect("fits again");
        budget.set_max(0);
        let _unbounded = budget.hold(100 * 1024 * 1024).expect("0: no bound");
        drop(b);
    }
}
