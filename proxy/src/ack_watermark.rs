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
//!
//! While an automatic failover finds no candidate holding the watermark (or none reachable), it
//! waits and retries rather than lose data ([`failover_waits`]); meanwhile every statement for
//! the primary is refused at once with that reason ([`failover_waiting`]) instead of running
//! into the dead primary's timeouts, until a failover succeeds or the primary is back
//! ([`failover_over`]).

use std::sync::Mutex;

/// A replication position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Position {
    /// The primary's term when the write was confirmed.
    pub term: u64,
    /// Its oplog sequence.
    pub seq: u64,
}

impl Position {
    /// True when a node standing at `self` holds every write up to `watermark`.
    pub(crate) fn holds(&self, watermark: Position) -> bool {
        self.term >= watermark.term && self.seq >= watermark.seq
    }
}

/// A watermark: the highest position acknowledged, and whether a failover has frozen it.
///
/// A failover reads the watermark once, freezes it, and promotes only a node holding that
/// position; while it is frozen no write is acknowledged (its outcome is reported unknown). So
/// every acknowledgement either happened before the failover's read, and the promoted node holds
/// it, or is refused: none slips between the read and the new primary's installation.
#[derive(Debug, Default)]
pub(crate) struct Watermark(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    position: Position,
    /// Failovers under way (each holds a [`Frozen`]).
    frozen: usize,
}

/// A failover's hold on the watermark: no acknowledgement is recorded until it is dropped.
pub(crate) struct Frozen<'a> {
    watermark: &'a Watermark,
    /// The watermark when it was frozen.
    pub position: Position,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let mut s = self.watermark.lock();
        s.frozen = s.frozen.saturating_sub(1);
    }
}

impl Watermark {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write at `seq` was confirmed with `confirmation`, the primary's answer to
    /// `DIRK WAIT REPLICAS` (`replicas <n> term <t>`). Records it and returns true when the write
    /// may be acknowledged: no failover holds the watermark, and `still_primary()` (asked under
    /// the watermark's lock) says the write's node is still the proxy's primary.
    pub(crate) fn acknowledge(
        &self,
        seq: u64,
        confirmation: &str,
        still_primary: impl FnOnce() -> bool,
    ) -> bool {
        let term = confirmation
            .split_whitespace()
            .skip_while(|w| *w != "term")
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let mut s = self.lock();
        if s.frozen > 0 || !still_primary() {
            return false;
        }
        s.position.term = s.position.term.max(term);
        s.position.seq = s.position.seq.max(seq);
        true
    }

    /// Freezes the watermark for a failover and returns its position.
    pub(crate) fn freeze(&self) -> Frozen<'_> {
        let mut s = self.lock();
        s.frozen += 1;
        Frozen {
            watermark: self,
            position: s.position,
        }
    }

    /// The highest acknowledged position.
    pub(crate) fn current(&self) -> Position {
        self.lock().position
    }
}

/// The proxy's watermark (one proxy per process).
fn global() -> &'static Watermark {
    static WATERMARK: std::sync::OnceLock<Watermark> = std::sync::OnceLock::new();
    WATERMARK.get_or_init(Watermark::default)
}

/// The session's hook: see [`Watermark::acknowledge`].
pub(crate) fn acknowledge(
    seq: u64,
    confirmation: &str,
    still_primary: impl FnOnce() -> bool,
) -> bool {
    global().acknowledge(seq, confirmation, still_primary)
}

/// A failover's hold on the proxy's watermark: see [`Watermark::freeze`].
pub(crate) fn freeze() -> Frozen<'static> {
    global().freeze()
}

/// The proxy's highest acknowledged position.
pub(crate) fn current() -> Position {
    global().current()
}

/// Why a failover waits for a candidate, and since when.
#[derive(Debug, Clone)]
struct Waiting {
    since: std::time::Instant,
    reason: String,
}

fn waiting() -> std::sync::MutexGuard<'static, Option<Waiting>> {
    static WAITING: Mutex<Option<Waiting>> = Mutex::new(None);
    WAITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// An automatic failover found no candidate it may promote (`reason`) and will retry; returns
/// true when this starts the wait or changes its reason (worth a log line; the retries are not).
pub(crate) fn failover_waits(reason: &str) -> bool {
    let mut w = waiting();
    let changed = w.as_ref().is_none_or(|w| w.reason != reason);
    let since = w.as_ref().map_or_else(std::time::Instant::now, |w| w.since);
    *w = Some(Waiting {
        since,
        reason: reason.to_string(),
    });
    changed
}

/// The wait is over: a failover installed a primary, or the primary came back.
pub(crate) fn failover_over() {
    *waiting() = None;
}

/// While a failover waits for a candidate: the answer for a statement that needs the primary.
pub(crate) fn failover_waiting() -> Option<String> {
    waiting().as_ref().map(|w| {
        format!(
            "no primary accepts writes: the primary is down and the failover has been waiting {} ms for a replica that holds every acknowledged write ({}); nothing was run, retry later",
            w.since.elapsed().as_millis(),
            w.reason
        )
    })
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
        assert!(watermark.acknowledge(40, "replicas 1 term 2", || true));
        assert_eq!(watermark.current(), Position { term: 2, seq: 40 });
        assert!(watermark.acknowledge(10, "replicas 1 term 1", || true));
        assert_eq!(
            watermark.current(),
            Position { term: 2, seq: 40 },
            "never goes down"
        );
        assert!(
            !watermark.acknowledge(90, "replicas 1 term 2", || false),
            "a write whose node stopped being the primary is not acknowledged"
        );
        assert_eq!(watermark.current(), Position { term: 2, seq: 40 });
    }

    #[test]
    fn a_waiting_failover_is_reported_until_it_is_over() {
        failover_over();
        assert!(failover_waiting().is_none());
        assert!(failover_waits(
            "no reachable replica holds every acknowledged write"
        ));
        assert!(
            !failover_waits("no reachable replica holds every acknowledged write"),
            "a retry for the same reason is not news"
        );
        let answer = failover_waiting().unwrap_or_default();
        assert!(
            answer.contains("waiting") && answer.contains("holds every acknowledged write"),
            "{answer}"
        );
        failover_over();
        assert!(failover_waiting().is_none());
    }

    #[test]
    fn no_write_is_acknowledged_while_a_failover_holds_the_watermark() {
        let watermark = Watermark::default();
        assert!(watermark.acknowledge(5, "replicas 1 term 1", || true));
        let frozen = watermark.freeze();
        assert_eq!(frozen.position, Position { term: 1, seq: 5 });
        assert!(
            !watermark.acknowledge(6, "replicas 1 term 1", || true),
            "refused: the failover chose its candidate at sequence 5"
        );
        drop(frozen);
        assert!(watermark.acknowledge(7, "replicas 1 term 2", || true));
        assert_eq!(watermark.current(), Position { term: 2, seq: 7 });
    }
}
