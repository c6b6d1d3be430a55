//! Counters a server exposes on `GET /metrics`, updated by the listener and the sessions.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Connection and statement counters.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    open: AtomicI64,
    refused: AtomicU64,
    statements: AtomicU64,
    errors: AtomicU64,
}

impl ServerMetrics {
    /// A client connected (`+1`) or left (`-1`).
    pub fn connection(&self, delta: i64) {
        self.open.fetch_add(delta, Ordering::Relaxed);
    }
    /// A client was refused over the connection limit.
    pub fn refused_one(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    /// A statement was answered, with an error or not.
    pub fn answered(&self, error: bool) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Client connections open.
    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }
    /// Clients refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Statements answered.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
    /// Statements answered with an error.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}
