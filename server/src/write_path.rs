//! The instance's writer gate and committed sequence.
//!
//! One write transaction runs at a time in the whole instance, so oplog sequence numbers are
//! allocated in commit order and without gaps. A session takes the gate (waiting at most
//! `limits.busyTimeoutMs`) before its first writing statement and gives it back when its
//! transaction ends, after publishing the new committed sequence. Publishing wakes whoever waits
//! for new entries: replica streams, write-concern waiters. Writers queue in arrival order (a
//! ticket each, served first come first served, on a condition variable) instead of sleeping in
//! SQLite's busy handler: a writer that gives the gate back and asks again at once goes behind
//! those already waiting, so a tight loop of writes cannot starve a snapshot, a pruning step or
//! another session until its `busyTimeoutMs` runs out.
//!
//! The newest committed entries are also kept in memory (the backlog, as Redis calls it), pushed
//! in commit order by the writer that made them while it still holds the gate, so replica streams
//! serve live changes without reading SQLite or handing work to another thread; a stream further
//! behind than the backlog reads the oplog files instead. Change feeds
//! ([`crate::change_feed`]) read it too, and tell a reset backlog (full-sync install) from a
//! live one by its generation ([`WritePath::resets`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::ServerError;
use crate::lease::Lease;
use crate::oplog::Entry;
use dirkdb_core::sync::lock;

/// Entries kept in the backlog at most.
const BACKLOG_ENTRIES: usize = 20_000;

/// Who holds the gate and who waits for it, in arrival order.
#[derive(Default)]
struct Gate {
    holder: Option<u64>,
    /// The tickets of the waiters, oldest first; the front one takes the gate when it is free.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

impl Gate {
    /// True when the gate is free for the waiter holding `ticket`.
    fn free_for(&self, ticket: u64) -> bool {
        self.holder.is_none() && self.queue.front() == Some(&ticket)
    }

    /// Forgets a waiter that gave up.
    fn leave(&mut self, ticket: u64) {
        self.queue.retain(|t| *t != ticket);
    }
}

/// The gate and the committed sequence.
pub struct WritePath {
    gate: Mutex<Gate>,
    freed: Condvar,
    committed: Arc<AtomicU64>,
    notify: watch::Sender<u64>,
    wait: Duration,
    backlog: Mutex<VecDeque<Entry>>,
    /// How many times [`WritePath::reset`] cleared the backlog; changed under its lock.
    resets: AtomicU64,
    lease: Arc<Lease>,
}

/// What [`WritePath::visit_backlog`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogVisit {
    /// The backlog's generation ([`WritePath::resets`]) at the time of the visit.
    pub resets: u64,
    /// The sequence of the last entry visited; `None` when the backlog holds nothing after
    /// `after` (it never held `after + 1`, dropped it, or was cleared).
    pub last: Option<u64>,
}

impl WritePath {
    /// Starts at the value of `committed` (the highest sequence on disk); writers wait at most
    /// `wait`.
    pub fn new(committed: Arc<AtomicU64>, wait: Duration) -> WritePath {
        let (notify, _) = watch::channel(committed.load(Ordering::Acquire));
        WritePath {
            gate: Mutex::default(),
            freed: Condvar::new(),
            committed,
            notify,
            wait,
            backlog: Mutex::new(VecDeque::new()),
            resets: AtomicU64::new(0),
            lease: Arc::default(),
        }
    }

    /// The same gate, whose client writes need `lease` ([`WritePath::acquire_write`]).
    pub fn with_lease(mut self, lease: Arc<Lease>) -> WritePath {
        self.lease = lease;
        self
    }

    /// The primary's write lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Takes the gate for a client's write: refused at once when this primary's write lease
    /// has ended (see [`crate::lease`]), and again once the gate is held when the
    /// node stopped being a primary (or lost its lease) while the write waited for it.
    pub fn acquire_write(&self, owner: u64) -> Result<(), ServerError> {
        self.lease.check_write()?;
        let held_before = self.holds(owner);
        self.acquire(owner)?;
        if let Err(refused) = self.lease.check_write_holding_gate() {
            if !held_before {
                self.release(owner);
            }
            return Err(refused);
        }
        Ok(())
    }

    /// The shared counter the `dirk_committed()` SQL function reads.
    pub fn committed_handle(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// The last committed sequence.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Notified with every new committed sequence.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Takes the gate for `owner` (a no-op when it already holds it).
    pub fn acquire(&self, owner: u64) -> Result<(), ServerError> {
        self.acquire_for(owner, self.wait)
    }

    /// Takes the gate, waiting at most `wait` behind the writers that asked before.
    pub fn acquire_for(&self, owner: u64, wait: Duration) -> Result<(), ServerError> {
        let mut gate = lock(&self.gate);
        if gate.holder == Some(owner) {
            return Ok(());
        }
        if gate.holder.is_none() && gate.queue.is_empty() {
            gate.holder = Some(owner);
            return Ok(());
        }
        let ticket = gate.next_ticket;
        gate.next_ticket += 1;
        gate.queue.push_back(ticket);
        let deadline = Instant::now() + wait;
        while !gate.free_for(ticket) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                gate.leave(ticket);
                // The waiter behind this one may be at the front now.
                self.freed.notify_all();
                return Err(ServerError::WriterBusy(wait.as_millis() as u64));
            }
            gate = self
                .freed
                .wait_timeout(gate, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        gate.queue.pop_front();
        gate.holder = Some(owner);
        Ok(())
    }

    /// True when `owner` holds the gate.
    pub fn holds(&self, owner: u64) -> bool {
        lock(&self.gate).holder == Some(owner)
    }

    /// Gives the gate back (a no-op when `owner` does not hold it).
    pub fn release(&self, owner: u64) {
        let mut gate = lock(&self.gate);
        if gate.holder == Some(owner) {
            gate.holder = None;
            if !gate.queue.is_empty() {
                // Every waiter wakes and the one at the front takes it.
                self.freed.notify_all();
            }
        }
    }

    /// Sets the committed sequence to `seq` even when lower (a replica that installed a full
    /// sync now stands exactly at the snapshot's position).
    pub fn reset(&self, seq: u64) {
        {
            let mut backlog = lock(&self.backlog);
            backlog.clear();
            self.resets.fetch_add(1, Ordering::AcqRel);
        }
        self.committed.store(seq, Ordering::Release);
        self.notify.send_replace(seq);
    }

    /// Publishes entries just committed (in order, by the gate's holder): they join the backlog,
    /// then the committed sequence moves to the last one. A gap (entries published without
    /// their predecessors) restarts the backlog, so it always holds one contiguous run.
    pub fn publish_entries(&self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.seq) else {
            return;
        };
        {
            let mut backlog = lock(&self.backlog);
            for entry in entries {
                if backlog.back().is_some_and(|b| b.seq + 1 != entry.seq) {
                    backlog.clear();
                }
                backlog.push_back(entry);
            }
            while backlog.len() > BACKLOG_ENTRIES {
                backlog.pop_front();
            }
        }
        self.publish(last);
    }

    /// Up to `limit` entries in `(after, upto]` from the backlog, when it holds `after + 1`.
    #[allow(clippy::wrong_self_convention)] // "from the backlog", not a constructor
    pub fn from_backlog(&self, after: u64, upto: u64, limit: usize) -> Option<Vec<Entry>> {
        let mut entries = Vec::new();
        self.visit_backlog(after, upto, limit, |e| entries.push(e.clone()))
            .last
            .map(|_| entries)
    }

    /// Calls `visit` on up to `limit` entries in `(after, upto]`, in order and without copying
    /// them, when the backlog holds `after + 1` (the backlog's lock is held meanwhile, so `visit`
    /// must be quick). The backlog always holds one contiguous run, so the entries visited are
    /// exactly `after + 1 ..= last`.
    pub fn visit_backlog(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
        mut visit: impl FnMut(&Entry),
    ) -> BacklogVisit {
        let backlog = lock(&self.backlog);
        let resets = self.resets.load(Ordering::Acquire);
        let (Some(first), Some(back)) = (backlog.front(), backlog.back()) else {
            return BacklogVisit { resets, last: None };
        };
        if after + 1 < first.seq || after >= back.seq {
            return BacklogVisit { resets, last: None };
        }
        let start = (after + 1 - first.seq) as usize;
        let mut last = None;
        for entry in backlog
            .range(start..)
            .take_while(|e| e.seq <= upto)
            .take(limit)
        {
            visit(entry);
            last = Some(entry.seq);
        }
        BacklogVisit { resets, last }
    }

    /// The backlog's generation: how many times [`WritePath::reset`] replaced this instance's
    /// history (a full-sync install). Entries read before and after a change of generation
    /// may belong to different histories.
    pub fn resets(&self) -> u64 {
        let _backlog = lock(&self.backlog);
        self.resets.load(Ordering::Acquire)
    }

    /// Makes `seq` the committed sequence when it is higher, and wakes the waiters.
    pub fn publish(&self, seq: u64) {
        let previous = self.committed.fetch_max(seq, Ordering::AcqRel);
        if seq > previous {
            self.notify.send_replace(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_is_exclusive_reentrant_and_times_out() {
        let path = Arc::new(WritePath::new(
            Arc::new(AtomicU64::new(5)),
            Duration::from_millis(50),
        ));
        path.acquire(1).unwrap();
        path.acquire(1).unwrap();
        assert!(matches!(path.acquire(2), Err(ServerError::WriterBusy(50))));
        let p = path.clone();
        let waiter = std::thread::spawn(move || p.acquire_for(2, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        path.release(1);
        waiter.join().unwrap().unwrap();
        assert!(path.holds(2));
        let mut rx = path.subscribe();
        path.publish(4);
        assert_eq!(path.committed(), 5);
        path.publish(9);
        assert_eq!(*rx.borrow_and_update(), 9);
    }

    /// A writer that gives the gate back and asks again at once goes behind the waiters: on the
    /// old gate (whoever asked while it was free won) a waiter could starve until its timeout
    /// behind a tight loop of writes.
    #[test]
    fn gate_serves_waiters_in_arrival_order() {
        let path = Arc::new(WritePath::new(
            Arc::new(AtomicU64::new(0)),
            Duration::from_secs(5),
        ));
        path.acquire(1).unwrap();
        let p = path.clone();
        let waiter = std::thread::spawn(move || p.acquire_for(2, Duration::from_secs(5)));
        while lock(&path.gate).queue.is_empty() {
            std::thread::yield_now();
        }
        path.release(1);
        assert!(
            matches!(
                path.acquire_for(1, Duration::ZERO),
                Err(ServerError::WriterBusy(0))
            ),
            "the gate went to a writer that asked after the waiter"
        );
        waiter.join().unwrap().unwrap();
        assert!(path.holds(2));
        path.release(2);
        path.acquire_for(1, Duration::ZERO).unwrap();
    }

    /// A waiter that times out leaves the queue, and the one behind it is served.
    #[test]
    fn a_waiter_that_gives_up_leaves_the_queue() {
        let path = Arc::new(WritePath::new(
            Arc::new(AtomicU64::new(0)),
            Duration::from_secs(5),
        ));
        path.acquire(1).unwrap();
        let p = path.clone();
        let quick = std::thread::spawn(move || p.acquire_for(2, Duration::from_millis(30)));
        while lock(&path.gate).queue.is_empty() {
            std::thread::yield_now();
        }
        let p = path.clone();
        let patient = std::thread::spawn(move || p.acquire_for(3, Duration::from_secs(5)));
        while lock(&path.gate).queue.len() < 2 {
            std::thread::yield_now();
        }
        assert!(matches!(
            quick.join().unwrap(),
            Err(ServerError::WriterBusy(30))
        ));
        assert_eq!(lock(&path.gate).queue.len(), 1);
        path.release(1);
        patient.join().unwrap().unwrap();
        assert!(path.holds(3));
        assert!(lock(&path.gate).queue.is_empty());
    }

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            ts: 0,
            db: "d".into(),
            table: "t".into(),
            op: crate::oplog::Op::Insert,
            old_key: None,
            new_key: None,
            data: None,
            crc: 0,
        }
    }

    #[test]
    fn backlog_serves_contiguous_runs_only() {
        let path = WritePath::new(Arc::new(AtomicU64::new(0)), Duration::from_millis(50));
        path.publish_entries((1..=5).map(entry).collect());
        assert_eq!(path.committed(), 5);
        let seqs = |v: Option<Vec<Entry>>| v.map(|v| v.iter().map(|e| e.seq).collect::<Vec<_>>());
        assert_eq!(seqs(path.from_backlog(0, 5, 10)), Some(vec![1, 2, 3, 4, 5]));
        assert_eq!(seqs(path.from_backlog(2, 4, 10)), Some(vec![3, 4]));
        assert_eq!(seqs(path.from_backlog(2, 5, 1)), Some(vec![3]));
        assert_eq!(seqs(path.from_backlog(5, 5, 10)), None);
        path.publish_entries(vec![entry(8)]);
        assert_eq!(
            seqs(path.from_backlog(0, 8, 10)),
            None,
            "a gap restarts the backlog"
        );
        assert_eq!(seqs(path.from_backlog(7, 8, 10)), Some(vec![8]));
        let mut seen = Vec::new();
        let visit = path.visit_backlog(7, 8, 10, |e| seen.push(e.seq));
        assert_eq!(
            visit,
            BacklogVisit {
                resets: 0,
                last: Some(8)
            }
        );
        assert_eq!(seen, vec![8]);
        path.reset(3);
        assert_eq!(path.resets(), 1);
        assert_eq!(path.committed(), 3);
        assert_eq!(
            path.visit_backlog(2, 3, 10, |_| {}),
            BacklogVisit {
                resets: 1,
                last: None
            }
        );
    }
}
