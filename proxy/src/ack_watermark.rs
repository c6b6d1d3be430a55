//! The highest position the proxy acknowledged to any client under a write concern of at least
//! one replica, and the rule that a failover promotes only a node holding it.
//!
//! A position is (term, sequence): sequences continue across promotions (a new history branches
//! at the sequence where the old one stood), and within one term there is one primary, so a
//! node at (t, s) holds every write acknowledged at (w, v) when t ≥ w and s ≥ v — the primary
//! of a later term was itself promoted only while holding the watermark of its time. Writes
//! acknowledged under write concern 0 do not count: they were promised nothing beyond the
//! primary (see the README's failover guarantees).
//!
//! The watermark lives in the proxy's memory: a restarted proxy starts from nothing and relies,
//! as before, on choosing the most advanced replica.

use std::sync::Mutex;

/// A replication position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// The primary's term when the write was confirmed.
    pub term: u64,
    /// Its oplog sequence.
    pub seq: u64,
}

impl Position {
    /// True when a node standing at `self` holds every write up to `watermark`.
    pub fn holds(&self, watermark: Position) -> bool {
        self.term >= watermark.term && self.seq >= watermark.seq
    }
}

/// A watermark: the highest position acknowledged.
#[derive(Debug, Default)]
pub struct Watermark(Mutex<Position>);

impl Watermark {
    /// A write at `seq` was acknowledged to a client with `confirmation`, the primary's answer
    /// to `DIRK WAIT REPLICAS` (`replicas <n> term <t>`).
    pub fn acknowledged(&self, seq: u64, confirmation: &str) {
        let term = confirmation
            .split_whitespace()
            .skip_while(|w| *w != "term")
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        self.raise(Position { term, seq });
    }

    /// Raises the watermark to `p` (it never goes down).
    pub fn raise(&self, p: Position) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.term = w.term.max(p.term);
        w.seq = w.seq.max(p.seq);
    }

    /// The highest acknowledged position.
    pub fn current(&self) -> Position {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The proxy's watermark (one proxy per process).
fn global() -> &'static Watermark {
    static WATERMARK: std::sync::OnceLock<Watermark> = std::sync::OnceLock::new();
    WATERMARK.get_or_init(Watermark::default)
}

/// The session's hook: a write at `seq` was acknowledged with `confirmation`.
pub fn acknowledged(seq: u64, confirmation: &str) {
    global().acknowledged(seq, confirmation);
}

/// The proxy's highest acknowledged position.
pub fn current() -> Position {
    global().current()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_hold_a_watermark_only_at_or_beyond_it() {
        let w = Position { term: 2, seq: 50 };
        assert!(Position { term: 2, seq: 50 }.holds(w));
        assert!(Position { term: 3, seq: 60 }.holds(w));
        assert!(!Position { term: 2, seq: 49 }.holds(w));
        assert!(
            !Position { term: 1, seq: 80 }.holds(w),
            "an older term's longer history lacks the acknowledged write"
        );
        let watermark = Watermark::default();
        watermark.acknowledged(40, "replicas 1 term 2");
        assert_eq!(watermark.current(), Position { term: 2, seq: 40 });
        watermark.acknowledged(10, "replicas 1 term 1");
        assert_eq!(
            watermark.current(),
            Position { term: 2, seq: 40 },
            "never goes down"
        );
    }
}
